"""End to end: the real `quantlens` binary materialises demo and hand-made landing data, and the
tables are read back with the Python deltalake and polars packages."""

import fcntl
import json
import math
import os
import signal
import statistics
import time

import polars as pl
import pytest

TABLES = [
    "bronze/prices", "bronze/landing_files", "silver/prices",
    "silver/prices_rejects", "gold/returns", "gold/market_daily",
]
HEADER = "symbol,date,open,high,low,close,volume\n"


def write_landing(lake, name, rows):
    lake.landing.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{s},{d},{c},{c},{c},{c},{v}\n" for s, d, c, v in rows)
    (lake.landing / name).write_text(HEADER + body)


def weekdays(n, start="2024-03-01"):
    import datetime as dt
    day = dt.date.fromisoformat(start)
    out = []
    while len(out) < n:
        if day.weekday() < 5:
            out.append(day.isoformat())
        day += dt.timedelta(days=1)
    return out


def shown_rows(table_text):
    """Data rows in a pretty-printed table (lines between borders, less the header)."""
    return sum(1 for line in table_text.splitlines() if line.startswith("|")) - 1


def versions(lake):
    return {key: lake.delta(key).version() for key in TABLES}


def test_full_run_matches_an_independent_recomputation(lake):
    summary = lake.demo(symbols=8, days=70, seed=3)
    out = lake.run("materialize")
    assert "gold/market_daily" in out.stdout and "succeeded" in out.stdout

    bronze = lake.frame("bronze/prices")
    assert bronze.height == summary["rows"] + summary["duplicate_rows"] + summary["junk_rows"]
    assert all(bronze.schema[c] == pl.String for c in ["symbol", "date", "open", "close", "volume"])
    assert bronze.schema["ingested_at"] == pl.Datetime("us", "UTC")

    ledger = lake.frame("bronze/landing_files")
    assert ledger.height == summary["files"]
    rejected = ledger.filter(pl.col("status") == "rejected")
    assert rejected.height == summary["bad_header_files"]
    assert all(r.startswith("wrong header") for r in rejected["reason"])

    silver = lake.frame("silver/prices")
    assert dict(silver.schema) == {
        "symbol": pl.String, "date": pl.Date, "open": pl.Float64, "high": pl.Float64,
        "low": pl.Float64, "close": pl.Float64, "volume": pl.Int64,
        "source_file": pl.String, "source_line": pl.Int64,
        "ingested_at": pl.Datetime("us", "UTC"), "month": pl.String,
    }
    assert (silver["month"] == silver["date"].dt.strftime("%Y-%m")).all()
    assert silver.height == summary["rows"]
    assert silver.select(pl.struct("symbol", "date").is_unique().all()).item()

    rejects = lake.frame("silver/prices_rejects")
    assert rejects.height == summary["junk_rows"]
    assert rejects["rule"].n_unique() >= 4, rejects["rule"].value_counts()

    returns = lake.frame("gold/returns")
    expected = silver.sort("symbol", "date").select(
        "symbol", "date", "close", "volume",
        (pl.col("close") / pl.col("close").shift(1)).log().over("symbol").alias("log_return"),
        pl.col("close").rolling_mean(20).over("symbol").alias("sma_20"),
        pl.col("close").rolling_mean(50).over("symbol").alias("sma_50"),
    ).with_columns(pl.col("log_return").rolling_std(20).over("symbol").alias("vol_20"),
                   pl.col("date").dt.strftime("%Y-%m").alias("month"))
    actual = returns.sort("symbol", "date")
    assert actual.columns == expected.columns
    for column in ["log_return", "sma_20", "sma_50", "vol_20"]:
        assert (actual[column].is_null() == expected[column].is_null()).all(), column
        diff = (actual[column] - expected[column]).abs().max()
        assert diff is None or diff < 1e-9, (column, diff)

    daily = lake.frame("gold/market_daily").sort("date")
    expected_daily = returns.group_by("date").agg(
        pl.len().cast(pl.Int64).alias("symbols"),
        pl.col("log_return").mean().alias("mean_return"),
        (pl.col("log_return") > 0).sum().cast(pl.Int64).alias("advancers"),
        (pl.col("log_return") < 0).sum().cast(pl.Int64).alias("decliners"),
        (pl.col("close") * pl.col("volume")).sum().alias("dollar_volume"),
    ).sort("date")
    assert daily.select("date", "symbols", "advancers", "decliners").equals(
        expected_daily.select("date", "symbols", "advancers", "decliners"))
    assert ((daily["dollar_volume"] - expected_daily["dollar_volume"]).abs()
            / expected_daily["dollar_volume"]).max() < 1e-12

    # Lineage lives in the commits themselves.
    run_id = lake.runs()[0]["run_id"]
    commit = lake.delta("gold/returns").history(1)[0]
    meta = commit["quantlens"]
    assert meta["run_id"] == run_id and meta["asset"] == "gold/returns"
    assert meta["upstream"] == {"silver/prices": lake.delta("silver/prices").version()}


def test_hand_computed_gold_values_and_latest_delivery_wins(lake):
    days = weekdays(25)
    closes = [10 + i for i in range(25)]
    write_landing(lake, "hand_a.csv", [("HAND", d, c, 100) for d, c in zip(days, closes)])
    # Same delivery run, later file name: its row for day 3 wins the tie on ingested_at.
    write_landing(lake, "hand_b.csv", [("HAND", days[2], 99.0, 100)])
    lake.run("materialize")
    silver = lake.frame("silver/prices").sort("date")
    assert silver.height == 25
    assert silver["close"][2] == 99.0

    # A later delivery wins over an earlier one even with a smaller file name.
    write_landing(lake, "hand_0.csv", [("HAND", days[2], float(closes[2]), 100)])
    lake.run("materialize")
    returns = lake.frame("gold/returns").sort("date")
    assert returns["close"][2] == closes[2]

    assert returns["log_return"][0] is None
    assert returns["log_return"][1] == pytest.approx(math.log(11 / 10), abs=1e-12)
    assert returns["sma_20"][18] is None
    assert returns["sma_20"][19] == pytest.approx(sum(closes[:20]) / 20, abs=1e-12)
    assert returns["sma_50"].is_null().all()
    logs = [math.log(closes[i] / closes[i - 1]) for i in range(1, 25)]
    assert returns["vol_20"][19] is None  # only 19 returns so far
    assert returns["vol_20"][20] == pytest.approx(statistics.stdev(logs[0:20]), abs=1e-12)

    daily = lake.frame("gold/market_daily").sort("date")
    row = daily.row(1, named=True)
    assert row["symbols"] == 1 and row["advancers"] == 1 and row["decliners"] == 0
    assert row["mean_return"] == pytest.approx(math.log(11 / 10), abs=1e-12)
    assert row["dollar_volume"] == pytest.approx(11 * 100)
    assert daily.row(0, named=True)["mean_return"] is None


def test_rerun_commits_nothing_to_bronze_and_gold_stays_identical(lake):
    lake.demo(symbols=5, days=40)
    lake.run("materialize")
    before = versions(lake)
    gold_before = lake.frame("gold/returns").sort("symbol", "date")
    out = lake.run("materialize")
    assert "no new landing files" in out.stdout
    after = versions(lake)
    assert after["bronze/prices"] == before["bronze/prices"]
    assert after["bronze/landing_files"] == before["bronze/landing_files"]
    assert lake.frame("gold/returns").sort("symbol", "date").equals(gold_before)

    # With --stale nothing downstream is recomputed either.
    out = lake.run("materialize", "--stale")
    assert versions(lake) == after
    record = lake.runs()[0]
    assert [a["status"] for a in record["assets"]][1:] == ["fresh", "fresh", "fresh"]


def test_changed_file_is_a_new_delivery(lake):
    days = weekdays(3)
    write_landing(lake, "d.csv", [("AAA", days[0], 10.0, 1)])
    lake.run("materialize")
    write_landing(lake, "d.csv", [("AAA", days[0], 12.0, 1), ("AAA", days[1], 13.0, 1)])
    lake.run("materialize")
    ledger = lake.frame("bronze/landing_files").filter(pl.col("file") == "d.csv")
    assert ledger.height == 2 and ledger["sha256"].n_unique() == 2
    assert lake.frame("bronze/prices").height == 3
    assert lake.frame("silver/prices").sort("date")["close"].to_list() == [12.0, 13.0]


def test_blocking_check_failure_leaves_the_table_at_its_previous_version(lake):
    days = weekdays(4)
    write_landing(lake, "good.csv", [("AAA", d, 10.0 + i, 5) for i, d in enumerate(days)])
    lake.run("materialize")
    before = versions(lake)
    rows_before = lake.frame("gold/returns").height

    # A bad tick: valid prices whose ratio overflows, so log_return is infinite.
    write_landing(lake, "tick.csv", [("BAD", days[0], "1e-300", 5), ("BAD", days[1], "1e300", 5)])
    out = lake.run("materialize", expect=1)
    assert "finite_values" in out.stderr

    after = versions(lake)
    assert after["silver/prices"] == before["silver/prices"] + 1
    assert after["gold/returns"] == before["gold/returns"]
    assert after["gold/market_daily"] == before["gold/market_daily"]
    assert lake.frame("gold/returns").height == rows_before

    record = lake.runs()[0]
    assert record["status"] == "failed" and record["exit_code"] == 1
    status = {a["key"]: a for a in record["assets"]}
    assert status["gold/returns"]["status"] == "failed"
    check = next(c for c in status["gold/returns"]["checks"] if c["name"] == "finite_values")
    assert check["passed"] is False and check["blocking"] is True
    assert status["gold/market_daily"]["status"] == "skipped"
    assert "upstream failed" in status["gold/market_daily"]["error"]


def test_sigkill_mid_run_leaves_committed_tables_and_the_next_run_succeeds(lake):
    lake.demo(symbols=300, days=300, seed=9)
    worker = lake.spawn("materialize", "--run-id", "killed-run")
    events = lake.state / "runs" / "killed-run" / "events.ndjson"

    def started(asset):
        if not events.exists():
            return False
        lines = [json.loads(line) for line in events.read_text().splitlines() if line.endswith("}")]
        return any(e["event"] == "asset_started" and e.get("asset") == asset for e in lines)

    deadline = time.time() + 300
    while time.time() < deadline and worker.poll() is None and not started("silver/prices"):
        time.sleep(0.02)
    assert worker.poll() is None, "the worker finished before it could be killed"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)

    # Bronze was committed before the kill; silver was being computed and never was.
    bronze = lake.delta("bronze/prices")
    assert bronze.version() == 0 and len(bronze.to_pyarrow_table()) > 0
    for key in TABLES[2:]:
        assert not (lake.data / key / "_delta_log").exists(), key
    assert lake.run_record("killed-run")["status"] == "crashed"

    lake.run("materialize")
    assert lake.run_record("killed-run")["status"] == "crashed"
    assert lake.runs()[0]["status"] == "succeeded"
    assert lake.frame("gold/returns").height == lake.frame("silver/prices").height


def test_a_held_lock_gives_exit_75_and_names_the_holder(lake):
    lake.state.mkdir(parents=True)
    with open(lake.state / "run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("other-run-42")
        lock.flush()
        out = lake.run("materialize", expect=75)
        assert "already running other-run-42" in out.stderr
    assert not (lake.data / "bronze").exists()


def test_bad_usage_exits_2_with_a_clear_message(lake):
    out = lake.run("materialize", "--select", "silver/nope", expect=2)
    assert "silver/nope" in out.stderr and "silver/prices" in out.stderr
    out = lake.run("materialize", "--run-id", "../escape", expect=2)
    assert "run id" in out.stderr.lower()
    out = lake.run("show", "silver/nope", expect=2)
    assert "known tables" in out.stderr
    out = lake.run("materialize", "--bogus", expect=2)


def test_operator_commands(lake):
    lake.demo(symbols=4, days=30)
    lake.run("materialize")
    first_silver = lake.frame("silver/prices").height
    time.sleep(1.1)
    between = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    time.sleep(1.1)
    lake.demo(symbols=4, days=35)  # five more days, and the first 30 again (unchanged)
    lake.run("materialize")
    assert lake.frame("silver/prices").height > first_silver

    assets = json.loads(lake.run("assets", "--json").stdout)
    assert [a["table"] for a in assets] == TABLES
    by_table = {a["table"]: a for a in assets}
    assert by_table["gold/returns"]["state"] == "fresh"
    assert by_table["silver/prices"]["rows"] == lake.frame("silver/prices").height
    assert "fresh" in lake.run("assets").stdout

    assert "bronze_prices --> silver_prices" in lake.run("lineage").stdout.replace('"', "")
    assert "digraph" in lake.run("lineage", "--format", "dot").stdout
    lineage = json.loads(lake.run("lineage", "--format", "json").stdout)
    assert ["gold/returns", "gold/market_daily"] in lineage["edges"]

    history = lake.run("history", "silver/prices").stdout
    assert "WRITE" in history and "bronze/prices@v1" in history

    old = lake.run("show", "silver/prices", "--version", "0", "--limit", "100000").stdout
    assert shown_rows(old) == first_silver
    past = lake.run("show", "silver/prices", "--as-of", between, "--limit", "100000").stdout
    assert shown_rows(past) == first_silver
    now = lake.run("show", "silver/prices", "--limit", "100000").stdout
    assert shown_rows(now) == lake.frame("silver/prices").height
    assert shown_rows(lake.run("show", "gold/returns", "--limit", "3").stdout) == 3
    lake.run("show", "silver/prices", "--version", "99", expect=2)

    count = lake.run("sql", "SELECT count(*) AS n FROM silver_prices").stdout
    assert f"| {lake.frame('silver/prices').height} " in count
    lake.run("sql", "SELECT * FROM no_such_view", expect=2)

    runs = lake.run("runs").stdout
    assert runs.count("succeeded") == 2


def test_a_crash_between_the_bronze_and_ledger_commits_does_not_ingest_twice(lake):
    summary = lake.demo(symbols=3, days=5)
    lake.run("materialize", "--select", "bronze/prices")
    bronze_before = lake.frame("bronze/prices").height
    recorded = lake.frame("bronze/landing_files").drop("run_id", "ingested_at").sort("file")
    # As if the worker died right after the bronze commit: the ledger commit never happened.
    ledger_log = lake.data / "bronze" / "landing_files" / "_delta_log"
    for entry in ledger_log.iterdir():
        entry.unlink()
    ledger_log.rmdir()

    out = lake.run("materialize", "--select", "bronze/prices")
    assert "ledger repaired" in out.stdout
    assert lake.delta("bronze/prices").version() == 0
    assert lake.frame("bronze/prices").height == bronze_before
    ledger = lake.frame("bronze/landing_files")
    ingested = summary["files"] - summary["bad_header_files"]
    assert ledger.height == ingested
    # The bronze commit lists each file's size and rows: the repaired rows are the lost ones.
    assert ledger.drop("run_id", "ingested_at").sort("file").equals(
        recorded.filter(pl.col("status") == "ingested"))


def test_maintain_compacts_checkpoints_and_vacuums_without_changing_data(lake):
    for days in (10, 12, 14, 16):  # four bronze appends: four small files
        lake.demo(symbols=3, days=days)
        lake.run("materialize")
    before = {key: lake.frame(key).sort(lake.frame(key).columns) for key in TABLES}
    assert len(lake.delta("bronze/prices").file_uris()) == 4

    report = json.loads(lake.run("maintain", "--vacuum-retention-hours", "0", "--json").stdout)
    by_table = {r["table"]: r for r in report}
    assert by_table["bronze/prices"]["files_before"] == 4
    assert by_table["bronze/prices"]["files_after"] == 1
    assert by_table["bronze/prices"]["compacted_version"] == 4
    assert by_table["bronze/prices"]["files_vacuumed"] >= 4

    for key in TABLES:
        table = lake.delta(key)
        frame = lake.frame(key)
        assert frame.sort(frame.columns).equals(before[key]), key
        log = lake.data / key / "_delta_log"
        assert any(p.name.endswith(".checkpoint.parquet") for p in log.iterdir()), key
        on_disk = {p.name for p in (lake.data / key).rglob("part-*.parquet")}
        assert on_disk == {u.rsplit("/", 1)[-1] for u in table.file_uris()}, key
    operations = [c["operation"] for c in lake.delta("bronze/prices").history(3)]
    assert operations == ["VACUUM END", "VACUUM START", "OPTIMIZE"]

    # Same data, same lineage: nothing downstream turns stale.
    lake.run("materialize", "--stale")
    assert [a["status"] for a in lake.runs()[0]["assets"]][1:] == ["fresh", "fresh", "fresh"]

    with open(lake.state / "run.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        lake.run("maintain", expect=75)
