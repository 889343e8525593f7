"""Helpers for tests/test_trigger.py: start the real `quantlens-trigger` binary on a loopback port,
talk plain HTTP/1.1 to it (http.client, no client library in between), and write stand-in worker
scripts that behave like `quantlens materialize` in the ways a test needs (sleep, crash, ignore
SIGTERM, leave a grandchild behind, finish their run record).

Binaries: $QUANTLENS_TRIGGER_BIN and $QUANTLENS_BIN if set, else target/debug/ of `cargo metadata`
(build them with `cargo build -p quantlens-trigger -p quantlens`)."""

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=None)
def target_dir() -> Path:
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=REPO, check=True, capture_output=True, text=True,
        ).stdout
    )
    return Path(meta["target_directory"])


def trigger_binary() -> Path:
    explicit = os.environ.get("QUANTLENS_TRIGGER_BIN")
    return Path(explicit) if explicit else target_dir() / "debug" / "quantlens-trigger"


def worker_binary() -> Path:
    explicit = os.environ.get("QUANTLENS_BIN")
    return Path(explicit) if explicit else target_dir() / "debug" / "quantlens"


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Polls `predicate` until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- stand-in workers ---------------------------------------------------------------------------

STANDIN_HEADER = r"""#!/bin/sh
# Stand-in for `quantlens materialize --select SEL --run-id ID`, started by quantlens-trigger.
RUN_ID= SELECT=
while [ $# -gt 0 ]; do
  case "$1" in
    --run-id) RUN_ID=$2; shift ;;
    --select) SELECT=$2; shift ;;
  esac
  shift
done
RUN_DIR="$STATE_DIR/runs/$RUN_ID"
echo "$RUN_ID" >> "$STATE_DIR/standin-invocations"
# finish STATUS [EXIT_CODE]: write the terminal run record, as the real worker does.
finish() {
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  printf '{"run_id":"%s","status":"%s","trigger":"%s","selection":"%s","pid":%s,"started_at":"%s","finished_at":"%s","exit_code":%s,"error":null,"assets":[]}\n' \
    "$RUN_ID" "$1" "$QUANTLENS_TRIGGER" "$SELECT" "$$" "$now" "$now" "${2:-0}" > "$RUN_DIR/run.json.tmp"
  mv "$RUN_DIR/run.json.tmp" "$RUN_DIR/run.json"
}
echo "stand-in worker $$ for run $RUN_ID selecting '$SELECT'"
"""


def standin(directory: Path, body: str, name="worker.sh") -> Path:
    """Writes an executable stand-in worker whose behaviour is the shell `body`."""
    path = directory / name
    path.write_text(STANDIN_HEADER + body + "\n")
    path.chmod(0o755)
    return path


def invocations(state: Path) -> list:
    """The run ids the stand-in was started for, in order."""
    path = state / "standin-invocations"
    return path.read_text().split() if path.exists() else []


# --- the daemon ---------------------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.raw = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return f"<{self.status} {self.raw[:300]!r}>"


def base_env(**extra):
    """Our environment without anything QuantLens- or systemd-specific, plus `extra`."""
    drop = ("QUANTLENS_", "LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_", "STATE_DIR", "DATA_ROOT",
            "LANDING_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Daemon:
    """One quantlens-trigger process listening on an ephemeral loopback port."""

    def __init__(self, root: Path, worker: Path, *args, env=None, token=None, listen="127.0.0.1:0",
                 wrap=(), wait_ready=True):
        self.root = root
        self.state = root / "state"
        self.token = token
        self.stderr_path = root / f"daemon-{time.monotonic_ns()}.log"
        argv = [*wrap, str(trigger_binary()), "--worker", str(worker), "--state-dir",
                str(self.state), "--listen", listen, *map(str, args)]
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, env=env if env is not None else base_env(),
                                     stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=self._stderr, cwd=root)
        self.port = None
        if wait_ready:
            self.wait_serving()

    @property
    def pid(self):
        return self.proc.pid

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_serving(self, timeout=15.0):
        def serving():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            for line in self.log().splitlines():
                if "serving on http://" in line:
                    return line
            return None
        line = wait_for(serving, timeout, what="the daemon to serve")
        self.port = int(line.split("serving on http://", 1)[1].split()[0].rsplit(":", 1)[1])

    def request(self, method, path, body=None, headers=None, auth=True, timeout=10.0):
        headers = dict(headers or {})
        if auth and self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path="/trigger", body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def wait_run(self, run_id, timeout=20.0):
        """Polls GET /runs/{id} until the run is terminal; returns the record."""
        def terminal():
            r = self.get(f"/runs/{run_id}")
            assert r.status == 200, r
            return r.json if r.json["status"] not in ("starting", "running") else None
        return wait_for(terminal, timeout, interval=0.05, what=f"run {run_id} to end")

    def wait_idle(self, timeout=20.0):
        """Waits until the daemon accepts a new run... without starting one: /health says no
        run is in progress (it reads the daemon's own state first)."""
        wait_for(lambda: self.get("/health").json["running"] is None, timeout,
                 what="no run in progress")

    def children(self):
        """Pids of the daemon's direct children (zombies included)."""
        pids = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            pids += (task / "children").read_text().split()
        return [int(p) for p in pids]

    def open_fds(self):
        fds = {}
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            try:
                fds[int(fd.name)] = os.readlink(fd)
            except OSError:
                pass
        return fds

    def terminate(self, timeout=30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout=30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._stderr.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_gone(pid) -> bool:
    """True once `pid` no longer exists or is only a zombie awaiting its (new) parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def group_gone(pgid) -> bool:
    """True once no live process is left in process group `pgid`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            return False
    return True


def worker_pid(state: Path, run_id: str) -> int:
    """The worker pid the daemon logged in the run's events.ndjson."""
    events = (state / "runs" / run_id / "events.ndjson").read_text().splitlines()
    return next(json.loads(e)["pid"] for e in events if '"worker_spawned"' in e)


def write_record(state: Path, run_id: str, status: str, finished_at: str, trigger="timer"):
    """A run record as a finished worker would leave it."""
    run_dir = state / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({
        "run_id": run_id, "status": status, "trigger": trigger, "selection": "*", "pid": None,
        "started_at": finished_at, "finished_at": finished_at, "exit_code": 0, "error": None,
        "assets": [],
    }))
