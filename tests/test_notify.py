"""Failure notifications against a real HTTP receiver on loopback: the generic JSON webhook, the
Slack-compatible one and the healthchecks.io-style heartbeat, each told once per event, with
the payloads checked; receivers that hang, answer 500 or refuse connections never change a
run's outcome and are tried a bounded number of times. Then the trigger daemon, which has the
worker binary send for runs it saw crash or time out.

No test asserts a timing: waits are bounded polls, and the receiver counts attempts."""

import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REPO
from test_incremental import deliver, generate
from trigger_support import Daemon, base_env, wait_for, worker_binary

DOOMED = """-- quantlens:
--   materialize: table
--   checks:
--     - row_count: {min: 1000000000}
SELECT symbol, count(*) AS days FROM silver_prices GROUP BY symbol
"""


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request. Paths starting with /hang wait
    (longer than the client's timeout) before answering, /error answers 500, others 200."""

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body,
                                           "type": self.headers.get("Content-Type")})
                if self.path.startswith("/hang"):
                    outer.release.wait(20)
                status = 500 if self.path.startswith("/error") else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def to(self, path):
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def small_lake(lake):
    deliveries = generate(lake, symbols=3, days=30, seed=5, start="2024-01-01")
    for _, files in deliveries:
        deliver(lake, files)


def every_channel(receiver):
    return dict(QUANTLENS_NOTIFY_WEBHOOK=f"{receiver.url}/hook",
                QUANTLENS_NOTIFY_SLACK=f"{receiver.url}/slack",
                QUANTLENS_HEARTBEAT_URL=f"{receiver.url}/hc/abc")


def add_doomed_asset(lake):
    """A SQL asset whose blocking check always fails."""
    (lake.assets / "gold").mkdir(parents=True, exist_ok=True)
    (lake.assets / "gold" / "doomed.sql").write_text(DOOMED)


def test_a_success_pings_the_heartbeat_and_nothing_else(lake, receiver):
    small_lake(lake)
    result = lake.run("materialize", "--run-id", "ok-1", **every_channel(receiver))
    pings = receiver.to("/hc/abc")
    assert len(pings) == 1 and b"run ok-1 succeeded" in pings[0]["body"], receiver.requests
    assert receiver.to("/hook") == [] and receiver.to("/slack") == []
    assert "notified heartbeat: HTTP 200" in result.stderr


def test_a_failed_run_is_told_once_to_every_channel(lake, receiver):
    small_lake(lake)
    add_doomed_asset(lake)
    lake.run("materialize", "--run-id", "bad-1", expect=1, **every_channel(receiver))

    [hook] = receiver.to("/hook")
    assert hook["type"] == "application/json"
    payload = json.loads(hook["body"])
    assert payload["source"] == "quantlens" and payload["event"] == "run_failed"
    assert payload["run_id"] == "bad-1"
    assert payload["assets"] == [{"asset": "gold/doomed", "error": payload["assets"][0]["error"]}]
    assert "blocking check `row_count` failed" in payload["assets"][0]["error"]
    assert "gold/doomed" in payload["error"]
    assert payload["host"] and payload["at"].endswith("Z")
    assert "\n" not in payload["summary"] and "http" not in payload["summary"]

    [slack] = receiver.to("/slack")
    text = json.loads(slack["body"])["text"]
    assert text == payload["summary"]
    assert "run failed (run bad-1)" in text and "gold/doomed" in text

    [fail] = receiver.to("/hc/abc/fail")
    assert fail["body"].decode() == payload["summary"]
    assert receiver.to("/hc/abc") == []


def test_dead_receivers_never_change_the_outcome(lake, receiver):
    small_lake(lake)
    add_doomed_asset(lake)
    channels = dict(QUANTLENS_NOTIFY_WEBHOOK=f"{receiver.url}/hang",
                    QUANTLENS_NOTIFY_SLACK=f"{receiver.url}/error",
                    QUANTLENS_HEARTBEAT_URL=f"http://127.0.0.1:{closed_port()}/hc")
    started = time.monotonic()
    result = lake.run("materialize", "--run-id", "bad-2", expect=1, timeout=120, **channels)
    print(f"failed run with three dead receivers: {time.monotonic() - started:.1f} s")
    # Each tried twice (the client's 2 s timeout, a 500, a refused connection), then given up.
    assert len(receiver.to("/hang")) == 2
    assert len(receiver.to("/error")) == 2
    assert "notification not delivered: webhook: timed out after 2 attempts" in result.stderr
    assert "notification not delivered: slack: HTTP 500 after 2 attempts" in result.stderr
    assert "notification not delivered: heartbeat: could not connect after 2 attempts" in result.stderr
    assert lake.run_record("bad-2")["status"] == "failed"

    # A success with a heartbeat that answers 500: still a success.
    (lake.assets / "gold" / "doomed.sql").unlink()
    ok = lake.run("materialize", "--run-id", "ok-2",
                  QUANTLENS_HEARTBEAT_URL=f"{receiver.url}/error/hc")
    assert "heartbeat: HTTP 500 after 2 attempts" in ok.stderr


def test_configuration_comes_from_a_credential_file_and_is_checked(lake, receiver, tmp_path):
    secret = tmp_path / "notify"
    secret.write_text(f"# LoadCredential=notify:...\nQUANTLENS_NOTIFY_WEBHOOK={receiver.url}/hook\n")
    sent = lake.run("notify", "--event", "unit_failed", "--error", "quantlens-backup.service failed",
                    QUANTLENS_NOTIFY_CREDENTIALS=str(secret))
    [hook] = receiver.to("/hook")
    assert json.loads(hook["body"])["event"] == "unit_failed"
    assert "notified webhook: HTTP 200" in sent.stderr

    bad = lake.run("notify", "--event", "unit_failed", "--error", "x", expect=2,
                   QUANTLENS_NOTIFY_SLACK="not a url with-a-secret-inside")
    assert "QUANTLENS_NOTIFY_SLACK" in bad.stderr and "secret-inside" not in bad.stderr
    unknown = lake.run("notify", "--event", "party", "--error", "x", expect=2)
    assert "run_crashed" in unknown.stderr
    # A run is not failed by a wrong notification setting: it warns.
    small_lake(lake)
    run = lake.run("materialize", QUANTLENS_HEARTBEAT_URL="ftp://nope")
    assert "warning: notifications: QUANTLENS_HEARTBEAT_URL" in run.stderr


@pytest.mark.parametrize("ending", ["crash", "timeout"])
def test_the_trigger_has_a_crashed_or_timed_out_run_told(receiver, tmp_path, ending):
    # The worker: the real binary for `notify`, a run that dies (SIGKILL) or hangs otherwise.
    worker = tmp_path / "worker.sh"
    run_body = "kill -9 $$" if ending == "crash" else "exec sleep 60"
    worker.write_text(f'#!/bin/sh\nif [ "$1" = notify ]; then exec {worker_binary()} "$@"; fi\n'
                      f"{run_body}\n")
    worker.chmod(0o755)
    args = ("--run-timeout", "1", "--kill-grace", "1") if ending == "timeout" else ()
    daemon = Daemon(tmp_path, worker, *args,
                    env=base_env(QUANTLENS_NOTIFY_WEBHOOK=f"{receiver.url}/hook"))
    try:
        run_id = daemon.post(body={"select": "*"}).json["run_id"]
        record = daemon.wait_run(run_id, timeout=60)
        expected = {"crash": ("crashed", "run_crashed"), "timeout": ("timed_out", "run_timed_out")}
        assert record["status"] == expected[ending][0], record
        wait_for(lambda: receiver.to("/hook"), timeout=30, what="the notification")
        time.sleep(0.5)  # a duplicate, if any, would arrive now
        [hook] = receiver.to("/hook")
        payload = json.loads(hook["body"])
        assert payload["event"] == expected[ending][1] and payload["run_id"] == run_id
        assert payload["error"] == record["error"]
        log = daemon.get(f"/runs/{run_id}/log").json["log"]
        assert "notified webhook: HTTP 200" in log
    finally:
        daemon.terminate(timeout=60)


def test_a_failed_backup_is_told_once(lake, receiver, tmp_path):
    small_lake(lake)
    lake.run("materialize")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the backup target's parent should be")
    # A target that cannot be created is a configuration error (exit 2), and still told.
    result = lake.run("backup", "--to", str(blocker / "backups"), expect=2,
                      QUANTLENS_NOTIFY_WEBHOOK=f"{receiver.url}/hook",
                      QUANTLENS_HEARTBEAT_URL=f"{receiver.url}/hc/b")
    [hook] = receiver.to("/hook")
    payload = json.loads(hook["body"])
    assert payload["event"] == "backup_failed" and payload["run_id"] is None
    assert payload["error"] and payload["error"] in result.stderr
    assert len(receiver.to("/hc/b/fail")) == 1


def test_stale_data_is_told_once_per_episode(lake, receiver):
    """`quantlens health --notify` (the hourly quantlens-health.timer): stale data told once per
    episode, the episode being the last success; a newer success ends it; an undelivered
    notification is not remembered, so the next check tries again."""
    small_lake(lake)
    lake.run("materialize", "--run-id", "fresh-1")
    hook = dict(QUANTLENS_NOTIFY_WEBHOOK=f"{receiver.url}/hook")
    marker = lake.state / "stale-notified.json"

    fresh = lake.run("health", "--notify", **hook)
    assert fresh.stdout.startswith("ok: last success: run fresh-1 finished"), fresh.stdout
    assert receiver.requests == []

    time.sleep(1.5)  # older than a one-second bound from here on
    dead = dict(QUANTLENS_NOTIFY_WEBHOOK=f"http://127.0.0.1:{closed_port()}/hook")
    lake.run("health", "--notify", "--max-age", "1", expect=1, **dead)
    assert not marker.exists(), "an undelivered notification must be tried again"
    for _ in range(3):
        stale = lake.run("health", "--notify", "--max-age", "1", expect=1, **hook)
    assert stale.stdout.startswith("stale: the last successful run finished"), stale.stdout
    assert "already told for this episode" in stale.stderr
    [told] = receiver.to("/hook")
    payload = json.loads(told["body"])
    assert payload["event"] == "data_stale" and payload["run_id"] == "fresh-1"
    assert "more than the 1 s allowed" in payload["error"]
    verdict = json.loads(lake.run("health", "--json", "--max-age", "1", expect=1).stdout)
    assert verdict["status"] == "stale" and verdict["last_success"]["run_id"] == "fresh-1"

    lake.run("materialize", "--run-id", "fresh-2")
    lake.run("health", "--notify", **hook)
    assert not marker.exists(), "fresh data ends the episode"
    time.sleep(1.5)
    lake.run("health", "--notify", "--max-age", "1", expect=1, **hook)
    told = receiver.to("/hook")
    assert len(told) == 2 and json.loads(told[1]["body"])["run_id"] == "fresh-2"
