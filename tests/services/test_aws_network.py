"""VPCs, subnets and network interfaces through boto3 against a real server (issue 8)."""

from __future__ import annotations

from typing import Any

import pytest

from ebsengine.cloud import Cloud, Scope
from ebsengine.cloud.addressing import new_interface
from ebsengine.cloud.model import Instance
from ebsengine.rules import new_id
from test_aws_support import Aws, aws, expect_error  # noqa: F401  (fixture)


def tags(**kv: str) -> list[dict[str, Any]]:
    return [{"Key": k, "Value": v} for k, v in kv.items()]


def spec(rtype: str, **kv: str) -> list[dict[str, Any]]:
    return [{"ResourceType": rtype, "Tags": tags(**kv)}]


def put_instance(aws: Aws, subnet_id: str, state: str = "running") -> tuple[str, str]:
    """An instance with its primary interface, written through the library tables (as
    RunInstances will once the instances layer is merged): ``(instance id, eni id)``."""
    c = Cloud(aws.engine)
    s = Scope()
    sub = c.subnets.get(subnet_id)
    assert sub is not None
    iid = new_id("i")
    with aws.engine.transaction() as tx:
        ip = c.addressing.allocate_private_ip(sub, tx)
        gid = next(g.id for g in c.security_groups.all(tx=tx)
                   if g.vpc_id == sub.vpc_id and g.name == "default")
        eni = new_interface(s, sub, ip, [gid]).but(
            attachment={"instance_id": iid, "device_index": 0,
                        "attachment_id": new_id("eni-attach"), "delete_on_termination": True,
                        "attach_time": c.now()}, auto_public_ip=sub.map_public_ip_on_launch)
        if eni.auto_public_ip and state == "running":
            eni = eni.but(public_ip=c.addressing.allocate_public_ip(tx))
        c.network_interfaces.put(eni, tx=tx)
        c.instance_table.put(Instance(id=iid, region=s.region, owner_id=s.account_id,
                                      state=state, availability_zone=sub.availability_zone,
                                      subnet_id=sub.id, vpc_id=sub.vpc_id, private_ip=ip,
                                      network_interface_ids=[eni.id]), tx=tx)
    return iid, eni.id


def check(aws: Aws) -> None:
    assert Cloud(aws.engine).check() == []


# --- default network ---------------------------------------------------------------------


def test_default_vpc_and_subnets(aws: Aws) -> None:
    (vpc,) = aws.ec2.describe_vpcs()["Vpcs"]
    assert vpc["IsDefault"] and vpc["CidrBlock"] == "172.31.0.0/16" and vpc["State"] == "available"
    assert vpc["CidrBlockAssociationSet"][0]["CidrBlock"] == "172.31.0.0/16"
    assert vpc["OwnerId"] == "123456789012"
    subs = aws.ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])
    zones = sorted(s["AvailabilityZone"] for s in subs["Subnets"])
    assert zones == [f"us-east-1{c}" for c in "abcdef"]
    s0 = next(s for s in subs["Subnets"] if s["AvailabilityZone"] == "us-east-1a")
    assert s0["MapPublicIpOnLaunch"] and s0["AvailableIpAddressCount"] == 4091
    assert s0["AvailabilityZoneId"] == "use1-az1" and s0["VpcId"] == vpc["VpcId"]
    attr = aws.ec2.describe_vpc_attribute(VpcId=vpc["VpcId"], Attribute="enableDnsHostnames")
    assert attr["EnableDnsHostnames"]["Value"] is True
    (west,) = aws.ec2_west.describe_vpcs()["Vpcs"]  # another region has its own
    assert west["IsDefault"] and west["VpcId"] != vpc["VpcId"]


# --- VPCs --------------------------------------------------------------------------------


def test_vpc_lifecycle_survives_restart(aws: Aws) -> None:
    out = aws.ec2.create_vpc(CidrBlock="10.0.0.0/16", TagSpecifications=spec("vpc", Name="net"))
    vpc = out["Vpc"]
    assert vpc["State"] == "pending" and vpc["IsDefault"] is False
    assert vpc["Tags"] == tags(Name="net")
    vid = vpc["VpcId"]
    aws.restart()
    (got,) = aws.ec2.describe_vpcs(VpcIds=[vid])["Vpcs"]
    assert got["State"] == "available" and got["CidrBlock"] == "10.0.0.0/16"
    groups = aws.engine.service_items("ec2.sg")
    assert [g["name"] for _, g in groups if g["vpc_id"] == vid] == ["default"]
    for attr, key, value in [("enableDnsSupport", "EnableDnsSupport", True),
                             ("enableDnsHostnames", "EnableDnsHostnames", False)]:
        assert aws.ec2.describe_vpc_attribute(VpcId=vid, Attribute=attr)[key]["Value"] is value
    aws.ec2.modify_vpc_attribute(VpcId=vid, EnableDnsHostnames={"Value": True})
    aws.restart()
    assert aws.ec2.describe_vpc_attribute(VpcId=vid, Attribute="enableDnsHostnames")[
        "EnableDnsHostnames"]["Value"] is True
    with aws.unchanged():
        expect_error(aws.ec2.modify_vpc_attribute, "InvalidParameterValue", 400, VpcId=vid,
                     EnableDnsSupport={"Value": False})  # hostnames need DNS support
    aws.ec2.delete_vpc(VpcId=vid)
    aws.restart()
    expect_error(aws.ec2.describe_vpcs, "InvalidVpcID.NotFound", 400, VpcIds=[vid])
    assert not [g for _, g in aws.engine.service_items("ec2.sg") if g["vpc_id"] == vid]
    check(aws)


@pytest.mark.parametrize("cidr, err", [
    ("10.0.0.0/8", "InvalidVpc.Range"), ("10.0.0.0/29", "InvalidVpc.Range"),
    ("10.0.0.5/16", "InvalidParameterValue"), ("not-a-cidr", "InvalidParameterValue"),
])
def test_create_vpc_refused(aws: Aws, cidr: str, err: str) -> None:
    with aws.unchanged():
        expect_error(aws.ec2.create_vpc, err, 400, CidrBlock=cidr)


def test_create_vpc_bad_tags_refused(aws: Aws) -> None:
    with aws.unchanged():
        expect_error(aws.ec2.create_vpc, "InvalidParameterValue", 400, CidrBlock="10.0.0.0/16",
                     TagSpecifications=spec("subnet", a="b"))


def test_delete_vpc_dependencies(aws: Aws) -> None:
    vid = aws.ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    sid = aws.ec2.create_subnet(VpcId=vid, CidrBlock="10.1.0.0/24")["Subnet"]["SubnetId"]
    with aws.unchanged():
        expect_error(aws.ec2.delete_vpc, "DependencyViolation", 400, VpcId=vid)
    aws.ec2.delete_subnet(SubnetId=sid)
    # a non-default group blocks it too (written through the table: groups are another layer's)
    from ebsengine.cloud.model import SecurityGroup
    c = Cloud(aws.engine)
    with aws.engine.transaction() as tx:
        c.security_groups.put(SecurityGroup(id=new_id("sg"), region="us-east-1",
                                            owner_id="123456789012", vpc_id=vid, name="web"),
                              tx=tx)
    with aws.unchanged():
        expect_error(aws.ec2.delete_vpc, "DependencyViolation", 400, VpcId=vid)


def test_vpc_ids_and_filters(aws: Aws) -> None:
    a = aws.ec2.create_vpc(CidrBlock="10.2.0.0/16",
                           TagSpecifications=spec("vpc", env="prod"))["Vpc"]["VpcId"]
    b = aws.ec2.create_vpc(CidrBlock="10.3.0.0/24")["Vpc"]["VpcId"]

    def ids(*filters: tuple[str, list[str]]) -> set[str]:
        out = aws.ec2.describe_vpcs(Filters=[{"Name": n, "Values": v} for n, v in filters])
        return {v["VpcId"] for v in out["Vpcs"]}

    assert ids(("vpc-id", [a])) == {a}
    assert ids(("cidr", ["10.3.0.0/24"])) == {b}
    assert ids(("cidr-block-association.cidr-block", ["10.2.*"])) == {a}
    assert ids(("is-default", ["false"])) == {a, b}
    assert len(ids(("is-default", ["true"]))) == 1
    assert ids(("state", ["available"]), ("owner-id", ["123456789012"]), ("tag:env", ["prod"])) \
        == {a}
    assert ids(("tag-key", ["env"])) == {a}
    expect_error(aws.ec2.describe_vpcs, "InvalidParameterValue", 400,
                 Filters=[{"Name": "colour", "Values": ["x"]}])
    expect_error(aws.ec2.describe_vpcs, "InvalidVpcID.Malformed", 400, VpcIds=["vpc-zz"])
    expect_error(aws.ec2.describe_vpcs, "InvalidVpcID.NotFound", 400,
                 VpcIds=[a, "vpc-0123456789abcdef0"])
    first = aws.ec2.describe_vpcs(MaxResults=5)
    assert len(first["Vpcs"]) == 3 and "NextToken" not in first
    pages = list(aws.ec2.get_paginator("describe_vpcs").paginate(PaginationConfig={"PageSize": 5}))
    assert sum(len(p["Vpcs"]) for p in pages) == 3


def test_vpc_errors(aws: Aws) -> None:
    with aws.unchanged():
        expect_error(aws.ec2.delete_vpc, "InvalidVpcID.NotFound", 400,
                     VpcId="vpc-0123456789abcdef0")
        expect_error(aws.ec2.delete_vpc, "InvalidVpcID.Malformed", 400, VpcId="vpc-1")
        expect_error(aws.ec2.describe_vpc_attribute, "InvalidVpcID.NotFound", 400,
                     VpcId="vpc-0123456789abcdef0", Attribute="enableDnsSupport")


# --- subnets -----------------------------------------------------------------------------


def test_subnet_lifecycle(aws: Aws) -> None:
    vid = aws.ec2.create_vpc(CidrBlock="10.4.0.0/16")["Vpc"]["VpcId"]
    sub = aws.ec2.create_subnet(VpcId=vid, CidrBlock="10.4.1.0/24", AvailabilityZone="us-east-1b",
                                TagSpecifications=spec("subnet", Name="a"))["Subnet"]
    assert sub["State"] == "pending" and sub["AvailableIpAddressCount"] == 251
    assert sub["DefaultForAz"] is False and sub["MapPublicIpOnLaunch"] is False
    assert sub["SubnetArn"].endswith(":subnet/" + sub["SubnetId"])
    sid = sub["SubnetId"]
    by_id = aws.ec2.create_subnet(VpcId=vid, CidrBlock="10.4.2.0/24",
                                  AvailabilityZoneId="use1-az4")["Subnet"]
    assert by_id["AvailabilityZone"] == "us-east-1d"
    aws.ec2.modify_subnet_attribute(SubnetId=sid, MapPublicIpOnLaunch={"Value": True})
    aws.restart()
    (got,) = aws.ec2.describe_subnets(SubnetIds=[sid])["Subnets"]
    assert got["State"] == "available" and got["MapPublicIpOnLaunch"] is True
    assert got["Tags"] == tags(Name="a")

    def ids(*filters: tuple[str, list[str]]) -> set[str]:
        out = aws.ec2.describe_subnets(Filters=[{"Name": n, "Values": v} for n, v in filters])
        return {s["SubnetId"] for s in out["Subnets"]}

    assert ids(("vpc-id", [vid])) == {sid, by_id["SubnetId"]}
    assert ids(("vpc-id", [vid]), ("availability-zone", ["us-east-1b"])) == {sid}
    assert ids(("cidr-block", ["10.4.2.0/24"])) == {by_id["SubnetId"]}
    # the camelCase aliases AWS documents for DescribeSubnets, and the free-address count
    assert ids(("vpc-id", [vid]), ("availabilityZone", ["us-east-1b"])) == {sid}
    assert ids(("vpc-id", [vid]), ("availabilityZoneId", ["use1-az4"])) == {by_id["SubnetId"]}
    assert ids(("vpc-id", [vid]), ("available-ip-address-count", ["251"])) == \
        {sid, by_id["SubnetId"]}
    assert ids(("vpc-id", [vid]), ("available-ip-address-count", ["250"])) == set()
    assert ids(("vpc-id", [vid]), ("map-public-ip-on-launch", ["true"])) == {sid}
    assert ids(("subnet-id", [sid]), ("state", ["available"]), ("tag:Name", ["a"])) == {sid}
    assert ids(("vpc-id", [vid]), ("default-for-az", ["true"])) == set()
    all_subs = aws.ec2.describe_subnets(MaxResults=5)
    assert len(all_subs["Subnets"]) == 5 and all_subs["NextToken"]
    rest = aws.ec2.describe_subnets(MaxResults=5, NextToken=all_subs["NextToken"])
    assert len(rest["Subnets"]) == 3 and "NextToken" not in rest
    aws.ec2.delete_subnet(SubnetId=sid)
    aws.restart()
    expect_error(aws.ec2.describe_subnets, "InvalidSubnetID.NotFound", 400, SubnetIds=[sid])
    check(aws)


@pytest.mark.parametrize("kw, err", [
    ({"CidrBlock": "10.9.0.0/24"}, "InvalidSubnet.Range"),
    ({"CidrBlock": "10.5.0.128/25"}, "InvalidSubnet.Conflict"),
    ({"CidrBlock": "10.5.0.0/16"}, "InvalidSubnet.Conflict"),
    ({"CidrBlock": "10.5.1.0/29"}, "InvalidSubnet.Range"),
    ({"CidrBlock": "10.5.1.0/24", "AvailabilityZone": "us-west-2a"}, "InvalidParameterValue"),
    ({"CidrBlock": "10.5.1.0/24", "AvailabilityZoneId": "use1-az9"}, "InvalidParameterValue"),
    ({"CidrBlock": "10.5.1.0/24", "VpcId": "vpc-0123456789abcdef0"}, "InvalidVpcID.NotFound"),
    ({"CidrBlock": "10.5.1.0/24", "VpcId": "vpc-x"}, "InvalidVpcID.Malformed"),
])
def test_create_subnet_refused(aws: Aws, kw: dict[str, Any], err: str) -> None:
    vid = aws.ec2.create_vpc(CidrBlock="10.5.0.0/16")["Vpc"]["VpcId"]
    aws.ec2.create_subnet(VpcId=vid, CidrBlock="10.5.0.0/24")
    with aws.unchanged():
        expect_error(aws.ec2.create_subnet, err, 400, **{"VpcId": vid, **kw})


def test_subnet_errors(aws: Aws) -> None:
    with aws.unchanged():
        expect_error(aws.ec2.delete_subnet, "InvalidSubnetID.NotFound", 400,
                     SubnetId="subnet-0123456789abcdef0")
        expect_error(aws.ec2.describe_subnets, "InvalidSubnetID.Malformed", 400,
                     SubnetIds=["subnet-1"])
        expect_error(aws.ec2.modify_subnet_attribute, "InvalidSubnetID.NotFound", 400,
                     SubnetId="subnet-0123456789abcdef0", MapPublicIpOnLaunch={"Value": True})


# --- network interfaces ------------------------------------------------------------------


def small_subnet(aws: Aws, cidr: str = "10.6.0.0/28") -> tuple[str, str]:
    vid = aws.ec2.create_vpc(CidrBlock="10.6.0.0/16")["Vpc"]["VpcId"]
    sid = aws.ec2.create_subnet(VpcId=vid, CidrBlock=cidr,
                                AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    return vid, sid


def test_interfaces_fill_a_small_subnet_without_collisions(aws: Aws) -> None:
    _, sid = small_subnet(aws)
    ips = []
    for i in range(11):  # a /28: 16 addresses less AWS's 5
        eni = aws.ec2.create_network_interface(SubnetId=sid)["NetworkInterface"]
        ips.append(eni["PrivateIpAddress"])
        if i == 4:
            aws.restart()
    assert len(set(ips)) == 11 and all(ip.startswith("10.6.0.") for ip in ips)
    assert not {"10.6.0.0", "10.6.0.1", "10.6.0.2", "10.6.0.3", "10.6.0.15"} & set(ips)
    with aws.unchanged():
        expect_error(aws.ec2.create_network_interface, "InsufficientFreeAddressesInSubnet", 400,
                     SubnetId=sid)
    (sub,) = aws.ec2.describe_subnets(SubnetIds=[sid])["Subnets"]
    assert sub["AvailableIpAddressCount"] == 0
    check(aws)


def test_interface_lifecycle(aws: Aws) -> None:
    vid, sid = small_subnet(aws, "10.6.1.0/24")
    out = aws.ec2.create_network_interface(
        SubnetId=sid, PrivateIpAddress="10.6.1.50", Description="db",
        TagSpecifications=spec("network-interface", role="db"))["NetworkInterface"]
    eid = out["NetworkInterfaceId"]
    assert out["Status"] == "available" and out["PrivateIpAddress"] == "10.6.1.50"
    assert out["VpcId"] == vid and out["AvailabilityZone"] == "us-east-1a"
    assert out["PrivateDnsName"] == "ip-10-6-1-50.ec2.internal"
    assert out["TagSet"] == tags(role="db") and out["Description"] == "db"
    (group,) = out["Groups"]
    assert group["GroupName"] == "default"
    assert out["PrivateIpAddresses"][0]["Primary"] is True
    with aws.unchanged():
        expect_error(aws.ec2.create_network_interface, "InvalidIPAddress.InUse", 400,
                     SubnetId=sid, PrivateIpAddress="10.6.1.50")
        expect_error(aws.ec2.create_network_interface, "InvalidParameterValue", 400,
                     SubnetId=sid, PrivateIpAddress="10.7.0.5")
        expect_error(aws.ec2.create_network_interface, "InvalidSubnetID.NotFound", 400,
                     SubnetId="subnet-0123456789abcdef0")
        expect_error(aws.ec2.create_network_interface, "InvalidGroup.NotFound", 400,
                     SubnetId=sid, Groups=["sg-0123456789abcdef0"])
    aws.restart()
    (got,) = aws.ec2.describe_network_interfaces(NetworkInterfaceIds=[eid])["NetworkInterfaces"]
    assert got["MacAddress"] == out["MacAddress"] and got["Status"] == "available"
    with aws.unchanged():
        expect_error(aws.ec2.delete_subnet, "DependencyViolation", 400, SubnetId=sid)
        expect_error(aws.ec2.delete_vpc, "DependencyViolation", 400, VpcId=vid)
    aws.ec2.delete_network_interface(NetworkInterfaceId=eid)
    aws.restart()
    expect_error(aws.ec2.describe_network_interfaces, "InvalidNetworkInterfaceID.NotFound", 400,
                 NetworkInterfaceIds=[eid])
    expect_error(aws.ec2.delete_network_interface, "InvalidNetworkInterfaceID.NotFound", 400,
                 NetworkInterfaceId=eid)
    expect_error(aws.ec2.delete_network_interface, "InvalidNetworkInterfaceID.Malformed", 400,
                 NetworkInterfaceId="eni-x")
    aws.ec2.delete_subnet(SubnetId=sid)
    aws.ec2.delete_vpc(VpcId=vid)
    check(aws)


def test_create_interface_client_token(aws: Aws) -> None:
    _, sid = small_subnet(aws, "10.6.2.0/24")
    a = aws.ec2.create_network_interface(SubnetId=sid, ClientToken="tok-1")["NetworkInterface"]
    b = aws.ec2.create_network_interface(SubnetId=sid, ClientToken="tok-1")["NetworkInterface"]
    assert a["NetworkInterfaceId"] == b["NetworkInterfaceId"]
    expect_error(aws.ec2.create_network_interface, "IdempotentParameterMismatch", 400,
                 SubnetId=sid, ClientToken="tok-1", Description="other")


def test_attach_detach_interface(aws: Aws) -> None:
    vid, sid = small_subnet(aws, "10.6.3.0/24")
    iid, primary = put_instance(aws, sid)
    eid = aws.ec2.create_network_interface(SubnetId=sid)["NetworkInterface"]["NetworkInterfaceId"]
    with aws.unchanged():
        expect_error(aws.ec2.attach_network_interface, "InvalidParameterValue", 400,
                     NetworkInterfaceId=eid, InstanceId=iid, DeviceIndex=0)
        expect_error(aws.ec2.attach_network_interface, "InvalidInstanceID.NotFound", 400,
                     NetworkInterfaceId=eid, InstanceId="i-0123456789abcdef0", DeviceIndex=1)
        expect_error(aws.ec2.attach_network_interface, "InvalidNetworkInterfaceID.NotFound",
                     400, NetworkInterfaceId="eni-0123456789abcdef0", InstanceId=iid,
                     DeviceIndex=1)
    att = aws.ec2.attach_network_interface(NetworkInterfaceId=eid, InstanceId=iid,
                                           DeviceIndex=1)["AttachmentId"]
    assert att.startswith("eni-attach-")
    aws.restart()
    (eni,) = aws.ec2.describe_network_interfaces(NetworkInterfaceIds=[eid])["NetworkInterfaces"]
    assert eni["Status"] == "in-use"
    assert (eni["Attachment"]["InstanceId"], eni["Attachment"]["DeviceIndex"],
            eni["Attachment"]["AttachmentId"]) == (iid, 1, att)
    assert eni["Attachment"]["DeleteOnTermination"] is False
    rec = Cloud(aws.engine).instance_table.get(iid)
    assert rec is not None and rec.network_interface_ids == [primary, eid]
    check(aws)

    def ids(*filters: tuple[str, list[str]]) -> set[str]:
        out = aws.ec2.describe_network_interfaces(
            Filters=[{"Name": n, "Values": v} for n, v in filters])
        return {e["NetworkInterfaceId"] for e in out["NetworkInterfaces"]}

    assert ids(("attachment.instance-id", [iid])) == {primary, eid}
    assert ids(("attachment.instance-id", [iid]), ("attachment.device-index", ["1"])) == {eid}
    assert ids(("subnet-id", [sid]), ("status", ["in-use"])) == {primary, eid}
    assert ids(("vpc-id", [vid]), ("private-ip-address", [eni["PrivateIpAddress"]])) == {eid}
    assert ids(("addresses.private-ip-address", [eni["PrivateIpAddress"]])) == {eid}
    assert ids(("network-interface-id", [eid]), ("availability-zone", ["us-east-1a"])) == {eid}
    assert ids(("group-id", [eni["Groups"][0]["GroupId"]])) == {primary, eid}
    with aws.unchanged():
        expect_error(aws.ec2.delete_network_interface, "InvalidNetworkInterface.InUse", 400,
                     NetworkInterfaceId=eid)
        expect_error(aws.ec2.attach_network_interface, "InvalidNetworkInterface.InUse", 400,
                     NetworkInterfaceId=eid, InstanceId=iid, DeviceIndex=2)
        (p,) = aws.ec2.describe_network_interfaces(
            NetworkInterfaceIds=[primary])["NetworkInterfaces"]
        expect_error(aws.ec2.detach_network_interface, "OperationNotPermitted", 400,
                     AttachmentId=p["Attachment"]["AttachmentId"])
        expect_error(aws.ec2.detach_network_interface, "InvalidAttachmentID.NotFound", 400,
                     AttachmentId="eni-attach-0123456789abcdef0")
    aws.ec2.detach_network_interface(AttachmentId=att)
    aws.restart()
    (eni,) = aws.ec2.describe_network_interfaces(NetworkInterfaceIds=[eid])["NetworkInterfaces"]
    assert eni["Status"] == "available" and "Attachment" not in eni
    rec = Cloud(aws.engine).instance_table.get(iid)
    assert rec is not None and rec.network_interface_ids == [primary]
    aws.ec2.delete_network_interface(NetworkInterfaceId=eid)
    check(aws)


def test_attach_needs_same_zone_and_a_live_instance(aws: Aws) -> None:
    vid, sid = small_subnet(aws, "10.6.4.0/24")
    other = aws.ec2.create_subnet(VpcId=vid, CidrBlock="10.6.5.0/24",
                                  AvailabilityZone="us-east-1b")["Subnet"]["SubnetId"]
    iid, _ = put_instance(aws, sid)
    far = aws.ec2.create_network_interface(SubnetId=other)["NetworkInterface"]
    with aws.unchanged():
        expect_error(aws.ec2.attach_network_interface, "InvalidParameterCombination", 400,
                     NetworkInterfaceId=far["NetworkInterfaceId"], InstanceId=iid, DeviceIndex=1)
    # shutting-down (terminated at once: CloudConfig.terminate_seconds is 0)
    ending = put_instance(aws, sid, state="shutting-down")[0]
    near = aws.ec2.create_network_interface(SubnetId=sid)["NetworkInterface"]
    with aws.unchanged():
        expect_error(aws.ec2.attach_network_interface, "IncorrectInstanceState", 400,
                     NetworkInterfaceId=near["NetworkInterfaceId"], InstanceId=ending,
                     DeviceIndex=1)
