"""Starters racing for the run lock: the CLI (`quantlens materialize`), the timer's command line
(`--stale --trigger timer`) and HTTP (`POST /trigger` to the daemon, which takes the lock itself
and hands it to its worker), many of each released at the same instant, round after round.

After every round: runs never overlapped (each record's start-to-finish interval is disjoint from
the others), every winner has exactly one run record and every record a winner (none lost,
none duplicated), every loser was told who holds the lock (exit 75 naming the run, or 409 with
its run id), and each record says which kind of starter won it. A bounded, seeded slice runs in
CI (ROUNDS rounds of STARTERS per kind); QUANTLENS_RACE_ROUNDS=N runs more by hand."""

import json
import os
import random
import re
import subprocess
import threading
import time

from trigger_support import Daemon, base_env, worker_binary

ROUNDS = int(os.environ.get("QUANTLENS_RACE_ROUNDS", "6"))
STARTERS = 4  # of each kind, per round


def test_cli_timer_and_http_starters_race_for_the_lock(lake, tmp_path):
    lake.demo(symbols=30, days=60)
    env = lake.env()
    daemon = Daemon(tmp_path, worker_binary(),
                    env=base_env(DATA_ROOT=env["DATA_ROOT"], ASSETS_DIR=env["ASSETS_DIR"]),
                    listen="127.0.0.1:0")
    # The daemon and the command lines share one state directory (and so one lock), as on the VM.
    cli_env = dict(env, STATE_DIR=str(daemon.state))
    rng = random.Random(7)
    won = []  # (kind, run_id)
    try:
        for round_no in range(ROUNDS):
            lake.demo(symbols=30, days=61 + round_no)  # one more day: every round has work
            barrier = threading.Barrier(3 * STARTERS)
            outcomes = []
            lock = threading.Lock()

            def command(kind, argv, delay):
                barrier.wait()
                time.sleep(delay)
                result = subprocess.run([str(lake.binary), *argv], env=cli_env,
                                        capture_output=True, text=True, timeout=300)
                with lock:
                    outcomes.append((kind, result.returncode, result.stdout + result.stderr))

            def http(delay):
                barrier.wait()
                time.sleep(delay)
                response = daemon.post(body={"select": "*"})
                with lock:
                    outcomes.append(("http", response.status, json.dumps(response.json)))

            # Seeded jitter, the favoured kind first (it changes every round): a process starts
            # slower than a request, so with equal chances HTTP would win every round.
            favoured = ("cli", "timer", "http")[round_no % 3]

            def jitter(kind):
                return rng.uniform(0, 0.05) if kind == favoured else rng.uniform(1.0, 1.5)
            starters = ([threading.Thread(target=command, args=("cli", ["materialize"], jitter("cli")))
                         for _ in range(STARTERS)]
                        + [threading.Thread(target=command, args=(
                            "timer", ["materialize", "--stale", "--trigger", "timer"], jitter("timer")))
                           for _ in range(STARTERS)]
                        + [threading.Thread(target=http, args=(jitter("http"),))
                           for _ in range(STARTERS)])
            for t in starters:
                t.start()
            for t in starters:
                t.join(timeout=600)
            daemon.wait_idle(timeout=300)

            for kind, code, text in outcomes:
                if kind == "http":
                    body = json.loads(text)
                    if code == 202:
                        won.append(("http", body["run_id"]))
                    else:
                        assert code == 409 and body["status"] == "already_running", text
                        assert body["run_id"], f"a 409 must name the holder: {text}"
                else:
                    if code == 0:
                        won.append((kind, re.search(r"run (\S+) (succeeded|skipped)", text).group(1)))
                    else:
                        assert code == 75, (kind, code, text)
                        assert re.search(r"already running \S+", text), text
            print(f"round {round_no} ({favoured} first): {sum(1 for k, c, _ in outcomes if c in (0, 202))} won, "
                  f"{sum(1 for k, c, _ in outcomes if c not in (0, 202))} told who holds the lock")

        records = json.loads(subprocess.run(
            [str(lake.binary), "runs", "--json", "--limit", "1000"], env=cli_env,
            capture_output=True, text=True, check=True).stdout)
        by_id = {r["run_id"]: r for r in records}
        assert len(by_id) == len(records), "a run record is duplicated"
        assert sorted(by_id) == sorted(run_id for _, run_id in won), \
            "every winner has one record, every record a winner"
        for kind, run_id in won:
            record = by_id[run_id]
            # A timer's --stale run after another winner took the new day has nothing to do.
            assert record["status"] in ("succeeded", "skipped"), record
            assert record["trigger"] == kind, (kind, record)
        spans = sorted((r["started_at"], r["finished_at"], r["run_id"]) for r in records)
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            assert end <= start, f"runs {a} and {b} overlapped"
        if ROUNDS >= 3:
            assert {kind for kind, _ in won} == {"cli", "timer", "http"}, \
                f"every kind of starter must win some round: {won}"
        print(f"{ROUNDS} rounds: {len(won)} runs, by kind "
              f"{ {k: sum(1 for w, _ in won if w == k) for k in ('cli', 'timer', 'http')} }")
    finally:
        daemon.proc.terminate()
        daemon.proc.wait(timeout=60)
