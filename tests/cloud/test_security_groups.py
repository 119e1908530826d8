"""Security groups through the library: cloud.groups over an in-memory engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import store_digest
from ebsengine import Engine, errors
from ebsengine.cloud import Cloud, CloudConfig, Scope
from ebsengine.cloud.addressing import new_interface
from ebsengine.cloud.model import Vpc
from ebsengine.cloud.security_groups import ip_permissions, legacy_permissions, protocol

S = Scope("us-east-1", "123456789012")


@pytest.fixture
def cloud() -> Iterator[Cloud]:
    eng = Engine("memory://")
    c = Cloud(eng, config=CloudConfig(rules_per_group=5))
    c.addressing.ensure_region(S)
    try:
        yield c
    finally:
        eng.close()


def refused(c: Cloud, code: str, call: Any, *args: Any, **kw: Any) -> errors.Ec2Error:
    before = store_digest(c.engine)
    with pytest.raises(errors.Ec2Error) as info:
        call(*args, **kw)
    assert info.value.code == code, info.value
    assert store_digest(c.engine) == before
    return info.value


def tcp(port: int, cidr: str = "10.0.0.0/8", **src: Any) -> dict[str, Any]:
    return {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": cidr}],
            **src}


def test_new_group_rules_and_default_group(cloud: Cloud) -> None:
    vpc = cloud.addressing.default_vpc(S)
    assert vpc is not None
    g = cloud.groups.create(S, "web", "web tier", tags={"env": "t"})
    assert (g.vpc_id, g.ingress, g.tags) == (vpc.id, [], {"env": "t"})
    (out,) = g.egress
    assert (out["IpProtocol"], out["CidrIpv4"], out["IsEgress"]) == ("-1", "0.0.0.0/0", True)
    d = cloud.groups.default_of(S, vpc.id)
    assert d is not None and d.name == "default"
    (self_rule,) = d.ingress
    assert self_rule["ReferencedGroupInfo"]["GroupId"] == d.id
    assert cloud.groups.by_name(S, "WEB").id == g.id  # names are case-insensitive
    assert cloud.check() == []


def test_create_refusals(cloud: Cloud) -> None:
    cloud.groups.create(S, "web", "x")
    refused(cloud, "InvalidGroup.Duplicate", cloud.groups.create, S, "Web", "y")
    refused(cloud, "InvalidParameterValue", cloud.groups.create, S, "sg-web", "y")
    refused(cloud, "InvalidParameterValue", cloud.groups.create, S, "a" * 256, "y")
    refused(cloud, "InvalidParameterValue", cloud.groups.create, S, "caf\u00e9", "y")
    refused(cloud, "MissingParameter", cloud.groups.create, S, "x", "")
    refused(cloud, "InvalidParameterValue", cloud.groups.create, S, "x", "<b>")
    refused(cloud, "InvalidVpcID.NotFound", cloud.groups.create, S, "x", "y",
            vpc_id="vpc-0123456789abcdef0")
    refused(cloud, "InvalidVpcID.Malformed", cloud.groups.create, S, "x", "y", vpc_id="vpc-zz")


def test_same_name_in_another_vpc(cloud: Cloud) -> None:
    other = Vpc(id="vpc-0123456789abcdef0", region=S.region, owner_id=S.account_id,
                cidr_block="10.0.0.0/16")
    with cloud.engine.transaction() as tx:
        cloud.vpcs.put(other, tx=tx)
    a = cloud.groups.create(S, "web", "x")
    b = cloud.groups.create(S, "web", "x", vpc_id=other.id)
    assert a.vpc_id != b.vpc_id
    assert cloud.groups.for_launch(S, other.id, names=["web"]) == [b.id]
    refused(cloud, "InvalidParameter", cloud.groups.for_launch, S, other.id, ids=[a.id])
    # a rule may not reference a group of another VPC
    refused(cloud, "InvalidParameterValue", cloud.groups.authorize, S, b.id,
            [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": a.id}]}])


@pytest.mark.parametrize("given, wanted", [
    ("TCP", "tcp"), ("6", "tcp"), ("17", "udp"), ("1", "icmp"), ("58", "icmpv6"),
    ("-1", "-1"), ("50", "50"), ("Icmp", "icmp"),
])
def test_protocols(given: str, wanted: str) -> None:
    assert protocol(given) == wanted


@pytest.mark.parametrize("bad", ["foo", "256", "all", ""])
def test_bad_protocols(bad: str) -> None:
    with pytest.raises(errors.Ec2Error):
        protocol(bad)


def test_authorize_canonicalises_and_refuses_duplicates(cloud: Cloud) -> None:
    g = cloud.groups.create(S, "web", "x")
    (r,) = cloud.groups.authorize(S, g.id, [tcp(22, "100.68.0.18/18")])
    assert r["CidrIpv4"] == "100.68.0.0/18" and r["SecurityGroupRuleId"].startswith("sgr-")
    e = refused(cloud, "InvalidPermission.Duplicate", cloud.groups.authorize, S, g.id,
                [tcp(22, "100.68.1.1/18")])
    assert str(e) == ('the specified rule "peer: 100.68.0.0/18, TCP, from port: 22, to port: '
                      '22, ALLOW" already exists')
    # a duplicate within one request refuses all of it
    refused(cloud, "InvalidPermission.Duplicate", cloud.groups.authorize, S, g.id,
            [tcp(80), tcp(80)])
    refused(cloud, "InvalidParameterValue", cloud.groups.authorize, S, g.id, [tcp(80, "10.0.0/8")])
    refused(cloud, "InvalidParameterValue", cloud.groups.authorize, S, g.id,
            [tcp(80, "300.0.0.0/8")])
    refused(cloud, "InvalidParameterValue", cloud.groups.authorize, S, g.id,
            [{"IpProtocol": "tcp", "IpRanges": [{"CidrIp": "1.0.0.0/8"}]}])
    refused(cloud, "InvalidPermission.Malformed", cloud.groups.authorize, S, g.id,
            [{**tcp(80), "ToPort": 70000}])
    refused(cloud, "InvalidPermission.Malformed", cloud.groups.authorize, S, g.id,
            [{**tcp(80), "FromPort": 90}])
    refused(cloud, "InvalidParameterValue", cloud.groups.authorize, S, g.id,
            [{"IpProtocol": "icmp", "FromPort": -1, "ToPort": 3,
              "IpRanges": [{"CidrIp": "1.0.0.0/8"}]}])
    refused(cloud, "InvalidGroup.NotFound", cloud.groups.authorize, S, g.id,
            [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-0123456789abcdef0"}]}])


def test_ports_ignored_for_all_and_numbers(cloud: Cloud) -> None:
    g = cloud.groups.create(S, "web", "x")
    rules = cloud.groups.authorize(S, g.id, [
        {"IpProtocol": "-1", "FromPort": 5, "ToPort": 9, "IpRanges": [{"CidrIp": "1.0.0.0/8"}]},
        {"IpProtocol": "47", "IpRanges": [{"CidrIp": "1.0.0.0/8"}]},
        {"IpProtocol": "icmpv6", "Ipv6Ranges": [{"CidrIpv6": "2001:db8::5/64"}]},
    ])
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in rules] == \
        [("-1", -1, -1), ("47", -1, -1), ("icmpv6", -1, -1)]
    assert rules[2]["CidrIpv6"] == "2001:db8::/64"
    perms = ip_permissions(cloud.groups.get(S, g.id).ingress)
    assert "FromPort" not in perms[0] and "FromPort" not in perms[1]
    assert (perms[2]["FromPort"], perms[2]["ToPort"]) == (-1, -1)


def test_rendering_groups_sources() -> None:
    rules = [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIpv4": "1.0.0.0/8",
         "Description": "a"},
        {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "CidrIpv4": "1.0.0.0/8"},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIpv6": "::/0"},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "ReferencedGroupInfo": {"GroupId": "sg-1", "UserId": "1"}},
    ]
    ssh, dns = ip_permissions(rules)
    assert ssh["IpRanges"] == [{"CidrIp": "1.0.0.0/8", "Description": "a"}]
    assert ssh["Ipv6Ranges"] == [{"CidrIpv6": "::/0"}]
    assert ssh["UserIdGroupPairs"] == [{"GroupId": "sg-1", "UserId": "1"}]
    assert dns["IpProtocol"] == "udp" and dns["FromPort"] == 53


def test_legacy_source_group_grants_tcp_udp_icmp(cloud: Cloud) -> None:
    g = cloud.groups.create(S, "web", "x")
    rules = cloud.groups.authorize(S, group_name="web",
                                   permissions=legacy_permissions(source_group_name="default"))
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in rules] == \
        [("tcp", 0, 65535), ("udp", 0, 65535), ("icmp", -1, -1)]
    d = cloud.groups.by_name(S, "default")
    assert {r["ReferencedGroupInfo"]["GroupId"] for r in rules} == {d.id}
    assert cloud.groups.dependents(d.id) == [g.id]


def test_quota_per_direction_and_family(cloud: Cloud) -> None:
    g = cloud.groups.create(S, "web", "x")  # rules_per_group=5 in this fixture
    cloud.groups.authorize(S, g.id, [tcp(p) for p in range(1, 6)])
    refused(cloud, "RulesPerSecurityGroupLimitExceeded", cloud.groups.authorize, S, g.id,
            [tcp(6)])
    cloud.groups.authorize(S, g.id, [{"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1,
                                      "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])
    # egress has its own count: one rule there already
    cloud.groups.authorize(S, g.id, [tcp(p) for p in range(1, 5)], egress=True)
    refused(cloud, "RulesPerSecurityGroupLimitExceeded", cloud.groups.authorize, S, g.id,
            [tcp(9)], egress=True)


def test_revoke_by_permission_and_by_id(cloud: Cloud) -> None:
    other = Vpc(id="vpc-0123456789abcdef0", region=S.region, owner_id=S.account_id,
                cidr_block="10.0.0.0/16")
    with cloud.engine.transaction() as tx:
        cloud.vpcs.put(other, tx=tx)
    g = cloud.groups.create(S, "web", "x", vpc_id=other.id)
    a, b = cloud.groups.authorize(S, g.id, [tcp(22), tcp(80)])
    # non-default VPC: an unknown rule refuses the whole revoke
    refused(cloud, "InvalidPermission.NotFound", cloud.groups.revoke, S, g.id,
            [tcp(22), tcp(443)])
    done = cloud.groups.revoke(S, g.id, [tcp(22, "10.1.2.3/8")])  # canonical match
    assert [r["SecurityGroupRuleId"] for r in done.rules] == [a["SecurityGroupRuleId"]]
    refused(cloud, "InvalidSecurityGroupRuleId.NotFound", cloud.groups.revoke, S, g.id,
            rule_ids=["sgr-0123456789abcdef0"])
    refused(cloud, "InvalidSecurityGroupRuleId.Malformed", cloud.groups.revoke, S, g.id,
            rule_ids=["rule-1"])
    # an ingress rule's id does not name an egress rule
    refused(cloud, "InvalidSecurityGroupRuleId.NotFound", cloud.groups.revoke, S, g.id,
            rule_ids=[b["SecurityGroupRuleId"]], egress=True)
    cloud.groups.revoke(S, g.id, rule_ids=[b["SecurityGroupRuleId"]])
    assert cloud.groups.get(S, g.id).ingress == []


def test_revoke_missing_in_default_vpc_reports_unknown(cloud: Cloud) -> None:
    g = cloud.groups.create(S, "web", "x")
    cloud.groups.authorize(S, g.id, [tcp(22)])
    done = cloud.groups.revoke(S, g.id, [tcp(22), tcp(443)])
    assert len(done.rules) == 1 and done.unknown == [tcp(443)]


def test_delete_rules(cloud: Cloud) -> None:
    vpc = cloud.addressing.default_vpc(S)
    assert vpc is not None
    d = cloud.groups.default_of(S, vpc.id)
    assert d is not None
    refused(cloud, "CannotDelete", cloud.groups.delete, S, d.id)
    web = cloud.groups.create(S, "web", "x")
    db = cloud.groups.create(S, "db", "x")
    cloud.groups.authorize(S, db.id, [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
                                       "UserIdGroupPairs": [{"GroupId": web.id}]}])
    refused(cloud, "DependencyViolation", cloud.groups.delete, S, web.id)
    # an interface carrying the group holds it too
    sub = cloud.addressing.default_subnet(S, None)
    assert sub is not None
    with cloud.engine.transaction() as tx:
        cloud.network_interfaces.put(new_interface(S, sub, "172.31.0.10", [db.id]), tx=tx)
    refused(cloud, "DependencyViolation", cloud.groups.delete, S, db.id)
    refused(cloud, "InvalidGroup.NotFound", cloud.groups.delete, S, "sg-0123456789abcdef0")
    refused(cloud, "InvalidGroupId.Malformed", cloud.groups.delete, S, "sg-xyz")
    refused(cloud, "InvalidGroup.NotFound", cloud.groups.delete, S, group_name="nope")
    assert cloud.check() == []


def test_modify_and_describe_rules(cloud: Cloud) -> None:
    g = cloud.groups.create(S, "web", "x")
    a, b = cloud.groups.authorize(S, g.id, [tcp(22), tcp(80)], tags={"k": "v"})
    assert a["Tags"] == [{"Key": "k", "Value": "v"}]
    cloud.groups.modify_rules(S, g.id, [{"SecurityGroupRuleId": a["SecurityGroupRuleId"],
                                         "SecurityGroupRule": {"IpProtocol": "tcp", "FromPort": 2222,
                                                               "ToPort": 2222,
                                                               "CidrIpv4": "192.168.1.1/24",
                                                               "Description": "new"}}])
    ((owner, rule),) = cloud.groups.rules(S, [a["SecurityGroupRuleId"]])
    assert owner.id == g.id
    assert (rule["FromPort"], rule["CidrIpv4"], rule["Description"], rule["Tags"]) == \
        (2222, "192.168.1.0/24", "new", [{"Key": "k", "Value": "v"}])
    refused(cloud, "InvalidPermission.Duplicate", cloud.groups.modify_rules, S, g.id,
            [{"SecurityGroupRuleId": a["SecurityGroupRuleId"],
              "SecurityGroupRule": {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
                                    "CidrIpv4": "10.0.0.0/8"}}])
    cloud.groups.update_descriptions(S, g.id, [{**tcp(80), "IpRanges": [
        {"CidrIp": "10.0.0.0/8", "Description": "http"}]}])
    assert cloud.groups.rules(S, [b["SecurityGroupRuleId"]])[0][1]["Description"] == "http"
    refused(cloud, "InvalidPermission.NotFound", cloud.groups.update_descriptions, S, g.id,
            [tcp(81)])


def test_group_of_an_instance_deletable_once_terminated_on_the_clock() -> None:
    """A terminated instance no longer holds its groups, also when its record still stores
    ``shutting-down`` (maturing is computed on read, never written)."""
    from test_aws_support import put_image

    t = [1_700_000_000.0]
    eng = Engine("memory://")
    try:
        c = Cloud(eng, clock=lambda: t[0], config=CloudConfig(terminate_seconds=5))
        c.addressing.ensure_region(S)
        g = c.groups.create(S, "web", "x")
        (inst,) = c.instances.run(S, image_id=put_image(c), security_group_ids=[g.id])
        c.instances.terminate(S, [inst.id])
        refused(c, "DependencyViolation", c.groups.delete, S, g.id)  # still shutting down
        t[0] += 10
        assert c.instances.get(S, inst.id).state == "terminated"
        c.groups.delete(S, g.id)
        assert c.check() == []
    finally:
        eng.close()
