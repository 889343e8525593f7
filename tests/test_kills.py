"""Exactly-once ingestion under SIGKILL (issues 15 and 13). A seeded loop kills the worker at
random moments: first of a full build from empty (several times, each next attempt resuming),
then of daily runs, a few landing files delivered per round. Then every remaining file arrives
and one clean run follows. Bronze must then hold each delivered row once, under one ingestion
per file, the ledger must agree with bronze, and every table (rejects, silver, gold, the shipped
SQL assets, the ledger) must equal, value for value, that of a lake built with no kills from the
same files. After every kill: the killed run's record, if it got one, reads `crashed` (or
finished, when the kill came after its end), never `running`, and every table opens at a
committed version and reads in full with Python deltalake.

A kill can land anywhere: before the record, before the bronze commit, between it and the
ledger's, between silver's commit and its rejects', in gold, in the SQL assets, after the end.
The per-phase count is printed. QUANTLENS_KILLS sets the number of daily rounds (30 in CI, about
30 kills; docs/reliability.md has the 300-kill run with tests/test_kills_commands.py)."""

import os
import random
import shutil
import signal
import time

import polars as pl

from conftest import REPO, Lake, assert_same_lake, contents
from test_incremental import HEADER, deliver, generate

SEED = 15
ROUNDS = int(os.environ.get("QUANTLENS_KILLS", "30"))
FULL_BUILD_KILLS = max(3, ROUNDS // 10)
FULL_BUILD_DAYS = 24
FILES_PER_ROUND = 3
SYMBOLS = 120


def delivered_rows(files):
    """Data rows of the files that are deliveries (the right header), counted from the files."""
    rows = {}
    for path in files:
        text = path.read_text()
        if text.startswith(HEADER):
            rows[path.name] = sum(1 for line in text[len(HEADER):].splitlines() if line.strip())
    return rows


def killed(lake, args, delay):
    """Runs `quantlens ARGS` and SIGKILLs it after `delay` seconds unless it finished first;
    True if it was killed."""
    process = lake.spawn(*args)
    deadline = time.monotonic() + delay
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    was_running = process.poll() is None
    if was_running:
        os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=120)
    return was_running


def run_killed(lake, run_id, delay):
    """Starts a run and SIGKILLs it after `delay` seconds (unless it finished first)."""
    return killed(lake, ["materialize", "--run-id", run_id], delay)


def timed_run(lake, run_id):
    started = time.monotonic()
    lake.run("materialize", "--run-id", run_id)
    return time.monotonic() - started


def phase_of_kill(lake, run_id):
    """Where the killed run was, from its record; and the record must not claim it still runs."""
    if not (lake.state / "runs" / run_id / "run.json").exists():
        return "before its record"
    record = lake.run_record(run_id)
    assets = record["assets"]
    unfinished = [a["key"] for a in assets if a["status"] in ("pending", "running")]
    if record["status"] != "crashed":
        # Killed after the record was finalised (catalog, pruning): nothing may be left open.
        assert record["status"] in ("succeeded", "failed") and not unfinished, record
        return "after the record was final"
    running = [a["key"] for a in assets if a["status"] == "running"]
    if running:
        return running[0]
    if len(unfinished) == len(assets):
        return "before the first asset"
    return "between assets" if unfinished else "after the last asset"


def test_kills_at_random_moments_ingest_every_file_exactly_once(tmp_path):
    killed_lake, clean_lake = Lake(tmp_path / "killed"), Lake(tmp_path / "clean")
    rehearsal = Lake(tmp_path / "rehearsal")
    # The shipped SQL assets run too, so kills land in them as well.
    for lake in (killed_lake, clean_lake, rehearsal):
        shutil.copytree(REPO / "assets", lake.assets, dirs_exist_ok=True)
    days = generate(killed_lake, SYMBOLS, FULL_BUILD_DAYS + ROUNDS * FILES_PER_ROUND + 6, SEED,
                    "2024-01-01")
    first = [path for _, day_files in days[:FULL_BUILD_DAYS] for path in day_files]
    files = [path for _, day_files in days[FULL_BUILD_DAYS:] for path in day_files]
    rounds = [files[i:i + FILES_PER_ROUND] for i in range(0, len(files), FILES_PER_ROUND)]
    rng = random.Random(SEED)
    phases = {}
    kills = 0

    def kill_at_random(run_id, duration):
        nonlocal kills
        was_running = run_killed(killed_lake, run_id, rng.uniform(0, 1.2 * duration))
        kills += was_running
        phase = phase_of_kill(killed_lake, run_id) if was_running else "finished first"
        phases[phase] = phases.get(phase, 0) + 1
        # No record claims a live run, which also means the lock is free (a record only reads
        # crashed once nobody holds it); every table opens at a committed version and reads whole.
        assert not any(r["status"] in ("starting", "running") for r in killed_lake.runs())
        contents(killed_lake)

    # The full build from empty, killed again and again, each attempt resuming the last.
    deliver(rehearsal, first)
    duration = timed_run(rehearsal, "rehearsal")
    deliver(killed_lake, first)
    for attempt in range(FULL_BUILD_KILLS):
        kill_at_random(f"full-{attempt:03d}", duration)
    killed_lake.run("materialize", "--run-id", "full")

    # Daily runs: the first runs whole, to learn how long one takes here.
    deliver(killed_lake, rounds[0])
    duration = timed_run(killed_lake, "daily")
    for index, round_files in enumerate(rounds[1:ROUNDS + 1], start=1):
        deliver(killed_lake, round_files)
        kill_at_random(f"killed-{index:03d}", duration)
    for round_files in rounds[ROUNDS + 1:]:
        deliver(killed_lake, round_files)
    killed_lake.run("materialize", "--run-id", "clean-up")
    attempts = ROUNDS + FULL_BUILD_KILLS
    print(f"\nmaterialize: {kills} kills of {attempts} attempts; where they landed: {phases}")
    assert kills >= attempts // 2, f"only {kills} of {attempts} runs were still running when killed"

    files = first + files
    deliver(clean_lake, files)
    clean_lake.run("materialize")

    # Bronze: every delivered row once, each file under a single ingestion.
    expected = delivered_rows(files)
    bronze = killed_lake.frame("bronze/prices")
    per_file = bronze.group_by("source_file").agg(
        pl.len().alias("rows"), pl.col("ingested_at").n_unique().alias("ingestions"))
    twice = per_file.filter(pl.col("ingestions") > 1)
    assert twice.height == 0, f"{twice.height} file(s) ingested more than once:\n{twice}"
    assert dict(per_file.select("source_file", "rows").rows()) == expected
    assert bronze.height == sum(expected.values())
    assert bronze.select(pl.struct("source_file", "source_line").is_unique().all()).item()

    # The ledger lists each file once and agrees with bronze.
    ledger = killed_lake.frame("bronze/landing_files")
    assert ledger["file"].is_unique().all(), ledger.filter(pl.col("file").is_duplicated())
    ingested = ledger.filter(pl.col("status") == "ingested")
    assert set(ingested["file"]) == set(expected)
    assert set(ledger["file"]) == {path.name for path in files}
    assert dict(ingested.select("file", "rows").rows()) == expected

    # Every table as if nothing had been killed, ingestion times and run ids aside.
    assert_same_lake(contents(killed_lake), contents(clean_lake), "the lake after the kills")
