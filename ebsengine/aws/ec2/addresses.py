"""Elastic IP actions (rules: ``ebsengine/cloud/addresses.py``)."""

from __future__ import annotations

from typing import ClassVar

from ebsengine.cloud.addressing import public_dns_name
from ebsengine.cloud.model import Address
from ebsengine.cloud.tags import spec_tags

from ..errors import ApiError
from ..store import Context
from .common import Actions, Extractor, Params, Result, _tag_list, compile_filters


def address_view(a: Address) -> Result:
    return {
        "PublicIp": a.public_ip, "AllocationId": a.id, "Domain": a.domain,
        "NetworkBorderGroup": a.network_border_group or a.region, "PublicIpv4Pool": "amazon",
        "AssociationId": a.association_id, "InstanceId": a.instance_id,
        "NetworkInterfaceId": a.network_interface_id,
        "NetworkInterfaceOwnerId": a.owner_id if a.network_interface_id else None,
        "PrivateIpAddress": a.private_ip, "Tags": _tag_list(a.tags),
    }


class AddressActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "AllocateAddress": "allocate_address",
        "ReleaseAddress": "release_address",
        "AssociateAddress": "associate_address",
        "DisassociateAddress": "disassociate_address",
        "DescribeAddresses": "describe_addresses",
        "DescribeAddressesAttribute": "describe_addresses_attribute",
    }

    _ADDRESS_FILTERS: ClassVar[dict[str, Extractor]] = {
        "public-ip": lambda a: [a.public_ip],
        "allocation-id": lambda a: [a.id],
        "association-id": lambda a: [a.association_id] if a.association_id else [],
        "instance-id": lambda a: [a.instance_id] if a.instance_id else [],
        "network-interface-id": lambda a: [a.network_interface_id] if a.network_interface_id
        else [],
        "network-interface-owner-id": lambda a: [a.owner_id] if a.network_interface_id else [],
        "private-ip-address": lambda a: [a.private_ip] if a.private_ip else [],
        "domain": lambda a: [a.domain],
        "network-border-group": lambda a: [a.network_border_group or a.region],
        "public-ipv4-pool": lambda a: ["amazon"],
    }

    def allocate_address(self, ctx: Context, p: Params) -> Result:
        if p.get("PublicIpv4Pool") not in (None, "amazon") or p.get("CustomerOwnedIpv4Pool") or \
                p.get("IpamPoolId"):
            raise ApiError("InvalidParameterValue", "Only Amazon's pool of addresses exists here.")
        tags = spec_tags(p.get("TagSpecifications"), "elastic-ip")
        a = self.cloud.eips.allocate(self.scope(ctx), address=p.get("Address"),
                                     domain=p.get("Domain") or "vpc",
                                     network_border_group=p.get("NetworkBorderGroup"), tags=tags)
        return {"PublicIp": a.public_ip, "AllocationId": a.id, "Domain": a.domain,
                "NetworkBorderGroup": a.network_border_group, "PublicIpv4Pool": "amazon"}

    def release_address(self, ctx: Context, p: Params) -> None:
        if p.get("NetworkBorderGroup") not in (None, "", ctx.region):
            raise ApiError("InvalidAddress.NotFound",
                           f"Network border group '{p['NetworkBorderGroup']}' has no such "
                           f"address.")
        self.cloud.eips.release(self.scope(ctx), p.get("AllocationId"), p.get("PublicIp"))

    def associate_address(self, ctx: Context, p: Params) -> Result:
        assoc = self.cloud.eips.associate(
            self.scope(ctx), p.get("AllocationId"), public_ip=p.get("PublicIp"),
            instance_id=p.get("InstanceId"), network_interface_id=p.get("NetworkInterfaceId"),
            private_ip=p.get("PrivateIpAddress"), allow_reassociation=p.get("AllowReassociation"))
        return {"AssociationId": assoc}

    def disassociate_address(self, ctx: Context, p: Params) -> None:
        self.cloud.eips.disassociate(self.scope(ctx), p.get("AssociationId"),
                                     public_ip=p.get("PublicIp"))

    def describe_addresses(self, ctx: Context, p: Params) -> Result:
        match = compile_filters(p.get("Filters"), self._ADDRESS_FILTERS, lambda a: a.tags)
        found = self.cloud.eips.describe(self.scope(ctx), public_ips=p.get("PublicIps"),
                                         allocation_ids=p.get("AllocationIds"))
        return {"Addresses": [address_view(a) for a in found if match(a)]}

    def describe_addresses_attribute(self, ctx: Context, p: Params) -> Result:
        """The reverse DNS (PTR) records: none is ever set here, so only named addresses are
        listed, with AWS's default name for the address."""
        if p.get("Attribute") not in (None, "domain-name"):
            raise ApiError("InvalidParameterValue",
                           f"Value ({p.get('Attribute')}) for parameter attribute is invalid.")
        ids = p.get("AllocationIds")
        found = self.cloud.eips.describe(self.scope(ctx), allocation_ids=ids) if ids else []
        return {"Addresses": [{"PublicIp": a.public_ip, "AllocationId": a.id,
                               "PtrRecord": public_dns_name(a.region, a.public_ip) + "."}
                              for a in found]}


__all__ = ["AddressActions", "address_view"]
