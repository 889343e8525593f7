"""End-to-end tests of the trigger daemon: the real `quantlens-trigger` binary on a loopback port,
plain HTTP, real processes. Most use a stand-in worker script (tests/trigger_support.py) so they
can make a run sleep, crash, ignore SIGTERM or leave a grandchild behind; the last ones run the
real `quantlens` worker on small demo data. Socket activation goes through systemd's own
`systemd-socket-activate`, and sd_notify through a real datagram socket.

Needs `cargo build -p quantlens-trigger -p quantlens` first (or QUANTLENS_TRIGGER_BIN and
QUANTLENS_BIN).
No test asserts a timing: every wait is a bounded poll for a state."""

import asyncio
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from trigger_support import (
    Daemon, base_env, free_port, group_gone, invocations, process_gone, standin,
    trigger_binary, wait_for, worker_binary, worker_pid, write_record,
)

FINISHES = "sleep 0.3\nfinish succeeded"
SLEEPS = "sleep 30"


@pytest.fixture(autouse=True)
def _binary_built():
    assert trigger_binary().exists(), (
        f"{trigger_binary()} not built; run `cargo build -p quantlens-trigger` "
        "or set QUANTLENS_TRIGGER_BIN"
    )


@pytest.fixture
def daemons(tmp_path):
    """Starts daemons on demand; kills whatever is left at the end of the test."""
    started = []

    def start(worker_body=FINISHES, *args, worker=None, **kw):
        worker = worker or standin(tmp_path, worker_body)
        daemon = Daemon(tmp_path, worker, *args, **kw)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        # SIGTERM first: the daemon then stops its run, so no stand-in outlives the test.
        try:
            daemon.terminate(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        daemon.kill()


def assert_error(response, status, code):
    assert response.status == status, response
    assert response.headers["content-type"] == "application/json", response
    assert response.json["status"] == code, response
    assert isinstance(response.json["error"], str) and response.json["error"], response


# --- the API ------------------------------------------------------------------------------------

def test_trigger_starts_a_run_and_every_endpoint_reports_it(daemons):
    d = daemons("sleep 0.5\nfinish succeeded")
    r = d.post()
    assert r.status == 202, r
    run_id = r.json["run_id"]
    assert r.json["status"] == "started" and r.json["selection"] == "*"
    assert r.headers["location"] == f"/runs/{run_id}"

    # The record exists the moment the 202 is out.
    r = d.get(f"/runs/{run_id}")
    assert r.status == 200, r
    assert r.json["status"] in ("starting", "running")
    assert (r.json["trigger"], r.json["selection"]) == ("http", "*")

    record = d.wait_run(run_id)
    assert record["status"] == "succeeded"
    assert record["trigger"] == "http"  # QUANTLENS_TRIGGER=http reached the worker
    assert invocations(d.state) == [run_id]
    d.wait_idle()  # the daemon's own closing note comes after the worker's record

    runs = d.get("/runs").json["runs"]
    assert [run["run_id"] for run in runs] == [run_id]
    assert d.get("/runs?limit=1").json["runs"][0]["run_id"] == run_id

    log = d.get(f"/runs/{run_id}/log?tail=50").json
    assert log["run_id"] == run_id and log["tail"] == 50
    assert "stand-in worker" in log["log"] and "quantlens-trigger: starting " in log["log"]
    last = d.get(f"/runs/{run_id}/log?tail=1").json["log"]
    assert last.count("\n") == 1 and "exited with code 0" in last

    health = d.get("/health")
    assert health.status == 200, health
    assert health.json["status"] == "ok"
    assert health.json["last_success"]["run_id"] == run_id
    assert health.json["running"] is None


def test_the_selection_reaches_the_worker_as_one_argument(daemons):
    d = daemons(FINISHES)
    selection = "silver/prices+, group:gold"
    r = d.post(body={"select": selection})
    assert r.status == 202, r
    record = d.wait_run(r.json["run_id"])
    assert record["selection"] == selection
    log = d.get(f"/runs/{record['run_id']}/log").json["log"]
    assert f"selecting '{selection}'" in log


@pytest.mark.parametrize(
    "method, path, body, headers, status, code",
    [
        ("POST", "/trigger", b"{", {"Content-Type": "application/json"}, 400, "invalid_json"),
        ("POST", "/trigger", b'{"selct": "*"}', {"Content-Type": "application/json"}, 400,
         "invalid_body"),
        ("POST", "/trigger", b'{"select": 5}', {"Content-Type": "application/json"}, 400,
         "invalid_body"),
        ("POST", "/trigger", b'["*"]', {"Content-Type": "application/json"}, 400, "invalid_body"),
        ("POST", "/trigger", b'{"select": "x; rm -rf /"}', {"Content-Type": "application/json"},
         400, "invalid_selection"),
        ("POST", "/trigger", b'{"select": "$(id)"}', {"Content-Type": "application/json"}, 400,
         "invalid_selection"),
        ("POST", "/trigger", b'{"select": ""}', {"Content-Type": "application/json"}, 400,
         "invalid_selection"),
        ("POST", "/trigger", b'{"select": "*"}', {"Content-Type": "text/plain"}, 415,
         "unsupported_media_type"),
        ("POST", "/trigger", b'{"select": "*"}', {}, 415, "unsupported_media_type"),
        ("POST", "/trigger", b"x" * (17 * 1024), {"Content-Type": "application/json"}, 413,
         "payload_too_large"),
        ("POST", "/trigger", None, {"Idempotency-Key": "has space"}, 400,
         "invalid_idempotency_key"),
        ("GET", "/runs/20200101T000000Z-000000", None, {}, 404, "not_found"),
        ("GET", "/runs/20200101T000000Z-000000/log", None, {}, 404, "not_found"),
        ("GET", "/runs/..%2Fetc", None, {}, 400, "invalid_run_id"),
        ("GET", "/runs/%FF", None, {}, 400, "bad_request"),
        ("GET", "/runs?limit=0", None, {}, 400, "invalid_query"),
        ("GET", "/runs?limit=many", None, {}, 400, "invalid_query"),
        ("GET", "/runs?lmit=5", None, {}, 400, "invalid_query"),
        ("GET", "/nope", None, {}, 404, "not_found"),
        ("GET", "/trigger", None, {}, 405, "method_not_allowed"),
        ("DELETE", "/runs", None, {}, 405, "method_not_allowed"),
        ("POST", "/health", None, {}, 405, "method_not_allowed"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_json_error(daemons, method, path, body, headers, status,
                                                   code):
    d = daemons(FINISHES)
    assert_error(d.request(method, path, body=body, headers=headers), status, code)
    # Nothing was started, and the daemon is fine.
    assert invocations(d.state) == []
    assert d.proc.poll() is None
    assert d.post().status == 202


def test_bad_log_tail_and_a_record_that_cannot_be_read(daemons):
    d = daemons(FINISHES)
    run_id = d.post().json["run_id"]
    d.wait_run(run_id)
    assert_error(d.get(f"/runs/{run_id}/log?tail=0"), 400, "invalid_query")
    assert_error(d.get(f"/runs/{run_id}/log?tail=10001"), 400, "invalid_query")
    broken = d.state / "runs" / "20200101T000000Z-0000ff"
    broken.mkdir()
    (broken / "run.json").write_text("{truncated")
    assert_error(d.get(f"/runs/{broken.name}"), 500, "internal_error")
    # The listing skips what it cannot read instead of failing.
    assert [r["run_id"] for r in d.get("/runs").json["runs"]] == [run_id]


def test_bearer_token_from_env_or_file(daemons, tmp_path):
    d = daemons(FINISHES, env=base_env(QUANTLENS_TRIGGER_TOKEN="s3cret"), token="s3cret")
    for method, path in [("POST", "/trigger"), ("GET", "/runs"),
                         ("GET", "/runs/20200101T000000Z-000000"),
                         ("GET", "/runs/20200101T000000Z-000000/log")]:
        r = d.request(method, path, auth=False)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        r = d.request(method, path, headers={"Authorization": "Bearer s3cret-not"})
        assert_error(r, 401, "unauthorized")
    assert invocations(d.state) == []
    # /health is for uptime checks: no token needed.
    assert d.get("/health", auth=False).status == 503
    r = d.post(headers={"Authorization": "bearer s3cret"})
    assert r.status == 202, r
    d.wait_run(r.json["run_id"])
    d.terminate()

    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    d = daemons(FINISHES, "--token-file", token_file, token="from-a-file")
    assert_error(d.get("/runs", auth=False), 401, "unauthorized")
    assert d.get("/runs").status == 200


# --- single flight ------------------------------------------------------------------------------

async def _burst(port, n):
    """n connections opened first, then n POSTs written back to back; the raw responses."""
    conns = await asyncio.gather(*[asyncio.open_connection("127.0.0.1", port) for _ in range(n)])
    request = (b"POST /trigger HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
               b"Connection: close\r\n\r\n")
    for _, writer in conns:
        writer.write(request)
    await asyncio.gather(*[writer.drain() for _, writer in conns])
    responses = await asyncio.wait_for(
        asyncio.gather(*[reader.read() for reader, _ in conns]), 60)
    for _, writer in conns:
        writer.close()
    return responses


def test_500_concurrent_posts_start_exactly_one_run(daemons):
    d = daemons("sleep 3\nfinish succeeded")
    responses = asyncio.run(_burst(d.port, 500))
    statuses, bodies = [], []
    for raw in responses:
        head, _, body = raw.partition(b"\r\n\r\n")
        statuses.append(int(head.split(b" ", 2)[1]))
        bodies.append(json.loads(body))
    assert statuses.count(202) == 1, sorted(set(statuses))
    assert statuses.count(409) == 499, sorted(set(statuses))
    run_id = bodies[statuses.index(202)]["run_id"]
    assert {b["status"] for b in bodies if b["status"] != "started"} == {"already_running"}
    assert {b["run_id"] for b in bodies} == {run_id}
    assert [p.name for p in (d.state / "runs").iterdir()] == [run_id]
    assert d.wait_run(run_id)["status"] == "succeeded"
    assert invocations(d.state) == [run_id]


def test_the_run_lock_is_shared_with_the_timer_and_the_cli(daemons):
    d = daemons("sleep 1\nfinish succeeded")
    # Another starter (the timer's worker, the CLI) holds the lock.
    with os.fdopen(os.open(d.state / "run.lock", os.O_RDWR | os.O_CREAT), "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write("20261129T060000Z-abcdef\n")
        held.flush()
        r = d.post()
        assert r.status == 409, r
        assert r.json == {
            "status": "already_running",
            "run_id": "20261129T060000Z-abcdef",
            "error": "run 20261129T060000Z-abcdef is in progress; try again when it has finished",
        }
        assert d.get("/health").json["running"] == {"run_id": "20261129T060000Z-abcdef"}
    assert invocations(d.state) == []

    r = d.post()
    assert r.status == 202, r
    run_id = r.json["run_id"]
    # While our worker runs it holds the lock, not the daemon: nobody else can take it.
    with open(d.state / "run.lock") as probe:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert probe.read().strip() == run_id
    assert not any(p.endswith("/run.lock") for p in d.open_fds().values())
    d.wait_run(run_id)
    d.wait_idle()
    with open(d.state / "run.lock") as probe:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


def test_idempotency_key_returns_the_same_run(daemons):
    d = daemons("sleep 1\nfinish succeeded")
    key = {"Idempotency-Key": "0f8fad5b-d9cb-469f-a165-70867728950e"}
    first = d.post(headers=key)
    assert first.status == 202, first
    run_id = first.json["run_id"]
    again = d.post(headers=key)
    assert again.status == 202 and again.json["run_id"] == run_id, again
    assert again.headers["idempotent-replayed"] == "true"
    assert d.post().status == 409  # without the key: a second start, refused
    d.wait_run(run_id)
    d.wait_idle()
    # Still the same run after it finished: a late retry does not start another.
    assert d.post(headers=key).json["run_id"] == run_id
    assert_error(d.post(body={"select": "gold/returns"}, headers=key), 422,
                 "idempotency_key_reused")
    assert invocations(d.state) == [run_id]
    # A new key starts a new run.
    r = d.post(headers={"Idempotency-Key": "another"})
    assert r.status == 202 and r.json["run_id"] != run_id


# --- supervision --------------------------------------------------------------------------------

def test_timeout_sends_sigterm_to_the_group(daemons):
    d = daemons(SLEEPS, "--run-timeout", "0.5", "--kill-grace", "5")
    run_id = d.post().json["run_id"]
    pid = worker_pid(d.state, run_id)
    record = d.wait_run(run_id)
    assert record["status"] == "timed_out"
    assert record["exit_code"] == 128 + signal.SIGTERM
    assert "timed out after 0.5 s (SIGTERM to its process group)" in record["error"]
    assert record["finished_at"]
    wait_for(lambda: group_gone(pid), what="the worker's group to be gone")
    d.wait_idle()
    assert d.children() == []


def test_a_worker_ignoring_sigterm_is_killed(daemons):
    d = daemons("trap '' TERM\nsleep 30 & wait $!\nsleep 30", "--run-timeout", "0.5",
                "--kill-grace", "0.5")
    run_id = d.post().json["run_id"]
    pid = worker_pid(d.state, run_id)
    record = d.wait_run(run_id)
    assert record["status"] == "timed_out"
    assert record["exit_code"] == 128 + signal.SIGKILL
    assert "then SIGKILL after 0.5 s" in record["error"]
    assert "killed by signal 9 (SIGKILL)" in record["error"]
    wait_for(lambda: group_gone(pid), what="the worker's group to be gone")
    d.wait_idle()
    assert d.children() == []
    # The lock died with the worker: the next run starts.
    assert d.post().status == 202


@pytest.mark.parametrize(
    "body, status, exit_code, error",
    [
        ("echo 'error: something broke' >&2\nexit 3", "crashed", 3,
         "the worker exited with code 3 without finishing the run; "
         "last log line: error: something broke"),
        ("kill -SEGV $$", "crashed", 128 + signal.SIGSEGV,
         "the worker was killed by signal 11 (SIGSEGV) without finishing the run"),
        ("exit 0", "crashed", 0, "the worker exited with code 0 (success) without finishing"),
        # A worker that recorded its own ending is believed.
        ("finish failed 1\nexit 1", "failed", 1, None),
    ],
)
def test_a_worker_that_dies_without_finishing_is_recorded(daemons, body, status, exit_code,
                                                          error):
    d = daemons(body)
    run_id = d.post().json["run_id"]
    record = d.wait_run(run_id)
    assert (record["status"], record["exit_code"]) == (status, exit_code), record
    if error:
        assert record["error"].startswith(error), record["error"]
    d.wait_idle()
    assert d.children() == []
    events = (d.state / "runs" / run_id / "events.ndjson").read_text().splitlines()
    assert json.loads(events[-1])["event"] == "worker_exited"


def test_leftovers_in_the_group_are_stopped_and_no_zombies_remain(daemons):
    # The grandchild inherits the lock descriptor: as long as it lives, no new run could start.
    d = daemons('sleep 30 &\necho $! > "$RUN_DIR/grandchild.pid"\nfinish succeeded\nexit 0',
                "--kill-grace", "5")
    run_id = d.post().json["run_id"]
    record = d.wait_run(run_id)
    assert record["status"] == "succeeded"
    grandchild = int(wait_for(
        lambda: (d.state / "runs" / run_id / "grandchild.pid").read_text().strip()))
    wait_for(lambda: process_gone(grandchild), what="the grandchild to be stopped")
    d.wait_idle()
    assert d.children() == []
    log = d.get(f"/runs/{run_id}/log").json["log"]
    assert "left processes in its process group" in log
    # The lock went with the grandchild.
    r = d.post()
    assert r.status == 202, r
    d.wait_run(r.json["run_id"])
    d.wait_idle()
    assert d.children() == []


def test_the_worker_gets_a_clean_environment_its_own_group_and_the_lock(daemons, tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    env = base_env(
        NOTIFY_SOCKET=tmp_path / "notify.sock", LISTEN_FDS="1", LISTEN_PID="1",
        WATCHDOG_USEC="60000000", QUANTLENS_TRIGGER_TOKEN="tok", SOME_SECRET="x",
        DATA_ROOT=tmp_path / "data", LANDING_DIR=tmp_path / "landing", AWS_REGION="eu-west-1",
        JOURNAL_STREAM="8:1234",
    )
    body = r'''
env > "$RUN_DIR/env.txt"
readlink "/proc/self/fd/$QUANTLENS_LOCK_FD" > "$RUN_DIR/lockfd.txt"
ls /proc/self/fd > "$RUN_DIR/fds.txt"
ps -o pgid= -p $$ | tr -d ' ' > "$RUN_DIR/pgid.txt"
echo $$ > "$RUN_DIR/pid.txt"
# Taking the lock again on the inherited descriptor succeeds: same open file.
flock -n -x "$QUANTLENS_LOCK_FD" && echo held > "$RUN_DIR/relock.txt"
finish succeeded
'''
    d = daemons(body, env=env, token="tok")
    run_id = d.post().json["run_id"]
    assert d.wait_run(run_id)["status"] == "succeeded"
    run_dir = d.state / "runs" / run_id
    worker_env = dict(line.split("=", 1) for line in (run_dir / "env.txt").read_text().splitlines()
                      if "=" in line)
    for leaked in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC", "JOURNAL_STREAM",
                   "QUANTLENS_TRIGGER_TOKEN", "SOME_SECRET"):
        assert leaked not in worker_env, leaked
    assert worker_env["DATA_ROOT"] == str(tmp_path / "data")
    assert worker_env["LANDING_DIR"] == str(tmp_path / "landing")
    assert worker_env["AWS_REGION"] == "eu-west-1"
    assert worker_env["STATE_DIR"] == str(d.state.resolve())
    assert worker_env["QUANTLENS_TRIGGER"] == "http"
    assert worker_env["QUANTLENS_LOG_CAPTURED"] == "1"
    assert (run_dir / "lockfd.txt").read_text().strip() == str((d.state / "run.lock").resolve())
    assert (run_dir / "relock.txt").read_text().strip() == "held"
    # Its own process group, led by itself.
    assert (run_dir / "pgid.txt").read_text().strip() == (run_dir / "pid.txt").read_text().strip()
    # Nothing else was inherited: stdio, the lock, and the fd `ls` opened for /proc/self/fd.
    fds = {int(fd) for fd in (run_dir / "fds.txt").read_text().split()}
    assert fds - {0, 1, 2, int(worker_env["QUANTLENS_LOCK_FD"])} <= {3}, fds
    notify.close()


def test_a_worker_that_cannot_be_started_is_a_500_and_frees_the_lock(daemons, tmp_path):
    d = daemons(FINISHES)
    (tmp_path / "worker.sh").unlink()
    r = d.post()
    assert_error(r, 500, "internal_error")
    assert "cannot start the worker" in r.json["error"]
    runs = d.get("/runs").json["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "crashed"
    assert "cannot start the worker" in runs[0]["error"]
    # Not a 409: the lock was released.
    assert_error(d.post(), 500, "internal_error")


# --- /health ------------------------------------------------------------------------------------

def test_health_follows_the_timers_schedule(daemons):
    """With --schedule, a success is fresh until the next scheduled run is due (plus the grace),
    however long that is: the days without a run are not outages."""
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    scheduled = now - datetime.timedelta(hours=3)   # a daily run 3 h ago; 2 h of grace
    calendar = f"*-*-* {scheduled:%H:%M}:00 UTC"
    due = scheduled.replace(second=0)
    stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")

    # The last success finished after the run that was due: fresh, even 3 h later.
    d = daemons(FINISHES)
    write_record(d.state, "20200101T000000Z-000002", "succeeded", stamp(due + datetime.timedelta(minutes=1)))
    assert d.terminate() == 0
    d = daemons(FINISHES, "--schedule", calendar, "--schedule-grace", "7200")
    r = d.get("/health")
    assert r.status == 200, r
    assert r.json["schedule"] == calendar and r.json["max_age_seconds"] is None
    assert r.json["due"] == stamp(due), r.json
    assert d.terminate() == 0

    # Only a success from before the due run: stale, and the error names the run that is missing.
    (d.state / "runs" / "20200101T000000Z-000002").rename(d.state / "old")
    write_record(d.state, "20200101T000000Z-000003", "succeeded", stamp(due - datetime.timedelta(minutes=1)))
    d = daemons(FINISHES, "--schedule", calendar)
    r = d.get("/health")
    assert r.status == 503 and r.json["status"] == "stale", r
    assert f"the run due at {due:%Y-%m-%d %H:%M:%S} UTC" in r.json["error"]
    # /status says the same with 200, for the page.
    s = d.get("/status")
    assert s.status == 200 and s.json["status"] == "stale"
    assert d.terminate() == 0

    bad = daemons(FINISHES, "--schedule", "weekdays", wait_ready=False)
    assert bad.wait_exit(30) == 2
    assert "is not a schedule QuantLens understands" in bad.log()


def test_health_follows_the_last_success(daemons):
    d = daemons(FINISHES, "--max-age", "3600")
    r = d.get("/health")
    assert r.status == 503, r
    assert r.json["status"] == "no_success" and r.json["last_success"] is None
    assert r.json["error"] == "no run has succeeded yet"
    assert d.terminate() == 0

    # A success from the timer long ago: stale. (A new daemon, so no cached answer.)
    write_record(d.state, "20200101T000000Z-000001", "succeeded", "2020-01-01T00:00:00Z")
    d = daemons(FINISHES, "--max-age", "3600")
    r = d.get("/health")
    assert r.status == 503, r
    assert r.json["status"] == "stale"
    assert r.json["last_success"]["run_id"] == "20200101T000000Z-000001"
    assert r.json["max_age_seconds"] == 3600
    assert "more than the 3600 s allowed" in r.json["error"]

    # Our own runs show at once, in progress and when they succeed.
    run_id = d.post().json["run_id"]
    assert d.get("/health").json["running"] == {"run_id": run_id}
    d.wait_run(run_id)
    d.wait_idle()
    r = d.get("/health")
    assert r.status == 200, r
    assert r.json["status"] == "ok" and r.json["last_success"]["run_id"] == run_id
    assert 0 <= r.json["last_success"]["age_seconds"] < 3600
    assert r.json["alerts"] == []
    assert d.terminate() == 0

    # A unit's OnFailure= hook left a marker: unhealthy until a good run of that unit clears it.
    alerts = d.state / "alerts"
    alerts.mkdir()
    (alerts / "quantlens-backup.service.json").write_text(
        '{"unit": "quantlens-backup.service", "result": "exit-code", "failed_at": "2026-11-29T03:00:00Z"}')
    d = daemons(FINISHES, "--max-age", "3600")
    r = d.get("/health")
    assert r.status == 503, r
    assert r.json["status"] == "alert"
    assert r.json["alerts"][0]["unit"] == "quantlens-backup.service"
    assert r.json["last_success"]["run_id"] == run_id
    assert d.terminate() == 0
    (alerts / "quantlens-backup.service.json").unlink()
    d = daemons(FINISHES, "--max-age", "3600")
    assert d.get("/health").status == 200


# --- lifecycle: systemd, signals, idle exit ------------------------------------------------------

def test_socket_activation_through_systemd_socket_activate(daemons, tmp_path):
    assert shutil.which("systemd-socket-activate"), "needs systemd-socket-activate (systemd)"
    worker = standin(tmp_path, 'env > "$RUN_DIR/env.txt"\nfinish succeeded')
    port = free_port()
    d = Daemon(tmp_path, worker, "--idle-exit", "1", listen="127.0.0.1:1", wait_ready=False,
               wrap=["systemd-socket-activate", "-l", f"127.0.0.1:{port}"])
    try:
        wait_for(lambda: f"Listening on 127.0.0.1:{port}" in d.log(), what="the socket")
        d.port = port
        # The first connection makes systemd-socket-activate exec the daemon with fd 3.
        assert d.get("/health").status == 503
        assert "(socket from systemd)" in d.log()
        assert Path(f"/proc/{d.pid}/exe").resolve() == trigger_binary().resolve()
        r = d.post()
        assert r.status == 202, r
        assert d.wait_run(r.json["run_id"])["status"] == "succeeded"
        env = (d.state / "runs" / r.json["run_id"] / "env.txt").read_text()
        assert "LISTEN_FDS" not in env and "LISTEN_PID" not in env
        # --listen 127.0.0.1:1 was never bound: the inherited socket was used.
        assert d.wait_exit(30) == 0
        assert "shutting down (idle)" in d.log()
    finally:
        d.kill()


def test_idle_exit_waits_for_the_run(daemons):
    d = daemons("sleep 2\nfinish succeeded", "--idle-exit", "0.5")
    run_id = d.post().json["run_id"]
    # No requests from here on: only the run (2 s, four idle limits) keeps the daemon up.
    time.sleep(1.5)
    assert d.proc.poll() is None, f"exited while a run was in progress:\n{d.log()}"
    assert d.wait_exit(30) == 0
    assert "shutting down (idle)" in d.log()
    record = json.loads((d.state / "runs" / run_id / "run.json").read_text())
    assert record["status"] == "succeeded"


def test_idle_exit_without_any_request(daemons):
    d = daemons(FINISHES, "--idle-exit", "0.3")
    assert d.wait_exit(30) == 0


def test_sd_notify_ready_watchdog_and_stopping(daemons, tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    d = daemons(FINISHES, env=base_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="200000"))
    messages = [sock.recv(4096).decode()]
    assert messages[0] == "READY=1\n"
    while messages.count("WATCHDOG=1\n") < 2:
        messages.append(sock.recv(4096).decode())
    assert d.terminate() == 0
    while messages[-1] != "STOPPING=1\n":
        messages.append(sock.recv(4096).decode())
    sock.close()


def test_sigterm_stops_the_run_and_exits_cleanly(daemons):
    d = daemons(SLEEPS, "--kill-grace", "5")
    run_id = d.post().json["run_id"]
    pid = worker_pid(d.state, run_id)
    assert d.terminate() == 0
    record = json.loads((d.state / "runs" / run_id / "run.json").read_text())
    assert record["status"] == "crashed"
    assert record["error"].startswith("stopped because the trigger daemon shut down")
    assert record["exit_code"] == 128 + signal.SIGTERM
    assert group_gone(pid)


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--worker", "/nonexistent/quantlens"], {}, "worker /nonexistent/quantlens"),
        (["--token-file", "/nonexistent/token"], {}, "cannot read the token file"),
        (["--token-file", "/dev/null"], {}, "is empty"),
        (["--token-file", "/etc/hostname"], {"QUANTLENS_TRIGGER_TOKEN": "x"}, "use one"),
        (["--run-timeout", "0"], {}, "must be more than 0 seconds"),
        (["--listen", "0.0.0.0"], {}, "is not an address like 127.0.0.1:8787"),
        (["--idle-exit", "soon"], {}, "--idle-exit: `soon` is not a number of seconds"),
        (["--verbose"], {}, "unknown option `--verbose`"),
    ],
)
def test_configuration_errors_exit_2_before_serving(tmp_path, args, env, message):
    defaults = {"--worker": str(standin(tmp_path, FINISHES)),
                "--state-dir": str(tmp_path / "state"), "--listen": "127.0.0.1:0"}
    argv = [part for flag, value in defaults.items() if flag not in args for part in (flag, value)]
    result = subprocess.run(
        [str(trigger_binary()), *argv, *args],
        env=base_env(**env), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr
    assert "serving on" not in result.stderr


def test_a_taken_port_exits_1(daemons, tmp_path):
    d = daemons(FINISHES)
    result = subprocess.run(
        [str(trigger_binary()), "--worker", str(tmp_path / "worker.sh"), "--state-dir",
         str(tmp_path / "state"), "--listen", f"127.0.0.1:{d.port}"],
        env=base_env(), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1, result
    assert f"cannot listen on 127.0.0.1:{d.port}" in result.stderr


def test_help_explains_flags_and_environment():
    text = subprocess.run([str(trigger_binary()), "--help"], capture_output=True, text=True,
                          check=True).stdout
    for needle in ["--listen", "--worker", "--state-dir", "--run-timeout", "--kill-grace",
                   "--max-age", "--idle-exit", "--token-file", "QUANTLENS_TRIGGER_TOKEN",
                   "LISTEN_FDS", "NOTIFY_SOCKET", "WATCHDOG_USEC", "DATA_ROOT", "127.0.0.1:8787"]:
        assert needle in text, needle


# --- with the real worker -----------------------------------------------------------------------

@pytest.fixture
def real_worker():
    """The real `quantlens` binary (tests using it are selected by `-k real_worker`)."""
    binary = worker_binary()
    assert binary.exists(), (
        f"{binary} not built; run `cargo build -p quantlens` or set QUANTLENS_BIN")
    return binary


def test_real_worker_end_to_end(daemons, tmp_path, real_worker):
    data = tmp_path / "data"
    subprocess.run([str(real_worker), "demo", "--symbols", "5", "--days", "30"],
                   env=base_env(DATA_ROOT=data, STATE_DIR=tmp_path / "state"), check=True,
                   capture_output=True, timeout=300)
    repo_assets = Path(__file__).resolve().parent.parent / "assets"
    d = daemons(worker=real_worker, token="catalog-token",
                env=base_env(DATA_ROOT=data, ASSETS_DIR=repo_assets,
                             QUANTLENS_TRIGGER_TOKEN="catalog-token"))
    missing = d.get("/assets")
    assert missing.status == 404 and "no catalog yet" in missing.json["error"], missing
    r = d.post(body={"select": "*"})
    assert r.status == 202, r
    run_id = r.json["run_id"]
    record = d.wait_run(run_id, timeout=600)
    d.wait_idle()
    log = d.get(f"/runs/{run_id}/log?tail=200").json["log"]
    assert record["status"] == "succeeded", (record, log)
    assert record["trigger"] == "http" and record["exit_code"] == 0
    assert record["pid"] != d.pid  # the worker took the record over
    assets = {a["key"]: a for a in record["assets"]}
    assert "silver/prices" in assets and all(
        a["status"] in ("succeeded", "fresh") for a in assets.values()), assets
    assert "quantlens-trigger: worker exited with code 0" in log
    health = d.get("/health")
    assert health.status == 200 and health.json["last_success"]["run_id"] == run_id

    # The catalog the worker left behind, served as GET /assets: every table, SQL assets too.
    catalog = d.get("/assets")
    assert catalog.status == 200 and catalog.json["run_id"] == run_id, catalog
    tables = {e["table"]: e for e in catalog.json["assets"]}
    assert tables["gold/high_low_52w"]["kind"] == "sql" and tables["gold/returns"]["kind"] == "rust"
    assert tables["silver/prices"]["state"] == "fresh" and tables["silver/prices"]["rows"] > 0
    assert tables["gold/high_low_52w"]["last_run"]["run_id"] == run_id
    assert {c["name"] for c in tables["silver/prices"]["last_run"]["checks"]} == {
        "unique_symbol_date", "no_null_prices"}
    assert ["silver/prices", "gold/high_low_52w"] in catalog.json["edges"]
    assert d.get("/assets", auth=False).status == 401

    # An independent reader sees the table the HTTP-triggered run wrote.
    from deltalake import DeltaTable
    assert DeltaTable(str(data / "silver" / "prices")).to_pyarrow_table().num_rows > 0

    # A selection with valid syntax naming no asset: the worker refuses it (exit 2) before
    # writing anything, and the daemon records why.
    r = d.post(body={"select": "silver/no_such_asset"})
    assert r.status == 202, r
    record = d.wait_run(r.json["run_id"], timeout=120)
    assert record["status"] == "crashed" and record["exit_code"] == 2, record
    assert "usage or configuration error" in record["error"]
    d.wait_idle()
    assert d.children() == []


def test_real_worker_cli_is_refused_while_an_http_run_holds_the_lock(daemons, tmp_path,
                                                                     real_worker):
    d = daemons("sleep 30")
    run_id = d.post().json["run_id"]
    result = subprocess.run(
        [str(real_worker), "materialize"],
        env=base_env(DATA_ROOT=tmp_path / "data", STATE_DIR=d.state),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 75, result
    assert f"already running {run_id}" in result.stderr
