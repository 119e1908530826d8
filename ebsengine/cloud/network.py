"""VPCs, subnets and network interfaces: only as deep as instances and Elastic IPs need.

A VPC has one IPv4 CIDR (``/16`` .. ``/28``) and a ``default`` security group made with it;
a subnet is a CIDR inside its VPC's, in one zone, overlapping no other subnet of the VPC;
an interface (ENI) lives in a subnet with one private IP taken from the subnet's free
addresses (:mod:`.addressing`: never two interfaces on one address) and may be attached to
an instance of its zone (``Instance.network_interface_ids``, primary first, and the ENI's
``attachment`` change in one unit of work). Deletions refuse while something depends on
the resource (``DependencyViolation``, ``InvalidNetworkInterface.InUse``); a VPC's default
group goes with it.

Every change is one unit of work: validation reads inside the unit that writes, so a
refused request changes nothing and two concurrent requests cannot both take the last
address or device index.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any, TypeVar

from ebsengine import errors
from ebsengine.engine import Transaction
from ebsengine.rules import check_tags, is_aws_id, new_id
from ebsengine.rules import tokens as token_rules

from .addressing import available_ip_count, default_group, new_interface
from .model import Instance, NetworkInterface, Subnet, Vpc
from .scope import Scope, zone_of, zones
from .tables import CloudRecord, Table

if TYPE_CHECKING:
    from .core import Cloud

R = TypeVar("R", bound=CloudRecord)

#: the id codes of each kind: ``<code>.Malformed`` / ``<code>.NotFound``
CODES = {"vpc": "InvalidVpcID", "subnet": "InvalidSubnetID",
         "eni": "InvalidNetworkInterfaceID", "i": "InvalidInstanceID"}
WHAT = {"vpc": "vpc ID", "subnet": "subnet ID", "eni": "network interface ID",
        "i": "instance ID"}

_ATTACH_ID = re.compile(r"^eni-attach-(?:[0-9a-f]{8}|[0-9a-f]{17})$")

#: the largest and smallest IPv4 blocks of a VPC or subnet
MIN_PREFIX, MAX_PREFIX = 16, 28


def lookup(table: Table[R], scope: Scope, rid: str, prefix: str,
           tx: Transaction | None = None) -> R:
    """The record ``rid`` of the scope's account and region: ``*.Malformed`` for an id AWS
    could not have issued, ``*.NotFound`` for one that is not there."""
    code = CODES[prefix]
    if not is_aws_id(rid, prefix):
        raise errors.Ec2Error(f"{code}.Malformed", f'Invalid id: "{rid}"')
    rec = table.get(rid, tx=tx)
    if rec is None or rec.region != scope.region or rec.owner_id != scope.account_id:
        raise errors.Ec2Error(f"{code}.NotFound", f"The {WHAT[prefix]} '{rid}' does not exist")
    return rec


def parse_cidr(cidr: str | None, range_code: str) -> ipaddress.IPv4Network:
    """An IPv4 block of /16 .. /28 in canonical form (``InvalidParameterValue`` for one that
    is not a CIDR block, ``range_code`` for one outside the size range)."""
    if not cidr:
        raise errors.Ec2Error("MissingParameter",
                              "The request must contain the parameter cidrBlock")
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise errors.Ec2Error("InvalidParameterValue",
                              f"Value ({cidr}) for parameter cidrBlock is invalid. This is not "
                              f"a valid CIDR block.") from None
    if not isinstance(net, ipaddress.IPv4Network) or "/" not in cidr:
        raise errors.Ec2Error("InvalidParameterValue",
                              f"Value ({cidr}) for parameter cidrBlock is invalid. This is not "
                              f"a valid CIDR block.")
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise errors.Ec2Error(range_code, f"The CIDR '{cidr}' is invalid.")
    return net


class Network:
    """VPCs, subnets and network interfaces (the library API of their EC2 actions)."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    # --- lookups -----------------------------------------------------------------------

    def vpc(self, scope: Scope, vpc_id: str, tx: Transaction | None = None) -> Vpc:
        return lookup(self.cloud.vpcs, scope, vpc_id, "vpc", tx)

    def subnet(self, scope: Scope, subnet_id: str, tx: Transaction | None = None) -> Subnet:
        return lookup(self.cloud.subnets, scope, subnet_id, "subnet", tx)

    def interface(self, scope: Scope, eni_id: str,
                  tx: Transaction | None = None) -> NetworkInterface:
        return lookup(self.cloud.network_interfaces, scope, eni_id, "eni", tx)

    def instance(self, scope: Scope, instance_id: str,
                 tx: Transaction | None = None) -> Instance:
        return lookup(self.cloud.instance_table, scope, instance_id, "i", tx)

    def _mine(self, table: Table[R], scope: Scope, ids: list[str] | None, prefix: str) -> list[R]:
        """The scope's records of ``table`` in id order, or those of ``ids`` (each must
        exist). Makes the region's default network first (in a unit of its own)."""
        self.cloud.addressing.ensure_region(scope)
        if ids:
            found = {rid: lookup(table, scope, rid, prefix) for rid in ids}
            return sorted(found.values(), key=lambda r: r.id)
        return [r for r in table.in_region(scope.region) if r.owner_id == scope.account_id]

    def vpcs(self, scope: Scope, ids: list[str] | None = None) -> list[Vpc]:
        return self._mine(self.cloud.vpcs, scope, ids, "vpc")

    def subnets(self, scope: Scope, ids: list[str] | None = None) -> list[Subnet]:
        return self._mine(self.cloud.subnets, scope, ids, "subnet")

    def interfaces(self, scope: Scope, ids: list[str] | None = None) -> list[NetworkInterface]:
        return self._mine(self.cloud.network_interfaces, scope, ids, "eni")

    def available_ips(self, subnet: Subnet, tx: Transaction | None = None) -> int:
        """AvailableIpAddressCount: the subnet's addresses less AWS's five and those taken."""
        return available_ip_count(subnet,
                                  len(self.cloud.addressing.private_ips_in_use(subnet.id, tx)))

    # --- VPCs --------------------------------------------------------------------------

    def create_vpc(self, scope: Scope, cidr_block: str, *, tags: dict[str, str] | None = None,
                   instance_tenancy: str = "default") -> Vpc:
        """A VPC and its ``default`` security group, in one unit."""
        net = parse_cidr(cidr_block, "InvalidVpc.Range")
        if instance_tenancy not in ("default", "dedicated"):
            raise errors.Ec2Error("InvalidParameterValue",
                                  f"Value ({instance_tenancy}) for parameter instanceTenancy is "
                                  f"invalid.")
        c = self.cloud
        vpc = Vpc(id=new_id("vpc"), region=scope.region, owner_id=scope.account_id,
                  cidr_block=str(net), instance_tenancy=instance_tenancy,
                  tags=check_tags(dict(tags or {})),
                  cidr_association_id=new_id("vpc-cidr-assoc"))
        with c.engine.transaction() as tx:
            c.addressing.ensure_region(scope, tx)
            c.vpcs.put(vpc, tx=tx)
            c.security_groups.put(default_group(scope, vpc.id), tx=tx)
        return vpc

    def delete_vpc(self, scope: Scope, vpc_id: str) -> None:
        """Delete a VPC and its default group; ``DependencyViolation`` while it has subnets,
        interfaces or other groups."""
        c = self.cloud
        with c.engine.transaction() as tx:
            vpc = self.vpc(scope, vpc_id, tx)
            blockers = [s.id for s in c.subnets.all(tx=tx) if s.vpc_id == vpc.id]
            blockers += [e.id for e in c.network_interfaces.all(tx=tx) if e.vpc_id == vpc.id]
            groups = [g for g in c.security_groups.all(tx=tx) if g.vpc_id == vpc.id]
            blockers += [g.id for g in groups if g.name != "default"]
            if blockers:
                raise errors.Ec2Error("DependencyViolation",
                                      f"The vpc '{vpc.id}' has dependencies and cannot be "
                                      f"deleted.")
            for g in groups:
                c.security_groups.delete(g.id, tx=tx)
            c.vpcs.delete(vpc.id, tx=tx)

    def vpc_attribute(self, scope: Scope, vpc_id: str, attribute: str) -> bool:
        """``enableDnsSupport`` or ``enableDnsHostnames`` of a VPC."""
        vpc = self.vpc(scope, vpc_id)
        if attribute == "enableDnsSupport":
            return vpc.enable_dns_support
        if attribute == "enableDnsHostnames":
            return vpc.enable_dns_hostnames
        if attribute == "enableNetworkAddressUsageMetrics":
            return False
        raise errors.Ec2Error("InvalidParameterValue",
                              f"Value ({attribute}) for parameter attribute is invalid.")

    def modify_vpc_attribute(self, scope: Scope, vpc_id: str, *,
                             enable_dns_support: bool | None = None,
                             enable_dns_hostnames: bool | None = None) -> Vpc:
        """One attribute per call, as AWS; DNS hostnames need DNS support."""
        given = [v for v in (enable_dns_support, enable_dns_hostnames) if v is not None]
        if len(given) != 1:
            raise errors.Ec2Error("InvalidParameterCombination",
                                  "Exactly one attribute may be modified per request.")
        c = self.cloud
        with c.engine.transaction() as tx:
            vpc = self.vpc(scope, vpc_id, tx)
            new = vpc.but(**({"enable_dns_support": enable_dns_support}
                             if enable_dns_support is not None
                             else {"enable_dns_hostnames": enable_dns_hostnames}))
            if new.enable_dns_hostnames and not new.enable_dns_support:
                raise errors.Ec2Error("InvalidParameterValue",
                                      "DNS hostnames require DNS support to be enabled "
                                      "(enableDnsSupport).")
            c.vpcs.put(new, tx=tx)
        return new

    # --- subnets -----------------------------------------------------------------------

    def create_subnet(self, scope: Scope, vpc_id: str, cidr_block: str, *,
                      zone: str | None = None, zone_id: str | None = None,
                      tags: dict[str, str] | None = None) -> Subnet:
        """A subnet of ``vpc_id``: its CIDR inside the VPC's (``InvalidSubnet.Range``),
        overlapping no other subnet (``InvalidSubnet.Conflict``); the zone defaults to the
        region's first."""
        net = parse_cidr(cidr_block, "InvalidSubnet.Range")
        az = zone_of(scope, zone, zone_id) or zones(scope.region)[0]
        c = self.cloud
        with c.engine.transaction() as tx:
            vpc = self.vpc(scope, vpc_id, tx)
            vnet = ipaddress.ip_network(vpc.cidr_block)
            if not net.subnet_of(vnet):  # type: ignore[arg-type]
                raise errors.Ec2Error("InvalidSubnet.Range",
                                      f"The CIDR '{cidr_block}' is invalid.")
            for s in c.subnets.all(tx=tx):
                if s.vpc_id == vpc.id and net.overlaps(ipaddress.ip_network(s.cidr_block)):
                    raise errors.Ec2Error("InvalidSubnet.Conflict",
                                          f"The CIDR '{cidr_block}' conflicts with another "
                                          f"subnet")
            sub = Subnet(id=new_id("subnet"), region=scope.region, owner_id=scope.account_id,
                         vpc_id=vpc.id, cidr_block=str(net), availability_zone=az,
                         tags=check_tags(dict(tags or {})))
            c.subnets.put(sub, tx=tx)
        return sub

    def delete_subnet(self, scope: Scope, subnet_id: str) -> None:
        c = self.cloud
        with c.engine.transaction() as tx:
            sub = self.subnet(scope, subnet_id, tx)
            if any(e.subnet_id == sub.id for e in c.network_interfaces.all(tx=tx)):
                raise errors.Ec2Error("DependencyViolation",
                                      f"The subnet '{sub.id}' has dependencies and cannot be "
                                      f"deleted.")
            c.subnets.delete(sub.id, tx=tx)

    def modify_subnet(self, scope: Scope, subnet_id: str, *,
                      map_public_ip_on_launch: bool | None = None) -> Subnet:
        c = self.cloud
        with c.engine.transaction() as tx:
            sub = self.subnet(scope, subnet_id, tx)
            if map_public_ip_on_launch is not None:
                sub = c.subnets.put(sub.but(map_public_ip_on_launch=map_public_ip_on_launch),
                                    tx=tx)
        return sub

    # --- network interfaces ------------------------------------------------------------

    def create_interface(self, scope: Scope, subnet_id: str, *, private_ip: str | None = None,
                         groups: list[str] | None = None, description: str = "",
                         tags: dict[str, str] | None = None,
                         client_token: str | None = None) -> NetworkInterface:
        """An interface in ``subnet_id`` with ``private_ip`` (else the lowest free address;
        ``InsufficientFreeAddressesInSubnet`` when none is left) and ``groups`` (default:
        the VPC's default group; each must be a group of that VPC)."""
        c = self.cloud
        token = token_rules.check_client_token(client_token)
        digest = token_rules.request_digest({"SubnetId": subnet_id, "PrivateIpAddress": private_ip,
                                             "Groups": groups, "Description": description,
                                             "Tags": tags})
        with c.engine.transaction() as tx:
            if token is not None:
                prev = c.tokens.previous(scope, "CreateNetworkInterface", token, digest,
                                         tx=tx)
                done = c.network_interfaces.get(prev, tx=tx) if prev else None
                if done is not None:
                    return done
            sub = self.subnet(scope, subnet_id, tx)
            gids = self._groups(scope, sub.vpc_id, groups, tx)
            ip = c.addressing.allocate_private_ip(sub, tx, wanted=private_ip)
            eni = new_interface(scope, sub, ip, gids, description).but(
                tags=check_tags(dict(tags or {})))
            c.network_interfaces.put(eni, tx=tx)
            if token is not None:
                c.tokens.put(tx, scope, "CreateNetworkInterface", token, digest, eni.id)
        return eni

    def _groups(self, scope: Scope, vpc_id: str, groups: list[str] | None,
                tx: Transaction) -> list[str]:
        found = {g.id: g for g in self.cloud.security_groups.all(tx=tx)
                 if g.vpc_id == vpc_id and g.region == scope.region}
        if not groups:
            return [g.id for g in found.values() if g.name == "default"][:1]
        for gid in groups:
            if not is_aws_id(gid, "sg"):
                raise errors.Ec2Error("InvalidGroupId.Malformed", f'Invalid id: "{gid}"')
            if gid not in found:
                raise errors.Ec2Error("InvalidGroup.NotFound",
                                      f"The security group '{gid}' does not exist in VPC "
                                      f"'{vpc_id}'")
        return list(dict.fromkeys(groups))

    def delete_interface(self, scope: Scope, eni_id: str) -> None:
        """Delete a detached interface (``InvalidNetworkInterface.InUse`` while attached);
        an Elastic IP on it is disassociated and stays allocated."""
        c = self.cloud
        with c.engine.transaction() as tx:
            eni = self.interface(scope, eni_id, tx)
            if eni.attachment is not None:
                raise errors.Ec2Error("InvalidNetworkInterface.InUse",
                                      f"Interface: [{eni.id}] in use.")
            for a in c.addresses.all(tx=tx):
                if a.network_interface_id == eni.id:
                    c.addresses.put(a.but(association_id=None, instance_id=None,
                                          network_interface_id=None, private_ip=None,
                                          ended_association_id=a.association_id), tx=tx)
            c.network_interfaces.delete(eni.id, tx=tx)
            c.tokens.drop(tx, eni.id)

    def attach_interface(self, scope: Scope, eni_id: str, instance_id: str,
                         device_index: int) -> str:
        """Attach an available interface to a running or stopped instance of its zone and
        VPC at a free device index; returns the attachment id (``eni-attach-...``)."""
        c = self.cloud
        if isinstance(device_index, bool) or not isinstance(device_index, int) or \
                device_index < 0:
            raise errors.Ec2Error("InvalidParameterValue",
                                  f"Value ({device_index}) for parameter deviceIndex is invalid.")
        with c.engine.transaction() as tx:
            eni = self.interface(scope, eni_id, tx)
            inst = self.instance(scope, instance_id, tx)
            state = c.instances.settled(inst).state
            if state not in ("running", "stopped"):
                raise errors.Ec2Error("IncorrectInstanceState",
                                      f"The instance '{inst.id}' is not in a valid state for "
                                      f"this operation.")
            if eni.attachment is not None:
                raise errors.Ec2Error("InvalidNetworkInterface.InUse",
                                      f"Interface: [{eni.id}] in use.")
            if eni.availability_zone != inst.availability_zone:
                raise errors.Ec2Error("InvalidParameterCombination",
                                      "You may not attach a network interface to an instance "
                                      "if they are not in the same availability zone")
            if inst.vpc_id and eni.vpc_id != inst.vpc_id:
                raise errors.Ec2Error("InvalidParameterValue",
                                      f"The network interface '{eni.id}' and the instance "
                                      f"'{inst.id}' belong to different networks.")
            taken = {int((o.attachment or {}).get("device_index", -1))
                     for o in (c.network_interfaces.get(x, tx=tx)
                               for x in inst.network_interface_ids) if o is not None}
            if device_index in taken:
                raise errors.Ec2Error("InvalidParameterValue",
                                      f"Instance '{inst.id}' already has an interface attached "
                                      f"at device index '{device_index}'.")
            att_id = new_id("eni-attach")
            att = {"instance_id": inst.id, "device_index": device_index,
                   "attachment_id": att_id, "delete_on_termination": False,
                   "attach_time": c.now()}
            c.network_interfaces.put(eni.but(attachment=att), tx=tx)
            c.instance_table.put(inst.but(
                network_interface_ids=[*inst.network_interface_ids, eni.id]), tx=tx)
            for a in c.addresses.all(tx=tx):  # an Elastic IP on the interface follows it
                if a.network_interface_id == eni.id:
                    c.addresses.put(a.but(instance_id=inst.id), tx=tx)
        return att_id

    def detach_interface(self, scope: Scope, attachment_id: str, force: bool = False) -> None:
        """Detach a secondary interface (the primary, device index 0, stays:
        ``OperationNotPermitted``)."""
        c = self.cloud
        if not isinstance(attachment_id, str) or not _ATTACH_ID.match(attachment_id):
            raise errors.Ec2Error("InvalidAttachmentID.Malformed", f'Invalid id: "{attachment_id}"')
        with c.engine.transaction() as tx:
            eni = next((e for e in c.network_interfaces.in_region(scope.region, tx=tx)
                        if e.owner_id == scope.account_id
                        and (e.attachment or {}).get("attachment_id") == attachment_id), None)
            if eni is None or eni.attachment is None:
                raise errors.Ec2Error("InvalidAttachmentID.NotFound",
                                      f"The attachment ID '{attachment_id}' does not exist")
            if int(eni.attachment.get("device_index", 0)) == 0:
                raise errors.Ec2Error("OperationNotPermitted",
                                      "The network interface at device index 0 cannot be "
                                      "detached.")
            iid = str(eni.attachment.get("instance_id"))
            inst = c.instance_table.get(iid, tx=tx)
            if inst is not None:
                c.instance_table.put(inst.but(network_interface_ids=[
                    x for x in inst.network_interface_ids if x != eni.id]), tx=tx)
            c.network_interfaces.put(eni.but(attachment=None), tx=tx)
            for a in c.addresses.all(tx=tx):
                if a.network_interface_id == eni.id:
                    c.addresses.put(a.but(instance_id=None), tx=tx)

    def interface_view_data(self, scope: Scope) -> dict[str, Any]:
        """What rendering interfaces needs besides them: ``{"groups": {id: name},
        "eips": {eni id: Address}}`` (one read of each table)."""
        c = self.cloud
        return {"groups": {g.id: g.name for g in c.security_groups.in_region(scope.region)},
                "eips": {a.network_interface_id: a for a in c.addresses.in_region(scope.region)
                         if a.network_interface_id}}


__all__ = ["Network", "lookup", "parse_cidr", "zone_of"]
