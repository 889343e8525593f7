#!/usr/bin/env python3
"""What the shipped SQL assets (assets/gold/*.sql) cost, on the 5M-row demo (issue: SQL assets).

One landing history (default 2000 symbols x 2520 trading days, about 5M rows) is materialised
from an empty lake twice in the same run: once with an empty ASSETS_DIR (the four Rust assets)
and once with the repository's assets/ (plus gold/high_low_52w and gold/symbol_summary). Then the
lake with SQL assets gets the next trading days one delivery a run, as a feed would deliver
them, and each daily run is timed. Prints wall time, peak RSS (each child's own, from os.wait4)
and per-asset seconds.

    cargo build --release -p quantlens
    python3 bench/sql_assets.py [--symbols 2000] [--days 2520] [--daily 3] [--binary PATH]

About 3 minutes on 2 cores; scratch data (about 2 GB) goes to a temporary directory and is
deleted. Numbers go to docs/benchmarks.md by hand, with the machine they came from.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from incremental import Run, asset_seconds, pick_binary, run_record  # noqa: E402
from materialize import REPO, machine  # noqa: E402
from deployed import use_deployed_allocator  # noqa: E402

SQL_ASSETS = ["gold/high_low_52w", "gold/symbol_summary"]


def build(binary, landing, root, assets, run_id):
    env = dict(os.environ, LANDING_DIR=str(landing), DATA_ROOT=str(root / "data"),
               STATE_DIR=str(root / "state"), ASSETS_DIR=str(assets))
    run = Run([binary, "materialize", "--run-id", run_id], env)
    return env, run, asset_seconds(run_record(root / "state", run_id))


def report(label, run, seconds):
    print(f"{label}: {run.seconds:.2f} s wall, {run.cpu:.2f} s CPU, peak RSS {run.peak_mib:.0f} MiB")
    for key, spent in seconds.items():
        print(f"  {key:<22} {spent:6.3f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=None)
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--days", type=int, default=2520)
    parser.add_argument("--daily", type=int, default=3, help="daily deliveries to time")
    args = parser.parse_args()
    use_deployed_allocator()
    binary = pick_binary(args.binary)
    work = Path(tempfile.mkdtemp(prefix="ql-sql-bench-"))
    try:
        print(f"machine: {machine()}")
        print(f"binary:  {binary}")
        history, later = work / "landing", work / "later"
        Run([binary, "demo", "--symbols", str(args.symbols), "--days", str(args.days)],
            dict(os.environ, LANDING_DIR=str(history)))
        Run([binary, "demo", "--symbols", str(args.symbols), "--days", str(args.days + args.daily)],
            dict(os.environ, LANDING_DIR=str(later)))
        # Delivered long ago: bronze trusts (name, size, mtime) and does not re-read them.
        for path in history.iterdir():
            os.utime(path, (path.stat().st_atime - 86400, path.stat().st_mtime - 86400))
        no_assets = work / "no-assets"
        no_assets.mkdir()

        _, rust_only, rust_seconds = build(binary, history, work / "rust", no_assets, "full")
        report("full build, Rust assets only", rust_only, rust_seconds)
        shutil.rmtree(work / "rust")
        env, with_sql, sql_seconds = build(binary, history, work / "sql", REPO / "assets", "full")
        report("full build, with the SQL assets", with_sql, sql_seconds)
        own = sum(sql_seconds[key] for key in SQL_ASSETS)
        print(f"growth: {with_sql.seconds - rust_only.seconds:+.2f} s wall; the SQL assets' own "
              f"time {own:.2f} s")

        delivered = {p.name for p in history.iterdir()}
        new = sorted(p for p in later.iterdir() if p.name not in delivered)
        walls, peaks = [], []
        for day, path in enumerate(new, start=1):
            shutil.copy2(path, history / path.name)
            run = Run([binary, "materialize", "--run-id", f"day-{day}"], env)
            seconds = asset_seconds(run_record(work / "sql" / "state", f"day-{day}"))
            report(f"daily run {day} ({path.name})", run, seconds)
            walls.append(run.seconds)
            peaks.append(run.peak_mib)
        if walls:
            print(f"daily runs: median {statistics.median(walls):.3f} s wall, "
                  f"max peak RSS {max(peaks):.0f} MiB")
        print(json.dumps({"full_rust_s": round(rust_only.seconds, 2),
                          "full_sql_s": round(with_sql.seconds, 2),
                          "sql_assets_own_s": round(own, 2),
                          "daily_s": [round(w, 3) for w in walls]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
