"""SQL assets end to end: files dropped into ASSETS_DIR become assets of the real binary. The
shipped examples (assets/gold/*.sql) are built day by day and compared with a full refresh, a
late correction re-derives exactly the months it reaches, checks veto or warn, dependencies come
from the query, an edit makes the asset and its downstream stale, a type drift without an edit
fails, and every validation error names the file. Tables are read back with deltalake/polars."""

import json
import shutil
import textwrap

import polars as pl
import pytest

from conftest import REPO
from test_incremental import Commit, assert_identical, deliver, deliver_and_run, generate

HIGH_LOW = "gold/high_low_52w"
SUMMARY = "gold/symbol_summary"


def ship_examples(lake):
    shutil.copytree(REPO / "assets", lake.assets, dirs_exist_ok=True)


def write_asset(lake, key, text):
    path = lake.assets / f"{key}.sql"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def record_of(lake, run_id, key):
    return next(a for a in lake.run_record(run_id)["assets"] if a["key"] == key)


def assets_state(lake):
    return {e["table"]: e for e in json.loads(lake.run("assets", "--json").stdout)}


def expected_high_low(silver):
    """The 52-week columns computed here with polars from silver, independently of DuckDB."""
    return (
        silver.sort("symbol", "date")
        .with_columns(
            pl.col("close").rolling_max(252, min_samples=1).over("symbol").alias("high_52w"),
            pl.col("close").rolling_min(252, min_samples=1).over("symbol").alias("low_52w"),
        )
        .select("symbol", "date", "close", "high_52w", "low_52w")
    )


def test_the_shipped_sql_assets_built_day_by_day_equal_a_full_refresh(lake):
    ship_examples(lake)
    deliveries = generate(lake, symbols=8, days=60, seed=21, start="2024-01-15")
    for index, (_, files) in enumerate(deliveries):
        deliver(lake, files)
        lake.run("materialize", "--run-id", f"day-{index:02d}")

    daily = {key: lake.frame(key) for key in (HIGH_LOW, SUMMARY)}
    # Each daily run replaced only the month of its delivery.
    for version, (day, _) in enumerate(deliveries[1:], start=1):
        commit = Commit(lake, HIGH_LOW, version)
        assert commit.touched_months == {day[:7]}, (day, commit.touched_months)
        assert commit.run_id == f"day-{version:02d}"
    record = record_of(lake, "day-59", HIGH_LOW)
    assert record["status"] == "succeeded"
    assert {c["name"] for c in record["checks"]} == {
        "not_null(symbol, date, high_52w, low_52w)", "unique(symbol, date)",
        "accepted_range(high_52w)", "sql", "not_null(pct_from_high)"}

    # The values, recomputed independently.
    silver = lake.frame("silver/prices")
    high_low = daily[HIGH_LOW]
    assert high_low.height == silver.height
    mine = expected_high_low(silver)
    joined = high_low.join(mine, on=["symbol", "date"], suffix="_polars")
    assert joined.height == silver.height
    for column in ("high_52w", "low_52w"):
        assert (joined[column] == joined[f"{column}_polars"]).all(), column
    summary = daily[SUMMARY]
    assert summary.height == 8 and summary["symbol"].is_unique().all()
    last = silver.sort("date").group_by("symbol").last()
    assert dict(summary.select("symbol", "last_close").rows()) == dict(
        last.select("symbol", "close").rows())
    # 1-month return: against the close 21 trading days before the last; 60 days hold no year.
    closes = lake.frame("gold/returns").sort("date").group_by("symbol").agg(
        pl.col("close").last().alias("last"), pl.col("close").tail(22).first().alias("month_ago"))
    expected = {s: last / ago - 1 for s, last, ago in closes.select("symbol", "last", "month_ago").rows()}
    got = dict(summary.select("symbol", "return_1m").rows())
    assert got.keys() == expected.keys()
    assert all(abs(got[s] - expected[s]) < 1e-12 for s in got), (got, expected)
    assert summary["return_1y"].is_null().all()

    # Nothing new: the table asset is not recomputed (its inputs are the versions it was built
    # from), and neither is the incremental one.
    versions = {key: lake.delta(key).version() for key in (HIGH_LOW, SUMMARY)}
    idle = lake.run("materialize", "--run-id", "idle")
    for key in (HIGH_LOW, SUMMARY):
        assert lake.delta(key).version() == versions[key], key
        assert record_of(lake, "idle", key)["table_version"] is None, key
    assert "built from these very inputs already: `gold/returns` version" in idle.stdout

    lake.run("materialize", "--full-refresh", "--run-id", "refresh")
    for key, keys in ((HIGH_LOW, ["symbol", "date"]), (SUMMARY, ["symbol"])):
        assert_identical(lake.frame(key), daily[key], keys, f"{key}: daily vs full refresh")


def test_a_late_correction_rederives_exactly_the_months_it_reaches(lake):
    ship_examples(lake)
    deliveries = generate(lake, symbols=3, days=90, seed=13, start="2024-01-01")
    deliver_and_run(lake, deliveries, "all")
    months = sorted(lake.frame(HIGH_LOW)["month"].unique())
    assert len(months) >= 4

    # Re-deliver the second month's first day with one close changed.
    day, files = next((d, f) for d, f in deliveries if d[:7] == months[1])
    original = files[0].read_text().splitlines()
    symbol, date, o, h, l, c, v = original[1].split(",")
    corrected = ",".join([symbol, date, o, str(float(h) * 2), l, str(float(h) * 2), v])
    (lake.landing / f"correction-{day}.csv").write_text(
        "\n".join([original[0], corrected]) + "\n")
    before = lake.frame(HIGH_LOW)
    lake.run("materialize", "--run-id", "correction")

    commit = Commit(lake, HIGH_LOW, lake.delta(HIGH_LOW).version())
    assert commit.run_id == "correction"
    assert commit.touched_months == set(months[1:]), commit.touched_months
    after = lake.frame(HIGH_LOW)
    changed = after.join(before, on=["symbol", "date"], suffix="_before").filter(
        pl.col("high_52w") != pl.col("high_52w_before"))
    assert changed.height > 0 and set(changed["symbol"]) == {symbol}
    assert changed["date"].min().isoformat() == date

    fresh_rows = after
    lake.run("materialize", "--full-refresh", "--select", HIGH_LOW, "--run-id", "refresh")
    assert_identical(lake.frame(HIGH_LOW), fresh_rows, ["symbol", "date"], "correction vs refresh")


def test_blocking_checks_veto_the_commit_and_warnings_are_recorded(lake):
    lake.demo(symbols=4, days=30)
    write_asset(lake, "gold/closes", """
        -- quantlens:
        --   checks:
        --     - {accepted_range: {column: close, max: 1}, blocking: false}
        SELECT symbol, date, close FROM silver_prices
    """)
    write_asset(lake, "gold/closes_count", "SELECT count(*) AS n FROM gold_closes")
    lake.run("materialize", "--run-id", "first")
    record = record_of(lake, "first", "gold/closes")
    assert record["status"] == "succeeded"
    [check] = record["checks"]
    assert check["name"] == "accepted_range(close)" and not check["passed"]
    assert not check["blocking"] and "failing row" in check["detail"]
    version = lake.delta("gold/closes").version()

    write_asset(lake, "gold/closes", """
        -- quantlens:
        --   checks:
        --     - row_count: {min: 1000000}
        SELECT symbol, date, close FROM silver_prices
    """)
    out = lake.run("materialize", "--run-id", "second", expect=1)
    assert "row_count" in out.stderr
    assert lake.delta("gold/closes").version() == version
    assert record_of(lake, "second", "gold/closes")["status"] == "failed"
    downstream = record_of(lake, "second", "gold/closes_count")
    assert downstream["status"] == "skipped" and "gold/closes" in downstream["error"]


def test_dependencies_come_from_the_query_and_selections_cross_rust_and_sql(lake):
    ship_examples(lake)
    write_asset(lake, "gold/near_high", """
        SELECT h.symbol, h.date, h.pct_from_high, r.log_return
        FROM gold_high_low_52w AS h JOIN gold_returns AS r USING (symbol, date)
        WHERE h.pct_from_high > -0.01
    """)
    lineage = json.loads(lake.run("lineage", "--format", "json").stdout)
    deps = {a["key"]: a["deps"] for a in lineage["assets"]}
    assert deps["gold/near_high"] == ["gold/high_low_52w", "gold/returns"]
    assert deps[HIGH_LOW] == ["silver/prices"]
    assert deps[SUMMARY] == ["gold/returns"]

    lake.demo(symbols=4, days=40)
    lake.run("materialize", "--run-id", "all")
    out = lake.run("materialize", "--select", f"+{HIGH_LOW}+", "--run-id", "between")
    ran = [a["key"] for a in lake.run_record("between")["assets"]]
    assert ran == ["bronze/prices", "silver/prices", HIGH_LOW, "gold/near_high"], out.stderr
    near = lake.frame("gold/near_high")
    assert near.height > 0 and (near["pct_from_high"] > -0.01).all()
    # `sql`, `show` and `history` know SQL assets like any other table.
    counted = lake.run("sql", "SELECT count(*) AS n FROM gold_near_high").stdout
    assert f"| {near.height} " in counted, counted
    lake.run("show", HIGH_LOW, "--limit", "2")
    assert "all" in lake.run("history", "gold/near_high").stdout


def test_an_edit_makes_the_asset_and_its_downstream_stale_and_drift_fails(lake):
    lake.demo(symbols=3, days=25)
    upstream = write_asset(lake, "gold/volume", "SELECT symbol, date, volume FROM silver_prices")
    write_asset(lake, "gold/volume_total", "SELECT sum(volume) AS total FROM gold_volume")
    lake.run("materialize")
    state = assets_state(lake)
    assert state["gold/volume"]["state"] == "fresh"
    assert state["gold/volume"]["kind"] == "sql" and state["silver/prices"]["kind"] == "rust"

    upstream.write_text("SELECT symbol, date, volume::DOUBLE AS volume FROM silver_prices\n")
    state = assets_state(lake)
    assert state["gold/volume"]["state"].startswith("stale: code version changed")
    assert "upstream gold/volume is stale" in state["gold/volume_total"]["state"]
    # The edit is a new code version: the table is rebuilt with the new type.
    lake.run("materialize", "--select", "gold/volume", "--run-id", "edited")
    assert lake.frame("gold/volume")["volume"].dtype == pl.Float64
    # Downstream's file did not change, but its output type did: the lock refuses it.
    out = lake.run("materialize", "--select", "gold/volume_total", "--run-id", "drift", expect=1)
    assert "gold/volume_total" in out.stderr
    error = record_of(lake, "drift", "gold/volume_total")["error"]
    assert "total" in error and "locked" in error, error
    check = lake.run("assets", "check", expect=2)
    assert "FAIL gold/volume_total" in check.stdout and "locked" in check.stdout


@pytest.mark.parametrize("files, message", [
    ({"gold/a": "-- quantlens:\n--   materialise: table\nSELECT 1 AS x\n"},
     ("a.sql:2:", "unknown field `materialise`")),
    ({"gold/a": "SELECT * FROMM silver_prices\n"}, ("a.sql:1: DuckDB:", "syntax error")),
    ({"gold/a": "SELECT * FROM no_such_table\n"}, "unknown table `no_such_table`"),
    ({"gold/a": "SELECT * FROM gold_b\n", "gold/b": "SELECT * FROM gold_a\n"}, "cycle"),
    ({"silver/prices": "SELECT 1 AS x\n"}, "`silver/prices` is a built-in asset"),
    ({"silver/prices_rejects": "SELECT 1 AS x\n"}, "`silver/prices_rejects` is a built-in asset"),
    ({"gold/a_b": "SELECT 1 AS x\n", "gold_a/b": "SELECT 2 AS x\n"},
     "its view name `gold_a_b` is taken by `gold/a_b`"),
    ({"gold/a": "-- quantlens:\n--   materialize: incremental_by_month\n--   time_column: date\n"
                "SELECT * FROM silver_prices WHERE date >= $start\n"}, "$end is missing"),
    ({"gold/a": "-- quantlens:\n--   materialize: incremental_by_month\n"
                "SELECT * FROM silver_prices WHERE date BETWEEN $start AND $end\n"},
     "needs `time_column`"),
    ({"gold/a": "SELECT * FROM silver_prices WHERE date >= $start\n"}, "unknown parameter $start"),
    ({"gold/a": "-- quantlens:\n--   checks:\n--     - not_nul: [x]\nSELECT 1 AS x\n"},
     ("a.sql:3:", "unknown field `not_nul`")),
    ({"gold/a": "-- quantlens:\n--   depends: [gold/nothing]\nSELECT 1 AS x\n"},
     "`depends` names `gold/nothing`"),
    ({"gold/Bad-Name": "SELECT 1 AS x\n"}, "rename the file"),
])
def test_every_validation_error_is_clear_and_exits_2_before_anything_runs(lake, files, message):
    for key, text in files.items():
        path = lake.assets / f"{key}.sql"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for args in (["materialize"], ["assets"], ["assets", "check"]):
        out = lake.run(*args, expect=2)
        for part in [message] if isinstance(message, str) else message:
            assert part in out.stderr, out.stderr
    assert not lake.data.exists() or not any(lake.data.iterdir())


def test_assets_check_prepares_every_query_against_the_lake(lake):
    ship_examples(lake)
    write_asset(lake, "gold/bad_check", """
        -- quantlens:
        --   checks:
        --     - sql: SELECT * FROM this WHERE no_such_column > 0
        SELECT symbol FROM silver_prices
    """)
    lake.demo(symbols=3, days=10)
    lake.run("materialize", "--select", "+silver/prices")
    out = lake.run("assets", "check", expect=2)
    assert "ok   gold/high_low_52w" in out.stdout
    assert "FAIL gold/bad_check: check `sql`" in out.stdout and "no_such_column" in out.stdout
    # symbol_summary reads gold/returns, not built yet: said so, not a crash.
    assert "ok   gold/symbol_summary: not checked: reads `gold/returns`" in out.stdout
    assert not (lake.data / "gold" / "high_low_52w").exists()


def test_a_backfill_reaches_the_sql_assets_through_the_change_records(lake):
    ship_examples(lake)
    lake.demo(symbols=3, days=80, start="2024-01-01")
    lake.run("materialize", "--run-id", "all")
    before = lake.frame(HIGH_LOW)
    version = lake.delta(HIGH_LOW).version()
    lake.run("materialize", "--from", "2024-02-01", "--to", "2024-02-29", "--run-id", "backfill")
    commits = [Commit(lake, HIGH_LOW, v) for v in range(version + 1, lake.delta(HIGH_LOW).version() + 1)]
    assert commits and all(c.run_id == "backfill" for c in commits)
    touched = set().union(*(c.touched_months for c in commits))
    assert min(touched) == "2024-02", touched
    assert_identical(lake.frame(HIGH_LOW), before, ["symbol", "date"], "backfill vs before")


def test_a_broken_sql_file_never_stops_a_backup_or_maintenance(lake, tmp_path):
    write_asset(lake, "gold/volume", "SELECT symbol, date, volume FROM silver_prices")
    lake.demo(symbols=3, days=20)
    lake.run("materialize")
    (lake.assets / "gold" / "broken.sql").write_text("SELECT * FROMM silver_prices\n")
    assert "broken.sql" in lake.run("materialize", expect=2).stderr
    out = lake.run("backup", "--to", str(tmp_path / "backups"), "--json")
    assert "broken.sql" in out.stderr and "every table found by name" in out.stderr
    # The six built-in tables and the SQL asset's: the broken file has no table to copy.
    assert json.loads(out.stdout)["tables"] == 7, out.stdout
    lake.run("maintain")
