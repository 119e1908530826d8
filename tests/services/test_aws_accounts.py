"""Accounts (``serve --auth sigv4``): every resource is its account's; other accounts neither
see nor touch it, except through AWS's sharing (snapshot createVolumePermission, AMI
launchPermission), which then works for real (issue 11)."""

from __future__ import annotations

from typing import Any

from test_aws_sigv4 import ALEX, ALICE, BOB, Signed, signed  # noqa: F401  (signed: a fixture)

from test_aws_support import BLOCK, expect_error

AZ = "us-east-1a"


def _clients(s: Signed, user: tuple[str, str, str]) -> tuple[Any, Any]:
    return s.client("ec2", user), s.client("ebs", user)


def _snapshot_with(s: Signed, ec2: Any, data: bytes, offset: int = 0) -> tuple[str, str]:
    """A volume holding ``data`` (written through the library) and a completed snapshot."""
    vid = ec2.create_volume(AvailabilityZone=AZ, Size=1)["VolumeId"]
    s.write(vid, offset, data)
    sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid],
                                             WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    return vid, sid


def test_volumes_and_snapshots_are_their_accounts(signed: Signed) -> None:
    alice, alice_ebs = _clients(signed, ALICE)
    bob, bob_ebs = _clients(signed, BOB)
    vid, sid = _snapshot_with(signed, alice, b"alice's data" * 100)
    alice.create_tags(Resources=[vid, sid], Tags=[{"Key": "who", "Value": "alice"}])
    # bob's account sees none of it
    assert bob.describe_volumes()["Volumes"] == []
    assert bob.describe_snapshots()["Snapshots"] == []
    assert bob.describe_snapshots(OwnerIds=[ALICE[2]])["Snapshots"] == []
    assert bob.describe_tags()["Tags"] == []
    assert bob.describe_volume_status()["VolumeStatuses"] == []
    with signed.unchanged():
        expect_error(bob.describe_volumes, "InvalidVolume.NotFound", 400, VolumeIds=[vid])
        expect_error(bob.describe_snapshots, "InvalidSnapshot.NotFound", 400, SnapshotIds=[sid])
        expect_error(bob.delete_volume, "InvalidVolume.NotFound", 400, VolumeId=vid)
        expect_error(bob.delete_snapshot, "InvalidSnapshot.NotFound", 400, SnapshotId=sid)
        expect_error(bob.create_snapshot, "InvalidVolume.NotFound", 400, VolumeId=vid)
        expect_error(bob.modify_volume, "InvalidVolume.NotFound", 400, VolumeId=vid, Size=2)
        expect_error(bob.create_volume, "InvalidSnapshot.NotFound", 400, AvailabilityZone=AZ,
                     SnapshotId=sid)
        expect_error(bob.copy_snapshot, "InvalidSnapshot.NotFound", 400,
                     SourceRegion="us-east-1", SourceSnapshotId=sid)
        expect_error(bob.create_tags, "InvalidVolume.NotFound", 400, Resources=[vid],
                     Tags=[{"Key": "who", "Value": "bob"}])
        expect_error(bob.delete_tags, "InvalidSnapshot.NotFound", 400, Resources=[sid])
        expect_error(bob.modify_snapshot_attribute, "InvalidSnapshot.NotFound", 400,
                     SnapshotId=sid, Attribute="createVolumePermission",
                     OperationType="add", UserIds=[BOB[2]])
        expect_error(bob.describe_snapshot_attribute, "InvalidSnapshot.NotFound", 400,
                     SnapshotId=sid, Attribute="createVolumePermission")
        expect_error(bob_ebs.list_snapshot_blocks, "ResourceNotFoundException", 404,
                     SnapshotId=sid)
    # a user of alice's account sees all of it
    alex = signed.client("ec2", ALEX)
    assert [v["VolumeId"] for v in alex.describe_volumes()["Volumes"]] == [vid]
    (snap,) = alex.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert snap["SnapshotId"] == sid and snap["OwnerId"] == ALICE[2]
    assert alice_ebs.list_snapshot_blocks(SnapshotId=sid)["Blocks"]
    # bob's own resources are his
    bob_vid = bob.create_volume(AvailabilityZone=AZ, Size=1)["VolumeId"]
    assert [v["VolumeId"] for v in bob.describe_volumes()["Volumes"]] == [bob_vid]
    assert [v["VolumeId"] for v in alice.describe_volumes()["Volumes"]] == [vid]
    bob_sid = bob_ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    expect_error(alice_ebs.complete_snapshot, "ResourceNotFoundException", 404,
                 SnapshotId=bob_sid, ChangedBlocksCount=0)
    expect_error(alice.describe_snapshots, "InvalidSnapshot.NotFound", 400,
                 SnapshotIds=[bob_sid])


def test_client_tokens_are_per_account(signed: Signed) -> None:
    alice = signed.client("ec2", ALICE)
    bob = signed.client("ec2", BOB)
    a = alice.create_volume(AvailabilityZone=AZ, Size=1, ClientToken="same-token")["VolumeId"]
    b = bob.create_volume(AvailabilityZone=AZ, Size=1, ClientToken="same-token")["VolumeId"]
    assert a != b
    assert alice.create_volume(AvailabilityZone=AZ, Size=1,
                               ClientToken="same-token")["VolumeId"] == a
    assert [v["VolumeId"] for v in bob.describe_volumes()["Volumes"]] == [b]
    # EBS direct StartSnapshot's ClientToken too
    ebs_a, ebs_b = signed.client("ebs", ALICE), signed.client("ebs", BOB)
    sa = ebs_a.start_snapshot(VolumeSize=1, ClientToken="snap-token")["SnapshotId"]
    sb = ebs_b.start_snapshot(VolumeSize=1, ClientToken="snap-token")["SnapshotId"]
    assert sa != sb


def test_snapshot_sharing_and_cross_account_restore(signed: Signed) -> None:
    alice, _ = _clients(signed, ALICE)
    bob, _ = _clients(signed, BOB)
    data = b"shared with bob!" * 4096
    _, sid = _snapshot_with(signed, alice, data, offset=3 * BLOCK)
    alice.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                    CreateVolumePermission={"Add": [{"UserId": BOB[2]}]})
    perms = alice.describe_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == [{"UserId": BOB[2]}]
    # bob sees it: by default, by owner, as restorable by himself, by id
    for kw in ({}, {"OwnerIds": [ALICE[2]]}, {"RestorableByUserIds": ["self"]},
               {"SnapshotIds": [sid]}, {"Filters": [{"Name": "owner-id", "Values": [ALICE[2]]}]}):
        (snap,) = bob.describe_snapshots(**kw)["Snapshots"]
        assert snap["SnapshotId"] == sid and snap["OwnerId"] == ALICE[2], kw
    assert bob.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
    # alice asks which of hers bob may restore
    (mine,) = alice.describe_snapshots(RestorableByUserIds=[BOB[2]])["Snapshots"]
    assert mine["SnapshotId"] == sid
    # bob restores it: the bytes are alice's, the volume is bob's
    vid = bob.create_volume(AvailabilityZone=AZ, SnapshotId=sid)["VolumeId"]
    bob.get_waiter("volume_available").wait(VolumeIds=[vid],
                                            WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    with signed.engine.open_volume(vid) as dev:
        assert dev.pread(len(data), 3 * BLOCK) == data
    assert alice.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vid]}])[
        "Volumes"] == []
    # and copies it into his account
    copy = bob.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=sid)["SnapshotId"]
    (c,) = bob.describe_snapshots(SnapshotIds=[copy])["Snapshots"]
    assert c["OwnerId"] == BOB[2]
    # sharing gives no control: bob cannot change or delete alice's snapshot
    with signed.unchanged():
        expect_error(bob.delete_snapshot, "InvalidSnapshot.NotFound", 400, SnapshotId=sid)
        expect_error(bob.modify_snapshot_attribute, "InvalidSnapshot.NotFound", 400,
                     SnapshotId=sid, Attribute="createVolumePermission",
                     CreateVolumePermission={"Add": [{"Group": "all"}]})
        expect_error(bob.create_tags, "InvalidSnapshot.NotFound", 400, Resources=[sid],
                     Tags=[{"Key": "k", "Value": "v"}])
    # unshared: gone from bob's view, and no restore
    alice.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                    OperationType="remove", UserIds=[BOB[2]])
    assert bob.describe_snapshots(OwnerIds=[ALICE[2]])["Snapshots"] == []
    expect_error(bob.create_volume, "InvalidSnapshot.NotFound", 400, AvailabilityZone=AZ,
                 SnapshotId=sid)
    # public (group all): every account may restore it
    alice.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                    CreateVolumePermission={"Add": [{"Group": "all"}]})
    assert {s["SnapshotId"] for s in bob.describe_snapshots(
        RestorableByUserIds=["self"])["Snapshots"]} == {sid, copy}
    assert [s["SnapshotId"] for s in bob.describe_snapshots(
        OwnerIds=[ALICE[2]])["Snapshots"]] == [sid]
    vid2 = bob.create_volume(AvailabilityZone=AZ, SnapshotId=sid)["VolumeId"]
    with signed.engine.open_volume(vid2) as dev:
        assert dev.pread(len(data), 3 * BLOCK) == data
    # the restored volume survives the snapshot's deletion by its owner
    alice.delete_snapshot(SnapshotId=sid)
    assert [v["VolumeId"] for v in bob.describe_volumes(VolumeIds=[vid2])["Volumes"]] == [vid2]


def test_encrypted_snapshots_and_images_are_not_shared(signed: Signed) -> None:
    """Their keys are their account's (no key policies grant them to another), so sharing
    them is refused, changing nothing."""
    alice = signed.client("ec2", ALICE)
    vid = alice.create_volume(AvailabilityZone=AZ, Size=1, Encrypted=True)["VolumeId"]
    sid = alice.create_snapshot(VolumeId=vid)["SnapshotId"]
    alice.get_waiter("snapshot_completed").wait(SnapshotIds=[sid],
                                                WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
    image = alice.register_image(Name="enc", RootDeviceName="/dev/xvda", BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}}])["ImageId"]
    with signed.unchanged():
        expect_error(alice.modify_snapshot_attribute, "InvalidParameterValue", 400,
                     SnapshotId=sid, Attribute="createVolumePermission",
                     OperationType="add", UserIds=[BOB[2]])
        expect_error(alice.modify_image_attribute, "InvalidParameterValue", 400,
                     ImageId=image, LaunchPermission={"Add": [{"UserId": BOB[2]}]})
    bob = signed.client("ec2", BOB)
    expect_error(bob.create_volume, "InvalidSnapshot.NotFound", 400, AvailabilityZone=AZ,
                 SnapshotId=sid)


def test_instances_and_network_are_their_accounts(signed: Signed) -> None:
    alice = signed.client("ec2", ALICE)
    bob = signed.client("ec2", BOB)
    image = signed.image(b"boot", owner=ALICE[2])
    iid = alice.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                              InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    key = alice.create_key_pair(KeyName="alice-key")["KeyPairId"]
    vpc = alice.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    sg = alice.create_security_group(GroupName="alice-sg", Description="d",
                                     VpcId=vpc)["GroupId"]
    eip = alice.allocate_address(Domain="vpc")["AllocationId"]
    # each account has its own default VPC
    alice_default = alice.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
    bob_default = bob.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
    assert alice_default["Vpcs"][0]["VpcId"] != bob_default["Vpcs"][0]["VpcId"]
    assert bob_default["Vpcs"][0]["OwnerId"] == BOB[2]
    assert bob.describe_instances()["Reservations"] == []
    assert bob.describe_key_pairs()["KeyPairs"] == []
    assert vpc not in [v["VpcId"] for v in bob.describe_vpcs()["Vpcs"]]
    assert sg not in [g["GroupId"] for g in bob.describe_security_groups()["SecurityGroups"]]
    assert bob.describe_addresses()["Addresses"] == []
    assert bob.describe_images(Owners=["self"])["Images"] == []
    with signed.unchanged():
        expect_error(bob.describe_instances, "InvalidInstanceID.NotFound", 400,
                     InstanceIds=[iid])
        expect_error(bob.terminate_instances, "InvalidInstanceID.NotFound", 400,
                     InstanceIds=[iid])
        expect_error(bob.describe_key_pairs, "InvalidKeyPair.NotFound", 400, KeyPairIds=[key])
        expect_error(bob.describe_vpcs, "InvalidVpcID.NotFound", 400, VpcIds=[vpc])
        expect_error(bob.delete_security_group, "InvalidGroup.NotFound", 400, GroupId=sg)
        expect_error(bob.release_address, "InvalidAllocationID.NotFound", 400,
                     AllocationId=eip)
        expect_error(bob.create_tags, "InvalidInstanceID.NotFound", 400, Resources=[iid],
                     Tags=[{"Key": "k", "Value": "v"}])
        expect_error(bob.run_instances, "InvalidAMIID.NotFound", 400, ImageId=image,
                     MinCount=1, MaxCount=1, InstanceType="t3.micro")
    # alice's root volume is hers: bob cannot attach or detach it
    (res,) = alice.describe_instances(InstanceIds=[iid])["Reservations"]
    root = res["Instances"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert [v["VolumeId"] for v in alice.describe_volumes()["Volumes"]] == [root]
    expect_error(bob.detach_volume, "InvalidVolume.NotFound", 400, VolumeId=root)
    # KMS keys are their account's
    kms_a, kms_b = signed.client("kms", ALICE), signed.client("kms", BOB)
    kid = kms_a.create_key()["KeyMetadata"]["KeyId"]
    assert kid not in [k["KeyId"] for k in kms_b.list_keys()["Keys"]]
    expect_error(kms_b.describe_key, "NotFoundException", 400, KeyId=kid)


def test_ami_launch_permission_across_accounts(signed: Signed) -> None:
    alice = signed.client("ec2", ALICE)
    bob = signed.client("ec2", BOB)
    _, sid = _snapshot_with(signed, alice, b"alice's boot sector" * 50)
    image = alice.register_image(Name="alice-ami", RootDeviceName="/dev/xvda",
                                 Architecture="x86_64", VirtualizationType="hvm",
                                 BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                                                       "Ebs": {"SnapshotId": sid}}])["ImageId"]
    expect_error(bob.run_instances, "InvalidAMIID.NotFound", 400, ImageId=image,
                 MinCount=1, MaxCount=1, InstanceType="t3.micro")
    # bob cannot register an image of alice's snapshot
    expect_error(bob.register_image, "InvalidSnapshot.NotFound", 400, Name="stolen",
                 RootDeviceName="/dev/xvda", BlockDeviceMappings=[
                     {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}}])
    alice.modify_image_attribute(ImageId=image, LaunchPermission={"Add": [{"UserId": BOB[2]}]})
    (img,) = bob.describe_images(ExecutableUsers=["self"])["Images"]
    assert img["ImageId"] == image and img["OwnerId"] == ALICE[2]
    iid = bob.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                            InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    (res,) = bob.describe_instances(InstanceIds=[iid])["Reservations"]
    assert res["OwnerId"] == BOB[2]
    root = res["Instances"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    # the root volume is bob's, made from alice's snapshot: her bytes
    assert [v["VolumeId"] for v in bob.describe_volumes()["Volumes"]] == [root]
    assert alice.describe_volumes()["Volumes"] == [
        v for v in alice.describe_volumes()["Volumes"] if v["VolumeId"] != root]
    with signed.engine.open_volume(root) as dev:
        assert dev.pread(19 * 50, 0) == b"alice's boot sector" * 50
    # a launch permission is no snapshot permission: bob's RunInstances cannot add alice's
    # snapshot as another device
    expect_error(bob.run_instances, "InvalidSnapshot.NotFound", 400, ImageId=image,
                 MinCount=1, MaxCount=1, InstanceType="t3.micro",
                 BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": sid}}])
    # sharing gives no control over the image
    expect_error(bob.deregister_image, "AuthFailure", 401, ImageId=image)
    alice.modify_image_attribute(ImageId=image,
                                 LaunchPermission={"Remove": [{"UserId": BOB[2]}]})
    expect_error(bob.run_instances, "InvalidAMIID.NotFound", 400, ImageId=image,
                 MinCount=1, MaxCount=1, InstanceType="t3.micro")


def test_network_changes_and_tokens_stay_in_their_account(signed: Signed) -> None:
    alice = signed.client("ec2", ALICE)
    bob = signed.client("ec2", BOB)
    vpc = alice.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    subnet = alice.create_subnet(VpcId=vpc, CidrBlock="10.8.1.0/24",
                                 AvailabilityZone=AZ)["Subnet"]["SubnetId"]
    sg = alice.create_security_group(GroupName="web", Description="d", VpcId=vpc)["GroupId"]
    alice.create_key_pair(KeyName="shared-name")
    image = signed.image(b"boot", owner=BOB[2])
    bob.describe_vpcs()  # bob's default VPC is made at his first use of the region
    with signed.unchanged():
        expect_error(bob.delete_vpc, "InvalidVpcID.NotFound", 400, VpcId=vpc)
        expect_error(bob.create_subnet, "InvalidVpcID.NotFound", 400, VpcId=vpc,
                     CidrBlock="10.8.2.0/24")
        expect_error(bob.delete_subnet, "InvalidSubnetID.NotFound", 400, SubnetId=subnet)
        expect_error(bob.authorize_security_group_ingress, "InvalidGroup.NotFound", 400,
                     GroupId=sg, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0")
        expect_error(bob.run_instances, "InvalidSubnetID.NotFound", 400, ImageId=image,
                     MinCount=1, MaxCount=1, InstanceType="t3.micro", SubnetId=subnet)
        expect_error(bob.describe_subnets, "InvalidSubnetID.NotFound", 400, SubnetIds=[subnet])
    # names are per account too: bob may use the key name alice has
    bob.create_key_pair(KeyName="shared-name")
    assert [k["KeyName"] for k in bob.describe_key_pairs()["KeyPairs"]] == ["shared-name"]
    # RunInstances' ClientToken is the account's: the same token launches for each
    alice_image = signed.image(b"boot", owner=ALICE[2])
    ra = alice.run_instances(ImageId=alice_image, MinCount=1, MaxCount=1,
                             InstanceType="t3.micro", ClientToken="launch-1")
    rb = bob.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                           ClientToken="launch-1")
    assert ra["ReservationId"] != rb["ReservationId"]
    again = alice.run_instances(ImageId=alice_image, MinCount=1, MaxCount=1,
                                InstanceType="t3.micro", ClientToken="launch-1")
    assert again["ReservationId"] == ra["ReservationId"]


def test_lifecycle_policies_snapshot_their_accounts_volumes(signed: Signed) -> None:
    tags = [{"ResourceType": "volume", "Tags": [{"Key": "backup", "Value": "yes"}]}]
    alice = signed.client("ec2", ALICE)
    bob = signed.client("ec2", BOB)
    mine = alice.create_volume(AvailabilityZone=AZ, Size=1, TagSpecifications=tags)["VolumeId"]
    theirs = bob.create_volume(AvailabilityZone=AZ, Size=1, TagSpecifications=tags)["VolumeId"]
    dlm_a, dlm_b = signed.client("dlm", ALICE), signed.client("dlm", BOB)
    pid = dlm_a.create_lifecycle_policy(
        ExecutionRoleArn=f"arn:aws:iam::{ALICE[2]}:role/AWSDataLifecycleManagerDefaultRole",
        Description="daily", State="ENABLED", PolicyDetails={
            "PolicyType": "EBS_SNAPSHOT_MANAGEMENT", "ResourceTypes": ["VOLUME"],
            "TargetTags": [{"Key": "backup", "Value": "yes"}],
            "Schedules": [{"Name": "daily", "CreateRule": {"Interval": 24,
                                                           "IntervalUnit": "HOURS"},
                           "RetainRule": {"Count": 1}}]})["PolicyId"]
    expect_error(dlm_b.get_lifecycle_policy, "ResourceNotFoundException", 404, PolicyId=pid)
    assert dlm_b.get_lifecycle_policies()["Policies"] == []
    # the schedule fires (the scheduler's own entry point; the wall clock is not moved here)
    signed.cloud.dlm.run_schedule(pid, "daily", signed.cloud.now())
    (snap,) = alice.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert snap["VolumeId"] == mine and snap["OwnerId"] == ALICE[2]
    assert bob.describe_snapshots(Filters=[{"Name": "volume-id", "Values": [theirs]}])[
        "Snapshots"] == []


def test_cost_explorer_shows_each_account_its_own_bill(signed: Signed) -> None:
    """Alice's volume is on Alice's bill only; Bob, with none, is billed nothing."""
    import datetime as dt
    alice = signed.client("ec2", ALICE)
    vol = alice.create_volume(Size=100, AvailabilityZone="us-east-1a", VolumeType="gp3")
    today = dt.datetime.now(dt.timezone.utc).date()
    period = {"Start": today.isoformat(), "End": (today + dt.timedelta(days=1)).isoformat()}

    def cost(user: tuple[str, str, str]) -> list[str]:
        ce = signed.client("ce", user)
        out = ce.get_cost_and_usage(TimePeriod=period, Granularity="DAILY",
                                    Metrics=["UsageQuantity"],
                                    GroupBy=[{"Type": "DIMENSION", "Key": "USAGE_TYPE"}])
        return [g["Keys"][0] for r in out["ResultsByTime"] for g in r["Groups"]]

    assert any("VolumeUsage.gp3" in k for k in cost(ALICE)), cost(ALICE)
    assert cost(BOB) == []
    alice.delete_volume(VolumeId=vol["VolumeId"])
