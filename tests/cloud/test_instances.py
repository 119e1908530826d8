"""The instance manager as a library (``Cloud(Engine("memory://"))``): launch, states on
the cloud's clock, attachments, point-in-time sets, and all-or-none units."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import store_digest
from ebsengine import Engine, errors
from ebsengine.cloud import Cloud, CloudConfig, Scope
from ebsengine.storage.memory import forget
from test_aws_support import put_image

SCOPE = Scope()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(request: Any) -> Iterator[tuple[Cloud, Clock]]:
    name = f"inst-{id(request)}"
    clock = Clock()
    with Engine(f"memory://{name}") as eng:
        yield Cloud(eng, clock=clock, config=CloudConfig(boot_seconds=5)), clock
    forget(name)


def _raises(code: str, fn: Any, *args: Any, **kw: Any) -> None:
    with pytest.raises(errors.EbsError) as info:
        fn(*args, **kw)
    assert info.value.code == code, info.value


def test_run_makes_volumes_interfaces_and_records_in_one_unit(env: tuple[Cloud, Clock]) -> None:
    cloud, clock = env
    ami = put_image(cloud, b"boot" * 100, size=2)
    insts = cloud.instances.run(SCOPE, image_id=ami, instance_type="t3.small", max_count=3)
    assert [i.state for i in insts] == ["pending"] * 3
    assert len({i.reservation_id for i in insts}) == 1
    assert len({i.private_ip for i in insts}) == 3
    root = insts[0].block_devices[0]["volume_id"]
    vol = cloud.engine.get_volume(root)
    assert vol.size_gib == 2 and vol.attachments[0]["instance_id"] == insts[0].id
    with cloud.engine.open_volume(root) as dev:
        assert dev.pread(400, 0) == b"boot" * 100
    assert cloud.instances.get(SCOPE, insts[0].id).state == "pending"
    clock.now += 5
    assert cloud.instances.get(SCOPE, insts[0].id).state == "running"
    assert cloud.check() == []


def test_failure_inside_the_unit_leaves_nothing(env: tuple[Cloud, Clock],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cloud, _ = env
    ami = put_image(cloud)
    before = store_digest(cloud.engine)
    real = cloud.network_interfaces.put
    calls = []

    def put(rec: Any, **kw: Any) -> Any:
        calls.append(rec.id)
        if len(calls) == 2:          # the second instance's interface: a crash half-way
            raise RuntimeError("power cut")
        return real(rec, **kw)

    monkeypatch.setattr(cloud.network_interfaces, "put", put)
    with pytest.raises(RuntimeError):
        cloud.instances.run(SCOPE, image_id=ami, max_count=2)
    assert store_digest(cloud.engine) == before
    assert cloud.engine.list_volumes() == [] and cloud.instance_table.all() == []


def test_states_attachments_and_terminate(env: tuple[Cloud, Clock]) -> None:
    cloud, clock = env
    ami = put_image(cloud)
    (inst,) = cloud.instances.run(SCOPE, image_id=ami)
    _raises("IncorrectInstanceState", cloud.instances.stop, SCOPE, [inst.id])  # still pending
    clock.now += 5
    vol = cloud.engine.create_volume(1, availability_zone=inst.availability_zone)
    att = cloud.instances.attach_volume(SCOPE, vol.id, inst.id, "/dev/sdh")
    assert att.delete_on_termination is False
    _raises("InvalidParameterValue", cloud.instances.attach_volume, SCOPE,
            cloud.engine.create_volume(1, availability_zone=inst.availability_zone).id,
            inst.id, "/dev/sdh")
    root = inst.block_devices[0]["volume_id"]
    _raises("IncorrectState", cloud.instances.detach_volume, SCOPE, root)
    (t,) = cloud.instances.stop(SCOPE, [inst.id])
    assert (t.previous, t.current) == ("running", "stopping")
    assert cloud.instances.get(SCOPE, inst.id).state == "stopped"
    assert cloud.instances.public_ip(cloud.instances.get(SCOPE, inst.id)) is None
    snaps = cloud.instances.create_snapshots(SCOPE, inst.id)
    assert {s.volume_id for s in snaps} == {root, vol.id}
    assert len({s.start_time for s in snaps}) == 1
    img = cloud.instances.create_image(SCOPE, inst.id, "from-lib")
    assert {m["DeviceName"] for m in img.block_device_mappings} == {"/dev/xvda", "/dev/sdh"}
    assert cloud.image_table.get(img.id) == img
    (t,) = cloud.instances.terminate(SCOPE, [inst.id])
    assert t.current == "shutting-down"
    ids = {v.id for v in cloud.engine.list_volumes()}
    assert root not in ids and vol.id in ids                  # data volume only detached
    assert cloud.engine.get_volume(vol.id).attachments == []
    assert cloud.check() == []
    clock.now += cloud.config.terminated_visible_seconds + 1
    _raises("InvalidInstanceID.NotFound", cloud.instances.get, SCOPE, inst.id)


def test_check_sees_matured_terminations(request: Any) -> None:
    """A record stored ``shutting-down`` has matured to ``terminated`` on the clock (never
    written): its subnet and VPC may then go, and cloud.check() does not count the gone
    instance as still living in them."""
    name = f"inst-mature-{id(request)}"
    clock = Clock()
    with Engine(f"memory://{name}") as eng:
        cloud = Cloud(eng, clock=clock, config=CloudConfig(terminate_seconds=5))
        vpc = cloud.network.create_vpc(SCOPE, "10.9.0.0/16")
        sub = cloud.network.create_subnet(SCOPE, vpc.id, "10.9.0.0/24")
        (inst,) = cloud.instances.run(SCOPE, image_id=put_image(cloud), subnet_id=sub.id)
        cloud.instances.terminate(SCOPE, [inst.id])
        clock.now += 10
        assert cloud.instances.get(SCOPE, inst.id).state == "terminated"
        cloud.network.delete_subnet(SCOPE, sub.id)
        cloud.network.delete_vpc(SCOPE, vpc.id)
        assert cloud.check() == []
    forget(name)


def test_run_refuses_another_accounts_subnet(env: tuple[Cloud, Clock]) -> None:
    cloud, _ = env
    ami = put_image(cloud)
    other = Scope("us-east-1", "210987654321")
    vpc = cloud.network.create_vpc(other, "10.9.0.0/16")
    sub = cloud.network.create_subnet(other, vpc.id, "10.9.0.0/24")
    before = store_digest(cloud.engine)
    _raises("InvalidSubnetID.NotFound", cloud.instances.run, SCOPE, image_id=ami,
            subnet_id=sub.id)
    assert store_digest(cloud.engine) == before


def test_max_count_beyond_the_subnet_launches_what_fits(env: tuple[Cloud, Clock]) -> None:
    """AWS: a MaxCount above what can be launched launches the largest number possible
    (at least MinCount); a MinCount above it launches none and changes nothing."""
    cloud, _ = env
    ami = put_image(cloud)
    vpc = cloud.network.create_vpc(SCOPE, "10.9.0.0/16")
    sub = cloud.network.create_subnet(SCOPE, vpc.id, "10.9.0.0/28")  # 11 usable addresses
    before = store_digest(cloud.engine)
    _raises("InsufficientFreeAddressesInSubnet", cloud.instances.run, SCOPE, image_id=ami,
            subnet_id=sub.id, min_count=12, max_count=10**9)
    assert store_digest(cloud.engine) == before
    eni = cloud.network.create_interface(SCOPE, sub.id)
    insts = cloud.instances.run(SCOPE, image_id=ami, subnet_id=sub.id, min_count=2,
                                max_count=10**9)
    assert len(insts) == 10 and [i.ami_launch_index for i in insts] == list(range(10))
    assert eni.private_ip not in {i.private_ip for i in insts}
    assert cloud.network.available_ips(sub) == 0
    assert cloud.check() == []
    _raises("InsufficientFreeAddressesInSubnet", cloud.instances.run, SCOPE, image_id=ami,
            subnet_id=sub.id)


def test_terminate_ends_elastic_ip_associations_like_delete_interface(
        env: tuple[Cloud, Clock]) -> None:
    """Terminating deletes the primary interface: its Elastic IP stays allocated, freed,
    and DisassociateAddress repeated with the association that ended succeeds (as after
    DeleteNetworkInterface)."""
    cloud, clock = env
    (inst,) = cloud.instances.run(SCOPE, image_id=put_image(cloud))
    clock.now += 5
    addr = cloud.eips.allocate(SCOPE)
    assoc = cloud.eips.associate(SCOPE, addr.id, instance_id=inst.id)
    cloud.instances.terminate(SCOPE, [inst.id])
    freed = cloud.eips.get(SCOPE, addr.id)
    assert (freed.association_id, freed.network_interface_id, freed.instance_id) == \
        (None, None, None)
    before = store_digest(cloud.engine)
    cloud.eips.disassociate(SCOPE, assoc)
    assert store_digest(cloud.engine) == before
    assert cloud.check() == []


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    from ebsengine.engine import domains as domains_mod
    monkeypatch.setattr(domains_mod, "STAGE_COMMIT_CHUNKS", 4)
    monkeypatch.setattr(domains_mod, "STAGE_WINDOW", 3)


def _copiers(cloud: Cloud) -> list[Any]:
    import json

    eng = cloud.engine
    with eng._store.read() as txn:
        lins = [json.loads(v) for _, v in txn.cursor(db=eng._store.db["lineages"])]
    return [lin for lin in lins if "copier" in lin]


def test_encrypted_volumes_of_a_plaintext_ami_are_copied_before_the_unit(
        env: tuple[Cloud, Clock], small_batches: None) -> None:
    import os
    cloud, _ = env
    data = os.urandom(10 * 65536)
    ami = put_image(cloud, data, size=1)
    # the key service's first use (alias/aws/ebs made) is left to the unit: have it done
    cloud.engine.kms.describe_key("alias/aws/ebs", SCOPE.region, SCOPE.account_id)
    before = cloud.engine._store.commit_id()
    insts = cloud.instances.run(SCOPE, image_id=ami, max_count=2, block_device_mappings=[
        {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True}}])
    # 2 volumes x 10 chunks, at most 4 chunks a transaction, then the launch's one unit
    assert cloud.engine._store.commit_id() - before >= 2 * (10 // 4) + 1
    roots = [i.block_devices[0]["volume_id"] for i in insts]
    for vid in roots:
        assert cloud.engine.get_volume(vid).encrypted
        with cloud.engine.open_volume(vid) as dev:
            assert dev.pread(len(data), 0) == data
    assert _copiers(cloud) == []  # both adopted
    assert cloud.check() == [] and cloud.engine.fsck().ok


def test_copies_staged_for_a_launch_that_fails_are_dropped(
        env: tuple[Cloud, Clock], small_batches: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    cloud, _ = env
    ami = put_image(cloud, os.urandom(6 * 65536), size=1)
    volumes = cloud.engine.list_volumes()
    real = cloud.network_interfaces.put

    def put(rec: Any, **kw: Any) -> Any:
        raise RuntimeError("power cut")

    monkeypatch.setattr(cloud.network_interfaces, "put", put)
    with pytest.raises(RuntimeError):
        cloud.instances.run(SCOPE, image_id=ami, max_count=2, block_device_mappings=[
            {"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True}}])
    monkeypatch.setattr(cloud.network_interfaces, "put", real)
    assert cloud.engine.list_volumes() == volumes and _copiers(cloud) == []
    report = cloud.engine.fsck()
    assert report.ok and "staged_copies" not in report.stats
    # a request the unit refuses (an unknown key) stages nothing and answers as before
    _raises("NotFoundException", cloud.instances.run, SCOPE, image_id=ami,
            block_device_mappings=[{"DeviceName": "/dev/xvda",
                                    "Ebs": {"Encrypted": True, "KmsKeyId": "alias/nope"}}])
    assert cloud.engine.list_volumes() == volumes and _copiers(cloud) == []
