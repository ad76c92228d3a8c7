#!/usr/bin/env python3
"""Load cohort access logs into DuckDB or ClickHouse (chdb, the embedded
engine) with the shipped SQL, and print the canonical analysis as JSON lines.

    python3 deploy/warehouse/load.py --engine duckdb --db cohort.duckdb /var/log/cohort/access.jsonl
    python3 deploy/warehouse/load.py --engine chdb   --db ./chdb-data   /var/log/cohort/access.jsonl

The argument is the log's path (`access_log.path`): every closed file next
to it is loaded, each once, by the rule of docs/access-log.md#rotation
(a closed file whose .gz exists is read from the .gz; *.partial skipped).
The live file is loaded too with --live (only when the proxy has stopped:
it is still growing otherwise). Needs `pip install duckdb` or `pip install chdb`.
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = "/var/log/cohort/access.jsonl.20261204T181500.123456Z.gz"
STAMP = re.compile(r"^\d{8}T\d{6}\.\d{6}Z(\.gz)?$")


def log_files(path, live):
    """The closed files of the log at `path`, oldest first, then the live one."""
    folder, base = os.path.split(os.path.abspath(path))
    names = sorted(os.listdir(folder))
    closed = []
    for n in names:
        if not n.startswith(base + ".") or not STAMP.match(n[len(base) + 1:]):
            continue
        if not n.endswith(".gz") and n + ".gz" in names:
            continue  # being removed: its .gz is complete
        closed.append(os.path.join(folder, n))
    if live and os.path.exists(os.path.join(folder, base)):
        closed.append(os.path.join(folder, base))
    return closed


def statements(sql_file):
    """The file's statements: split at a semicolon that ends a line."""
    text = open(sql_file).read()
    out = []
    for chunk in re.split(r";\s*\n", text):
        body = "\n".join(l for l in chunk.splitlines() if not l.strip().startswith("--")).strip()
        if body:
            out.append(body.rstrip(";"))
    return out


def run(engine, db, files):
    sql = statements(os.path.join(HERE, "duckdb.sql" if engine == "duckdb" else "clickhouse.sql"))
    if engine == "duckdb":
        import duckdb

        con = duckdb.connect(db)

        def query(q):
            cur = con.execute(q)
            if cur.description is None:
                return []
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]
    else:
        from chdb import session

        sess = session.Session(db)

        def query(q):
            res = sess.query(q, "JSONEachRow")
            text = res.bytes().decode() if hasattr(res, "bytes") else str(res)
            return [json.loads(l) for l in text.splitlines() if l.strip()]

    rows = []
    for stmt in sql:
        if EXAMPLE in stmt:
            for f in files:
                query(stmt.replace(EXAMPLE, f.replace("'", "''")))
        else:
            rows = query(stmt)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["duckdb", "chdb"], required=True)
    ap.add_argument("--db", required=True, help="DuckDB file, or chdb data folder")
    ap.add_argument("--live", action="store_true", help="load the live file too")
    ap.add_argument("log", help="the access log's path (access_log.path)")
    args = ap.parse_args()
    files = log_files(args.log, args.live)
    if not files:
        sys.exit(f"no log files at {args.log}")
    for row in run(args.engine, args.db, files):
        print(json.dumps(row, default=str))


if __name__ == "__main__":
    main()
