"""A memory limit for one child process, the kernel's way: a fresh cgroup with cgroup v2's
`memory.max` where the memory controller is delegated to us, else cgroup v1's
`memory.limit_in_bytes`. The child joins it before it execs, so everything it allocates counts;
going over the limit gets it killed by the kernel's OOM killer, exactly as systemd's MemoryMax=
would on the VM. Used by tests/test_memory_ceiling.py; needs write access to a cgroup
hierarchy (root, or a delegated subtree), and says why not otherwise."""

import os
import subprocess
from pathlib import Path


def _mounts():
    """(mount point, fs type, super options) of every cgroup mount."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        rest = fields[fields.index("-") + 1:]
        if rest[0] in ("cgroup", "cgroup2"):
            yield Path(fields[4]), rest[0], rest[2].split(",")


def _own_path(version):
    """This process's cgroup path in the v2 hierarchy ("0::/path"), or in v1's memory one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if (version == 2 and number == "0") or (version == 1 and "memory" in controllers.split(",")):
            return path.lstrip("/")
    return None


class MemoryLimit:
    """A cgroup limited to `limit_bytes`, removed on close."""

    def __init__(self, limit_bytes):
        self.limit = limit_bytes
        self.dir, self.version, reasons = None, None, []
        for mount, fstype, options in _mounts():
            version = 2 if fstype == "cgroup2" else 1
            if version == 1 and "memory" not in options:
                continue
            own = _own_path(version) or ""
            # Our own cgroup is not always visible under the mount (a container sees its own
            # root); then the mount's root is ours.
            parent = mount / own if (mount / own).is_dir() else mount
            candidate = parent / f"quantlens-test-{os.getpid()}-{id(self)}"
            try:
                candidate.mkdir()
            except OSError as err:
                reasons.append(f"{parent}: {err.strerror}")
                continue
            limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
            if not (candidate / limit_file).exists():
                candidate.rmdir()
                reasons.append(f"{parent}: the memory controller is not enabled for children")
                continue
            try:
                (candidate / limit_file).write_text(str(limit_bytes))
                if version == 2 and (candidate / "memory.swap.max").exists():
                    (candidate / "memory.swap.max").write_text("0")
            except OSError as err:
                candidate.rmdir()
                reasons.append(f"{candidate / limit_file}: {err.strerror}")
                continue
            self.dir, self.version = candidate, version
            break
        self.unavailable = None if self.dir else "; ".join(reasons) or "no cgroup mount"

    def enter(self):
        """For Popen(preexec_fn=...): moves the child into the cgroup before it execs."""
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def run(self, argv, env, timeout=1800):
        """Runs `argv` inside the limit; returns (exit status as subprocess reports it, the
        child's own peak RSS in bytes, stdout+stderr). The child's full resource usage (CPU
        times too) is left in `self.usage`."""
        process = subprocess.Popen(argv, env=env, preexec_fn=self.enter,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = process.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
        self.usage = usage
        process.returncode = os.waitstatus_to_exitcode(status)
        process.stdout.close()
        return process.returncode, usage.ru_maxrss * 1024, output

    def peak(self):
        """The cgroup's peak charge (anonymous memory and page cache), in bytes."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        path = self.dir / name
        return int(path.read_text()) if path.exists() else None

    def oom_kills(self):
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.dir / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def describe(self):
        knob = "memory.max" if self.version == 2 else "memory.limit_in_bytes (cgroup v1)"
        return f"{knob} = {self.limit // 2**20} MiB"

    def close(self):
        if self.dir and self.dir.exists():
            self.dir.rmdir()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
