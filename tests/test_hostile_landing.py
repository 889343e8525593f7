"""Hostile landing files, generated and mutated by Hypothesis (seeded, bounded), each set run
through the real `quantlens materialize` on a fresh lake and read back with Python deltalake.

Deliveries follow the grammar of real ones (header `symbol,date,open,high,low,close,volume`,
consistent prices) and are then damaged the ways real ones are: random bytes, NUL, invalid UTF-8,
a BOM in the middle, CRLF and lone CR line ends, quotes with embedded newlines, long lines,
empty and header-only files, a header with permuted or extra columns or repeated as a data line,
numbers like `1e309`, `-0`, `0x1A`, ` 12 `, dates like `2024-02-30`.

The row-level invariant checked on every case (docs/pipeline.md): every bronze row is in exactly
one of silver/prices, silver/prices_rejects (with its rule), or superseded (a later delivery of
the same symbol and date is in silver), so bronze rows = silver rows + rejects + superseded. And:
the run succeeds (a bad file is never a failed run), every landing file is in the ledger exactly
once (ingested with its row count, or rejected with a reason and no bronze rows), and no clean row
is lost: the symbol and date of every row the generator left intact are in silver.

CI runs MAX_EXAMPLES cases; QUANTLENS_HOSTILE_EXAMPLES=N runs more by hand."""

import os
import shutil
from collections import Counter
from datetime import date, timedelta

from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from conftest import Lake

MAX_EXAMPLES = int(os.environ.get("QUANTLENS_HOSTILE_EXAMPLES", "20"))
STATS = Counter()  # what the cases held, printed at the end (-s)
HEADER = "symbol,date,open,high,low,close,volume"
SYMBOLS = ["AAA", "BRK.B", "X-1", "Q9"]


@st.composite
def clean_rows(draw):
    """(symbol, date, open, high, low, close, volume) lines a real delivery would have."""
    rows = []
    for _ in range(draw(st.integers(1, 12))):
        day = date(2024, 1, 1) + timedelta(days=draw(st.integers(0, 90)))
        low = draw(st.floats(1, 500, allow_nan=False))
        high = low * draw(st.floats(1, 1.2))
        open_, close = (low + (high - low) * draw(st.floats(0, 1)) for _ in range(2))
        volume = draw(st.integers(0, 10**9))
        rows.append([draw(st.sampled_from(SYMBOLS)), day.isoformat(), f"{open_:.4f}",
                     f"{high:.4f}", f"{low:.4f}", f"{close:.4f}", str(volume)])
    return rows


# What a damaged line becomes: each takes the seven fields and returns the line's bytes.
FIELD_DAMAGE = {
    "overflow": lambda f: f[:2] + ["1e309"] + f[3:],
    "minus_zero": lambda f: f[:4] + ["-0"] + f[5:],
    "hex": lambda f: f[:6] + ["0x1A"],
    "padded": lambda f: [f" {x} " for x in f],
    "impossible_day": lambda f: [f[0], "2024-02-30"] + f[2:],
    "missing_field": lambda f: f[:6],
    "extra_field": lambda f: f + ["x"],
    "empty_field": lambda f: f[:3] + [""] + f[4:],
    "lowercase_symbol": lambda f: [f[0].lower()] + f[1:],
}
LINE_DAMAGE = {
    "nul": lambda line: line[:3] + b"\x00" + line[3:],
    "invalid_utf8": lambda line: line[:2] + b"\xff\xfe" + line[2:],
    "bom_inside": lambda line: line[:5] + b"\xef\xbb\xbf" + line[5:],
    "quoted_newline": lambda line: b'"' + line.replace(b",", b'\n,', 1) + b'"',
    "random_bytes": lambda line: bytes((b * 7 + 13) % 256 for b in line),
    "long_line": lambda line: line + b"," + b"9" * 200_000,
    "ten_mb_line": lambda line: line + b"9" * 10_000_000,
    "million_columns": lambda line: line + b"," * 1_000_000,
    "header_again": lambda line: HEADER.encode(),
}
HEADER_DAMAGE = {
    "none": lambda h: h,
    "bom": lambda h: "\ufeff" + h,
    "spaces_and_case": lambda h: " , ".join(x.upper() for x in h.split(",")),
    "quoted": lambda h: ",".join(f'"{x}"' for x in h.split(",")),
    "permuted": lambda h: ",".join(reversed(h.split(","))),
    "extra_column": lambda h: h + ",exchange",
}
ENDINGS = [b"\n", b"\r\n", b"\r"]


@st.composite
def delivery(draw):
    """One landing file: (bytes, the clean (symbol, date) keys it carries, header damage)."""
    kind = draw(st.sampled_from(["rows"] * 6 + ["empty", "header_only", "binary"]))
    ending = draw(st.sampled_from(ENDINGS))
    header_damage = draw(st.sampled_from(["none"] * 4 + sorted(HEADER_DAMAGE)))
    header = HEADER_DAMAGE[header_damage](HEADER).encode()
    if kind == "empty":
        return b"", set(), header_damage
    if kind == "header_only":
        return header + ending, set(), header_damage
    if kind == "binary":
        return bytes(draw(st.binary(min_size=1, max_size=200))), set(), header_damage
    lines, clean = [header], set()
    for fields in draw(clean_rows()):
        # Line damage that makes the whole file unreadable (bytes that are not UTF-8) is rarer,
        # so that most cases have rows to follow through bronze and silver.
        damage = draw(st.sampled_from([None] * 8 + sorted(FIELD_DAMAGE) * 2 + sorted(LINE_DAMAGE)))
        if damage in FIELD_DAMAGE:
            lines.append(",".join(FIELD_DAMAGE[damage](fields)).encode())
        elif damage in LINE_DAMAGE:
            lines.append(LINE_DAMAGE[damage](",".join(fields).encode()))
        else:
            lines.append(",".join(fields).encode())
            clean.add((fields[0], fields[1]))
    body = ending.join(lines)
    if draw(st.booleans()):
        body += ending
    # Only a file with the plain header (give or take what the contract tolerates) keeps its
    # clean rows: a permuted or extended header rejects the whole file.
    if header_damage in ("permuted", "extra_column"):
        clean = set()
    return body, clean, header_damage


def row_invariant(lake, bronze):
    """Checks that every bronze row is in exactly one of silver, the rejects (with its rule), or
    superseded by a later delivery of its symbol and date that is in silver. A row is named by
    its file, line and ingestion: a file whose content changed is delivered again under the same
    name. Returns silver, the rejects by row, the superseded count and silver's (symbol, date)s."""
    silver = lake.frame("silver/prices")
    rejects = lake.frame("silver/prices_rejects") \
        if (lake.data / "silver/prices_rejects").exists() else None
    def named(frame):
        return list(zip(frame["source_file"].to_list(), frame["source_line"].to_list(),
                        frame["ingested_at"].to_list()))
    in_silver = set(named(silver))
    keys_in_silver = set(zip(silver["symbol"].to_list(),
                             [d.isoformat() for d in silver["date"].to_list()]))
    rejected = {} if rejects is None else dict(zip(named(rejects), rejects["rule"].to_list()))
    assert rejects is None or len(rejected) == rejects.height, "a reject is counted twice"
    assert len(in_silver) == silver.height, "a silver row is counted twice"
    superseded = 0
    for row in bronze.iter_rows(named=True):
        where = (row["source_file"], row["source_line"], row["ingested_at"])
        places = (where in in_silver) + (where in rejected)
        assert places <= 1, f"bronze row {where} is both in silver and rejected"
        if places == 0:
            # Superseded: valid, but a later delivery of its symbol and date won.
            key = ((row["symbol"] or "").strip(), (row["date"] or "").strip())
            assert key in keys_in_silver, f"bronze row {where} {row} is lost"
            superseded += 1
        elif where in rejected:
            assert rejected[where], where
    assert bronze.height == silver.height + len(rejected) + superseded
    return silver, rejected, superseded, keys_in_silver


@seed(20261203)
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(files=st.lists(delivery(), min_size=1, max_size=5))
def test_hostile_landing_files_keep_the_row_invariant(files, tmp_path_factory):
    lake = Lake(tmp_path_factory.mktemp("hostile"))
    lake.landing.mkdir(parents=True)
    clean_by_file = {}
    for i, (body, keys, _) in enumerate(files):
        clean_by_file[f"delivery-{i:02}.csv"] = keys
        (lake.landing / f"delivery-{i:02}.csv").write_bytes(body)
        note(f"delivery-{i:02}.csv: {body[:400]!r}{' ...' if len(body) > 400 else ''}")
    try:
        result = lake.run("materialize", expect=None, timeout=600)
        assert result.returncode == 0, f"a bad file must not fail the run:\n{result.stdout}\n{result.stderr}"
        ledger = lake.frame("bronze/landing_files")
        names = sorted(ledger["file"].to_list())
        assert names == sorted(f"delivery-{i:02}.csv" for i in range(len(files))), ledger
        bronze = lake.frame("bronze/prices") if (lake.data / "bronze/prices").exists() else None
        rows_by_file = {}
        if bronze is not None:
            for name in bronze["source_file"].to_list():
                rows_by_file[name] = rows_by_file.get(name, 0) + 1
        # A file the ledger rejects (not UTF-8, a wrong header: docs/pipeline.md) takes its
        # rows with it, by contract; the clean rows of every ingested file must reach silver.
        clean = set()
        for entry in ledger.iter_rows(named=True):
            note(f"ledger: {entry['file']} {entry['status']} {entry['reason']!r} rows={entry['rows']}")
            if entry["status"] == "ingested":
                clean |= clean_by_file[entry["file"]]
            if entry["status"] == "rejected":
                assert entry["reason"], entry
                assert rows_by_file.get(entry["file"], 0) == 0, entry
            else:
                assert entry["status"] == "ingested", entry
                assert rows_by_file.get(entry["file"], 0) == entry["rows"], entry
        if bronze is None or bronze.height == 0:
            assert not clean, "clean rows were lost with their file"
            return
        silver, rejected, superseded, keys_in_silver = row_invariant(lake, bronze)
        STATS.update(cases=1, files=len(files), ingested=ledger.filter(ledger["status"] == "ingested").height,
                     bronze=bronze.height, silver=silver.height, rejects=len(rejected),
                     superseded=superseded, rules=len(set(rejected.values())))
        note(f"bronze {bronze.height} = silver {silver.height} + rejects {len(rejected)} "
             f"+ superseded {superseded}")
        lost = clean - keys_in_silver
        assert not lost, f"clean rows lost: {sorted(lost)}"
    finally:
        shutil.rmtree(lake.root, ignore_errors=True)


def test_what_the_cases_held():
    """Runs after the property (file order): prints what the generated cases exercised, so a
    generator that only made rejected files would show."""
    print(f"\nhostile landing cases: {dict(STATS)}")
    assert STATS["ingested"] > 0 and STATS["rejects"] > 0 and STATS["silver"] > 0, STATS
