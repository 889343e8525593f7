#!/usr/bin/env bash
# Footprint of the trigger daemon (quantlens-trigger): stripped release binary size, idle RSS,
# RSS after 10,000 and 20,000 requests, after 1,000 loads of the status page and after a
# 500-connection burst, and GET /health latency at a fixed 1,000 requests/s on loopback. Prints
# the numbers and the machine; docs/benchmarks.md records them. Nothing here asserts a timing:
# this measures, it does not test.
#
#   scripts/package-release "$(rustc -vV | sed -n 's/^host: //p')"   # the shipped artefact
#   bench/trigger_footprint.sh [BINARY]   # default: dist/<host triple>/quantlens-trigger
#
# It measures the binary that ships (scripts/package-release builds the daemon in a cargo
# invocation of its own; built together with the worker it is a third bigger), not a build of
# its own; only the load generator is built here, into $CARGO_TARGET_DIR.
#
# Load goes only to 127.0.0.1, at a fixed rate for a bounded time (10 s per phase), from the
# std-only generator crates/trigger/examples/trigger_load.rs (wrk measures throughput, not latency
# at a set rate; wrk2 is not in Debian). Latency is measured from when each request was due, so a
# stall cannot hide by slowing the sender (coordinated omission); service time from the actual
# send is printed as well.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/target-trigger-release}"
RATE="${RATE:-1000}"
SECONDS_PER_PHASE="${SECONDS_PER_PHASE:-10}"
CONNECTIONS="${CONNECTIONS:-4}"

BIN="${1:-dist/$(rustc -vV | sed -n 's/^host: //p')/quantlens-trigger}"
[[ -x "$BIN" ]] || { echo "no $BIN: run scripts/package-release for this machine first" >&2; exit 2; }
cargo build --release --locked -p quantlens-trigger --example trigger_load >&2
LOAD="$CARGO_TARGET_DIR/release/examples/trigger_load"

work="$(mktemp -d)"
daemon_pid="" holder_pid=""
cleanup() {
  [[ -n "$daemon_pid" ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  [[ -n "$holder_pid" ]] && kill "$holder_pid" 2>/dev/null && wait "$holder_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status"; }
mib() { awk -v kb="$1" 'BEGIN { printf "%.2f MiB", kb / 1024 }'; }

# A state directory as a VM has it after a while: the worker's default retention of 200 run
# records (older failures, the newest a fresh success), so /health answers 200 as in production
# and listing costs what it costs there. Each record lists the pipeline's four assets.
RUNS="${RUNS:-200}"
python3 - "$work/state" "$RUNS" <<'PY'
import datetime, json, pathlib, sys
state, count = pathlib.Path(sys.argv[1]), int(sys.argv[2])
now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
for i in range(count):
    at = now - datetime.timedelta(days=count - 1 - i)
    run_id = at.strftime("%Y%m%dT%H%M%SZ") + f"-{i:06x}"
    stamp = at.isoformat().replace("+00:00", "Z")
    ok = i == count - 1 or i % 3 != 0
    assets = [{"key": k, "status": "succeeded" if ok else "failed", "attempts": 1,
               "started_at": stamp, "finished_at": stamp, "table_version": i, "rows_written": 1000,
               "checks": [{"name": "not_null", "passed": ok, "blocking": True, "detail": "-"}],
               "error": None if ok else "check failed"}
              for k in ("bronze/prices", "silver/prices", "gold/returns", "gold/market_daily")]
    record = {"run_id": run_id, "status": "succeeded" if ok else "failed", "trigger": "timer",
              "selection": "*", "pid": None, "started_at": stamp, "finished_at": stamp,
              "exit_code": 0 if ok else 1, "error": None if ok else "1 asset failed",
              "assets": assets}
    run_dir = state / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(record, indent=2))
    (run_dir / "worker.log").write_text("".join(f"line {n} of a worker log\n" for n in range(200)))
# The catalog snapshot the worker leaves (GET /assets): the six shipped assets and two side tables.
tables = ["bronze/prices", "bronze/landing_files", "silver/prices", "silver/prices_rejects",
          "gold/returns", "gold/market_daily", "gold/high_low_52w", "gold/symbol_summary"]
last = now.isoformat().replace("+00:00", "Z")
catalog = {"generated_at": last, "run_id": run_id, "edges": [
    ["bronze/prices", "silver/prices"], ["silver/prices", "gold/returns"],
    ["gold/returns", "gold/market_daily"], ["silver/prices", "gold/high_low_52w"],
    ["gold/returns", "gold/symbol_summary"]], "assets": [
    {"table": t, "layer": t.split("/")[0], "kind": "sql" if "52w" in t or "summary" in t else "rust",
     "defined_in": None, "description": "a table of the demo pipeline", "group": t.split("/")[0],
     "deps": [], "side_table_of": None, "code_version": "1", "version": 200, "rows": 5_000_000,
     "last_materialized": last, "state": "fresh",
     "last_run": {"run_id": run_id, "status": "succeeded", "finished_at": last, "error": None,
                  "checks": [{"name": "not_null", "passed": True, "blocking": True, "detail": "-"}]}}
    for t in tables]}
(state / "catalog.json").write_text(json.dumps(catalog))
PY
run_id="$(ls "$work/state/runs" | sort | tail -n 1)"

"$BIN" --worker /bin/true --state-dir "$work/state" --listen 127.0.0.1:0 2> "$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 1 100); do
  grep -q "serving on" "$work/daemon.log" && break
  sleep 0.05
done
addr="$(sed -n 's/.*serving on http:\/\/\([^ ]*\).*/\1/p' "$work/daemon.log")"
[[ -n "$addr" ]] || { cat "$work/daemon.log" >&2; exit 1; }

sleep 2
idle_kb="$(rss_kb)"

# Phase 1: GET /health only, at the fixed rate: the latency number.
health_json="$("$LOAD" "$addr" "$RATE" "$SECONDS_PER_PHASE" "$CONNECTIONS" "GET /health")"
after_health_kb="$(rss_kb)"

# Phase 2: the per-run endpoints and POST /trigger, with the run lock held by another process
# the way the timer's worker would, so the POSTs go through the lock and answer 409 instead of
# starting runs.
flock --no-fork -x "$work/state/run.lock" sleep 300 &
holder_pid=$!
sleep 0.2
mixed_json="$("$LOAD" "$addr" "$RATE" "$SECONDS_PER_PHASE" "$CONNECTIONS" \
  "GET /health" "GET /runs/$run_id" "GET /runs/$run_id/log?tail=100" "POST /trigger")"
after_mixed_kb="$(rss_kb)"

# Phase 3: GET /runs (the default 20 newest) at a modest rate: listing reads the state directory,
# so it is measured on its own rather than at 1,000/s.
list_json="$("$LOAD" "$addr" 20 5 1 "GET /runs")"

# Phase 4: 1,000 loads of the status page, each its six requests (the page, its script and
# stylesheet, then what it fetches: the verdict, the catalog, the runs list), at 600 requests/s.
pages_json="$("$LOAD" "$addr" 600 10 "$CONNECTIONS" \
  "GET /" "GET /app.js" "GET /app.css" "GET /status" "GET /assets" "GET /runs?limit=50")"
after_pages_kb="$(rss_kb)"

# Phase 5: a burst of 500 concurrent connections, each one POST /trigger (409: lock still held),
# as in the single-flight test. RSS right after it, and once the daemon has trimmed its heap
# (it does so within 5 s of going quiet).
python3 - "$addr" <<'PY'
import asyncio, sys
host, port = sys.argv[1].rsplit(":", 1)
async def burst(n=500):
    conns = await asyncio.gather(*[asyncio.open_connection(host, int(port)) for _ in range(n)])
    for _, w in conns:
        w.write(b"POST /trigger HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    replies = await asyncio.wait_for(asyncio.gather(*[r.read() for r, _ in conns]), 60)
    for _, w in conns:
        w.close()
    assert all(b" 409 " in r[:16] for r in replies), "expected 409s"
asyncio.run(burst())
PY
after_burst_kb="$(rss_kb)"
sleep 6
after_trim_kb="$(rss_kb)"
threads="$(awk '/^Threads:/ {print $2}' "/proc/$daemon_pid/status")"

size_bytes="$(stat -c %s "$BIN")"
p99() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d[sys.argv[2]]["p99_ms"])' "$1" "$2"; }

cat <<EOF
machine:        $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)
load average:   $(cut -d' ' -f1-3 /proc/loadavg) (at the end; the machine may be shared)
state:          $RUNS run records (the worker's default retention)
binary:         $size_bytes bytes ($(mib $((size_bytes / 1024)))), stripped release build
threads:        $threads
idle RSS:       $idle_kb kB ($(mib "$idle_kb"))
RSS after 10k:  $after_health_kb kB ($(mib "$after_health_kb"))   (10,000 x GET /health)
RSS after 20k:  $after_mixed_kb kB ($(mib "$after_mixed_kb"))   (+10,000 mixed: /health, /runs/ID, /runs/ID/log, POST /trigger -> 409)
after 1k pages: $after_pages_kb kB ($(mib "$after_pages_kb"))   (1,000 page loads: /, /app.js, /app.css, /status, /assets, /runs?limit=50)
after a burst:  $after_burst_kb kB ($(mib "$after_burst_kb"))   (500 concurrent connections, POST /trigger -> 409)
6 s later:      $after_trim_kb kB ($(mib "$after_trim_kb"))   (heap trimmed once quiet)
GET /health at $RATE req/s for ${SECONDS_PER_PHASE}s over $CONNECTIONS connections:
  p99 from schedule: $(p99 "$health_json" latency_from_schedule) ms   p99 from send: $(p99 "$health_json" latency_from_send) ms
  $health_json
mixed at $RATE req/s for ${SECONDS_PER_PHASE}s:
  $mixed_json
GET /runs at 20 req/s for 5s ($RUNS records in the state directory):
  $list_json
1,000 page loads (6,000 requests at 600 req/s):
  $pages_json
EOF
