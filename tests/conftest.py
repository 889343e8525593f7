"""Shared fixtures for the end-to-end tests: they run the real `quantlens` binary against a
scratch DATA_ROOT / STATE_DIR and read the Delta tables back with independent readers (the
Python `deltalake` and `polars` packages), never through QuantLens' own code."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Hypothesis (tests/test_api_contract.py through Schemathesis, tests/test_hostile_landing.py)
# keeps a cache (its Unicode tables) in ./.hypothesis unless told otherwise; keep it out of the
# working tree, beside the build cache. No test uses its example database.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    from hypothesis.configuration import set_hypothesis_home_dir
    set_hypothesis_home_dir(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                            / "quantlens" / "hypothesis")


def quantlens_binary() -> Path:
    explicit = os.environ.get("QUANTLENS_BIN")
    if explicit:
        return Path(explicit)
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=REPO, check=True, capture_output=True, text=True,
        ).stdout
    )
    return Path(meta["target_directory"]) / "debug" / "quantlens"


class Lake:
    """One scratch installation: a data root, a landing dir and a state dir."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.state = root / "state"
        self.landing = self.data / "landing" / "prices"
        # Each installation has its own SQL assets folder, empty unless a test adds files: the
        # repository's ./assets would otherwise be picked up from the working directory.
        self.assets = root / "assets"
        self.assets.mkdir(parents=True, exist_ok=True)
        self.binary = quantlens_binary()

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTLENS_")}
        env.update(DATA_ROOT=str(self.data), STATE_DIR=str(self.state), ASSETS_DIR=str(self.assets))
        env.pop("LANDING_DIR", None)
        env.update(extra)
        return env

    def run(self, *args, expect=0, timeout=600, **env):
        result = subprocess.run(
            [str(self.binary), *args], env=self.env(**env),
            capture_output=True, text=True, timeout=timeout,
        )
        if expect is not None and result.returncode != expect:
            raise AssertionError(
                f"quantlens {' '.join(args)} exited {result.returncode}, expected {expect}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result

    def spawn(self, *args, **env):
        return subprocess.Popen(
            [str(self.binary), *args], env=self.env(**env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def demo(self, symbols, days, seed=1, start="2024-01-01"):
        out = self.run("demo", "--symbols", str(symbols), "--days", str(days),
                       "--seed", str(seed), "--start", start, "--json")
        return json.loads(out.stdout)

    def table_path(self, key):
        return str(self.data / key)

    def delta(self, key, version=None):
        from deltalake import DeltaTable
        return DeltaTable(self.table_path(key), version=version)

    def frame(self, key, version=None):
        import polars as pl
        return pl.from_arrow(self.delta(key, version).to_pyarrow_table())

    def runs(self):
        out = self.run("runs", "--json", "--limit", "1000")
        return json.loads(out.stdout)

    def run_record(self, run_id):
        return json.loads(self.run("runs", run_id).stdout)


# Columns that say when or by which run a row was written, not what it holds.
WHEN = {"ingested_at", "run_id"}


def table_keys(lake):
    """Every table under DATA_ROOT: the folders whose Delta log holds a commit. A write that
    failed before a new table's first commit leaves a folder (even a `_delta_log`) without one:
    that is no table, for Delta readers as for QuantLens, and the next run creates it."""
    return sorted(str(log.parent.relative_to(lake.data)) for log in lake.data.rglob("_delta_log")
                  if any(log.glob("0" * 20 + ".json")) or any(log.glob("*.checkpoint.parquet"))
                  or any(log.glob("_last_checkpoint")))


def contents(lake, drop=WHEN):
    """Every table's rows, in a canonical order, without the columns `drop` names (by default
    those that say when they were written; none to compare ingestion too). Reading them all is
    also the check that every table opens and reads in full."""
    out = {}
    for key in table_keys(lake):
        frame = lake.frame(key)
        frame = frame.select([c for c in frame.columns if c not in drop])
        out[key] = frame.sort(frame.columns, nulls_last=True)
    return out


def assert_same_lake(actual, expected, what):
    assert actual.keys() == expected.keys(), f"{what}: tables {sorted(actual)} != {sorted(expected)}"
    for key in expected:
        assert actual[key].equals(expected[key]), f"{what}: {key} differs"


@pytest.fixture
def lake(tmp_path):
    installation = Lake(tmp_path)
    assert installation.binary.exists(), (
        f"{installation.binary} not built; run `cargo build -p quantlens` or set QUANTLENS_BIN"
    )
    return installation
