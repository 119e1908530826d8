"""Each region's default network, and the addresses handed out in it.

A region's default VPC (``172.31.0.0/16``), one default subnet per zone (``/20`` each, public
IPs assigned on launch) and the VPC's default security group are made the first time
anything in the region asks for them, in the asking unit of work, and a marker record
(``ec2.region``) remembers it: a default VPC the user deletes does not come back.

Private IPs come from a subnet's CIDR, skipping what AWS reserves (the first four addresses
and the last one) and every address an interface of the subnet holds: allocation reads the
subnet's interfaces inside the unit that takes the address, so two launches cannot get the
same one. Public IPs (auto-assigned ones and Elastic IPs alike) come from one pool,
``CloudConfig.public_pool`` (default ``198.18.0.0/15``, the RFC 2544 benchmarking range:
never routed on the internet, so an address handed out here cannot be mistaken for a real
host), unique across every region of the store.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import TYPE_CHECKING, Any

from ebsengine import errors
from ebsengine.engine import Transaction
from ebsengine.rules import new_id

from .model import Address, NetworkInterface, SecurityGroup, Subnet, Vpc
from .scope import DEFAULT_ACCOUNT, Scope, zones

if TYPE_CHECKING:
    from .core import Cloud

NS_REGION = "ec2.region"
#: public IPs an account released (``{"owner_id", "region"}`` keyed by the address): an
#: AllocateAddress with ``Address`` may recover one while nobody holds it
NS_RELEASED = "ec2.eip-released"
DEFAULT_VPC_CIDR = "172.31.0.0/16"


def all_traffic_rule(direction: str) -> dict[str, Any]:
    """The rule every new group starts with outbound: all protocols to 0.0.0.0/0."""
    return {"SecurityGroupRuleId": new_id("sgr"), "IsEgress": direction == "egress",
            "IpProtocol": "-1", "FromPort": -1, "ToPort": -1, "CidrIpv4": "0.0.0.0/0"}


def default_group(scope: Scope, vpc_id: str) -> SecurityGroup:
    """A VPC's ``default`` group: inbound from members of itself, outbound everywhere."""
    gid = new_id("sg")
    self_rule = {"SecurityGroupRuleId": new_id("sgr"), "IsEgress": False, "IpProtocol": "-1",
                 "FromPort": -1, "ToPort": -1,
                 "ReferencedGroupInfo": {"GroupId": gid, "UserId": scope.account_id}}
    return SecurityGroup(id=gid, region=scope.region, owner_id=scope.account_id, vpc_id=vpc_id,
                         name="default", description="default VPC security group",
                         ingress=[self_rule], egress=[all_traffic_rule("egress")])


class Addressing:
    """Default networks and address allocation (private per subnet, public per store)."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    # default network

    def ensure_region(self, scope: Scope, tx: Transaction | None = None) -> None:
        """Make the account's default VPC, subnets and group of the region if it never had
        them (each account has its own, as on AWS)."""
        eng = self.cloud.engine
        key = scope.region if scope.account_id == DEFAULT_ACCOUNT \
            else f"{scope.region}@{scope.account_id}"
        if eng.service_get(NS_REGION, key, tx=tx) is not None:
            return
        if tx is None:
            with eng.transaction() as own:
                self.ensure_region(scope, own)
            return
        c = self.cloud
        vpc = Vpc(id=new_id("vpc"), region=scope.region, owner_id=scope.account_id,
                  cidr_block=DEFAULT_VPC_CIDR, is_default=True,
                  cidr_association_id=new_id("vpc-cidr-assoc"), enable_dns_hostnames=True)
        c.vpcs.put(vpc, tx=tx)
        net = ipaddress.ip_network(DEFAULT_VPC_CIDR)
        for zone, cidr in zip(zones(scope.region), net.subnets(new_prefix=20), strict=False):
            c.subnets.put(Subnet(id=new_id("subnet"), region=scope.region,
                                 owner_id=scope.account_id, vpc_id=vpc.id, cidr_block=str(cidr),
                                 availability_zone=zone, default_for_az=True,
                                 map_public_ip_on_launch=True), tx=tx)
        c.security_groups.put(default_group(scope, vpc.id), tx=tx)
        eng.service_put(NS_REGION, key, {"default_vpc": vpc.id}, tx=tx)

    def default_vpc(self, scope: Scope, tx: Transaction | None = None) -> Vpc | None:
        self.ensure_region(scope, tx)
        for v in self.cloud.vpcs.in_region(scope.region, tx=tx):
            if v.is_default and v.owner_id == scope.account_id:
                return v
        return None

    def default_subnet(self, scope: Scope, zone: str | None,
                       tx: Transaction | None = None) -> Subnet | None:
        """The default subnet of ``zone`` (of the first zone that has one when None)."""
        self.ensure_region(scope, tx)
        subs = sorted((s for s in self.cloud.subnets.in_region(scope.region, tx=tx)
                       if s.default_for_az and s.owner_id == scope.account_id),
                      key=lambda s: s.availability_zone)
        for s in subs:
            if zone is None or s.availability_zone == zone:
                return s
        return None

    # addresses

    def private_ips_in_use(self, subnet_id: str, tx: Transaction | None = None) -> set[str]:
        return {e.private_ip for e in self.cloud.network_interfaces.all(tx=tx)
                if e.subnet_id == subnet_id}

    def allocate_private_ip(self, subnet: Subnet, tx: Transaction,
                            wanted: str | None = None, taken: set[str] | None = None) -> str:
        """A free private address of ``subnet`` (``wanted`` if given and free).

        ``taken``: addresses already promised in this unit but not yet written."""
        net = ipaddress.ip_network(subnet.cidr_block)
        used = self.private_ips_in_use(subnet.id, tx) | (taken or set())
        reserved = {str(net.network_address + i) for i in range(4)} | {str(net.broadcast_address)}
        if wanted is not None:
            try:
                addr = ipaddress.ip_address(wanted)
            except ValueError:
                raise errors.Ec2Error("InvalidParameterValue",
                                      f"Invalid private IP address: {wanted}") from None
            if addr not in net or str(addr) in reserved:
                raise errors.Ec2Error("InvalidParameterValue",
                                      f"Address {wanted} does not fall within the subnet's "
                                      f"address range")
            if str(addr) in used:
                raise errors.Ec2Error("InvalidIPAddress.InUse",
                                      f"Address {wanted} is in use.")
            return str(addr)
        for i in range(4, net.num_addresses - 1):
            cand = str(net.network_address + i)
            if cand not in used:
                return cand
        raise errors.Ec2Error("InsufficientFreeAddressesInSubnet",
                              f"Insufficient free IP addresses in subnet {subnet.id}.")

    def free_private_ips(self, subnet: Subnet, tx: Transaction, limit: int) -> list[str]:
        """Up to ``limit`` free private addresses of ``subnet``, lowest first (one read of
        the interfaces, however many are wanted: a launch of many instances takes them
        all at once). AWS reserves the first four and the last."""
        return _free(subnet.cidr_block, 4, self.private_ips_in_use(subnet.id, tx), limit)

    def free_public_ips(self, tx: Transaction, limit: int) -> list[str]:
        """Up to ``limit`` free addresses of the public pool, lowest first (one read)."""
        return _free(self.cloud.config.public_pool, 1, self.public_ips_in_use(tx), limit)

    def public_ips_in_use(self, tx: Transaction | None = None) -> set[str]:
        c = self.cloud
        used = {a.public_ip for a in c.addresses.all(tx=tx)}
        used |= {e.public_ip for e in c.network_interfaces.all(tx=tx) if e.public_ip}
        return used

    def allocate_public_ip(self, tx: Transaction, taken: set[str] | None = None) -> str:
        """A free address of the public pool (lowest first: predictable in tests)."""
        net = ipaddress.ip_network(self.cloud.config.public_pool)
        used = self.public_ips_in_use(tx) | (taken or set())
        for i in range(1, net.num_addresses - 1):
            cand = str(net.network_address + i)
            if cand not in used:
                return cand
        raise errors.Ec2Error("AddressLimitExceeded",
                              "The public address pool is exhausted "
                              f"({self.cloud.config.public_pool}).")


def reserved_count() -> int:
    """Addresses AWS keeps in every subnet: network, router, DNS, future use, broadcast."""
    return 5


def available_ip_count(subnet: Subnet, in_use: int) -> int:
    return max(0, ipaddress.ip_network(subnet.cidr_block).num_addresses - reserved_count()
               - in_use)


def private_dns_name(region: str, ip: str) -> str:
    """``ip-10-0-0-5.ec2.internal`` (us-east-1) / ``ip-10-0-0-5.<region>.compute.internal``."""
    host = "ip-" + ip.replace(".", "-")
    return f"{host}.ec2.internal" if region == "us-east-1" else \
        f"{host}.{region}.compute.internal"


def public_dns_name(region: str, ip: str) -> str:
    """``ec2-198-18-0-1.compute-1.amazonaws.com`` (us-east-1) or ``...<region>.compute...``."""
    host = "ec2-" + ip.replace(".", "-")
    return f"{host}.compute-1.amazonaws.com" if region == "us-east-1" else \
        f"{host}.{region}.compute.amazonaws.com"


def _free(cidr: str, first: int, used: set[str], limit: int) -> list[str]:
    """Up to ``limit`` addresses of ``cidr`` not in ``used``, lowest first, from the
    ``first``-th address to the one before the last (the broadcast address)."""
    net = ipaddress.ip_network(cidr)
    out: list[str] = []
    for i in range(first, net.num_addresses - 1):
        if len(out) >= limit:
            break
        cand = str(net.network_address + i)
        if cand not in used:
            out.append(cand)
    return out


def mac_address() -> str:
    """A locally administered unicast MAC, as EC2's look (``0e:..``)."""
    return "0e:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def new_interface(scope: Scope, subnet: Subnet, private_ip: str, groups: list[str],
                  description: str = "") -> NetworkInterface:
    return NetworkInterface(id=new_id("eni"), region=scope.region, owner_id=scope.account_id,
                            subnet_id=subnet.id, vpc_id=subnet.vpc_id,
                            availability_zone=subnet.availability_zone, private_ip=private_ip,
                            mac_address=mac_address(), description=description,
                            security_group_ids=list(groups))


__all__ = ["NS_RELEASED", "Address", "Addressing", "all_traffic_rule", "available_ip_count",
           "default_group", "mac_address", "new_interface", "private_dns_name",
           "public_dns_name"]
