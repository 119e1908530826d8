"""VPC, subnet and network interface actions (rules: ``ebsengine/cloud/network.py``)."""

from __future__ import annotations

from typing import ClassVar

from ebsengine.cloud.addressing import available_ip_count, private_dns_name, public_dns_name
from ebsengine.cloud.model import Address, NetworkInterface, Subnet, Vpc
from ebsengine.cloud.scope import zone_id
from ebsengine.cloud.tags import spec_tags

from ..errors import ApiError
from ..store import Context
from .common import (
    Actions,
    Extractor,
    Paginator,
    Params,
    Result,
    _b,
    _tag_list,
    compile_filters,
)


def vpc_view(v: Vpc, state: str | None = None) -> Result:
    return {
        "VpcId": v.id, "CidrBlock": v.cidr_block, "State": state or v.state,
        "OwnerId": v.owner_id, "InstanceTenancy": v.instance_tenancy, "IsDefault": v.is_default,
        "DhcpOptionsId": v.dhcp_options_id,
        "CidrBlockAssociationSet": [{"AssociationId": v.cidr_association_id or None,
                                     "CidrBlock": v.cidr_block,
                                     "CidrBlockState": {"State": "associated"}}],
        "Tags": _tag_list(v.tags),
    }


def subnet_view(s: Subnet, available: int, state: str | None = None) -> Result:
    return {
        "SubnetId": s.id, "VpcId": s.vpc_id, "CidrBlock": s.cidr_block,
        "AvailabilityZone": s.availability_zone, "AvailabilityZoneId": zone_id(s.availability_zone),
        "AvailableIpAddressCount": available, "DefaultForAz": s.default_for_az,
        "MapPublicIpOnLaunch": s.map_public_ip_on_launch, "State": state or s.state,
        "OwnerId": s.owner_id, "AssignIpv6AddressOnCreation": False,
        "MapCustomerOwnedIpOnLaunch": False, "EnableDns64": False, "Ipv6Native": False,
        "Ipv6CidrBlockAssociationSet": [],
        "SubnetArn": f"arn:aws:ec2:{s.region}:{s.owner_id}:subnet/{s.id}",
        "PrivateDnsNameOptionsOnLaunch": {"HostnameType": "ip-name",
                                          "EnableResourceNameDnsARecord": False,
                                          "EnableResourceNameDnsAAAARecord": False},
        "Tags": _tag_list(s.tags),
    }


def public_of(e: NetworkInterface, eip: Address | None) -> Result | None:
    """The interface's Association: its Elastic IP, else its auto-assigned address."""
    if eip is not None:
        return {"PublicIp": eip.public_ip, "PublicDnsName": public_dns_name(e.region, eip.public_ip),
                "IpOwnerId": eip.owner_id, "AllocationId": eip.id,
                "AssociationId": eip.association_id}
    if e.public_ip:
        return {"PublicIp": e.public_ip, "PublicDnsName": public_dns_name(e.region, e.public_ip),
                "IpOwnerId": "amazon"}
    return None


def interface_view(e: NetworkInterface, groups: dict[str, str], eip: Address | None) -> Result:
    att = e.attachment
    assoc = public_of(e, eip)
    dns = private_dns_name(e.region, e.private_ip)
    return {
        "NetworkInterfaceId": e.id, "SubnetId": e.subnet_id, "VpcId": e.vpc_id,
        "AvailabilityZone": e.availability_zone, "Description": e.description,
        "OwnerId": e.owner_id, "RequesterManaged": False,
        "Status": "in-use" if att else "available", "MacAddress": e.mac_address,
        "PrivateIpAddress": e.private_ip, "PrivateDnsName": dns,
        "SourceDestCheck": e.source_dest_check, "InterfaceType": e.interface_type,
        "Groups": [{"GroupId": g, "GroupName": groups.get(g, "")} for g in e.security_group_ids],
        "Attachment": None if att is None else {
            "AttachmentId": att.get("attachment_id"), "InstanceId": att.get("instance_id"),
            "InstanceOwnerId": e.owner_id, "DeviceIndex": att.get("device_index"),
            "NetworkCardIndex": 0, "Status": "attached", "AttachTime": att.get("attach_time"),
            "DeleteOnTermination": bool(att.get("delete_on_termination", False))},
        "Association": assoc,
        "PrivateIpAddresses": [{"Primary": True, "PrivateIpAddress": e.private_ip,
                                "PrivateDnsName": dns, "Association": assoc}],
        "Ipv6Addresses": [], "Ipv4Prefixes": None, "Ipv6Prefixes": None,
        "TagSet": _tag_list(e.tags),
    }


def _bool_param(p: Params, name: str) -> bool | None:
    v = p.get(name)
    return None if v is None else bool(v.get("Value"))


class NetworkActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "CreateVpc": "create_vpc",
        "DeleteVpc": "delete_vpc",
        "DescribeVpcs": "describe_vpcs",
        "DescribeVpcAttribute": "describe_vpc_attribute",
        "ModifyVpcAttribute": "modify_vpc_attribute",
        "CreateSubnet": "create_subnet",
        "DeleteSubnet": "delete_subnet",
        "DescribeSubnets": "describe_subnets",
        "ModifySubnetAttribute": "modify_subnet_attribute",
        "CreateNetworkInterface": "create_network_interface",
        "DeleteNetworkInterface": "delete_network_interface",
        "DescribeNetworkInterfaces": "describe_network_interfaces",
        "AttachNetworkInterface": "attach_network_interface",
        "DetachNetworkInterface": "detach_network_interface",
    }

    # --- VPCs --------------------------------------------------------------------------

    _VPC_FILTERS: ClassVar[dict[str, Extractor]] = {
        "vpc-id": lambda v: [v.id],
        "cidr": lambda v: [v.cidr_block],
        "cidr-block-association.cidr-block": lambda v: [v.cidr_block],
        "cidr-block-association.association-id": lambda v: [v.cidr_association_id],
        "cidr-block-association.state": lambda v: ["associated"],
        "is-default": lambda v: [_b(v.is_default)],
        "state": lambda v: [v.state],
        "owner-id": lambda v: [v.owner_id],
        "dhcp-options-id": lambda v: [v.dhcp_options_id],
        "instance-tenancy": lambda v: [v.instance_tenancy],
    }

    def create_vpc(self, ctx: Context, p: Params) -> Result:
        if p.get("Ipv4IpamPoolId") or p.get("AmazonProvidedIpv6CidrBlock") or \
                p.get("Ipv6CidrBlock") or p.get("Ipv6Pool"):
            raise ApiError("InvalidParameterCombination",
                           "IPAM pools and IPv6 blocks are not supported here.")
        tags = spec_tags(p.get("TagSpecifications"), "vpc")
        vpc = self.cloud.network.create_vpc(self.scope(ctx), p.get("CidrBlock") or "", tags=tags,
                                            instance_tenancy=p.get("InstanceTenancy") or "default")
        return {"Vpc": vpc_view(vpc, state="pending")}

    def delete_vpc(self, ctx: Context, p: Params) -> None:
        self.cloud.network.delete_vpc(self.scope(ctx), p["VpcId"])

    def describe_vpcs(self, ctx: Context, p: Params) -> Result:
        match = compile_filters(p.get("Filters"), self._VPC_FILTERS, lambda v: v.tags)
        vpcs = [v for v in self.cloud.network.vpcs(self.scope(ctx), p.get("VpcIds")) if match(v)]
        page, token = Paginator("vpcs", 5, 1000).page(
            vpcs, lambda v: [v.id], p.get("MaxResults"), p.get("NextToken"))
        return {"Vpcs": [vpc_view(v) for v in page], "NextToken": token}

    def describe_vpc_attribute(self, ctx: Context, p: Params) -> Result:
        attr = p["Attribute"]
        value = self.cloud.network.vpc_attribute(self.scope(ctx), p["VpcId"], attr)
        key = {"enableDnsSupport": "EnableDnsSupport", "enableDnsHostnames": "EnableDnsHostnames",
               "enableNetworkAddressUsageMetrics": "EnableNetworkAddressUsageMetrics"}[attr]
        return {"VpcId": p["VpcId"], key: {"Value": value}}

    def modify_vpc_attribute(self, ctx: Context, p: Params) -> None:
        if p.get("EnableNetworkAddressUsageMetrics") is not None:
            raise ApiError("InvalidParameterValue",
                           "enableNetworkAddressUsageMetrics is not supported here.")
        self.cloud.network.modify_vpc_attribute(
            self.scope(ctx), p["VpcId"], enable_dns_support=_bool_param(p, "EnableDnsSupport"),
            enable_dns_hostnames=_bool_param(p, "EnableDnsHostnames"))

    # --- subnets -----------------------------------------------------------------------

    _SUBNET_FILTERS: ClassVar[dict[str, Extractor]] = {
        "subnet-id": lambda s: [s.id],
        "vpc-id": lambda s: [s.vpc_id],
        "availability-zone": lambda s: [s.availability_zone],
        "availabilityZone": lambda s: [s.availability_zone],  # AWS's documented aliases
        "availability-zone-id": lambda s: [zone_id(s.availability_zone)],
        "availabilityZoneId": lambda s: [zone_id(s.availability_zone)],
        "cidr-block": lambda s: [s.cidr_block],
        "cidr": lambda s: [s.cidr_block],
        "cidrBlock": lambda s: [s.cidr_block],
        "default-for-az": lambda s: [_b(s.default_for_az)],
        "defaultForAz": lambda s: [_b(s.default_for_az)],
        "map-public-ip-on-launch": lambda s: [_b(s.map_public_ip_on_launch)],
        "state": lambda s: [s.state],
        "owner-id": lambda s: [s.owner_id],
        "subnet-arn": lambda s: [f"arn:aws:ec2:{s.region}:{s.owner_id}:subnet/{s.id}"],
    }

    def create_subnet(self, ctx: Context, p: Params) -> Result:
        if p.get("Ipv6CidrBlock") or p.get("Ipv6Native") or p.get("Ipv4IpamPoolId") or \
                p.get("OutpostArn"):
            raise ApiError("InvalidParameterCombination",
                           "IPv6, IPAM pools and Outposts are not supported here.")
        if not p.get("CidrBlock"):
            raise ApiError("MissingParameter", "The request must contain the parameter cidrBlock")
        tags = spec_tags(p.get("TagSpecifications"), "subnet")
        net = self.cloud.network
        sub = net.create_subnet(self.scope(ctx), p["VpcId"], p["CidrBlock"],
                                zone=p.get("AvailabilityZone"), zone_id=p.get("AvailabilityZoneId"),
                                tags=tags)
        return {"Subnet": subnet_view(sub, net.available_ips(sub), state="pending")}

    def delete_subnet(self, ctx: Context, p: Params) -> None:
        self.cloud.network.delete_subnet(self.scope(ctx), p["SubnetId"])

    def describe_subnets(self, ctx: Context, p: Params) -> Result:
        net = self.cloud.network
        used: dict[str, int] = {}
        for e in self.cloud.network_interfaces.in_region(ctx.region):
            used[e.subnet_id] = used.get(e.subnet_id, 0) + 1

        def available(s: Subnet) -> int:
            return available_ip_count(s, used.get(s.id, 0))

        table = {**self._SUBNET_FILTERS,
                 "available-ip-address-count": lambda s: [str(available(s))]}
        match = compile_filters(p.get("Filters"), table, lambda s: s.tags)
        subs = [s for s in net.subnets(self.scope(ctx), p.get("SubnetIds")) if match(s)]
        page, token = Paginator("subnets", 5, 1000).page(
            subs, lambda s: [s.id], p.get("MaxResults"), p.get("NextToken"))
        return {"Subnets": [subnet_view(s, available(s)) for s in page], "NextToken": token}

    def modify_subnet_attribute(self, ctx: Context, p: Params) -> None:
        others = [k for k in p if k not in ("SubnetId", "MapPublicIpOnLaunch")]
        if others:
            raise ApiError("InvalidParameterValue",
                           f"Only MapPublicIpOnLaunch can be modified here (got {others[0]}).")
        self.cloud.network.modify_subnet(self.scope(ctx), p["SubnetId"],
                                         map_public_ip_on_launch=_bool_param(
                                             p, "MapPublicIpOnLaunch"))

    # --- network interfaces ------------------------------------------------------------

    @staticmethod
    def _eni_filters(eips: dict[str, Address]) -> dict[str, Extractor]:
        def public(e: NetworkInterface) -> list[str]:
            a = eips.get(e.id)
            ip = a.public_ip if a is not None else e.public_ip
            return [ip] if ip else []

        def att(key: str) -> Extractor:
            return lambda e: [] if e.attachment is None else [str(e.attachment.get(key))]

        return {
            "network-interface-id": lambda e: [e.id],
            "subnet-id": lambda e: [e.subnet_id],
            "vpc-id": lambda e: [e.vpc_id],
            "availability-zone": lambda e: [e.availability_zone],
            "private-ip-address": lambda e: [e.private_ip],
            "addresses.private-ip-address": lambda e: [e.private_ip],
            "private-dns-name": lambda e: [private_dns_name(e.region, e.private_ip)],
            "mac-address": lambda e: [e.mac_address],
            "description": lambda e: [e.description],
            "owner-id": lambda e: [e.owner_id],
            "status": lambda e: ["in-use" if e.attachment else "available"],
            "interface-type": lambda e: [e.interface_type],
            "source-dest-check": lambda e: [_b(e.source_dest_check)],
            "requester-managed": lambda e: ["false"],
            "group-id": lambda e: list(e.security_group_ids),
            "attachment.instance-id": att("instance_id"),
            "attachment.device-index": att("device_index"),
            "attachment.attachment-id": att("attachment_id"),
            "attachment.status": lambda e: ["attached"] if e.attachment else [],
            "attachment.delete-on-termination": lambda e: [] if e.attachment is None else
            [_b(bool(e.attachment.get("delete_on_termination")))],
            "association.public-ip": public,
            "addresses.association.public-ip": public,
            "association.allocation-id": lambda e: [eips[e.id].id] if e.id in eips else [],
            "association.association-id": lambda e: [str(eips[e.id].association_id)]
            if e.id in eips else [],
        }

    def create_network_interface(self, ctx: Context, p: Params) -> Result:
        unsupported = [k for k in ("Ipv6Addresses", "Ipv6AddressCount", "Ipv4Prefixes",
                                   "Ipv4PrefixCount", "Ipv6Prefixes", "Ipv6PrefixCount",
                                   "SecondaryPrivateIpAddressCount") if p.get(k)]
        if unsupported:
            raise ApiError("InvalidParameterValue",
                           f"{unsupported[0]} is not supported here (one primary IPv4 "
                           f"address per interface).")
        ip = p.get("PrivateIpAddress")
        extra = p.get("PrivateIpAddresses") or []
        if len(extra) > 1 or any(not x.get("Primary", True) for x in extra):
            raise ApiError("InvalidParameterValue",
                           "Secondary private IP addresses are not supported here.")
        if extra:
            given = extra[0].get("PrivateIpAddress")
            if ip and given and given != ip:
                raise ApiError("InvalidParameterCombination",
                               "PrivateIpAddress and the primary of PrivateIpAddresses differ.")
            ip = ip or given
        if p.get("InterfaceType") not in (None, "interface"):
            raise ApiError("InvalidParameterValue",
                           f"Value ({p.get('InterfaceType')}) for parameter interfaceType is "
                           f"not supported here.")
        tags = spec_tags(p.get("TagSpecifications"), "network-interface")
        scope = self.scope(ctx)
        eni = self.cloud.network.create_interface(
            scope, p["SubnetId"], private_ip=ip, groups=p.get("Groups"),
            description=p.get("Description") or "", tags=tags, client_token=p.get("ClientToken"))
        data = self.cloud.network.interface_view_data(scope)
        return {"NetworkInterface": interface_view(eni, data["groups"], data["eips"].get(eni.id)),
                "ClientToken": p.get("ClientToken")}

    def delete_network_interface(self, ctx: Context, p: Params) -> None:
        self.cloud.network.delete_interface(self.scope(ctx), p["NetworkInterfaceId"])

    def describe_network_interfaces(self, ctx: Context, p: Params) -> Result:
        scope = self.scope(ctx)
        net = self.cloud.network
        ids = p.get("NetworkInterfaceIds")
        if ids and p.get("MaxResults") is not None:
            raise ApiError("InvalidParameterCombination",
                           "The parameter NetworkInterfaceIds cannot be used with the "
                           "parameter maxResults")
        data = net.interface_view_data(scope)
        match = compile_filters(p.get("Filters"), self._eni_filters(data["eips"]),
                                lambda e: e.tags)
        enis = [e for e in net.interfaces(scope, ids) if match(e)]
        page, token = Paginator("enis", 5, 1000).page(
            enis, lambda e: [e.id], p.get("MaxResults"), p.get("NextToken"))
        return {"NetworkInterfaces": [interface_view(e, data["groups"], data["eips"].get(e.id))
                                      for e in page], "NextToken": token}

    def attach_network_interface(self, ctx: Context, p: Params) -> Result:
        if p.get("NetworkCardIndex") not in (None, 0):
            raise ApiError("InvalidParameterValue",
                           "Only network card index 0 exists here.")
        att = self.cloud.network.attach_interface(self.scope(ctx), p["NetworkInterfaceId"],
                                                  p["InstanceId"], p["DeviceIndex"])
        return {"AttachmentId": att, "NetworkCardIndex": 0}

    def detach_network_interface(self, ctx: Context, p: Params) -> None:
        self.cloud.network.detach_interface(self.scope(ctx), p["AttachmentId"],
                                            force=bool(p.get("Force", False)))


__all__ = ["NetworkActions", "interface_view", "public_of", "subnet_view", "vpc_view"]
