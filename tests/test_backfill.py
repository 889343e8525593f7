"""Backfills (`materialize --from --to`) against the real binary: a range re-derived in pieces of
a year equals a full refresh, a killed backfill resumes after its last committed piece instead of
starting over, and bad ranges are usage errors that touch nothing."""

import os
import re
import shutil
import signal
import time

import polars as pl
from deltalake import DeltaTable

DERIVED = ["silver/prices", "silver/prices_rejects", "gold/returns", "gold/market_daily"]


def sorted_frame(root, key):
    frame = pl.from_arrow(DeltaTable(str(root / key)).to_pyarrow_table())
    order = [c for c in ["date", "symbol", "source_file", "source_line"] if c in frame.columns]
    return frame.sort(order)


def assert_same_as_full_refresh(lake):
    """Rebuilds a copy of the lake from scratch and compares every derived table exactly."""
    copy = lake.root / "full-refresh"
    shutil.copytree(lake.data, copy / "data")
    lake.run("materialize", "--full-refresh", DATA_ROOT=str(copy / "data"),
             STATE_DIR=str(copy / "state"))
    for key in DERIVED:
        assert sorted_frame(lake.data, key).equals(sorted_frame(copy / "data", key)), key


def files_by_month(lake):
    adds = pl.DataFrame(lake.delta("silver/prices").get_add_actions(flatten=True))
    return {month: set(group["path"]) for (month,), group in adds.group_by("partition.month")}


def silver_pieces(stderr):
    return re.findall(r"silver/prices: backfill: deriving (\d{4}-\d\d) to (\d{4}-\d\d)", stderr)


def test_a_backfill_commits_a_year_at_a_time_and_equals_a_full_refresh(lake):
    lake.demo(symbols=15, days=420)  # 2024-01 to 2025-08
    lake.run("materialize")
    versions = {key: lake.delta(key).version() for key in DERIVED}
    files_before = files_by_month(lake)

    out = lake.run("materialize", "--from", "2024-02-10", "--to", "2025-05-01")
    # Widened to whole months, twelve at a time.
    assert silver_pieces(out.stderr) == [("2024-02", "2025-01"), ("2025-02", "2025-05")]
    assert lake.delta("silver/prices").version() == versions["silver/prices"] + 2
    assert lake.delta("silver/prices_rejects").version() == versions["silver/prices_rejects"]
    # Gold follows from the first re-derived month to the end, also in pieces.
    assert lake.delta("gold/returns").version() == versions["gold/returns"] + 2
    commit = lake.delta("silver/prices").history(1)[0]["quantlens"]
    assert commit["extra"]["progress"]["backfill"]["first"] == "2024-02"

    # Silver months outside the range keep their files; those inside got new ones.
    files_after = files_by_month(lake)
    assert files_after.keys() == files_before.keys()
    for month, files in files_after.items():
        rewritten = "2024-02" <= month <= "2025-05"
        assert (files != files_before[month]) == rewritten, month
    assert_same_as_full_refresh(lake)


def test_a_killed_backfill_resumes_after_its_last_committed_piece(lake):
    lake.demo(symbols=60, days=420)
    lake.run("materialize")
    before = lake.delta("silver/prices").version()

    worker = lake.spawn("materialize", "--from", "2024-01-01", "--to", "2025-12-31")
    deadline = time.time() + 120
    seen = []
    while time.time() < deadline:
        line = worker.stderr.readline()
        if not line:
            break
        seen.append(line)
        # The second piece has started; the first is committed.
        if "silver/prices: backfill: deriving 2025-01" in line:
            os.kill(worker.pid, signal.SIGKILL)
            break
    worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL, "".join(seen)
    assert lake.delta("silver/prices").version() == before + 1
    marker = lake.delta("silver/prices").history(1)[0]["quantlens"]["extra"]["progress"]
    assert marker["through"] == "2024-12"

    out = lake.run("materialize", "--from", "2024-01-01", "--to", "2025-12-31")
    assert silver_pieces(out.stderr) == [("2025-01", "2025-12")], out.stderr
    assert lake.delta("silver/prices").version() == before + 2
    assert_same_as_full_refresh(lake)

    # Once finished, the same range backfills again from its start.
    again = lake.run("materialize", "--from", "2024-01-01", "--to", "2025-12-31")
    assert silver_pieces(again.stderr)[0] == ("2024-01", "2024-12")


def test_bad_ranges_are_usage_errors_that_touch_nothing(lake):
    lake.demo(symbols=3, days=10)
    for args, message in [
        (["--from", "2024-03-01", "--to", "2024-02-01"], "is after --to"),
        (["--from", "2024-03-01"], "--to"),
        (["--from", "2024-01-01", "--to", "2024-02-01", "--select", "gold/returns"],
         "select it"),
        (["--from", "2024-01-01", "--to", "2024-02-01", "--full-refresh"], "exclude each other"),
        (["--from", "2024-13-01", "--to", "2024-02-01"], "2024-13-01"),
    ]:
        out = lake.run("materialize", *args, expect=2)
        assert message in out.stderr, (args, out.stderr)
    assert not (lake.data / "bronze").exists()
