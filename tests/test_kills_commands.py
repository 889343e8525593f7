"""SIGKILL at random moments (seeded) of `quantlens maintain`, `backup` and `restore`, the commands
tests/test_kills.py does not reach. After every kill: every table opens at a committed version
and reads in full with Python deltalake, holding exactly the data it held before; the run lock
is free (the next command runs, no exit 75). Backups: `backup list` shows only complete backups,
each verifies, and the newest restores to the lake's data. Restores: a killed restore leaves a
partial target that `restore --force` then turns into the same data. A bounded slice runs in CI
(KILLS per command); QUANTLENS_COMMAND_KILLS=N runs more by hand (docs/reliability.md)."""

import json
import os
import random
import shutil
import time

from conftest import Lake, assert_same_lake, contents
from test_kills import killed

SEED = 13
KILLS = int(os.environ.get("QUANTLENS_COMMAND_KILLS", "5"))


def exact_contents(lake):
    """Every table's rows, ingestion times included: what no maintenance, backup or restore may
    change."""
    return contents(lake, drop=())


def timed(lake, *args):
    started = time.monotonic()
    lake.run(*args)
    return time.monotonic() - started


def test_kills_during_maintain_backup_and_restore(tmp_path):
    lake = Lake(tmp_path / "lake")
    rng = random.Random(SEED)
    # Many small deliveries, so maintenance has files to compact and versions to checkpoint.
    for day in range(1, 21):
        lake.demo(symbols=40, days=day)
        lake.run("materialize")
    before = exact_contents(lake)
    counts = {"maintain": 0, "backup": 0, "restore": 0}

    # maintain: killed anywhere, the tables keep their data and the lock is free. Its duration
    # is learnt on a copy, so that the kills meet a maintenance that still has work to do.
    rehearsal = Lake(tmp_path / "rehearsal")
    shutil.copytree(lake.data, rehearsal.data)
    duration = timed(rehearsal, "maintain")
    for attempt in range(KILLS):
        counts["maintain"] += killed(lake, ["maintain"], rng.uniform(0, 1.2 * duration))
        assert_same_lake(exact_contents(lake), before, f"after maintain kill {attempt}")
    lake.run("maintain")  # not 75: no stale lock
    assert_same_lake(exact_contents(lake), before, "after a whole maintain")

    # backup: only complete backups are listed; each verifies; the newest restores whole.
    target = tmp_path / "backups"
    duration = timed(lake, "backup", "--to", str(target))
    complete = 1
    for attempt in range(KILLS):
        lake.demo(symbols=40, days=21 + attempt)  # something new to copy each time
        lake.run("materialize")
        counts["backup"] += killed(lake, ["backup", "--to", str(target)], rng.uniform(0, 1.5 * duration))
        listed = json.loads(lake.run("backup", "list", "--to", str(target), "--json").stdout)
        assert len(listed) >= complete, "a backup that was complete disappeared"
        for manifest in listed[complete:]:  # the one the killed backup may have written
            verified = lake.run("backup", "verify", "--to", str(target), "--backup", manifest["backup_id"])
            assert "verified" in verified.stdout
        complete = len(listed)
    lake.run("backup", "--to", str(target))
    now = exact_contents(lake)
    restored = Lake(tmp_path / "restored")
    restored.run("restore", "--from", str(target))
    assert_same_lake(exact_contents(restored), now, "the newest backup restored")

    # restore: a killed restore leaves a partial target; restore --force makes it whole.
    duration = timed(restored, "restore", "--from", str(target), "--force")
    for attempt in range(KILLS):
        counts["restore"] += killed(restored, ["restore", "--from", str(target), "--force"],
                                    rng.uniform(0, 1.5 * duration))
        restored.run("restore", "--from", str(target), "--force")
        assert_same_lake(exact_contents(restored), now, f"restore --force after restore kill {attempt}")
    print(f"\nkills that hit a running command: {counts} of {KILLS} each")
    assert sum(counts.values()) >= KILLS, counts
