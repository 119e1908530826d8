"""Elastic IPs through boto3 against a real server (issue 8, spec section 7)."""

from __future__ import annotations

import ipaddress
from typing import Any

from test_aws_network import put_instance, spec, tags

from ebsengine.cloud import Cloud, CloudConfig
from test_aws_support import Aws, aws, expect_error  # noqa: F401  (fixture)


def default_subnet(aws: Aws) -> str:
    subs = aws.ec2.describe_subnets(Filters=[{"Name": "availability-zone",
                                              "Values": ["us-east-1a"]},
                                             {"Name": "default-for-az", "Values": ["true"]}])
    return str(subs["Subnets"][0]["SubnetId"])


def own_subnet(aws: Aws) -> tuple[str, str]:
    vid = aws.ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    sid = aws.ec2.create_subnet(VpcId=vid, CidrBlock="10.8.0.0/24",
                                AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    return vid, sid


def eni(aws: Aws, sid: str) -> str:
    return str(aws.ec2.create_network_interface(SubnetId=sid)["NetworkInterface"][
        "NetworkInterfaceId"])


def one(aws: Aws, alloc: str) -> dict[str, Any]:
    (a,) = aws.ec2.describe_addresses(AllocationIds=[alloc])["Addresses"]
    return dict(a)


def check(aws: Aws) -> None:
    assert Cloud(aws.engine).check() == []


def test_allocate_describe_release(aws: Aws) -> None:
    out = aws.ec2.allocate_address(Domain="vpc", TagSpecifications=spec("elastic-ip", k="v"))
    assert out["AllocationId"].startswith("eipalloc-") and out["Domain"] == "vpc"
    assert ipaddress.ip_address(out["PublicIp"]) in ipaddress.ip_network("198.18.0.0/15")
    assert out["NetworkBorderGroup"] == "us-east-1"
    aws.restart()
    got = one(aws, out["AllocationId"])
    assert got["PublicIp"] == out["PublicIp"] and got["Tags"] == tags(k="v")
    assert "AssociationId" not in got
    (by_ip,) = aws.ec2.describe_addresses(PublicIps=[out["PublicIp"]])["Addresses"]
    assert by_ip["AllocationId"] == out["AllocationId"]
    assert aws.ec2_west.describe_addresses()["Addresses"] == []  # per region
    attr = aws.ec2.describe_addresses_attribute(AllocationIds=[out["AllocationId"]],
                                                Attribute="domain-name")
    assert attr["Addresses"][0]["AllocationId"] == out["AllocationId"]
    aws.ec2.release_address(AllocationId=out["AllocationId"])
    aws.restart()
    expect_error(aws.ec2.describe_addresses, "InvalidAllocationID.NotFound", 400,
                 AllocationIds=[out["AllocationId"]])
    expect_error(aws.ec2.release_address, "InvalidAllocationID.NotFound", 400,
                 AllocationId=out["AllocationId"])
    # recovery of the released address
    back = aws.ec2.allocate_address(Domain="vpc", Address=out["PublicIp"])
    assert back["PublicIp"] == out["PublicIp"]
    check(aws)


def test_allocate_refused(aws: Aws) -> None:
    with aws.unchanged():
        expect_error(aws.ec2.allocate_address, "InvalidAddress.NotFound", 400,
                     Address="198.18.3.3")  # never released by this account
        expect_error(aws.ec2.allocate_address, "InvalidParameterValue", 400,
                     TagSpecifications=spec("vpc", a="b"))
        expect_error(aws.ec2.allocate_address, "InvalidParameterValue", 400, Domain="standard")
        expect_error(aws.ec2.describe_addresses, "InvalidAddress.NotFound", 400,
                     PublicIps=["1.2.3.4"])
        expect_error(aws.ec2.describe_addresses, "InvalidAllocationID.Malformed", 400,
                     AllocationIds=["eipalloc-x"])
        expect_error(aws.ec2.release_address, "InvalidAllocationID.NotFound", 400,
                     AllocationId="eipalloc-0123456789abcdef0")


def test_quota(tmp_path: Any) -> None:
    a = Aws(str(tmp_path / "store"), cloud_config=CloudConfig(address_quota=2))
    try:
        for _ in range(2):
            a.ec2.allocate_address(Domain="vpc")
        with a.unchanged():
            expect_error(a.ec2.allocate_address, "AddressLimitExceeded", 400, Domain="vpc")
        a.ec2_west.allocate_address(Domain="vpc")  # another region has its own quota
        ips = {x["PublicIp"] for x in a.ec2.describe_addresses()["Addresses"]} | \
            {x["PublicIp"] for x in a.ec2_west.describe_addresses()["Addresses"]}
        assert len(ips) == 3  # one pool: never twice the same address
    finally:
        a.stop()


def test_associate_with_interface(aws: Aws) -> None:
    _, sid = own_subnet(aws)
    e1, e2 = eni(aws, sid), eni(aws, sid)
    alloc = aws.ec2.allocate_address(Domain="vpc")
    aid, ip = alloc["AllocationId"], alloc["PublicIp"]
    assoc = aws.ec2.associate_address(AllocationId=aid, NetworkInterfaceId=e1)["AssociationId"]
    assert assoc.startswith("eipassoc-")
    aws.restart()
    got = one(aws, aid)
    assert (got["AssociationId"], got["NetworkInterfaceId"]) == (assoc, e1)
    assert got["NetworkInterfaceOwnerId"] == "123456789012" and "InstanceId" not in got
    (n1,) = aws.ec2.describe_network_interfaces(NetworkInterfaceIds=[e1])["NetworkInterfaces"]
    assert n1["Association"]["PublicIp"] == ip and n1["Association"]["AllocationId"] == aid
    assert got["PrivateIpAddress"] == n1["PrivateIpAddress"]
    assert {e["NetworkInterfaceId"] for e in aws.ec2.describe_network_interfaces(
        Filters=[{"Name": "association.public-ip", "Values": [ip]}])["NetworkInterfaces"]} == {e1}

    def ids(*filters: tuple[str, list[str]]) -> set[str]:
        out = aws.ec2.describe_addresses(Filters=[{"Name": n, "Values": v} for n, v in filters])
        return {x["AllocationId"] for x in out["Addresses"]}

    other = aws.ec2.allocate_address(Domain="vpc")["AllocationId"]
    assert ids(("network-interface-id", [e1])) == {aid}
    assert ids(("association-id", [assoc])) == {aid}
    assert ids(("public-ip", [ip]), ("domain", ["vpc"])) == {aid}
    assert ids(("private-ip-address", [n1["PrivateIpAddress"]])) == {aid}
    assert ids(("domain", ["vpc"])) == {aid, other}
    expect_error(aws.ec2.describe_addresses, "InvalidParameterValue", 400,
                 Filters=[{"Name": "colour", "Values": ["x"]}])
    with aws.unchanged():
        expect_error(aws.ec2.associate_address, "Resource.AlreadyAssociated", 400,
                     AllocationId=aid, NetworkInterfaceId=e2, AllowReassociation=False)
        expect_error(aws.ec2.associate_address, "InvalidNetworkInterfaceID.NotFound", 400,
                     AllocationId=aid, NetworkInterfaceId="eni-0123456789abcdef0")
        expect_error(aws.ec2.associate_address, "InvalidAllocationID.NotFound", 400,
                     AllocationId="eipalloc-0123456789abcdef0", NetworkInterfaceId=e2)
        expect_error(aws.ec2.associate_address, "MissingParameter", 400, AllocationId=aid)
        expect_error(aws.ec2.release_address, "InvalidIPAddress.InUse", 400, AllocationId=aid)
        expect_error(aws.ec2.disassociate_address, "InvalidAssociationID.NotFound", 400,
                     AssociationId="eipassoc-0123456789abcdef0")
    # the same target again: same association; another one: moves silently
    assert aws.ec2.associate_address(AllocationId=aid, NetworkInterfaceId=e1,
                                     AllowReassociation=False)["AssociationId"] == assoc
    moved = aws.ec2.associate_address(AllocationId=aid, NetworkInterfaceId=e2)["AssociationId"]
    assert moved != assoc and one(aws, aid)["NetworkInterfaceId"] == e2
    (n1,) = aws.ec2.describe_network_interfaces(NetworkInterfaceIds=[e1])["NetworkInterfaces"]
    assert "Association" not in n1
    # another EIP onto e2 pushes the first off; it stays allocated
    aws.ec2.associate_address(AllocationId=other, NetworkInterfaceId=e2)
    assert "AssociationId" not in one(aws, aid) and one(aws, other)["NetworkInterfaceId"] == e2
    check(aws)
    aws.ec2.disassociate_address(AssociationId=one(aws, other)["AssociationId"])
    aws.restart()
    assert "AssociationId" not in one(aws, other)
    aws.ec2.release_address(AllocationId=aid)
    aws.ec2.release_address(AllocationId=other)
    check(aws)


def test_associate_with_instance_in_default_vpc(aws: Aws) -> None:
    iid, primary = put_instance(aws, default_subnet(aws))
    (before,) = aws.ec2.describe_network_interfaces(
        NetworkInterfaceIds=[primary])["NetworkInterfaces"]
    auto = before["Association"]["PublicIp"]
    assert before["Association"]["IpOwnerId"] == "amazon"
    alloc = aws.ec2.allocate_address(Domain="vpc")
    aid, ip = alloc["AllocationId"], alloc["PublicIp"]
    assert ip != auto
    assoc = aws.ec2.associate_address(AllocationId=aid, InstanceId=iid)["AssociationId"]
    aws.restart()
    got = one(aws, aid)
    assert (got["InstanceId"], got["NetworkInterfaceId"]) == (iid, primary)
    (n,) = aws.ec2.describe_network_interfaces(NetworkInterfaceIds=[primary])["NetworkInterfaces"]
    assert n["Association"]["PublicIp"] == ip  # the auto-assigned address went back
    assert Cloud(aws.engine).network_interfaces.get(primary).public_ip is None  # type: ignore[union-attr]
    assert {x["AllocationId"] for x in aws.ec2.describe_addresses(
        Filters=[{"Name": "instance-id", "Values": [iid]}])["Addresses"]} == {aid}
    check(aws)
    aws.ec2.disassociate_address(AssociationId=assoc)
    aws.ec2.disassociate_address(AssociationId=assoc)  # idempotent
    (n,) = aws.ec2.describe_network_interfaces(NetworkInterfaceIds=[primary])["NetworkInterfaces"]
    assert n["Association"]["IpOwnerId"] == "amazon"  # a new auto-assigned address
    assert n["Association"]["PublicIp"] != ip
    # default VPC: release ends the association
    aws.ec2.associate_address(AllocationId=aid, InstanceId=iid)
    aws.ec2.release_address(AllocationId=aid)
    aws.restart()
    assert aws.ec2.describe_addresses()["Addresses"] == []
    (n,) = aws.ec2.describe_network_interfaces(NetworkInterfaceIds=[primary])["NetworkInterfaces"]
    assert n["Association"]["IpOwnerId"] == "amazon"
    check(aws)


def test_associate_instance_refusals(aws: Aws) -> None:
    sid = default_subnet(aws)
    gone, _ = put_instance(aws, sid, state="shutting-down")  # terminated at once
    aid = aws.ec2.allocate_address(Domain="vpc")["AllocationId"]
    with aws.unchanged():
        expect_error(aws.ec2.associate_address, "IncorrectInstanceState", 400,
                     AllocationId=aid, InstanceId=gone)
        expect_error(aws.ec2.associate_address, "InvalidInstanceID.NotFound", 400,
                     AllocationId=aid, InstanceId="i-0123456789abcdef0")
        expect_error(aws.ec2.associate_address, "InvalidInstanceID.Malformed", 400,
                     AllocationId=aid, InstanceId="i-zz")
    stopped, primary = put_instance(aws, sid, state="stopped")
    assoc = aws.ec2.associate_address(AllocationId=aid, InstanceId=stopped)["AssociationId"]
    aws.ec2.disassociate_address(AssociationId=assoc)
    (n,) = aws.ec2.describe_network_interfaces(NetworkInterfaceIds=[primary])["NetworkInterfaces"]
    assert "Association" not in n  # stopped: a public IP comes back only on start
