"""Elastic IPs: allocation from the public pool, association with an interface, release.

An :class:`~.model.Address` (``eipalloc-...``) holds a public IP of the store's pool
(``CloudConfig.public_pool``, shared with auto-assigned addresses: :mod:`.addressing`), at
most ``CloudConfig.address_quota`` per account and region. While associated it names the
interface (and the private IP of it) it is mapped to, the instance that interface is
attached to, and its association id (``eipassoc-...``); an interface holds at most one
Elastic IP, and while it does its auto-assigned public IP is back in the pool
(``NetworkInterface.public_ip`` None). When the Elastic IP leaves an interface whose
instance is running and that gets AWS public IPs (``auto_public_ip``), the interface gets a
new auto-assigned address (AWS: "within minutes"; here in the same unit of work).

A released address is remembered (``ec2.eip-released``): ``AllocateAddress(Address=...)``
recovers it for the same account and region while no one else holds it.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from ebsengine import errors
from ebsengine.engine import Transaction
from ebsengine.rules import check_tags, is_aws_id, new_id

from .addressing import NS_RELEASED
from .model import Address, NetworkInterface
from .network import lookup
from .scope import Scope

if TYPE_CHECKING:
    from .core import Cloud


class Addresses:
    """Elastic IPs (the library API of AllocateAddress and its family)."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    # --- lookups -----------------------------------------------------------------------

    def get(self, scope: Scope, allocation_id: str, tx: Transaction | None = None) -> Address:
        if not is_aws_id(allocation_id, "eipalloc"):
            raise errors.Ec2Error("InvalidAllocationID.Malformed",
                                  f'Invalid id: "{allocation_id}"')
        a = self.cloud.addresses.get(allocation_id, tx=tx)
        if a is None or a.region != scope.region or a.owner_id != scope.account_id:
            raise errors.Ec2Error("InvalidAllocationID.NotFound",
                                  f"The allocation ID '{allocation_id}' does not exist")
        return a

    def by_public_ip(self, scope: Scope, public_ip: str,
                     tx: Transaction | None = None) -> Address:
        for a in self.mine(scope, tx):
            if a.public_ip == public_ip:
                return a
        raise errors.Ec2Error("InvalidAddress.NotFound", f"Address '{public_ip}' not found.")

    def mine(self, scope: Scope, tx: Transaction | None = None) -> list[Address]:
        return [a for a in self.cloud.addresses.in_region(scope.region, tx=tx)
                if a.owner_id == scope.account_id]

    def describe(self, scope: Scope, public_ips: list[str] | None = None,
                 allocation_ids: list[str] | None = None) -> list[Address]:
        """The scope's Elastic IPs, or those named (each must exist), by public IP."""
        out = self.mine(scope)
        if allocation_ids:
            want = {self.get(scope, aid).id for aid in allocation_ids}
            out = [a for a in out if a.id in want]
        if public_ips:
            want = {self.by_public_ip(scope, ip).id for ip in public_ips}
            out = [a for a in out if a.id in want]
        return sorted(out, key=lambda a: ipaddress.ip_address(a.public_ip))

    def for_interface(self, eni_id: str, tx: Transaction | None = None) -> Address | None:
        """The Elastic IP associated with an interface, if any."""
        for a in self.cloud.addresses.all(tx=tx):
            if a.network_interface_id == eni_id:
                return a
        return None

    # --- allocate / release ------------------------------------------------------------

    def allocate(self, scope: Scope, *, address: str | None = None, domain: str = "vpc",
                 network_border_group: str | None = None,
                 tags: dict[str, str] | None = None) -> Address:
        """A new Elastic IP (``address``: recover one this account released in this region,
        while it is free; else ``InvalidAddress.NotFound``)."""
        if domain not in ("vpc", "standard"):
            raise errors.Ec2Error("InvalidParameterValue",
                                  f"Value ({domain}) for parameter domain is invalid.")
        if domain == "standard":
            raise errors.Ec2Error("InvalidParameterValue",
                                  "EC2-Classic is retired: only the vpc domain is available.")
        if network_border_group not in (None, "", scope.region):
            raise errors.Ec2Error("InvalidParameterValue",
                                  f"Network border group '{network_border_group}' is not valid "
                                  f"in this region.")
        if address is not None:
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise errors.Ec2Error("InvalidParameterValue",
                                      f"Invalid IPv4 address: {address}") from None
        new_tags = check_tags(dict(tags or {}))
        c = self.cloud
        with c.engine.transaction() as tx:
            if len(self.mine(scope, tx)) >= c.config.address_quota:
                raise errors.Ec2Error("AddressLimitExceeded",
                                      "The maximum number of addresses has been reached.")
            if address is not None:
                rec = c.engine.service_get(NS_RELEASED, address, tx=tx)
                mine = rec is not None and rec.get("owner_id") == scope.account_id and \
                    rec.get("region") == scope.region
                if not mine or address in c.addressing.public_ips_in_use(tx):
                    raise errors.Ec2Error("InvalidAddress.NotFound",
                                          f"Address '{address}' not found.")
                ip = address
                c.engine.service_put(NS_RELEASED, address, None, tx=tx)
            else:
                ip = c.addressing.allocate_public_ip(tx)
            addr = Address(id=new_id("eipalloc"), region=scope.region,
                           owner_id=scope.account_id, public_ip=ip, domain="vpc",
                           network_border_group=scope.region, tags=new_tags,
                           allocation_time=c.now())
            c.addresses.put(addr, tx=tx)
        return addr

    def release(self, scope: Scope, allocation_id: str | None = None,
                public_ip: str | None = None) -> None:
        """Give an Elastic IP back. In a default VPC an association ends with it; elsewhere
        an associated address is ``InvalidIPAddress.InUse``."""
        c = self.cloud
        with c.engine.transaction() as tx:
            addr = self._find(scope, allocation_id, public_ip, tx)
            if addr.network_interface_id is not None:
                eni = c.network_interfaces.get(addr.network_interface_id, tx=tx)
                vpc = c.vpcs.get(eni.vpc_id, tx=tx) if eni is not None else None
                if vpc is not None and not vpc.is_default:
                    raise errors.Ec2Error("InvalidIPAddress.InUse",
                                          f"Address '{addr.public_ip}' is in use.")
                self._unhook(addr, tx)
            c.addresses.delete(addr.id, tx=tx)
            c.engine.service_put(NS_RELEASED, addr.public_ip,
                                 {"owner_id": scope.account_id, "region": scope.region}, tx=tx)

    def _find(self, scope: Scope, allocation_id: str | None, public_ip: str | None,
              tx: Transaction) -> Address:
        if allocation_id:
            return self.get(scope, allocation_id, tx)
        if public_ip:
            return self.by_public_ip(scope, public_ip, tx)
        raise errors.Ec2Error("MissingParameter",
                              "The request must contain the parameter AllocationId")

    # --- associate / disassociate ------------------------------------------------------

    def associate(self, scope: Scope, allocation_id: str | None = None, *,
                  public_ip: str | None = None, instance_id: str | None = None,
                  network_interface_id: str | None = None, private_ip: str | None = None,
                  allow_reassociation: bool | None = None) -> str:
        """Map an Elastic IP to an interface (``instance_id``: its primary interface);
        returns the association id.

        An address associated elsewhere moves silently unless ``allow_reassociation`` is
        False (``Resource.AlreadyAssociated``); an Elastic IP already on the target is
        disassociated (it stays allocated); the target's auto-assigned public IP goes back
        to the pool. Associating again with the same target keeps the association."""
        if not instance_id and not network_interface_id:
            raise errors.Ec2Error("MissingParameter",
                                  "Either an instance ID or a network interface ID must be "
                                  "specified.")
        c = self.cloud
        net = c.network
        with c.engine.transaction() as tx:
            addr = self._find(scope, allocation_id, public_ip, tx)
            eni = self._target(scope, instance_id, network_interface_id, tx)
            ip = private_ip or eni.private_ip
            if ip != eni.private_ip:
                raise errors.Ec2Error("InvalidParameterValue",
                                      f"The private IP address {ip} is not associated with the "
                                      f"network interface {eni.id}.")
            if addr.network_interface_id == eni.id and addr.association_id:
                return addr.association_id  # already there: idempotent
            if addr.network_interface_id is not None:
                if allow_reassociation is False:
                    raise errors.Ec2Error("Resource.AlreadyAssociated",
                                          f"resource {addr.id} is already associated with "
                                          f"associate-id {addr.association_id}")
                addr = self._unhook(addr, tx)
            other = self.for_interface(eni.id, tx)
            if other is not None:  # the target's previous Elastic IP: stays allocated
                self._unhook(other, tx, reassign=False)
            eni = net.interface(scope, eni.id, tx)  # as _unhook may have left it
            assoc = new_id("eipassoc")
            c.network_interfaces.put(eni.but(public_ip=None), tx=tx)
            c.addresses.put(addr.but(
                association_id=assoc, network_interface_id=eni.id, private_ip=ip,
                instance_id=(eni.attachment or {}).get("instance_id")), tx=tx)
        return assoc

    def _target(self, scope: Scope, instance_id: str | None, eni_id: str | None,
                tx: Transaction) -> NetworkInterface:
        c = self.cloud
        if instance_id:
            inst = lookup(c.instance_table, scope, instance_id, "i", tx)
            if c.instances.settled(inst).state in ("shutting-down", "terminated"):
                raise errors.Ec2Error("IncorrectInstanceState",
                                      f"The instance '{inst.id}' is not in a valid state for "
                                      f"this operation.")
            if not inst.network_interface_ids:
                raise errors.Ec2Error("IncorrectInstanceState",
                                      f"The instance '{inst.id}' has no network interface.")
            if eni_id and eni_id not in inst.network_interface_ids:
                raise errors.Ec2Error("InvalidParameterCombination",
                                      f"The network interface '{eni_id}' is not attached to "
                                      f"instance '{inst.id}'.")
            return c.network.interface(scope, eni_id or inst.network_interface_ids[0], tx)
        assert eni_id is not None
        return c.network.interface(scope, eni_id, tx)

    def disassociate(self, scope: Scope, association_id: str | None = None, *,
                     public_ip: str | None = None) -> None:
        """End an association (again with the id that just ended: nothing to do)."""
        c = self.cloud
        with c.engine.transaction() as tx:
            mine = self.mine(scope, tx)
            if association_id:
                addr = next((a for a in mine if association_id in
                             (a.association_id, a.ended_association_id)), None)
                if addr is None:
                    raise errors.Ec2Error("InvalidAssociationID.NotFound",
                                          f"The association ID '{association_id}' does not "
                                          f"exist")
            elif public_ip:
                addr = self.by_public_ip(scope, public_ip, tx)
            else:
                raise errors.Ec2Error("MissingParameter",
                                      "The request must contain the parameter AssociationId")
            if addr.association_id is not None and \
                    (association_id is None or addr.association_id == association_id):
                self._unhook(addr, tx)

    def _unhook(self, addr: Address, tx: Transaction, reassign: bool = True) -> Address:
        """End ``addr``'s association in ``tx``; the interface it leaves gets a new
        auto-assigned public IP when it takes them and its instance runs (``reassign``)."""
        c = self.cloud
        free = addr.but(association_id=None, instance_id=None, network_interface_id=None,
                        private_ip=None, ended_association_id=addr.association_id)
        c.addresses.put(free, tx=tx)
        eni = c.network_interfaces.get(addr.network_interface_id or "", tx=tx)
        if reassign and eni is not None and eni.auto_public_ip and eni.public_ip is None:
            inst = c.instance_table.get((eni.attachment or {}).get("instance_id", ""), tx=tx)
            if inst is not None and c.instances.settled(inst).state == "running":
                c.network_interfaces.put(
                    eni.but(public_ip=c.addressing.allocate_public_ip(tx)), tx=tx)
        return free


__all__ = ["Addresses"]
