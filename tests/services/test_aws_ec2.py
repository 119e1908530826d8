"""EC2 volume, snapshot and tag actions through boto3 against a real server (issue 4)."""

from __future__ import annotations

import time
import urllib.request
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from ebsengine.aws.ec2 import ModificationRules
from test_aws_support import Aws, aws, expect_error  # noqa: F401  (fixture)

AZ = "us-east-1a"


# --- volumes -------------------------------------------------------------------------------


def test_create_volume_then_describe(aws: Aws) -> None:
    out = aws.ec2.create_volume(AvailabilityZone=AZ, Size=10, VolumeType="gp3", Iops=4000,
                                TagSpecifications=[{"ResourceType": "volume",
                                                    "Tags": [{"Key": "Name", "Value": "data"}]}])
    assert out["State"] == "creating"
    assert (out["Size"], out["VolumeType"], out["Iops"], out["Throughput"]) == (10, "gp3", 4000, 125)
    assert out["Tags"] == [{"Key": "Name", "Value": "data"}]
    assert out["VolumeId"].startswith("vol-") and len(out["VolumeId"]) == 21
    (vol,) = aws.ec2.describe_volumes(VolumeIds=[out["VolumeId"]])["Volumes"]
    assert vol["State"] == "available" and vol["AvailabilityZone"] == AZ
    assert vol["Encrypted"] is False and vol["Attachments"] == [] and vol["MultiAttachEnabled"] is False
    assert vol["CreateTime"] == out["CreateTime"]
    assert aws.engine.get_volume(out["VolumeId"]).size_gib == 10


def test_create_volume_defaults_to_gp2(aws: Aws) -> None:
    vol = aws.ec2.create_volume(AvailabilityZone=AZ, Size=100)
    assert vol["VolumeType"] == "gp2" and vol["Iops"] == 300 and "Throughput" not in vol


@pytest.mark.parametrize("kwargs, code", [
    ({"Size": 0}, "InvalidParameterValue"),
    ({"Size": 70000, "VolumeType": "gp3"}, "InvalidParameterValue"),
    ({"Size": 10, "VolumeType": "io1"}, "MissingParameter"),
    ({"Size": 10, "VolumeType": "gp2", "Iops": 3000}, "InvalidParameterCombination"),
    ({"Size": 10, "VolumeType": "gp3", "Iops": 100000}, "InvalidParameterValue"),
    ({"Size": 10, "VolumeType": "gp9"}, "InvalidParameterValue"),
    ({}, "MissingParameter"),
    ({"Size": 1, "AvailabilityZone": "us-west-2a"}, "InvalidParameterValue"),
    ({"Size": 1, "SnapshotId": "snap-0123456789abcdef0"}, "InvalidSnapshot.NotFound"),
    ({"Size": 1, "SnapshotId": "snapshot-1"}, "InvalidSnapshotID.Malformed"),
    ({"Size": 1, "KmsKeyId": "alias/aws/ebs"}, "InvalidParameterDependency"),
    ({"Size": 1, "TagSpecifications": [{"ResourceType": "snapshot", "Tags": [{"Key": "a", "Value": "b"}]}]},
     "InvalidParameterValue"),
    ({"Size": 1, "TagSpecifications": [{"ResourceType": "volume", "Tags": [{"Key": "aws:x", "Value": "b"}]}]},
     "InvalidParameterValue"),
])
def test_create_volume_refused(aws: Aws, kwargs: dict[str, Any], code: str) -> None:
    kwargs = {"AvailabilityZone": AZ, **kwargs}
    with aws.unchanged():
        expect_error(aws.ec2.create_volume, code, 400, **kwargs)
    assert aws.ec2.describe_volumes()["Volumes"] == []


def test_create_volume_client_token_is_idempotent(aws: Aws) -> None:
    a = aws.ec2.create_volume(AvailabilityZone=AZ, Size=2, ClientToken="tok-1")
    b = aws.ec2.create_volume(AvailabilityZone=AZ, Size=2, ClientToken="tok-1")
    assert a["VolumeId"] == b["VolumeId"]
    assert len(aws.ec2.describe_volumes()["Volumes"]) == 1
    with aws.unchanged():
        expect_error(aws.ec2.create_volume, "IdempotentParameterMismatch", 400,
                     AvailabilityZone=AZ, Size=3, ClientToken="tok-1")
    # boto3 fills a fresh token per call by itself: two plain calls make two volumes
    aws.volume()
    aws.volume()
    assert len(aws.ec2.describe_volumes()["Volumes"]) == 3


def test_dry_run_changes_nothing(aws: Aws) -> None:
    vid = aws.volume()
    with aws.unchanged():
        expect_error(aws.ec2.create_volume, "DryRunOperation", 412, AvailabilityZone=AZ, Size=1, DryRun=True)
        expect_error(aws.ec2.delete_volume, "DryRunOperation", 412, VolumeId=vid, DryRun=True)
        expect_error(aws.ec2.create_snapshot, "DryRunOperation", 412, VolumeId=vid, DryRun=True)
        expect_error(aws.ec2.create_tags, "DryRunOperation", 412, Resources=[vid],
                     Tags=[{"Key": "a", "Value": "b"}], DryRun=True)
        expect_error(aws.ec2.modify_volume, "DryRunOperation", 412, VolumeId=vid, Size=5, DryRun=True)
        expect_error(aws.ec2.describe_volumes, "DryRunOperation", 412, DryRun=True)
    assert len(aws.ec2.describe_volumes()["Volumes"]) == 1


def test_describe_volumes_filters(aws: Aws) -> None:
    a = aws.volume(1, VolumeType="gp3", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": "db"}]}])
    b = aws.volume(2, VolumeType="gp2", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "env", "Value": "staging"}]}])
    c = aws.ec2.create_volume(AvailabilityZone="us-east-1b", Size=4, VolumeType="io1", Iops=100)["VolumeId"]

    def ids(*filters: tuple[str, list[str]]) -> set[str]:
        fs = [{"Name": n, "Values": v} for n, v in filters]
        return {v["VolumeId"] for v in aws.ec2.describe_volumes(Filters=fs)["Volumes"]}

    assert ids(("volume-type", ["gp3"])) == {a}
    assert ids(("volume-type", ["gp3", "io1"])) == {a, c}                  # values OR
    assert ids(("volume-type", ["gp3", "gp2"]), ("size", ["2"])) == {b}     # filters AND
    assert ids(("tag:env", ["prod"])) == {a}
    assert ids(("tag:env", ["*"])) == {a, b}
    assert ids(("tag:env", ["st?ging"])) == {b}
    assert ids(("tag:env", ["Prod"])) == set()                              # case-sensitive
    assert ids(("tag-key", ["team"])) == {a}
    assert ids(("availability-zone", ["us-east-1b"])) == {c}
    assert ids(("status", ["available"])) == {a, b, c}
    assert ids(("status", ["in-use"])) == set()
    assert ids(("volume-id", [b, c])) == {b, c}
    assert ids(("encrypted", ["false"])) == {a, b, c}
    assert ids(("snapshot-id", [""])) == {a, b, c}
    expect_error(aws.ec2.describe_volumes, "InvalidParameterValue", 400,
                 Filters=[{"Name": "no-such-filter", "Values": ["x"]}])


def test_describe_volumes_pagination(aws: Aws) -> None:
    made = [aws.volume() for _ in range(12)]
    seen: list[str] = []
    token = None
    pages = []
    while True:
        kw: dict[str, Any] = {"MaxResults": 5}
        if token:
            kw["NextToken"] = token
        out = aws.ec2.describe_volumes(**kw)
        pages.append(len(out["Volumes"]))
        seen += [v["VolumeId"] for v in out["Volumes"]]
        token = out.get("NextToken")
        if not token:
            break
    assert pages == [5, 5, 2] and sorted(seen) == sorted(made) and len(set(seen)) == 12
    paged = [v["VolumeId"] for p in aws.ec2.get_paginator("describe_volumes").paginate(
        PaginationConfig={"PageSize": 5}) for v in p["Volumes"]]
    assert paged == seen
    # a page token survives deletion of the item it points after
    first = aws.ec2.describe_volumes(MaxResults=5)
    aws.ec2.delete_volume(VolumeId=first["Volumes"][-1]["VolumeId"])
    rest = aws.ec2.describe_volumes(MaxResults=500, NextToken=first["NextToken"])["Volumes"]
    assert [v["VolumeId"] for v in rest] == seen[5:]
    expect_error(aws.ec2.describe_volumes, "InvalidParameterValue", 400, MaxResults=4)
    expect_error(aws.ec2.describe_volumes, "InvalidParameterCombination", 400, MaxResults=5, VolumeIds=[made[0]])
    expect_error(aws.ec2.describe_volumes, "InvalidParameterValue", 400, MaxResults=5, NextToken="garbage")


def test_describe_volumes_by_id_errors(aws: Aws) -> None:
    vid = aws.volume()
    expect_error(aws.ec2.describe_volumes, "InvalidVolume.NotFound", 400,
                 VolumeIds=[vid, "vol-0000000000000dead"])
    expect_error(aws.ec2.describe_volumes, "InvalidVolumeID.Malformed", 400, VolumeIds=["volume-1"])


def test_delete_volume_and_waiters_finish_at_first_poll(aws: Aws) -> None:
    t0 = time.monotonic()
    vid = aws.volume()
    aws.ec2.get_waiter("volume_available").wait(VolumeIds=[vid])
    sid = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    aws.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid])
    with aws.unchanged():
        expect_error(aws.ec2.delete_volume, "InvalidVolume.NotFound", 400, VolumeId="vol-0000000000000dead")
        expect_error(aws.ec2.delete_volume, "InvalidVolumeID.Malformed", 400, VolumeId="nope")
    assert aws.ec2.delete_volume(VolumeId=vid)["ResponseMetadata"]["HTTPStatusCode"] == 200
    aws.ec2.get_waiter("volume_deleted").wait(VolumeIds=[vid])
    assert time.monotonic() - t0 < 14         # waiters delay 15 s between polls: none was needed
    expect_error(aws.ec2.delete_volume, "InvalidVolume.NotFound", 400, VolumeId=vid)
    # the snapshot outlives its volume
    assert aws.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] == "completed"


def test_delete_volume_open_on_a_device_is_refused(aws: Aws) -> None:
    vid = aws.volume()
    with aws.engine.open_volume(vid), aws.unchanged():
        expect_error(aws.ec2.delete_volume, "VolumeInUse", 400, VolumeId=vid)


# --- ModifyVolume --------------------------------------------------------------------------


def test_modify_volume_grows_and_reports(aws: Aws) -> None:
    vid = aws.volume(4)
    mod = aws.ec2.modify_volume(VolumeId=vid, Size=8)["VolumeModification"]
    assert mod["ModificationState"] == "modifying"
    assert (mod["OriginalSize"], mod["TargetSize"], mod["VolumeId"]) == (4, 8, vid)
    assert aws.ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["Size"] == 8
    (desc,) = aws.ec2.describe_volumes_modifications(VolumeIds=[vid])["VolumesModifications"]
    assert desc["ModificationState"] == "completed" and desc["Progress"] == 100 and "EndTime" in desc
    with aws.engine.open_volume(vid) as dev:
        assert dev.size == 8 << 30
    # gp2 -> gp3 picks gp3's defaults
    mod = aws.ec2.modify_volume(VolumeId=vid, VolumeType="gp3")["VolumeModification"]
    assert (mod["TargetVolumeType"], mod["TargetIops"], mod["TargetThroughput"]) == ("gp3", 3000, 125)
    assert mod["OriginalVolumeType"] == "gp2"


def test_modify_volume_refusals(aws: Aws) -> None:
    vid = aws.volume(8)
    with aws.unchanged():
        expect_error(aws.ec2.modify_volume, "InvalidParameterValue", 400, VolumeId=vid, Size=4)   # shrink
        expect_error(aws.ec2.modify_volume, "InvalidParameterValue", 400, VolumeId=vid, Size=8)   # no change
        expect_error(aws.ec2.modify_volume, "InvalidVolume.NotFound", 400, VolumeId="vol-0000000000000dead")
        expect_error(aws.ec2.modify_volume, "InvalidParameterValue", 400, VolumeId=vid, VolumeType="gp3",
                     Iops=999999)
    for size in (9, 10, 11, 12):                       # 4 per rolling 24 h
        aws.ec2.modify_volume(VolumeId=vid, Size=size)
    with aws.unchanged():
        expect_error(aws.ec2.modify_volume, "VolumeModificationRateExceeded", 400, VolumeId=vid, Size=13)
    assert aws.engine.get_volume(vid).size_gib == 12


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_modification_states_and_incorrect_modification_state(tmp_path: Any) -> None:
    clock = _Clock()
    a = Aws(str(tmp_path / "s"), clock=clock,
            modification=ModificationRules(modifying_seconds=60, optimizing_seconds=120))
    try:
        vid = a.volume(4)
        a.ec2.modify_volume(VolumeId=vid, Size=5)
        state = a.ec2.describe_volumes_modifications(VolumeIds=[vid])["VolumesModifications"][0]
        assert state["ModificationState"] == "modifying" and state["Progress"] == 0
        with a.unchanged():
            resp = expect_error(a.ec2.modify_volume, "IncorrectModificationState", 400, VolumeId=vid, Size=6)
        assert "MODIFYING" in resp["Error"]["Message"]
        clock.now += 30
        assert a.ec2.describe_volumes_modifications(VolumeIds=[vid])["VolumesModifications"][0]["Progress"] == 25
        clock.now += 60
        got = a.ec2.describe_volumes_modifications(
            Filters=[{"Name": "modification-state", "Values": ["optimizing"]}])["VolumesModifications"]
        assert [m["VolumeId"] for m in got] == [vid]
        resp = expect_error(a.ec2.modify_volume, "IncorrectModificationState", 400, VolumeId=vid, Size=6)
        assert "OPTIMIZING" in resp["Error"]["Message"]
        clock.now += 120
        got = a.ec2.describe_volumes_modifications(
            Filters=[{"Name": "modification-state", "Values": ["completed"]}])["VolumesModifications"]
        assert [m["VolumeId"] for m in got] == [vid]
        assert got[0]["EndTime"].timestamp() == pytest.approx(got[0]["StartTime"].timestamp() + 180, abs=1)
        a.ec2.modify_volume(VolumeId=vid, Size=6)
        # the rate limit counts a rolling window: 4 in 24 h, the 5th waits until the 1st ages out
        for size in (7, 8):
            clock.now += 200
            a.ec2.modify_volume(VolumeId=vid, Size=size)
        clock.now += 200
        expect_error(a.ec2.modify_volume, "VolumeModificationRateExceeded", 400, VolumeId=vid, Size=9)
        clock.now += 86400
        a.ec2.modify_volume(VolumeId=vid, Size=9)
    finally:
        a.stop()


def test_describe_volumes_modifications_filters_and_pages(aws: Aws) -> None:
    vols = [aws.volume(1) for _ in range(3)]
    for v in vols:
        aws.ec2.modify_volume(VolumeId=v, Size=2)
    aws.ec2.modify_volume(VolumeId=vols[0], VolumeType="gp3")
    got = aws.ec2.describe_volumes_modifications(
        Filters=[{"Name": "target-volume-type", "Values": ["gp3"]}])["VolumesModifications"]
    assert [m["VolumeId"] for m in got] == [vols[0]]           # latest modification per volume
    page = aws.ec2.describe_volumes_modifications(MaxResults=2)
    rest = aws.ec2.describe_volumes_modifications(MaxResults=2, NextToken=page["NextToken"])
    assert len(page["VolumesModifications"]) == 2 and len(rest["VolumesModifications"]) == 1
    assert "NextToken" not in rest
    expect_error(aws.ec2.describe_volumes_modifications, "InvalidVolume.NotFound", 400,
                 VolumeIds=["vol-0000000000000dead"])
    never = aws.volume(1)
    r = expect_error(aws.ec2.describe_volumes_modifications, "InvalidVolumeModification.NotFound", 400,
                     VolumeIds=[vols[1], never])
    assert r["Error"]["Message"] == f"Modification for volume '{never}' does not exist."
    assert never not in {m["VolumeId"] for m in aws.ec2.describe_volumes_modifications()["VolumesModifications"]}


# --- snapshots -----------------------------------------------------------------------------


def test_snapshot_create_describe_delete(aws: Aws) -> None:
    vid = aws.volume(2)
    aws.write(vid, 0, b"x" * 4096)
    snap = aws.ec2.create_snapshot(VolumeId=vid, Description="nightly", TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": [{"Key": "k", "Value": "v"}]}])
    assert snap["State"] == "pending" and snap["VolumeId"] == vid and snap["VolumeSize"] == 2
    assert snap["OwnerId"] == "123456789012" and snap["Tags"] == [{"Key": "k", "Value": "v"}]
    (d,) = aws.ec2.describe_snapshots(SnapshotIds=[snap["SnapshotId"]])["Snapshots"]
    assert (d["State"], d["Progress"], d["Description"]) == ("completed", "100%", "nightly")
    assert d["StorageTier"] == "standard" and d["FullSnapshotSizeInBytes"] > 0
    with aws.unchanged():
        expect_error(aws.ec2.create_snapshot, "InvalidVolume.NotFound", 400, VolumeId="vol-0000000000000dead")
        expect_error(aws.ec2.create_snapshot, "InvalidParameterValue", 400, VolumeId=vid, TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": "k", "Value": "v"}]}])
        expect_error(aws.ec2.describe_snapshots, "InvalidSnapshot.NotFound", 400,
                     SnapshotIds=["snap-0000000000000dead"])
        expect_error(aws.ec2.delete_snapshot, "InvalidSnapshot.NotFound", 400, SnapshotId="snap-0000000000000dead")
    aws.ec2.delete_snapshot(SnapshotId=snap["SnapshotId"])
    expect_error(aws.ec2.describe_snapshots, "InvalidSnapshot.NotFound", 400, SnapshotIds=[snap["SnapshotId"]])
    expect_error(aws.ec2.delete_snapshot, "InvalidSnapshot.NotFound", 400, SnapshotId=snap["SnapshotId"])


def test_describe_snapshots_filters_owners_pages(aws: Aws) -> None:
    v1, v2 = aws.volume(1), aws.volume(3)
    s1 = [aws.ec2.create_snapshot(VolumeId=v1, TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": [{"Key": "n", "Value": str(i)}]}])["SnapshotId"] for i in range(4)]
    s2 = [aws.ec2.create_snapshot(VolumeId=v2)["SnapshotId"] for _ in range(3)]

    def ids(**kw: Any) -> list[str]:
        return [s["SnapshotId"] for s in aws.ec2.describe_snapshots(**kw)["Snapshots"]]

    # Describe* list in id order (the engine's cursor order; AWS promises no order)
    assert ids(Filters=[{"Name": "volume-id", "Values": [v1]}]) == sorted(s1)
    assert ids(Filters=[{"Name": "volume-size", "Values": ["3"]}]) == sorted(s2)
    assert ids(Filters=[{"Name": "tag:n", "Values": ["1", "3"]}]) == sorted([s1[1], s1[3]])
    assert ids(Filters=[{"Name": "status", "Values": ["completed"]}, {"Name": "owner-id",
                                                                     "Values": ["123456789012"]}]) == sorted(s1 + s2)
    assert ids(OwnerIds=["self"]) == sorted(s1 + s2)
    assert ids(OwnerIds=["amazon"]) == []
    pages = list(aws.ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"], PaginationConfig={"PageSize": 5}))
    assert [len(p["Snapshots"]) for p in pages] == [5, 2]
    expect_error(aws.ec2.describe_snapshots, "InvalidParameterValue", 400,
                 Filters=[{"Name": "bogus", "Values": ["1"]}])


def test_copy_snapshot_and_cross_region_copy(aws: Aws) -> None:
    vid = aws.volume(1)
    aws.write(vid, 524288 * 2, b"copy me" * 100)
    sid = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    out = aws.ec2.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=sid, Description="copy",
                                TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "c", "Value": "1"}]}])
    cid = out["SnapshotId"]
    assert cid != sid and out["Tags"] == [{"Key": "c", "Value": "1"}]
    (c,) = aws.ec2.describe_snapshots(SnapshotIds=[cid])["Snapshots"]
    assert c["State"] == "completed" and c["Description"] == "copy"
    # copy into us-west-2 from us-east-1: visible only in the west
    west = aws.ec2_west.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=sid)["SnapshotId"]
    assert [s["SnapshotId"] for s in aws.ec2_west.describe_snapshots()["Snapshots"]] == [west]
    expect_error(aws.ec2.describe_snapshots, "InvalidSnapshot.NotFound", 400, SnapshotIds=[west])
    with aws.unchanged():
        expect_error(aws.ec2.copy_snapshot, "InvalidSnapshot.NotFound", 400, SourceRegion="us-west-2",
                     SourceSnapshotId=sid)
        expect_error(aws.ec2.copy_snapshot, "InvalidParameterDependency", 400, SourceRegion="us-east-1",
                     SourceSnapshotId=sid, KmsKeyId="alias/aws/ebs")
    with aws.engine.open_snapshot(west) as dev:
        assert dev.pread(700, 524288 * 2) == b"copy me" * 100


def test_snapshot_attributes(aws: Aws) -> None:
    sid = aws.ec2.create_snapshot(VolumeId=aws.volume())["SnapshotId"]
    got = aws.ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
    assert got["CreateVolumePermissions"] == [] and got["SnapshotId"] == sid
    aws.ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="add",
                                      UserIds=["111122223333"])
    aws.ec2.modify_snapshot_attribute(SnapshotId=sid, CreateVolumePermission={"Add": [{"Group": "all"}]})
    got = aws.ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
    assert got["CreateVolumePermissions"] == [{"Group": "all"}, {"UserId": "111122223333"}]
    aws.ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission", OperationType="remove",
                                      GroupNames=["all"])
    got = aws.ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
    assert got["CreateVolumePermissions"] == [{"UserId": "111122223333"}]
    assert aws.ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="productCodes")["ProductCodes"] == []
    other = aws.ec2.create_snapshot(VolumeId=aws.volume())["SnapshotId"]
    assert [s["SnapshotId"] for s in aws.ec2.describe_snapshots(RestorableByUserIds=["111122223333"])[
        "Snapshots"]] == [sid]
    assert {s["SnapshotId"] for s in aws.ec2.describe_snapshots(RestorableByUserIds=["self"])["Snapshots"]} == {
        sid, other}
    with aws.unchanged():
        expect_error(aws.ec2.modify_snapshot_attribute, "InvalidParameterValue", 400, SnapshotId=sid,
                     Attribute="createVolumePermission", OperationType="add", UserIds=["bob"])
        expect_error(aws.ec2.modify_snapshot_attribute, "InvalidSnapshot.NotFound", 400,
                     SnapshotId="snap-0000000000000dead", Attribute="createVolumePermission",
                     OperationType="add", GroupNames=["all"])


# --- tags ----------------------------------------------------------------------------------


def test_create_delete_describe_tags(aws: Aws) -> None:
    vid = aws.volume()
    sid = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    aws.ec2.create_tags(Resources=[vid, sid], Tags=[{"Key": "env", "Value": "prod"}, {"Key": "o", "Value": "me"}])
    rows = aws.ec2.describe_tags()["Tags"]
    assert {(r["ResourceId"], r["ResourceType"], r["Key"], r["Value"]) for r in rows} == {
        (vid, "volume", "env", "prod"), (vid, "volume", "o", "me"),
        (sid, "snapshot", "env", "prod"), (sid, "snapshot", "o", "me")}
    f = aws.ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["snapshot"]},
                                       {"Name": "key", "Values": ["env"]}])["Tags"]
    assert [(r["ResourceId"], r["Key"]) for r in f] == [(sid, "env")]
    assert len(aws.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [vid]}])["Tags"]) == 2
    assert len(aws.ec2.describe_tags(Filters=[{"Name": "value", "Values": ["m*"]}])["Tags"]) == 2
    page = aws.ec2.describe_tags(MaxResults=5)
    assert len(page["Tags"]) == 4 and "NextToken" not in page
    # Key+Value deletes only on a match, Key alone deletes whatever the value, no Tags deletes all
    aws.ec2.delete_tags(Resources=[vid], Tags=[{"Key": "env", "Value": "staging"}])
    assert aws.engine.get_volume(vid).tags == {"env": "prod", "o": "me"}
    aws.ec2.delete_tags(Resources=[vid], Tags=[{"Key": "env"}])
    assert aws.engine.get_volume(vid).tags == {"o": "me"}
    aws.ec2.delete_tags(Resources=[sid])
    assert aws.engine.get_snapshot(sid).tags == {}
    with aws.unchanged():
        expect_error(aws.ec2.create_tags, "InvalidParameterValue", 400, Resources=[vid],
                     Tags=[{"Key": "aws:x", "Value": "1"}])
        expect_error(aws.ec2.delete_tags, "InvalidParameterValue", 400, Resources=[vid],
                     Tags=[{"Key": "AWS:o"}])
        expect_error(aws.ec2.create_tags, "InvalidVolume.NotFound", 400, Resources=[vid, "vol-0000000000000dead"],
                     Tags=[{"Key": "a", "Value": "1"}])
        expect_error(aws.ec2.create_tags, "InvalidInstanceID.NotFound", 400, Resources=["i-0123456789abcdef0"],
                     Tags=[{"Key": "a", "Value": "1"}])
        expect_error(aws.ec2.create_tags, "InvalidID", 400, Resources=["nat-0123456789abcdef0"],
                     Tags=[{"Key": "a", "Value": "1"}])
        expect_error(aws.ec2.create_tags, "TagLimitExceeded", 400, Resources=[vid],
                     Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
        expect_error(aws.ec2.describe_tags, "InvalidParameterValue", 400, MaxResults=2)


def test_describe_tags_pagination(aws: Aws) -> None:
    vid = aws.volume()
    aws.ec2.create_tags(Resources=[vid], Tags=[{"Key": f"k{i:02d}", "Value": str(i)} for i in range(12)])
    keys = [t["Key"] for p in aws.ec2.get_paginator("describe_tags").paginate(PaginationConfig={"PageSize": 5})
            for t in p["Tags"]]
    assert keys == [f"k{i:02d}" for i in range(12)]


# --- instances, status ----------------------------------------------------


def test_attach_detach_and_create_snapshots_need_a_known_instance(aws: Aws) -> None:
    vid = aws.volume()
    with aws.unchanged():
        expect_error(aws.ec2.attach_volume, "InvalidInstanceID.NotFound", 400, VolumeId=vid,
                     InstanceId="i-0123456789abcdef0", Device="/dev/sdf")
        expect_error(aws.ec2.attach_volume, "InvalidInstanceID.Malformed", 400, VolumeId=vid,
                     InstanceId="instance-1", Device="/dev/sdf")
        expect_error(aws.ec2.attach_volume, "InvalidVolume.NotFound", 400, VolumeId="vol-0000000000000dead",
                     InstanceId="i-0123456789abcdef0", Device="/dev/sdf")
        expect_error(aws.ec2.detach_volume, "InvalidInstanceID.NotFound", 400, VolumeId=vid,
                     InstanceId="i-0123456789abcdef0")
        expect_error(aws.ec2.detach_volume, "IncorrectState", 400, VolumeId=vid)
        expect_error(aws.ec2.create_snapshots, "InvalidInstanceID.NotFound", 400,
                     InstanceSpecification={"InstanceId": "i-0123456789abcdef0"})


def test_attach_detach_with_an_instance(tmp_path: Any) -> None:
    a = Aws(str(tmp_path / "s"))
    try:
        vid, other = a.volume(), a.volume()
        iid = a.launch()
        att = a.ec2.attach_volume(VolumeId=vid, InstanceId=iid, Device="/dev/sdf")
        assert (att["State"], att["Device"], att["InstanceId"]) == ("attaching", "/dev/sdf", iid)
        (v,) = a.ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
        assert v["State"] == "in-use" and v["Attachments"][0]["State"] == "attached"
        a.ec2.get_waiter("volume_in_use").wait(VolumeIds=[vid])
        got = a.ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]
        (inst,) = a.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
        root = inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        assert {x["VolumeId"] for x in got} == {vid, root}
        with a.unchanged():
            expect_error(a.ec2.delete_volume, "VolumeInUse", 400, VolumeId=vid)
            expect_error(a.ec2.attach_volume, "VolumeInUse", 400, VolumeId=vid, InstanceId=iid, Device="/dev/sdg")
            expect_error(a.ec2.attach_volume, "InvalidParameterValue", 400, VolumeId=other, InstanceId=iid,
                         Device="/dev/bogus0")
        snaps = a.ec2.create_snapshots(InstanceSpecification={"InstanceId": iid, "ExcludeBootVolume": True},
                                       CopyTagsFromSource="volume")
        assert [s["VolumeId"] for s in snaps["Snapshots"]] == [vid]
        det = a.ec2.detach_volume(VolumeId=vid)
        assert det["State"] == "detaching"
        a.ec2.get_waiter("volume_available").wait(VolumeIds=[vid])
        a.ec2.delete_volume(VolumeId=vid)
    finally:
        a.stop()


def test_describe_volume_status(aws: Aws) -> None:
    vids = [aws.volume() for _ in range(6)]
    out = aws.ec2.describe_volume_status(VolumeIds=vids[:2])["VolumeStatuses"]
    assert [s["VolumeId"] for s in out] == vids[:2]
    assert out[0]["VolumeStatus"]["Status"] == "ok"
    assert {d["Name"] for d in out[0]["VolumeStatus"]["Details"]} == {"io-enabled", "io-performance"}
    pages = list(aws.ec2.get_paginator("describe_volume_status").paginate(PaginationConfig={"PageSize": 5}))
    assert [len(p["VolumeStatuses"]) for p in pages] == [5, 1]
    got = aws.ec2.describe_volume_status(Filters=[{"Name": "volume-status.status", "Values": ["impaired"]}])
    assert got["VolumeStatuses"] == []
    expect_error(aws.ec2.describe_volume_status, "InvalidVolume.NotFound", 400, VolumeIds=["vol-0000000000000dead"])


# --- regions, protocol, restart --------------------------------------------------------------


def test_resources_are_scoped_to_the_signing_region(aws: Aws) -> None:
    east = aws.volume()
    west = aws.ec2_west.create_volume(AvailabilityZone="us-west-2b", Size=1)["VolumeId"]
    assert [v["VolumeId"] for v in aws.ec2.describe_volumes()["Volumes"]] == [east]
    assert [v["VolumeId"] for v in aws.ec2_west.describe_volumes()["Volumes"]] == [west]
    expect_error(aws.ec2_west.describe_volumes, "InvalidVolume.NotFound", 400, VolumeIds=[east])
    expect_error(aws.ec2_west.delete_volume, "InvalidVolume.NotFound", 400, VolumeId=east)
    expect_error(aws.ec2_west.create_volume, "InvalidParameterValue", 400, AvailabilityZone=AZ, Size=1)
    ws = aws.ec2_west.create_snapshot(VolumeId=west)["SnapshotId"]
    assert aws.ec2.describe_snapshots()["Snapshots"] == []
    expect_error(aws.ec2.create_volume, "InvalidSnapshot.NotFound", 400, AvailabilityZone=AZ, SnapshotId=ws)
    expect_error(aws.ebs.list_snapshot_blocks, "ResourceNotFoundException", 404, SnapshotId=ws)
    assert aws.ec2_west.describe_tags()["Tags"] == []


def _post(url: str, body: str) -> tuple[int, ET.Element]:
    req = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, ET.fromstring(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, ET.fromstring(err.read())


def test_wire_format_of_success_and_error(aws: Aws) -> None:
    ns = "{http://ec2.amazonaws.com/doc/2016-11-15/}"
    status, root = _post(aws.url + "/", "Action=CreateVolume&Version=2016-11-15&AvailabilityZone=us-east-1a"
                                        "&Size=10&VolumeType=gp3&TagSpecification.1.ResourceType=volume"
                                        "&TagSpecification.1.Tag.1.Key=Name&TagSpecification.1.Tag.1.Value=data")
    assert status == 200 and root.tag == ns + "CreateVolumeResponse"
    assert root[0].tag == ns + "requestId"
    assert root.find(ns + "status").text == "creating"  # type: ignore[union-attr]
    assert root.find(f"{ns}tagSet/{ns}item/{ns}key").text == "Name"  # type: ignore[union-attr]
    vid = root.find(ns + "volumeId").text  # type: ignore[union-attr]
    status, root = _post(aws.url + "/", f"Action=DeleteVolume&Version=2016-11-15&VolumeId={vid}")
    assert status == 200 and root.find(ns + "return").text == "true"  # type: ignore[union-attr]
    for body, code in [
        (f"Action=DeleteVolume&Version=2016-11-15&VolumeId={vid}", "InvalidVolume.NotFound"),
        ("Action=DeleteVolume&Version=2016-11-15", "MissingParameter"),
        ("Action=CreateVolume&Version=2016-11-15&AvailabilityZone=us-east-1a&Size=ten", "InvalidParameterValue"),
        ("Action=RunInstances&Version=2016-11-15", "MissingParameter"),
        ("Action=NoSuchThing&Version=2016-11-15", "InvalidAction"),
        ("Version=2016-11-15", "MissingAction"),
    ]:
        status, root = _post(aws.url + "/", body)
        assert status == 400 and root.tag == "Response", body
        assert root.find("Errors/Error/Code").text == code, body  # type: ignore[union-attr]
        assert root.find("Errors/Error/Message") is not None and root.find("RequestID") is not None


def test_state_survives_restart(aws: Aws) -> None:
    vid = aws.ec2.create_volume(AvailabilityZone=AZ, Size=4, ClientToken="keep-me", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "1"}]}])["VolumeId"]
    aws.write(vid, 0, b"persist" * 1000)
    aws.ec2.modify_volume(VolumeId=vid, Size=6)
    sid = aws.ec2.create_snapshot(VolumeId=vid, Description="d")["SnapshotId"]
    aws.ec2.modify_snapshot_attribute(SnapshotId=sid, CreateVolumePermission={"Add": [{"UserId": "111122223333"}]})
    west = aws.ec2_west.create_volume(AvailabilityZone="us-west-2a", Size=1)["VolumeId"]
    before = (aws.ec2.describe_volumes()["Volumes"], aws.ec2.describe_snapshots()["Snapshots"],
              aws.ec2.describe_tags()["Tags"], aws.ec2.describe_volumes_modifications()["VolumesModifications"])
    aws.restart()
    after = (aws.ec2.describe_volumes()["Volumes"], aws.ec2.describe_snapshots()["Snapshots"],
             aws.ec2.describe_tags()["Tags"], aws.ec2.describe_volumes_modifications()["VolumesModifications"])
    assert after == before
    assert [v["VolumeId"] for v in aws.ec2_west.describe_volumes()["Volumes"]] == [west]
    again = aws.ec2.create_volume(AvailabilityZone=AZ, Size=4, ClientToken="keep-me", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "1"}]}])
    assert again["VolumeId"] == vid
    perms = aws.ec2.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == [{"UserId": "111122223333"}]
    with aws.engine.open_snapshot(sid) as dev:
        assert dev.pread(7000, 0) == b"persist" * 1000


class _RefuseWithoutScope:
    """A stand-in signature checker: proves the hook sees every request before any model runs."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool]] = []

    requires_signature = True

    def verify(self, environ: dict[str, Any], service: str, region: str, payload: Any, *,
               unsigned_payload: bool = False) -> str | None:
        from ebsengine.aws.errors import ApiError

        self.seen.append((service, region, payload is not None))
        if "Credential=AKIDBAD/" in environ.get("HTTP_AUTHORIZATION", ""):
            raise ApiError("AuthFailure", "AWS was not able to validate the provided access credentials",
                           status=401)
        return None


def test_authenticator_hook_can_refuse(tmp_path: Any) -> None:
    import boto3

    auth = _RefuseWithoutScope()
    a = Aws(str(tmp_path / "s"), authenticator=auth)
    try:
        a.volume()
        assert ("ec2", "us-east-1", True) in auth.seen
        a.ebs.start_snapshot(VolumeSize=1)
        assert ("ebs", "us-east-1", True) in auth.seen
        bad = boto3.client("ec2", endpoint_url=a.url, region_name="us-east-1", aws_access_key_id="AKIDBAD",
                           aws_secret_access_key="x")
        with a.unchanged():
            expect_error(bad.create_volume, "AuthFailure", 401, AvailabilityZone=AZ, Size=1)
    finally:
        a.stop()
