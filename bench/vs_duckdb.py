#!/usr/bin/env python3
"""`quantlens materialize` against plain DuckDB, side by side (issue #14).

On the same landing files, in the same run: `quantlens materialize` from an empty lake (the four
built-in layers: bronze, silver with its rejects, gold/returns, gold/market_daily; no SQL assets)
and one plain DuckDB SQL script doing the same four layers (CSV in, Parquet out, no Delta log, no
ledger, no checks). Prints each side's wall time, peak RSS (the child's own, from wait4) and rows
per second, the per-layer times of both, and the ratio quantlens / DuckDB (the target is 0.7 or
less).

    cargo build --release -p quantlens
    python3 -m pip install duckdb==2.0.0
    python3 bench/vs_duckdb.py [--symbols 2000] [--days 2520] [--binary PATH] [--keep DIR]

The DuckDB script follows docs/pipeline.md: bronze keeps every line of the files with the right
header, with its file and line; silver applies the same rules in the same order and keeps the
latest delivery of each (symbol, date); gold/returns has the same log return, SMAs and 20-day
volatility; gold/market_daily the same daily aggregates. Numbers go to docs/benchmarks.md by hand,
with the machine they came from.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from materialize import default_binary, machine  # noqa: E402
from deployed import use_deployed_allocator  # noqa: E402

HEADER = "symbol,date,open,high,low,close,volume"

# The four layers as plain DuckDB, one statement each; {landing} and {out} are filled in.
LAYERS = {
    "bronze": """
        COPY (
          WITH files AS (
            SELECT parse_filename(filename) AS source_file, string_split(content, chr(10)) AS lines
            FROM read_text('{landing}/*.csv')
          ), numbered AS (
            SELECT source_file, lines[1] AS header, unnest(lines) AS line,
                   generate_subscripts(lines, 1) AS source_line
            FROM files
          )
          SELECT string_split(rtrim(line, chr(13)), ',') AS fields, source_file, source_line
          FROM numbered
          WHERE rtrim(header, chr(13)) = '{header}' AND source_line > 1 AND trim(line) <> ''
        ) TO '{out}/bronze.parquet' (FORMAT parquet)""",
    "silver": """
        CREATE TEMP TABLE checked AS
        WITH typed AS (
          SELECT fields, source_file, source_line,
                 trim(fields[1]) AS symbol, trim(fields[2]) AS date_text,
                 TRY_CAST(trim(fields[3]) AS DOUBLE) AS open, TRY_CAST(trim(fields[4]) AS DOUBLE) AS high,
                 TRY_CAST(trim(fields[5]) AS DOUBLE) AS low, TRY_CAST(trim(fields[6]) AS DOUBLE) AS close,
                 TRY_CAST(trim(fields[7]) AS BIGINT) AS volume,
                 TRY_STRPTIME(trim(fields[2]), '%Y-%m-%d')::DATE AS date
          FROM read_parquet('{out}/bronze.parquet')
        )
        SELECT *, CASE
            WHEN len(fields) <> 7 THEN 'field_count'
            WHEN list_bool_or(list_transform(fields, lambda f: trim(f) = '')) THEN 'empty_field'
            WHEN NOT regexp_full_match(symbol, '[A-Z0-9][A-Z0-9.\\-]{{0,15}}') THEN 'bad_symbol'
            WHEN date IS NULL OR NOT regexp_full_match(date_text, '\\d{{4}}-\\d{{2}}-\\d{{2}}') THEN 'bad_date'
            WHEN open IS NULL OR high IS NULL OR low IS NULL OR close IS NULL THEN 'bad_number'
            WHEN volume IS NULL THEN 'bad_volume'
            WHEN NOT (isfinite(open) AND isfinite(high) AND isfinite(low) AND isfinite(close)) THEN 'price_not_finite'
            WHEN open <= 0 OR high <= 0 OR low <= 0 OR close <= 0 THEN 'price_not_positive'
            WHEN volume < 0 THEN 'negative_volume'
            WHEN low > least(open, close) THEN 'low_above_open_close'
            WHEN high < greatest(open, close) THEN 'high_below_open_close'
          END AS rule
        FROM typed;
        COPY (SELECT * EXCLUDE (date_text) FROM checked WHERE rule IS NOT NULL)
          TO '{out}/silver_prices_rejects.parquet' (FORMAT parquet);
        COPY (
          SELECT symbol, date, open, high, low, close, volume, source_file, source_line,
                 strftime(date, '%Y-%m') AS month
          FROM checked WHERE rule IS NULL
          QUALIFY row_number() OVER (PARTITION BY symbol, date
                                     ORDER BY source_file DESC, source_line DESC) = 1
        ) TO '{out}/silver_prices' (FORMAT parquet, PARTITION_BY (month))""",
    "gold/returns": """
        COPY (
          WITH r AS (
            SELECT symbol, date, close, volume, month,
                   ln(close / lag(close) OVER (PARTITION BY symbol ORDER BY date)) AS log_return
            FROM read_parquet('{out}/silver_prices/*/*.parquet', hive_partitioning = true)
          )
          SELECT symbol, date, close, volume, log_return,
                 CASE WHEN count(close) OVER w20 = 20 THEN avg(close) OVER w20 END AS sma_20,
                 CASE WHEN count(close) OVER w50 = 50 THEN avg(close) OVER w50 END AS sma_50,
                 CASE WHEN count(log_return) OVER w20 = 20 THEN stddev_samp(log_return) OVER w20 END AS vol_20,
                 month
          FROM r
          WINDOW w20 AS (PARTITION BY symbol ORDER BY date ROWS 19 PRECEDING),
                 w50 AS (PARTITION BY symbol ORDER BY date ROWS 49 PRECEDING)
        ) TO '{out}/gold_returns' (FORMAT parquet, PARTITION_BY (month))""",
    "gold/market_daily": """
        COPY (
          SELECT date, count(*) AS symbols, avg(log_return) AS mean_return,
                 count(*) FILTER (WHERE log_return > 0) AS advancers,
                 count(*) FILTER (WHERE log_return < 0) AS decliners,
                 sum(close * volume::DOUBLE) AS dollar_volume, strftime(date, '%Y-%m') AS month
          FROM read_parquet('{out}/gold_returns/*/*.parquet', hive_partitioning = true)
          GROUP BY date
        ) TO '{out}/gold_market_daily' (FORMAT parquet, PARTITION_BY (month))""",
}


def plain_duckdb(landing, out):
    """The child side: runs the four layers and prints their seconds and row counts as JSON."""
    import duckdb
    conn = duckdb.connect()
    seconds, rows = {}, {}
    for layer, sql in LAYERS.items():
        started = time.perf_counter()
        conn.execute(sql.format(landing=landing, out=out, header=HEADER))
        seconds[layer] = time.perf_counter() - started
    rows["silver"] = conn.execute(
        f"SELECT count(*) FROM read_parquet('{out}/silver_prices/*/*.parquet')").fetchone()[0]
    rows["rejects"] = conn.execute(
        f"SELECT count(*) FROM read_parquet('{out}/silver_prices_rejects.parquet')").fetchone()[0]
    print(json.dumps({"seconds": seconds, "rows": rows, "version": duckdb.__version__}))


def run_with_rusage(argv, env=None):
    """Runs a child to its end; returns (wall seconds, its peak RSS in MiB, stdout)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({child.returncode}):\n{stdout}\n{stderr}")
    return seconds, usage.ru_maxrss / 1024, stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--days", type=int, default=2520)
    parser.add_argument("--binary", default=None, help="quantlens (default: target/release)")
    parser.add_argument("--keep", default=None, help="use this directory and keep it")
    parser.add_argument("--plain-duckdb", nargs=2, metavar=("LANDING", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_duckdb:
        # The child whose stdout is the JSON result; it inherits the parent's GLIBC_TUNABLES.
        return plain_duckdb(*args.plain_duckdb)
    use_deployed_allocator()

    binary = args.binary or default_binary()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ql-vs-duckdb-"))
    landing = root / "landing"
    no_assets = root / "no-assets"
    no_assets.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTLENS_")}
    env.update(DATA_ROOT=str(root / "data"), STATE_DIR=str(root / "state"),
               LANDING_DIR=str(landing), ASSETS_DIR=str(no_assets))
    try:
        print(f"machine: {machine()}")
        print(f"binary:  {binary} ({os.path.getsize(binary) / 1e6:.1f} MB)")
        if not landing.exists():
            subprocess.run([binary, "demo", "--symbols", str(args.symbols), "--days", str(args.days)],
                           env=env, check=True, capture_output=True)
        csv_bytes = sum(p.stat().st_size for p in landing.iterdir())
        lines = sum(p.read_bytes().count(b"\n") for p in landing.iterdir())
        print(f"landing: {len(list(landing.iterdir()))} files, {csv_bytes / 1e6:.0f} MB, {lines:,} lines")

        for path in (root / "data", root / "state", root / "duckdb"):
            shutil.rmtree(path, ignore_errors=True)
        (root / "duckdb").mkdir()
        ours, our_rss, _ = run_with_rusage([binary, "materialize", "--run-id", "bench"], env)
        record = json.loads(subprocess.run([binary, "runs", "bench"], env=env, check=True,
                                           capture_output=True, text=True).stdout)
        theirs, their_rss, out = run_with_rusage(
            [sys.executable, __file__, "--plain-duckdb", str(landing), str(root / "duckdb")])
        plain = json.loads(out)

        print(f"\nquantlens materialize: {ours:6.2f} s, peak RSS {our_rss:5.0f} MiB, "
              f"{lines / ours / 1e6:.2f} M lines/s")
        print(f"plain DuckDB {plain['version']}:  {theirs:6.2f} s, peak RSS {their_rss:5.0f} MiB, "
              f"{lines / theirs / 1e6:.2f} M lines/s (silver {plain['rows']['silver']:,} rows, "
              f"rejects {plain['rows']['rejects']:,})")
        print(f"ratio quantlens / DuckDB: {ours / theirs:.2f} (target <= 0.70)")
        written = {a["key"]: a["rows_written"] for a in record["assets"]}
        if written.get("silver/prices") != plain["rows"]["silver"]:
            print(f"WARNING: the two silvers differ ({written.get('silver/prices')} rows here): "
                  "the DuckDB script no longer does the same work")
        layers = {"bronze/prices": "bronze", "silver/prices": "silver",
                  "gold/returns": "gold/returns", "gold/market_daily": "gold/market_daily"}
        print(f"\n{'layer':<20} {'quantlens s':>12} {'DuckDB s':>10} {'rows':>10}")
        for asset in record["assets"]:
            seconds = (_when(asset["finished_at"]) - _when(asset["started_at"]))
            print(f"{asset['key']:<20} {seconds:12.2f} {plain['seconds'][layers[asset['key']]]:10.2f} "
                  f"{asset['rows_written'] or 0:>10}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _when(stamp):
    import datetime as dt
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    main()
