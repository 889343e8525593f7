"""Incremental daily runs, end to end: deliveries arriving one day at a time must leave silver and
gold exactly as a from-scratch build would, each daily commit must touch only the months it has
to, a late correction must recompute only what depends on the corrected close, and runs with
nothing new must commit nothing. Tables are read back with deltalake and polars, and the Delta
log JSON is read directly to see what each commit replaced."""

import json
import os
import re
import shutil
import time

import polars as pl

from conftest import Lake

TABLES = [
    "bronze/prices", "bronze/landing_files", "silver/prices",
    "silver/prices_rejects", "gold/returns", "gold/market_daily",
]
DERIVED = TABLES[2:]
PARTITIONED = ["silver/prices", "gold/returns", "gold/market_daily"]
KEYS = {
    "bronze/prices": ["source_file", "source_line", "ingested_at"],
    "bronze/landing_files": ["file", "sha256"],
    "silver/prices": ["symbol", "date"],
    "silver/prices_rejects": ["source_file", "source_line", "ingested_at"],
    "gold/returns": ["symbol", "date"],
    "gold/market_daily": ["date"],
}
HEADER = "symbol,date,open,high,low,close,volume\n"


# --- landing files --------------------------------------------------------------------------

def generate(lake, symbols, days, seed, start):
    """Demo deliveries written to a scratch dir (not the landing dir, so nothing is delivered
    yet), grouped by the date in their names, in date order."""
    scratch = lake.root / "scratch"
    out = lake.run("demo", "--symbols", str(symbols), "--days", str(days), "--seed", str(seed),
                   "--start", start, "--json", LANDING_DIR=str(scratch))
    summary = json.loads(out.stdout)
    by_date = {}
    for path in sorted(scratch.iterdir()):
        day = re.search(r"\d{4}-\d{2}-\d{2}", path.name).group(0)
        by_date.setdefault(day, []).append(path)
    assert sum(len(files) for files in by_date.values()) == summary["files"]
    # The demo adds a wrong-header file on every 50th day: it travels with that day's prices, so
    # that every daily run delivers rows (a run delivering only a rejected file is another case).
    return sorted(by_date.items())


def deliver(lake, files):
    lake.landing.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, lake.landing / path.name)


def deliver_and_run(lake, deliveries, run_id):
    for _, files in deliveries:
        deliver(lake, files)
    return lake.run("materialize", "--run-id", run_id)


# --- lake state -----------------------------------------------------------------------------

def versions(lake):
    return {key: lake.delta(key).version() for key in TABLES}


def frames(lake, keys=DERIVED):
    return {key: lake.frame(key) for key in keys}


def data_files(lake):
    """Every file under DATA_ROOT: a run that commits nothing must not leave anything behind."""
    return sorted(str(p.relative_to(lake.data)) for p in lake.data.rglob("*") if p.is_file())


class Commit:
    """One Delta commit as written in the log, read without deltalake so that what a commit
    replaced is seen exactly as any other Delta reader would see it."""

    def __init__(self, lake, key, version):
        log = lake.data / key / "_delta_log" / f"{version:020d}.json"
        actions = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        self.info = next(a["commitInfo"] for a in actions if "commitInfo" in a)
        self.adds = [a["add"] for a in actions if "add" in a]
        self.removes = [a["remove"] for a in actions if "remove" in a]

    @property
    def run_id(self):
        return self.info["quantlens"]["run_id"]

    @property
    def rows_added(self):
        return sum(json.loads(a["stats"])["numRecords"] for a in self.adds)

    @property
    def touched_months(self):
        return {a["partitionValues"]["month"] for a in self.adds + self.removes}

    @property
    def predicate_months(self):
        predicate = self.info.get("operationParameters", {}).get("predicate")
        return None if predicate is None else set(re.findall(r"'(\d{4}-\d{2})'", predicate))

    @property
    def changed_from(self):
        return self.info["quantlens"].get("extra", {}).get("changed_from")


def last_commit(lake, key):
    return Commit(lake, key, lake.delta(key).version())


# --- comparing tables -----------------------------------------------------------------------

def differences(old, new, keys):
    """Per key present in either frame: whether it is in each, and which other columns differ
    (exact comparison, nulls equal). Only keys that differ somehow are returned."""
    assert old.schema == new.schema, (old.schema, new.schema)
    for frame in (old, new):
        assert frame.select(pl.struct(keys).is_unique().all()).item(), f"{keys} not unique"
    values = [c for c in old.columns if c not in keys]
    joined = old.with_columns(_old=pl.lit(True)).join(
        new.with_columns(_new=pl.lit(True)), on=keys, how="full", coalesce=True,
        suffix="_new", nulls_equal=True,
    )
    changed = [pl.when(~pl.col(c).eq_missing(pl.col(f"{c}_new"))).then(pl.lit(c)) for c in values]
    return joined.select(
        *keys,
        pl.col("_old").fill_null(False).alias("in_old"),
        pl.col("_new").fill_null(False).alias("in_new"),
        pl.concat_list(changed).list.drop_nulls().alias("columns"),
    ).filter(
        ~pl.col("in_old") | ~pl.col("in_new") | (pl.col("columns").list.len() > 0)
    ).sort(keys)


def assert_identical(actual, expected, keys, what):
    """Same columns, same types, same rows with the same values, bit for bit."""
    assert actual.schema == expected.schema, f"{what}: {actual.schema} != {expected.schema}"
    diff = differences(expected, actual, keys)
    if diff.height or actual.height != expected.height:
        sample = diff.head(5).select(keys)
        raise AssertionError(
            f"{what}: {diff.height} row(s) differ ({actual.height} vs {expected.height} rows)\n"
            f"{diff.head(10)}\nexpected:\n{expected.join(sample, on=keys)}\n"
            f"actual:\n{actual.join(sample, on=keys)}"
        )
    # Keys and row counts match, so the sorted frames must be equal as a whole too.
    order = actual.columns
    assert actual.sort(order, nulls_last=True).equals(expected.sort(order, nulls_last=True)), what


def changed_keys(diff, column):
    """The keys of the rows of a `differences` frame whose `column` differs."""
    keys = diff.columns[:-3]  # then in_old, in_new, columns
    return set(diff.filter(pl.col("columns").list.contains(column)).select(keys).rows())


# --- 1. day by day ----------------------------------------------------------------------------

def test_daily_runs_equal_a_full_refresh_and_a_single_run_over_all_files(lake):
    deliveries = generate(lake, symbols=12, days=60, seed=5, start="2024-01-15")
    assert len(deliveries) == 60
    months = sorted({day[:7] for day, _ in deliveries})
    assert len(months) >= 3, months

    for index, (day, files) in enumerate(deliveries):
        deliver(lake, files)
        lake.run("materialize", "--run-id", f"day-{index:02d}")

    # Exactly one commit per run in every table, made by that run and in run order.
    run_ids = [f"day-{index:02d}" for index in range(len(deliveries))]
    daily = frames(lake, TABLES)
    for key in TABLES:
        commits = [Commit(lake, key, v).run_id for v in range(lake.delta(key).version() + 1)]
        if key != "silver/prices_rejects":
            assert commits == run_ids, key
            continue
        # The rejects side table need not record a day without rejects, but a day with some
        # must be in exactly one commit, made by that day's run.
        run_of_file = {p.name: run_ids[i] for i, (_, files) in enumerate(deliveries) for p in files}
        rejecting = {run_of_file[f] for f in daily[key]["source_file"]}
        assert rejecting, "the demo data should hold junk rows"
        assert commits == sorted(set(commits)) and rejecting <= set(commits), commits
        for version, run_id in enumerate(commits):
            rows = Commit(lake, key, version).rows_added
            assert (rows > 0) == (run_id in rejecting), (version, run_id, rows)

    # The ledger, read whole by every run, is rewritten as one file once it holds 16: its reads
    # do not grow with the number of runs.
    ledger_files = len(lake.delta("bronze/landing_files").file_uris())
    assert 1 <= ledger_files <= 16, ledger_files
    assert daily["bronze/landing_files"].height == sum(len(files) for _, files in deliveries)

    silver = daily["silver/prices"]
    assert silver["month"].n_unique() == len(months)
    symbols_on = {day: sorted(s) for day, s in silver.group_by(pl.col("date").cast(pl.String))
                  .agg(pl.col("symbol")).rows()}
    for version, (day, _) in enumerate(deliveries[1:], start=1):
        for key in PARTITIONED:
            commit = Commit(lake, key, version)
            # A daily delivery lies in one month, after every day the tables hold: its rows are
            # appended to that month, which is neither read back nor rewritten (nothing removed).
            assert commit.touched_months == {day[:7]}, (key, day, commit.touched_months)
            assert commit.info["operationParameters"]["mode"] == "Append", (key, day, commit.info)
            assert commit.predicate_months is None and not commit.removes, (key, day)
            assert commit.changed_from == {day: symbols_on[day]}, (key, day)

    # ingested_at is the one column allowed to differ from a single run over the same files:
    # here it must record, row by row, the run that ingested the row's file.
    ledger = daily["bronze/landing_files"]
    assert ledger.height == sum(len(files) for _, files in deliveries)
    matched = silver.join(ledger.select("file", pl.col("ingested_at").alias("ledger_at")),
                          left_on="source_file", right_on="file")
    assert matched.height == silver.height
    assert (matched["ingested_at"] == matched["ledger_at"]).all()
    assert silver["ingested_at"].n_unique() == len(deliveries)

    # (b) A fresh lake fed all files at once.
    fresh = Lake(lake.root / "fresh")
    deliver_and_run(fresh, deliveries, "all-at-once")
    single = frames(fresh)
    assert single["silver/prices"]["ingested_at"].n_unique() == 1
    for key in DERIVED:
        keys = KEYS[key]
        if "ingested_at" in daily[key].columns:
            keys = [k for k in keys if k != "ingested_at"]
            assert_identical(daily[key].drop("ingested_at"), single[key].drop("ingested_at"),
                             keys, f"{key}: daily runs vs one run")
        else:
            assert_identical(daily[key], single[key], keys, f"{key}: daily runs vs one run")

    # (a) A full refresh of the same lake: a new version of every derived table, same content.
    before = versions(lake)
    lake.run("materialize", "--full-refresh", "--run-id", "refresh")
    after = versions(lake)
    for key in DERIVED:
        assert after[key] == before[key] + 1, key
        assert_identical(lake.frame(key), daily[key], KEYS[key], f"{key}: daily vs full refresh")
    for key in TABLES[:2]:
        assert_identical(lake.frame(key), daily[key], KEYS[key], key)


# --- 2. late correction -----------------------------------------------------------------------

def test_a_late_correction_recomputes_only_what_depends_on_the_corrected_close(lake):
    deliveries = generate(lake, symbols=3, days=130, seed=11, start="2024-01-01")
    deliver_and_run(lake, deliveries[:125], "backfill")
    for index, delivery in enumerate(deliveries[125:]):
        deliver_and_run(lake, [delivery], f"day-{index}")

    before = frames(lake)
    versions_before = versions(lake)
    symbol = "AAB"
    history = before["silver/prices"].filter(pl.col("symbol") == symbol).sort("date")
    dates = history["date"].to_list()
    # Past row 49 every window is full, so the correction reaches all four windows; more than
    # 50 rows after it, so that some later rows must stay untouched.
    k = 60
    assert len(dates) >= k + 50 + 10, len(dates)
    old = history.row(k, named=True)
    day, month = old["date"].isoformat(), old["month"]
    assert month < max(before["silver/prices"]["month"]), "the correction must be in the past"
    new_close = round(old["close"] * 1.05, 4)
    new_high = max(old["high"], new_close)
    # Its name sorts before every other file: only the later delivery may make it win.
    (lake.landing / "correction_0001.csv").write_text(
        HEADER + f"{symbol},{day},{old['open']},{new_high},{old['low']},{new_close},"
        f"{old['volume']}\n")
    lake.run("materialize", "--run-id", "correction")

    after_versions = versions(lake)
    for key in ["bronze/prices", "bronze/landing_files", *PARTITIONED]:
        assert after_versions[key] == versions_before[key] + 1, key
    after = frames(lake)

    # The commits: each replaced nothing before the corrected month, and says what changed.
    silver_commit = last_commit(lake, "silver/prices")
    assert silver_commit.touched_months == {month} == silver_commit.predicate_months
    for key in PARTITIONED:
        commit = last_commit(lake, key)
        assert commit.changed_from == {day: [symbol]}, key
        assert min(commit.touched_months) == month, (key, commit.touched_months)

    lake.run("materialize", "--full-refresh")
    refreshed = frames(lake)

    # Silver: that one row, now from the correction file.
    diff = differences(before["silver/prices"], after["silver/prices"], ["symbol", "date"])
    assert diff.select("symbol", "date").rows() == [(symbol, old["date"])], diff
    corrected = after["silver/prices"].filter(
        (pl.col("symbol") == symbol) & (pl.col("date") == old["date"])).row(0, named=True)
    assert {c: corrected[c] for c in ("open", "high", "low", "close", "volume")} == {
        "open": old["open"], "high": new_high, "low": old["low"], "close": new_close,
        "volume": old["volume"]}
    assert (corrected["source_file"], corrected["source_line"]) == ("correction_0001.csv", 2)
    assert_identical(after["silver/prices_rejects"], before["silver/prices_rejects"],
                     KEYS["silver/prices_rejects"], "rejects")

    # gold/returns: exactly the rows whose windows contain the corrected close, column by column.
    diff = differences(before["gold/returns"], after["gold/returns"], ["symbol", "date"])
    assert diff["in_old"].all() and diff["in_new"].all()
    def rows(first, last):
        return {(symbol, d) for d in dates[first:last + 1]}

    expected = {
        "close": rows(k, k), "volume": set(), "month": set(),
        "log_return": rows(k, k + 1),    # ln(c_k / c_k-1) and ln(c_k+1 / c_k)
        "sma_20": rows(k, k + 19),
        "sma_50": rows(k, k + 49),
        "vol_20": rows(k, k + 20),       # windows of 20 returns holding r_k or r_k+1
    }
    for column, keys in expected.items():
        actual = changed_keys(diff, column)
        assert actual == keys, (column, sorted(actual ^ keys))

    for key in ["silver/prices", "silver/prices_rejects", "gold/returns"]:
        assert_identical(after[key], refreshed[key], KEYS[key], f"{key}: correction vs refresh")

    # gold/market_daily: a date none of whose returns rows changed aggregates the same values as
    # before, so it must come out the same. More precisely, market_daily reads only close, volume
    # and log_return, which changed on two dates.
    daily_diff = differences(before["gold/market_daily"], after["gold/market_daily"], ["date"])
    returns_changed = {d for _, d in diff.select("symbol", "date").rows()}
    unexplained = daily_diff.filter(~pl.col("date").is_in(sorted(returns_changed)))
    deltas = before["gold/market_daily"].join(after["gold/market_daily"], on="date",
                                              suffix="_after").join(unexplained, on="date")
    assert unexplained.height == 0, (
        f"market_daily changed on {unexplained.height} date(s) where no returns row did:\n"
        + "\n".join(f"{r['date']}: mean_return {r['mean_return']!r} -> {r['mean_return_after']!r}, "
                    f"dollar_volume {r['dollar_volume']!r} -> {r['dollar_volume_after']!r}"
                    for r in deltas.iter_rows(named=True)))
    inputs_changed = set()
    for column in ("close", "volume", "log_return"):
        inputs_changed |= {d for _, d in changed_keys(diff, column)}
    assert inputs_changed == {dates[k], dates[k + 1]}
    assert set(daily_diff["date"]) == inputs_changed, daily_diff
    assert_identical(after["gold/market_daily"], refreshed["gold/market_daily"], ["date"],
                     "gold/market_daily: correction vs refresh")


# --- 3. nothing new ---------------------------------------------------------------------------

def test_a_run_without_new_landing_files_commits_nothing_and_says_so(lake):
    deliveries = generate(lake, symbols=3, days=25, seed=2, start="2024-02-19")
    deliver_and_run(lake, deliveries[:-1], "backfill")
    deliver_and_run(lake, deliveries[-1:], "daily")  # the last commits are incremental ones
    before, files_before = versions(lake), data_files(lake)

    out = lake.run("materialize", "--run-id", "idle")
    assert versions(lake) == before
    assert data_files(lake) == files_before
    assert "no new landing files" in out.stdout
    assert f"no bronze rows since version {before['bronze/prices']}" in out.stdout
    assert f"`silver/prices` has not changed since version {before['silver/prices']}" in out.stdout
    assert f"`gold/returns` has not changed since version {before['gold/returns']}" in out.stdout
    assert lake.run_record("idle")["status"] == "succeeded"


# --- 4. bronze skipping -----------------------------------------------------------------------

def not_read(output):
    found = re.search(r"(\d+) landing file\(s\) unchanged since ingested", output)
    return int(found.group(1)) if found else 0


def test_bronze_skips_unchanged_files_but_not_changed_content_of_the_same_size(lake):
    deliveries = generate(lake, symbols=3, days=8, seed=4, start="2024-05-06")
    for _, files in deliveries:
        deliver(lake, files)
    an_hour_ago = time.time() - 3600
    for path in lake.landing.iterdir():
        os.utime(path, (an_hour_ago, an_hour_ago))
    lake.run("materialize")
    ingested = versions(lake)

    # Same size and not modified since ingested: not even read.
    out = lake.run("materialize")
    assert not_read(out.stdout + out.stderr) == 8
    assert versions(lake) == ingested

    # Identical bytes written again: read (new mtime) and recognised by its hash.
    target = lake.landing / deliveries[3][1][0].name
    original = target.read_bytes()
    target.write_bytes(original)
    out = lake.run("materialize")
    assert not_read(out.stdout + out.stderr) == 7
    assert versions(lake) == ingested
    assert lake.frame("bronze/landing_files").filter(pl.col("file") == target.name).height == 1

    # Same size, different content: a new delivery. One row's volume gets another last digit.
    silver = lake.frame("silver/prices").filter(pl.col("source_file") == target.name)
    row = silver.row(0, named=True)
    lines = original.decode().splitlines(keepends=True)
    volume = str(row["volume"])
    assert lines[row["source_line"] - 1].endswith(f",{volume}\n")
    second, third = (volume[:-1] + str((int(volume[-1]) + n) % 10) for n in (1, 2))
    changed = with_volume(lines, row["source_line"], second)
    assert len(changed) == len(original) and changed != original
    target.write_bytes(changed)
    lake.run("materialize", "--run-id", "redelivery")

    after = versions(lake)
    for key in ["bronze/prices", "bronze/landing_files", *PARTITIONED]:
        assert after[key] == ingested[key] + 1, key
    # Rejects are appended when the new delivery has some, and only once.
    rejected = lake.frame("silver/prices_rejects").filter(pl.col("source_file") == target.name)
    assert after["silver/prices_rejects"] - ingested["silver/prices_rejects"] \
        in ({1} if rejected.height else {0, 1})
    ledger = lake.frame("bronze/landing_files").filter(pl.col("file") == target.name)
    assert ledger.height == 2 and ledger["sha256"].n_unique() == 2
    assert ledger["bytes"].to_list() == [len(original)] * 2
    assert lake.frame("bronze/prices").filter(pl.col("source_file") == target.name).height \
        == 2 * (len(lines) - 1)
    at_row = (pl.col("symbol") == row["symbol"]) & (pl.col("date") == row["date"])
    new_row = lake.frame("silver/prices").filter(at_row).row(0, named=True)
    assert new_row["volume"] == int(second)
    assert new_row["ingested_at"] == ledger["ingested_at"].max()
    assert lake.frame("gold/returns").filter(at_row)["volume"].to_list() == [int(second)]

    # The price of skipping: a same-size rewrite that keeps an old mtime is not seen by a daily
    # run. --full-refresh is the way out, documented as re-reading every landing file.
    rewritten = with_volume(lines, row["source_line"], third)
    assert len(rewritten) == len(original) and rewritten not in (changed, original)
    target.write_bytes(rewritten)
    os.utime(target, (an_hour_ago, an_hour_ago))
    lake.run("materialize")
    assert versions(lake) == after
    lake.run("materialize", "--full-refresh")
    assert lake.frame("bronze/landing_files").filter(pl.col("file") == target.name).height == 3
    assert lake.frame("silver/prices").filter(at_row)["volume"].to_list() == [int(third)]


def with_volume(lines, line_number, volume):
    """The file's bytes with the volume (last field) of one line replaced."""
    fields = lines[line_number - 1].split(",")
    fields[6] = volume + "\n"
    return "".join(lines[:line_number - 1] + [",".join(fields)] + lines[line_number:]).encode()


# --- 5. full refresh --------------------------------------------------------------------------

def test_full_refresh_of_an_up_to_date_lake_rewrites_identical_content(lake):
    deliveries = generate(lake, symbols=4, days=46, seed=8, start="2024-03-11")
    deliver_and_run(lake, deliveries[:42], "backfill")
    for index, delivery in enumerate(deliveries[42:45]):
        deliver_and_run(lake, [delivery], f"day-{index}")
    before = versions(lake)
    content = frames(lake, TABLES)

    lake.run("materialize", "--full-refresh", "--run-id", "refresh")
    after = versions(lake)
    # Bronze holds deliveries, not derivations: a refresh must not ingest any of them twice.
    assert {k: after[k] for k in TABLES[:2]} == {k: before[k] for k in TABLES[:2]}
    for key in DERIVED:
        assert after[key] == before[key] + 1, key
        assert_identical(lake.frame(key), content[key], KEYS[key], f"{key} after --full-refresh")
        commit = last_commit(lake, key)
        assert commit.run_id == "refresh"
        assert commit.predicate_months is None, (key, commit.info)  # a whole-table overwrite
        previous = {uri.rsplit("/", 1)[-1] for uri in lake.delta(key, before[key]).file_uris()}
        assert {r["path"].rsplit("/", 1)[-1] for r in commit.removes} == previous, key
    for key in TABLES[:2]:
        assert_identical(lake.frame(key), content[key], KEYS[key], key)

    # After a refresh the next daily run is incremental again, and still exact.
    deliver_and_run(lake, deliveries[45:], "after-refresh")
    day = deliveries[45][0]
    for key in PARTITIONED:
        commit = last_commit(lake, key)
        assert commit.touched_months == {day[:7]} and not commit.removes, key  # an append
        assert commit.changed_from is not None, key
    updated = frames(lake)
    lake.run("materialize", "--full-refresh")
    for key in DERIVED:
        assert_identical(lake.frame(key), updated[key], KEYS[key], f"{key}: daily vs refresh")


def test_a_rebuild_a_piece_at_a_time_equals_a_rebuild_in_one_piece(lake):
    """QUANTLENS_PIECE_ROWS bounds what a rebuild holds at once: silver (its candidates wait on
    disk by month), gold/returns (each symbol's last 50 rows carried to the next piece) and
    gold/market_daily rebuild a month or so at a time, and end equal to a one-piece rebuild,
    bit for bit. A value that is not a number of rows fails the asset and changes nothing."""
    deliveries = generate(lake, symbols=5, days=150, seed=12, start="2023-11-20")
    deliver_and_run(lake, deliveries, "whole")
    content = frames(lake, TABLES)

    # About 105 rows a month here: a piece is one month.
    lake.run("materialize", "--full-refresh", "--run-id", "pieces", QUANTLENS_PIECE_ROWS="150")
    for key in DERIVED:
        assert_identical(lake.frame(key), content[key], KEYS[key], f"{key} rebuilt in pieces")
    checks = {a["key"]: a["checks"] for a in lake.run_record("pieces")["assets"]}
    for key in ["silver/prices", "gold/returns"]:
        detail = checks[key][0]["detail"]
        pieces = int(re.search(r"the first of (\d+) pieces; each passed", detail).group(1))
        assert pieces >= 7, (key, detail)

    before = versions(lake)
    failed = lake.run("materialize", "--full-refresh", "--run-id", "bad", expect=1,
                      QUANTLENS_PIECE_ROWS="many")
    silver = next(a for a in lake.run_record("bad")["assets"] if a["key"] == "silver/prices")
    assert "QUANTLENS_PIECE_ROWS must be a positive number of rows, not `many`" in silver["error"], (
        failed.stderr)
    assert {k: v for k, v in versions(lake).items() if k in PARTITIONED} == {
        k: v for k, v in before.items() if k in PARTITIONED}
