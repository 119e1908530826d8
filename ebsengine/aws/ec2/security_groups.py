"""EC2 security group actions: groups (create, delete, describe) and their rules (authorize,
revoke, modify, update descriptions, describe). The rules live in
:mod:`ebsengine.cloud.security_groups`; this module parses, calls ``cloud.groups`` and
renders."""

from __future__ import annotations

from typing import Any, ClassVar

from ebsengine.cloud.model import SecurityGroup
from ebsengine.cloud.security_groups import ip_permissions, legacy_permissions
from ebsengine.cloud.tags import spec_tags

from ..errors import ApiError
from ..store import Context
from .common import Actions, Extractor, Paginator, Params, Result, _tag_list, compile_filters

_FLAT = ("CidrIp", "IpProtocol", "FromPort", "ToPort", "SourceSecurityGroupName",
         "SourceSecurityGroupOwnerId")


def group_arn(g: SecurityGroup) -> str:
    return f"arn:aws:ec2:{g.region}:{g.owner_id}:security-group/{g.id}"


def rule_view(g: SecurityGroup, r: dict[str, Any]) -> Result:
    """A stored rule as a ``SecurityGroupRule``."""
    out: Result = {"SecurityGroupRuleId": r["SecurityGroupRuleId"], "GroupId": g.id,
                   "GroupOwnerId": g.owner_id, "IsEgress": bool(r.get("IsEgress")),
                   "IpProtocol": r["IpProtocol"], "FromPort": r["FromPort"],
                   "ToPort": r["ToPort"]}
    for k in ("CidrIpv4", "CidrIpv6", "PrefixListId", "ReferencedGroupInfo", "Description"):
        if r.get(k) is not None:
            out[k] = r[k]
    out["Tags"] = list(r.get("Tags") or [])
    out["SecurityGroupRuleArn"] = (f"arn:aws:ec2:{g.region}:{g.owner_id}:security-group-rule/"
                                   f"{r['SecurityGroupRuleId']}")
    return out


def revoked_view(g: SecurityGroup, r: dict[str, Any]) -> Result:
    out: Result = {"SecurityGroupRuleId": r["SecurityGroupRuleId"], "GroupId": g.id,
                   "IsEgress": bool(r.get("IsEgress")), "IpProtocol": r["IpProtocol"],
                   "FromPort": r["FromPort"], "ToPort": r["ToPort"]}
    for k in ("CidrIpv4", "CidrIpv6", "PrefixListId", "Description"):
        if r.get(k) is not None:
            out[k] = r[k]
    if r.get("ReferencedGroupInfo"):
        out["ReferencedGroupId"] = r["ReferencedGroupInfo"].get("GroupId")
    return out


def group_view(g: SecurityGroup) -> Result:
    return {"GroupId": g.id, "GroupName": g.name, "Description": g.description,
            "OwnerId": g.owner_id, "VpcId": g.vpc_id,
            "IpPermissions": ip_permissions(g.ingress),
            "IpPermissionsEgress": ip_permissions(g.egress),
            "Tags": _tag_list(g.tags), "SecurityGroupArn": group_arn(g)}


def _rule_filters(prefix: str, egress: bool, names: dict[str, str]) -> dict[str, Extractor]:
    def rules(g: SecurityGroup) -> list[dict[str, Any]]:
        return g.egress if egress else g.ingress

    def ref(r: dict[str, Any], key: str) -> list[str]:
        info = r.get("ReferencedGroupInfo")
        return [info[key]] if info and info.get(key) else []

    return {
        prefix + "cidr": lambda g: [r["CidrIpv4"] for r in rules(g) if r.get("CidrIpv4")],
        prefix + "ipv6-cidr": lambda g: [r["CidrIpv6"] for r in rules(g) if r.get("CidrIpv6")],
        prefix + "prefix-list-id": lambda g: [r["PrefixListId"] for r in rules(g)
                                              if r.get("PrefixListId")],
        prefix + "protocol": lambda g: [r["IpProtocol"] for r in rules(g)],
        prefix + "from-port": lambda g: [str(r["FromPort"]) for r in rules(g)],
        prefix + "to-port": lambda g: [str(r["ToPort"]) for r in rules(g)],
        prefix + "group-id": lambda g: [x for r in rules(g) for x in ref(r, "GroupId")],
        prefix + "group-name": lambda g: [names.get(x, "") for r in rules(g)
                                          for x in ref(r, "GroupId")],
        prefix + "user-id": lambda g: [x for r in rules(g) for x in ref(r, "UserId")],
    }


class SecurityGroupActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "CreateSecurityGroup": "create_security_group",
        "DeleteSecurityGroup": "delete_security_group",
        "DescribeSecurityGroups": "describe_security_groups",
        "AuthorizeSecurityGroupIngress": "authorize_security_group_ingress",
        "AuthorizeSecurityGroupEgress": "authorize_security_group_egress",
        "RevokeSecurityGroupIngress": "revoke_security_group_ingress",
        "RevokeSecurityGroupEgress": "revoke_security_group_egress",
        "DescribeSecurityGroupRules": "describe_security_group_rules",
        "ModifySecurityGroupRules": "modify_security_group_rules",
        "UpdateSecurityGroupRuleDescriptionsIngress":
            "update_security_group_rule_descriptions_ingress",
        "UpdateSecurityGroupRuleDescriptionsEgress":
            "update_security_group_rule_descriptions_egress",
    }

    # --- groups ------------------------------------------------------------------------

    def create_security_group(self, ctx: Context, p: Params) -> Result:
        tags = spec_tags(p.get("TagSpecifications"), "security-group")
        g = self.cloud.groups.create(self.scope(ctx), p.get("GroupName") or "",
                                     p.get("Description") or "", p.get("VpcId"), tags)
        return {"GroupId": g.id, "Tags": _tag_list(g.tags), "SecurityGroupArn": group_arn(g)}

    def delete_security_group(self, ctx: Context, p: Params) -> Result:
        g = self.cloud.groups.delete(self.scope(ctx), p.get("GroupId"), p.get("GroupName"))
        return {"Return": True, "GroupId": g.id}

    def describe_security_groups(self, ctx: Context, p: Params) -> Result:
        scope = self.scope(ctx)
        self.cloud.addressing.ensure_region(scope)  # its own unit: another region's defaults
        groups = self.cloud.groups.find(scope, p.get("GroupIds"), p.get("GroupNames"))
        names = {g.id: g.name for g in self.cloud.groups.in_region(scope)}
        table: dict[str, Extractor] = {
            "group-id": lambda g: [g.id],
            "group-name": lambda g: [g.name],
            "description": lambda g: [g.description],
            "vpc-id": lambda g: [g.vpc_id],
            "owner-id": lambda g: [g.owner_id],
            **_rule_filters("ip-permission.", False, names),
            **_rule_filters("egress.ip-permission.", True, names),
        }
        match = compile_filters(p.get("Filters"), table, lambda g: g.tags)
        page, token = Paginator("sg", 5, 1000).page(
            [g for g in groups if match(g)], lambda g: [g.id], p.get("MaxResults"),
            p.get("NextToken"))
        return {"SecurityGroups": [group_view(g) for g in page], "NextToken": token}

    # --- rules -------------------------------------------------------------------------

    def _permissions(self, p: Params, egress: bool) -> list[dict[str, Any]]:
        flat = [k for k in _FLAT if p.get(k) is not None]
        if flat and egress:
            raise ApiError("InvalidParameterValue",
                           f"The parameter '{flat[0]}' is not supported by "
                           f"AuthorizeSecurityGroupEgress; use IpPermissions.")
        if flat and p.get("IpPermissions"):
            raise ApiError("InvalidParameterCombination",
                           f"The parameter 'ipPermissions' may not be used in combination "
                           f"with '{flat[0]}'")
        if flat:
            return legacy_permissions(
                cidr_ip=p.get("CidrIp"), ip_protocol=p.get("IpProtocol"),
                from_port=p.get("FromPort"), to_port=p.get("ToPort"),
                source_group_name=p.get("SourceSecurityGroupName"),
                source_group_owner=p.get("SourceSecurityGroupOwnerId"))
        return list(p.get("IpPermissions") or [])

    def _authorize(self, ctx: Context, p: Params, egress: bool) -> Result:
        perms = self._permissions(p, egress)
        tags = spec_tags(p.get("TagSpecifications"), "security-group-rule")
        rules = self.cloud.groups.authorize(self.scope(ctx), p.get("GroupId"), perms,
                                            egress=egress, group_name=p.get("GroupName"),
                                            tags=tags)
        g = self.cloud.groups.lookup(self.scope(ctx), p.get("GroupId"), p.get("GroupName"))
        return {"Return": True, "SecurityGroupRules": [rule_view(g, r) for r in rules]}

    def authorize_security_group_ingress(self, ctx: Context, p: Params) -> Result:
        return self._authorize(ctx, p, False)

    def authorize_security_group_egress(self, ctx: Context, p: Params) -> Result:
        return self._authorize(ctx, p, True)

    def _revoke(self, ctx: Context, p: Params, egress: bool) -> Result:
        perms = self._permissions(p, egress)
        if perms and p.get("SecurityGroupRuleIds"):
            raise ApiError("InvalidParameterCombination",
                           "The parameter 'SecurityGroupRuleIds' may not be used in "
                           "combination with 'IpPermissions'")
        done = self.cloud.groups.revoke(self.scope(ctx), p.get("GroupId"), perms or None,
                                        egress=egress, rule_ids=p.get("SecurityGroupRuleIds"),
                                        group_name=p.get("GroupName"))
        return {"Return": True, "UnknownIpPermissions": done.unknown or None,
                "RevokedSecurityGroupRules": [revoked_view(done.group, r) for r in done.rules]}

    def revoke_security_group_ingress(self, ctx: Context, p: Params) -> Result:
        return self._revoke(ctx, p, False)

    def revoke_security_group_egress(self, ctx: Context, p: Params) -> Result:
        return self._revoke(ctx, p, True)

    def describe_security_group_rules(self, ctx: Context, p: Params) -> Result:
        self.cloud.addressing.ensure_region(self.scope(ctx))
        pairs = self.cloud.groups.rules(self.scope(ctx), p.get("SecurityGroupRuleIds"))
        table: dict[str, Extractor] = {
            "group-id": lambda gr: [gr[0].id],
            "security-group-rule-id": lambda gr: [gr[1]["SecurityGroupRuleId"]],
        }
        match = compile_filters(p.get("Filters"), table,
                                lambda gr: {t["Key"]: t["Value"] for t in gr[1].get("Tags") or []})
        page, token = Paginator("sgr", 5, 1000).page(
            [gr for gr in pairs if match(gr)], lambda gr: [gr[1]["SecurityGroupRuleId"]],
            p.get("MaxResults"), p.get("NextToken"))
        return {"SecurityGroupRules": [rule_view(g, r) for g, r in page], "NextToken": token}

    def modify_security_group_rules(self, ctx: Context, p: Params) -> Result:
        self.cloud.groups.modify_rules(self.scope(ctx), p["GroupId"],
                                       list(p.get("SecurityGroupRules") or []))
        return {"Return": True}

    def _update_descriptions(self, ctx: Context, p: Params, egress: bool) -> Result:
        perms = p.get("IpPermissions")
        by_id = {d.get("SecurityGroupRuleId"): d.get("Description")
                 for d in p.get("SecurityGroupRuleDescriptions") or []}
        if perms and by_id:
            raise ApiError("InvalidParameterCombination",
                           "The parameter 'SecurityGroupRuleDescriptions' may not be used in "
                           "combination with 'IpPermissions'")
        if not perms and not by_id:
            raise ApiError("MissingParameter",
                           "The request must contain the parameter ipPermissions or "
                           "securityGroupRuleDescriptions")
        self.cloud.groups.update_descriptions(self.scope(ctx), p.get("GroupId"), perms,
                                              egress=egress, group_name=p.get("GroupName"),
                                              by_rule_id=by_id)
        return {"Return": True}

    def update_security_group_rule_descriptions_ingress(self, ctx: Context, p: Params) -> Result:
        return self._update_descriptions(ctx, p, False)

    def update_security_group_rule_descriptions_egress(self, ctx: Context, p: Params) -> Result:
        return self._update_descriptions(ctx, p, True)
