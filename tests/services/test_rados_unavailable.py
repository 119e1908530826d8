"""A Ceph cluster that is away entirely, seen through the front ends (issue 10): the NBD
server answers EIO (and never acknowledges a flush that did not happen), the HTTP endpoint
answers 503 (EC2 ``Unavailable``, EBS direct ``ServiceUnavailableException``), never a 500
and never corruption; both work again once the cluster is back. The cluster is frozen
(SIGSTOP of every daemon, so it comes back with its data) rather than stopped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import botocore.exceptions
import pytest

import ebsengine
import nbd_client as nc
from ceph_support import Cluster, freeze, private_cluster, resume
from ebsengine.aws.server import ApiServer
from ebsengine.nbd import protocol as p
from ebsengine.nbd.server import NbdServer
from nbd_client import NbdClient
from test_aws_support import client

pytestmark = [pytest.mark.needs_ceph, pytest.mark.slow]
TIMEOUT = 5
BLOCK = 64 * 1024


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from private_cluster(CEPH_OSDS="1")


def until_back(fn: Any, what: str) -> Any:
    """``fn()`` once it works (the cluster was just thawed); fails after 60 s."""
    t = time.monotonic()
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() - t > 60:
                raise AssertionError(f"{what}: still failing 60 s after the cluster "
                                     f"came back") from None
            time.sleep(0.5)


def test_nbd_answers_eio_while_the_cluster_is_away_and_serves_again_after(cluster, tmp_path):
    url = cluster.url("nbd", workdir=str(tmp_path / "wd"), timeout=TIMEOUT)
    with ebsengine.Engine(url) as eng:
        vid = eng.create_volume(1).id
        with NbdServer(eng, unix_path=tmp_path / "nbd.sock", tcp=None,
                       background_flush=False) as srv, \
                NbdClient(str(srv.unix_path), timeout=6 * TIMEOUT) as c:
            # a command may take a few timeouts (one per cluster round trip it makes before
            # the first fails); the client's socket timeout bounds it at six
            c.go(vid)
            c.pwrite(0, b"o" * BLOCK)
            assert c.cmd(nc.CMD_FLUSH).error == 0
            freeze(cluster)
            try:
                c.cmd(nc.CMD_WRITE, BLOCK, BLOCK, payload=b"n" * BLOCK)  # may be cached
                t = time.monotonic()
                r = c.cmd(nc.CMD_FLUSH)
                took = time.monotonic() - t
                print(f"\nNBD, cluster away: FLUSH error {r.error} after {took:.1f} s")
                assert r.error == p.NBD_EIO  # not acknowledged
                assert took < 6 * TIMEOUT
                r = c.cmd(nc.CMD_READ, 300 * BLOCK, BLOCK)  # never read: the cluster is asked
                assert r.error == p.NBD_EIO
                r = c.cmd(nc.CMD_WRITE, 2 * BLOCK, BLOCK, nc.F_FUA, b"f" * BLOCK)
                assert r.error == p.NBD_EIO  # a FUA write is a flush too
            finally:
                resume(cluster, repeer=True)

            def flushed() -> None:
                assert c.cmd(nc.CMD_FLUSH).error == 0
            until_back(flushed, "NBD FLUSH")
            assert c.pread(0, BLOCK) == b"o" * BLOCK
            assert c.pread(BLOCK, BLOCK) == b"n" * BLOCK  # the write whose flush failed
            c.pwrite(3 * BLOCK, b"b" * BLOCK, nc.F_FUA)
        report = eng.fsck()
        assert report.ok, report.problems
    with ebsengine.Engine(url) as eng, eng.open_volume(vid) as dev:
        assert dev.pread(BLOCK, 0) == b"o" * BLOCK
        assert dev.pread(BLOCK, BLOCK) == b"n" * BLOCK
        assert dev.pread(BLOCK, 3 * BLOCK) == b"b" * BLOCK


def _error(call: Any, **kw: Any) -> tuple[str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call(**kw)
    err = info.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def test_http_answers_503_while_the_cluster_is_away_and_serves_again_after(cluster, tmp_path):
    url = cluster.url("http", workdir=str(tmp_path / "wd"), timeout=TIMEOUT)
    with ebsengine.Engine(url) as eng:
        srv = ApiServer(eng, port=0).start()
        try:
            ec2, ebs = client("ec2", srv.url), client("ebs", srv.url)  # no retries
            vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
            snap = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
            freeze(cluster)
            try:
                t = time.monotonic()
                got = _error(ec2.create_volume, AvailabilityZone="us-east-1a", Size=1)
                print(f"\nHTTP, cluster away: CreateVolume {got} after "
                      f"{time.monotonic() - t:.1f} s")
                assert got == ("Unavailable", 503)
                assert _error(ec2.create_snapshot, VolumeId=vid) == ("Unavailable", 503)
                assert _error(ebs.start_snapshot, VolumeSize=1) == \
                    ("ServiceUnavailableException", 503)
                assert _error(ebs.list_snapshot_blocks, SnapshotId=snap) == \
                    ("ServiceUnavailableException", 503)
            finally:
                resume(cluster, repeer=True)

            def works() -> str:
                try:
                    return str(ec2.create_volume(AvailabilityZone="us-east-1a",
                                                 Size=1)["VolumeId"])
                except botocore.exceptions.ClientError as exc:
                    assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503, exc
                    raise AssertionError(str(exc)) from None
            until_back(works, "CreateVolume")
            assert ebs.list_snapshot_blocks(SnapshotId=snap)["Blocks"] == []
            started = ebs.start_snapshot(VolumeSize=1)
            assert started["Status"] == "pending"
        finally:
            srv.stop()
        report = eng.fsck()
        assert report.ok, report.problems
