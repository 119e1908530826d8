"""EBS encryption through boto3 against a real server (issue 9, EC2/EBS semantics): encrypted
CreateVolume with the default key, a named key, an alias; CopySnapshot encrypting and
re-keying, read back through the data path; disabled keys; encryption by default and the
default KMS key per region across restarts; EBS direct StartSnapshot's rules; RunInstances
block device mappings."""

from __future__ import annotations

import os
from typing import Any

import pytest

from test_aws_support import (
    BLOCK,
    Aws,
    aws,  # noqa: F401  (fixture)
    expect_error,
    put_block,
    read_block,
)

ACCOUNT = "123456789012"
EBS_ALIAS_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/aws/ebs"


def new_key(aws: Aws, client: Any = None, alias: str | None = None) -> dict[str, Any]:
    kms = client or aws.kms
    md: dict[str, Any] = kms.create_key(Description="ebs")["KeyMetadata"]
    if alias:
        kms.create_alias(AliasName=alias, TargetKeyId=md["KeyId"])
    return md


def ebs_key_arn(aws: Aws, client: Any = None) -> str:
    return str((client or aws.kms).describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"])


def volume(aws: Aws, vid: str, client: Any = None) -> dict[str, Any]:
    (v,) = (client or aws.ec2).describe_volumes(VolumeIds=[vid])["Volumes"]
    return dict(v)


def snapshot(aws: Aws, sid: str, client: Any = None) -> dict[str, Any]:
    (s,) = (client or aws.ec2).describe_snapshots(SnapshotIds=[sid])["Snapshots"]
    return dict(s)


def plain_snapshot(aws: Aws, data: bytes, index: int = 3) -> str:
    """A completed plaintext snapshot holding ``data`` at block ``index`` (EBS direct)."""
    sid = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(aws.ebs, sid, index, data)
    aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)
    return str(sid)


# --- CreateVolume ------------------------------------------------------------------------------


def test_create_encrypted_volume_names_the_key_arn(aws: Aws) -> None:
    # the default key (alias/aws/ebs, made on first use): the defect was an empty KmsKeyId
    out = aws.ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True)
    arn = ebs_key_arn(aws)
    assert arn.startswith(f"arn:aws:kms:us-east-1:{ACCOUNT}:key/")
    assert out["Encrypted"] is True and out["KmsKeyId"] == arn
    assert volume(aws, out["VolumeId"])["KmsKeyId"] == arn
    # a named key by id, by alias, by key ARN and by alias ARN: always its key ARN
    md = new_key(aws, alias="alias/data")
    for ref in (md["KeyId"], "alias/data", md["Arn"],
                f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/data"):
        vid = aws.ec2.create_volume(AvailabilityZone="us-east-1b", Size=1, Encrypted=True,
                                    KmsKeyId=ref)["VolumeId"]
        v = volume(aws, vid)
        assert (v["Encrypted"], v["KmsKeyId"]) == (True, md["Arn"]), ref
    plain = aws.volume(1)
    assert volume(aws, plain)["Encrypted"] is False and "KmsKeyId" not in volume(aws, plain)
    filtered = aws.ec2.describe_volumes(Filters=[{"Name": "encrypted", "Values": ["true"]}])
    assert plain not in {v["VolumeId"] for v in filtered["Volumes"]}
    assert len(filtered["Volumes"]) == 5


def test_create_volume_key_errors_create_nothing(aws: Aws) -> None:
    md = new_key(aws)
    west = new_key(aws, aws.kms_west)
    aws.kms.disable_key(KeyId=md["KeyId"])
    with aws.unchanged():
        r = expect_error(aws.ec2.create_volume, "InvalidParameterValue", 400,
                         AvailabilityZone="us-east-1a", Size=1, Encrypted=True,
                         KmsKeyId="alias/nope")
        assert "kmsKeyId" in r["Error"]["Message"]
        # keys are regional: a us-west-2 key is unknown in us-east-1
        expect_error(aws.ec2.create_volume, "InvalidParameterValue", 400,
                     AvailabilityZone="us-east-1a", Size=1, Encrypted=True,
                     KmsKeyId=west["KeyId"])
        expect_error(aws.ec2.create_volume, "InvalidKMSKey.InvalidState", 400,
                     AvailabilityZone="us-east-1a", Size=1, Encrypted=True,
                     KmsKeyId=md["KeyId"])
        expect_error(aws.ec2.create_volume, "InvalidParameterDependency", 400,
                     AvailabilityZone="us-east-1a", Size=1, KmsKeyId=md["KeyId"])
    assert aws.ec2.describe_volumes()["Volumes"] == []
    aws.kms.enable_key(KeyId=md["KeyId"])
    vid = aws.ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True,
                                KmsKeyId=md["KeyId"])["VolumeId"]
    assert volume(aws, vid)["KmsKeyId"] == md["Arn"]
    # the west key works in its own region
    wid = aws.ec2_west.create_volume(AvailabilityZone="us-west-2a", Size=1, Encrypted=True,
                                     KmsKeyId=west["KeyId"])["VolumeId"]
    assert volume(aws, wid, aws.ec2_west)["KmsKeyId"] == west["Arn"]


def test_volume_from_a_plaintext_snapshot_encrypted_reads_the_same(aws: Aws) -> None:
    data = os.urandom(BLOCK)
    sid = plain_snapshot(aws, data)
    md = new_key(aws)
    vid = aws.ec2.create_volume(AvailabilityZone="us-east-1a", SnapshotId=sid, Encrypted=True,
                                KmsKeyId=md["Arn"])["VolumeId"]
    assert volume(aws, vid)["KmsKeyId"] == md["Arn"]
    with aws.engine.open_volume(vid) as dev:
        assert dev.pread(BLOCK, 3 * BLOCK) == data
    # its snapshot is encrypted under the same key; a volume from that is always encrypted
    snap = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    assert (snapshot(aws, snap)["Encrypted"], snapshot(aws, snap)["KmsKeyId"]) == (True, md["Arn"])
    again = aws.ec2.create_volume(AvailabilityZone="us-east-1a", SnapshotId=snap)["VolumeId"]
    assert (volume(aws, again)["Encrypted"], volume(aws, again)["KmsKeyId"]) == (True, md["Arn"])
    assert read_block(aws.ebs, snap, 3) == data


# --- CopySnapshot ------------------------------------------------------------------------------


def test_copy_snapshot_encrypts_rekeys_and_never_decrypts(aws: Aws) -> None:
    data = os.urandom(BLOCK)
    sid = plain_snapshot(aws, data)
    enc = aws.ec2.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=sid,
                                Encrypted=True)["SnapshotId"]
    s = snapshot(aws, enc)
    assert (s["Encrypted"], s["KmsKeyId"]) == (True, ebs_key_arn(aws))
    assert read_block(aws.ebs, enc, 3) == data       # through the real (sealed) data path
    md = new_key(aws, alias="alias/other")
    rekeyed = aws.ec2.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=enc,
                                    Encrypted=True, KmsKeyId="alias/other")["SnapshotId"]
    assert snapshot(aws, rekeyed)["KmsKeyId"] == md["Arn"]
    assert read_block(aws.ebs, rekeyed, 3) == data
    # Encrypted omitted or false: an encrypted source stays encrypted, under its key
    for kw in ({}, {"Encrypted": False}):
        c = aws.ec2.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=rekeyed,
                                  **kw)["SnapshotId"]
        assert (snapshot(aws, c)["Encrypted"], snapshot(aws, c)["KmsKeyId"]) == (True, md["Arn"])
    plain = aws.ec2.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=sid)["SnapshotId"]
    assert snapshot(aws, plain)["Encrypted"] is False
    with aws.unchanged():
        expect_error(aws.ec2.copy_snapshot, "InvalidParameterValue", 400,
                     SourceRegion="us-east-1", SourceSnapshotId=sid, Encrypted=True,
                     KmsKeyId="alias/nope")


def test_cross_region_copy_resolves_the_key_in_the_destination(aws: Aws) -> None:
    data = os.urandom(BLOCK)
    sid = plain_snapshot(aws, data)
    east = new_key(aws, alias="alias/k")
    west = new_key(aws, aws.kms_west, alias="alias/k")
    c = aws.ec2_west.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=sid,
                                   Encrypted=True, KmsKeyId="alias/k")["SnapshotId"]
    s = snapshot(aws, c, aws.ec2_west)
    assert s["KmsKeyId"] == west["Arn"] != east["Arn"]
    assert read_block(aws.ebs_west, c, 3) == data
    # the default key of the destination region
    d = aws.ec2_west.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=sid,
                                   Encrypted=True)["SnapshotId"]
    assert snapshot(aws, d, aws.ec2_west)["KmsKeyId"] == ebs_key_arn(aws, aws.kms_west)
    assert ":us-west-2:" in ebs_key_arn(aws, aws.kms_west)


# --- disabled keys: the data is locked, nothing is lost -----------------------------------------


def test_disabled_key_locks_ebs_direct_reads_and_writes_until_enabled(aws: Aws) -> None:
    md = new_key(aws)
    data = os.urandom(BLOCK)
    started = aws.ebs.start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn=md["Arn"])
    assert started["KmsKeyArn"] == md["Arn"] and started["SseType"] == "sse-kms"
    sid = started["SnapshotId"]
    put_block(aws.ebs, sid, 0, data)
    aws.kms.disable_key(KeyId=md["KeyId"])
    r = expect_error(put_block, "AccessDeniedException", 403, ebs=aws.ebs, snap_id=sid,
                     index=1, data=data)
    assert r["Reason"] == "DEPENDENCY_ACCESS_DENIED"
    aws.kms.enable_key(KeyId=md["KeyId"])
    aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)
    tokens = {b["BlockIndex"]: b["BlockToken"]
              for b in aws.ebs.list_snapshot_blocks(SnapshotId=sid)["Blocks"]}
    aws.kms.disable_key(KeyId=md["KeyId"])
    r = expect_error(aws.ebs.get_snapshot_block, "AccessDeniedException", 403, SnapshotId=sid,
                     BlockIndex=0, BlockToken=tokens[0])
    assert r["Reason"] == "DEPENDENCY_ACCESS_DENIED"
    # EC2 refuses new volumes and copies of it, and creates nothing
    with aws.unchanged():
        expect_error(aws.ec2.create_volume, "InvalidKMSKey.InvalidState", 400,
                     AvailabilityZone="us-east-1a", SnapshotId=sid)
        expect_error(aws.ec2.copy_snapshot, "InvalidKMSKey.InvalidState", 400,
                     SourceRegion="us-east-1", SourceSnapshotId=sid)
    # pending deletion locks it the same way; cancelling leaves it disabled
    aws.kms.schedule_key_deletion(KeyId=md["KeyId"], PendingWindowInDays=7)
    with aws.unchanged():
        expect_error(aws.ec2.create_volume, "InvalidKMSKey.InvalidState", 400,
                     AvailabilityZone="us-east-1a", SnapshotId=sid)
        r = expect_error(aws.ebs.get_snapshot_block, "AccessDeniedException", 403,
                         SnapshotId=sid, BlockIndex=0, BlockToken=tokens[0])
        assert r["Reason"] == "DEPENDENCY_ACCESS_DENIED"
    aws.kms.cancel_key_deletion(KeyId=md["KeyId"])
    aws.kms.enable_key(KeyId=md["KeyId"])
    assert read_block(aws.ebs, sid, 0) == data
    vid = aws.ec2.create_volume(AvailabilityZone="us-east-1a", SnapshotId=sid)["VolumeId"]
    assert volume(aws, vid)["KmsKeyId"] == md["Arn"]


# --- EBS direct StartSnapshot ------------------------------------------------------------------


def test_start_snapshot_encryption_outcomes(aws: Aws) -> None:
    md = new_key(aws)
    plain = plain_snapshot(aws, os.urandom(BLOCK))
    enc = aws.ebs.start_snapshot(VolumeSize=1, Encrypted=True)
    assert enc["KmsKeyArn"] == ebs_key_arn(aws)          # the real key ARN, not the alias
    put_block(aws.ebs, enc["SnapshotId"], 0, os.urandom(BLOCK))
    aws.ebs.complete_snapshot(SnapshotId=enc["SnapshotId"], ChangedBlocksCount=1)
    # a child of an encrypted parent takes the parent's key
    child = aws.ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=enc["SnapshotId"])
    assert child["KmsKeyArn"] == enc["KmsKeyArn"] and child["SseType"] == "sse-kms"
    plain_child = aws.ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=plain)
    assert plain_child.get("KmsKeyArn") is None and plain_child["SseType"] == "none"
    with aws.unchanged():
        for kw in ({"ParentSnapshotId": plain, "Encrypted": True},
                   {"ParentSnapshotId": plain, "Encrypted": False},
                   {"ParentSnapshotId": enc["SnapshotId"], "Encrypted": True},
                   {"ParentSnapshotId": enc["SnapshotId"], "KmsKeyArn": md["Arn"]},
                   {"KmsKeyArn": md["Arn"]}):
            r = expect_error(aws.ebs.start_snapshot, "ValidationException", 400, VolumeSize=1,
                             **kw)
            assert r["Reason"] == "INVALID_PARAMETER_VALUE", kw
        r = expect_error(aws.ebs.start_snapshot, "ValidationException", 400, VolumeSize=1,
                         Encrypted=True, KmsKeyArn=f"arn:aws:kms:us-east-1:{ACCOUNT}:key/"
                                                   "00000000-0000-0000-0000-000000000000")
        assert r["Reason"] == "INVALID_CUSTOMER_KEY"
    aws.kms.disable_key(KeyId=md["KeyId"])
    with aws.unchanged():
        r = expect_error(aws.ebs.start_snapshot, "ValidationException", 400, VolumeSize=1,
                         Encrypted=True, KmsKeyArn=md["Arn"])
        assert r["Reason"] == "INVALID_CUSTOMER_KEY"


# --- encryption by default ---------------------------------------------------------------------


def test_encryption_by_default_per_region_survives_restart(aws: Aws) -> None:
    assert aws.ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    assert aws.ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == EBS_ALIAS_ARN
    assert aws.ec2.enable_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    md = new_key(aws, alias="alias/default")
    assert aws.ec2.modify_ebs_default_kms_key_id(KmsKeyId="alias/default")["KmsKeyId"] == md["Arn"]
    with aws.unchanged():
        expect_error(aws.ec2.modify_ebs_default_kms_key_id, "InvalidParameterValue", 400,
                     KmsKeyId="alias/nope")
    aws.restart()
    assert aws.ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    assert aws.ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == md["Arn"]
    # another region keeps its own settings
    assert aws.ec2_west.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    west_vol = aws.ec2_west.create_volume(AvailabilityZone="us-west-2a", Size=1)["VolumeId"]
    assert volume(aws, west_vol, aws.ec2_west)["Encrypted"] is False
    # new volumes (even Encrypted=false, even from a plaintext snapshot) and copies are
    # encrypted under the default key; an explicit key wins
    data = os.urandom(BLOCK)
    aws.ec2.disable_ebs_encryption_by_default()      # a plaintext source to start from
    plain = plain_snapshot(aws, data)
    aws.ec2.enable_ebs_encryption_by_default()
    for kw in ({"Size": 1}, {"Size": 1, "Encrypted": False}, {"SnapshotId": plain}):
        vid = aws.ec2.create_volume(AvailabilityZone="us-east-1a", **kw)["VolumeId"]
        v = volume(aws, vid)
        assert (v["Encrypted"], v["KmsKeyId"]) == (True, md["Arn"]), kw
    vid = aws.ec2.create_volume(AvailabilityZone="us-east-1a", SnapshotId=plain)["VolumeId"]
    with aws.engine.open_volume(vid) as dev:
        assert dev.pread(BLOCK, 3 * BLOCK) == data
    other = new_key(aws)
    vid = aws.ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True,
                                KmsKeyId=other["KeyId"])["VolumeId"]
    assert volume(aws, vid)["KmsKeyId"] == other["Arn"]
    copy = aws.ec2.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=plain)["SnapshotId"]
    assert snapshot(aws, copy)["KmsKeyId"] == md["Arn"]
    assert read_block(aws.ebs, copy, 3) == data
    # EBS direct: no unencrypted snapshot, no unencrypted parent; omitted means the default
    with aws.unchanged():
        expect_error(aws.ebs.start_snapshot, "ValidationException", 400, VolumeSize=1,
                     Encrypted=False)
        expect_error(aws.ebs.start_snapshot, "ValidationException", 400, VolumeSize=1,
                     ParentSnapshotId=plain)
    assert aws.ebs.start_snapshot(VolumeSize=1)["KmsKeyArn"] == md["Arn"]
    # reset: back to alias/aws/ebs; disable: plaintext again
    assert aws.ec2.reset_ebs_default_kms_key_id()["KmsKeyId"] == EBS_ALIAS_ARN
    vid = aws.ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    assert volume(aws, vid)["KmsKeyId"] == ebs_key_arn(aws)
    assert aws.ec2.disable_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    aws.restart()
    assert aws.ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    assert volume(aws, aws.volume(1))["Encrypted"] is False


def test_default_key_applies_to_encrypted_requests_without_a_key(aws: Aws) -> None:
    """ModifyEbsDefaultKmsKeyId's key is the key of Encrypted=true without KmsKeyId even
    while encryption by default is off; a disabled default key refuses them."""
    md = new_key(aws)
    aws.ec2.modify_ebs_default_kms_key_id(KmsKeyId=md["KeyId"])
    vid = aws.ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True)["VolumeId"]
    assert volume(aws, vid)["KmsKeyId"] == md["Arn"]
    aws.kms.disable_key(KeyId=md["KeyId"])
    with aws.unchanged():
        expect_error(aws.ec2.create_volume, "InvalidKMSKey.InvalidState", 400,
                     AvailabilityZone="us-east-1a", Size=1, Encrypted=True)


# --- RunInstances block device mappings ---------------------------------------------------------


def test_run_instances_mappings_encrypt_volumes(aws: Aws) -> None:
    data = os.urandom(4096)
    image_id = aws.image(data, 8192)            # a plaintext root snapshot
    md = new_key(aws, alias="alias/boot")
    iid = aws.launch(ImageId=image_id, BlockDeviceMappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True, "KmsKeyId": "alias/boot"}},
        {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1, "Encrypted": True}}])
    (inst,) = aws.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    vols = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"]}
    root, data_vol = volume(aws, vols["/dev/xvda"]), volume(aws, vols["/dev/sdf"])
    assert (root["Encrypted"], root["KmsKeyId"]) == (True, md["Arn"])
    assert (data_vol["Encrypted"], data_vol["KmsKeyId"]) == (True, ebs_key_arn(aws))
    with aws.engine.open_volume(root["VolumeId"]) as dev:   # the encrypted copy holds the AMI's bytes
        assert dev.pread(len(data), 8192) == data
    # without Encrypted the AMI's plaintext root stays plaintext; KmsKeyId alone is refused
    plain = aws.launch(ImageId=image_id)
    (p,) = aws.ec2.describe_instances(InstanceIds=[plain])["Reservations"][0]["Instances"]
    assert volume(aws, p["BlockDeviceMappings"][0]["Ebs"]["VolumeId"])["Encrypted"] is False
    with aws.unchanged():
        expect_error(aws.ec2.run_instances, "InvalidParameterDependency", 400, ImageId=image_id,
                     MinCount=1, MaxCount=1, InstanceType="t3.micro", BlockDeviceMappings=[
                         {"DeviceName": "/dev/xvda", "Ebs": {"KmsKeyId": "alias/boot"}}])
        expect_error(aws.ec2.run_instances, "InvalidParameterValue", 400, ImageId=image_id,
                     MinCount=1, MaxCount=1, InstanceType="t3.micro", BlockDeviceMappings=[
                         {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True,
                                                             "KmsKeyId": "alias/nope"}}])
    # encryption by default encrypts the volumes of a launch too
    aws.ec2.enable_ebs_encryption_by_default()
    by_default = aws.launch(ImageId=image_id)
    (b,) = aws.ec2.describe_instances(InstanceIds=[by_default])["Reservations"][0]["Instances"]
    assert volume(aws, b["BlockDeviceMappings"][0]["Ebs"]["VolumeId"])["Encrypted"] is True


@pytest.mark.parametrize("ebs, code", [
    ({"VolumeSize": 1, "Encrypted": True}, None),
    ({"VolumeSize": 1, "Encrypted": True, "KmsKeyId": "alias/aws/ebs"}, "InvalidParameterValue"),
])
def test_register_image_encrypted_empty_mapping(aws: Aws, ebs: dict[str, Any],
                                                code: str | None) -> None:
    sid = plain_snapshot(aws, os.urandom(BLOCK))
    args: dict[str, Any] = {
        "Name": "enc", "RootDeviceName": "/dev/xvda", "Architecture": "x86_64",
        "VirtualizationType": "hvm",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}},
                                {"DeviceName": "/dev/sdg", "Ebs": ebs}]}
    if code is not None:
        with aws.unchanged():
            expect_error(aws.ec2.register_image, code, 400, **args)
        return
    image_id = aws.ec2.register_image(**args)["ImageId"]
    iid = aws.launch(ImageId=image_id)
    (inst,) = aws.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"]
    vols = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"]}
    assert volume(aws, vols["/dev/sdg"])["Encrypted"] is True
    assert volume(aws, vols["/dev/xvda"])["Encrypted"] is False
