"""EC2 instances through boto3 against a real server: launch from an AMI's snapshot (the
bytes arrive on the root volume), the state machine and its waiters, volumes and
interfaces that come and go with the instance, attributes, and refusals that change
nothing."""

from __future__ import annotations

import time
from typing import Any

from ebsengine.cloud import CloudConfig
from ebsengine.cloud.model import Address
from ebsengine.rules import new_id
from test_aws_support import Aws, aws, expect_error, put_image  # noqa: F401  (fixture)

AZ = "us-east-1a"
MIB = 1024 * 1024


def _inst(a: Aws, iid: str) -> dict[str, Any]:
    (res,) = a.ec2.describe_instances(InstanceIds=[iid])["Reservations"]
    (inst,) = res["Instances"]
    return dict(inst)


def _root(a: Aws, iid: str) -> str:
    inst = _inst(a, iid)
    return str(next(b["Ebs"]["VolumeId"] for b in inst["BlockDeviceMappings"]
                    if b["DeviceName"] == inst["RootDeviceName"]))


def _read(a: Aws, vid: str, off: int, n: int) -> bytes:
    with a.engine.open_volume(vid) as dev:
        return bytes(dev.pread(n, off))


def _check(a: Aws) -> None:
    assert a.cloud.check() == []
    assert a.engine.fsck().ok


# --- data through the layers --------------------------------------------------------------


def test_bytes_of_an_ami_reach_the_root_volume_and_a_created_image(tmp_path: Any) -> None:
    a = Aws(str(tmp_path / "s"))
    try:
        data = bytes(range(256)) * 64 * 3                    # 48 KiB, not chunk-aligned
        ami = a.image(data, offset=MIB + 512, size=2)
        a.restart()
        res = a.ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro")
        iid = res["Instances"][0]["InstanceId"]
        assert res["Instances"][0]["State"] == {"Code": 0, "Name": "pending"}
        a.restart()
        root = _root(a, iid)
        assert _read(a, root, MIB + 512, len(data)) == data
        assert _read(a, root, 0, 4096) == bytes(4096)        # never written: zeros
        (vol,) = a.ec2.describe_volumes(VolumeIds=[root])["Volumes"]
        assert vol["Size"] == 2 and vol["State"] == "in-use" and vol["AvailabilityZone"] == AZ
        assert vol["Attachments"][0]["InstanceId"] == iid
        assert vol["Attachments"][0]["Device"] == "/dev/xvda"
        assert vol["Attachments"][0]["DeleteOnTermination"] is True
        # the guest writes; CreateImage freezes it; a new instance boots from that
        mine = b"written by the first instance" * 100
        a.write(root, 5 * MIB, mine)
        image_id = a.ec2.create_image(InstanceId=iid, Name="after write",
                                      TagSpecifications=[{"ResourceType": "image", "Tags": [
                                          {"Key": "k", "Value": "v"}]}])["ImageId"]
        a.write(root, 5 * MIB, b"X" * len(mine))         # after the image: not in it
        img = a.cloud.image_table.get(image_id)
        assert img is not None and img.source_instance_id == iid and img.tags == {"k": "v"}
        assert img.root_device_name == "/dev/xvda"
        (m,) = img.block_device_mappings
        assert m["DeviceName"] == "/dev/xvda" and m["Ebs"]["VolumeSize"] == 2
        assert m["Ebs"]["DeleteOnTermination"] is True
        snaps = {s["SnapshotId"] for s in a.ec2.describe_snapshots()["Snapshots"]}
        assert m["Ebs"]["SnapshotId"] in snaps
        a.restart()
        iid2 = a.launch(ImageId=image_id)
        root2 = _root(a, iid2)
        assert root2 != root
        assert _read(a, root2, MIB + 512, len(data)) == data
        assert _read(a, root2, 5 * MIB, len(mine)) == mine
        assert _read(a, root, 5 * MIB, len(mine)) == b"X" * len(mine)
        with a.unchanged():
            expect_error(a.ec2.create_image, "InvalidAMIName.Duplicate", 400, InstanceId=iid2,
                         Name="after write")
            expect_error(a.ec2.create_image, "InvalidAMIName.Malformed", 400, InstanceId=iid2,
                         Name="bad*name")
        _check(a)
    finally:
        a.stop()


def test_library_api_runs_the_same_rules(tmp_path: Any) -> None:
    a = Aws(str(tmp_path / "s"))
    try:
        from ebsengine.cloud import Scope
        scope = Scope()
        ami = a.image(b"lib" * 1000)
        (inst,) = a.cloud.instances.run(scope, image_id=ami, instance_type="m5.large")
        got = _inst(a, inst.id)                             # the API sees the library's
        assert got["InstanceType"] == "m5.large" and got["State"]["Name"] == "running"
        assert _read(a, _root(a, inst.id), 0, 3000) == b"lib" * 1000
        a.cloud.instances.stop(scope, [inst.id])
        assert _inst(a, inst.id)["State"]["Name"] == "stopped"
        a.cloud.instances.terminate(scope, [inst.id])
        assert _inst(a, inst.id)["State"]["Name"] == "terminated"
        _check(a)
    finally:
        a.stop()


# --- what an instance looks like ------------------------------------------------------------


def test_run_renders_network_devices_and_groups(aws: Aws) -> None:
    ami = aws.image()
    res = aws.ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2, InstanceType="t2.micro",
                                TagSpecifications=[
                                    {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"}]},
                                    {"ResourceType": "volume", "Tags": [{"Key": "v", "Value": "1"}]}],
                                UserData="#!/bin/sh\necho hi")
    assert res["ReservationId"].startswith("r-") and res["OwnerId"] == "123456789012"
    assert [i["AmiLaunchIndex"] for i in res["Instances"]] == [0, 1]
    a, b = res["Instances"]
    assert a["PrivateIpAddress"] != b["PrivateIpAddress"]
    assert a["PublicIpAddress"] != b["PublicIpAddress"]
    assert all(i["State"]["Name"] == "pending" for i in res["Instances"])
    inst = _inst(aws, a["InstanceId"])
    assert inst["State"] == {"Code": 16, "Name": "running"}
    assert inst["Tags"] == [{"Key": "Name", "Value": "web"}]
    ip, priv = inst["PublicIpAddress"], inst["PrivateIpAddress"]
    assert ip.startswith("198.1") and priv.startswith("172.31.")
    assert inst["PublicDnsName"] == f"ec2-{ip.replace('.', '-')}.compute-1.amazonaws.com"
    assert inst["PrivateDnsName"] == f"ip-{priv.replace('.', '-')}.ec2.internal"
    assert inst["Placement"]["AvailabilityZone"] == AZ
    assert inst["RootDeviceName"] == "/dev/xvda" and inst["RootDeviceType"] == "ebs"
    assert inst["Hypervisor"] == "xen" and inst["Architecture"] == "x86_64"
    assert inst["VirtualizationType"] == "hvm"
    (sg,) = inst["SecurityGroups"]
    assert sg["GroupName"] == "default"
    (eni,) = inst["NetworkInterfaces"]
    assert eni["PrivateIpAddress"] == priv and eni["Association"]["PublicIp"] == ip
    assert eni["Attachment"]["DeviceIndex"] == 0 and eni["Attachment"]["DeleteOnTermination"]
    assert eni["Groups"] == [sg] and inst["SubnetId"] == eni["SubnetId"]
    (bd,) = inst["BlockDeviceMappings"]
    assert bd["Ebs"]["Status"] == "attached" and bd["Ebs"]["DeleteOnTermination"] is True
    (vol,) = aws.ec2.describe_volumes(VolumeIds=[bd["Ebs"]["VolumeId"]])["Volumes"]
    assert vol["Tags"] == [{"Key": "v", "Value": "1"}]
    ud = aws.ec2.describe_instance_attribute(InstanceId=a["InstanceId"], Attribute="userData")
    import base64
    assert base64.b64decode(ud["UserData"]["Value"]) == b"#!/bin/sh\necho hi"
    out = aws.ec2.get_console_output(InstanceId=a["InstanceId"])
    assert out["InstanceId"] == a["InstanceId"]
    _check(aws)


def test_describe_filters_and_pages(aws: Aws) -> None:
    ami = aws.image()
    ids = [aws.launch(ImageId=ami, InstanceType=t) for t in ("t3.micro",) * 6 + ("c5.large",)]
    got = aws.ec2.describe_instances(Filters=[{"Name": "instance-type", "Values": ["c5.*"]}])
    assert [i["InstanceId"] for r in got["Reservations"] for i in r["Instances"]] == [ids[-1]]
    pages = list(aws.ec2.get_paginator("describe_instances").paginate(
        PaginationConfig={"PageSize": 5}))
    assert [sum(len(r["Instances"]) for r in p["Reservations"]) for p in pages] == [5, 2]
    seen = [i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]]
    assert sorted(seen) == sorted(ids)
    root = _root(aws, ids[0])
    by_vol = aws.ec2.describe_instances(Filters=[
        {"Name": "block-device-mapping.volume-id", "Values": [root]},
        {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"]
    assert [r["Instances"][0]["InstanceId"] for r in by_vol] == [ids[0]]
    expect_error(aws.ec2.describe_instances, "InvalidParameterCombination", 400,
                 InstanceIds=ids[:1], MaxResults=5)
    expect_error(aws.ec2.describe_instances, "InvalidParameterValue", 400,
                 Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    expect_error(aws.ec2.describe_instances, "InvalidInstanceID.NotFound", 400,
                 InstanceIds=[ids[0], "i-0000000000000dead"])
    expect_error(aws.ec2.describe_instances, "InvalidInstanceID.Malformed", 400,
                 InstanceIds=["nope"])
    assert aws.ec2_west.describe_instances()["Reservations"] == []
    st = aws.ec2.describe_instance_status(InstanceIds=ids[:2])["InstanceStatuses"]
    assert [s["InstanceStatus"]["Status"] for s in st] == ["ok", "ok"]


def test_instance_types_and_offerings(aws: Aws) -> None:
    (t,) = aws.ec2.describe_instance_types(InstanceTypes=["r5.2xlarge"])["InstanceTypes"]
    assert t["VCpuInfo"]["DefaultVCpus"] == 8 and t["MemoryInfo"]["SizeInMiB"] == 64 * 1024
    (t,) = aws.ec2.describe_instance_types(InstanceTypes=["t2.nano"])["InstanceTypes"]
    assert t["VCpuInfo"]["DefaultVCpus"] == 1 and t["MemoryInfo"]["SizeInMiB"] == 512
    names = [t["InstanceType"] for p in aws.ec2.get_paginator("describe_instance_types").paginate()
             for t in p["InstanceTypes"]]
    assert {"t2.micro", "t3.micro", "m5.large", "c5.9xlarge", "r5.24xlarge"} <= set(names)
    assert len(names) == len(set(names))
    expect_error(aws.ec2.describe_instance_types, "InvalidParameterValue", 400,
                 InstanceTypes=["t9.huge"])
    offers = aws.ec2.describe_instance_type_offerings(
        LocationType="availability-zone",
        Filters=[{"Name": "instance-type", "Values": ["m5.large"]}])["InstanceTypeOfferings"]
    assert {o["Location"] for o in offers} == {f"us-east-1{z}" for z in "abcdef"}


# --- the state machine ------------------------------------------------------------------------


def test_stop_start_terminate_with_waiters(tmp_path: Any) -> None:
    a = Aws(str(tmp_path / "s"))
    try:
        iid = a.launch()
        a.ec2.get_waiter("instance_running").wait(InstanceIds=[iid])
        first_ip = _inst(a, iid)["PublicIpAddress"]
        a.ec2.get_waiter("instance_status_ok").wait(InstanceIds=[iid])
        a.ec2.reboot_instances(InstanceIds=[iid])
        out = a.ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"]
        assert out == [{"InstanceId": iid, "CurrentState": {"Code": 64, "Name": "stopping"},
                        "PreviousState": {"Code": 16, "Name": "running"}}]
        a.ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid])
        inst = _inst(a, iid)
        assert "PublicIpAddress" not in inst and inst["PrivateIpAddress"]
        assert inst["StateReason"]["Code"] == "Client.UserInitiatedShutdown"
        assert inst["StateTransitionReason"].startswith("User initiated (")
        assert inst["StateTransitionReason"].endswith(" GMT)")
        assert len(inst["BlockDeviceMappings"]) == 1            # a stopped instance keeps them
        again = a.ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]
        assert again["PreviousState"]["Name"] == again["CurrentState"]["Name"] == "stopped"
        with a.unchanged():
            expect_error(a.ec2.reboot_instances, "IncorrectInstanceState", 400, InstanceIds=[iid])
        a.restart()
        other = a.launch()                              # takes the address the stop released
        assert _inst(a, other)["PublicIpAddress"] == first_ip
        out = a.ec2.start_instances(InstanceIds=[iid])["StartingInstances"][0]
        assert out["CurrentState"]["Name"] == "pending"
        a.ec2.get_waiter("instance_running").wait(InstanceIds=[iid])
        second_ip = _inst(a, iid)["PublicIpAddress"]
        assert second_ip and second_ip != first_ip      # a new address on start
        root = _root(a, iid)
        out = a.ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
        assert out["CurrentState"] == {"Code": 32, "Name": "shutting-down"}
        a.ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid])
        again = a.ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
        assert again["PreviousState"]["Name"] == again["CurrentState"]["Name"] == "terminated"
        expect_error(a.ec2.describe_volumes, "InvalidVolume.NotFound", 400, VolumeIds=[root])
        with a.unchanged():
            expect_error(a.ec2.start_instances, "IncorrectInstanceState", 400, InstanceIds=[iid])
            expect_error(a.ec2.stop_instances, "IncorrectInstanceState", 400, InstanceIds=[iid])
        assert [e.id for e in a.cloud.network_interfaces.all()] == \
            [e["NetworkInterfaceId"] for e in _inst(a, other)["NetworkInterfaces"]]
        _check(a)
    finally:
        a.stop()


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_transient_states_mature_on_the_clock(tmp_path: Any) -> None:
    clock = _Clock()
    cfg = CloudConfig(boot_seconds=30, stop_seconds=20, terminate_seconds=10,
                      terminated_visible_seconds=600)
    a = Aws(str(tmp_path / "s"), clock=clock, cloud_config=cfg)
    try:
        iid = a.launch()
        assert _inst(a, iid)["State"]["Name"] == "pending"
        with a.unchanged():
            expect_error(a.ec2.stop_instances, "IncorrectInstanceState", 400, InstanceIds=[iid])
        clock.now += 30
        assert _inst(a, iid)["State"]["Name"] == "running"
        a.ec2.stop_instances(InstanceIds=[iid])
        clock.now += 19
        assert _inst(a, iid)["State"]["Name"] == "stopping"
        with a.unchanged():
            expect_error(a.ec2.start_instances, "IncorrectInstanceState", 400, InstanceIds=[iid])
        clock.now += 1
        assert _inst(a, iid)["State"]["Name"] == "stopped"
        a.ec2.terminate_instances(InstanceIds=[iid])
        assert _inst(a, iid)["State"]["Name"] == "shutting-down"
        clock.now += 10
        assert _inst(a, iid)["State"]["Name"] == "terminated"
        clock.now += 599
        assert _inst(a, iid)["State"]["Name"] == "terminated"
        clock.now += 1
        expect_error(a.ec2.describe_instances, "InvalidInstanceID.NotFound", 400,
                     InstanceIds=[iid])
        assert a.ec2.describe_instances()["Reservations"] == []
        a.launch()                                       # a write sweeps the dead record
        assert a.cloud.instance_table.get(iid) is None
        _check(a)
    finally:
        a.stop()


def test_termination_protection_and_attributes(aws: Aws) -> None:
    iid = aws.launch(DisableApiTermination=True)
    with aws.unchanged():
        expect_error(aws.ec2.terminate_instances, "OperationNotPermitted", 400, InstanceIds=[iid])
        expect_error(aws.ec2.modify_instance_attribute, "IncorrectInstanceState", 400,
                     InstanceId=iid, InstanceType={"Value": "m5.large"})
        expect_error(aws.ec2.describe_instance_attribute, "InvalidParameterValue", 400,
                     InstanceId=iid, Attribute="bogus")
    attr = aws.ec2.describe_instance_attribute(InstanceId=iid, Attribute="disableApiTermination")
    assert attr["DisableApiTermination"]["Value"] is True
    aws.ec2.modify_instance_attribute(InstanceId=iid, DisableApiTermination={"Value": False})
    aws.ec2.stop_instances(InstanceIds=[iid])
    with aws.unchanged():
        expect_error(aws.ec2.modify_instance_attribute, "InvalidParameterValue", 400,
                     InstanceId=iid, InstanceType={"Value": "t9.huge"})
    aws.ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "m5.large"})
    assert _inst(aws, iid)["InstanceType"] == "m5.large"
    aws.ec2.modify_instance_attribute(InstanceId=iid, Attribute="instanceType", Value="c5.large")
    got = aws.ec2.describe_instance_attribute(InstanceId=iid, Attribute="instanceType")
    assert got["InstanceType"]["Value"] == "c5.large"
    root = _root(aws, iid)
    aws.ec2.modify_instance_attribute(InstanceId=iid, BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"DeleteOnTermination": False}}])
    bdm = aws.ec2.describe_instance_attribute(InstanceId=iid, Attribute="blockDeviceMapping")
    assert bdm["BlockDeviceMappings"][0]["Ebs"]["DeleteOnTermination"] is False
    (vol,) = aws.ec2.describe_volumes(VolumeIds=[root])["Volumes"]
    assert vol["Attachments"][0]["DeleteOnTermination"] is False
    aws.ec2.terminate_instances(InstanceIds=[iid])
    (vol,) = aws.ec2.describe_volumes(VolumeIds=[root])["Volumes"]  # kept, detached
    assert vol["State"] == "available" and vol["Attachments"] == []
    _check(aws)


# --- launch options -----------------------------------------------------------------------------


def test_block_device_mappings_override_the_ami(aws: Aws) -> None:
    snap_src = aws.volume(size=3)
    aws.write(snap_src, 0, b"data volume")
    snap = aws.ec2.create_snapshot(VolumeId=snap_src)["SnapshotId"]
    ami = put_image(aws.cloud, b"root", size=2)
    with aws.unchanged():
        expect_error(aws.ec2.run_instances, "InvalidBlockDeviceMapping", 400, ImageId=ami,
                     MinCount=1, MaxCount=1, BlockDeviceMappings=[
                         {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 1}}])
        expect_error(aws.ec2.run_instances, "InvalidParameterValue", 400, ImageId=ami,
                     MinCount=1, MaxCount=1, BlockDeviceMappings=[
                         {"DeviceName": "/dev/bogus", "Ebs": {"VolumeSize": 1}}])
    iid = aws.launch(ImageId=ami, BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8, "VolumeType": "io1", "Iops": 400}},
        {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 4, "DeleteOnTermination": False}},
        {"DeviceName": "/dev/sdg", "Ebs": {"SnapshotId": snap}}])
    inst = _inst(aws, iid)
    devs = {b["DeviceName"]: b["Ebs"] for b in inst["BlockDeviceMappings"]}
    assert set(devs) == {"/dev/xvda", "/dev/sdf", "/dev/sdg"}
    vols = {v["Attachments"][0]["Device"]: v for v in aws.ec2.describe_volumes(
        VolumeIds=[e["VolumeId"] for e in devs.values()])["Volumes"]}
    assert (vols["/dev/xvda"]["Size"], vols["/dev/xvda"]["VolumeType"],
            vols["/dev/xvda"]["Iops"]) == (8, "io1", 400)
    assert vols["/dev/sdf"]["Size"] == 4 and vols["/dev/sdf"]["SnapshotId"] == ""
    assert vols["/dev/sdg"]["SnapshotId"] == snap and vols["/dev/sdg"]["Size"] == 3
    assert devs["/dev/sdg"]["DeleteOnTermination"] is True   # API-added: true by default
    assert devs["/dev/sdf"]["DeleteOnTermination"] is False
    assert _read(aws, devs["/dev/sdg"]["VolumeId"], 0, 11) == b"data volume"
    assert _read(aws, devs["/dev/xvda"]["VolumeId"], 0, 4) == b"root"
    aws.ec2.terminate_instances(InstanceIds=[iid])
    left = {v["VolumeId"] for v in aws.ec2.describe_volumes()["Volumes"]}
    assert devs["/dev/sdf"]["VolumeId"] in left
    assert devs["/dev/xvda"]["VolumeId"] not in left and devs["/dev/sdg"]["VolumeId"] not in left
    _check(aws)


def test_client_token_replays_the_reservation(tmp_path: Any) -> None:
    a = Aws(str(tmp_path / "s"))
    try:
        ami = a.image()
        kw: dict[str, Any] = {"ImageId": ami, "MinCount": 1, "MaxCount": 2,
                              "InstanceType": "t3.micro", "ClientToken": "launch-1"}
        first = a.ec2.run_instances(**kw)
        a.restart()
        with a.unchanged():
            again = a.ec2.run_instances(**kw)
        assert again["ReservationId"] == first["ReservationId"]
        assert [i["InstanceId"] for i in again["Instances"]] == \
            [i["InstanceId"] for i in first["Instances"]]
        with a.unchanged():
            expect_error(a.ec2.run_instances, "IdempotentParameterMismatch", 400,
                         **{**kw, "InstanceType": "m5.large"})
    finally:
        a.stop()


def test_refused_launches_change_nothing(aws: Aws) -> None:
    ami = aws.image()
    gone = aws.image()
    with aws.engine.transaction() as tx:
        img = aws.cloud.image_table.get(gone)
        aws.cloud.image_table.put(img.but(state="deregistered"), tx=tx)
    other = put_image(aws.cloud, owner="210987654321")
    ok = {"ImageId": ami, "MinCount": 1, "MaxCount": 1}
    with aws.unchanged():
        for code, kw in [
            ("InvalidAMIID.NotFound", {"ImageId": "ami-0000000000000dead"}),
            ("InvalidAMIID.Unavailable", {"ImageId": gone}),    # deregistered (AWS error-code list)
            ("InvalidAMIID.NotFound", {"ImageId": other}),           # no launch permission
            ("InvalidAMIID.Malformed", {"ImageId": "image-1"}),
            ("InvalidParameterValue", {"InstanceType": "t9.huge"}),
            ("InvalidParameterValue", {"MinCount": 3, "MaxCount": 2}),
            ("InvalidParameterValue", {"MinCount": 0, "MaxCount": 1}),
            ("InvalidKeyPair.NotFound", {"KeyName": "nope"}),
            ("InvalidGroup.NotFound", {"SecurityGroupIds": ["sg-0000000000000dead"]}),
            ("InvalidGroup.NotFound", {"SecurityGroups": ["nope"]}),
            ("InvalidSubnetID.NotFound", {"SubnetId": "subnet-0000000000000dead"}),
            ("InvalidParameterValue", {"Placement": {"AvailabilityZone": "us-west-2a"}}),
            ("InvalidParameterValue", {"PrivateIpAddress": "10.0.0.5"}),
            ("InvalidParameterCombination", {"PrivateIpAddress": "172.31.0.10", "MaxCount": 2}),
            ("InvalidParameterValue", {"TagSpecifications": [{"ResourceType": "image", "Tags": []}]}),
        ]:
            expect_error(aws.ec2.run_instances, code, 400, **{**ok, **kw})
        expect_error(aws.ec2.run_instances, "DryRunOperation", 412, DryRun=True, **ok)
    iid = aws.launch(ImageId=ami, PrivateIpAddress="172.31.0.10")
    assert _inst(aws, iid)["PrivateIpAddress"] == "172.31.0.10"
    with aws.unchanged():
        expect_error(aws.ec2.run_instances, "InvalidIPAddress.InUse", 400,
                     PrivateIpAddress="172.31.0.10", **ok)
        expect_error(aws.ec2.terminate_instances, "InvalidInstanceID.NotFound", 400,
                     InstanceIds=[iid, "i-0000000000000dead"])          # all or none
        expect_error(aws.ec2.stop_instances, "InvalidInstanceID.Malformed", 400,
                     InstanceIds=["x"])
    zone_b = aws.launch(ImageId=ami, Placement={"AvailabilityZone": "us-east-1b"})
    assert _inst(aws, zone_b)["Placement"]["AvailabilityZone"] == "us-east-1b"


# --- volumes of a running instance ------------------------------------------------------------


def test_attach_detach_rules(aws: Aws) -> None:
    iid = aws.launch()
    root = _root(aws, iid)
    vid = aws.volume()
    far = aws.ec2.create_volume(AvailabilityZone="us-east-1c", Size=1)["VolumeId"]
    with aws.unchanged():
        expect_error(aws.ec2.attach_volume, "InvalidVolume.ZoneMismatch", 400, VolumeId=far,
                     InstanceId=iid, Device="/dev/sdf")
        expect_error(aws.ec2.attach_volume, "InvalidParameterValue", 400, VolumeId=vid,
                     InstanceId=iid, Device="/dev/xvda")               # the root's device
        expect_error(aws.ec2.detach_volume, "IncorrectState", 400, VolumeId=root)
    aws.ec2.attach_volume(VolumeId=vid, InstanceId=iid, Device="/dev/sdf")
    devs = {b["DeviceName"]: b["Ebs"] for b in _inst(aws, iid)["BlockDeviceMappings"]}
    assert devs["/dev/sdf"]["VolumeId"] == vid and devs["/dev/sdf"]["DeleteOnTermination"] is False
    snaps = aws.ec2.create_snapshots(InstanceSpecification={"InstanceId": iid})["Snapshots"]
    assert {s["VolumeId"] for s in snaps} == {vid, root}
    assert len({s["StartTime"] for s in snaps}) == 1
    with aws.unchanged():
        expect_error(aws.ec2.create_snapshots, "InvalidParameterValue", 400,
                     InstanceSpecification={"InstanceId": iid, "ExcludeDataVolumeIds": [root]})
    only = aws.ec2.create_snapshots(InstanceSpecification={
        "InstanceId": iid, "ExcludeDataVolumeIds": [vid]})["Snapshots"]
    assert [s["VolumeId"] for s in only] == [root]
    aws.ec2.detach_volume(VolumeId=vid, InstanceId=iid)
    assert len(_inst(aws, iid)["BlockDeviceMappings"]) == 1
    aws.ec2.stop_instances(InstanceIds=[iid])
    aws.ec2.detach_volume(VolumeId=root)                       # stopped: the root may go
    with aws.unchanged():
        expect_error(aws.ec2.start_instances, "IncorrectInstanceState", 400, InstanceIds=[iid])
    aws.ec2.attach_volume(VolumeId=root, InstanceId=iid, Device="/dev/xvda")
    aws.ec2.start_instances(InstanceIds=[iid])
    aws.ec2.terminate_instances(InstanceIds=[iid])
    with aws.unchanged():
        expect_error(aws.ec2.attach_volume, "IncorrectInstanceState", 400, VolumeId=vid,
                     InstanceId=iid, Device="/dev/sdf")
    _check(aws)


def test_elastic_ip_follows_the_interface(aws: Aws) -> None:
    iid = aws.launch()
    eni = _inst(aws, iid)["NetworkInterfaces"][0]["NetworkInterfaceId"]
    rec = aws.cloud.network_interfaces.get(eni)
    with aws.engine.transaction() as tx:   # what AssociateAddress does (another helper's action)
        ip = "198.19.255.7"
        aws.cloud.network_interfaces.put(rec.but(public_ip=None), tx=tx)
        aws.cloud.addresses.put(Address(id=new_id("eipalloc"), region="us-east-1",
                                        owner_id="123456789012", public_ip=ip,
                                        association_id=new_id("eipassoc"), instance_id=iid,
                                        network_interface_id=eni, private_ip=rec.private_ip),
                                tx=tx)
    assert _inst(aws, iid)["PublicIpAddress"] == ip
    aws.ec2.stop_instances(InstanceIds=[iid])
    aws.ec2.start_instances(InstanceIds=[iid])
    assert _inst(aws, iid)["PublicIpAddress"] == ip           # no new auto address
    assert aws.cloud.network_interfaces.get(eni).public_ip is None
    aws.ec2.terminate_instances(InstanceIds=[iid])
    (addr,) = aws.cloud.addresses.all()
    assert (addr.association_id, addr.instance_id, addr.network_interface_id) == (None,) * 3
    _check(aws)


def test_max_count_beyond_a_small_subnet(aws: Aws) -> None:
    """MaxCount above the subnet's free addresses launches what fits (AWS: the largest
    number possible above MinCount); MinCount above it is refused and changes nothing. A
    huge MaxCount is answered at once (the addresses are read once, not per instance)."""
    ami = aws.image()
    vpc = aws.ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    sub = aws.ec2.create_subnet(VpcId=vpc, CidrBlock="10.8.0.0/28",
                                AvailabilityZone=AZ)["Subnet"]["SubnetId"]
    with aws.unchanged():
        expect_error(aws.ec2.run_instances, "InsufficientFreeAddressesInSubnet", 400,
                     ImageId=ami, SubnetId=sub, MinCount=12, MaxCount=2**31 - 1)
    res = aws.ec2.run_instances(ImageId=ami, SubnetId=sub, MinCount=1, MaxCount=2**31 - 1)
    assert len(res["Instances"]) == 11
    aws.restart()
    (s,) = aws.ec2.describe_subnets(SubnetIds=[sub])["Subnets"]
    assert s["AvailableIpAddressCount"] == 0
    assert sum(len(r["Instances"]) for r in aws.ec2.describe_instances(
        Filters=[{"Name": "subnet-id", "Values": [sub]}])["Reservations"]) == 11
    _check(aws)


def test_modify_attribute_of_a_terminating_instance_is_refused(tmp_path: Any) -> None:
    """A shutting-down instance holds no interface (terminate released it, and its subnet
    may be gone): ModifyInstanceAttribute is IncorrectInstanceState, not a 500."""
    clock = _Clock()
    a = Aws(str(tmp_path / "s"), clock=clock, cloud_config=CloudConfig(terminate_seconds=10))
    try:
        vpc = a.ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
        sub = a.ec2.create_subnet(VpcId=vpc, CidrBlock="10.8.0.0/24",
                                  AvailabilityZone=AZ)["Subnet"]["SubnetId"]
        sg = a.ec2.create_security_group(GroupName="g", Description="d", VpcId=vpc)["GroupId"]
        iid = a.launch(SubnetId=sub)
        a.ec2.terminate_instances(InstanceIds=[iid])
        a.ec2.delete_subnet(SubnetId=sub)
        with a.unchanged():
            for kw in ({"Groups": [sg]}, {"SourceDestCheck": {"Value": False}},
                       {"DisableApiTermination": {"Value": True}}):
                expect_error(a.ec2.modify_instance_attribute, "IncorrectInstanceState", 400,
                             InstanceId=iid, **kw)
        _check(a)
    finally:
        a.stop()


def test_create_image_checks_the_devices_it_adds(aws: Aws) -> None:
    """CreateImage's BlockDeviceMappings for devices the instance does not have follow
    RegisterImage's rules: a missing snapshot or one of another region is refused (the
    image would name a snapshot that is not there), an empty volume needs a size."""
    iid = aws.launch()
    west = aws.ec2_west.create_volume(AvailabilityZone="us-west-2a", Size=1)["VolumeId"]
    west_snap = aws.ec2_west.create_snapshot(VolumeId=west)["SnapshotId"]
    with aws.unchanged():
        for code, ebs in [("InvalidSnapshot.NotFound", {"SnapshotId": "snap-0000000000000dead"}),
                          ("InvalidSnapshot.NotFound", {"SnapshotId": west_snap}),
                          ("InvalidBlockDeviceMapping", {"VolumeType": "gp3"})]:
            expect_error(aws.ec2.create_image, code, 400, InstanceId=iid, Name="with-extra",
                         BlockDeviceMappings=[{"DeviceName": "/dev/sdh", "Ebs": ebs}])
    ami = aws.ec2.create_image(InstanceId=iid, Name="with-extra", BlockDeviceMappings=[
        {"DeviceName": "/dev/sdh", "Ebs": {"VolumeSize": 2, "VolumeType": "gp3"}}])["ImageId"]
    (img,) = aws.ec2.describe_images(ImageIds=[ami])["Images"]
    extra = next(m for m in img["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdh")
    assert (extra["Ebs"]["VolumeSize"], extra["Ebs"]["VolumeType"]) == (2, "gp3")
    new = aws.launch(ImageId=ami)
    assert {b["DeviceName"] for b in _inst(aws, new)["BlockDeviceMappings"]} == \
        {"/dev/xvda", "/dev/sdh"}
    _check(aws)
