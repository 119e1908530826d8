"""``ebsengine serve`` as a user starts it: one process serving NBD and the AWS API on one
store; a block written over NBD is the block GetSnapshotBlock returns; SIGTERM stops it
cleanly (writes flushed, socket removed)."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import subprocess
import sys

import boto3
import pytest
from botocore.config import Config

import ebsengine
import nbd_client as nc

BS = ebsengine.BLOCK_SIZE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    store = tmp_path / "store"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebsengine.cli", "--store", str(store), "serve",
         "--nbd-port", "0", "--http-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sock = store / "nbd.sock"
    lines = []
    try:
        for line in proc.stdout:  # the server announces each listener, then the store
            lines.append(line)
            if line.startswith("ebsengine: store"):
                break
        assert sock.exists(), "".join(lines)
        yield proc, store, sock, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes its output pipe


def clients(url: str):
    kw = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "any",
          "aws_secret_access_key": "any", "config": Config(retries={"max_attempts": 1})}
    return boto3.client("ec2", **kw), boto3.client("ebs", **kw)


def test_serve_shares_one_engine_between_nbd_and_the_api(server):
    proc, store, sock, url = server
    ec2, ebs = clients(url)
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, VolumeType="gp3")["VolumeId"]
    data = os.urandom(BS)
    with nc.NbdClient(str(sock)) as c:
        c.go(vol)  # greeting, options, GO
        c.pwrite(3 * BS, data)
        c.cmd(nc.CMD_FLUSH)
        c.disc()
    snap = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap])
    blocks = ebs.list_snapshot_blocks(SnapshotId=snap)["Blocks"]
    assert [b["BlockIndex"] for b in blocks] == [3]
    got = ebs.get_snapshot_block(SnapshotId=snap, BlockIndex=3, BlockToken=blocks[0]["BlockToken"])
    body = got["BlockData"].read()
    assert body == data
    assert got["Checksum"] == base64.b64encode(hashlib.sha256(data).digest()).decode()

    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert not sock.exists()
    with ebsengine.Engine(store) as eng:  # everything survived the shutdown
        with eng.open_snapshot(snap) as ro:
            assert ro.pread(BS, 3 * BS) == data
        assert eng.fsck().ok


def test_serve_writes_acknowledged_before_sigterm_are_durable(server):
    proc, store, sock, url = server
    ec2, _ = clients(url)
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    data = os.urandom(100_000)
    with nc.NbdClient(str(sock)) as c:
        c.go(vol)
        c.pwrite(12345, data)  # acknowledged, never flushed by the client
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    with ebsengine.Engine(store) as eng, eng.open_volume(vol) as dev:
        assert dev.pread(len(data), 12345) == data
