"""DATA_ROOT=s3://: the same pipeline and CLI against a real S3-compatible server (moto's, on
127.0.0.1), read back with the Python deltalake package through the same endpoint."""

import json
import socket
import subprocess
import time
import urllib.request

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(log):
    """moto's S3-compatible server on a free loopback port, its request log in `log`."""
    port = free_port()
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return server, endpoint
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise AssertionError("moto_server did not start:\n" + log.read_text())
            time.sleep(0.1)


def create_bucket(endpoint, bucket):
    request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
    urllib.request.urlopen(request, timeout=5)


@pytest.fixture
def s3(tmp_path):
    server, endpoint = start_moto(tmp_path / "moto.log")
    env = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "QUANTLENS_CACHE_DIR": str(tmp_path / "cache"),
    }
    create_bucket(endpoint, "quantlens-test")
    yield env
    server.terminate()
    server.wait(timeout=10)


def storage_options(env):
    return {"AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing"}


def test_pipeline_and_cli_on_an_s3_data_root(lake, s3):
    from deltalake import DeltaTable

    env = dict(s3, DATA_ROOT="s3://quantlens-test/lake", LANDING_DIR="s3://quantlens-test/landing")
    out = lake.run("demo", "--symbols", "4", "--days", "30", "--json", **env)
    summary = json.loads(out.stdout)
    assert summary["landing"] == "s3://quantlens-test/landing/"

    lake.run("materialize", **env)
    options = storage_options(s3)

    def table(key):
        return DeltaTable(f"s3://quantlens-test/lake/{key}", storage_options=options)

    silver = table("silver/prices").to_pyarrow_table()
    assert silver.num_rows == summary["rows"]
    assert table("silver/prices_rejects").to_pyarrow_table().num_rows == summary["junk_rows"]
    assert table("gold/returns").to_pyarrow_table().num_rows == summary["rows"]
    assert table("gold/market_daily").to_pyarrow_table().num_rows == 30
    assert table("gold/returns").history(1)[0]["quantlens"]["asset"] == "gold/returns"
    assert not (lake.data / "bronze").exists(), "nothing is written to the local default"

    # A re-run finds no new landing files in the bucket and commits nothing anywhere.
    keys = ["bronze/prices", "silver/prices", "gold/returns", "gold/market_daily"]
    versions = {key: table(key).version() for key in keys}
    lake.run("materialize", **env)
    assert {key: table(key).version() for key in keys} == versions

    assets = json.loads(lake.run("assets", "--json", **env).stdout)
    assert {a["table"]: a["rows"] for a in assets}["silver/prices"] == summary["rows"]
    count = lake.run("sql", "SELECT count(*) AS n FROM gold_returns", **env).stdout
    assert f"| {summary['rows']} " in count
    old = lake.run("show", "silver/prices", "--version", "0", "--limit", "1", **env).stdout
    assert "symbol" in old
    assert "CREATE TABLE" in lake.run("history", "silver/prices", **env).stdout

    # The weekly maintenance works there too, and changes no data.
    report = json.loads(lake.run("maintain", "--vacuum-retention-hours", "0", "--json", **env).stdout)
    assert {r["table"] for r in report} == {a["table"] for a in assets}
    assert table("silver/prices").to_pyarrow_table().num_rows == summary["rows"]
    assert table("gold/returns").to_pyarrow_table().num_rows == summary["rows"]


def test_bad_credentials_fail_clearly_and_quickly(lake, s3):
    env = dict(s3, DATA_ROOT="s3://no-such-bucket/lake")
    started = time.time()
    out = lake.run("materialize", "--select", "bronze/prices", expect=1, **env)
    assert time.time() - started < 60
    assert "no-such-bucket" in out.stderr or "NoSuchBucket" in out.stderr


def test_settings_in_the_credentials_file_win_over_the_environment(lake, s3, tmp_path):
    # The environment points at a closed loopback port; only the file knows the real endpoint,
    # so the run can only succeed if the file is read.
    credentials = tmp_path / "s3.env"
    credentials.write_text(
        "# as LoadCredential= hands it over\n"
        f"AWS_ENDPOINT_URL={s3['AWS_ENDPOINT_URL']}\n"
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n")
    env = dict(s3, AWS_ENDPOINT_URL="http://127.0.0.1:9", QUANTLENS_S3_CREDENTIALS=str(credentials),
               DATA_ROOT="s3://quantlens-test/from-file")
    lake.run("demo", "--symbols", "2", "--days", "3", **env)
    lake.run("materialize", **env)
    assets = json.loads(lake.run("assets", "--json", **env).stdout)
    assert {a["table"]: a["version"] for a in assets}["gold/market_daily"] == 0


# --- backups -----------------------------------------------------------------------------------

TABLES = [
    "bronze/prices", "bronze/landing_files", "silver/prices",
    "silver/prices_rejects", "gold/returns", "gold/market_daily",
]
BACKUPS = "s3://quantlens-test/backups"


def snapshot(lake):
    """Every table's version and its rows in a canonical order (a content checksum)."""
    out = {}
    for key in TABLES:
        frame = lake.frame(key)
        out[key] = (lake.delta(key).version(), frame.sort(frame.columns))
    return out


def assert_same(before, after):
    assert before.keys() == after.keys()
    for key in before:
        assert before[key][0] == after[key][0], key
        assert before[key][1].equals(after[key][1]), key


def manifest_paths(manifest):
    return {(t["key"], f["path"]) for t in manifest["tables"] for f in t["files"]}


def test_backup_wipe_restore_and_incremental_backups(lake, s3):
    import shutil
    lake.demo(symbols=4, days=30)
    lake.run("materialize")
    before = snapshot(lake)

    first = json.loads(lake.run("backup", "--to", BACKUPS, "--json", **s3).stdout)
    assert first["tables"] == len(TABLES)
    assert first["files_copied"] == first["files"] > 0

    # The VM is lost: its tables and its state directory. The manifest carries the run records,
    # so the restored platform knows its last success and is healthy, not "no_success".
    [last_run] = lake.runs()
    for key in TABLES:
        shutil.rmtree(lake.data / key.split("/")[0], ignore_errors=True)
    shutil.rmtree(lake.state)
    restored = lake.run("restore", "--from", BACKUPS, **s3)
    assert "restored 1 run records" in restored.stdout
    assert_same(before, snapshot(lake))
    assert lake.runs() == [last_run]
    health = json.loads(lake.run("health", "--json", **s3).stdout)
    assert health["status"] == "ok" and health["last_success"]["run_id"] == last_run["run_id"]
    out = lake.run("restore", "--from", BACKUPS, expect=1, **s3)
    assert "--force" in out.stderr
    lake.run("restore", "--from", BACKUPS, "--force", **s3)
    assert_same(before, snapshot(lake))

    # One more day of landing data; the restored lake takes it.
    versions = {key: lake.delta(key).version() for key in TABLES}
    lake.demo(symbols=4, days=31)
    lake.run("materialize")
    # (A day without junk rows leaves the rejects table as it was.)
    advanced = sum(1 for key in TABLES if lake.delta(key).version() > versions[key])
    assert advanced >= len(TABLES) - 1
    assert lake.runs()[0]["status"] == "succeeded"
    second = json.loads(lake.run("backup", "--to", BACKUPS, "--json", **s3).stdout)
    manifests = json.loads(lake.run("backup", "list", "--to", BACKUPS, "--json", **s3).stdout)
    assert [m["backup_id"] for m in manifests] == [first["backup_id"], second["backup_id"]]
    new = manifest_paths(manifests[1]) - manifest_paths(manifests[0])
    # Only what the new versions added was copied: their log entries and new data files.
    assert second["files_copied"] == len(new) and 0 < len(new) < second["files"]
    assert sum(1 for key, path in new if path.startswith("_delta_log/")) == advanced

    assert "verified" in lake.run("backup", "verify", "--to", BACKUPS, **s3).stdout
    assert "verified" in lake.run(
        "backup", "verify", "--to", BACKUPS, "--backup", first["backup_id"], **s3).stdout

    # Retention: keep one; the older backups' files that nothing needs any more are deleted. A
    # daily run only appends, so it is a compaction that leaves files behind.
    lake.run("maintain")
    third = json.loads(lake.run("backup", "--to", BACKUPS, "--keep", "1", "--json", **s3).stdout)
    assert third["files_copied"] > 0 and third["manifests_deleted"] == 2
    assert third["files_deleted"] > 0
    assert "verified" in lake.run("backup", "verify", "--to", BACKUPS, **s3).stdout


def test_a_killed_backup_leaves_the_previous_one_restorable(lake, s3, tmp_path):
    import boto3
    import signal
    lake.demo(symbols=150, days=200, seed=4)
    lake.run("materialize")
    first = json.loads(lake.run("backup", "--to", BACKUPS, "--json", **s3).stdout)
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")

    def objects():
        pages = client.get_paginator("list_objects_v2").paginate(Bucket="quantlens-test")
        return sum(page.get("KeyCount", 0) for page in pages)

    stored = objects()
    lake.demo(symbols=150, days=201, seed=4)
    lake.run("materialize")
    worker = lake.spawn("backup", "--to", BACKUPS, **s3)
    deadline = time.time() + 120
    while time.time() < deadline and worker.poll() is None and objects() == stored:
        time.sleep(0.01)
    assert worker.poll() is None, "the backup finished before it could be killed"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert objects() > stored, "the backup had copied something"

    manifests = json.loads(lake.run("backup", "list", "--to", BACKUPS, "--json", **s3).stdout)
    assert [m["backup_id"] for m in manifests] == [first["backup_id"]]
    assert "verified" in lake.run("backup", "verify", "--to", BACKUPS, **s3).stdout
    fresh = tmp_path / "fresh-lake"
    lake.run("restore", "--from", BACKUPS, "--to", str(fresh), **s3)
    from deltalake import DeltaTable
    assert DeltaTable(str(fresh / "silver/prices")).version() == manifests[0]["tables"][2]["version"]


def test_an_unreachable_backup_store_fails_clearly_without_a_manifest(lake, s3):
    lake.demo(symbols=2, days=3)
    lake.run("materialize")
    started = time.time()
    bad = dict(s3, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    out = lake.run("backup", "--to", BACKUPS, expect=1, **bad)
    assert time.time() - started < 90
    assert "127.0.0.1:9" in out.stderr or "connect" in out.stderr.lower()
    assert json.loads(lake.run("backup", "list", "--to", BACKUPS, "--json", **s3).stdout) == []


def test_a_backup_target_with_keys_of_its_own_that_need_no_delete(lake, s3, tmp_path):
    """QUANTLENS_BACKUP_CREDENTIALS: the backup target's own settings, apart from the lake's. The
    lake is on one S3 server (its keys in the environment), the backups on another, named only in
    the backup credential file: each goes where its settings say. And the backup key needs no
    delete permission: without a retention, backups and restores send no DELETE request (read
    from the backup server's request log), while --keep does (the control).

    (moto's IAM mode cannot check the permissions themselves: with INITIAL_NO_AUTH_ACTION_COUNT
    set it rejects list requests with SignatureDoesNotMatch, getmoto/moto#5948.)"""
    backups_log = tmp_path / "moto-backups.log"
    server, endpoint = start_moto(backups_log)
    try:
        create_bucket(endpoint, "quantlens-backups")
        env = dict(s3, DATA_ROOT="s3://quantlens-test/lake", LANDING_DIR=str(tmp_path / "landing"))
        credential = tmp_path / "backup-s3.env"
        credential.write_text(f"# the backup account\nAWS_ENDPOINT_URL={endpoint}\n"
                              "AWS_ACCESS_KEY_ID=backup-writer\nAWS_SECRET_ACCESS_KEY=never-deletes\n")
        to = "s3://quantlens-backups/daily"
        lake.run("demo", "--symbols", "3", "--days", "20", **env)
        lake.run("materialize", **env)

        # Without the file the backup goes to the lake's server, which has no such bucket.
        lost = lake.run("backup", "--to", to, expect=1, **env)
        assert "NoSuchBucket" in lost.stderr or "does not exist" in lost.stderr, lost.stderr

        env["QUANTLENS_BACKUP_CREDENTIALS"] = str(credential)
        first = json.loads(lake.run("backup", "--to", to, "--json", **env).stdout)
        lake.run("demo", "--symbols", "3", "--days", "21", **env)
        lake.run("materialize", **env)
        second = json.loads(lake.run("backup", "--to", to, "--json", **env).stdout)
        assert first["files_copied"] > 0 and 0 < second["files_copied"] < second["files"]
        restored = dict(env, DATA_ROOT=str(tmp_path / "restored"))
        lake.run("restore", "--from", to, **restored)

        def tables(e):
            return {(t["table"], t["version"], t["rows"])
                    for t in json.loads(lake.run("assets", "--json", **e).stdout)}
        assert tables(restored) == tables(env)
        def deletes():  # DELETE of one object, or POST ?delete (DeleteObjects) of many
            return [line for line in backups_log.read_text().splitlines()
                    if '"DELETE ' in line or '?delete ' in line]
        assert '"PUT /quantlens-backups/daily/manifests/' in backups_log.read_text(), \
            "the backups went to their own server"
        assert deletes() == [], "backup and restore never delete: a key without delete suffices"

        kept = json.loads(lake.run("backup", "--to", to, "--keep", "1", "--json", **env).stdout)
        assert kept["manifests_deleted"] == 2 and deletes()
    finally:
        server.terminate()
        server.wait(timeout=10)
