"""Runs sluice's rollup DDL for the current ClickHouse engine in chDB, inserts Native files
written by sluice, and prints the answers of queries.

usage: rollup.py DDL_FILE INSERTS QUERIES
  DDL_FILE  the statements of `sluice schema ddl` for a current server version
  INSERTS   JSON list of [table, native_file]: each file is inserted as sluice inserts it
  QUERIES   JSON list of SELECT statements
prints one JSON line per query: the list of its rows (64-bit integers quoted).
Exit status 2 when chDB is missing, 1 when a statement fails.
"""
import json
import sys

try:
    from chdb import session
except ImportError as err:
    print(f"chdb is not importable by {sys.executable}: {err}. "
          "Install it with `pip install chdb-core`.", file=sys.stderr)
    sys.exit(2)

s = session.Session()


def run(sql, fmt="JSONEachRow"):
    try:
        result = s.query(sql, fmt)
    except Exception as err:  # chdb raises its own error type
        print(f"chdb refused {sql!r}: {err}", file=sys.stderr)
        sys.exit(1)
    return result.bytes().decode("utf-8")


for statement in open(sys.argv[1]).read().split(";\n"):
    statement = statement.strip()
    if statement and not statement.startswith("SET "):
        run(statement)
for table, path in json.loads(sys.argv[2]):
    run(f"INSERT INTO {table} SELECT * FROM file('{path}', Native)")
for query in json.loads(sys.argv[3]):
    rows = [json.loads(line) for line in run(query).splitlines() if line]
    print(json.dumps(rows))
