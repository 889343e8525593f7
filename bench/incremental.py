#!/usr/bin/env python3
"""Incremental daily run benchmark for `quantlens materialize` (issue: incremental runs).

Part 1 (history): generates the demo history (default 2000 symbols x 2500 trading days, about 5M
rows; then the same with 5000 days, since the daily cost must not grow with history), dates its
files a day back (delivered long ago; with `--fresh-history` they stay seconds old and bronze, which
trusts name, size and mtime only outside a 5-minute clock-skew margin, re-reads them every run),
times the full build, then copies in the following trading days one file at a time, as a feed
would, and times one `quantlens materialize` per day: wall time, peak RSS, CPU, per-asset seconds
and what each table's commit touched. The first `--daily` days are repeated `--repeat` times from
a copy of the freshly built lake (medians reported); then the last copy goes on for `--aged` days
in a row, so the tables' logs grow past a checkpoint (delta-rs writes one every 100 versions),
then runs `quantlens maintain` (compaction, checkpoint) and 10 more days.

Part 2 (log): a small lake (default 20 symbols) gets `--log-runs` daily deliveries, one run each
(each run adds one commit to every table). At 10, 99, 100, 250, 500, 999 and 1000 runs the script
times opening the tables, `quantlens assets --json` (opens all six) and Python deltalake
`DeltaTable()` of silver/prices, on the lake and on a copy without checkpoints, and reports the
daily runs around that point; then runs `quantlens maintain` and measures again.

    cargo build --release -p quantlens
    python3 bench/incremental.py [--days 2500 5000] [--daily 3] [--repeat 5] [--aged 100] [--no-sql-assets]
                                 [--log-runs 1000] [--only history|log] [--binary PATH]

The whole default run takes about 30 minutes on 2 cores; `--only history` or `--only log` (or
`--log-runs 0`) runs one part. The binary is --binary, else $QUANTLENS_BIN, else
/root/.cache/quantlens/target/release/quantlens when it exists, else the workspace's release
target. Scratch data goes to a temporary directory (about 3 GB at the peak) and is deleted.
Numbers go to docs/benchmarks.md by hand, with the machine they came from.
"""

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from materialize import default_binary, machine  # noqa: E402
from deployed import use_deployed_allocator  # noqa: E402

CACHED_BINARY = "/root/.cache/quantlens/target/release/quantlens"
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


def history(binary, root, symbols, days, daily, repeat, verbose, backdate, full_repeat, aged,
            no_sql_assets=False):
    top = root / f"history-{days}"
    landing, next_dir = top / "landing", top / "next"
    work, base = top / "work", top / "base"
    env = dict(os.environ, LANDING_DIR=str(landing), DATA_ROOT=str(work / "data"),
               STATE_DIR=str(work / "state"))
    if no_sql_assets:  # the four built-in layers only
        (top / "no-assets").mkdir(parents=True, exist_ok=True)
        env["ASSETS_DIR"] = str(top / "no-assets")
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
    after = 10 if aged > daily else 0  # runs after `quantlens maintain`, which ends the aged sequence
    Run([binary, "demo", "--symbols", str(symbols), "--days", str(days + max(daily, aged + after)), "--json"],
        dict(env, LANDING_DIR=str(next_dir)))
    have = {p.name for p in landing.iterdir()}
    new = sorted(p.name for p in next_dir.iterdir() if p.name not in have)
    last = max(have, key=lambda n: (DATE.search(n).group(0) if DATE.search(n) else "", n))
    if (landing / last).read_bytes() != (next_dir / last).read_bytes():
        raise SystemExit(f"the longer demo differs from the history at {last}: not the same seed/start?")
    later = deliveries(new)
    days_new = later[:daily]
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

    # Keep going on the last repetition's lake: every run adds a commit to each table, and a
    # table's log is replayed from its last checkpoint (every 100 versions) when it is opened.
    aged_runs = [(day + 1, results[day][-1], False) for day in range(len(days_new))]
    silver = work / "data" / "silver" / "prices"
    for day in range(len(days_new), aged):
        for name in later[day]:
            shutil.copyfile(next_dir / name, landing / name)
        before = last_checkpoint(silver)
        run = Run([binary, "materialize", "--run-id", f"aged-{day + 1}"], env)
        run.assets = asset_seconds(run_record(work / "state", f"aged-{day + 1}"))
        aged_runs.append((day + 1, run, last_checkpoint(silver) != before))
    if after:
        # The weekly upkeep: compaction and a checkpoint of every table.
        maintain = Run([binary, "maintain", "--json"], env)
        maintained = []
        for day in range(aged, aged + after):
            for name in later[day]:
                shutil.copyfile(next_dir / name, landing / name)
            run = Run([binary, "materialize", "--run-id", f"maintained-{day + 1}"], env)
            run.assets = asset_seconds(run_record(work / "state", f"maintained-{day + 1}"))
            maintained.append(run)

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
    if aged > len(days_new):
        print(f"{aged} daily runs in a row (the full build is v0, daily run k commits v k), "
              f"medians of each ten without the runs that wrote a checkpoint:")
        for first in range(1, aged + 1, 10):
            group = [r for k, r, ckpt in aged_runs if first <= k < first + 10 and not ckpt]
            if group:
                print_stats(f"runs {first}-{min(first + 9, aged)}", window_stats(group))
        walls = [(r.seconds, k) for k, r, _ in aged_runs]
        worst = max(walls)
        print(f"  all {len(walls)} daily runs: median {statistics.median(w for w, _ in walls):.3f} s, "
              f"worst {worst[0]:.3f} s (run {worst[1]}), no maintain in between")
        for k, run, ckpt in aged_runs:
            if ckpt:
                print_stats(f"run {k} (wrote the checkpoints of v{k})", window_stats([run]))
        print(f"  max peak RSS of the {len(aged_runs)} runs: {max(r.peak_mib for _, r, _ in aged_runs):.0f} MiB")
        report = json.loads(maintain.stdout)
        print(f"then quantlens maintain: {maintain.seconds:.2f} s wall, peak RSS {mib(maintain.peak_kib)}; files " +
              ", ".join(f"{r['table']} {r['files_before']}->{r['files_after']}" for r in report))
        print_stats(f"the {after} daily runs after it, median", window_stats(maintained))
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


OPEN_TIMER = """
import json, statistics, sys, time
from deltalake import DeltaTable
times, out = int(sys.argv[1]), {}
for path in sys.argv[2:]:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        table = DeltaTable(path)
        samples.append(time.perf_counter() - start)
    out[path] = {"seconds": statistics.median(samples), "version": table.version(), "files": len(table.file_uris())}
print(json.dumps(out))
"""


def time_open(paths, times):
    """Median `DeltaTable(path)` time, version and file count of each table, measured in a child
    Python: importing deltalake here would grow this process, and a child's ru_maxrss starts from
    its parent's RSS at fork, which would spoil the RSS of the runs measured after it."""
    out = subprocess.run([sys.executable, "-c", OPEN_TIMER, str(times), *map(str, paths)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def time_assets(binary, env, times):
    samples = []
    for _ in range(times):
        run = Run([binary, "assets", "--json"], env)
        samples.append(run.seconds)
    return statistics.median(samples), json.loads(run.stdout)


def last_checkpoint(table):
    path = table / "_delta_log" / "_last_checkpoint"
    return json.loads(path.read_text())["version"] if path.exists() else None


def measure_open(binary, top, env, times):
    """Open times of the lake as it is and of a copy without checkpoints."""
    silver = top / "data" / "silver" / "prices"
    commits, checkpoints, last = checkpoint_state(silver)
    assets_s, assets = time_assets(binary, env, times)
    tables = [top / "data" / t for t in ("bronze/prices", "bronze/landing_files", "silver/prices")]
    opened = time_open(tables, times)
    open_s, version = opened[str(silver)]["seconds"], opened[str(silver)]["version"]
    files = {str(t.relative_to(top / "data")): opened[str(t)]["files"] for t in tables}
    bare = top / "bare"
    strip_checkpoints(top / "data", bare)
    bare_opened = time_open([bare / "silver" / "prices"], times)[str(bare / "silver" / "prices")]
    open_bare_s = bare_opened["seconds"]
    assert bare_opened["version"] == version, (bare_opened, version)
    bare_assets_s, _ = time_assets(binary, dict(env, DATA_ROOT=str(bare)), times)
    shutil.rmtree(bare)
    return dict(version=version, versions={a["table"]: a["version"] for a in assets}, commits=commits,
                checkpoints=checkpoints, last=last, assets=assets_s, assets_bare=bare_assets_s,
                open=open_s, open_bare=open_bare_s, files=files)


def window_stats(runs):
    """Median wall, CPU, peak RSS and per-asset seconds of daily runs."""
    keys = list(runs[0].assets)
    return dict(wall=statistics.median(r.seconds for r in runs), cpu=statistics.median(r.cpu for r in runs),
                peak=statistics.median(r.peak_mib for r in runs),
                assets={k: statistics.median(r.assets[k] for r in runs) for k in keys})


def print_stats(label, stats):
    parts = ", ".join(f"{k} {v * 1000:.0f}" for k, v in stats["assets"].items())
    print(f"  {label}: wall {stats['wall'] * 1000:.0f} ms, CPU {stats['cpu'] * 1000:.0f} ms, "
          f"peak RSS {stats['peak']:.0f} MiB; per asset ms: {parts}")


def log_growth(binary, root, symbols, runs, marks, times, after=10):
    top = root / "log"
    feed, landing = top / "feed", top / "landing"
    env = dict(os.environ, LANDING_DIR=str(landing), DATA_ROOT=str(top / "data"), STATE_DIR=str(top / "state"))
    print(f"\n=== Delta log: {symbols} symbols, {runs} daily deliveries, one run each ===")
    Run([binary, "demo", "--symbols", str(symbols), "--days", str(runs + after), "--json"],
        dict(env, LANDING_DIR=str(feed)))
    landing.mkdir(parents=True)
    days = deliveries(p.name for p in feed.iterdir())
    silver = top / "data" / "silver" / "prices"
    plain, checkpointing, rows = [], [], []
    started = time.perf_counter()

    def deliver(index):
        for name in days[index]:
            shutil.copyfile(feed / name, landing / name)
        before = last_checkpoint(silver) if silver.exists() else None
        run = Run([binary, "materialize", "--run-id", f"log-{index + 1}"], env)
        run.assets = asset_seconds(run_record(top / "state", f"log-{index + 1}"))
        wrote_checkpoint = last_checkpoint(silver) != before
        (checkpointing if wrote_checkpoint else plain).append(run)
        return run, wrote_checkpoint

    for index in range(runs):
        run, wrote_checkpoint = deliver(index)
        count = index + 1
        if wrote_checkpoint:
            print(f"run {count} wrote checkpoints (silver/prices v{last_checkpoint(silver)}): "
                  f"{run.seconds * 1000:.0f} ms wall, {run.cpu * 1000:.0f} ms CPU")
        if count not in marks:
            continue
        row = measure_open(binary, top, env, times)
        row.update(runs=count, daily=window_stats(plain[-10:]))
        rows.append(row)
        print(f"after {count} runs ({time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.1f}): "
              f"silver/prices v{row['version']}, {row['commits']} commit files, {row['checkpoints']} checkpoint(s), "
              f"last checkpoint v{row['last']}; files in the snapshot {row['files']}; versions {row['versions']}")
        print(f"  quantlens assets --json: {row['assets'] * 1000:.0f} ms (no checkpoints: {row['assets_bare'] * 1000:.0f} ms); "
              f"DeltaTable(silver/prices): {row['open'] * 1000:.1f} ms (no checkpoints: {row['open_bare'] * 1000:.1f} ms)")
        print_stats("daily run, median of the last 10 without a checkpoint", row["daily"])
        print("  progress of the last run (stderr):")
        for line in plain[-1].stderr.splitlines():
            print(f"    {line}")

    maintain = Run([binary, "maintain", "--json"], env)
    report = json.loads(maintain.stdout)
    print(f"quantlens maintain: {maintain.seconds:.2f} s wall, peak RSS {mib(maintain.peak_kib)}; files " + ", ".join(
        f"{r['table']} {r['files_before']}->{r['files_after']}" for r in report))
    row = measure_open(binary, top, env, times)
    after_runs = [deliver(runs + i)[0] for i in range(after)]
    row.update(runs=f"{runs} + maintain", daily=window_stats(after_runs))
    rows.append(row)
    print(f"after maintain: quantlens assets --json: {row['assets'] * 1000:.0f} ms (no checkpoints: "
          f"{row['assets_bare'] * 1000:.0f} ms); DeltaTable(silver/prices): {row['open'] * 1000:.1f} ms "
          f"(no checkpoints: {row['open_bare'] * 1000:.1f} ms); files in the snapshot {row['files']}")
    print_stats(f"next {after} daily runs, median", row["daily"])
    if checkpointing:
        print_stats(f"the {len(checkpointing)} runs that wrote checkpoints, median", window_stats(checkpointing))

    print(f"--- summary, open times median of {times}; daily run: median of the 10 runs before (without a checkpoint) ---")
    print("| runs (commits per table) | silver/prices last checkpoint | `quantlens assets --json` | same, no checkpoints "
          "| `DeltaTable()` silver/prices | same, no checkpoints | daily run wall | daily run CPU |")
    for r in rows:
        print(f"| {r['runs']} | {r['last'] if r['last'] is not None else '-'} | {r['assets'] * 1000:.0f} ms "
              f"| {r['assets_bare'] * 1000:.0f} ms | {r['open'] * 1000:.1f} ms | {r['open_bare'] * 1000:.1f} ms "
              f"| {r['daily']['wall'] * 1000:.0f} ms | {r['daily']['cpu'] * 1000:.0f} ms |")
    shutil.rmtree(top, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=None)
    parser.add_argument("--only", choices=["history", "log"], default=None)
    parser.add_argument("--no-sql-assets", action="store_true",
                        help="time the four built-in layers only (an empty ASSETS_DIR), not the "
                             "SQL assets of ./assets")
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--days", type=int, nargs="+", default=[2500, 5000],
                        help="history lengths in trading days (default 2500 5000: 10 and 20 years)")
    parser.add_argument("--daily", type=int, default=3, help="consecutive daily deliveries to time")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of the daily sequence")
    parser.add_argument("--full-repeat", type=int, default=3, help="repetitions of the full build")
    parser.add_argument("--aged", type=int, default=100,
                        help="then keep delivering up to this many days in a row on one lake (0: no)")
    parser.add_argument("--fresh-history", action="store_true",
                        help="keep the history files' fresh modification times (bronze then re-reads them daily)")
    parser.add_argument("--log-symbols", type=int, default=20)
    parser.add_argument("--log-runs", type=int, default=1000,
                        help="daily runs on the small lake (0 skips the log part; 1000 take about 12 minutes)")
    parser.add_argument("--log-times", type=int, default=5, help="repetitions of each open-time sample")
    parser.add_argument("--verbose", action="store_true", help="print every run's assets and progress lines")
    parser.add_argument("--keep", default=None,
                        help="scratch directory to use instead of a new temporary one (each part "
                             "deletes its data when done; the directory itself is left)")
    args = parser.parse_args()
    use_deployed_allocator()
    binary = pick_binary(args.binary)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ql-bench-incr-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f} at start")
        print(f"binary:  {binary} ({os.path.getsize(binary) / 1e6:.1f} MB)")
        if args.only != "log":
            for days in args.days:
                history(binary, root, args.symbols, days, args.daily, args.repeat, args.verbose,
                        not args.fresh_history, args.full_repeat, args.aged, args.no_sql_assets)
        if args.only != "history" and args.log_runs > 0:
            marks = {m for m in (10, 99, 100, 250, 500, 999, 1000) if m <= args.log_runs} | {args.log_runs}
            log_growth(binary, root, args.log_symbols, args.log_runs, marks, args.log_times)
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end; this script's own peak RSS {own / 1024:.0f} MiB "
              f"(a child's peak RSS cannot be measured below it)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
