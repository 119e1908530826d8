"""Security groups: create, delete, find; rules authorised, revoked, modified and described.

A group's rules are stored one per (protocol, ports, source), as botocore's
``SecurityGroupRule`` members plus ``SecurityGroupRuleId`` (``sgr-...``) and ``IsEgress``:
``IpProtocol`` (``tcp``/``udp``/``icmp``/``icmpv6`` lower case, ``-1``, or a protocol number
as a string), ``FromPort``/``ToPort`` (``-1`` where AWS ignores them), exactly one source
(``CidrIpv4``, ``CidrIpv6``, ``PrefixListId`` or ``ReferencedGroupInfo`` ``{"GroupId",
"UserId"}``), and an optional ``Description`` and ``Tags`` (``[{"Key", "Value"}]``).
:func:`ip_permissions` renders them into IpPermissions the way AWS does: rules sharing
(protocol, from, to) in one permission, with lists of sources.

AWS's rules (spec section 8, botocore's ec2 documentation):

* a name is unique per VPC case-insensitively, at most 255 characters of
  ``a-zA-Z0-9 ._-:/()#,@[]+=&;{}!$*``, never ``sg-...``; a description is required, same set;
* a new group has no inbound rule and one outbound rule: all traffic to 0.0.0.0/0;
  a VPC's ``default`` group (made with the VPC) cannot be deleted;
* protocol names are case-insensitive and protocol numbers 6/17/1/58 are the names
  tcp/udp/icmp/icmpv6; tcp and udp need both ports (0-65535, from <= to), icmp needs a type
  and a code (-1 = all; a type of -1 needs a code of -1), icmpv6's are optional; -1 and every
  other number ignore the ports;
* CIDRs are canonicalised (``100.68.0.18/18`` is ``100.68.0.0/18``), so the non-canonical
  form of an existing rule is a duplicate; a rule that exists is
  ``InvalidPermission.Duplicate`` and nothing of the request is added;
* revoking what does not exist: ``InvalidPermission.NotFound`` in a non-default VPC; in the
  default VPC, no error and the unmatched permissions come back as unknown;
* at most ``CloudConfig.rules_per_group`` (60) rules per direction and address family;
* a group referenced by an interface, a live instance or another group's rule cannot be
  deleted (``DependencyViolation``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ebsengine import errors
from ebsengine.engine import Transaction
from ebsengine.rules import check_tags, is_aws_id, new_id

from .addressing import all_traffic_rule
from .model import SecurityGroup
from .scope import Scope

if TYPE_CHECKING:
    from .core import Cloud

#: protocol number -> the name AWS answers with
PROTOCOL_NAMES = {"6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6"}
NAMED = frozenset(PROTOCOL_NAMES.values())
MAX_TEXT = 255
_TEXT = re.compile(r"^[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]*$")
SOURCES = ("CidrIpv4", "CidrIpv6", "PrefixListId", "ReferencedGroupInfo")


def _err(code: str, message: str) -> errors.Ec2Error:
    return errors.Ec2Error(code, message)


# --- pure rules -----------------------------------------------------------------------------


def check_group_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise _err("MissingParameter", "The request must contain the parameter GroupName")
    if len(name) > MAX_TEXT or not _TEXT.match(name):
        raise _err("InvalidParameterValue",
                   "Invalid security group name. Valid names are non-empty strings less than "
                   "256 characters from the following set:  a-zA-Z0-9. _-:/()#,@[]+=&;{}!$*")
    if name.lower().startswith("sg-"):
        raise _err("InvalidParameterValue", "Group names may not be in the format sg-*.")
    return name


def check_group_description(text: Any) -> str:
    if not isinstance(text, str) or not text:
        raise _err("MissingParameter", "The request must contain the parameter GroupDescription")
    if len(text) > MAX_TEXT or not _TEXT.match(text):
        raise _err("InvalidParameterValue",
                   "Invalid security group description. Valid descriptions are strings less "
                   "than 256 characters from the following set:  a-zA-Z0-9. "
                   "_-:/()#,@[]+=&;{}!$*")
    return text


def check_rule_description(text: Any) -> str | None:
    if text is None:
        return None
    if not isinstance(text, str) or len(text) > MAX_TEXT or not _TEXT.match(text):
        raise _err("InvalidParameterValue",
                   "Invalid rule description. Valid descriptions are strings less than 256 "
                   "characters from the following set:  a-zA-Z0-9. _-:/()#,@[]+=&;{}!$*")
    return text


def check_group_id(gid: Any) -> str:
    if not is_aws_id(gid, "sg"):
        raise _err("InvalidGroupId.Malformed", f'Invalid id: "{gid}" (expecting "sg-...")')
    return str(gid)


def protocol(value: Any) -> str:
    """AWS's spelling of a protocol: lower-case name, ``-1``, or a number without a name."""
    if value is None or str(value).strip() == "":
        raise _err("MissingParameter", "The request must contain the parameter ipProtocol")
    s = str(value).strip().lower()
    if s in NAMED or s == "-1":
        return s
    if re.fullmatch(r"\d{1,3}", s) and 0 <= int(s) <= 255:
        n = str(int(s))
        return PROTOCOL_NAMES.get(n, n)
    raise _err("InvalidParameterValue", f"Invalid value '{value}' for IP protocol. "
                                        f"Unknown protocol.")


def ports(proto: str, from_port: Any, to_port: Any) -> tuple[int, int]:
    """The (FromPort, ToPort) a rule keeps: checked ranges for tcp/udp/icmp(v6), else -1/-1."""
    if proto in ("tcp", "udp"):
        if from_port is None or to_port is None:
            raise _err("InvalidParameterValue",
                       "Invalid value 'Must specify both from and to ports with TCP/UDP.' "
                       "for portRange.")
        for p in (from_port, to_port):
            if not 0 <= int(p) <= 65535:
                raise _err("InvalidPermission.Malformed", f"TCP/UDP port ({p}) out of range")
        if int(from_port) > int(to_port):
            raise _err("InvalidPermission.Malformed",
                       f"Invalid TCP/UDP port range: from port {from_port} is greater than "
                       f"to port {to_port}")
        return int(from_port), int(to_port)
    if proto in ("icmp", "icmpv6"):
        if from_port is None and to_port is None and proto == "icmpv6":
            return -1, -1
        if from_port is None or to_port is None:
            raise _err("InvalidParameterValue",
                       f"Invalid value 'Must specify both from and to ports with "
                       f"{proto.upper()}.' for portRange.")
        kind, code = int(from_port), int(to_port)
        for what, v in (("type", kind), ("code", code)):
            if not -1 <= v <= 255:
                raise _err("InvalidPermission.Malformed", f"ICMP {what} ({v}) out of range")
        if kind == -1 and code != -1:
            raise _err("InvalidParameterValue",
                       f"Invalid value 'ICMP code ({code}) out of range' for portRange. "
                       f"If the type is -1 (all ICMP types), the code must be -1.")
        return kind, code
    return -1, -1


def cidr4(value: Any) -> str:
    try:
        if not isinstance(value, str) or "/" not in value:
            raise ValueError
        return str(ipaddress.IPv4Network(value.strip(), strict=False))
    except ValueError:
        raise _err("InvalidParameterValue", f"Value ({value}) for parameter cidrIp is invalid. "
                                            f"This is not a valid CIDR block.") from None


def cidr6(value: Any) -> str:
    try:
        if not isinstance(value, str) or "/" not in value:
            raise ValueError
        return str(ipaddress.IPv6Network(value.strip(), strict=False))
    except ValueError:
        raise _err("InvalidParameterValue", f"Value ({value}) for parameter cidrIpv6 is "
                                            f"invalid. This is not a valid IPv6 CIDR block."
                   ) from None


def prefix_list(value: Any) -> str:
    if not is_aws_id(value, "pl"):
        raise _err("InvalidPrefixListId.Malformed", f'Invalid id: "{value}" (expecting "pl-...")')
    return str(value)


def rule_key(rule: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two rules the same rule: direction, protocol, ports and source (never the
    description, tags or the referenced group's owner)."""
    ref = rule.get("ReferencedGroupInfo") or {}
    return (bool(rule.get("IsEgress")), rule["IpProtocol"], rule["FromPort"], rule["ToPort"],
            rule.get("CidrIpv4"), rule.get("CidrIpv6"), rule.get("PrefixListId"),
            ref.get("GroupId"))


def peer(rule: dict[str, Any]) -> str:
    ref = rule.get("ReferencedGroupInfo") or {}
    return str(rule.get("CidrIpv4") or rule.get("CidrIpv6") or rule.get("PrefixListId")
               or ref.get("GroupId"))


def describe_rule(rule: dict[str, Any]) -> str:
    """A rule as AWS's InvalidPermission messages spell it."""
    proto, lo, hi = rule["IpProtocol"], rule["FromPort"], rule["ToPort"]
    if proto == "-1":
        what = "ALL"
    elif proto in ("tcp", "udp"):
        what = f"{proto.upper()}, from port: {lo}, to port: {hi}"
    elif proto in ("icmp", "icmpv6"):
        what = f"{proto.upper()}, type: {lo}, code: {hi}"
    else:
        what = f"protocol: {proto}"
    return f"peer: {peer(rule)}, {what}, ALLOW"


def ip_permissions(rules: Iterable[dict[str, Any]],
                   names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Rules as IpPermissions: one permission per (protocol, from, to), in first-seen order,
    with every source in its list. FromPort/ToPort are left out where AWS leaves them out
    (``-1`` and protocols without ports). ``names``: group id -> name, unused for VPC groups
    (AWS answers GroupId and UserId only) but kept for callers that want them."""
    del names
    perms: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in rules:
        key = (r["IpProtocol"], r["FromPort"], r["ToPort"])
        perm = perms.get(key)
        if perm is None:
            perm = {"IpProtocol": r["IpProtocol"], "IpRanges": [], "Ipv6Ranges": [],
                    "PrefixListIds": [], "UserIdGroupPairs": []}
            if r["IpProtocol"] in NAMED:
                perm["FromPort"], perm["ToPort"] = r["FromPort"], r["ToPort"]
            perms[key] = perm
        desc = {"Description": r["Description"]} if r.get("Description") is not None else {}
        if r.get("CidrIpv4"):
            perm["IpRanges"].append({"CidrIp": r["CidrIpv4"], **desc})
        elif r.get("CidrIpv6"):
            perm["Ipv6Ranges"].append({"CidrIpv6": r["CidrIpv6"], **desc})
        elif r.get("PrefixListId"):
            perm["PrefixListIds"].append({"PrefixListId": r["PrefixListId"], **desc})
        else:
            ref = r.get("ReferencedGroupInfo") or {}
            perm["UserIdGroupPairs"].append({"GroupId": ref.get("GroupId"),
                                             "UserId": ref.get("UserId"), **desc})
    return list(perms.values())


def legacy_permissions(*, cidr_ip: str | None = None, ip_protocol: Any = None,
                       from_port: Any = None, to_port: Any = None,
                       source_group_name: str | None = None,
                       source_group_owner: str | None = None) -> list[dict[str, Any]]:
    """The IpPermissions of AuthorizeSecurityGroupIngress's flat parameters: a CIDR with a
    protocol and ports, or a source group by name (full TCP, UDP and ICMP access, as AWS
    grants it)."""
    if source_group_name is not None or source_group_owner is not None:
        if cidr_ip is not None or ip_protocol is not None or from_port is not None or \
                to_port is not None:
            raise _err("InvalidParameterCombination",
                       "The parameter 'sourceSecurityGroupName' may not be used in "
                       "combination with 'cidrIp', 'ipProtocol', 'fromPort' or 'toPort'")
        if source_group_name is None:
            raise _err("MissingParameter",
                       "The request must contain the parameter sourceSecurityGroupName")
        pair: dict[str, Any] = {"GroupName": source_group_name}
        if source_group_owner is not None:
            pair["UserId"] = source_group_owner
        return [{"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535, "UserIdGroupPairs": [pair]},
                {"IpProtocol": "udp", "FromPort": 0, "ToPort": 65535, "UserIdGroupPairs": [pair]},
                {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "UserIdGroupPairs": [pair]}]
    if cidr_ip is None and ip_protocol is None and from_port is None and to_port is None:
        return []
    perm: dict[str, Any] = {"IpProtocol": ip_protocol, "FromPort": from_port, "ToPort": to_port}
    if cidr_ip is not None:
        perm["IpRanges"] = [{"CidrIp": cidr_ip}]
    return [perm]


@dataclass(frozen=True)
class Revoked:
    """What a revoke did: the rules it removed and the permissions that matched nothing
    (only ever non-empty in a default VPC)."""

    group: SecurityGroup
    rules: list[dict[str, Any]]
    unknown: list[dict[str, Any]]


# --- the manager ----------------------------------------------------------------------------


class SecurityGroups:
    """The library API of security groups (``cloud.groups``)."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    # lookups

    def in_region(self, scope: Scope, tx: Transaction | None = None) -> list[SecurityGroup]:
        """The groups of the scope's region and account, in id order."""
        return [g for g in self.cloud.security_groups.in_region(scope.region, tx=tx)
                if g.owner_id == scope.account_id]

    def get(self, scope: Scope, group_id: str, tx: Transaction | None = None) -> SecurityGroup:
        """The group ``group_id`` (``InvalidGroupId.Malformed`` / ``InvalidGroup.NotFound``)."""
        check_group_id(group_id)
        g = self.cloud.security_groups.get(group_id, tx=tx)
        if g is None or g.region != scope.region or g.owner_id != scope.account_id:
            raise _err("InvalidGroup.NotFound",
                       f"The security group '{group_id}' does not exist")
        return g

    def by_name(self, scope: Scope, name: str, vpc_id: str | None = None,
                tx: Transaction | None = None) -> SecurityGroup:
        """The group named ``name`` (case-insensitively) in ``vpc_id`` (default: the
        region's default VPC, where AWS resolves names)."""
        where = "VPC"
        if vpc_id is None:
            vpc = self.cloud.addressing.default_vpc(scope, tx)
            if vpc is None:
                raise _err("VPCIdNotSpecified", "No default VPC for this user")
            vpc_id, where = vpc.id, "default VPC"
        for g in self.in_region(scope, tx):
            if g.vpc_id == vpc_id and g.name.lower() == name.lower():
                return g
        raise _err("InvalidGroup.NotFound",
                   f"The security group '{name}' does not exist in {where} '{vpc_id}'")

    def lookup(self, scope: Scope, group_id: str | None = None, group_name: str | None = None,
               tx: Transaction | None = None) -> SecurityGroup:
        """One group by id or (default VPC) name, as the actions' GroupId/GroupName take it."""
        if group_id:
            return self.get(scope, group_id, tx)
        if group_name:
            return self.by_name(scope, group_name, tx=tx)
        raise _err("MissingParameter",
                   "The request must contain the parameter groupName or groupId")

    def find(self, scope: Scope, ids: list[str] | None = None, names: list[str] | None = None,
             tx: Transaction | None = None) -> list[SecurityGroup]:
        """DescribeSecurityGroups's selection: every group, or those named by id and by
        (default VPC) name; any unknown one refuses the whole request."""
        if not ids and not names:
            return self.in_region(scope, tx)
        found: dict[str, SecurityGroup] = {}
        for gid in ids or []:
            g = self.get(scope, gid, tx)
            found[g.id] = g
        for name in names or []:
            g = self.by_name(scope, name, tx=tx)
            found[g.id] = g
        return [found[k] for k in sorted(found)]

    def default_of(self, scope: Scope, vpc_id: str,
                   tx: Transaction | None = None) -> SecurityGroup | None:
        """The ``default`` group of a VPC."""
        for g in self.in_region(scope, tx):
            if g.vpc_id == vpc_id and g.name == "default":
                return g
        return None

    def in_vpc(self, vpc_id: str, tx: Transaction | None = None) -> list[SecurityGroup]:
        return [g for g in self.cloud.security_groups.all(tx=tx) if g.vpc_id == vpc_id]

    def for_launch(self, scope: Scope, vpc_id: str, ids: list[str] | None = None,
                   names: list[str] | None = None,
                   tx: Transaction | None = None) -> list[str]:
        """The group ids an interface or instance in ``vpc_id`` gets: those given by id or
        name (names resolved in that VPC), all of that VPC (``InvalidParameter`` otherwise),
        or the VPC's default group when none is given."""
        out: list[str] = []
        for gid in ids or []:
            g = self.get(scope, gid, tx)
            if g.vpc_id != vpc_id:
                raise _err("InvalidParameter",
                           f"Security group {g.id} and subnet belong to different networks.")
            if g.id not in out:
                out.append(g.id)
        for name in names or []:
            g = self.by_name(scope, name, vpc_id, tx)
            if g.id not in out:
                out.append(g.id)
        if not out:
            d = self.default_of(scope, vpc_id, tx)
            if d is not None:
                out.append(d.id)
        return out

    def rules(self, scope: Scope, rule_ids: list[str] | None = None,
              tx: Transaction | None = None) -> list[tuple[SecurityGroup, dict[str, Any]]]:
        """Every (group, rule) of the region in rule id order, or those ``rule_ids`` name
        (``InvalidSecurityGroupRuleId.Malformed`` / ``.NotFound``)."""
        for rid in rule_ids or []:
            if not is_aws_id(rid, "sgr"):
                raise _err("InvalidSecurityGroupRuleId.Malformed",
                           f'Invalid id: "{rid}" (expecting "sgr-...")')
        out = [(g, r) for g in self.in_region(scope, tx) for r in [*g.ingress, *g.egress]]
        if rule_ids:
            have = {r["SecurityGroupRuleId"] for _, r in out}
            for rid in rule_ids:
                if rid not in have:
                    raise _err("InvalidSecurityGroupRuleId.NotFound",
                               f"The security group rule ID '{rid}' does not exist")
            wanted = set(rule_ids)
            out = [(g, r) for g, r in out if r["SecurityGroupRuleId"] in wanted]
        out.sort(key=lambda gr: gr[1]["SecurityGroupRuleId"])
        return out

    def dependents(self, group_id: str, tx: Transaction | None = None) -> list[str]:
        """What keeps a group from being deleted: interfaces and live instances that carry
        it, and other groups whose rules reference it."""
        c = self.cloud
        out = [e.id for e in c.network_interfaces.all(tx=tx) if group_id in e.security_group_ids]
        now = c.now()  # the settled state: a stored shutting-down may have matured
        out += [i.id for i in c.instance_table.all(tx=tx)
                if group_id in i.security_group_ids
                and c.instances.settled(i, now).state != "terminated"]
        for g in c.security_groups.all(tx=tx):
            if g.id != group_id and any(
                    (r.get("ReferencedGroupInfo") or {}).get("GroupId") == group_id
                    for r in [*g.ingress, *g.egress]):
                out.append(g.id)
        return out

    # changes

    def _unit(self, tx: Transaction | None) -> Any:
        return self.cloud.engine.transaction() if tx is None else _Same(tx)

    def create(self, scope: Scope, name: str, description: str, vpc_id: str | None = None,
               tags: dict[str, str] | None = None,
               tx: Transaction | None = None) -> SecurityGroup:
        """A new group in ``vpc_id`` (default: the region's default VPC): no inbound rule,
        all traffic outbound."""
        check_group_name(name)
        check_group_description(description)
        tags = check_tags(tags or {})
        if vpc_id is not None and not is_aws_id(vpc_id, "vpc"):
            raise _err("InvalidVpcID.Malformed", f'Invalid id: "{vpc_id}" (expecting "vpc-...")')
        with self._unit(tx) as unit:
            if vpc_id is None:
                vpc = self.cloud.addressing.default_vpc(scope, unit)
                if vpc is None:
                    raise _err("VPCIdNotSpecified", "No default VPC for this user")
            else:
                vpc = self.cloud.vpcs.get(vpc_id, tx=unit)
                if vpc is None or vpc.region != scope.region or vpc.owner_id != scope.account_id:
                    raise _err("InvalidVpcID.NotFound", f"The vpc ID '{vpc_id}' does not exist")
            for g in self.in_region(scope, unit):
                if g.vpc_id == vpc.id and g.name.lower() == name.lower():
                    raise _err("InvalidGroup.Duplicate",
                               f"The security group '{name}' already exists for VPC "
                               f"'{vpc.id}'")
            group = SecurityGroup(id=new_id("sg"), region=scope.region,
                                  owner_id=scope.account_id, vpc_id=vpc.id, name=name,
                                  description=description, ingress=[],
                                  egress=[all_traffic_rule("egress")], tags=tags)
            return self.cloud.security_groups.put(group, tx=unit)

    def delete(self, scope: Scope, group_id: str | None = None, group_name: str | None = None,
               tx: Transaction | None = None) -> SecurityGroup:
        """Delete a group (by id, or by name in the default VPC); returns what was deleted."""
        with self._unit(tx) as unit:
            g = self.lookup(scope, group_id, group_name, unit)
            if g.name == "default":
                raise _err("CannotDelete", f'the specified group: "{g.id}" name: "default" '
                                           f'cannot be deleted by a user')
            if self.dependents(g.id, unit):
                raise _err("DependencyViolation", f"resource {g.id} has a dependent object")
            self.cloud.security_groups.delete(g.id, tx=unit)
            return g

    def delete_with_vpc(self, vpc_id: str, tx: Transaction) -> None:
        """What DeleteVpc does to groups: the default one goes with it; any other one is
        ``DependencyViolation`` (to call before deleting the VPC, in its unit)."""
        groups = self.in_vpc(vpc_id, tx)
        if any(g.name != "default" for g in groups):
            raise _err("DependencyViolation",
                       f"The vpc '{vpc_id}' has dependencies and cannot be deleted.")
        for g in groups:
            if [d for d in self.dependents(g.id, tx) if d != g.id]:
                raise _err("DependencyViolation",
                           f"The vpc '{vpc_id}' has dependencies and cannot be deleted.")
            self.cloud.security_groups.delete(g.id, tx=tx)

    def _rules_of(self, scope: Scope, group: SecurityGroup, egress: bool,
                  permissions: list[dict[str, Any]], tx: Transaction | None,
                  for_revoke: bool = False) -> list[list[dict[str, Any]]]:
        """Each permission's rules (without ids), checked and canonical."""
        out: list[list[dict[str, Any]]] = []
        for perm in permissions:
            proto = protocol(perm.get("IpProtocol"))
            lo, hi = ports(proto, perm.get("FromPort"), perm.get("ToPort"))
            base = {"IsEgress": egress, "IpProtocol": proto, "FromPort": lo, "ToPort": hi}
            rules: list[dict[str, Any]] = []

            def add(source: dict[str, Any], desc: Any, rules: list[dict[str, Any]] = rules,
                    base: dict[str, Any] = base) -> None:
                r = {**base, **source}
                d = check_rule_description(desc)
                if d is not None:
                    r["Description"] = d
                rules.append(r)

            for ipr in perm.get("IpRanges") or []:
                add({"CidrIpv4": cidr4(ipr.get("CidrIp"))}, ipr.get("Description"))
            for ipr in perm.get("Ipv6Ranges") or []:
                add({"CidrIpv6": cidr6(ipr.get("CidrIpv6"))}, ipr.get("Description"))
            for pl in perm.get("PrefixListIds") or []:
                add({"PrefixListId": prefix_list(pl.get("PrefixListId"))}, pl.get("Description"))
            for pair in perm.get("UserIdGroupPairs") or []:
                ref = self._referenced(scope, group, pair, tx, for_revoke)
                add({"ReferencedGroupInfo": ref}, pair.get("Description"))
            if not rules:
                raise _err("InvalidParameterValue",
                           "The request must contain at least one source or destination: "
                           "IpRanges, Ipv6Ranges, PrefixListIds or UserIdGroupPairs")
            out.append(rules)
        return out

    def _referenced(self, scope: Scope, group: SecurityGroup, pair: dict[str, Any],
                    tx: Transaction | None, for_revoke: bool) -> dict[str, str]:
        gid, name = pair.get("GroupId"), pair.get("GroupName")
        if gid:
            if for_revoke:  # a rule may be revoked by id even once it names nothing live
                check_group_id(gid)
                ref = self.cloud.security_groups.get(gid, tx=tx)
                if ref is None:
                    return {"GroupId": gid, "UserId": pair.get("UserId") or scope.account_id}
            else:
                ref = self.get(scope, gid, tx)
        elif name:
            ref = self.by_name(scope, name, group.vpc_id, tx)
        else:
            raise _err("MissingParameter",
                       "The request must contain the parameter groupId or groupName of a "
                       "UserIdGroupPair")
        if ref.vpc_id != group.vpc_id:
            raise _err("InvalidParameterValue",
                       "You have specified two resources that belong to different networks.")
        return {"GroupId": ref.id, "UserId": ref.owner_id}

    def authorize(self, scope: Scope, group_id: str | None = None,
                  permissions: list[dict[str, Any]] | None = None, *, egress: bool = False,
                  group_name: str | None = None, tags: dict[str, str] | None = None,
                  tx: Transaction | None = None) -> list[dict[str, Any]]:
        """Add rules (IpPermissions dicts, botocore members) to a group, all or none;
        returns the new rules with their ids (tags: on every new rule)."""
        tags = check_tags(tags or {})
        if not permissions:
            raise _err("MissingParameter", "The request must contain the parameter ipPermissions")
        limit = self.cloud.config.rules_per_group
        with self._unit(tx) as unit:
            g = self.lookup(scope, group_id, None if egress else group_name, unit)
            current = g.egress if egress else g.ingress
            seen = {rule_key(r) for r in current}
            new: list[dict[str, Any]] = []
            for rules in self._rules_of(scope, g, egress, permissions, unit):
                for r in rules:
                    if rule_key(r) in seen:
                        raise _err("InvalidPermission.Duplicate",
                                   f'the specified rule "{describe_rule(r)}" already exists')
                    seen.add(rule_key(r))
                    r["SecurityGroupRuleId"] = new_id("sgr")
                    if tags:
                        r["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
                    new.append(r)
            for v6 in (False, True):
                count = sum(1 for r in [*current, *new] if bool(r.get("CidrIpv6")) == v6)
                if count > limit:
                    raise _err("RulesPerSecurityGroupLimitExceeded",
                               "The maximum number of rules per security group has been "
                               "reached.")
            changed = g.but(egress=[*current, *new]) if egress else g.but(ingress=[*current, *new])
            self.cloud.security_groups.put(changed, tx=unit)
            return new

    def revoke(self, scope: Scope, group_id: str | None = None,
               permissions: list[dict[str, Any]] | None = None, *, egress: bool = False,
               rule_ids: list[str] | None = None, group_name: str | None = None,
               tx: Transaction | None = None) -> Revoked:
        """Remove rules named by IpPermissions or by rule id, all or none."""
        if permissions and rule_ids:
            raise _err("InvalidParameterCombination",
                       "The parameter 'SecurityGroupRuleIds' may not be used in combination "
                       "with 'IpPermissions'")
        if not permissions and not rule_ids:
            raise _err("MissingParameter", "The request must contain the parameter ipPermissions "
                                           "or securityGroupRuleIds")
        with self._unit(tx) as unit:
            g = self.lookup(scope, group_id, None if egress else group_name, unit)
            current = g.egress if egress else g.ingress
            gone: list[dict[str, Any]] = []
            unknown: list[dict[str, Any]] = []
            if rule_ids:
                by_id = {r["SecurityGroupRuleId"]: r for r in current}
                for rid in rule_ids:
                    if not is_aws_id(rid, "sgr"):
                        raise _err("InvalidSecurityGroupRuleId.Malformed",
                                   f'Invalid id: "{rid}" (expecting "sgr-...")')
                    if rid not in by_id:
                        raise _err("InvalidSecurityGroupRuleId.NotFound",
                                   f"The security group rule ID '{rid}' does not exist")
                    if by_id[rid] not in gone:
                        gone.append(by_id[rid])
            else:
                by_key = {rule_key(r): r for r in current}
                vpc = self.cloud.vpcs.get(g.vpc_id, tx=unit)
                lenient = vpc is not None and vpc.is_default
                for perm, rules in zip(permissions or [],
                                       self._rules_of(scope, g, egress, permissions or [], unit,
                                                      for_revoke=True), strict=True):
                    missing = [r for r in rules if rule_key(r) not in by_key]
                    if missing and not lenient:
                        raise _err("InvalidPermission.NotFound",
                                   "The specified rule does not exist in this security group.")
                    if missing:
                        unknown.append(perm)
                    gone += [by_key[rule_key(r)] for r in rules
                             if rule_key(r) in by_key and by_key[rule_key(r)] not in gone]
            ids = {r["SecurityGroupRuleId"] for r in gone}
            kept = [r for r in current if r["SecurityGroupRuleId"] not in ids]
            if gone:
                changed = g.but(egress=kept) if egress else g.but(ingress=kept)
                self.cloud.security_groups.put(changed, tx=unit)
            return Revoked(g, gone, unknown)

    def modify_rules(self, scope: Scope, group_id: str, updates: list[dict[str, Any]],
                     tx: Transaction | None = None) -> SecurityGroup:
        """ModifySecurityGroupRules: each ``{"SecurityGroupRuleId", "SecurityGroupRule":
        {IpProtocol, FromPort, ToPort, CidrIpv4 | CidrIpv6 | PrefixListId |
        ReferencedGroupId, Description}}`` replaces that rule, keeping its id and tags."""
        with self._unit(tx) as unit:
            g = self.get(scope, group_id, unit)
            ingress, egress = list(g.ingress), list(g.egress)
            for u in updates:
                rid, req = u.get("SecurityGroupRuleId"), u.get("SecurityGroupRule") or {}
                if not is_aws_id(rid, "sgr"):
                    raise _err("InvalidSecurityGroupRuleId.Malformed",
                               f'Invalid id: "{rid}" (expecting "sgr-...")')
                rules = next((lst for lst in (ingress, egress)
                              if any(r["SecurityGroupRuleId"] == rid for r in lst)), None)
                if rules is None:
                    raise _err("InvalidSecurityGroupRuleId.NotFound",
                               f"The security group rule ID '{rid}' does not exist")
                i = next(n for n, r in enumerate(rules) if r["SecurityGroupRuleId"] == rid)
                old = rules[i]
                sources = [k for k in ("CidrIpv4", "CidrIpv6", "PrefixListId",
                                       "ReferencedGroupId") if req.get(k)]
                if len(sources) != 1:
                    raise _err("InvalidParameterCombination",
                               "Exactly one of CidrIpv4, CidrIpv6, PrefixListId or "
                               "ReferencedGroupId must be specified")
                perm: dict[str, Any] = {"IpProtocol": req.get("IpProtocol"),
                                        "FromPort": req.get("FromPort"),
                                        "ToPort": req.get("ToPort")}
                d = {"Description": req["Description"]} if "Description" in req else {}
                src = sources[0]
                if src == "CidrIpv4":
                    perm["IpRanges"] = [{"CidrIp": req[src], **d}]
                elif src == "CidrIpv6":
                    perm["Ipv6Ranges"] = [{"CidrIpv6": req[src], **d}]
                elif src == "PrefixListId":
                    perm["PrefixListIds"] = [{"PrefixListId": req[src], **d}]
                else:
                    perm["UserIdGroupPairs"] = [{"GroupId": req[src], **d}]
                ((new,),) = self._rules_of(scope, g, bool(old.get("IsEgress")), [perm], unit)
                new["SecurityGroupRuleId"] = rid
                if old.get("Tags"):
                    new["Tags"] = old["Tags"]
                if any(rule_key(r) == rule_key(new) for r in rules if r is not old):
                    raise _err("InvalidPermission.Duplicate",
                               f'the specified rule "{describe_rule(new)}" already exists')
                rules[i] = new
            changed = g.but(ingress=ingress, egress=egress)
            return self.cloud.security_groups.put(changed, tx=unit)

    def update_descriptions(self, scope: Scope, group_id: str | None = None,
                            permissions: list[dict[str, Any]] | None = None, *,
                            egress: bool = False, group_name: str | None = None,
                            by_rule_id: dict[str, str | None] | None = None,
                            tx: Transaction | None = None) -> SecurityGroup:
        """UpdateSecurityGroupRuleDescriptions{Ingress,Egress}: set the descriptions of
        existing rules named by IpPermissions (the description each source carries) or by
        rule id; a rule that does not exist is ``InvalidPermission.NotFound``."""
        with self._unit(tx) as unit:
            g = self.lookup(scope, group_id, None if egress else group_name, unit)
            current = [dict(r) for r in (g.egress if egress else g.ingress)]
            by_key = {rule_key(r): r for r in current}
            by_id = {r["SecurityGroupRuleId"]: r for r in current}
            for rules in self._rules_of(scope, g, egress, permissions or [], unit):
                for r in rules:
                    old = by_key.get(rule_key(r))
                    if old is None:
                        raise _err("InvalidPermission.NotFound",
                                   "The specified rule does not exist in this security group.")
                    old.pop("Description", None)
                    if r.get("Description") is not None:
                        old["Description"] = r["Description"]
            for rid, desc in (by_rule_id or {}).items():
                if rid not in by_id:
                    raise _err("InvalidSecurityGroupRuleId.NotFound",
                               f"The security group rule ID '{rid}' does not exist")
                by_id[rid].pop("Description", None)
                if check_rule_description(desc) is not None:
                    by_id[rid]["Description"] = desc
            changed = g.but(egress=current) if egress else g.but(ingress=current)
            return self.cloud.security_groups.put(changed, tx=unit)


class _Same:
    """A caller's unit of work used as a context manager (no nested unit: the engine's are
    not re-entrant)."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx

    def __enter__(self) -> Transaction:
        return self.tx

    def __exit__(self, *exc: object) -> None:
        return None


__all__ = ["Revoked", "SecurityGroups", "check_group_description", "check_group_name",
           "describe_rule", "ip_permissions", "legacy_permissions", "protocol", "rule_key"]
