#!/usr/bin/env python3
"""Incremental daily run benchmark for `quantlens materialize` (issue: incremental runs).

Part 1 (history): builds a lake from the demo history (default 2000 symbols x 2500 trading days,
about 5M rows, then the same with 5000 days: the daily cost must not grow with history), dates the
history files a day back (delivered long ago; `--fresh-history` keeps them new, and bronze then
re-reads them), times the full build, then delivers the following trading days one file at a time,
as a feed would (a fresh file, the history untouched),
and times one `quantlens materialize` per day: wall time, peak RSS, per-asset seconds and what
each table's commit touched. The daily sequence is repeated from a copy of the freshly built lake
(`--repeat`, default 5; the full build `--full-repeat`, default 3) and the median is reported.

Part 2 (log): a small lake (default 20 symbols) gets `--log-runs` daily deliveries, one run each
(each run adds one commit to every table), and at 10, 100, 250, 500, 1000 commits the script times
opening the tables: `quantlens assets --json` (opens all six) and Python deltalake `DeltaTable()`
of silver/prices, then the same on a copy with the checkpoints removed.

    cargo build --release -p quantlens
    python3 bench/incremental.py [--days 2500 5000] [--daily 3] [--repeat 3] [--log-runs 1000]
                                 [--only history|log] [--binary PATH] [--keep DIR]

The binary is --binary, else $QUANTLENS_BIN, else /root/.cache/quantlens/target/release/quantlens
when it exists, else the workspace's release target. Numbers go to docs/benchmarks.md by hand,
with the machine they came from.
"""

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from materialize import default_binary, machine  # noqa: E402

CACHED_BINARY = "/root/.cache/quantlens/target/release/quantlens"
TABLES = ["bronze/prices", "bronze/landing_files", "silver/prices", "silver/prices_rejects",
          "gold/returns", "gold/market_daily"]
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def pick_binary(flag):
    if flag:
        return flag
    if os.environ.get("QUANTLENS_BIN"):
        return os.environ["QUANTLENS_BIN"]
    if os.path.exists(CACHED_BINARY):
        return CACHED_BINARY
    return default_binary()


class Run:
    """One finished child: wall seconds, its own peak RSS and CPU time (os.wait4 reports that
    child's rusage alone, unlike RUSAGE_CHILDREN which is the max over all children so far)."""

    def __init__(self, cmd, env):
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            self.seconds = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            self.stdout = out.read().decode()
            self.stderr = err.read().decode()
        self.peak_kib = usage.ru_maxrss
        self.cpu = usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{self.stdout}\n{self.stderr}")

    @property
    def peak_mib(self):
        return self.peak_kib / 1024


def mib(kib):
    return f"{kib / 1024:.0f} MiB ({kib * 1024 / 1e6:.0f} MB)"


def seconds_between(a, b):
    parse = lambda s: dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", s.replace("Z", "+00:00")))
    return (parse(b) - parse(a)).total_seconds()


def asset_seconds(record):
    return {a["key"]: seconds_between(a["started_at"], a["finished_at"]) for a in record["assets"]
            if a["started_at"] and a["finished_at"]}


def run_record(state, run_id):
    return json.loads((state / "runs" / run_id / "run.json").read_text())


def commit_actions(data, table, version):
    """What one commit did: files added and removed (count, bytes) and its predicate."""
    path = data / table / "_delta_log" / f"{version:020d}.json"
    added = removed = add_bytes = remove_bytes = 0
    predicate = None
    for line in path.read_text().splitlines():
        action = json.loads(line)
        if "add" in action:
            added += 1
            add_bytes += action["add"].get("size") or 0
        elif "remove" in action:
            removed += 1
            remove_bytes += action["remove"].get("size") or 0
        elif "commitInfo" in action:
            predicate = (action["commitInfo"].get("operationParameters") or {}).get("predicate")
    return added, add_bytes, removed, remove_bytes, predicate


def describe_run(record, data):
    """Per-asset lines: seconds, rows written, version, files added/removed by the commit."""
    lines = []
    for asset in record["assets"]:
        secs = (seconds_between(asset["started_at"], asset["finished_at"])
                if asset["started_at"] and asset["finished_at"] else float("nan"))
        version = asset["table_version"]
        touched = ""
        if version is not None:
            added, add_bytes, removed, remove_bytes, predicate = commit_actions(data, asset["key"], version)
            touched = f"+{added} files ({add_bytes / 1e6:.2f} MB) -{removed} files ({remove_bytes / 1e6:.2f} MB)"
            if predicate:
                touched += f"  [{predicate}]"
        else:
            touched = asset.get("error") or ""
        rows = asset["rows_written"] if asset["rows_written"] is not None else "-"
        lines.append(f"    {asset['key']:<18} {secs:6.3f} s  {rows:>9} rows  v{version if version is not None else '-':<5} {touched}")
    return lines


def bronze_read(run, landing):
    """How many landing files bronze read and hashed, from its progress line about the others."""
    listed = sum(1 for p in landing.iterdir() if not p.name.startswith("."))
    match = re.search(r"(\d+) landing file\(s\) unchanged since ingested", run.stderr)
    skipped = int(match.group(1)) if match else 0
    return f"bronze read {listed - skipped} of {listed} landing files"


def deliveries(files):
    """Landing files grouped by the trading day in their name, oldest first."""
    by_day = {}
    for name in files:
        match = DATE.search(name)
        by_day.setdefault(match.group(0) if match else name, []).append(name)
    return [sorted(by_day[day]) for day in sorted(by_day)]


def copy_tree(src, dst):
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


def disk_mb(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def summarise(label, values, unit, fmt="{:.3f}"):
    med = statistics.median(values)
    spread = ", ".join(fmt.format(v) for v in values)
    return f"{label}: median {fmt.format(med)} {unit} ({spread})"


# ---------------------------------------------------------------------------------------------
# Part 1: daily runs on a large history


def history(binary, root, symbols, days, daily, repeat, verbose, backdate, full_repeat):
    top = root / f"history-{days}"
    landing, next_dir = top / "landing", top / "next"
    work, base = top / "work", top / "base"
    env = dict(os.environ, LANDING_DIR=str(landing), DATA_ROOT=str(work / "data"),
               STATE_DIR=str(work / "state"))
    print(f"\n=== history: {symbols} symbols x {days} trading days, then {daily} daily deliveries "
          f"x {repeat} repetitions ===")

    demo = Run([binary, "demo", "--symbols", str(symbols), "--days", str(days), "--json"], env)
    summary = json.loads(demo.stdout)
    lines = summary["rows"] + summary["junk_rows"] + summary["duplicate_rows"]
    print(f"demo history: {summary['files']} files, {summary['bytes'] / 1e6:.0f} MB of CSV, "
          f"{lines} lines ({demo.seconds:.1f} s){', modified a day ago' if backdate else ', just written'}")

    if backdate:
        # Delivered long ago, as a history is: bronze trusts (name, size, mtime) only for files
        # modified more than its clock-skew margin (5 minutes) before they were ingested, so files
        # written seconds before the full build would be re-read and hashed by every daily run.
        past = time.time() - 86400
        for path in landing.iterdir():
            os.utime(path, (past, past))

    # The next days, as the feed would deliver them: the same seed and start with more days gives
    # the same files plus the new ones (the generator is deterministic); only the new ones are
    # copied in later, so the history keeps its modification times and bronze does not re-read it.
    Run([binary, "demo", "--symbols", str(symbols), "--days", str(days + daily), "--json"],
        dict(env, LANDING_DIR=str(next_dir)))
    have = {p.name for p in landing.iterdir()}
    new = sorted(p.name for p in next_dir.iterdir() if p.name not in have)
    last = max(have, key=lambda n: (DATE.search(n).group(0) if DATE.search(n) else "", n))
    if (landing / last).read_bytes() != (next_dir / last).read_bytes():
        raise SystemExit(f"the longer demo differs from the history at {last}: not the same seed/start?")
    days_new = deliveries(new)[:daily]
    print("daily deliveries: " + "; ".join(
        ", ".join(f"{n} ({(next_dir / n).stat().st_size / 1e3:.0f} kB)" for n in group) for group in days_new))

    builds = []
    for rep in range(full_repeat):
        shutil.rmtree(work, ignore_errors=True)
        os.sync()
        full = Run([binary, "materialize", "--run-id", f"full-{rep + 1}"], env)
        builds.append(full)
        record = run_record(work / "state", f"full-{rep + 1}")
        print(f"full build (empty lake) rep {rep + 1}: {full.seconds:.2f} s wall, peak RSS {mib(full.peak_kib)}, "
              f"{full.cpu:.1f} s CPU")
        for line in describe_run(record, work / "data"):
            print(line)
    print(f"lake: {disk_mb(work / 'data'):.0f} MB on disk")

    shutil.rmtree(base, ignore_errors=True)
    work.rename(base)
    results = [[] for _ in days_new]
    idle = []
    for rep in range(repeat):
        copy_tree(base, work)
        for group in days_new:
            for name in group:
                (landing / name).unlink(missing_ok=True)
        os.sync()  # the copy's dirty pages are written back before the clock starts
        for day, group in enumerate(days_new):
            for name in group:
                shutil.copyfile(next_dir / name, landing / name)  # a fresh delivery, new mtime
            run_id = f"day{day + 1}-rep{rep + 1}"
            run = Run([binary, "materialize", "--run-id", run_id], env)
            record = run_record(work / "state", run_id)
            run.assets = asset_seconds(record)
            results[day].append(run)
            print(f"  day {day + 1} ({', '.join(group)}) rep {rep + 1}: {run.seconds:.3f} s wall, "
                  f"peak RSS {mib(run.peak_kib)}, {run.cpu:.2f} s CPU, {bronze_read(run, landing)}")
            if rep == 0 or verbose:
                for line in describe_run(record, work / "data"):
                    print(line)
                if day == 0 and rep == 0 or verbose:
                    print("    progress (stderr):")
                    for line in run.stderr.splitlines():
                        print(f"      {line}")
        run = Run([binary, "materialize", "--run-id", f"idle-rep{rep + 1}"], env)
        idle.append(run)
        print(f"  no new file, rep {rep + 1}: {run.seconds:.3f} s wall, peak RSS {mib(run.peak_kib)}, "
              f"{run.cpu:.2f} s CPU, {bronze_read(run, landing)}")

    print(f"--- summary, {days} days of history ---")
    print(summarise("full build wall", [r.seconds for r in builds], "s", "{:.2f}"))
    print(summarise("full build peak RSS", [r.peak_mib for r in builds], "MiB", "{:.0f}"))
    print(summarise("full build CPU", [r.cpu for r in builds], "s", "{:.1f}"))
    for day, runs in enumerate(results):
        print(summarise(f"day {day + 1} wall", [r.seconds for r in runs], "s"))
        print(summarise(f"day {day + 1} peak RSS", [r.peak_mib for r in runs], "MiB", "{:.0f}"))
        keys = list(runs[0].assets)
        parts = [f"{k} {statistics.median(r.assets[k] for r in runs):.3f}" for k in keys]
        outside = statistics.median(r.seconds - sum(r.assets.values()) for r in runs)
        print(f"day {day + 1} per asset, median s: {', '.join(parts)}; outside assets {outside:.3f}")
    print(summarise("no new file wall", [r.seconds for r in idle], "s"))
    print(summarise("no new file peak RSS", [r.peak_mib for r in idle], "MiB", "{:.0f}"))
    shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Part 2: the Delta log over many daily commits


def checkpoint_state(table):
    log = table / "_delta_log"
    commits = len(list(log.glob("*.json")))
    checkpoints = len(list(log.glob("*.checkpoint*.parquet")))
    last = log / "_last_checkpoint"
    last_version = json.loads(last.read_text())["version"] if last.exists() else None
    return commits, checkpoints, last_version


def strip_checkpoints(src, dst):
    copy_tree(src, dst)
    for path in dst.rglob("_delta_log/*"):
        if ".checkpoint" in path.name or path.name == "_last_checkpoint":
            path.unlink()


def time_open(path, times):
    from deltalake import DeltaTable

    samples, version = [], None
    for _ in range(times):
        start = time.perf_counter()
        table = DeltaTable(str(path))
        samples.append(time.perf_counter() - start)
        version = table.version()
    return statistics.median(samples), version


def time_assets(binary, env, times):
    samples = []
    for _ in range(times):
        run = Run([binary, "assets", "--json"], env)
        samples.append(run.seconds)
    return statistics.median(samples), json.loads(run.stdout)


def log_growth(binary, root, symbols, runs, marks, times):
    top = root / "log"
    feed, landing = top / "feed", top / "landing"
    env = dict(os.environ, LANDING_DIR=str(landing), DATA_ROOT=str(top / "data"), STATE_DIR=str(top / "state"))
    print(f"\n=== Delta log: {symbols} symbols, {runs} daily deliveries, one run each ===")
    Run([binary, "demo", "--symbols", str(symbols), "--days", str(runs), "--json"], dict(env, LANDING_DIR=str(feed)))
    landing.mkdir(parents=True)
    days = deliveries(p.name for p in feed.iterdir())
    walls, rows = [], []
    started = time.perf_counter()
    for index, group in enumerate(days[:runs]):
        for name in group:
            shutil.copyfile(feed / name, landing / name)
        run = Run([binary, "materialize"], env)
        walls.append(run.seconds)
        count = index + 1
        if count not in marks:
            continue
        silver = top / "data" / "silver" / "prices"
        commits, checkpoints, last = checkpoint_state(silver)
        assets_s, assets = time_assets(binary, env, times)
        versions = {a["table"]: a["version"] for a in assets}
        open_s, version = time_open(silver, times)
        bare = top / "bare"
        strip_checkpoints(top / "data", bare)
        open_bare_s, bare_version = time_open(bare / "silver" / "prices", times)
        assert bare_version == version, (bare_version, version)
        bare_assets_s, _ = time_assets(binary, dict(env, DATA_ROOT=str(bare)), times)
        window = walls[-10:]
        row = dict(runs=count, versions=versions, commits=commits, checkpoints=checkpoints, last=last,
                   assets=assets_s, assets_bare=bare_assets_s, open=open_s, open_bare=open_bare_s,
                   run_wall=statistics.median(window), run_peak=run.peak_mib)
        rows.append(row)
        print(f"after {count} runs ({time.perf_counter() - started:.0f} s): silver/prices v{version}, "
              f"{commits} commit files, {checkpoints} checkpoint(s), last checkpoint v{last}; "
              f"versions {versions}")
        print(f"  quantlens assets --json: {assets_s * 1000:.0f} ms (no checkpoints: {bare_assets_s * 1000:.0f} ms); "
              f"DeltaTable(silver/prices): {open_s * 1000:.1f} ms (no checkpoints: {open_bare_s * 1000:.1f} ms); "
              f"daily run: median {row['run_wall'] * 1000:.0f} ms of the last {len(window)}, "
              f"peak RSS {run.peak_mib:.0f} MiB")
        shutil.rmtree(bare)

    print(f"--- summary, medians of {times} (daily run: median of the 10 runs up to that point) ---")
    print("| runs (commits per table) | silver last checkpoint | `assets --json` | same, no checkpoints "
          "| `DeltaTable()` silver/prices | same, no checkpoints | daily run wall |")
    for r in rows:
        print(f"| {r['runs']} | {r['last'] if r['last'] is not None else '-'} | {r['assets'] * 1000:.0f} ms "
              f"| {r['assets_bare'] * 1000:.0f} ms | {r['open'] * 1000:.1f} ms | {r['open_bare'] * 1000:.1f} ms "
              f"| {r['run_wall'] * 1000:.0f} ms |")
    shutil.rmtree(top, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=None)
    parser.add_argument("--only", choices=["history", "log"], default=None)
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--days", type=int, nargs="+", default=[2500, 5000],
                        help="history lengths in trading days (default 2500 5000: 10 and 20 years)")
    parser.add_argument("--daily", type=int, default=3, help="consecutive daily deliveries to time")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of the daily sequence")
    parser.add_argument("--full-repeat", type=int, default=3, help="repetitions of the full build")
    parser.add_argument("--fresh-history", action="store_true",
                        help="keep the history files' fresh modification times (bronze then re-reads them daily)")
    parser.add_argument("--log-symbols", type=int, default=20)
    parser.add_argument("--log-runs", type=int, default=1000,
                        help="daily runs on the small lake (0 skips the log part; 1000 takes ~15 minutes)")
    parser.add_argument("--log-times", type=int, default=5, help="repetitions of each open-time sample")
    parser.add_argument("--verbose", action="store_true", help="print every run's assets and progress lines")
    parser.add_argument("--keep", default=None, help="use this directory (created; scratch data is deleted)")
    args = parser.parse_args()
    binary = pick_binary(args.binary)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ql-bench-incr-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f} at start")
        print(f"binary:  {binary} ({os.path.getsize(binary) / 1e6:.1f} MB)")
        if args.only != "log":
            for days in args.days:
                history(binary, root, args.symbols, days, args.daily, args.repeat, args.verbose,
                        not args.fresh_history, args.full_repeat)
        if args.only != "history" and args.log_runs > 0:
            marks = {m for m in (10, 100, 250, 500, 1000) if m <= args.log_runs} | {args.log_runs}
            log_growth(binary, root, args.log_symbols, args.log_runs, marks, args.log_times)
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
