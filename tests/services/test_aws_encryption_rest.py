"""EBS encryption through boto3 against a served endpoint, the lifecycle items of issue 9:
CreateSnapshot of a volume whose KMS key is disabled or pending deletion (accepted, the
snapshot ends in ``error``, the volume is untouched), and CopySnapshot/CreateVolume under
another key copying in bounded transactions before their unit, all or nothing."""

from __future__ import annotations

import os
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ebsengine.engine import domains as domains_mod
from ebsengine.errors import StoreFull
from ebsengine.storage.chunks import ChunkStore
from test_aws_support import (
    BLOCK,
    Aws,
    aws,  # noqa: F401  (fixture)
    put_block,
    read_block,
)


def _key(aws: Aws) -> dict[str, Any]:
    md: dict[str, Any] = aws.kms.create_key(Description="ebs")["KeyMetadata"]
    return md


def _snapshot(aws: Aws, sid: str) -> dict[str, Any]:
    (s,) = aws.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"]
    return dict(s)


@pytest.mark.parametrize("lock", ["disable", "schedule-deletion"])
def test_create_snapshot_of_a_volume_whose_key_is_unusable_ends_in_error(aws: Aws,
                                                                        lock: str) -> None:
    md = _key(aws)
    vid = aws.volume(Encrypted=True, KmsKeyId=md["KeyId"])
    data = os.urandom(BLOCK)
    aws.write(vid, 0, data)
    if lock == "disable":
        aws.kms.disable_key(KeyId=md["KeyId"])
    else:
        aws.kms.schedule_key_deletion(KeyId=md["KeyId"], PendingWindowInDays=7)
    out = aws.ec2.create_snapshot(VolumeId=vid, Description="nightly")
    # EC2 accepts the call and checks the key asynchronously: the snapshot fails
    assert out["State"] == "pending" and out["Encrypted"] is True
    assert out["KmsKeyId"] == md["Arn"]
    snap = _snapshot(aws, out["SnapshotId"])
    assert snap["State"] == "error" and snap["StateMessage"]
    assert snap["VolumeId"] == vid and snap["Description"] == "nightly"
    assert [s["SnapshotId"] for s in aws.ec2.describe_snapshots(
        Filters=[{"Name": "status", "Values": ["error"]}])["Snapshots"]] == [snap["SnapshotId"]]
    (vol,) = aws.ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
    assert vol["State"] == "available"
    report = aws.engine.fsck()
    assert report.ok, report.problems
    aws.ec2.delete_snapshot(SnapshotId=snap["SnapshotId"])   # an error snapshot deletes
    if lock == "disable":
        aws.kms.enable_key(KeyId=md["KeyId"])
    else:
        aws.kms.cancel_key_deletion(KeyId=md["KeyId"])
        aws.kms.enable_key(KeyId=md["KeyId"])
    sid = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    assert _snapshot(aws, sid)["State"] == "completed"
    assert read_block(aws.ebs, sid, 0) == data


def _plain(aws: Aws, blocks: int = 3) -> tuple[str, list[bytes]]:
    sid = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    datas = [os.urandom(BLOCK) for _ in range(blocks)]
    for i, d in enumerate(datas):
        put_block(aws.ebs, sid, i, d)
    aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=blocks)
    return str(sid), datas


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(domains_mod, "STAGE_COMMIT_CHUNKS", 4, raising=False)
    monkeypatch.setattr(domains_mod, "STAGE_WINDOW", 4, raising=False)


@pytest.mark.parametrize("what", ["copy", "volume"])
def test_encrypting_copies_commit_in_batches_and_read_the_same(aws: Aws, small_batches: None,
                                                               what: str) -> None:
    sid, datas = _plain(aws)
    md = _key(aws)
    before = aws.engine._store.commit_id()
    if what == "copy":
        out = aws.ec2.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=sid,
                                    Encrypted=True, KmsKeyId=md["KeyId"])["SnapshotId"]
        snap = _snapshot(aws, out)
        assert snap["Encrypted"] is True and snap["KmsKeyId"] == md["Arn"]
        check = out
    else:
        vid = aws.ec2.create_volume(AvailabilityZone="us-east-1a", SnapshotId=sid,
                                    Encrypted=True, KmsKeyId=md["KeyId"])["VolumeId"]
    # 24 chunks, at most 4 (+ a window) a transaction: the writer was let go in between
    assert aws.engine._store.commit_id() - before >= 24 // 8
    if what == "volume":
        check = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    for i, d in enumerate(datas):
        assert read_block(aws.ebs, check, i) == d
    report = aws.engine.fsck()
    assert report.ok, report.problems


@pytest.mark.parametrize("what", ["copy", "volume"])
def test_an_encrypting_copy_that_fails_midway_leaves_the_store_as_it_was(
        aws: Aws, small_batches: None, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    sid, _ = _plain(aws)
    md = _key(aws)
    real_put = ChunkStore.put
    calls = [0]

    def put(self, txn, fp, data, encoded=None, domain=None):  # type: ignore[no-untyped-def]
        calls[0] += domain is not None
        if calls[0] == 14:
            raise StoreFull("the store is full")
        return real_put(self, txn, fp, data, encoded, domain)

    monkeypatch.setattr(ChunkStore, "put", put)
    with aws.unchanged(), pytest.raises(ClientError):
        if what == "copy":
            aws.ec2.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=sid,
                                  Encrypted=True, KmsKeyId=md["KeyId"])
        else:
            aws.ec2.create_volume(AvailabilityZone="us-east-1a", SnapshotId=sid,
                                  Encrypted=True, KmsKeyId=md["KeyId"])
    assert calls[0] == 14
    assert [s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])[
        "Snapshots"]] == [sid]
    assert aws.ec2.describe_volumes()["Volumes"] == []
    report = aws.engine.fsck()
    assert report.ok, report.problems


def test_create_image_of_an_instance_whose_volume_key_is_unusable_fails(aws: Aws) -> None:
    md = _key(aws)
    iid = aws.launch(ImageId=aws.image(os.urandom(4096)), BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "KmsKeyId": md["KeyId"]}}])
    aws.kms.disable_key(KeyId=md["KeyId"])
    image_id = aws.ec2.create_image(InstanceId=iid, Name="locked", NoReboot=True)["ImageId"]
    (img,) = aws.ec2.describe_images(ImageIds=[image_id])["Images"]
    assert img["State"] == "failed"
    sid = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert _snapshot(aws, sid)["State"] == "error"
    report = aws.engine.fsck()
    assert report.ok, report.problems
