#!/usr/bin/env python3
"""Full materialisation benchmark for `quantlens materialize` (issue: the worker).

Generates the demo landing data (default 2000 symbols x 2520 days, about 5M rows), materialises
everything from an empty lake, and prints wall time, peak RSS, rows/s and per-asset seconds. Then
measures worker start-up to the first asset (median of several runs on an empty landing dir).

    cargo build --release -p quantlens
    python3 bench/materialize.py [--symbols 2000] [--days 2520] [--binary PATH] [--keep DIR]

Numbers go to docs/benchmarks.md by hand, with the machine they came from.
"""

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from deployed import use_deployed_allocator

REPO = Path(__file__).resolve().parent.parent


def default_binary():
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=REPO, check=True, capture_output=True, text=True).stdout)
    return str(Path(meta["target_directory"]) / "release" / "quantlens")


def machine():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem_kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    return f"{os.cpu_count()} cores, {model}, {mem_kb / 1024 / 1024:.0f} GiB RAM, Linux {platform.release()}"


def run_measured(cmd, env):
    """Runs one child and returns (seconds, peak RSS in MiB of that child, completed process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    # ru_maxrss of RUSAGE_CHILDREN is the max over all waited-for children: only meaningful when
    # this child is the largest so far, which holds for the materialisation (run after the demo).
    return seconds, max(peak, before) / 1024, proc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--days", type=int, default=2520)
    parser.add_argument("--binary", default=None)
    parser.add_argument("--keep", default=None, help="use this directory and keep it")
    args = parser.parse_args()
    use_deployed_allocator()
    binary = args.binary or default_binary()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ql-bench-"))
    env = dict(os.environ, DATA_ROOT=str(root / "data"), STATE_DIR=str(root / "state"))
    env.pop("LANDING_DIR", None)
    try:
        print(f"machine: {machine()}")
        print(f"binary:  {binary} ({os.path.getsize(binary) / 1e6:.1f} MB)")
        seconds, _, demo = run_measured(
            [binary, "demo", "--symbols", str(args.symbols), "--days", str(args.days), "--json"], env)
        summary = json.loads(demo.stdout)
        print(f"demo:    {summary['files']} files, {summary['bytes'] / 1e6:.0f} MB of CSV, "
              f"{summary['rows'] + summary['junk_rows'] + summary['duplicate_rows']} lines in {seconds:.1f} s")

        seconds, peak_mib, proc = run_measured([binary, "materialize"], env)
        lines = summary["rows"] + summary["junk_rows"] + summary["duplicate_rows"]
        print(f"materialize (full, from empty): {seconds:.2f} s wall, peak RSS {peak_mib:.0f} MiB, "
              f"{lines / seconds / 1e6:.2f} M landing rows/s")
        runs = json.loads(subprocess.run([binary, "runs", "--json", "--limit", "1"], env=env,
                                         check=True, capture_output=True, text=True).stdout)
        for asset in runs[0]["assets"]:
            start = dt.datetime.fromisoformat(asset["started_at"].replace("Z", "+00:00"))
            end = dt.datetime.fromisoformat(asset["finished_at"].replace("Z", "+00:00"))
            print(f"  {asset['key']:<20} {asset['rows_written']:>10} rows  {(end - start).total_seconds():6.2f} s")

        # Start-up: process spawn to the first asset_started event, on an empty landing dir.
        empty = root / "startup"
        startup_env = dict(env, DATA_ROOT=str(empty / "data"), STATE_DIR=str(empty / "state"))
        samples = []
        for i in range(7):
            spawned = time.time()
            subprocess.run([binary, "materialize", "--select", "bronze/prices", "--run-id", f"startup-{i}"],
                           env=startup_env, check=True, capture_output=True)
            events = (empty / "state" / "runs" / f"startup-{i}" / "events.ndjson").read_text().splitlines()
            first = next(json.loads(e) for e in events if '"asset_started"' in e)
            ts = dt.datetime.fromisoformat(first["ts"].replace("Z", "+00:00")).timestamp()
            samples.append((ts - spawned) * 1000)
        print(f"start-up to first asset: median {statistics.median(samples):.1f} ms "
              f"(min {min(samples):.1f}, max {max(samples):.1f}, 7 runs; timestamps have ms resolution)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
