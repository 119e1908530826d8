"""The network manager (cloud.network) as a library: VPCs, subnets, interfaces, attachments."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ebsengine import Engine
from ebsengine.cloud import Cloud, Scope
from ebsengine.cloud.addressing import new_interface
from ebsengine.cloud.model import Instance
from ebsengine.errors import Ec2Error
from ebsengine.rules import new_id

S = Scope("us-east-1", "123456789012")


@pytest.fixture
def cloud() -> Any:
    with Engine("memory://") as eng:
        c = Cloud(eng, clock=lambda: 1000.0)
        c.addressing.ensure_region(S)
        yield c


def code(call: Any, *a: Any, **kw: Any) -> str:
    with pytest.raises(Ec2Error) as info:
        call(*a, **kw)
    return info.value.code


def make_instance(c: Cloud, subnet_id: str, state: str = "running") -> Instance:
    """An instance and its primary interface written through the tables, as RunInstances
    will (the instances manager replaces this after the merge)."""
    sub = c.subnets.get(subnet_id)
    assert sub is not None
    iid = new_id("i")
    with c.engine.transaction() as tx:
        ip = c.addressing.allocate_private_ip(sub, tx)
        group = next(g.id for g in c.security_groups.all(tx=tx)
                     if g.vpc_id == sub.vpc_id and g.name == "default")
        eni = new_interface(S, sub, ip, [group]).but(
            attachment={"instance_id": iid, "device_index": 0,
                        "attachment_id": new_id("eni-attach"), "delete_on_termination": True,
                        "attach_time": c.now()},
            auto_public_ip=sub.map_public_ip_on_launch)
        if eni.auto_public_ip and state == "running":
            eni = eni.but(public_ip=c.addressing.allocate_public_ip(tx))
        enis = []
        if state != "terminated":  # a terminated instance's interfaces are gone
            c.network_interfaces.put(eni, tx=tx)
            enis = [eni.id]
        inst = Instance(id=iid, region=S.region, owner_id=S.account_id, state=state,
                        availability_zone=sub.availability_zone, subnet_id=sub.id,
                        vpc_id=sub.vpc_id, private_ip=ip, network_interface_ids=enis)
        c.instance_table.put(inst, tx=tx)
    return inst


def test_default_network(cloud: Cloud) -> None:
    (vpc,) = cloud.network.vpcs(S)
    assert vpc.is_default and vpc.cidr_block == "172.31.0.0/16" and vpc.enable_dns_hostnames
    subs = cloud.network.subnets(S)
    assert len(subs) == 6 and all(s.default_for_az and s.map_public_ip_on_launch for s in subs)
    assert cloud.network.available_ips(subs[0]) == 4096 - 5
    assert cloud.check() == []


def test_vpc_lifecycle_and_dependencies(cloud: Cloud) -> None:
    vpc = cloud.network.create_vpc(S, "10.1.0.0/16", tags={"Name": "x"})
    groups = [g for g in cloud.security_groups.all() if g.vpc_id == vpc.id]
    assert [g.name for g in groups] == ["default"]
    assert not vpc.enable_dns_hostnames and vpc.enable_dns_support
    sub = cloud.network.create_subnet(S, vpc.id, "10.1.2.0/24", zone="us-east-1c")
    assert code(cloud.network.delete_vpc, S, vpc.id) == "DependencyViolation"
    eni = cloud.network.create_interface(S, sub.id)
    assert code(cloud.network.delete_subnet, S, sub.id) == "DependencyViolation"
    cloud.network.delete_interface(S, eni.id)
    cloud.network.delete_subnet(S, sub.id)
    cloud.network.delete_vpc(S, vpc.id)
    assert not [g for g in cloud.security_groups.all() if g.vpc_id == vpc.id]
    assert code(cloud.network.vpc, S, vpc.id) == "InvalidVpcID.NotFound"
    assert cloud.check() == []


@pytest.mark.parametrize("cidr, err", [
    ("10.0.0.0/8", "InvalidVpc.Range"), ("10.0.0.0/29", "InvalidVpc.Range"),
    ("10.0.0.1/16", "InvalidParameterValue"), ("banana", "InvalidParameterValue"),
    ("10.0.0.0", "InvalidParameterValue"),
])
def test_vpc_cidr_refused(cloud: Cloud, cidr: str, err: str) -> None:
    assert code(cloud.network.create_vpc, S, cidr) == err


def test_subnet_rules(cloud: Cloud) -> None:
    vpc = cloud.network.create_vpc(S, "10.2.0.0/16")
    cloud.network.create_subnet(S, vpc.id, "10.2.0.0/24")
    assert code(cloud.network.create_subnet, S, vpc.id, "10.3.0.0/24") == "InvalidSubnet.Range"
    assert code(cloud.network.create_subnet, S, vpc.id, "10.2.0.128/25") == \
        "InvalidSubnet.Conflict"
    assert code(cloud.network.create_subnet, S, vpc.id, "10.2.1.0/24",
                zone="us-west-2a") == "InvalidParameterValue"
    sub = cloud.network.create_subnet(S, vpc.id, "10.2.1.0/24", zone_id="use1-az3")
    assert sub.availability_zone == "us-east-1c"
    assert code(cloud.network.create_subnet, S, "vpc-nope", "10.2.2.0/24") == \
        "InvalidVpcID.Malformed"
    assert not cloud.network.modify_subnet(S, sub.id, map_public_ip_on_launch=False) \
        .map_public_ip_on_launch
    assert cloud.network.modify_subnet(S, sub.id, map_public_ip_on_launch=True) \
        .map_public_ip_on_launch


def test_private_ips_never_collide(cloud: Cloud) -> None:
    vpc = cloud.network.create_vpc(S, "10.4.0.0/16")
    sub = cloud.network.create_subnet(S, vpc.id, "10.4.0.0/28")
    taken = cloud.network.create_interface(S, sub.id, private_ip="10.4.0.9")
    assert code(cloud.network.create_interface, S, sub.id, private_ip="10.4.0.9") == \
        "InvalidIPAddress.InUse"
    assert code(cloud.network.create_interface, S, sub.id, private_ip="10.4.0.2") == \
        "InvalidParameterValue"  # AWS's reserved addresses
    enis = [taken]
    while True:
        try:
            enis.append(cloud.network.create_interface(S, sub.id))
        except Ec2Error as e:
            assert e.code == "InsufficientFreeAddressesInSubnet"
            break
    ips = [e.private_ip for e in enis]
    assert len(ips) == len(set(ips)) == 16 - 5
    assert all(ipaddress.ip_address(i) in ipaddress.ip_network("10.4.0.0/28") for i in ips)
    assert cloud.network.available_ips(sub) == 0
    cloud.network.delete_interface(S, enis[3].id)  # a freed address is taken again
    assert cloud.network.create_interface(S, sub.id).private_ip == enis[3].private_ip


def test_interface_groups(cloud: Cloud) -> None:
    vpc = cloud.network.create_vpc(S, "10.5.0.0/16")
    sub = cloud.network.create_subnet(S, vpc.id, "10.5.0.0/24")
    eni = cloud.network.create_interface(S, sub.id)
    (gid,) = eni.security_group_ids
    assert cloud.security_groups.get(gid).name == "default"  # type: ignore[union-attr]
    other_default = next(g.id for g in cloud.security_groups.all()
                         if g.vpc_id != vpc.id)
    assert code(cloud.network.create_interface, S, sub.id, groups=[other_default]) == \
        "InvalidGroup.NotFound"


def test_attach_detach(cloud: Cloud) -> None:
    sub = cloud.network.subnets(S)[0]
    inst = make_instance(cloud, sub.id)
    eni = cloud.network.create_interface(S, sub.id)
    assert code(cloud.network.attach_interface, S, eni.id, inst.id, 0) == "InvalidParameterValue"
    att = cloud.network.attach_interface(S, eni.id, inst.id, 1)
    got = cloud.network.interface(S, eni.id)
    assert got.attachment is not None and got.attachment["attachment_id"] == att
    assert cloud.network.instance(S, inst.id).network_interface_ids == \
        [*inst.network_interface_ids, eni.id]
    assert cloud.check() == []
    assert code(cloud.network.delete_interface, S, eni.id) == "InvalidNetworkInterface.InUse"
    primary = cloud.network.interface(S, inst.network_interface_ids[0]).attachment
    assert code(cloud.network.detach_interface, S, primary["attachment_id"]) == \
        "OperationNotPermitted"  # type: ignore[index]
    cloud.network.detach_interface(S, att)
    assert cloud.network.instance(S, inst.id).network_interface_ids == inst.network_interface_ids
    assert cloud.network.interface(S, eni.id).attachment is None
    assert code(cloud.network.detach_interface, S, att) == "InvalidAttachmentID.NotFound"
    assert cloud.check() == []


def test_attach_refusals(cloud: Cloud) -> None:
    subs = cloud.network.subnets(S)
    inst = make_instance(cloud, subs[0].id)
    elsewhere = cloud.network.create_interface(S, subs[1].id)
    assert code(cloud.network.attach_interface, S, elsewhere.id, inst.id, 1) == \
        "InvalidParameterCombination"
    gone = make_instance(cloud, subs[0].id, state="terminated")
    eni = cloud.network.create_interface(S, subs[0].id)
    assert code(cloud.network.attach_interface, S, eni.id, gone.id, 1) == \
        "IncorrectInstanceState"
    assert code(cloud.network.attach_interface, S, eni.id, "i-0123456789abcdef0", 1) == \
        "InvalidInstanceID.NotFound"
    stopped = make_instance(cloud, subs[0].id, state="stopped")
    cloud.network.attach_interface(S, eni.id, stopped.id, 2)
    assert cloud.check() == []


def test_regions_are_separate(cloud: Cloud) -> None:
    west = Scope("us-west-2", S.account_id)
    vpc = cloud.network.create_vpc(S, "10.6.0.0/16")
    assert code(cloud.network.vpc, west, vpc.id) == "InvalidVpcID.NotFound"
    assert [v.is_default for v in cloud.network.vpcs(west)] == [True]
