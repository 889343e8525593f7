"""The allocator setting the deployment gives the worker, for benchmarks that measure it as
deployed. The VM's env file (ansible/roles/quantlens/templates/quantlens.env.j2, read by every
unit, the operator's wrapper and, through the trigger, every worker) sets GLIBC_TUNABLES so that
malloc asks for transparent huge pages; glibc reads it only when a process starts, so a worker
started by hand runs without it. Each bench applies the same value unless GLIBC_TUNABLES is
already in the environment (set it empty to measure without)."""

import os
from pathlib import Path

ENV_FILE = Path(__file__).resolve().parent.parent / "ansible/roles/quantlens/templates/quantlens.env.j2"


def deployed_tunables():
    """The GLIBC_TUNABLES value of the deployment's env file."""
    for line in ENV_FILE.read_text().splitlines():
        if line.startswith("GLIBC_TUNABLES="):
            return line.split("=", 1)[1].strip()
    raise SystemExit(f"{ENV_FILE} sets no GLIBC_TUNABLES")


def use_deployed_allocator():
    """Sets GLIBC_TUNABLES in this process's environment (inherited by the workers it starts) to
    the deployment's value, unless it is already set, and says which value is in effect."""
    deployed = deployed_tunables()
    tunables = os.environ.setdefault("GLIBC_TUNABLES", deployed)
    print(f"GLIBC_TUNABLES={tunables!r} ({'as deployed' if tunables == deployed else 'from the environment'})")
    return tunables
