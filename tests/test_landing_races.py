"""Landing files that change while a run reads them (issue 13): files renamed, and a delivery
still being written (a file that grows), at seeded random moments of a real
`quantlens materialize`. A listing is only a moment's view: a file renamed after it was listed
is skipped (under its new name it is in the next listing), and a file read while it grows is a
delivery of what was there, superseded by the whole file at the next run.

After each case, and one more run: the runs succeeded; the row invariant holds (every bronze row
in silver, in the rejects, or superseded: test_hostile_landing.row_invariant); nothing valid is
lost and nothing is counted twice: silver and gold equal, value for value, those of a lake built
once from the final files (only where and when a row was ingested may differ).

QUANTLENS_LANDING_RACES sets the cases per kind (2 in CI; docs/reliability.md has a longer run)."""

import os
import random
import shutil
import threading
import time

from conftest import Lake, contents
from test_hostile_landing import row_invariant

SEED = 41
CASES = int(os.environ.get("QUANTLENS_LANDING_RACES", "2"))
# Where and when a row was ingested, which a race may change; never what it says.
PROVENANCE = ["source_file", "source_line", "ingested_at"]


def derived(lake):
    """silver/prices and the gold tables, without provenance columns."""
    out = {}
    for key, frame in contents(lake).items():
        if key == "silver/prices" or key.startswith("gold/"):
            frame = frame.drop([c for c in PROVENANCE if c in frame.columns])
            out[key] = frame.sort(frame.columns, nulls_last=True)
    return out


def assert_converged(lake, tmp_path, what):
    """The invariant on `lake`, and its silver and gold equal to a lake built from its landing
    files in one run."""
    row_invariant(lake, lake.frame("bronze/prices"))
    once = Lake(tmp_path / f"once-{what}")
    shutil.copytree(lake.landing, once.landing)
    once.run("materialize")
    expected, actual = derived(once), derived(lake)
    assert actual.keys() == expected.keys(), what
    for key in expected:
        assert actual[key].equals(expected[key]), f"{what}: {key} differs from a build in one run"
    shutil.rmtree(once.root)


def race(lake, meddle):
    """Runs `quantlens materialize` while `meddle()` runs in a thread; returns the run's result."""
    worker = threading.Thread(target=meddle)
    process = lake.spawn("materialize")
    worker.start()
    out, err = process.communicate(timeout=600)
    worker.join()
    return process.returncode, out, err


def test_files_renamed_while_a_run_reads_them(tmp_path):
    rng = random.Random(SEED)
    seen = 0
    for case in range(CASES):
        lake = Lake(tmp_path / f"rename-{case}")
        lake.demo(symbols=150, days=250, seed=case)
        files = sorted(lake.landing.iterdir())
        chosen = rng.sample(files, len(files) // 3)
        delay = rng.uniform(0, 1.5)

        def rename():
            time.sleep(delay)
            for path in chosen:
                path.rename(path.with_name("renamed-" + path.name))
                time.sleep(0.002)

        status, out, err = race(lake, rename)
        assert status == 0, f"{out}\n{err}"
        seen += err.count("disappeared before it was read")
        lake.run("materialize")
        names = {path.name for path in lake.landing.iterdir()}
        ledger = set(lake.frame("bronze/landing_files")["file"].to_list())
        assert names <= ledger, names - ledger
        assert ledger <= names | {path.name for path in chosen}, ledger - names
        assert_converged(lake, tmp_path, f"rename-{case}")
    print(f"\nrenamed during a run: {CASES} cases, {seen} file(s) gone between listing and read")


def test_a_file_that_grows_while_a_run_reads_it(tmp_path):
    rng = random.Random(SEED)
    for case in range(CASES):
        lake = Lake(tmp_path / f"grow-{case}")
        lake.demo(symbols=100, days=150, seed=case)
        # A large delivery for later dates, written in uneven pieces that cut lines anywhere.
        scratch = tmp_path / f"grow-{case}-scratch"
        lake.run("demo", "--symbols", "2000", "--days", "10", "--seed", str(case),
                 "--start", "2025-01-01", LANDING_DIR=str(scratch))
        parts = [p.read_text() for p in sorted(scratch.glob("prices_*.csv"))]
        body = (parts[0] + "".join(p.split("\n", 1)[1] for p in parts[1:])).encode()
        growing = lake.landing / "prices_2025-01-big.csv"
        # The upload is under way when the run starts, and goes on for longer than it lists.
        begun = rng.randrange(1, len(body) // 2)
        growing.write_bytes(body[:begun])

        def grow():
            with open(growing, "ab") as out:
                written = begun
                while written < len(body):
                    piece = rng.randint(1, 16 * 1024)
                    out.write(body[written:written + piece])
                    out.flush()
                    written += piece
                    time.sleep(0.02)

        status, out, err = race(lake, grow)
        assert status == 0, f"{out}\n{err}"
        lake.run("materialize")
        assert growing.read_bytes() == body
        deliveries = lake.frame("bronze/landing_files").filter(file=growing.name)
        # Read part-way by the racing run (one delivery), then whole by the next (another).
        assert deliveries.height >= 2 and deliveries["bytes"].max() == len(body), deliveries
        print(f"\ngrowing file, case {case}: delivered {deliveries.height} time(s), "
              f"sizes read {sorted(deliveries['bytes'].to_list())}")
        assert_converged(lake, tmp_path, f"grow-{case}")
