"""cloud.images through the library (no HTTP): register, describe, deregister, copy,
attributes, the snapshot-in-use rule; refusals leave the store byte-identical."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import ebsengine
from conftest import store_digest
from ebsengine import errors
from ebsengine.cloud import Cloud, CloudConfig, Scope
from ebsengine.cloud.model import Image
from ebsengine.cloud.scope import put_snapshot_region, snapshot_region

EAST = Scope("us-east-1", "123456789012")
WEST = Scope("us-west-2", "123456789012")
OTHER = Scope("us-east-1", "210987654321")


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cloud(tmp_path: Any, clock: Clock) -> Iterator[Cloud]:
    with ebsengine.Engine(str(tmp_path / "store")) as eng:
        yield Cloud(eng, clock=clock, config=CloudConfig(deregistered_visible_seconds=600))


def snapshot(cloud: Cloud, size: int = 2, data: bytes = b"root bytes",
             owner: str | None = None) -> str:
    """A snapshot holding ``data``; ``owner``: the account it is recorded as belonging to
    (None: no record, open mode's account)."""
    eng = cloud.engine
    vol = eng.create_volume(size, "gp3", availability_zone="us-east-1a")
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(data, 4096)
        dev.flush()
    with eng.transaction(flush=[vol.id]) as tx:
        snap = eng.create_snapshot(vol.id, tx=tx)
        if owner is not None:
            put_snapshot_region(eng, tx, snap.id, "us-east-1", owner)
    return str(snap.id)


def register(cloud: Cloud, sid: str, name: str = "base", scope: Scope = EAST,
             **kw: Any) -> Image:
    return cloud.images.register(scope, name=name, root_device_name="/dev/xvda",
                                 block_device_mappings=[{"DeviceName": "/dev/xvda",
                                                         "Ebs": {"SnapshotId": sid}}], **kw)


def refused(cloud: Cloud, code: str, call: Any, *args: Any, **kw: Any) -> None:
    before = store_digest(cloud.engine)
    with pytest.raises(errors.EbsError) as info:
        call(*args, **kw)
    assert info.value.code == code, info.value
    assert store_digest(cloud.engine) == before


def test_register_defaults_and_mapping(cloud: Cloud) -> None:
    sid = snapshot(cloud, size=3)
    img = register(cloud, sid, description="d", tags={"k": "v"})
    assert (img.architecture, img.virtualization_type) == ("i386", "paravirtual")
    assert img.state == "available" and img.owner_id == EAST.account_id
    assert img.block_device_mappings == [{"DeviceName": "/dev/xvda", "Ebs": {
        "SnapshotId": sid, "VolumeSize": 3, "VolumeType": "gp2", "DeleteOnTermination": True,
        "Encrypted": False}}]
    assert cloud.images.find(EAST, img.id) == img
    assert cloud.images.launchable(EAST, img.id).id == img.id
    assert cloud.check() == []


def test_register_gp3_fills_iops_and_throughput(cloud: Cloud) -> None:
    sid = snapshot(cloud)
    img = cloud.images.register(
        EAST, name="gp3 image", root_device_name="/dev/sda1", architecture="x86_64",
        virtualization_type="hvm", ena_support=True,
        block_device_mappings=[{"DeviceName": "/dev/sda1",
                                "Ebs": {"SnapshotId": sid, "VolumeType": "gp3",
                                        "VolumeSize": 8, "DeleteOnTermination": False}},
                               {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 4}}])
    root, data = img.block_device_mappings
    assert root["Ebs"] == {"SnapshotId": sid, "VolumeType": "gp3", "VolumeSize": 8,
                           "DeleteOnTermination": False, "Iops": 3000, "Throughput": 125,
                           "Encrypted": False}
    assert data["Ebs"]["VolumeSize"] == 4 and "SnapshotId" not in data["Ebs"]
    assert img.ena_support is True


@pytest.mark.parametrize("kw, code", [
    ({"name": "x"}, "InvalidAMIName.Malformed"),
    ({"name": "bad*name"}, "InvalidAMIName.Malformed"),
    ({"root_device_name": None}, "MissingParameter"),
    ({"root_device_name": "/dev/xvdz"}, "InvalidBlockDeviceMapping"),
    ({"root_device_name": "sda"}, "InvalidParameterValue"),
    ({"architecture": "sparc"}, "InvalidParameterValue"),
    ({"virtualization_type": "hvm2"}, "InvalidParameterValue"),
    ({"ena_support": True}, "InvalidParameterCombination"),  # paravirtual by default
    ({"block_device_mappings": []}, "MissingParameter"),
    ({"bdm": {"VolumeSize": 1}}, "InvalidBlockDeviceMapping"),
    ({"bdm": {"Encrypted": False}}, "InvalidBlockDeviceMapping"),
    ({"bdm": {"VolumeType": "io1", "VolumeSize": 8}}, "MissingParameter"),
    ({"bdm": {"VolumeType": "gp9"}}, "InvalidParameterValue"),
    ({"bdm": {"SnapshotId": "snap-0123456789abcdef0"}}, "InvalidSnapshot.NotFound"),
    ({"bdm": {"SnapshotId": "snapshot"}}, "InvalidSnapshotID.Malformed"),
    ({"image_location": "bucket/manifest.xml"}, "InvalidParameterValue"),
    ({"kernel_id": "aki-12345678"}, "InvalidAKIID.NotFound"),
    ({"tags": {"aws:x": "y"}}, "InvalidParameterValue"),
])
def test_register_refused(cloud: Cloud, kw: dict[str, Any], code: str) -> None:
    sid = snapshot(cloud, size=2)
    args: dict[str, Any] = {"name": "base", "root_device_name": "/dev/xvda",
                            "block_device_mappings": [{"DeviceName": "/dev/xvda",
                                                       "Ebs": {"SnapshotId": sid}}]}
    bdm = kw.pop("bdm", None)
    if bdm is not None:
        args["block_device_mappings"] = [{"DeviceName": "/dev/xvda",
                                          "Ebs": {"SnapshotId": sid, **bdm}}]
    args.update(kw)
    refused(cloud, code, cloud.images.register, EAST, **args)


def test_register_refuses_smaller_volume_and_duplicate_device(cloud: Cloud) -> None:
    sid = snapshot(cloud, size=4)
    refused(cloud, "InvalidBlockDeviceMapping", cloud.images.register, EAST, name="small",
            root_device_name="/dev/xvda",
            block_device_mappings=[{"DeviceName": "/dev/xvda",
                                    "Ebs": {"SnapshotId": sid, "VolumeSize": 3}}])
    refused(cloud, "InvalidBlockDeviceMapping", cloud.images.register, EAST, name="twice",
            root_device_name="/dev/xvda",
            block_device_mappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}},
                                   {"DeviceName": "/dev/xvda", "NoDevice": ""}])


def test_snapshot_of_another_region_is_not_found(cloud: Cloud) -> None:
    sid = snapshot(cloud)
    refused(cloud, "InvalidSnapshot.NotFound", register, cloud, sid, scope=WEST)


def test_duplicate_name_until_deregistered(cloud: Cloud) -> None:
    sid = snapshot(cloud)
    img = register(cloud, sid)
    refused(cloud, "InvalidAMIName.Duplicate", register, cloud, sid)
    register(cloud, snapshot(cloud, owner=OTHER.account_id), scope=OTHER)  # names are per account
    # an image is registered from the account's own snapshots only
    refused(cloud, "InvalidSnapshot.NotFound", register, cloud, sid, name="other", scope=OTHER)
    cloud.images.deregister(EAST, img.id)
    again = register(cloud, sid)
    assert again.id != img.id


def test_snapshot_in_use_until_deregistered(cloud: Cloud) -> None:
    sid = snapshot(cloud)
    img = register(cloud, sid)
    assert cloud.images.snapshot_in_use(EAST, sid) == img.id
    with cloud.engine.transaction() as tx:
        with pytest.raises(errors.Ec2Error) as info:
            cloud.images.check_snapshot_deletable(EAST, sid, tx)
    assert info.value.code == "InvalidSnapshot.InUse"
    assert f"{sid} is currently in use by {img.id}" in info.value.message
    cloud.images.deregister(EAST, img.id)
    assert cloud.images.snapshot_in_use(EAST, sid) is None


def test_deregistered_lingers_then_vanishes(cloud: Cloud, clock: Clock) -> None:
    sid = snapshot(cloud)
    img = register(cloud, sid)
    assert cloud.images.deregister(EAST, img.id) == []
    seen = cloud.images.find(EAST, img.id)
    assert seen.state == "deregistered"
    assert [i.id for i in cloud.images.describe(EAST)] == [img.id]
    refused(cloud, "InvalidAMIID.Unavailable", cloud.images.launchable, EAST, img.id)
    refused(cloud, "InvalidAMIID.Unavailable", cloud.images.deregister, EAST, img.id)
    cloud.engine.get_snapshot(sid)  # kept without DeleteAssociatedSnapshots
    clock.t += 601
    refused(cloud, "InvalidAMIID.NotFound", cloud.images.find, EAST, img.id)
    assert cloud.images.describe(EAST) == []
    assert cloud.image_table.get(img.id) is not None  # reads never write
    register(cloud, sid, name="next")  # the next image write purges it
    assert cloud.image_table.get(img.id) is None


def test_deregister_deletes_snapshots_but_keeps_shared_ones(cloud: Cloud) -> None:
    shared, own = snapshot(cloud), snapshot(cloud)
    a = cloud.images.register(EAST, name="image a", root_device_name="/dev/xvda",
                              block_device_mappings=[
                                  {"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": own}},
                                  {"DeviceName": "/dev/sdf", "Ebs": {"SnapshotId": shared}}])
    register(cloud, shared, name="image b")
    results = cloud.images.deregister(EAST, a.id, delete_associated_snapshots=True)
    assert results == [(own, "success"), (shared, "skipped")]
    with pytest.raises(errors.NotFound):
        cloud.engine.get_snapshot(own)
    cloud.engine.get_snapshot(shared)
    assert cloud.engine.service_get("aws.snapshot", own) is None
    assert cloud.check() == []


def test_visibility_owners_and_executable_users(cloud: Cloud) -> None:
    sid = snapshot(cloud)
    mine = register(cloud, sid, name="mine")
    theirs = register(cloud, snapshot(cloud, owner=OTHER.account_id), name="theirs", scope=OTHER)
    assert [i.id for i in cloud.images.describe(EAST)] == [mine.id]
    refused(cloud, "InvalidAMIID.NotFound", cloud.images.describe, EAST, image_ids=[theirs.id])
    refused(cloud, "InvalidAMIID.Malformed", cloud.images.describe, EAST, image_ids=["ami-x"])
    refused(cloud, "InvalidAMIID.NotFound", cloud.images.modify_attribute, OTHER, mine.id,
            description="x")  # private: others cannot even see it
    cloud.images.modify_attribute(OTHER, theirs.id,
                                  launch_add=[{"UserId": EAST.account_id}])
    ids = {i.id for i in cloud.images.describe(EAST)}
    assert ids == {mine.id, theirs.id}
    assert [i.id for i in cloud.images.describe(EAST, owners=["self"])] == [mine.id]
    assert [i.id for i in cloud.images.describe(EAST, owners=[OTHER.account_id])] == [theirs.id]
    assert cloud.images.describe(EAST, owners=["amazon"]) == []
    assert [i.id for i in cloud.images.describe(EAST, executable_users=["self"])] == [theirs.id]
    assert cloud.images.describe(EAST, executable_users=["all"]) == []
    refused(cloud, "InvalidUserID.Malformed", cloud.images.describe, EAST, owners=["bob"])
    refused(cloud, "AuthFailure", cloud.images.modify_attribute, EAST, theirs.id,
            description="mine now")
    refused(cloud, "AuthFailure", cloud.images.deregister, EAST, theirs.id)
    assert cloud.images.launchable(EAST, theirs.id).id == theirs.id
    cloud.images.modify_attribute(OTHER, theirs.id, launch_add=[{"Group": "all"}],
                                  launch_remove=[{"UserId": EAST.account_id}])
    assert [i.id for i in cloud.images.describe(EAST, executable_users=["all"])] == [theirs.id]
    cloud.images.reset_attribute(OTHER, theirs.id, "launchPermission")
    assert [i.id for i in cloud.images.describe(EAST)] == [mine.id]


def test_modify_refusals(cloud: Cloud) -> None:
    img = register(cloud, snapshot(cloud))
    refused(cloud, "InvalidAMIAttributeItemValue", cloud.images.modify_attribute, EAST, img.id,
            launch_add=[{"UserId": "12"}])
    refused(cloud, "InvalidAMIAttributeItemValue", cloud.images.modify_attribute, EAST, img.id,
            launch_add=[{"Group": "everyone"}])
    refused(cloud, "InvalidParameterValue", cloud.images.modify_attribute, EAST, img.id,
            imds_support="v1")
    refused(cloud, "InvalidParameterValue", cloud.images.reset_attribute, EAST, img.id,
            "description")
    refused(cloud, "InvalidAMIID.NotFound", cloud.images.modify_attribute, EAST,
            "ami-0123456789abcdef0", description="x")
    out = cloud.images.modify_attribute(EAST, img.id, description="new", imds_support="v2.0")
    assert (out.description, out.imds_support) == ("new", "v2.0")
    assert cloud.images.attribute(EAST, img.id, "description") == "new"
    assert cloud.images.attribute(EAST, img.id, "kernel") is None


def test_copy_across_regions_shares_bytes(cloud: Cloud) -> None:
    data = bytes(range(256)) * 64
    sid = snapshot(cloud, data=data)
    src = register(cloud, sid, tags={"team": "a"})
    copy = cloud.images.copy(WEST, source_image_id=src.id, source_region="us-east-1",
                             name="west copy", copy_image_tags=True,
                             snapshot_tags={"copied": "yes"})
    assert (copy.region, copy.source_image_id, copy.source_region) == (
        "us-west-2", src.id, "us-east-1")
    assert copy.tags == {"team": "a"}
    (new_sid,) = [m["Ebs"]["SnapshotId"] for m in copy.block_device_mappings]
    assert new_sid != sid
    snap = cloud.engine.get_snapshot(new_sid)
    assert snap.tags == {"copied": "yes"}
    assert snapshot_region(cloud.engine, snap) == "us-west-2"
    with cloud.engine.open_snapshot(new_sid) as dev:
        assert dev.pread(len(data), 4096) == data
    assert cloud.images.snapshot_in_use(WEST, new_sid) == copy.id
    refused(cloud, "InvalidAMIID.NotFound", cloud.images.copy, WEST, source_image_id=src.id,
            source_region="us-west-2", name="wrong region")
    # a key unknown in the destination region: KMS's refusal, nothing copied
    refused(cloud, "NotFoundException", cloud.images.copy, WEST, source_image_id=src.id,
            source_region="us-east-1", name="enc", encrypted=True, kms_key_id="alias/nope")
    enc = cloud.images.copy(WEST, source_image_id=src.id, source_region="us-east-1",
                            name="enc", encrypted=True)
    enc_sid = enc.block_device_mappings[0]["Ebs"]["SnapshotId"]
    enc_snap = cloud.engine.get_snapshot(enc_sid)
    assert enc_snap.encrypted and ":us-west-2:" in str(enc_snap.kms_key_id)
    with cloud.engine.open_snapshot(enc_sid) as dev:
        assert dev.pread(len(data), 4096) == data
    refused(cloud, "InvalidAMIName.Duplicate", cloud.images.copy, WEST, source_image_id=src.id,
            source_region="us-east-1", name="west copy")
    assert cloud.check() == []


def test_copy_client_token_is_idempotent(cloud: Cloud) -> None:
    src = register(cloud, snapshot(cloud))
    a = cloud.images.copy(EAST, source_image_id=src.id, source_region="us-east-1",
                          name="copy", client_token="tok-1")
    b = cloud.images.copy(EAST, source_image_id=src.id, source_region="us-east-1",
                          name="copy", client_token="tok-1")
    assert a.id == b.id and len(cloud.images.describe(EAST)) == 2
    refused(cloud, "IdempotentParameterMismatch", cloud.images.copy, EAST,
            source_image_id=src.id, source_region="us-east-1", name="other",
            client_token="tok-1")


def test_pending_image_matures_with_its_snapshots(cloud: Cloud) -> None:
    """CreateImage (the instances layer) writes a pending image naming its new snapshots:
    it reads as available once they completed, failed when one is gone."""
    sid = snapshot(cloud)
    with cloud.engine.transaction() as tx:
        put_snapshot_region(cloud.engine, tx, sid, "us-east-1")
        cloud.image_table.put(Image(id="ami-0123456789abcdef0", region="us-east-1",
                                    owner_id=EAST.account_id, name="from instance",
                                    state="pending", source_instance_id="i-0123456789abcdef0",
                                    block_device_mappings=[{"DeviceName": "/dev/xvda", "Ebs": {
                                        "SnapshotId": sid, "VolumeSize": 2}}]), tx=tx)
    assert cloud.images.find(EAST, "ami-0123456789abcdef0").state == "available"
    with cloud.engine.transaction() as tx:
        cloud.engine.delete_snapshot(sid, tx=tx)
    assert cloud.images.find(EAST, "ami-0123456789abcdef0").state == "failed"


def test_an_encrypting_copy_is_staged_before_its_unit_and_a_refused_one_leaves_nothing(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from ebsengine.engine import domains as domains_mod
    monkeypatch.setattr(domains_mod, "STAGE_COMMIT_CHUNKS", 4)
    monkeypatch.setattr(domains_mod, "STAGE_WINDOW", 3)
    data = os.urandom(10 * 65536)
    src = register(cloud, snapshot(cloud, data=data, owner=EAST.account_id))
    # the region's first encrypted copy makes alias/aws/ebs: left to the unit, so that a
    # refusal leaves no key behind
    refused(cloud, "InvalidAMIName.Duplicate", cloud.images.copy, EAST, source_image_id=src.id,
            source_region="us-east-1", name="base", encrypted=True)
    before = cloud.engine._store.commit_id()
    first = cloud.images.copy(EAST, source_image_id=src.id, source_region="us-east-1",
                              name="first", encrypted=True)
    assert cloud.engine._store.commit_id() - before <= 2  # copied in the unit, not in batches
    # refused by the unit after its copy was staged: the staged copy goes, the store is
    # as it was
    refused(cloud, "InvalidAMIName.Duplicate", cloud.images.copy, EAST, source_image_id=src.id,
            source_region="us-east-1", name="first", encrypted=True)
    before = cloud.engine._store.commit_id()
    enc = cloud.images.copy(EAST, source_image_id=src.id, source_region="us-east-1",
                            name="enc", encrypted=True)
    assert cloud.engine._store.commit_id() - before >= 10 // 4 + 1  # batches, then the unit
    for img in (first, enc):
        sid = img.block_device_mappings[0]["Ebs"]["SnapshotId"]
        assert cloud.engine.get_snapshot(sid).encrypted
        with cloud.engine.open_snapshot(sid) as dev:
            assert dev.pread(len(data), 4096) == data
    report = cloud.engine.fsck()
    assert report.ok and "staged_copies" not in report.stats
    assert cloud.check() == []
