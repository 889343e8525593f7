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


@pytest.fixture
def s3(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(tmp_path / "moto.log", "w"), stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise AssertionError("moto_server did not start:\n" + (tmp_path / "moto.log").read_text())
            time.sleep(0.1)
    env = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "QUANTLENS_CACHE_DIR": str(tmp_path / "cache"),
    }
    request = urllib.request.Request(f"{endpoint}/quantlens-test", method="PUT")
    urllib.request.urlopen(request, timeout=5)  # create the bucket
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

    # A re-run finds no new landing files in the bucket and commits nothing to bronze.
    bronze_version = table("bronze/prices").version()
    lake.run("materialize", **env)
    assert table("bronze/prices").version() == bronze_version

    assets = json.loads(lake.run("assets", "--json", **env).stdout)
    assert {a["table"]: a["rows"] for a in assets}["silver/prices"] == summary["rows"]
    count = lake.run("sql", "SELECT count(*) AS n FROM gold_returns", **env).stdout
    assert f"| {summary['rows']} " in count
    old = lake.run("show", "silver/prices", "--version", "0", "--limit", "1", **env).stdout
    assert "symbol" in old
    assert "WRITE" in lake.run("history", "silver/prices", **env).stdout


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
