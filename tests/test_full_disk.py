"""A full disk (issue 13). DATA_ROOT, then STATE_DIR, on a size-limited tmpfs filled to leave a
seeded amount of free space, so that a run meets the full disk at a point nobody chose: in
bronze, silver, gold, the SQL assets, a commit or a checkpoint, in a full build or a daily run.

After every case: the run exits 0 (it fitted) or 1, never anything else; a failed run's record
is finalised `failed` and each failed asset's error says "no space left on the device" and names
its table; every table opens at a committed version and reads in full with Python deltalake.
Then the space is freed, the next run succeeds, and the lake equals, table for table and value
for value (ingested_at and run_id aside), one built from the same files on a roomy disk.

A full state directory: the worker exits 1 naming the file it could not write and touches no
table; `quantlens health` and the trigger's GET /health say `disk_full`; POST /trigger answers
507 and the rest of the API keeps answering; a state disk filled in the middle of a run leaves
every run.json whole and the run finalised or read as crashed; after freeing space all converges.

Needs root (mount); skipped with the reason otherwise. QUANTLENS_DISK_CASES sets the number of
data-disk cases (6 in CI; docs/reliability.md has a longer run)."""

import contextlib
import json
import os
import random
import re
import shutil
import subprocess

import pytest

from conftest import REPO, Lake, assert_same_lake, contents, table_keys
from test_incremental import generate
from trigger_support import Daemon, base_env, wait_for, worker_binary

SEED = 28
CASES = int(os.environ.get("QUANTLENS_DISK_CASES", "6"))
SYMBOLS, BASE_DAYS, NEW_DAYS = 40, 100, 3
NO_SPACE = "no space left on the device"


class Installation(Lake):
    """A lake whose landing folder is outside DATA_ROOT, so that only tables fill the disk, with
    the shipped SQL assets."""

    def __init__(self, root):
        super().__init__(root)
        self.landing = root / "landing"
        self.landing.mkdir(parents=True, exist_ok=True)
        shutil.copytree(REPO / "assets", self.assets, dirs_exist_ok=True)

    def env(self, **extra):
        return super().env(**{"LANDING_DIR": str(self.landing), **extra})

    def deliver(self, files):
        for path in files:
            shutil.copyfile(path, self.landing / path.name)


@contextlib.contextmanager
def small_disk(path, size):
    """A tmpfs of `size` (e.g. "16m") mounted at `path` for the duration."""
    if os.geteuid() != 0:
        pytest.skip("the full-disk suite mounts size-limited tmpfs file systems: it needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "quantlens-full-disk",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(mount, leave):
    """Takes all the free space of `mount` but `leave` bytes (one filler file)."""
    filler = mount / "filler"
    filler.unlink(missing_ok=True)
    stats = os.statvfs(mount)
    size = stats.f_bavail * stats.f_frsize - leave
    if size > 0:
        with open(filler, "wb") as out:
            os.posix_fallocate(out.fileno(), 0, size)
    return filler


def disk_usage(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def deliveries(tmp_path_factory):
    """The landing files (base days, then new days), a lake of the base days built on a roomy
    disk, the lake of every file, and the disk space a full build and a daily run need."""
    root = tmp_path_factory.mktemp("full-disk")
    scratch = Installation(root / "scratch")
    days = generate(scratch, SYMBOLS, BASE_DAYS + NEW_DAYS, SEED, "2024-01-01")
    base = [path for _, files in days[:BASE_DAYS] for path in files]
    new = [path for _, files in days[BASE_DAYS:] for path in files]

    template = Installation(root / "template")
    template.deliver(base)
    template.run("materialize")
    full = Installation(root / "full")
    full.deliver(base + new)
    full.run("materialize")
    daily = Installation(root / "daily")
    shutil.copytree(template.data, daily.data)
    shutil.copytree(template.state, daily.state)
    daily.deliver(base + new)
    daily.run("materialize")
    expected = contents(full)
    assert_same_lake(contents(daily), expected, "a daily run after the base days")
    return {
        "base": base, "new": new, "template": template, "expected": expected,
        "needs": {"full": disk_usage(full.data),
                  "daily": disk_usage(daily.data) - disk_usage(template.data)},
    }


def test_a_full_data_disk_fails_clearly_and_the_next_run_converges(tmp_path, deliveries):
    rng = random.Random(SEED)
    outcomes = {}
    told_by_health = False
    for case in range(CASES):
        kind = ("full", "daily")[case % 2]
        lake = Installation(tmp_path / f"case-{case}")
        with small_disk(lake.data, "32m"):
            if kind == "daily":
                shutil.copytree(deliveries["template"].data, lake.data, dirs_exist_ok=True)
                shutil.copytree(deliveries["template"].state, lake.state)
            lake.deliver(deliveries["base"] + deliveries["new"])
            leave = rng.randrange(0, int(1.3 * deliveries["needs"][kind]))
            filler = fill(lake.data, leave)

            run_id = f"{kind}-{case}"
            result = lake.run("materialize", "--run-id", run_id, expect=None)
            assert result.returncode in (0, 1), result.stderr
            record = lake.run_record(run_id)
            if result.returncode == 0:
                outcome = "fitted"
                assert record["status"] == "succeeded"
            else:
                assert record["status"] == "failed", record
                failed = [a for a in record["assets"] if a["status"] == "failed"]
                assert failed, record
                for asset in failed:
                    # The table it could not write: the asset's own, or the one it writes beside
                    # it (bronze's ledger, silver's rejects).
                    named = re.search(r"table `([^`]+)`", asset["error"])
                    assert NO_SPACE in asset["error"] and named, asset
                    assert named.group(1).startswith(asset["key"].split("/")[0] + "/"), asset
                outcome = failed[0]["key"]
                if not told_by_health:
                    minimum = leave // 2**20 + 1
                    health = lake.run("health", "--json", expect=1, QUANTLENS_MIN_FREE_MB=str(minimum))
                    verdict = json.loads(health.stdout)
                    assert verdict["status"] == "disk_full", verdict
                    assert [d["role"] for d in verdict["disks"] if d["low"]] == ["data"], verdict
                    told_by_health = True
            contents(lake)  # every table opens at a committed version and reads in full

            filler.unlink()
            lake.run("materialize", "--run-id", f"after-{case}")
            assert_same_lake(contents(lake), deliveries["expected"], f"case {case} ({kind})")
        outcomes.setdefault(kind, {}).setdefault(outcome, 0)
        outcomes[kind][outcome] += 1
    print(f"\nfull data disk, {CASES} cases, where the run met it: {json.dumps(outcomes)}")
    stopped = sum(n for kinds in outcomes.values() for key, n in kinds.items() if key != "fitted")
    assert stopped >= CASES // 2, outcomes


def test_a_full_state_disk_is_told_and_survived(tmp_path, deliveries):
    lake = Installation(tmp_path)
    with small_disk(lake.state, "8m"):
        lake.deliver(deliveries["base"])
        lake.run("materialize", "--run-id", "before")
        versions = {key: lake.delta(key).version() for key in table_keys(lake)}
        filler = fill(lake.state, 0)

        # The worker: exit 1, the file it could not write named, no table touched.
        lake.deliver(deliveries["new"])
        refused = lake.run("materialize", expect=1)
        assert "No space left on device" in refused.stderr and str(lake.state) in refused.stderr
        assert {key: lake.delta(key).version() for key in table_keys(lake)} == versions
        verdict = json.loads(lake.run("health", "--json", expect=1, QUANTLENS_MIN_FREE_MB="1").stdout)
        assert verdict["status"] == "disk_full" and verdict["disks"][0]["low"], verdict

        # The daemon keeps answering, and says why no run can start.
        env = base_env(DATA_ROOT=lake.data, LANDING_DIR=lake.landing, ASSETS_DIR=lake.assets)
        daemon = Daemon(tmp_path, worker_binary(), "--min-free-mb", "1", env=env)
        try:
            health = daemon.get("/health")
            assert health.status == 503 and health.json["status"] == "disk_full", health
            assert "the state directory" in health.json["error"]
            started = daemon.post("/trigger")
            assert started.status == 507 and started.json["status"] == "insufficient_storage", started
            assert daemon.get("/runs").status == 200 and daemon.get("/status").status == 200
            assert daemon.get("/runs/before").json["status"] == "succeeded"

            # Space comes back; a run starts, and the state disk fills while it runs.
            filler.unlink()
            process = lake.spawn("materialize", "--run-id", "filled-midway")
            record = lake.state / "runs" / "filled-midway" / "run.json"
            wait_for(lambda: record.exists() and '"running"' in record.read_text(), timeout=60,
                     interval=0.005, what="the run to start")
            filler = fill(lake.state, 0)
            process.communicate(timeout=300)
            assert process.returncode in (0, 1), process.returncode
            for path in (lake.state / "runs").glob("*/run.json"):
                json.loads(path.read_text())  # whole, never half-written
            filler.unlink()
            midway = lake.run_record("filled-midway")
            assert midway["status"] in ("succeeded", "failed", "crashed"), midway
            print(f"\nstate disk filled during a run: exit {process.returncode}, "
                  f"recorded {midway['status']}")

            lake.run("materialize", "--run-id", "after")
            assert_same_lake(contents(lake), deliveries["expected"], "after the state disk was freed")
            wait_for(lambda: daemon.get("/health").status == 200, timeout=15, interval=0.5,
                     what="GET /health to be 200 again")
        finally:
            daemon.terminate()
