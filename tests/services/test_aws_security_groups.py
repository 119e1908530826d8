"""Security groups and their rules through boto3 against a real server (issue 8)."""

from __future__ import annotations

from typing import Any

import pytest

from ebsengine.cloud import Cloud, Scope
from ebsengine.cloud.addressing import new_interface
from test_aws_support import Aws, aws, expect_error  # noqa: F401  (fixture)

SCOPE = Scope("us-east-1", "123456789012")


def tcp(port: int, cidr: str = "10.0.0.0/8") -> dict[str, Any]:
    return {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": cidr}]}


def group(aws: Aws, gid: str) -> dict[str, Any]:
    (g,) = aws.ec2.describe_security_groups(GroupIds=[gid])["SecurityGroups"]
    return dict(g)


def test_default_group_and_new_group(aws: Aws) -> None:
    vpc = Cloud(aws.engine).addressing.default_vpc(SCOPE)
    assert vpc is not None
    (d,) = aws.ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"]
    assert d["Description"] == "default VPC security group"
    assert d["IpPermissions"] == [{"IpProtocol": "-1", "IpRanges": [], "Ipv6Ranges": [],
                                   "PrefixListIds": [],
                                   "UserIdGroupPairs": [{"GroupId": d["GroupId"],
                                                         "UserId": "123456789012"}]}]
    assert d["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    assert d["VpcId"] == vpc.id
    out = aws.ec2.create_security_group(
        GroupName="web", Description="web tier",
        TagSpecifications=[{"ResourceType": "security-group",
                            "Tags": [{"Key": "Name", "Value": "w"}]}])
    gid = out["GroupId"]
    assert gid.startswith("sg-") and out["Tags"] == [{"Key": "Name", "Value": "w"}]
    assert out["SecurityGroupArn"] == f"arn:aws:ec2:us-east-1:123456789012:security-group/{gid}"
    aws.restart()
    g = group(aws, gid)
    assert (g["GroupName"], g["Description"], g["VpcId"], g["OwnerId"]) == \
        ("web", "web tier", d["VpcId"], "123456789012")
    assert g["IpPermissions"] == []
    assert g["IpPermissionsEgress"] == [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                                         "Ipv6Ranges": [], "PrefixListIds": [],
                                         "UserIdGroupPairs": []}]
    assert g["Tags"] == [{"Key": "Name", "Value": "w"}]
    # tags through CreateTags too
    aws.ec2.create_tags(Resources=[gid], Tags=[{"Key": "team", "Value": "a"}])
    assert {t["Key"] for t in group(aws, gid)["Tags"]} == {"Name", "team"}


@pytest.mark.parametrize("kw, code", [
    ({"GroupName": "Web", "Description": "x"}, "InvalidGroup.Duplicate"),
    ({"GroupName": "sg-1", "Description": "x"}, "InvalidParameterValue"),
    ({"GroupName": "n" * 256, "Description": "x"}, "InvalidParameterValue"),
    ({"GroupName": "n", "Description": ""}, "MissingParameter"),
    ({"GroupName": "n", "Description": "d" * 256}, "InvalidParameterValue"),
    ({"GroupName": "n", "Description": "x", "VpcId": "vpc-0123456789abcdef0"},
     "InvalidVpcID.NotFound"),
    ({"GroupName": "n", "Description": "x",
      "TagSpecifications": [{"ResourceType": "volume", "Tags": [{"Key": "a", "Value": "b"}]}]},
     "InvalidParameterValue"),
])
def test_create_refused(aws: Aws, kw: dict[str, Any], code: str) -> None:
    aws.ec2.create_security_group(GroupName="web", Description="x")
    with aws.unchanged():
        expect_error(aws.ec2.create_security_group, code, 400, **kw)


def test_every_form_of_ip_permissions(aws: Aws) -> None:
    gid = aws.ec2.create_security_group(GroupName="web", Description="x")["GroupId"]
    d = aws.ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    out = aws.ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "TCP", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "100.68.0.18/18", "Description": "ssh"},
                      {"CidrIp": "10.0.0.0/8"}]},
        {"IpProtocol": "6", "FromPort": 22, "ToPort": 22,
         "Ipv6Ranges": [{"CidrIpv6": "2001:db8::1/64"}]},
        {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53,
         "UserIdGroupPairs": [{"GroupName": "default", "Description": "dns"}]},
        {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1,
         "PrefixListIds": [{"PrefixListId": "pl-12345678"}]},
        {"IpProtocol": "-1", "FromPort": 1, "ToPort": 2,
         "UserIdGroupPairs": [{"GroupId": gid}]},
    ])
    assert out["Return"] is True
    rules = out["SecurityGroupRules"]
    assert len(rules) == 6 and all(r["GroupId"] == gid and r["IsEgress"] is False and
                                   r["GroupOwnerId"] == "123456789012" for r in rules)
    assert rules[0]["CidrIpv4"] == "100.68.0.0/18" and rules[0]["Description"] == "ssh"
    assert rules[2]["CidrIpv6"] == "2001:db8::/64" and rules[2]["IpProtocol"] == "tcp"
    assert rules[3]["ReferencedGroupInfo"] == {"GroupId": d, "UserId": "123456789012"}
    assert (rules[5]["IpProtocol"], rules[5]["FromPort"], rules[5]["ToPort"]) == ("-1", -1, -1)
    aws.restart()
    perms = group(aws, gid)["IpPermissions"]
    ssh, dns, ping, every = perms
    assert ssh["IpRanges"] == [{"CidrIp": "100.68.0.0/18", "Description": "ssh"},
                               {"CidrIp": "10.0.0.0/8"}]
    assert ssh["Ipv6Ranges"] == [{"CidrIpv6": "2001:db8::/64"}]
    assert dns["UserIdGroupPairs"] == [{"GroupId": d, "UserId": "123456789012",
                                        "Description": "dns"}]
    assert (ping["IpProtocol"], ping["FromPort"], ping["ToPort"]) == ("icmp", 8, -1)
    assert ping["PrefixListIds"] == [{"PrefixListId": "pl-12345678"}]
    assert every["IpProtocol"] == "-1" and "FromPort" not in every


def test_flat_form_and_names(aws: Aws) -> None:
    gid = aws.ec2.create_security_group(GroupName="web", Description="x")["GroupId"]
    aws.ec2.authorize_security_group_ingress(GroupName="web", IpProtocol="tcp", FromPort=80,
                                             ToPort=80, CidrIp="192.168.7.7/16")
    out = aws.ec2.authorize_security_group_ingress(GroupName="web",
                                                   SourceSecurityGroupName="default")
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in out["SecurityGroupRules"]] == \
        [("tcp", 0, 65535), ("udp", 0, 65535), ("icmp", -1, -1)]
    perms = group(aws, gid)["IpPermissions"]
    assert perms[0]["IpRanges"] == [{"CidrIp": "192.168.0.0/16"}]
    with aws.unchanged():
        expect_error(aws.ec2.authorize_security_group_ingress, "InvalidParameterCombination",
                     400, GroupId=gid, CidrIp="1.0.0.0/8", IpProtocol="tcp", FromPort=1,
                     ToPort=1, IpPermissions=[tcp(2)])
        expect_error(aws.ec2.authorize_security_group_egress, "InvalidParameterValue", 400,
                     GroupId=gid, CidrIp="1.0.0.0/8", IpProtocol="tcp", FromPort=1, ToPort=1)


@pytest.mark.parametrize("perm, code", [
    (tcp(22, "100.68.5.5/18"), "InvalidPermission.Duplicate"),  # canonical form exists
    (tcp(23, "10.0.0.0/33"), "InvalidParameterValue"),
    (tcp(23, "banana"), "InvalidParameterValue"),
    ({"IpProtocol": "tcp", "FromPort": 1, "IpRanges": [{"CidrIp": "1.0.0.0/8"}]},
     "InvalidParameterValue"),
    ({"IpProtocol": "tcp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "1.0.0.0/8"}]},
     "InvalidPermission.Malformed"),
    ({"IpProtocol": "bogus", "IpRanges": [{"CidrIp": "1.0.0.0/8"}]}, "InvalidParameterValue"),
    ({"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "10.0.0.0/8"}]}, "InvalidParameterValue"),
    ({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-0123456789abcdef0"}]},
     "InvalidGroup.NotFound"),
    ({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupName": "nope"}]}, "InvalidGroup.NotFound"),
    ({"IpProtocol": "-1", "PrefixListIds": [{"PrefixListId": "list"}]},
     "InvalidPrefixListId.Malformed"),
    ({"IpProtocol": "-1", "IpRanges": [{"CidrIp": "1.0.0.0/8", "Description": "<x>"}]},
     "InvalidParameterValue"),
])
def test_authorize_refused(aws: Aws, perm: dict[str, Any], code: str) -> None:
    gid = aws.ec2.create_security_group(GroupName="web", Description="x")["GroupId"]
    aws.ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[tcp(22, "100.68.0.0/18")])
    with aws.unchanged():  # the valid first permission is not added either
        resp = expect_error(aws.ec2.authorize_security_group_ingress, code, 400, GroupId=gid,
                            IpPermissions=[tcp(443), perm])
    if code == "InvalidPermission.Duplicate":
        assert resp["Error"]["Message"] == ('the specified rule "peer: 100.68.0.0/18, TCP, '
                                            'from port: 22, to port: 22, ALLOW" already exists')
    assert len(group(aws, gid)["IpPermissions"]) == 1


def test_unknown_or_malformed_group(aws: Aws) -> None:
    with aws.unchanged():
        expect_error(aws.ec2.authorize_security_group_ingress, "InvalidGroup.NotFound", 400,
                     GroupId="sg-0123456789abcdef0", IpPermissions=[tcp(1)])
        expect_error(aws.ec2.authorize_security_group_ingress, "InvalidGroupId.Malformed", 400,
                     GroupId="sg-nothex", IpPermissions=[tcp(1)])
        expect_error(aws.ec2.describe_security_groups, "InvalidGroup.NotFound", 400,
                     GroupNames=["nope"])
        expect_error(aws.ec2.delete_security_group, "InvalidGroup.NotFound", 400,
                     GroupId="sg-0123456789abcdef0")


def test_egress_rules(aws: Aws) -> None:
    gid = aws.ec2.create_security_group(GroupName="web", Description="x")["GroupId"]
    with aws.unchanged():
        expect_error(aws.ec2.authorize_security_group_egress, "InvalidPermission.Duplicate",
                     400, GroupId=gid, IpPermissions=[{"IpProtocol": "-1",
                                                       "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    out = aws.ec2.authorize_security_group_egress(GroupId=gid, IpPermissions=[tcp(443)])
    assert out["SecurityGroupRules"][0]["IsEgress"] is True
    aws.ec2.revoke_security_group_egress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    aws.restart()
    assert group(aws, gid)["IpPermissionsEgress"] == [
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
         "IpRanges": [{"CidrIp": "10.0.0.0/8"}], "Ipv6Ranges": [], "PrefixListIds": [],
         "UserIdGroupPairs": []}]


def test_revoke(aws: Aws) -> None:
    gid = aws.ec2.create_security_group(GroupName="web", Description="x")["GroupId"]
    out = aws.ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        tcp(22), tcp(80), tcp(443)])
    r22, r80, _ = (r["SecurityGroupRuleId"] for r in out["SecurityGroupRules"])
    # default VPC: what matches nothing comes back as unknown, no error
    done = aws.ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=[
        tcp(22, "10.9.9.9/8"), tcp(8080)])
    assert [r["SecurityGroupRuleId"] for r in done["RevokedSecurityGroupRules"]] == [r22]
    assert done["UnknownIpPermissions"][0]["FromPort"] == 8080
    with aws.unchanged():
        expect_error(aws.ec2.revoke_security_group_ingress,
                     "InvalidSecurityGroupRuleId.NotFound", 400, GroupId=gid,
                     SecurityGroupRuleIds=[r80, "sgr-0123456789abcdef0"])
        expect_error(aws.ec2.revoke_security_group_ingress, "InvalidParameterCombination", 400,
                     GroupId=gid, SecurityGroupRuleIds=[r80], IpPermissions=[tcp(443)])
    done = aws.ec2.revoke_security_group_ingress(GroupId=gid, SecurityGroupRuleIds=[r80])
    assert done["RevokedSecurityGroupRules"][0]["FromPort"] == 80
    aws.ec2.revoke_security_group_ingress(GroupName="web", IpProtocol="tcp", FromPort=443,
                                          ToPort=443, CidrIp="10.0.0.0/8")
    aws.restart()
    assert group(aws, gid)["IpPermissions"] == []


def test_revoke_missing_in_nondefault_vpc(aws: Aws) -> None:
    from ebsengine.cloud.model import Vpc

    vpc = Vpc(id="vpc-0123456789abcdef0", region="us-east-1", owner_id="123456789012",
              cidr_block="10.0.0.0/16")
    with aws.engine.transaction() as tx:
        Cloud(aws.engine).vpcs.put(vpc, tx=tx)
    gid = aws.ec2.create_security_group(GroupName="web", Description="x",
                                        VpcId=vpc.id)["GroupId"]
    aws.ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[tcp(22)])
    with aws.unchanged():
        expect_error(aws.ec2.revoke_security_group_ingress, "InvalidPermission.NotFound", 400,
                     GroupId=gid, IpPermissions=[tcp(22), tcp(23)])
    # names resolve in the default VPC only
    with aws.unchanged():
        expect_error(aws.ec2.describe_security_groups, "InvalidGroup.NotFound", 400,
                     GroupNames=["web"])
    assert group(aws, gid)["VpcId"] == vpc.id


def test_delete(aws: Aws) -> None:
    d = aws.ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    web = aws.ec2.create_security_group(GroupName="web", Description="x")["GroupId"]
    db = aws.ec2.create_security_group(GroupName="db", Description="x")["GroupId"]
    aws.ec2.authorize_security_group_ingress(GroupId=db, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
         "UserIdGroupPairs": [{"GroupId": web}]}])
    with aws.unchanged():
        expect_error(aws.ec2.delete_security_group, "CannotDelete", 400, GroupId=d)
        expect_error(aws.ec2.delete_security_group, "DependencyViolation", 400, GroupId=web)
    # an interface carrying a group holds it
    cloud = Cloud(aws.engine)
    sub = cloud.addressing.default_subnet(SCOPE, None)
    assert sub is not None
    eni = new_interface(SCOPE, sub, "172.31.0.20", [db])
    with aws.engine.transaction() as tx:
        cloud.network_interfaces.put(eni, tx=tx)
    with aws.unchanged():
        expect_error(aws.ec2.delete_security_group, "DependencyViolation", 400, GroupId=db)
    with aws.engine.transaction() as tx:
        cloud.network_interfaces.delete(eni.id, tx=tx)
    out = aws.ec2.delete_security_group(GroupId=db)
    assert (out["Return"], out["GroupId"]) == (True, db)
    assert aws.ec2.delete_security_group(GroupName="web")["GroupId"] == web
    aws.restart()
    ids = {g["GroupId"] for g in aws.ec2.describe_security_groups()["SecurityGroups"]}
    assert ids == {d}


def test_describe_filters_and_pages(aws: Aws) -> None:
    ids = []
    for i in range(7):
        gid = aws.ec2.create_security_group(
            GroupName=f"g{i}", Description=f"group {i}",
            TagSpecifications=[{"ResourceType": "security-group",
                                "Tags": [{"Key": "n", "Value": str(i % 2)}]}])["GroupId"]
        ids.append(gid)
    aws.ec2.authorize_security_group_ingress(GroupId=ids[0], IpPermissions=[tcp(22)])
    aws.ec2.authorize_security_group_ingress(GroupId=ids[1], IpPermissions=[
        {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53,
         "Ipv6Ranges": [{"CidrIpv6": "::/0"}], "UserIdGroupPairs": [{"GroupId": ids[0]}]}])

    def names(**kw: Any) -> set[str]:
        return {g["GroupName"] for g in aws.ec2.describe_security_groups(**kw)["SecurityGroups"]}

    def f(name: str, *values: str) -> dict[str, Any]:
        return {"Name": name, "Values": list(values)}

    assert names(Filters=[f("ip-permission.cidr", "10.0.0.0/8")]) == {"g0"}
    assert names(Filters=[f("ip-permission.protocol", "udp")]) == {"g1"}
    assert names(Filters=[f("ip-permission.from-port", "22", "53")]) == {"g0", "g1"}
    assert names(Filters=[f("ip-permission.to-port", "53")]) == {"g1"}
    assert names(Filters=[f("ip-permission.ipv6-cidr", "::/0")]) == {"g1"}
    assert names(Filters=[f("ip-permission.group-id", ids[0])]) == {"g1"}
    assert names(Filters=[f("ip-permission.group-name", "g0")]) == {"g1"}
    assert "g3" in names(Filters=[f("egress.ip-permission.cidr", "0.0.0.0/0")])
    assert names(Filters=[f("group-name", "g*"), f("tag:n", "1")]) == {"g1", "g3", "g5"}
    assert names(Filters=[f("description", "group 4")]) == {"g4"}
    assert names(Filters=[f("tag-key", "n"), f("group-id", ids[6])]) == {"g6"}
    assert "default" in names(Filters=[f("owner-id", "123456789012")])
    with aws.unchanged():
        expect_error(aws.ec2.describe_security_groups, "InvalidParameterValue", 400,
                     Filters=[f("bogus", "x")])
        expect_error(aws.ec2.describe_security_groups, "InvalidParameterValue", 400,
                     MaxResults=5, NextToken="forged")
    seen: list[str] = []
    token = None
    while True:
        kw: dict[str, Any] = {"MaxResults": 5, **({"NextToken": token} if token else {})}
        out = aws.ec2.describe_security_groups(**kw)
        assert len(out["SecurityGroups"]) <= 5
        seen += [g["GroupId"] for g in out["SecurityGroups"]]
        token = out.get("NextToken")
        if not token:
            break
    assert len(seen) == len(set(seen)) == 8 and set(ids) < set(seen)
    pages = aws.ec2.get_paginator("describe_security_groups").paginate(
        PaginationConfig={"PageSize": 5})
    assert sum(len(p["SecurityGroups"]) for p in pages) == 8


def test_security_group_rules(aws: Aws) -> None:
    gid = aws.ec2.create_security_group(GroupName="web", Description="x")["GroupId"]
    out = aws.ec2.authorize_security_group_ingress(
        GroupId=gid, IpPermissions=[tcp(p) for p in range(1, 7)],
        TagSpecifications=[{"ResourceType": "security-group-rule",
                            "Tags": [{"Key": "k", "Value": "v"}]}])
    new = [r["SecurityGroupRuleId"] for r in out["SecurityGroupRules"]]
    assert out["SecurityGroupRules"][0]["Tags"] == [{"Key": "k", "Value": "v"}]
    aws.restart()
    mine = aws.ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [gid]}])["SecurityGroupRules"]
    assert len(mine) == 7 and set(new) < {r["SecurityGroupRuleId"] for r in mine}
    tagged = aws.ec2.describe_security_group_rules(
        Filters=[{"Name": "tag:k", "Values": ["v"]}])["SecurityGroupRules"]
    assert sorted(r["SecurityGroupRuleId"] for r in tagged) == sorted(new)
    (one,) = aws.ec2.describe_security_group_rules(SecurityGroupRuleIds=[new[2]])[
        "SecurityGroupRules"]
    assert (one["FromPort"], one["CidrIpv4"], one["GroupId"]) == (3, "10.0.0.0/8", gid)
    assert one["SecurityGroupRuleArn"].endswith("security-group-rule/" + new[2])
    got = [r["SecurityGroupRuleId"]
           for p in aws.ec2.get_paginator("describe_security_group_rules").paginate(
               Filters=[{"Name": "group-id", "Values": [gid]}], PaginationConfig={"PageSize": 5})
           for r in p["SecurityGroupRules"]]
    assert sorted(got) == sorted(r["SecurityGroupRuleId"] for r in mine)
    with aws.unchanged():
        expect_error(aws.ec2.describe_security_group_rules,
                     "InvalidSecurityGroupRuleId.NotFound", 400,
                     SecurityGroupRuleIds=["sgr-0123456789abcdef0"])
        expect_error(aws.ec2.describe_security_group_rules,
                     "InvalidSecurityGroupRuleId.Malformed", 400, SecurityGroupRuleIds=["x"])
    aws.ec2.modify_security_group_rules(GroupId=gid, SecurityGroupRules=[
        {"SecurityGroupRuleId": new[0],
         "SecurityGroupRule": {"IpProtocol": "udp", "FromPort": 500, "ToPort": 501,
                               "CidrIpv4": "172.16.3.3/12", "Description": "vpn"}}])
    aws.ec2.update_security_group_rule_descriptions_ingress(GroupId=gid, IpPermissions=[
        {**tcp(2), "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "two"}]}])
    aws.restart()
    rules = {r["SecurityGroupRuleId"]: r for r in aws.ec2.describe_security_group_rules(
        SecurityGroupRuleIds=new[:2])["SecurityGroupRules"]}
    r0 = rules[new[0]]
    assert (r0["IpProtocol"], r0["FromPort"], r0["ToPort"], r0["CidrIpv4"], r0["Description"]) \
        == ("udp", 500, 501, "172.16.0.0/12", "vpn")
    assert rules[new[1]]["Description"] == "two"


def test_rule_quota(aws: Aws) -> None:
    gid = aws.ec2.create_security_group(GroupName="web", Description="x")["GroupId"]
    aws.ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1,
         "IpRanges": [{"CidrIp": f"10.0.{i}.0/24"} for i in range(60)]}])
    with aws.unchanged():
        expect_error(aws.ec2.authorize_security_group_ingress,
                     "RulesPerSecurityGroupLimitExceeded", 400, GroupId=gid,
                     IpPermissions=[tcp(2)])
    # IPv6 rules count on their own
    aws.ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 2, "ToPort": 2, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])


def test_dry_run(aws: Aws) -> None:
    with aws.unchanged():
        expect_error(aws.ec2.create_security_group, "DryRunOperation", 412, GroupName="x",
                     Description="y", DryRun=True)


def test_other_region_has_its_own_default_group(aws: Aws) -> None:
    (west,) = aws.ec2_west.describe_security_groups()["SecurityGroups"]
    (east,) = aws.ec2.describe_security_groups()["SecurityGroups"]
    assert west["GroupName"] == east["GroupName"] == "default"
    assert west["GroupId"] != east["GroupId"] and west["VpcId"] != east["VpcId"]
    with aws.unchanged():
        expect_error(aws.ec2.describe_security_groups, "InvalidGroup.NotFound", 400,
                     GroupIds=[west["GroupId"]])
