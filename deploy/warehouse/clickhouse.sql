-- cohort's access log in ClickHouse: the table, the loading statement, and
-- the canonical analysis (deploy/warehouse/README.md). Columns follow
-- docs/access-log.md (schema 1); unknown fields are skipped on insert.
--
--   clickhouse-client --multiquery < deploy/warehouse/clickhouse.sql
--
-- Vector (deploy/vector.yaml) inserts into the same table.
-- Statements are separated by a semicolon at the end of a line.

CREATE TABLE IF NOT EXISTS cohort_access_log (
    ts              DateTime64(3, 'UTC'),          -- arrival
    schema          UInt16,
    request_id      String,
    method          LowCardinality(Nullable(String)),
    path            Nullable(String),
    protocol        LowCardinality(String),
    status          UInt16,
    experiment      LowCardinality(Nullable(String)),
    unit            Nullable(String),
    variant         LowCardinality(Nullable(String)),  -- SERVED variant: never group outcomes by it
    epoch           UInt32,                             -- the unit's ASSIGNMENT epoch
    current_epoch   UInt32,
    first_exposure  Bool,
    share           Nullable(Float64),                  -- on first exposures: the variant's share of new units in that epoch
    in_experiment   Bool,
    forced          Bool,
    paused          Bool,
    store_degraded  Bool DEFAULT false,
    reason          LowCardinality(Nullable(String)),
    bucket          Nullable(UInt32),
    upstream        Nullable(String),
    fallback        Bool DEFAULT false,
    upstream_ms     Nullable(Float64),
    total_ms        Float64,
    bytes_in        UInt64,
    bytes_out       UInt64,
    config_version  LowCardinality(String),
    error           LowCardinality(Nullable(String))
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, request_id);

-- Load one file of the log, plain or gzip (by its .gz name): run once per
-- file, with its path in place of this example (file() reads under the
-- server's user_files_path; clickhouse-local and chdb read any path).
-- Load closed files only (access.jsonl.<stamp>Z[.gz]), each once; skip
-- *.partial, and a closed file whose .gz exists (read the .gz).
INSERT INTO cohort_access_log
SELECT * FROM file('/var/log/cohort/access.jsonl.20261204T181500.123456Z.gz', 'JSONEachRow')
SETTINGS date_time_input_format = 'best_effort', input_format_skip_unknown_fields = 1;

-- Each unit's assignment: the line that created it. A unit reset into a
-- new epoch has one assignment per epoch.
CREATE VIEW IF NOT EXISTS cohort_assignments AS
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
CREATE VIEW IF NOT EXISTS cohort_outcomes_by_assignment AS
SELECT a.experiment                                 AS experiment,
       a.assignment_epoch                           AS assignment_epoch,
       a.assigned_variant                           AS assigned_variant,
       any(a.expected_share)                        AS expected_share,
       uniqExact(a.unit)                            AS units,
       count()                                      AS requests,
       avg(if(l.status >= 500, 1.0, 0.0))           AS error_rate,
       quantileExact(0.5)(l.total_ms)               AS p50_ms,
       quantileExact(0.95)(l.total_ms)              AS p95_ms
FROM cohort_assignments AS a
INNER JOIN cohort_access_log AS l
  ON  l.experiment = a.experiment
  AND l.unit       = a.unit
  AND l.epoch      = a.assignment_epoch
GROUP BY a.experiment, a.assignment_epoch, a.assigned_variant;

SELECT * FROM cohort_outcomes_by_assignment
ORDER BY experiment, assignment_epoch, assigned_variant;
