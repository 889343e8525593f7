"""The trigger daemon's HTTP API against its contract, docs/openapi.yaml, with Schemathesis.

docs/http-api.md and the handlers in crates/trigger/src/api.rs are two descriptions of one API;
docs/openapi.yaml is a third, written so a machine can hold the daemon to it. This module loads
that document, lets Schemathesis (on Hypothesis) generate requests from it, valid and invalid
ones, for every operation, sends them to the real `quantlens-trigger` binary on a loopback
port, and checks each answer:

- no 5xx (`not_a_server_error`): a malformed request is the client's 4xx, never a crash;
- the status code, Content-Type, required headers and JSON body are ones the document allows
  for that operation (`status_code_conformance`, `content_type_conformance`,
  `response_headers_conformance`, `response_schema_conformance`);
- valid input is accepted and invalid input refused (`positive_data_acceptance`,
  `negative_data_rejection`), undocumented methods get 405 with `Allow`, and an operation that
  declares the bearer token really refuses a request without it or with a wrong one
  (`unsupported_method`, `ignored_auth`).

Two daemons run, each on its own state directory holding two finished run records (with their
log and events) so the GET endpoints have something to serve. One has a token: every operation
meets it twice, with the right `Authorization: Bearer` header and without any (then every
protected operation must answer the documented 401). The other has none, and is held to the
same document with the bearer scheme made optional, which is what "no token configured" means.
Their worker is a stand-in script that records success at once, so a generated `POST /trigger`
that starts a run is harmless (and the next one usually meets the documented 409). Only the
token daemon has a catalog, so `GET /assets` is checked both ways (200 and 404).

Generation is bounded and reproducible: a fixed seed, derandomised, no example database, at
most MAX_EXAMPLES fuzzed examples per operation and daemon/header combination, plus the
document's examples and Schemathesis' boundary cases (coverage phase); about 1,400 requests,
some 15 s with the debug binary. The last test checks that both daemons are still serving and
that their resident memory went back near what it was when idle (they trim the heap a few
seconds after a burst of requests); it prints the numbers and the request counts (`-s`).

Two hand-written cases: what the HTTP parser refuses before the router (431, a bare 400, with an
empty body, as docs/http-api.md says), and GET /openapi.json being this very document.

Needs the binaries (QUANTLENS_TRIGGER_BIN, QUANTLENS_BIN, or `cargo build`) and schemathesis
(tests/requirements.txt)."""

import collections
import copy
import json
import os
import time
from pathlib import Path

import pytest
import schemathesis
import yaml
from schemathesis.config import SchemathesisConfig

from trigger_support import Daemon, base_env, standin, trigger_binary, wait_for, write_record

REPO = Path(__file__).resolve().parent.parent
OPENAPI = REPO / "docs" / "openapi.yaml"

TOKEN = "contract-test-token"
# Fuzzed examples per operation and daemon/header combination (on top of the document's
# examples and the coverage phase's boundary cases): 3 x 11 operations, so keep it modest.
MAX_EXAMPLES = 50
SEED = 13

# The run ids the document uses as examples, so the examples phase meets existing runs.
SUCCEEDED = "20261129T123316.212Z-2a2757"
CRASHED = "20261129T124501.486Z-77aa10"

CONFIG = SchemathesisConfig.from_dict({
    "seed": SEED,
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
        # Not "invalid" input for HTTP: a server ignores headers it does not know, and the
        # document says which endpoints ignore their query string. (That /runs, /runs/{id}/log
        # and /runs/{id}/events refuse unknown query parameters is tested in test_trigger.py.)
        "allow-extra-parameters": False,
    },
    "checks": {
        # A valid request may meet state the generator cannot see: the run a previous request
        # started (409) or an Idempotency-Key it already used with another selection (422,
        # idempotency_key_reused). Both are documented answers, not refusals of the input.
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "401", "404", "409", "422"],
        },
    },
})

# The document, as written: with a token configured, the operations listing `bearerAuth` need it.
schema = schemathesis.openapi.from_path(OPENAPI, config=CONFIG)


def _without_a_token(document: dict) -> dict:
    """The same document for a daemon without a token: the bearer scheme becomes optional
    (`security: [{bearerAuth: []}, {}]`), which is what docs/http-api.md says ("Optional"),
    so a request without it is valid input and one with any token is accepted too."""
    document = copy.deepcopy(document)
    for item in document["paths"].values():
        for operation in item.values():
            if operation.get("security"):
                operation["security"] = [*operation["security"], {}]
    return document


open_schema = schemathesis.openapi.from_dict(
    _without_a_token(yaml.safe_load(OPENAPI.read_text())), config=CONFIG)


def _protected(operation) -> bool:
    """Whether the document says the operation needs the bearer token (when one is set)."""
    return bool(operation.definition.raw.get("security", []))


# --- the daemons --------------------------------------------------------------------------------

def _seed_state(state: Path, with_catalog: bool):
    """Two finished runs as a worker leaves them, and optionally the catalog snapshot."""
    write_record(state, SUCCEEDED, "succeeded",
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), trigger="http")
    write_record(state, CRASHED, "crashed", "2026-11-29T12:45:03Z", trigger="timer")
    for run_id in (SUCCEEDED, CRASHED):
        run_dir = state / "runs" / run_id
        (run_dir / "worker.log").write_text(
            f"quantlens-trigger: starting quantlens materialize --select '*' --run-id {run_id}\n"
            "materialising bronze/prices\n"
            "quantlens-trigger: worker exited with code 0 (success)\n")
        events = [
            {"event": "run_started", "ts": "2026-11-29T12:33:16.270Z"},
            {"event": "asset_finished", "asset": "bronze/prices", "status": "succeeded",
             "attempts": 1, "seconds": 0.4, "ts": "2026-11-29T12:33:16.700Z"},
            {"event": "run_finished", "status": "succeeded", "ts": "2026-11-29T12:33:19.120Z"},
        ]
        # The last line cut short, as a crash leaves it: the daemon skips it.
        (run_dir / "events.ndjson").write_text(
            "".join(json.dumps(e) + "\n" for e in events) + '{"event": "asset_sta')
    if with_catalog:
        # The shape crates/quantlens/src/catalog.rs writes.
        (state / "catalog.json").write_text(json.dumps({
            "generated_at": "2026-11-29T12:33:19.100+00:00",
            "run_id": SUCCEEDED,
            "assets": [
                {"table": "bronze/prices", "layer": "bronze", "kind": "rust", "defined_in": None,
                 "description": "Daily prices as landed", "group": "bronze", "deps": [],
                 "side_table_of": None, "code_version": "1", "version": 3, "rows": 6,
                 "last_materialized": "2026-11-29T12:33:16.690+00:00",
                 "state": "stale: reads landing files",
                 "last_run": {"run_id": SUCCEEDED, "status": "succeeded",
                              "finished_at": "2026-11-29T12:33:16.700Z", "checks": [],
                              "error": None}},
                {"table": "silver/prices", "layer": "silver", "kind": "sql",
                 "defined_in": "/etc/quantlens/assets/silver/prices.sql", "description": "",
                 "group": "silver", "deps": ["bronze/prices"], "side_table_of": None,
                 "code_version": "sql-3f0c9e1a2b4d", "version": None, "rows": None,
                 "last_materialized": None, "state": "stale: never materialised",
                 "last_run": None},
            ],
            "edges": [["bronze/prices", "silver/prices"]],
        }))


def _rss_kib(pid) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    """Both daemons, seeded and warmed up, with their idle RSS; stopped at the end."""
    assert trigger_binary().exists(), (
        f"{trigger_binary()} not built; run `cargo build -p quantlens-trigger` "
        "or set QUANTLENS_TRIGGER_BIN")
    started = {}
    try:
        for name, token in (("open", None), ("token", TOKEN)):
            root = tmp_path_factory.mktemp(f"contract-{name}")
            _seed_state(root / "state", with_catalog=token is not None)
            worker = standin(root, "finish succeeded")
            env = base_env(QUANTLENS_TRIGGER_TOKEN=token) if token else base_env()
            started[name] = Daemon(root, worker, env=env, token=token)
        for daemon in started.values():
            # One request per endpoint first: idle means after the first answers, not before.
            for path in ("/health", "/status", "/runs", f"/runs/{SUCCEEDED}",
                         f"/runs/{SUCCEEDED}/log", f"/runs/{SUCCEEDED}/events", "/assets", "/"):
                assert daemon.get(path).status < 500, path
            daemon.idle_rss = _rss_kib(daemon.pid)
        yield started
    finally:
        for daemon in started.values():
            try:
                daemon.terminate(timeout=60)
            finally:
                daemon.kill()


# --- the contract -------------------------------------------------------------------------------

# Requests generated per daemon/header combination and operation, by generation mode
# (positive or negative); the last test prints them.
SENT = collections.defaultdict(collections.Counter)


def _call(case, daemon, headers, label):
    mode = case.meta.generation.mode.value if case.meta else "?"
    SENT[f"{label} {case.operation.label}"][mode] += 1
    return case.call_and_validate(base_url=f"http://127.0.0.1:{daemon.port}", headers=headers,
                                  timeout=10)


@open_schema.parametrize()
def test_the_daemon_without_a_token_conforms(case, daemons):
    _call(case, daemons["open"], headers={}, label="open")


@pytest.mark.parametrize("auth", ["right_token", "no_token"])
@schema.parametrize()
def test_the_daemon_with_a_token_conforms(case, auth, daemons):
    if auth == "right_token":
        _call(case, daemons["token"], headers={"Authorization": f"Bearer {TOKEN}"},
              label="token")
        return
    # Schemathesis may draw a bearer value of its own for a protected operation (a wrong
    # token: also a 401); "no token" means no header at all.
    if case.headers:
        for name in [n for n in case.headers if n.lower() == "authorization"]:
            del case.headers[name]
    response = _call(case, daemons["token"], headers={}, label="no token")
    # The token is checked before the body, the parameters or the run id, so every request to
    # a protected operation is a 401, unless the router answered first: 405 for a method the
    # path does not take (Schemathesis tries those), 404 for a path outside the operation.
    if _protected(case.operation) and response.status_code not in (404, 405):
        assert response.status_code == 401, (case.operation.label, response.status_code,
                                             response.text[:300])
        assert response.headers.get("www-authenticate") == ["Bearer"], response.headers
        assert response.json()["status"] == "unauthorized"


def test_what_the_http_parser_refuses_is_a_bare_4xx_and_the_daemon_serves_on(daemons):
    """Requests hyper refuses before the router (docs/http-api.md, "Errors"): more than 100 header
    fields get 431, a malformed request line 400, each with an empty body. Not reachable through
    the OpenAPI document, hence hand-written."""
    import socket
    daemon = daemons["open"]
    headers = {f"X-Filler-{i}": "x" for i in range(120)}
    response = daemon.get("/health", headers=headers)
    assert response.status == 431 and response.raw == b"", response
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as raw:
        raw.sendall(b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert daemon.get("/health").status in (200, 503)


def test_openapi_json_is_this_document(daemons):
    """GET /openapi.json serves docs/openapi.yaml (as JSON, written by scripts/openapi-json):
    the copy in the binary cannot drift from the document the daemon is tested against."""
    served = daemons["open"].get("/openapi.json")
    assert served.status == 200 and served.headers.get("content-type") == "application/json"
    assert served.json == yaml.safe_load(OPENAPI.read_text()), \
        "crates/trigger/src/openapi.json is stale: run scripts/openapi-json"


# --- afterwards ---------------------------------------------------------------------------------

def test_daemons_survive_and_memory_returns_near_idle(daemons):
    """Runs after the contract test (pytest keeps file order): both daemons still serve, and
    their RSS settles back near what it was idle (the heap is trimmed within ~5 s of the last
    request). A bound on memory, never on time: the poll only waits for the trim."""
    for name, daemon in daemons.items():
        assert daemon.proc.poll() is None, f"{name} daemon exited:\n{daemon.log()}"
        assert daemon.get("/health").status in (200, 503)
        daemon.wait_idle(timeout=30)
        bound = 3 * daemon.idle_rss + 2048
        peak = _rss_kib(daemon.pid)

        def settled():
            rss = _rss_kib(daemon.pid)
            return rss if rss <= bound else None

        try:
            final = wait_for(settled, timeout=20, interval=0.5, what=f"{name} daemon's RSS")
        finally:
            print(f"\n{name} daemon RSS: idle {daemon.idle_rss} KiB, after the fuzzing "
                  f"{peak} KiB, settled {_rss_kib(daemon.pid)} KiB (bound {bound} KiB)")
        assert final <= bound
        runs = daemon.get("/runs?limit=1000").json["runs"]
        print(f"{name} daemon: {len(runs)} run records after the fuzzing")
    print(f"\nrequests generated (by mode), total {sum(sum(c.values()) for c in SENT.values())}:")
    for key, counts in sorted(SENT.items()):
        print(f"  {key}: {dict(counts)}")
