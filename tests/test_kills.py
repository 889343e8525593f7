"""Exactly-once ingestion under SIGKILL (issue 15). A seeded loop delivers a few landing files per
round and kills the worker at a random moment of its run; then every remaining file arrives and
one clean run follows. Bronze must then hold each delivered row once, under one ingestion per
file, the ledger must agree with bronze, and the rejects, silver and gold must equal those of a
lake built with no kills from the same files. A kill can land anywhere: before the bronze commit,
between it and the ledger's, between silver's commit and its rejects', in gold, in the shipped SQL
assets, or after the end.

The full loop (more rounds, the other commands) is the reliability suite's; this is the bounded
slice that runs with every test run: about 30 kills."""

import os
import random
import signal
import time

import shutil

import polars as pl

from conftest import REPO, Lake
from test_incremental import HEADER, assert_identical, deliver, generate

SEED = 15
ROUNDS = 30
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


def rejects(lake):
    return lake.frame("silver/prices_rejects").drop("ingested_at")


def test_kills_at_random_moments_ingest_every_file_exactly_once(tmp_path):
    killed_lake, clean_lake = Lake(tmp_path / "killed"), Lake(tmp_path / "clean")
    # The shipped SQL assets run too, so kills land in them as well.
    for lake in (killed_lake, clean_lake):
        shutil.copytree(REPO / "assets", lake.assets, dirs_exist_ok=True)
    days = generate(killed_lake, SYMBOLS, ROUNDS * FILES_PER_ROUND + 6, SEED, "2024-01-01")
    files = [path for _, day_files in days for path in day_files]
    rounds = [files[i:i + FILES_PER_ROUND] for i in range(0, len(files), FILES_PER_ROUND)]

    # The first round runs whole, to learn how long a run of this size takes here.
    deliver(killed_lake, rounds[0])
    duration = timed_run(killed_lake, "first")
    rng = random.Random(SEED)
    kills = 0
    for index, round_files in enumerate(rounds[1:ROUNDS + 1], start=1):
        deliver(killed_lake, round_files)
        kills += run_killed(killed_lake, f"killed-{index:03d}", rng.uniform(0, 1.2 * duration))
        assert not any(
            r["status"] in ("starting", "running") for r in killed_lake.runs()
            if r["run_id"] != f"killed-{index:03d}"
        )
    for round_files in rounds[ROUNDS + 1:]:
        deliver(killed_lake, round_files)
    killed_lake.run("materialize", "--run-id", "clean-up")
    assert kills >= ROUNDS // 2, f"only {kills} of {ROUNDS} runs were still running when killed"

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
    counted = ingested.filter(pl.col("rows").is_not_null())
    assert all(expected[f] == n for f, n in counted.select("file", "rows").rows())

    # Rejects once each, and silver and gold as if nothing had been killed.
    assert_identical(rejects(killed_lake), rejects(clean_lake),
                     ["source_file", "source_line"], "rejects")
    for key, keys in [("silver/prices", ["symbol", "date"]), ("gold/returns", ["symbol", "date"]),
                      ("gold/market_daily", ["date"]), ("gold/high_low_52w", ["symbol", "date"]),
                      ("gold/symbol_summary", ["symbol"])]:
        columns = [c for c in killed_lake.frame(key).columns if c != "ingested_at"]
        assert_identical(killed_lake.frame(key).select(columns),
                         clean_lake.frame(key).select(columns), keys, key)

    # A kill before the record was written leaves none; every other killed run reads as crashed.
    statuses = [r["status"] for r in killed_lake.runs()]
    assert "running" not in statuses and "starting" not in statuses
    assert statuses.count("crashed") <= kills
