#!/usr/bin/env python3
"""Backup and restore benchmark for the 5M-row demo lake (issue: object storage).

Materialises the demo lake (default 2000 symbols x 2520 days), starts an S3-compatible server
(moto, on 127.0.0.1), then times: a full backup, an incremental backup after one more day of
data, and a restore into an empty DATA_ROOT. The restore time is the RTO the runbook quotes.

    cargo build --release -p quantlens
    python3 bench/backup_restore.py [--symbols 2000] [--days 2520] [--binary PATH]

moto is a Python server: a real object store (or MinIO) on the same network is faster, so these
times are an upper bound for the data volume.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from materialize import default_binary, machine

from deployed import use_deployed_allocator


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--days", type=int, default=2520)
    parser.add_argument("--binary", default=None)
    args = parser.parse_args()
    use_deployed_allocator()
    binary = args.binary or default_binary()
    root = Path(tempfile.mkdtemp(prefix="ql-bench-backup-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT"), timeout=5)
        env = dict(os.environ, DATA_ROOT=str(root / "data"), STATE_DIR=str(root / "state"),
                   AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true", AWS_REGION="us-east-1",
                   AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
        env.pop("LANDING_DIR", None)

        def run(*cmd, **extra):
            start = time.perf_counter()
            out = subprocess.run([binary, *cmd], env=dict(env, **extra), check=True,
                                 capture_output=True, text=True).stdout
            return time.perf_counter() - start, out

        print(f"machine: {machine()}")
        run("demo", "--symbols", str(args.symbols), "--days", str(args.days))
        run("materialize")
        lake_bytes = sum(f.stat().st_size for f in (root / "data").rglob("*")
                         if f.is_file() and "landing" not in f.parts)
        print(f"lake: {lake_bytes / 1e6:.0f} MB in 6 tables (landing files excluded)")

        seconds, out = run("backup", "--to", "s3://bench/backups", "--json")
        report = json.loads(out)
        print(f"full backup: {seconds:.1f} s, {report['files_copied']} files, {report['bytes_copied'] / 1e6:.0f} MB")

        run("demo", "--symbols", str(args.symbols), "--days", str(args.days + 1))
        run("materialize")
        seconds, out = run("backup", "--to", "s3://bench/backups", "--json")
        report = json.loads(out)
        print(f"incremental backup after one more day: {seconds:.1f} s, {report['files_copied']} of "
              f"{report['files']} files, {report['bytes_copied'] / 1e6:.0f} MB")

        seconds, _ = run("backup", "verify", "--to", "s3://bench/backups")
        print(f"verify (reread and checksum every file): {seconds:.1f} s")

        restored = root / "restored"
        seconds, _ = run("restore", "--from", "s3://bench/backups", "--to", str(restored))
        print(f"restore into an empty DATA_ROOT (RTO of the data): {seconds:.1f} s")
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
