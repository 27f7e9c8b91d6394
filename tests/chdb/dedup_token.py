"""Proves, on the current ClickHouse engine (chDB), that the DDL sluice writes for modern servers
plus the insert id sent as insert_deduplication_token store a retried insert once.

usage: dedup_token.py DDL_FILE  (the output of `sluice schema ddl --server-version 26.9`)
prints JSON: {"tables": [...], "rows_after_retry": n, "rows_after_new_insert": m}
"""
import json
import sys

from chdb import session

ddl = open(sys.argv[1]).read()
s = session.Session()
tables = []
for statement in ddl.split(";\n"):
    statement = "\n".join(l for l in statement.splitlines() if not l.startswith("--")).strip()
    if not statement or statement.startswith("SET "):
        continue
    s.query(statement)
    if statement.startswith("CREATE TABLE"):
        tables.append(statement.split()[5])

insert = (
    "INSERT INTO sluice.edge_access (request_id, time, client_ip, status, host, method, path) "
    "SETTINGS insert_deduplication_token = '{token}' "
    "VALUES ('{rid}', now(), '10.0.0.1', 200, 'h', 'GET', '/')"
)
count = lambda: int(str(s.query("SELECT count() FROM sluice.edge_access", "CSV")).strip())
s.query(insert.format(token="sluice-insert-1", rid="a"))
s.query(insert.format(token="sluice-insert-1", rid="a"))  # the retry of an unanswered insert
after_retry = count()
s.query(insert.format(token="sluice-insert-2", rid="b"))
print(json.dumps({"tables": tables, "rows_after_retry": after_retry, "rows_after_new_insert": count()}))
