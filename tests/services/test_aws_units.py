"""Multi-record AWS requests commit as one unit of work (issue 7, defects 4-7), through boto3
against a real server."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from test_aws_support import BLOCK, Aws, aws, expect_error, put_block  # noqa: F401  (fixture)

AZ = "us-east-1a"
class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _records(a: Aws, *namespaces: str) -> dict[str, list[tuple[str, Any]]]:
    return {ns: a.engine.service_items(ns) for ns in namespaces}


TOKEN_NS = ("aws.token", "aws.token-of", "aws.token-expiry")


# --- (4) CreateSnapshots: one point in time ------------------------------------------------


def test_create_snapshots_is_one_point_in_time(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest writes counter n to volume A, flushes, writes n to B, flushes. Any state a
    crash could leave has B <= A <= B + 1. Snapshots frozen one volume after the other break
    that (B is frozen after A moved on); the set of one CreateSnapshots call may not. Each
    snapshot is made slow (as on a loaded machine) so that the guest gets to run between
    two of them if anything lets it."""
    a = Aws(str(tmp_path / "s"))
    IID = a.launch()
    real = a.engine.create_snapshot

    def slow_snapshot(*args: Any, **kw: Any) -> Any:
        snap = real(*args, **kw)
        time.sleep(0.01)
        return snap

    monkeypatch.setattr(a.engine, "create_snapshot", slow_snapshot)
    try:
        va, vb = a.volume(), a.volume()
        a.ec2.attach_volume(VolumeId=va, InstanceId=IID, Device="/dev/sdf")
        a.ec2.attach_volume(VolumeId=vb, InstanceId=IID, Device="/dev/sdg")
        stop = threading.Event()
        errors: list[BaseException] = []

        def guest() -> None:
            try:
                with a.engine.open_volume(va) as da, a.engine.open_volume(vb) as db:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        da.pwrite(n.to_bytes(8, "big"), 0)
                        da.flush()
                        db.pwrite(n.to_bytes(8, "big"), 0)
                        db.flush()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        t = threading.Thread(target=guest)
        t.start()
        try:
            sets = []
            for _ in range(30):
                snaps = a.ec2.create_snapshots(InstanceSpecification={
                    "InstanceId": IID, "ExcludeBootVolume": True})["Snapshots"]
                by_vol = {s["VolumeId"]: s["SnapshotId"] for s in snaps}
                assert set(by_vol) == {va, vb}
                assert len({s["StartTime"] for s in snaps}) == 1  # AWS: same startTime
                sets.append(by_vol)
        finally:
            stop.set()
            t.join()
        assert not errors, errors
        counters = []
        for by_vol in sets:
            with a.engine.open_snapshot(by_vol[va]) as ra, a.engine.open_snapshot(by_vol[vb]) as rb:
                na = int.from_bytes(ra.pread(8, 0), "big")
                nb = int.from_bytes(rb.pread(8, 0), "big")
            assert nb <= na <= nb + 1, (na, nb)
            counters.append(na)
        assert len(set(counters)) > 1  # the guest really wrote between the calls
    finally:
        a.stop()


def test_create_snapshots_refused_makes_none(tmp_path: Any) -> None:
    a = Aws(str(tmp_path / "s"))
    try:
        IID = a.launch()
        before = a.ec2.describe_snapshots()["Snapshots"]
        va, vb = a.volume(), a.volume()
        a.ec2.attach_volume(VolumeId=va, InstanceId=IID, Device="/dev/sdf")
        a.ec2.attach_volume(VolumeId=vb, InstanceId=IID, Device="/dev/sdg")
        # vb's 49 tags plus the two given make 51: the second snapshot is refused, so is the set
        a.ec2.create_tags(Resources=[vb], Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(49)])
        with a.unchanged():
            expect_error(a.ec2.create_snapshots, "TagLimitExceeded", 400,
                         InstanceSpecification={"InstanceId": IID}, CopyTagsFromSource="volume",
                         TagSpecifications=[{"ResourceType": "snapshot",
                                             "Tags": [{"Key": "x", "Value": "1"}, {"Key": "y", "Value": "2"}]}])
        assert a.ec2.describe_snapshots()["Snapshots"] == before
    finally:
        a.stop()


# --- (6) DeleteVolume / DeleteSnapshot: resource and records in one commit ---------------


def _fail_on(a: Aws, monkeypatch: pytest.MonkeyPatch, namespace: str) -> None:
    """Make the engine fail when the endpoint drops a record of ``namespace`` (a crash
    between two writes, in effect)."""
    real = a.engine.service_put

    def service_put(ns: str, key: str, value: Any, **kw: Any) -> None:
        if ns == namespace and value is None:
            raise RuntimeError("power cut")
        real(ns, key, value, **kw)

    monkeypatch.setattr(a.engine, "service_put", service_put)


def test_delete_volume_and_its_records_commit_together(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    vid = aws.ec2.create_volume(AvailabilityZone=AZ, Size=1, ClientToken="vol-token")["VolumeId"]
    aws.ec2.modify_volume(VolumeId=vid, Size=2)
    with monkeypatch.context() as m:
        _fail_on(aws, m, "aws.volmod")
        with aws.unchanged():
            expect_error(aws.ec2.delete_volume, "InternalError", 500, VolumeId=vid)
    # nothing of the delete happened: the volume, its history and its token are all there
    assert aws.ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["Size"] == 2
    assert aws.ec2.describe_volumes_modifications(VolumeIds=[vid])["VolumesModifications"]
    aws.ec2.delete_volume(VolumeId=vid)
    assert _records(aws, "aws.volmod", *TOKEN_NS) == {ns: [] for ns in ("aws.volmod", *TOKEN_NS)}


def test_delete_snapshot_and_its_records_commit_together(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = aws.ec2.create_snapshot(VolumeId=aws.volume())["SnapshotId"]
    aws.ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                      OperationType="add", UserIds=["111122223333"])
    with monkeypatch.context() as m:
        _fail_on(aws, m, "aws.snapattr")
        with aws.unchanged():
            expect_error(aws.ec2.delete_snapshot, "InternalError", 500, SnapshotId=sid)
    (snap,) = aws.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"]
    assert snap["State"] == "completed"
    aws.ec2.delete_snapshot(SnapshotId=sid)
    assert _records(aws, "aws.snapshot", "aws.snapattr") == {"aws.snapshot": [], "aws.snapattr": []}


# --- (7) PutSnapshotBlock's write-back cannot undo CompleteSnapshot ------------------------


def test_put_block_write_back_does_not_undo_a_concurrent_complete(aws: Aws,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sid = aws.ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
    put_block(aws.ebs, sid, 0, b"a" * BLOCK)
    stored, go_on = threading.Event(), threading.Event()
    real = aws.engine.put_snapshot_block

    def slow_put(*args: Any, **kw: Any) -> None:
        real(*args, **kw)
        stored.set()        # the block is durable; the request has not finished yet
        go_on.wait(30)

    monkeypatch.setattr(aws.engine, "put_snapshot_block", slow_put)
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(
        put_block(aws.ebs, sid, 0, b"b" * BLOCK, Progress=60)))
    t.start()
    assert stored.wait(30)
    aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)
    go_on.set()
    t.join(30)
    assert results, "the put finished"
    # the put's bookkeeping ran after the completion and must not have brought it back
    assert aws.engine.service_get("aws.direct", sid) is None
    (snap,) = aws.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"]
    assert (snap["State"], snap["Progress"]) == ("completed", "100%")


# --- (5) ClientTokens die with their resource and expire ----------------------------------


def test_client_token_retry_after_delete_makes_a_new_volume(aws: Aws) -> None:
    first = aws.ec2.create_volume(AvailabilityZone=AZ, Size=1, ClientToken="retry-me")["VolumeId"]
    aws.ec2.delete_volume(VolumeId=first)
    assert _records(aws, *TOKEN_NS) == {ns: [] for ns in TOKEN_NS}  # dropped with the volume
    again = aws.ec2.create_volume(AvailabilityZone=AZ, Size=1, ClientToken="retry-me")["VolumeId"]
    assert again != first
    assert [v["VolumeId"] for v in aws.ec2.describe_volumes()["Volumes"]] == [again]


def test_start_snapshot_token_dies_with_its_snapshot(aws: Aws) -> None:
    first = aws.ebs.start_snapshot(VolumeSize=1, ClientToken="direct-1")["SnapshotId"]
    assert aws.ebs.start_snapshot(VolumeSize=1, ClientToken="direct-1")["SnapshotId"] == first
    expect_error(aws.ebs.start_snapshot, "ConflictException", 409, VolumeSize=2, ClientToken="direct-1")
    aws.ec2.delete_snapshot(SnapshotId=first)
    again = aws.ebs.start_snapshot(VolumeSize=2, ClientToken="direct-1")["SnapshotId"]
    assert again != first


def test_client_tokens_expire_after_their_ttl(tmp_path: Any) -> None:
    from ebsengine.rules.tokens import TOKEN_TTL

    clock = _Clock()
    a = Aws(str(tmp_path / "s"), clock=clock)
    try:
        first = a.ec2.create_volume(AvailabilityZone=AZ, Size=1, ClientToken="t1")["VolumeId"]
        clock.now += TOKEN_TTL - 60
        assert a.ec2.create_volume(AvailabilityZone=AZ, Size=1, ClientToken="t1")["VolumeId"] == first
        expect_error(a.ec2.create_volume, "IdempotentParameterMismatch", 400,
                     AvailabilityZone=AZ, Size=2, ClientToken="t1")
        clock.now += 120  # past the TTL: the same token is a new request, whatever it asks
        second = a.ec2.create_volume(AvailabilityZone=AZ, Size=2, ClientToken="t1")["VolumeId"]
        assert second != first
        # the expired record was replaced, not kept beside the new one
        tokens = a.engine.service_items("aws.token")
        assert [rec["id"] for _, rec in tokens] == [second]
        assert a.engine.service_get("aws.token-of", first) is None
        # expired tokens of other requests are swept as new tokens are written
        a.ec2.create_volume(AvailabilityZone=AZ, Size=1, ClientToken="t2")
        clock.now += TOKEN_TTL + 1
        a.ec2.create_volume(AvailabilityZone=AZ, Size=1, ClientToken="t3")
        assert [k.rsplit("|", 1)[1] for k, _ in a.engine.service_items("aws.token")] == ["t3"]
        assert len(a.engine.service_items("aws.token-expiry")) == 1
        assert a.engine.fsck().ok
    finally:
        a.stop()


def test_malformed_client_token_is_refused(aws: Aws) -> None:
    with aws.unchanged():
        expect_error(aws.ec2.create_volume, "InvalidParameterValue", 400,
                     AvailabilityZone=AZ, Size=1, ClientToken="x" * 65)
        expect_error(aws.ec2.create_volume, "InvalidParameterValue", 400,
                     AvailabilityZone=AZ, Size=1, ClientToken="with space")
