-- cohort's access log in DuckDB: the table, the loading statement, and the
-- canonical analysis (deploy/warehouse/README.md). Columns follow
-- docs/access-log.md (schema 1); fields added later are ignored until a
-- column is added for them.
--
--   duckdb cohort.duckdb < deploy/warehouse/duckdb.sql
--
-- Statements are separated by a semicolon at the end of a line.

CREATE TABLE IF NOT EXISTS cohort_access_log (
    ts              TIMESTAMPTZ NOT NULL,  -- arrival, UTC, ms
    schema          INTEGER     NOT NULL,
    request_id      VARCHAR     NOT NULL,
    method          VARCHAR,
    path            VARCHAR,
    protocol        VARCHAR,
    status          SMALLINT    NOT NULL,
    experiment      VARCHAR,
    unit            VARCHAR,
    variant         VARCHAR,               -- SERVED variant: never group outcomes by it
    epoch           INTEGER     NOT NULL,  -- the unit's ASSIGNMENT epoch
    current_epoch   INTEGER     NOT NULL,
    first_exposure  BOOLEAN     NOT NULL,
    share           DOUBLE,                -- on first exposures: the variant's share of new units in that epoch
    in_experiment   BOOLEAN     NOT NULL,
    forced          BOOLEAN     NOT NULL,
    paused          BOOLEAN     NOT NULL,
    store_degraded  BOOLEAN,
    reason          VARCHAR,
    bucket          INTEGER,
    upstream        VARCHAR,
    fallback        BOOLEAN,
    upstream_ms     DOUBLE,
    total_ms        DOUBLE      NOT NULL,
    bytes_in        BIGINT      NOT NULL,
    bytes_out       BIGINT      NOT NULL,
    config_version  VARCHAR     NOT NULL,
    error           VARCHAR
);

-- Load one file of the log, plain or gzip (by its .gz name): run once per
-- file, with its path in place of this example. Load closed files only
-- (access.jsonl.<stamp>Z[.gz]), each once; skip *.partial, and a closed
-- file whose .gz exists (read the .gz).
INSERT INTO cohort_access_log BY NAME
SELECT * FROM read_json(
    '/var/log/cohort/access.jsonl.20261204T181500.123456Z.gz',
    format = 'newline_delimited',
    columns = {
        ts: 'TIMESTAMPTZ', schema: 'INTEGER', request_id: 'VARCHAR',
        method: 'VARCHAR', path: 'VARCHAR', protocol: 'VARCHAR',
        status: 'SMALLINT', experiment: 'VARCHAR', unit: 'VARCHAR',
        variant: 'VARCHAR', epoch: 'INTEGER', current_epoch: 'INTEGER',
        first_exposure: 'BOOLEAN', share: 'DOUBLE', in_experiment: 'BOOLEAN',
        forced: 'BOOLEAN', paused: 'BOOLEAN', store_degraded: 'BOOLEAN',
        reason: 'VARCHAR', bucket: 'INTEGER', upstream: 'VARCHAR',
        fallback: 'BOOLEAN', upstream_ms: 'DOUBLE', total_ms: 'DOUBLE',
        bytes_in: 'BIGINT', bytes_out: 'BIGINT', config_version: 'VARCHAR',
        error: 'VARCHAR'
    }
);

-- Each unit's assignment: the line that created it. A unit reset into a
-- new epoch has one assignment per epoch.
CREATE OR REPLACE VIEW cohort_assignments AS
SELECT experiment,
       unit,
       variant AS assigned_variant,
       epoch   AS assignment_epoch,
       share   AS expected_share,
       ts      AS first_exposed_at
FROM cohort_access_log
WHERE first_exposure AND experiment IS NOT NULL AND unit IS NOT NULL;

-- The canonical analysis: every request's outcome counted for the variant
-- its unit was FIRST ASSIGNED (intention to treat: a paused or forced
-- request still counts for the unit's assignment), grouped by assignment
-- epoch. Compare variants only within one (experiment, assignment_epoch):
-- units of different epochs were assigned under different rules.
CREATE OR REPLACE VIEW cohort_outcomes_by_assignment AS
SELECT a.experiment,
       a.assignment_epoch,
       a.assigned_variant,
       any_value(a.expected_share)                           AS expected_share,
       count(DISTINCT a.unit)                                AS units,
       count(*)                                              AS requests,
       avg(CASE WHEN l.status >= 500 THEN 1.0 ELSE 0.0 END)  AS error_rate,
       quantile_cont(l.total_ms, 0.5)                        AS p50_ms,
       quantile_cont(l.total_ms, 0.95)                       AS p95_ms
FROM cohort_assignments a
JOIN cohort_access_log l
  ON  l.experiment = a.experiment
  AND l.unit       = a.unit
  AND l.epoch      = a.assignment_epoch
GROUP BY a.experiment, a.assignment_epoch, a.assigned_variant;

SELECT * FROM cohort_outcomes_by_assignment
ORDER BY experiment, assignment_epoch, assigned_variant;
