#!/usr/bin/env bash
# Starts the whole thing locally: ClickHouse on 127.0.0.1:8123, development certificates,
# sluice on https://127.0.0.1:8443 (mTLS) with its admin port on http://127.0.0.1:9090, then
# sends a sample load over mTLS and shows it in ClickHouse. sluice keeps running until Ctrl-C
# (or pass --no-wait to stop it after the sample).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
wait_at_end=1
[[ "${1:-}" == "--no-wait" ]] && wait_at_end=0

section() { printf '\n==> %s\n' "$*"; }

section "ClickHouse (instance 'default', 127.0.0.1:8123)"
deploy/local/clickhouse.sh start default

section "building sluice (release)"
cargo build --release --locked -p sluice -p sluice-loadtest --bins
# Where cargo put them: CARGO_TARGET_DIR if set (relative to the repository), else target/.
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$repo/$target_dir"
bin="$target_dir/release"

section "development certificates in .local/certs"
if [[ ! -f .local/certs/ca.crt ]]; then
    "$bin/sluice" certs dev --out .local/certs
else
    echo "already there (delete .local/certs to make new ones)"
fi

section "starting sluice (log: .local/sluice.log)"
mkdir -p .local
if curl -sf http://127.0.0.1:9090/healthz >/dev/null 2>&1; then
    echo "something already answers on 127.0.0.1:9090: stop the running sluice first" >&2
    exit 1
fi
"$bin/sluice" serve --config deploy/local/sluice.toml >.local/sluice.log 2>&1 &
sluice_pid=$!
trap 'kill -TERM $sluice_pid 2>/dev/null; wait $sluice_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:9090/readyz >/dev/null 2>&1 && break
    kill -0 $sluice_pid 2>/dev/null || { cat .local/sluice.log >&2; exit 1; }
    sleep 0.1
done
curl -sf http://127.0.0.1:9090/readyz || { cat .local/sluice.log >&2; exit 1; }

section "sample load over mTLS (client certificate edge-a)"
send() {
    "$bin/sluice-loadtest" send --ca .local/certs/ca.crt \
        --cert .local/certs/client-a.crt --key .local/certs/client-a.key "$@"
}
send --url https://127.0.0.1:8443/v1/streams/edge_access --stream edge_access \
    --rows 20000 --batch-rows 5000 --format ndjson --encoding gzip --seed 1
send --url https://127.0.0.1:8443/v1/streams/edge_access --stream edge_access \
    --rows 2000 --batch-rows 1000 --format delimited --encoding gzip --seed 2
send --url https://127.0.0.1:8443/v1/streams/edge_events --stream edge_events \
    --rows 5000 --batch-rows 1000 --format json-array --encoding zstd --seed 3

# The 200s came once the batches were in the spool; wait until ClickHouse has confirmed them.
for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:9090/metrics | grep -qx 'sluice_spool_unconfirmed_records 0' && break
    sleep 0.1
done

query="SELECT host, count() AS requests, round(avg(ttfb_ms)) AS avg_ttfb_ms, countIf(status >= 500) AS errors_5xx FROM sluice.edge_access GROUP BY host ORDER BY requests DESC LIMIT 5"
section "in ClickHouse: $query"
curl -sf 'http://127.0.0.1:8123/?default_format=PrettyCompactMonoBlock' --data-binary "$query"
echo
rollup="SELECT host, status_class, sumMerge(requests) AS requests, quantilesExactWeightedArrayMerge(0.5, 0.99)(ttfb_quantiles) AS ttfb_p50_p99, uniqCombinedArrayMerge(clients) AS clients FROM sluice.edge_access_1m GROUP BY host, status_class ORDER BY requests DESC LIMIT 5"
section "the same traffic pre-aggregated (rollup edge_access_1m): $rollup"
curl -sf 'http://127.0.0.1:8123/?default_format=PrettyCompactMonoBlock' --data-binary "$rollup"
echo
echo "Query it yourself:"
echo "  clickhouse-client --query \"$query\""
echo "Metrics: curl http://127.0.0.1:9090/metrics"

if [[ $wait_at_end == 1 ]]; then
    section "sluice is running (pid $sluice_pid); Ctrl-C stops it"
    wait $sluice_pid
fi
