#!/usr/bin/env python3
"""Memory bounded by a constant, not by the data (issue #14): full builds of growing landing sets
under a cgroup memory limit.

For each size (default 2,000, 4,000 and 10,000 symbols x 2,520 days: about 5M, 10M and 25M rows;
the largest is about 1.5 GB of CSV), generates the demo landing files, then runs
`quantlens materialize` from an empty lake (the four built-in layers, no SQL assets) inside a
fresh cgroup limited to `--limit-mib` (default 2048: cgroup v2 `memory.max`, or v1
`memory.limit_in_bytes`; needs root or a delegated cgroup, see tests/cgroup_memory.py). Prints,
per size: wall time, rows/s, the worker's own peak RSS and CPU time (wait4), the cgroup's peak
charge (which also counts page cache the kernel reclaims at the limit), the OOM kills, and the
per-asset seconds; then the growth of wall time, CPU time and peak RSS relative to the smallest
size. CPU time says whether the worker did more work per row; on a shared host the wall time
also moves with the neighbours.

    cargo build --release -p quantlens
    sudo python3 bench/scale.py [--symbols 2000 4000 10000] [--days 2520] [--limit-mib 2048]
                                [--repeat 3] [--binary PATH] [--keep DIR]

Scratch data goes to a temporary directory (about 6 GB at the peak for the default sizes) and is
deleted unless --keep. Numbers go to docs/benchmarks.md by hand, with the machine.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from materialize import default_binary, machine  # noqa: E402
from deployed import use_deployed_allocator  # noqa: E402
from cgroup_memory import MemoryLimit  # noqa: E402


def seconds_between(started, finished):
    import datetime as dt
    when = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()  # noqa: E731
    return when(finished) - when(started)


def measure(binary, root, symbols, days, limit_mib):
    landing = root / f"landing-{symbols}x{days}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTLENS_")}
    env.update(DATA_ROOT=str(root / "data"), STATE_DIR=str(root / "state"),
               LANDING_DIR=str(landing), ASSETS_DIR=str(root / "no-assets"))
    (root / "no-assets").mkdir(exist_ok=True)
    if not landing.exists():
        subprocess.run([binary, "demo", "--symbols", str(symbols), "--days", str(days)],
                       env=env, check=True, capture_output=True)
    csv_bytes = sum(p.stat().st_size for p in landing.iterdir())
    for path in (root / "data", root / "state"):
        shutil.rmtree(path, ignore_errors=True)
    with MemoryLimit(limit_mib * 2**20) as limit:
        if limit.unavailable:
            raise SystemExit(f"no cgroup memory limit here: {limit.unavailable}")
        started = time.perf_counter()
        status, peak_rss, output = limit.run([binary, "materialize", "--run-id", "scale"], env,
                                             timeout=7200)
        wall = time.perf_counter() - started
        cgroup_peak, kills, knob = limit.peak(), limit.oom_kills(), limit.describe()
        user, system = limit.usage.ru_utime, limit.usage.ru_stime
    if status != 0:
        print(output[-3000:])
        return {"symbols": symbols, "status": status, "kills": kills, "knob": knob,
                "peak_mib": peak_rss / 2**20, "wall": wall}
    record = json.loads(subprocess.run([binary, "runs", "scale"], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    assets = {a["key"]: (seconds_between(a["started_at"], a["finished_at"]), a["rows_written"])
              for a in record["assets"]}
    rows = assets["bronze/prices"][1]
    shutil.rmtree(root / "data", ignore_errors=True)
    return {"symbols": symbols, "days": days, "status": status, "wall": wall, "rows": rows,
            "csv_mb": csv_bytes / 1e6, "peak_mib": peak_rss / 2**20,
            "cgroup_peak_mib": (cgroup_peak or 0) / 2**20, "kills": kills, "knob": knob,
            "user": user, "system": system, "assets": assets}


def report(result, round_number, rounds):
    symbols = result["symbols"]
    if result["status"] != 0:
        print(f"{symbols} symbols: FAILED with status {result['status']} under "
              f"{result['knob']} (OOM kills: {result['kills']}, peak RSS "
              f"{result['peak_mib']:.0f} MiB)")
        return
    print(f"\n{symbols} symbols x {result['days']} days, run {round_number} of {rounds}: "
          f"{result['rows']:,} rows, {result['csv_mb']:.0f} MB of CSV, under {result['knob']}")
    print(f"  wall {result['wall']:.2f} s, {result['rows'] / result['wall'] / 1e6:.2f} M rows/s, "
          f"peak RSS {result['peak_mib']:.0f} MiB, cgroup peak "
          f"{result['cgroup_peak_mib']:.0f} MiB, OOM kills {result['kills']}")
    print(f"  CPU {result['user'] + result['system']:.2f} s (user {result['user']:.2f} s, "
          f"system {result['system']:.2f} s)")
    for key, (seconds, written) in result["assets"].items():
        print(f"  {key:<20} {seconds:7.2f} s {written or 0:>12,} rows")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, nargs="+", default=[2000, 4000, 10000])
    parser.add_argument("--days", type=int, default=2520)
    parser.add_argument("--limit-mib", type=int, default=2048)
    parser.add_argument("--binary", default=None, help="quantlens (default: target/release)")
    parser.add_argument("--keep", default=None, help="use this directory and keep it")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over the sizes; the summary shows each size's median")
    args = parser.parse_args()
    use_deployed_allocator()
    binary = args.binary or default_binary()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ql-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(f"binary:  {binary} ({os.path.getsize(binary) / 1e6:.1f} MB)")
    results = {symbols: [] for symbols in args.symbols}
    try:
        # Round after round over the sizes, so that a host getting busier or quieter weighs on
        # every size alike; the summary takes each size's median.
        for round_number in range(1, args.repeat + 1):
            for symbols in args.symbols:
                result = measure(binary, root, symbols, args.days, args.limit_mib)
                results[symbols].append(result)
                report(result, round_number, args.repeat)
        done = [runs for runs in results.values() if all(r["status"] == 0 for r in runs)]
        if len(done) > 1:
            base = statistics.median(r["wall"] for r in done[0])
            cpu_of = lambda r: r["user"] + r["system"]  # noqa: E731
            base_cpu = statistics.median(cpu_of(r) for r in done[0])
            print(f"\n{'rows':>12} {'wall s':>8} {'range':>13} {'x rows':>7} {'x time':>7} "
                  f"{'CPU s':>7} {'x CPU':>6} {'peak MiB':>9}")
            for runs in done:
                walls = [r["wall"] for r in runs]
                wall = statistics.median(walls)
                cpu = statistics.median(cpu_of(r) for r in runs)
                print(f"{runs[0]['rows']:>12,} {wall:8.2f} {min(walls):6.2f}-{max(walls):<6.2f} "
                      f"{runs[0]['rows'] / done[0][0]['rows']:7.2f} {wall / base:7.2f} "
                      f"{cpu:7.2f} {cpu / base_cpu:6.2f} {max(r['peak_mib'] for r in runs):9.0f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
