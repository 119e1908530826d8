"""The Elastic IP manager (cloud.eips) as a library."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from test_network import S, cloud, code, make_instance  # noqa: F401  (fixture)

from ebsengine import Engine
from ebsengine.cloud import Cloud, CloudConfig, Scope


def test_allocate_from_pool_and_quota() -> None:
    with Engine("memory://") as eng:
        c = Cloud(eng, config=CloudConfig(address_quota=2, public_pool="203.0.113.0/30"))
        a = c.eips.allocate(S, tags={"k": "v"})
        b = c.eips.allocate(S)
        assert {a.public_ip, b.public_ip} == {"203.0.113.1", "203.0.113.2"}
        assert code(c.eips.allocate, S) == "AddressLimitExceeded"  # quota per region
        west = Scope("us-west-2", S.account_id)
        assert code(c.eips.allocate, west) == "AddressLimitExceeded"  # the pool is spent
        c.eips.release(S, a.id)
        assert c.eips.allocate(west).public_ip == a.public_ip
        assert c.check() == []


def test_recover_released_address(cloud: Cloud) -> None:
    a = cloud.eips.allocate(S)
    cloud.eips.release(S, a.id)
    assert code(cloud.eips.allocate, Scope("us-west-2", S.account_id), address=a.public_ip) \
        == "InvalidAddress.NotFound"  # released in another region
    again = cloud.eips.allocate(S, address=a.public_ip)
    assert again.public_ip == a.public_ip and again.id != a.id
    assert code(cloud.eips.allocate, S, address="198.18.9.9") == "InvalidAddress.NotFound"
    assert code(cloud.eips.allocate, S, address="nope") == "InvalidParameterValue"


def test_associate_with_interface_and_move(cloud: Cloud) -> None:
    vpc = cloud.network.create_vpc(S, "10.0.0.0/16")
    sub = cloud.network.create_subnet(S, vpc.id, "10.0.0.0/24")
    e1 = cloud.network.create_interface(S, sub.id)
    e2 = cloud.network.create_interface(S, sub.id)
    a = cloud.eips.allocate(S)
    assoc = cloud.eips.associate(S, a.id, network_interface_id=e1.id)
    assert cloud.eips.associate(S, a.id, network_interface_id=e1.id) == assoc  # idempotent
    got = cloud.eips.get(S, a.id)
    assert (got.association_id, got.network_interface_id, got.private_ip) == \
        (assoc, e1.id, e1.private_ip)
    assert code(cloud.eips.associate, S, a.id, network_interface_id=e2.id,
                allow_reassociation=False) == "Resource.AlreadyAssociated"
    moved = cloud.eips.associate(S, a.id, network_interface_id=e2.id)
    assert moved != assoc and cloud.eips.get(S, a.id).network_interface_id == e2.id
    # a second EIP onto e2 pushes the first off; it stays allocated
    b = cloud.eips.allocate(S)
    cloud.eips.associate(S, b.id, network_interface_id=e2.id)
    assert cloud.eips.get(S, a.id).association_id is None
    assert cloud.eips.get(S, b.id).network_interface_id == e2.id
    assert code(cloud.eips.release, S, b.id) == "InvalidIPAddress.InUse"  # not a default VPC
    assert code(cloud.eips.associate, S, a.id, network_interface_id=e1.id,
                private_ip="10.0.0.200") == "InvalidParameterValue"
    assert cloud.check() == []


def test_instance_target_and_auto_public_ip(cloud: Cloud) -> None:
    sub = cloud.network.subnets(S)[0]  # default subnet: public IPs on launch
    inst = make_instance(cloud, sub.id)
    primary = inst.network_interface_ids[0]
    auto = cloud.network.interface(S, primary).public_ip
    assert auto is not None
    a = cloud.eips.allocate(S)
    assoc = cloud.eips.associate(S, a.id, instance_id=inst.id)
    got = cloud.eips.get(S, a.id)
    assert (got.instance_id, got.network_interface_id) == (inst.id, primary)
    assert cloud.network.interface(S, primary).public_ip is None  # back in the pool
    assert cloud.check() == []
    cloud.eips.disassociate(S, assoc)
    cloud.eips.disassociate(S, assoc)  # again: nothing to do
    assert cloud.network.interface(S, primary).public_ip is not None  # a new auto address
    assert code(cloud.eips.disassociate, S, "eipassoc-0123456789abcdef0") == \
        "InvalidAssociationID.NotFound"
    # default VPC: release takes the association with it
    cloud.eips.associate(S, a.id, instance_id=inst.id)
    cloud.eips.release(S, a.id)
    assert cloud.network.interface(S, primary).public_ip is not None
    assert cloud.check() == []


def test_stopped_and_terminated_targets(cloud: Cloud) -> None:
    sub = cloud.network.subnets(S)[0]
    stopped = make_instance(cloud, sub.id, state="stopped")
    a = cloud.eips.allocate(S)
    assoc = cloud.eips.associate(S, a.id, instance_id=stopped.id)
    cloud.eips.disassociate(S, assoc)  # stopped: no auto address until it starts
    assert cloud.network.interface(S, stopped.network_interface_ids[0]).public_ip is None
    gone = make_instance(cloud, sub.id, state="terminated")
    assert code(cloud.eips.associate, S, a.id, instance_id=gone.id) == "IncorrectInstanceState"
    assert code(cloud.eips.associate, S, a.id, instance_id="i-0123456789abcdef0") == \
        "InvalidInstanceID.NotFound"
    assert code(cloud.eips.associate, S, a.id) == "MissingParameter"


def test_delete_interface_keeps_address(cloud: Cloud) -> None:
    vpc = cloud.network.create_vpc(S, "10.9.0.0/16")
    sub = cloud.network.create_subnet(S, vpc.id, "10.9.0.0/24")
    eni = cloud.network.create_interface(S, sub.id)
    a = cloud.eips.allocate(S)
    cloud.eips.associate(S, a.id, network_interface_id=eni.id)
    cloud.network.delete_interface(S, eni.id)
    assert cloud.eips.get(S, a.id).association_id is None
    assert cloud.check() == []


def test_describe(cloud: Cloud) -> None:
    addrs = [cloud.eips.allocate(S) for _ in range(3)]
    got = cloud.eips.describe(S)
    assert [x.public_ip for x in got] == sorted((x.public_ip for x in addrs),
                                                key=ipaddress.ip_address)
    assert [x.id for x in cloud.eips.describe(S, allocation_ids=[addrs[1].id])] == [addrs[1].id]
    assert code(cloud.eips.describe, S, public_ips=["1.2.3.4"]) == "InvalidAddress.NotFound"
    assert code(cloud.eips.describe, S, allocation_ids=["eipalloc-0123456789abcdef0"]) == \
        "InvalidAllocationID.NotFound"
    assert code(cloud.eips.get, S, "eipalloc-x") == "InvalidAllocationID.Malformed"


@pytest.mark.parametrize("kw", [{"domain": "standard"}, {"network_border_group": "eu-west-1"}])
def test_allocate_refused(cloud: Cloud, kw: dict[str, Any]) -> None:
    assert code(cloud.eips.allocate, S, **kw) == "InvalidParameterValue"
