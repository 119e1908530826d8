"""AMI actions through boto3 against a real server: RegisterImage from a snapshot holding real
bytes, DescribeImages (filters, owners, pagination, waiter), DeregisterImage, CopyImage within
and across regions, image attributes, InvalidSnapshot.InUse; restarts between steps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ebsengine.cloud import Cloud, CloudConfig
from test_aws_support import Aws, aws, expect_error  # noqa: F401  (fixture)

DATA = bytes(range(256)) * 512  # 128 KiB of known bytes at offset 1 MiB
OFFSET = 1 << 20


def snapshot_with_bytes(aws: Aws, size: int = 2) -> str:
    vid = aws.volume(size)
    aws.write(vid, OFFSET, DATA)
    return str(aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"])


def register(aws: Aws, sid: str, name: str = "base image", **kw: Any) -> str:
    args: dict[str, Any] = {
        "Name": name, "RootDeviceName": "/dev/xvda", "Architecture": "x86_64",
        "VirtualizationType": "hvm",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}}]}
    args.update(kw)
    return str(aws.ec2.register_image(**args)["ImageId"])


def image(aws: Aws, iid: str, client: Any = None) -> dict[str, Any]:
    (img,) = (client or aws.ec2).describe_images(ImageIds=[iid])["Images"]
    return dict(img)


def test_register_then_describe_every_field(aws: Aws) -> None:
    sid = snapshot_with_bytes(aws)
    iid = register(aws, sid, Description="the base", EnaSupport=True, BootMode="uefi",
                   ImdsSupport="v2.0",
                   BlockDeviceMappings=[
                       {"DeviceName": "/dev/xvda",
                        "Ebs": {"SnapshotId": sid, "VolumeSize": 8, "VolumeType": "gp3",
                                "DeleteOnTermination": False}},
                       {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}],
                   TagSpecifications=[{"ResourceType": "image",
                                       "Tags": [{"Key": "Name", "Value": "base"}]}])
    aws.restart()
    img = image(aws, iid)
    assert img["ImageLocation"] == "123456789012/base image"
    assert (img["State"], img["OwnerId"], img["Public"]) == ("available", "123456789012", False)
    assert (img["Architecture"], img["VirtualizationType"], img["Hypervisor"]) == (
        "x86_64", "hvm", "xen")
    assert (img["ImageType"], img["RootDeviceType"], img["RootDeviceName"]) == (
        "machine", "ebs", "/dev/xvda")
    assert (img["Name"], img["Description"]) == ("base image", "the base")
    assert img["EnaSupport"] is True and img["BootMode"] == "uefi"
    assert img["ImdsSupport"] == "v2.0"
    assert (img["PlatformDetails"], img["UsageOperation"]) == ("Linux/UNIX", "RunInstances")
    assert img["CreationDate"].endswith("Z") and "T" in img["CreationDate"]
    assert img["Tags"] == [{"Key": "Name", "Value": "base"}]
    assert "DeprecationTime" not in img
    assert img["BlockDeviceMappings"] == [
        {"DeviceName": "/dev/xvda",
         "Ebs": {"SnapshotId": sid, "VolumeSize": 8, "VolumeType": "gp3",
                 "DeleteOnTermination": False, "Iops": 3000, "Throughput": 125,
                 "Encrypted": False}},
        {"DeviceName": "/dev/sdb", "VirtualName": "ephemeral0"}]
    aws.ec2.get_waiter("image_available").wait(ImageIds=[iid], WaiterConfig={"Delay": 0})
    # the image's snapshot still holds the volume's bytes
    with aws.engine.open_snapshot(sid) as dev:
        assert dev.pread(len(DATA), OFFSET) == DATA


def test_register_defaults_are_awss(aws: Aws) -> None:
    sid = snapshot_with_bytes(aws, size=3)
    iid = aws.ec2.register_image(
        Name="defaults", RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": sid}}])["ImageId"]
    img = image(aws, iid)
    assert (img["Architecture"], img["VirtualizationType"]) == ("i386", "paravirtual")
    assert img["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 3
    assert "EnaSupport" not in img and "Description" not in img


@pytest.mark.parametrize("change, code", [
    ({"Name": "a" * 129}, "InvalidAMIName.Malformed"),
    ({"Name": "no*stars"}, "InvalidAMIName.Malformed"),
    ({"RootDeviceName": "/dev/xvdz"}, "InvalidBlockDeviceMapping"),
    ({"RootDeviceName": None}, "MissingParameter"),
    ({"BlockDeviceMappings": None}, "MissingParameter"),
    ({"ebs": {"VolumeSize": 1}}, "InvalidBlockDeviceMapping"),
    ({"ebs": {"Encrypted": False}}, "InvalidBlockDeviceMapping"),
    ({"ebs": {"SnapshotId": "snap-0123456789abcdef0"}}, "InvalidSnapshot.NotFound"),
    ({"ebs": {"SnapshotId": "snap-zz"}}, "InvalidSnapshotID.Malformed"),
    ({"Architecture": "sparc"}, "InvalidParameterValue"),
    ({"TagSpecifications": [{"ResourceType": "snapshot", "Tags": [{"Key": "a", "Value": "b"}]}]},
     "InvalidParameterValue"),
])
def test_register_refused(aws: Aws, change: dict[str, Any], code: str) -> None:
    sid = snapshot_with_bytes(aws)
    args: dict[str, Any] = {
        "Name": "refused", "RootDeviceName": "/dev/xvda",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}}]}
    ebs = change.pop("ebs", None)
    if ebs is not None:
        args["BlockDeviceMappings"] = [{"DeviceName": "/dev/xvda",
                                        "Ebs": {"SnapshotId": sid, "VolumeSize": 2, **ebs}}]
    args.update(change)
    args = {k: v for k, v in args.items() if v is not None}
    with aws.unchanged():
        expect_error(aws.ec2.register_image, code, 400, **args)


def test_register_refuses_a_snapshot_of_another_region_and_duplicates(aws: Aws) -> None:
    sid = snapshot_with_bytes(aws)
    register(aws, sid)
    with aws.unchanged():
        expect_error(aws.ec2.register_image, "InvalidAMIName.Duplicate", 400, Name="base image",
                     RootDeviceName="/dev/xvda",
                     BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}}])
        expect_error(aws.ec2_west.register_image, "InvalidSnapshot.NotFound", 400, Name="west",
                     RootDeviceName="/dev/xvda",
                     BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}}])


def test_describe_unknown_and_malformed_ids(aws: Aws) -> None:
    iid = register(aws, snapshot_with_bytes(aws))
    with aws.unchanged():
        expect_error(aws.ec2.describe_images, "InvalidAMIID.NotFound", 400,
                     ImageIds=[iid, "ami-0123456789abcdef0"])
        expect_error(aws.ec2.describe_images, "InvalidAMIID.Malformed", 400, ImageIds=["ami-x"])
        expect_error(aws.ec2_west.describe_images, "InvalidAMIID.NotFound", 400, ImageIds=[iid])
        expect_error(aws.ec2.describe_images, "InvalidParameterValue", 400,
                     Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
        expect_error(aws.ec2.describe_images, "InvalidUserID.Malformed", 400, Owners=["bob"])


@pytest.fixture
def two(aws: Aws) -> Iterator[tuple[Aws, str, str, str, str]]:
    s1, s2 = snapshot_with_bytes(aws, 2), snapshot_with_bytes(aws, 3)
    a = register(aws, s1, name="alpha", Description="first",
                 TagSpecifications=[{"ResourceType": "image",
                                     "Tags": [{"Key": "env", "Value": "prod"}]}])
    b = aws.ec2.register_image(
        Name="beta", RootDeviceName="/dev/sda1", Architecture="arm64",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1",
                              "Ebs": {"SnapshotId": s2, "VolumeType": "gp3",
                                      "DeleteOnTermination": False}}])["ImageId"]
    yield aws, a, b, s1, s2


@pytest.mark.parametrize("name, values, want", [
    ("image-id", ["{a}"], "a"),
    ("name", ["al*"], "a"),
    ("state", ["available"], "ab"),
    ("owner-id", ["123456789012"], "ab"),
    ("architecture", ["arm64"], "b"),
    ("root-device-type", ["ebs"], "ab"),
    ("root-device-name", ["/dev/sda1"], "b"),
    ("block-device-mapping.snapshot-id", ["{s1}"], "a"),
    ("block-device-mapping.device-name", ["/dev/xvda"], "a"),
    ("block-device-mapping.volume-size", ["3"], "b"),
    ("block-device-mapping.volume-type", ["gp3"], "b"),
    ("block-device-mapping.delete-on-termination", ["false"], "b"),
    ("is-public", ["false"], "ab"),
    ("is-public", ["true"], ""),
    ("virtualization-type", ["paravirtual"], "b"),
    ("description", ["first"], "a"),
    ("image-type", ["machine"], "ab"),
    ("tag:env", ["prod"], "a"),
    ("tag-key", ["env"], "a"),
])
def test_describe_filters(two: tuple[Aws, str, str, str, str], name: str, values: list[str],
                          want: str) -> None:
    aws, a, b, s1, s2 = two
    ids = {"a": a, "b": b, "s1": s1, "s2": s2}
    vals = [v.format(**ids) for v in values]
    got = aws.ec2.describe_images(Filters=[{"Name": name, "Values": vals}])["Images"]
    assert sorted(i["ImageId"] for i in got) == sorted(ids[c] for c in want)


def test_describe_owners_executable_users_and_pages(two: tuple[Aws, str, str, str, str]) -> None:
    aws, a, b, _, _ = two
    assert {i["ImageId"] for i in aws.ec2.describe_images(Owners=["self"])["Images"]} == {a, b}
    assert {i["ImageId"] for i in
            aws.ec2.describe_images(Owners=["123456789012"])["Images"]} == {a, b}
    assert aws.ec2.describe_images(Owners=["amazon"])["Images"] == []
    assert aws.ec2.describe_images(ExecutableUsers=["all"])["Images"] == []
    aws.ec2.modify_image_attribute(ImageId=a, LaunchPermission={"Add": [{"Group": "all"}]})
    assert [i["ImageId"] for i in aws.ec2.describe_images(ExecutableUsers=["all"])["Images"]] == [a]
    assert image(aws, a)["Public"] is True
    first = aws.ec2.describe_images(MaxResults=1)
    assert len(first["Images"]) == 1 and first["NextToken"]
    aws.restart()
    second = aws.ec2.describe_images(MaxResults=1, NextToken=first["NextToken"])
    assert len(second["Images"]) == 1 and "NextToken" not in second
    assert {first["Images"][0]["ImageId"], second["Images"][0]["ImageId"]} == {a, b}
    pages = aws.ec2.get_paginator("describe_images").paginate(PaginationConfig={"PageSize": 1})
    assert sorted(i["ImageId"] for p in pages for i in p["Images"]) == sorted([a, b])
    with aws.unchanged():
        expect_error(aws.ec2.describe_images, "InvalidParameterCombination", 400,
                     ImageIds=[a], MaxResults=5)
        expect_error(aws.ec2_west.describe_images, "InvalidParameterValue", 400,
                     MaxResults=1, NextToken=first["NextToken"])


def test_snapshot_in_use_until_deregistered(aws: Aws) -> None:
    sid = snapshot_with_bytes(aws)
    iid = register(aws, sid)
    aws.restart()
    with aws.unchanged():
        err = expect_error(aws.ec2.delete_snapshot, "InvalidSnapshot.InUse", 400, SnapshotId=sid)
    assert err["Error"]["Message"] == f"The snapshot {sid} is currently in use by {iid}"
    out = aws.ec2.deregister_image(ImageId=iid)
    assert out["Return"] is True and "DeleteSnapshotResults" not in out
    assert image(aws, iid)["State"] == "deregistered"
    aws.ec2.delete_snapshot(SnapshotId=sid)  # kept by the deregister, free to go now
    assert Cloud(aws.engine).check() == []


def test_deregister_with_snapshots_keeps_a_shared_one(aws: Aws) -> None:
    own, shared = snapshot_with_bytes(aws), snapshot_with_bytes(aws)
    a = register(aws, own, name="image a",
                 BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": own}},
                                      {"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": shared}}])
    b = register(aws, shared, name="image b")
    out = aws.ec2.deregister_image(ImageId=a, DeleteAssociatedSnapshots=True)
    assert out["Return"] is True
    assert out["DeleteSnapshotResults"] == [{"SnapshotId": own, "ReturnCode": "success"},
                                            {"SnapshotId": shared, "ReturnCode": "skipped"}]
    aws.restart()
    expect_error(aws.ec2.describe_snapshots, "InvalidSnapshot.NotFound", 400, SnapshotIds=[own])
    assert aws.ec2.describe_snapshots(SnapshotIds=[shared])["Snapshots"]
    with aws.unchanged():
        expect_error(aws.ec2.deregister_image, "InvalidAMIID.Unavailable", 400, ImageId=a)
        expect_error(aws.ec2.deregister_image, "InvalidAMIID.NotFound", 400,
                     ImageId="ami-0123456789abcdef0")
        expect_error(aws.ec2.deregister_image, "InvalidAMIID.Malformed", 400, ImageId="ami")
        expect_error(aws.ec2.delete_snapshot, "InvalidSnapshot.InUse", 400, SnapshotId=shared)
    assert image(aws, b)["State"] == "available"


def test_deregistered_image_vanishes_after_its_window(tmp_path: Any) -> None:
    now = [1_800_000_000.0]
    a = Aws(str(tmp_path / "store"), clock=lambda: now[0],
            cloud_config=CloudConfig(deregistered_visible_seconds=60))
    try:
        iid = register(a, snapshot_with_bytes(a))
        a.ec2.deregister_image(ImageId=iid)
        assert image(a, iid)["State"] == "deregistered"
        now[0] += 61
        with a.unchanged():
            expect_error(a.ec2.describe_images, "InvalidAMIID.NotFound", 400, ImageIds=[iid])
            assert a.ec2.describe_images()["Images"] == []
    finally:
        a.stop()


def test_copy_image_within_and_across_regions(aws: Aws) -> None:
    sid = snapshot_with_bytes(aws)
    src = register(aws, sid, TagSpecifications=[{"ResourceType": "image",
                                                 "Tags": [{"Key": "team", "Value": "a"}]}])
    local = aws.ec2.copy_image(SourceImageId=src, SourceRegion="us-east-1", Name="local copy",
                               Description="same region")["ImageId"]
    west = aws.ec2_west.copy_image(
        SourceImageId=src, SourceRegion="us-east-1", Name="west copy", CopyImageTags=True,
        ClientToken="copy-west-1",
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "c", "Value": "1"}]}]
    )["ImageId"]
    again = aws.ec2_west.copy_image(
        SourceImageId=src, SourceRegion="us-east-1", Name="west copy", CopyImageTags=True,
        ClientToken="copy-west-1",
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "c", "Value": "1"}]}]
    )["ImageId"]
    assert again == west
    aws.restart()
    li = image(aws, local)
    assert li["SourceImageId"] == src and li["SourceImageRegion"] == "us-east-1"
    assert li["Description"] == "same region" and "Tags" not in li
    wi = image(aws, west, aws.ec2_west)
    assert wi["SourceImageRegion"] == "us-east-1" and wi["Tags"] == [{"Key": "team", "Value": "a"}]
    expect_error(aws.ec2.describe_images, "InvalidAMIID.NotFound", 400, ImageIds=[west])
    for img, client in ((li, aws.ec2), (wi, aws.ec2_west)):
        new_sid = img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        assert new_sid != sid
        (snap,) = client.describe_snapshots(SnapshotIds=[new_sid])["Snapshots"]
        assert snap["State"] == "completed" and snap["VolumeSize"] == 2
        with aws.engine.open_snapshot(new_sid) as dev:
            assert dev.pread(len(DATA), OFFSET) == DATA
        expect_error(client.delete_snapshot, "InvalidSnapshot.InUse", 400, SnapshotId=new_sid)
    west_snap = wi["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert aws.ec2_west.describe_snapshots(SnapshotIds=[west_snap])["Snapshots"][0]["Tags"] == [
        {"Key": "c", "Value": "1"}]
    aws.ec2_west.get_waiter("image_available").wait(ImageIds=[west], WaiterConfig={"Delay": 0})


@pytest.mark.parametrize("change, code", [
    ({"SourceImageId": "ami-0123456789abcdef0"}, "InvalidAMIID.NotFound"),
    ({"SourceImageId": "nope"}, "InvalidAMIID.Malformed"),
    ({"SourceRegion": "us-west-2"}, "InvalidAMIID.NotFound"),
    ({"Name": "bad|name"}, "InvalidAMIName.Malformed"),
    ({"Name": "base image"}, "InvalidAMIName.Duplicate"),
    ({"KmsKeyId": "alias/aws/ebs"}, "InvalidParameterDependency"),
    ({"Encrypted": True, "KmsKeyId": "alias/nope"}, "InvalidParameterValue"),
    ({"TagSpecifications": [{"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "b"}]}]},
     "InvalidParameterValue"),
])
def test_copy_image_refused(aws: Aws, change: dict[str, Any], code: str) -> None:
    src = register(aws, snapshot_with_bytes(aws))
    args = {"SourceImageId": src, "SourceRegion": "us-east-1", "Name": "copy", **change}
    with aws.unchanged():
        expect_error(aws.ec2.copy_image, code, 400, **args)


def test_image_attributes(aws: Aws) -> None:
    iid = register(aws, snapshot_with_bytes(aws), Description="old", SriovNetSupport="simple")

    def attr(name: str) -> Any:
        out = aws.ec2.describe_image_attribute(ImageId=iid, Attribute=name)
        out.pop("ResponseMetadata")
        assert out.pop("ImageId") == iid
        return out

    assert attr("description") == {"Description": {"Value": "old"}}
    assert attr("kernel") == {"KernelId": {}}
    assert attr("ramdisk") == {"RamdiskId": {}}
    assert attr("sriovNetSupport") == {"SriovNetSupport": {"Value": "simple"}}
    assert attr("bootMode") == {"BootMode": {}}
    assert attr("launchPermission") == {"LaunchPermissions": []}
    assert attr("productCodes") == {"ProductCodes": []}
    with aws.unchanged():
        expect_error(aws.ec2.describe_image_attribute, "AuthFailure", 401, ImageId=iid,
                     Attribute="blockDeviceMapping")
    aws.ec2.modify_image_attribute(ImageId=iid, Description={"Value": "new"})
    aws.ec2.modify_image_attribute(ImageId=iid, Attribute="launchPermission",
                                   OperationType="add", UserIds=["111122223333"])
    aws.ec2.modify_image_attribute(ImageId=iid, LaunchPermission={
        "Add": [{"Group": "all"}, {"UserId": "444455556666"}]})
    aws.restart()
    assert attr("description") == {"Description": {"Value": "new"}}
    assert attr("launchPermission") == {"LaunchPermissions": [
        {"Group": "all"}, {"UserId": "111122223333"}, {"UserId": "444455556666"}]}
    aws.ec2.modify_image_attribute(ImageId=iid, LaunchPermission={
        "Remove": [{"UserId": "111122223333"}]})
    assert attr("launchPermission") == {"LaunchPermissions": [
        {"Group": "all"}, {"UserId": "444455556666"}]}
    aws.ec2.reset_image_attribute(ImageId=iid, Attribute="launchPermission")
    assert attr("launchPermission") == {"LaunchPermissions": []}
    assert image(aws, iid)["Public"] is False
    with aws.unchanged():
        expect_error(aws.ec2.modify_image_attribute, "InvalidAMIAttributeItemValue", 400,
                     ImageId=iid, LaunchPermission={"Add": [{"UserId": "123"}]})
        expect_error(aws.ec2.modify_image_attribute, "InvalidParameterValue", 400,
                     ImageId=iid, Attribute="kernel", Value="aki-12345678")
        expect_error(aws.ec2.modify_image_attribute, "MissingParameter", 400, ImageId=iid,
                     Attribute="launchPermission", UserIds=["111122223333"])
        expect_error(aws.ec2.modify_image_attribute, "InvalidAMIID.NotFound", 400,
                     ImageId="ami-0123456789abcdef0", Description={"Value": "x"})
        expect_error(aws.ec2.reset_image_attribute, "InvalidParameterValue", 400,
                     ImageId=iid, Attribute="description")


def test_create_tags_on_an_image(aws: Aws) -> None:
    iid = register(aws, snapshot_with_bytes(aws))
    aws.ec2.create_tags(Resources=[iid], Tags=[{"Key": "k", "Value": "v"}])
    aws.restart()
    assert image(aws, iid)["Tags"] == [{"Key": "k", "Value": "v"}]
    got = aws.ec2.describe_images(Filters=[{"Name": "tag:k", "Values": ["v"]}])["Images"]
    assert [i["ImageId"] for i in got] == [iid]
