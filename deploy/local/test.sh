#!/usr/bin/env bash
# The project's test command: deploy/local/test.sh [extra cargo test arguments]
#
# Installs what the suite needs (ClickHouse through deploy/local/clickhouse.sh, the Python
# packages in tests/requirements.txt), starts the ClickHouse instance "test" on 127.0.0.1
# (http 18123, tcp 19000: apart from the quick start's 8123/9000), and runs
#   cargo test --workspace --locked "$@"
# with TEST_CLICKHOUSE_URL and CHDB_PYTHON set. The instance is stopped at the end only if this
# script started it; one that was already running is left running.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO_ROOT"

CLICKHOUSE=deploy/local/clickhouse.sh
TEST_INSTANCE=test
TEST_HTTP_PORT=18123
TEST_TCP_PORT=19000

section() { printf '\n==== %s ====\n' "$*"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    ((EUID == 0)) || die "missing $*: install it (apt-get install $*) or run as root"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

section "Rust toolchain"
command -v cargo >/dev/null || die "cargo not found: install Rust (rust-version in Cargo.toml)"
cargo --version

section "Tools the tests run (openssl, curl, node, chromium, systemd-analyze)"
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v node >/dev/null || missing+=(nodejs)
# The status page is tested in headless Chromium.
command -v chromium >/dev/null || missing+=(chromium)
command -v systemd-analyze >/dev/null || missing+=(systemd) # checks deploy/systemd/
((${#missing[@]} == 0)) || apt_install "${missing[@]}"
openssl version
node --version
chromium --version
systemd-analyze --version | head -n 1

section "Python packages (tests/requirements.txt)"
PYTHON=${CHDB_PYTHON:-python3}
command -v "$PYTHON" >/dev/null || apt_install python3 python3-pip
"$PYTHON" -m pip --version >/dev/null 2>&1 || apt_install python3-pip
pip_log=$(mktemp)
pip_install() {
    PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$PYTHON" -m pip install -q -r tests/requirements.txt "$@" 2>"$pip_log"
}
if ! pip_install; then
    if grep -q externally-managed-environment "$pip_log"; then
        # Debian's own python3 refuses pip installs outside a venv (PEP 668).
        pip_install --break-system-packages || { cat "$pip_log" >&2; exit 1; }
    else
        cat "$pip_log" >&2
        exit 1
    fi
fi
rm -f "$pip_log"
CHDB_PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
"$CHDB_PYTHON" -c 'import chdb; print("chdb", chdb.__version__, "with", __import__("sys").version.split()[0])'
export CHDB_PYTHON

section "ClickHouse instance '$TEST_INSTANCE'"
started_here=0
cleanup() {
    if ((started_here)); then
        section "Stopping ClickHouse instance '$TEST_INSTANCE'"
        "$CLICKHOUSE" stop "$TEST_INSTANCE" || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
status=0
"$CLICKHOUSE" status "$TEST_INSTANCE" >/dev/null 2>&1 || status=$?
if ((status == 3)); then # stopped: this run starts it, so this run stops it
    started_here=1
fi
"$CLICKHOUSE" start "$TEST_INSTANCE" --http-port "$TEST_HTTP_PORT" --tcp-port "$TEST_TCP_PORT"
TEST_CLICKHOUSE_URL=$("$CLICKHOUSE" url "$TEST_INSTANCE")
export TEST_CLICKHOUSE_URL
printf 'TEST_CLICKHOUSE_URL=%s (ClickHouse %s)\n' "$TEST_CLICKHOUSE_URL" \
    "$(curl -fsS "$TEST_CLICKHOUSE_URL" --data-binary 'SELECT version()')"

# A whole-suite run gains nothing from incremental caches (about 1 GB of disk); set
# CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

section "cargo test --workspace --locked${*:+ $*}"
status=0
cargo test --workspace --locked "$@" || status=$?
exit "$status"
