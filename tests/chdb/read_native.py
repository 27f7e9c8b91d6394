"""Reads a Native-format file with chDB (the current ClickHouse engine) and prints its rows.

    python3 tests/chdb/read_native.py FILE 'col1 Type1, col2 Type2, ...'

Used by tests/encode_chdb.rs to prove sluice's Native bytes against the modern engine. The file
is read WITHOUT the structure argument: Native is self-describing, so the engine interprets the
data by the names and types in the block headers, exactly as a server does on INSERT. (Passing a
structure to file() would let the engine cast mismatching columns instead of failing.) The given
structure is instead compared with what the engine reads from the headers, both spelled the
engine's canonical way (e.g. Enum8 variants ordered by code).

Output: one JSON object per row (JSONEachRow), 64-bit integers quoted, DateTime as unix seconds.
Exit status 2 with a message when chDB is missing, 1 when the file or its structure is wrong.
"""

import json
import sys

try:
    import chdb
except ImportError as err:
    print(
        f"chdb is not importable by {sys.executable}: {err}. "
        "Install it with `pip install chdb-core` or point CHDB_PYTHON at a Python that has it.",
        file=sys.stderr,
    )
    sys.exit(2)


def sql_string(text):
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def query(sql):
    try:
        result = chdb.query(sql, "JSONEachRow")
    except Exception as err:  # chdb raises its own ChdbError
        print(f"chdb refused {sql!r}: {err}", file=sys.stderr)
        sys.exit(1)
    error = getattr(result, "error_message", None)
    if callable(error) and error():
        print(f"chdb refused {sql!r}: {error()}", file=sys.stderr)
        sys.exit(1)
    return [json.loads(line) for line in result.bytes().decode("utf-8").splitlines() if line]


def columns(table_function):
    return [(row["name"], row["type"]) for row in query(f"DESCRIBE {table_function}")]


def main():
    if len(sys.argv) != 3:
        print("usage: read_native.py FILE 'name Type, ...'", file=sys.stderr)
        sys.exit(2)
    path, structure = sys.argv[1], sys.argv[2]
    source = f"file({sql_string(path)}, Native)"

    from_headers = columns(source)
    declared = columns(f"file({sql_string(path)}, Native, {sql_string(structure)})")
    if from_headers != declared:
        print(
            "the file's block headers do not describe the expected structure:\n"
            f"  read:     {from_headers}\n  expected: {declared}",
            file=sys.stderr,
        )
        sys.exit(1)

    rows = query(
        f"SELECT * FROM {source} SETTINGS output_format_json_quote_64bit_integers = 1, "
        "date_time_output_format = 'unix_timestamp'"
    )
    for row in rows:
        print(json.dumps(row))  # ASCII: \u escapes survive any stdout encoding


if __name__ == "__main__":
    main()
