"""EC2 instances: launch, the state machine, attachments, and point-in-time images.

An instance is an :class:`~.model.Instance` record plus what it owns: engine volumes
attached at its devices (the root one made from the AMI's snapshot in O(1)), one primary
:class:`~.model.NetworkInterface` with its private (and auto-assigned public) address.
Every change that touches several of these is ONE engine unit of work (RunInstances,
TerminateInstances, attach/detach, CreateImage, CreateSnapshots): a crash leaves all of it
or none of it, and :func:`~.check.check_cloud` holds after any of them.

States (AWS's codes): ``pending(0) -> running(16)``, ``stopping(64) -> stopped(80)``,
``shutting-down(32) -> terminated(48)``. A record stores its state and when it was entered;
a transient state matures on the cloud's clock after ``CloudConfig.boot_seconds`` /
``stop_seconds`` / ``terminate_seconds`` (0: the next read sees it settled). Reads compute
the settled state without writing (:meth:`Instances.settled`); every write stores it.
Everything a transition does to other resources (volumes deleted or detached, interfaces
deleted, public addresses released or given) happens in the request that starts it, so
maturing never touches anything but the state. A terminated instance stays visible
``terminated_visible_seconds`` after it settled, then is gone (``InvalidInstanceID.NotFound``)
and its record is swept by the next launch or termination.
"""

from __future__ import annotations

import contextlib
import math
import time as _time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ebsengine import errors
from ebsengine.engine import Staged, Transaction
from ebsengine.rules import check_device_name, check_image_name, check_tags, is_aws_id, new_id
from ebsengine.rules import tokens as token_rules

from .addressing import new_interface, private_dns_name, public_dns_name
from .instance_types import instance_type as lookup_type
from .model import Image, Instance, NetworkInterface, SecurityGroup, Subnet
from .scope import (
    Scope,
    check_zone,
    put_snapshot_region,
    put_volume_owner,
    region_of_zone,
    snapshot_usable_by,
    volume_owner,
)
from .tags import spec_tags

if TYPE_CHECKING:
    from .core import Cloud

STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48,
               "stopping": 64, "stopped": 80}
#: transient state -> (settled state, the CloudConfig field giving its duration)
_MATURES = {"pending": ("running", "boot_seconds"), "stopping": ("stopped", "stop_seconds"),
            "shutting-down": ("terminated", "terminate_seconds")}
USER_SHUTDOWN = {"Code": "Client.UserInitiatedShutdown",
                 "Message": "Client.UserInitiatedShutdown: User initiated shutdown"}
#: action name of RunInstances' ClientToken records
RUN_ACTION = "RunInstances"
#: terminated instances by the time they vanish: ``<epoch, 12 digits>|<instance id>`` ->
#: reservation id (read from its head by :meth:`Instances.sweep`)
NS_EXPIRY = "ec2.instance-expiry"
#: reservation id -> the ids of its instances still on record (ClientToken replays, sweep)
NS_RESERVATION = "ec2.reservation"
#: namespaces of a volume's AWS records, dropped with the volume (see aws/store.py)
_VOLUME_NAMESPACES = ("aws.volmod", "aws.volume")


def gmt(t: float) -> str:
    """``2025-01-15 09:30:00 GMT``: the time format of AWS's state transition reasons."""
    return _time.strftime("%Y-%m-%d %H:%M:%S GMT", _time.gmtime(t))


def public_dns(ip: str | None, region: str) -> str:
    """An instance's public DNS name ("" without a public IP)."""
    return public_dns_name(region, ip) if ip else ""


def private_dns(ip: str | None, region: str) -> str:
    """An instance's private DNS name ("" without a private IP)."""
    return private_dns_name(region, ip) if ip else ""


@dataclass(frozen=True)
class Transition:
    """One instance's answer to Start/Stop/Terminate: ``(id, previous, current)`` states."""

    instance_id: str
    previous: str
    current: str


@dataclass(frozen=True)
class Attachment:
    """A volume's attachment as AttachVolume/DetachVolume answer it."""

    volume_id: str
    instance_id: str
    device: str
    attach_time: float
    delete_on_termination: bool


def _not_found(ids: list[str]) -> errors.Ec2Error:
    if len(ids) == 1:
        return errors.Ec2Error("InvalidInstanceID.NotFound",
                               f"The instance ID '{ids[0]}' does not exist")
    return errors.Ec2Error("InvalidInstanceID.NotFound",
                           f"The instance IDs '{', '.join(ids)}' do not exist")


def check_instance_id(iid: object) -> str:
    if not is_aws_id(iid, "i"):
        raise errors.Ec2Error("InvalidInstanceID.Malformed", f'Invalid id: "{iid}"')
    return str(iid)


class _Count(Exception):
    """Ends the rolled-back unit of :meth:`Instances._launch_count`."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.n = n


def _take(staged: dict[str, list[Staged]], snapshot_id: str | None) -> Staged | None:
    """One of the copies staged for ``snapshot_id``, if any is left."""
    copies = staged.get(snapshot_id or "")
    return copies.pop() if copies else None


class Instances:
    """The library API of EC2 instances (one method per action family)."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    # --- states ---------------------------------------------------------------------------

    def settled(self, inst: Instance, now: float | None = None) -> Instance:
        """``inst`` with every transient state matured on the clock (nothing written)."""
        t = self.cloud.now() if now is None else now
        while inst.state in _MATURES:
            nxt, knob = _MATURES[inst.state]
            due = inst.state_time + float(getattr(self.cloud.config, knob))
            if t < due:
                break
            inst = inst.but(state=nxt, state_time=due)
        return inst

    def gone(self, inst: Instance, now: float | None = None) -> bool:
        """True once a terminated instance is past ``terminated_visible_seconds``."""
        t = self.cloud.now() if now is None else now
        s = self.settled(inst, t)
        return s.state == "terminated" and \
            t >= s.state_time + self.cloud.config.terminated_visible_seconds

    def _visible(self, scope: Scope, iid: str, tx: Transaction | None) -> Instance | None:
        inst = self.cloud.instance_table.get(iid, tx=tx)
        if inst is None or inst.region != scope.region or inst.owner_id != scope.account_id:
            return None
        if self.gone(inst):
            return None
        return self.settled(inst)

    def get(self, scope: Scope, instance_id: str, tx: Transaction | None = None) -> Instance:
        """The instance (settled state), else ``InvalidInstanceID.Malformed``/``NotFound``."""
        iid = check_instance_id(instance_id)
        inst = self._visible(scope, iid, tx)
        if inst is None:
            raise _not_found([iid])
        return inst

    def _many(self, scope: Scope, ids: Iterable[str], tx: Transaction | None) -> list[Instance]:
        """Every instance of ``ids`` (one bad id fails the call), in request order, no repeats."""
        wanted = list(dict.fromkeys(check_instance_id(i) for i in ids))
        if not wanted:
            raise errors.Ec2Error("MissingParameter",
                                  "The request must contain the parameter InstanceId")
        found = {i: self._visible(scope, i, tx) for i in wanted}
        missing = [i for i, v in found.items() if v is None]
        if missing:
            raise _not_found(missing)
        return [v for v in found.values() if v is not None]

    def describe(self, scope: Scope, instance_ids: Iterable[str] | None = None) -> list[Instance]:
        """Instances of the scope (settled), by launch time then id; ``instance_ids``: just
        those (all must exist)."""
        if instance_ids:
            out = self._many(scope, instance_ids, None)
        else:
            now = self.cloud.now()
            out = [self.settled(i, now) for i in self.cloud.instance_table.in_region(scope.region)
                   if i.owner_id == scope.account_id and not self.gone(i, now)]
        return sorted(out, key=lambda i: (i.launch_time, i.ami_launch_index, i.id))

    def _put(self, inst: Instance, tx: Transaction) -> Instance:
        return self.cloud.instance_table.put(self.settled(inst), tx=tx)

    def sweep(self, tx: Transaction, limit: int = 16) -> int:
        """Delete up to ``limit`` records of instances gone from view, oldest first (and
        their reservation's tokens once none of it is left); returns how many.

        Reads only the head of the expiry index (``ec2.instance-expiry``, written by
        terminate), so a launch or terminate costs the same however many terminated
        instances are still visible."""
        c = self.cloud
        eng = c.engine
        now = c.now()
        n = 0
        for key, rid in eng.service_items(NS_EXPIRY, limit=limit, tx=tx):
            if int(key.split("|", 1)[0]) > now:
                break
            iid = key.split("|", 1)[1]
            inst = c.instance_table.get(iid, tx=tx)
            if inst is not None and not self.gone(inst, now):
                break  # keys are whole seconds (rounded down): this one is due within 1 s
            eng.service_put(NS_EXPIRY, key, None, tx=tx)
            if inst is None:
                continue
            c.instance_table.delete(iid, tx=tx)
            left = [x for x in eng.service_get(NS_RESERVATION, rid, tx=tx) or [] if x != iid]
            eng.service_put(NS_RESERVATION, rid, left or None, tx=tx)
            if not left:
                c.tokens.drop(tx, rid)
            n += 1
        return n

    # --- lookups of what a launch names ---------------------------------------------------

    def image(self, scope: Scope, image_id: object, tx: Transaction | None = None) -> Image:
        """A launchable image (the rule is the AMI manager's: visible to the account and
        ``available``): ``InvalidAMIID.Malformed``/``NotFound``/``Unavailable`` otherwise."""
        if not is_aws_id(image_id, "ami"):
            raise errors.Ec2Error("InvalidAMIID.Malformed", f'Invalid id: "{image_id}" '
                                  f'(expecting "ami-...")')
        return self.cloud.images.launchable(scope, str(image_id), tx)

    def _subnet(self, scope: Scope, subnet_id: str | None, zone: str | None,
                tx: Transaction) -> Subnet:
        c = self.cloud
        if subnet_id:
            sub = c.subnets.get(subnet_id, tx=tx) if is_aws_id(subnet_id, "subnet") else None
            if sub is None or sub.region != scope.region or sub.owner_id != scope.account_id:
                raise errors.Ec2Error("InvalidSubnetID.NotFound",
                                      f"The subnet ID '{subnet_id}' does not exist")
            if zone and sub.availability_zone != zone:
                raise errors.Ec2Error("InvalidParameterValue",
                                      f"Subnet {subnet_id} is not in availability zone {zone}.")
            return sub
        if zone:
            check_zone(scope, zone)
        found = c.addressing.default_subnet(scope, zone, tx)
        if found is None:
            raise errors.Ec2Error("MissingInput" if zone is None else "InvalidParameterValue",
                                  "No default subnet for availability zone: "
                                  f"'{zone or scope.region}'. Specify a subnet.")
        return found

    def _groups(self, scope: Scope, subnet: Subnet, ids: list[str], names: list[str],
                tx: Transaction) -> list[SecurityGroup]:
        c = self.cloud
        in_vpc = [g for g in c.security_groups.in_region(scope.region, tx=tx)
                  if g.vpc_id == subnet.vpc_id]
        out: list[SecurityGroup] = []
        for gid in ids:
            g = next((g for g in in_vpc if g.id == gid), None)
            if g is None:
                raise errors.Ec2Error("InvalidGroup.NotFound",
                                      f"The security group '{gid}' does not exist in VPC "
                                      f"'{subnet.vpc_id}'")
            out.append(g)
        if names:
            vpc = c.vpcs.get(subnet.vpc_id, tx=tx)
            if vpc is None or not vpc.is_default:
                raise errors.Ec2Error("InvalidParameterCombination",
                                      "The parameter groupName cannot be used with the "
                                      "parameter subnet")
            for name in names:
                g = next((g for g in in_vpc if g.name == name), None)
                if g is None:
                    raise errors.Ec2Error("InvalidGroup.NotFound",
                                          f"The security group '{name}' does not exist in "
                                          f"default VPC '{subnet.vpc_id}'")
                out.append(g)
        if not out:
            g = next((g for g in in_vpc if g.name == "default"), None)
            if g is None:
                raise errors.Ec2Error("InvalidGroup.NotFound",
                                      f"The VPC '{subnet.vpc_id}' has no default security group")
            out.append(g)
        return list({g.id: g for g in out}.values())

    def _key(self, scope: Scope, name: str | None, tx: Transaction) -> str | None:
        if name is None:
            return None
        if self.cloud.keypairs.find(scope, name, tx) is not None:
            return name
        raise errors.Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{name}' does not exist")

    def _devices(self, scope: Scope, img: Image, overrides: list[dict[str, Any]] | None,
                 tx: Transaction | None) -> list[dict[str, Any]]:
        """The EBS volumes to make: the AMI's mappings, overridden per DeviceName by the
        request's (``NoDevice`` removes one, new names add volumes). Each plan:
        ``{"device", "snapshot_id", "size", "type", "iops", "throughput", "encrypted",
        "kms_key_id", "delete_on_termination"}``, root first."""
        by_dev: dict[str, dict[str, Any]] = {}
        for m in img.block_device_mappings:
            if m.get("DeviceName"):
                by_dev[m["DeviceName"]] = {"DeviceName": m["DeviceName"],
                                           **({"Ebs": dict(m["Ebs"])} if m.get("Ebs") else {}),
                                           **({"NoDevice": ""} if "NoDevice" in m else {}),
                                           **({"VirtualName": m["VirtualName"]}
                                              if m.get("VirtualName") else {})}
        added: set[str] = set()
        for o in overrides or []:
            dev = check_device_name(o.get("DeviceName"))
            if "NoDevice" in o:
                if dev == img.root_device_name:
                    raise errors.Ec2Error("InvalidBlockDeviceMapping",
                                          f"The device mapping for the root device {dev} "
                                          f"cannot be removed")
                by_dev.pop(dev, None)
                continue
            if o.get("VirtualName"):
                by_dev[dev] = {"DeviceName": dev, "VirtualName": o["VirtualName"]}
                continue
            ebs = {k: v for k, v in (o.get("Ebs") or {}).items() if v is not None}
            if dev not in by_dev or "Ebs" not in by_dev[dev]:
                added.add(dev)
                by_dev[dev] = {"DeviceName": dev, "Ebs": ebs}
            else:
                if ebs.get("SnapshotId") and ebs["SnapshotId"] != \
                        by_dev[dev]["Ebs"].get("SnapshotId"):
                    raise errors.Ec2Error("InvalidBlockDeviceMapping",
                                          f"The snapshot of the AMI's device {dev} cannot be "
                                          f"replaced")
                base = dict(by_dev[dev]["Ebs"])
                if ebs.get("VolumeType") not in (None, base.get("VolumeType")):
                    base.pop("Iops", None)  # the AMI's figures belong to its volume type
                    base.pop("Throughput", None)
                by_dev[dev] = {"DeviceName": dev, "Ebs": {**base, **ebs}}
        if img.root_device_name not in by_dev or "Ebs" not in by_dev[img.root_device_name]:
            raise errors.Ec2Error("InvalidBlockDeviceMapping",
                                  f"The AMI {img.id} has no EBS root device at "
                                  f"{img.root_device_name}")
        eng = self.cloud.engine
        plans: list[dict[str, Any]] = []
        for dev, m in by_dev.items():
            if m.get("Ebs") is None or "NoDevice" in m:
                continue
            ebs = m["Ebs"]
            sid = ebs.get("SnapshotId") or None
            size = ebs.get("VolumeSize")
            encrypted = bool(ebs.get("Encrypted", False))
            if ebs.get("KmsKeyId") and not encrypted:
                raise errors.Ec2Error("InvalidParameterDependency",
                                      f"The parameter KmsKeyId requires the parameter "
                                      f"Encrypted to be set ({dev}).")
            source_encrypted = False
            if sid is not None:
                try:
                    snap = eng.get_snapshot(sid, tx=tx)
                except errors.NotFound:
                    snap = None
                # the AMI's own snapshots launch with it; one the request adds must be the
                # caller's or shared with it
                if snap is None or (dev in added and
                                    not snapshot_usable_by(eng, sid, scope.account_id, tx)):
                    raise errors.Ec2Error("InvalidSnapshot.NotFound",
                                          f"The snapshot '{sid}' does not exist.") from None
                if size is None:
                    size = snap.volume_size_gib
                elif size < snap.volume_size_gib:
                    raise errors.Ec2Error(
                        "InvalidBlockDeviceMapping",
                        f"Volume of size {size}GB is smaller than snapshot '{sid}', expect "
                        f"size >= {snap.volume_size_gib}GB")
                source_encrypted = bool(snap.encrypted)
            elif size is None:
                raise errors.Ec2Error("InvalidBlockDeviceMapping",
                                      f"The device {dev} needs a VolumeSize or a SnapshotId")
            dot = ebs.get("DeleteOnTermination")
            # Encrypted=true encrypts a volume of a plaintext snapshot (a copy under a new
            # data key), KmsKeyId picks the key; encryption by default applies too
            encrypted, kms_key_id = self.cloud.encryption.resolve(
                scope, encrypted=encrypted, kms_key_id=ebs.get("KmsKeyId") or None,
                source_encrypted=source_encrypted, tx=tx)
            plans.append({"device": dev, "snapshot_id": sid, "size": size,
                          "type": ebs.get("VolumeType") or "gp2", "iops": ebs.get("Iops"),
                          "throughput": ebs.get("Throughput"), "encrypted": encrypted,
                          "kms_key_id": kms_key_id,
                          "delete_on_termination": True if dot is None else bool(dot)})
        plans.sort(key=lambda p: (p["device"] != img.root_device_name, p["device"]))
        return plans

    # --- RunInstances ---------------------------------------------------------------------

    def run(self, scope: Scope, *, image_id: str, instance_type: str = "m1.small",
            min_count: int = 1, max_count: int = 1, key_name: str | None = None,
            security_group_ids: list[str] | None = None,
            security_groups: list[str] | None = None, subnet_id: str | None = None,
            private_ip: str | None = None,
            block_device_mappings: list[dict[str, Any]] | None = None,
            tag_specifications: list[dict[str, Any]] | None = None,
            user_data: str | None = None, placement: dict[str, Any] | None = None,
            network_interfaces: list[dict[str, Any]] | None = None,
            disable_api_termination: bool = False, disable_api_stop: bool = False,
            instance_initiated_shutdown_behavior: str | None = None,
            ebs_optimized: bool = False, monitoring: bool = False,
            client_token: str | None = None) -> list[Instance]:
        """Launch ``max_count`` instances of one reservation (all or none): volumes from the
        AMI's snapshots (O(1)) attached at their devices, a primary interface each, in one
        unit of work. A ``client_token`` already used returns the first call's instances."""
        args = {k: v for k, v in locals().items() if k not in ("self", "scope", "client_token")}
        token = token_rules.check_client_token(client_token)
        digest = token_rules.request_digest(args)
        c = self.cloud
        if token is not None:
            done = self._replay(scope, token, digest, None)
            if done is not None:
                return done
        itype = instance_type
        if itype == "m1.small":  # EC2's documented default; not in the catalogue
            itype = "t2.micro"
        lookup_type(itype)
        for name, n in (("MinCount", min_count), ("MaxCount", max_count)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise errors.Ec2Error("InvalidParameterValue",
                                      f"Value ({n}) for parameter {name.lower()} is invalid. "
                                      f"Expected a positive integer.")
        if min_count > max_count:
            raise errors.Ec2Error("InvalidParameterValue",
                                  f"MinCount ({min_count}) may not be greater than MaxCount "
                                  f"({max_count}).")
        nic: dict[str, Any] = (network_interfaces or [{}])[0] or {}
        if network_interfaces and (subnet_id or security_group_ids):
            raise errors.Ec2Error("InvalidParameterCombination",
                                  "Network interfaces and an instance-level subnet ID or "
                                  "security groups may not be specified on the same request")
        private_ip = private_ip or nic.get("PrivateIpAddress")
        if private_ip and max_count > 1:
            raise errors.Ec2Error("InvalidParameterCombination",
                                  "Cannot specify a private IP address when launching more "
                                  "than one instance")
        shutdown = instance_initiated_shutdown_behavior or "stop"
        if shutdown not in ("stop", "terminate"):
            raise errors.Ec2Error("InvalidParameterValue",
                                  f"Value ({shutdown}) for parameter "
                                  f"instanceInitiatedShutdownBehavior is invalid.")
        allowed = ("instance", "volume", "network-interface")
        inst_tags = spec_tags(tag_specifications, "instance", allowed)
        vol_tags = spec_tags(tag_specifications, "volume", allowed)
        eni_tags = spec_tags(tag_specifications, "network-interface", allowed)
        zone = (placement or {}).get("AvailabilityZone") or None
        with contextlib.ExitStack() as stack:
            staged = self._stage_copies(
                scope, image_id, block_device_mappings, stack,
                lambda: self._launch_count(scope, subnet_id or nic.get("SubnetId"), zone, nic,
                                           private_ip, min_count, max_count))
            return self._launch(
                scope, token, digest, image_id, itype, min_count, max_count, key_name,
                security_group_ids, security_groups, subnet_id, private_ip,
                block_device_mappings, user_data, zone, nic, disable_api_termination,
                disable_api_stop, shutdown, ebs_optimized, monitoring, inst_tags, vol_tags,
                eni_tags, staged)

    def _launch_count(self, scope: Scope, subnet_id: str | None, zone: str | None,
                      nic: dict[str, Any], private_ip: str | None, min_count: int,
                      max_count: int) -> int:
        """How many instances the launch's unit would start as the store is now (0: it
        refuses them all), read as the unit reads it (in a unit rolled back: the region's
        default network may be made on first use): the bound of what is worth staging."""
        try:
            with self.cloud.engine.transaction() as tx:
                subnet = self._subnet(scope, subnet_id, zone, tx)
                auto_public = bool(nic.get("AssociatePublicIpAddress",
                                           subnet.map_public_ip_on_launch))
                ips, _ = self._addresses(subnet, private_ip, min_count, max_count,
                                         auto_public, tx)
                raise _Count(len(ips))
        except _Count as got:
            return got.n
        except errors.Ec2Error:
            return 0  # the unit refuses the launch, with this error

    def _addresses(self, subnet: Subnet, private_ip: str | None, min_count: int, max_count: int,
                   auto_public: bool, tx: Transaction) -> tuple[list[str], list[str]]:
        """The private addresses of a launch's instances and, with ``auto_public``, a public
        one for each. AWS: MaxCount beyond what the subnet (or the public pool) can hold
        launches the largest number possible, MinCount beyond it launches none. The
        addresses are read once, not once per instance: a huge MaxCount must not scan the
        interfaces per launch."""
        c = self.cloud
        if private_ip:
            ips = [c.addressing.allocate_private_ip(subnet, tx, wanted=private_ip)]
        else:
            ips = c.addressing.free_private_ips(subnet, tx, max_count)
        if len(ips) < min_count:
            raise errors.Ec2Error("InsufficientFreeAddressesInSubnet",
                                  f"Insufficient free IP addresses in subnet {subnet.id} "
                                  f"for {min_count} instance(s).")
        publics = c.addressing.free_public_ips(tx, len(ips)) if auto_public else []
        if auto_public and len(publics) < len(ips):
            if len(publics) < min_count:
                raise errors.Ec2Error("AddressLimitExceeded",
                                      "The public address pool is exhausted "
                                      f"({c.config.public_pool}).")
            ips = ips[:len(publics)]
        return ips, publics

    def _stage_copies(self, scope: Scope, image_id: str,
                      overrides: list[dict[str, Any]] | None,
                      stack: contextlib.ExitStack,
                      launch_count: Callable[[], int]) -> dict[str, list[Staged]]:
        """The volume copies a launch of ``count`` instances makes under a new data key (an
        encrypted volume of a plaintext snapshot, or under another key), by snapshot: made
        before its unit in bounded transactions of their own (``Engine.staged_copy``), so
        that the unit adopts them in O(1) instead of holding the store's writer for every
        copy. Best effort: what cannot be staged now (the request is wrong, a key unusable,
        the store full) is left to the unit, which copies or refuses it itself, in its own
        order of checks; copies it does not adopt (fewer instances launched) are dropped
        when ``stack`` closes."""
        eng = self.cloud.engine
        out: dict[str, list[Staged]] = {}
        try:
            plans = self._devices(scope, self.image(scope, image_id), overrides, None)
            count = launch_count() if any(p["snapshot_id"] is not None and p["encrypted"]
                                          for p in plans) else 0
            for p in plans:
                if p["snapshot_id"] is None or not p["encrypted"]:
                    continue
                for _ in range(count):
                    copy = stack.enter_context(eng.staged_copy(
                        p["snapshot_id"], encrypted=True, kms_key_id=p["kms_key_id"],
                        region=scope.region, account=scope.account_id))
                    if copy is None:
                        break  # no copy needed: the volumes read through to the snapshot
                    out.setdefault(p["snapshot_id"], []).append(copy)
        except errors.EbsError:
            pass  # the unit meets the same condition and answers it
        return out

    def _launch(self, scope: Scope, token: str | None, digest: str, image_id: str,
                itype: str, min_count: int, max_count: int, key_name: str | None,
                security_group_ids: list[str] | None, security_groups: list[str] | None,
                subnet_id: str | None, private_ip: str | None,
                block_device_mappings: list[dict[str, Any]] | None, user_data: str | None,
                zone: str | None, nic: dict[str, Any], disable_api_termination: bool,
                disable_api_stop: bool, shutdown: str, ebs_optimized: bool, monitoring: bool,
                inst_tags: dict[str, str], vol_tags: dict[str, str],
                eni_tags: dict[str, str], staged: dict[str, list[Staged]]) -> list[Instance]:
        c = self.cloud
        eng = c.engine
        with eng.transaction() as tx:
            if token is not None:  # a concurrent retry may have won
                done = self._replay(scope, token, digest, tx)
                if done is not None:
                    return done
            self.sweep(tx)
            img = self.image(scope, image_id, tx)
            subnet = self._subnet(scope, subnet_id or nic.get("SubnetId"), zone, tx)
            groups = self._groups(scope, subnet, list(security_group_ids or nic.get("Groups")
                                                       or []),
                                  list(security_groups or []), tx)
            key = self._key(scope, key_name, tx)
            plans = self._devices(scope, img, block_device_mappings, tx)
            auto_public = bool(nic.get("AssociatePublicIpAddress",
                                       subnet.map_public_ip_on_launch))
            now = c.now()
            reservation = new_id("r")
            ips, publics = self._addresses(subnet, private_ip, min_count, max_count,
                                           auto_public, tx)
            out: list[Instance] = []
            for index, ip in enumerate(ips):
                iid = new_id("i")
                devices = []
                for p in plans:
                    vol = eng.create_volume(
                        p["size"], p["type"], snapshot_id=p["snapshot_id"], iops=p["iops"],
                        throughput=p["throughput"], availability_zone=subnet.availability_zone,
                        encrypted=p["encrypted"], kms_key_id=p["kms_key_id"],
                        tags=vol_tags or None, account=scope.account_id, tx=tx,
                        staged=_take(staged, p["snapshot_id"]))
                    put_volume_owner(eng, tx, vol.id, scope.account_id)
                    eng.attach_volume(vol.id, iid, p["device"], p["delete_on_termination"],
                                      tx=tx)
                    c.meter.volume(tx, vol.id)
                    devices.append({"device": p["device"], "volume_id": vol.id,
                                    "delete_on_termination": p["delete_on_termination"],
                                    "attach_time": now})
                eni = new_interface(scope, subnet, ip, [g.id for g in groups],
                                    description=nic.get("Description") or "")
                public = publics[index] if auto_public else None
                eni = eni.but(attachment={"instance_id": iid, "device_index": 0,
                                          "attachment_id": new_id("eni-attach"),
                                          "delete_on_termination": True, "attach_time": now},
                              public_ip=public, auto_public_ip=auto_public, tags=eni_tags)
                c.network_interfaces.put(eni, tx=tx)
                inst = Instance(
                    id=iid, region=scope.region, owner_id=scope.account_id,
                    reservation_id=reservation, image_id=img.id, instance_type=itype,
                    key_name=key, state="pending", state_time=now, launch_time=now,
                    availability_zone=subnet.availability_zone, subnet_id=subnet.id,
                    vpc_id=subnet.vpc_id, private_ip=ip, network_interface_ids=[eni.id],
                    security_group_ids=[g.id for g in groups],
                    root_device_name=img.root_device_name, block_devices=devices,
                    user_data=user_data, client_token=token, ami_launch_index=index,
                    architecture=img.architecture, virtualization_type=img.virtualization_type,
                    disable_api_termination=bool(disable_api_termination),
                    disable_api_stop=bool(disable_api_stop),
                    instance_initiated_shutdown_behavior=shutdown,
                    ebs_optimized=bool(ebs_optimized),
                    monitoring="enabled" if monitoring else "disabled", tags=inst_tags)
                c.instance_table.put(inst, tx=tx)  # stored pending: the launch's own state
                out.append(inst)
            eng.service_put(NS_RESERVATION, reservation, [i.id for i in out], tx=tx)
            if token is not None:
                c.tokens.put(tx, scope, RUN_ACTION, token, digest, reservation)
        return out

    def _replay(self, scope: Scope, token: str, digest: str,
                tx: Transaction | None) -> list[Instance] | None:
        rid = self.cloud.tokens.previous(scope, RUN_ACTION, token, digest, tx=tx)
        if rid is None:
            return None
        now = self.cloud.now()
        found = []
        for iid in self.cloud.engine.service_get(NS_RESERVATION, rid, tx=tx) or []:
            inst = self.cloud.instance_table.get(iid, tx=tx)
            if inst is not None and inst.region == scope.region and not self.gone(inst, now):
                found.append(self.settled(inst, now))
        return sorted(found, key=lambda i: i.ami_launch_index) or None

    # --- Start / Stop / Reboot / Terminate ------------------------------------------------

    def _eip_of(self, eni_id: str, tx: Transaction | None) -> Any:
        return next((a for a in self.cloud.addresses.all(tx=tx)
                     if a.network_interface_id == eni_id), None)

    def public_ip(self, inst: Instance, tx: Transaction | None = None) -> str | None:
        """The instance's public address: its primary interface's Elastic IP, else the
        auto-assigned one (None when stopped or never given one)."""
        if not inst.network_interface_ids:
            return None
        eip = self._eip_of(inst.network_interface_ids[0], tx)
        if eip is not None:
            return str(eip.public_ip)
        eni = self.cloud.network_interfaces.get(inst.network_interface_ids[0], tx=tx)
        return eni.public_ip if eni is not None else None

    def start(self, scope: Scope, instance_ids: Iterable[str]) -> list[Transition]:
        c = self.cloud
        with c.engine.transaction() as tx:
            insts = self._many(scope, instance_ids, tx)
            for i in insts:
                if i.state in ("stopping", "shutting-down", "terminated"):
                    raise errors.Ec2Error("IncorrectInstanceState",
                                          f"The instance '{i.id}' is not in a state from which "
                                          f"it can be started.")
                if i.state == "stopped" and not any(
                        bd["device"] == i.root_device_name for bd in i.block_devices):
                    raise errors.Ec2Error("IncorrectInstanceState",
                                          f"Invalid value '{i.id}' for instanceId. Instance does "
                                          f"not have a volume attached at root "
                                          f"({i.root_device_name})")
            out = []
            now = c.now()
            taken: set[str] = set()
            for i in insts:
                if i.state != "stopped":
                    out.append(Transition(i.id, i.state, i.state))
                    continue
                for eid in i.network_interface_ids[:1]:
                    eni = c.network_interfaces.get(eid, tx=tx)
                    if eni is not None and eni.auto_public_ip and eni.public_ip is None \
                            and self._eip_of(eid, tx) is None:
                        ip = c.addressing.allocate_public_ip(tx, taken=taken)
                        taken.add(ip)
                        c.network_interfaces.put(eni.but(public_ip=ip), tx=tx)
                new = i.but(state="pending", state_time=now, state_reason=None,
                            state_transition_reason="")
                self._put(new, tx)
                out.append(Transition(i.id, i.state, "pending"))
        return out

    def stop(self, scope: Scope, instance_ids: Iterable[str],
             force: bool = False) -> list[Transition]:
        c = self.cloud
        with c.engine.transaction() as tx:
            insts = self._many(scope, instance_ids, tx)
            for i in insts:
                if i.state in ("pending", "shutting-down", "terminated"):
                    raise errors.Ec2Error("IncorrectInstanceState",
                                          f"This instance '{i.id}' is not in a state from which "
                                          f"it can be stopped.")
                if i.disable_api_stop and i.state == "running":
                    raise errors.Ec2Error("OperationNotPermitted",
                                          f"The instance '{i.id}' may not be stopped. Modify its "
                                          f"'disableApiStop' instance attribute and try again.")
            out = []
            now = c.now()
            for i in insts:
                if i.state != "running":
                    out.append(Transition(i.id, i.state, i.state))
                    continue
                for eid in i.network_interface_ids:
                    eni = c.network_interfaces.get(eid, tx=tx)
                    if eni is not None and eni.public_ip is not None:
                        c.network_interfaces.put(eni.but(public_ip=None), tx=tx)
                new = i.but(state="stopping", state_time=now, state_reason=USER_SHUTDOWN,
                            state_transition_reason=f"User initiated ({gmt(now)})")
                self._put(new, tx)
                out.append(Transition(i.id, "running", "stopping"))
        return out

    def reboot(self, scope: Scope, instance_ids: Iterable[str]) -> None:
        """Reboot running instances (the state stays ``running``; nothing is written)."""
        for i in self._many(scope, instance_ids, None):
            if i.state not in ("running", "pending"):
                raise errors.Ec2Error("IncorrectInstanceState",
                                      f"The instance '{i.id}' is not in the 'running' state.")

    def terminate(self, scope: Scope, instance_ids: Iterable[str]) -> list[Transition]:
        """Terminate (idempotent): delete-on-termination volumes deleted, the rest detached,
        interfaces that go with the instance deleted (their Elastic IPs disassociated), in
        one unit of work."""
        c = self.cloud
        eng = c.engine
        with eng.transaction() as tx:
            insts = self._many(scope, instance_ids, tx)
            for i in insts:
                if i.disable_api_termination and i.state not in ("shutting-down", "terminated"):
                    raise errors.Ec2Error("OperationNotPermitted",
                                          f"The instance '{i.id}' may not be terminated. Modify "
                                          f"its 'disableApiTermination' instance attribute and "
                                          f"try again.")
            out = []
            now = c.now()
            for i in insts:
                if i.state in ("shutting-down", "terminated"):
                    out.append(Transition(i.id, i.state, i.state))
                    continue
                for bd in i.block_devices:
                    vid = bd["volume_id"]
                    try:
                        eng.detach_volume(vid, i.id, tx=tx)
                    except errors.NotFound:  # the attachment went outside this layer
                        continue
                    if bd.get("delete_on_termination"):
                        eng.delete_volume(vid, tx=tx)
                        c.meter.volume(tx, vid)
                        for ns in _VOLUME_NAMESPACES:
                            eng.service_put(ns, vid, None, tx=tx)
                        c.tokens.drop(tx, vid)
                for eid in i.network_interface_ids:
                    eni = c.network_interfaces.get(eid, tx=tx)
                    if eni is None:
                        continue
                    delete = bool((eni.attachment or {}).get("delete_on_termination"))
                    for a in c.addresses.all(tx=tx):
                        if a.network_interface_id == eid and delete:
                            c.addresses.put(a.but(association_id=None, instance_id=None,
                                                  network_interface_id=None, private_ip=None,
                                                  ended_association_id=a.association_id),
                                            tx=tx)
                        elif a.network_interface_id == eid:
                            c.addresses.put(a.but(instance_id=None), tx=tx)
                    if delete:
                        c.network_interfaces.delete(eid, tx=tx)
                        c.tokens.drop(tx, eid)
                    else:
                        c.network_interfaces.put(eni.but(attachment=None, public_ip=None),
                                                 tx=tx)
                new = i.but(state="shutting-down", state_time=now, block_devices=[],
                            network_interface_ids=[], state_reason=USER_SHUTDOWN,
                            state_transition_reason=f"User initiated ({gmt(now)})")
                self._put(new, tx)
                cfg = c.config
                gone_at = now + cfg.terminate_seconds + cfg.terminated_visible_seconds
                eng.service_put(NS_EXPIRY, f"{math.floor(gone_at):012d}|{i.id}",
                                i.reservation_id, tx=tx)
                out.append(Transition(i.id, i.state, "shutting-down"))
            self.sweep(tx)
        return out

    # --- attributes -----------------------------------------------------------------------

    def modify_attribute(self, scope: Scope, instance_id: str, *,
                         instance_type: str | None = None,
                         disable_api_termination: bool | None = None,
                         disable_api_stop: bool | None = None,
                         instance_initiated_shutdown_behavior: str | None = None,
                         user_data: str | None = None, ebs_optimized: bool | None = None,
                         source_dest_check: bool | None = None,
                         groups: list[str] | None = None,
                         delete_on_termination: dict[str, bool] | None = None) -> Instance:
        """ModifyInstanceAttribute: each given attribute changes (all or none)."""
        c = self.cloud
        eng = c.engine
        with eng.transaction() as tx:
            inst = self.get(scope, instance_id, tx)
            if inst.state in ("shutting-down", "terminated"):  # it holds nothing any more
                raise errors.Ec2Error("IncorrectInstanceState",
                                      f"The instance '{inst.id}' is {inst.state}.")
            changes: dict[str, Any] = {}
            if (instance_type is not None or user_data is not None) and \
                    inst.state != "stopped":
                raise errors.Ec2Error("IncorrectInstanceState",
                                      f"The instance '{inst.id}' is not in the 'stopped' "
                                      f"state.")
            if instance_type is not None:
                changes["instance_type"] = lookup_type(instance_type).name
            if user_data is not None:
                changes["user_data"] = user_data
            if disable_api_termination is not None:
                changes["disable_api_termination"] = bool(disable_api_termination)
            if disable_api_stop is not None:
                changes["disable_api_stop"] = bool(disable_api_stop)
            if instance_initiated_shutdown_behavior is not None:
                if instance_initiated_shutdown_behavior not in ("stop", "terminate"):
                    raise errors.Ec2Error("InvalidParameterValue",
                                          f"Value ({instance_initiated_shutdown_behavior}) for "
                                          f"parameter instanceInitiatedShutdownBehavior is "
                                          f"invalid.")
                changes["instance_initiated_shutdown_behavior"] = \
                    instance_initiated_shutdown_behavior
            if ebs_optimized is not None:
                changes["ebs_optimized"] = bool(ebs_optimized)
            enis = [e for e in (c.network_interfaces.get(eid, tx=tx)
                                for eid in inst.network_interface_ids[:1]) if e is not None]
            if groups is not None:
                if not groups:
                    raise errors.Ec2Error("InvalidParameterValue",
                                          "At least one security group is required")
                sub = c.subnets.get(inst.subnet_id, tx=tx)
                assert sub is not None
                found = self._groups(scope, sub, list(groups), [], tx)
                changes["security_group_ids"] = [g.id for g in found]
                enis = [e.but(security_group_ids=changes["security_group_ids"]) for e in enis]
            if source_dest_check is not None:
                enis = [e.but(source_dest_check=bool(source_dest_check)) for e in enis]
            if delete_on_termination:
                devs = {bd["device"]: bd for bd in inst.block_devices}
                for dev in delete_on_termination:
                    if dev not in devs:
                        raise errors.Ec2Error("InvalidInstanceAttributeValue",
                                              f"No device is mapped at {dev} on {inst.id}")
                new_devs = []
                for bd in inst.block_devices:
                    if bd["device"] in delete_on_termination:
                        flag = bool(delete_on_termination[bd["device"]])
                        eng.detach_volume(bd["volume_id"], inst.id, tx=tx)
                        eng.attach_volume(bd["volume_id"], inst.id, bd["device"], flag, tx=tx)
                        bd = {**bd, "delete_on_termination": flag}
                    new_devs.append(bd)
                changes["block_devices"] = new_devs
            if not changes and groups is None and source_dest_check is None:
                raise errors.Ec2Error("MissingParameter",
                                      "The request must contain an attribute to modify")
            for e in enis:
                c.network_interfaces.put(e, tx=tx)
            return self._put(inst.but(**changes), tx)

    # --- volumes of an instance -----------------------------------------------------------

    def _volume(self, scope: Scope, volume_id: str, tx: Transaction) -> Any:
        if not is_aws_id(volume_id, "vol"):
            raise errors.Ec2Error("InvalidVolumeID.Malformed",
                                  f'Invalid id: "{volume_id}" (expecting "vol-...")')
        try:
            vol = self.cloud.engine.get_volume(volume_id, tx=tx)
        except errors.NotFound:
            vol = None
        if vol is None or region_of_zone(vol.availability_zone) != scope.region or \
                volume_owner(self.cloud.engine, vol.id, tx) != scope.account_id:
            raise errors.Ec2Error("InvalidVolume.NotFound",
                                  f"The volume '{volume_id}' does not exist.")
        return vol

    def attach_volume(self, scope: Scope, volume_id: str, instance_id: str,
                      device: str) -> Attachment:
        """AttachVolume: the instance running or stopped, same zone, the device free."""
        c = self.cloud
        with c.engine.transaction() as tx:
            vol = self._volume(scope, volume_id, tx)
            inst = self.get(scope, instance_id, tx)
            check_device_name(device)
            if inst.state not in ("running", "stopped"):
                raise errors.Ec2Error("IncorrectInstanceState",
                                      f"Instance '{inst.id}' is not 'running' or 'stopped'.")
            if inst.availability_zone != vol.availability_zone:
                raise errors.Ec2Error("InvalidVolume.ZoneMismatch",
                                      f"The volume '{vol.id}' is not in the same availability "
                                      f"zone as instance '{inst.id}'")
            if any(bd["device"] == device for bd in inst.block_devices):
                raise errors.Ec2Error("InvalidParameterValue",
                                      f"Invalid value '{device}' for unixDevice. Attachment "
                                      f"point {device} is already in use")
            if vol.state not in ("available", "in-use"):
                raise errors.IncorrectState(f"Volume '{vol.id}' is in the '{vol.state}' state.")
            c.engine.attach_volume(vol.id, inst.id, device, False, tx=tx)
            now = c.now()
            self._put(inst.but(block_devices=[*inst.block_devices, {
                "device": device, "volume_id": vol.id, "delete_on_termination": False,
                "attach_time": now}]), tx)
        return Attachment(vol.id, inst.id, device, now, False)

    def detach_volume(self, scope: Scope, volume_id: str, instance_id: str | None = None,
                      device: str | None = None, force: bool = False) -> Attachment:
        """DetachVolume: not the root volume of an instance that is not stopped."""
        c = self.cloud
        with c.engine.transaction() as tx:
            named = self.get(scope, instance_id, tx) if instance_id else None
            vol = self._volume(scope, volume_id, tx)
            if not vol.attachments:
                raise errors.IncorrectState(f"Volume '{vol.id}' is in the '{vol.state}' state.")
            att = next((a for a in vol.attachments
                        if named is None or a.get("instance_id") == named.id), None)
            if att is None or (device is not None and att.get("device") != device):
                raise errors.Ec2Error("InvalidAttachment.NotFound",
                                      f"The volume '{vol.id}' is not attached to instance "
                                      f"'{instance_id}'")
            iid = str(att.get("instance_id"))
            inst = named or self._visible(scope, iid, tx)
            if inst is not None:
                bd = next((b for b in inst.block_devices if b["volume_id"] == vol.id), None)
                if bd is not None and bd["device"] == inst.root_device_name and \
                        inst.state != "stopped":
                    raise errors.IncorrectState(f"Unable to detach root volume '{vol.id}' from "
                                                f"instance '{inst.id}'")
                self._put(inst.but(block_devices=[b for b in inst.block_devices
                                                  if b["volume_id"] != vol.id]), tx)
            c.engine.detach_volume(vol.id, iid, tx=tx)
        return Attachment(vol.id, iid, str(att.get("device")),
                          float(att.get("attach_time") or 0),
                          bool(att.get("delete_on_termination", False)))

    # --- point-in-time sets: CreateSnapshots, CreateImage ---------------------------------

    def _frozen(self, scope: Scope, instance_id: str, pick: Any) -> Any:
        """Run ``pick(inst, tx)`` in ONE unit flushing every volume of the instance: the
        set is frozen at one point in time. Retries when the instance's volumes change
        between the look and the unit."""
        c = self.cloud
        for _ in range(5):
            inst = self.get(scope, instance_id)
            vids = [bd["volume_id"] for bd in inst.block_devices]
            with c.engine.transaction(flush=vids) as tx:
                now_inst = self.get(scope, instance_id, tx)
                if [bd["volume_id"] for bd in now_inst.block_devices] != vids:
                    continue
                return pick(now_inst, tx)
        raise errors.IncorrectState(f"The volumes of {instance_id} keep changing; retry.")

    def create_snapshots(self, scope: Scope, instance_id: str, *,
                         exclude_boot_volume: bool = False,
                         exclude_data_volume_ids: list[str] | None = None,
                         description: str = "", tags: dict[str, str] | None = None,
                         copy_tags_from_source: str | None = None) -> list[Any]:
        """One crash-consistent snapshot per EBS volume of the instance, same start time."""
        if len(description or "") > 255:
            raise errors.Ec2Error("InvalidParameterValue",
                                  "Description must be at most 255 characters")
        excluded = list(exclude_data_volume_ids or [])
        eng = self.cloud.engine

        def pick(inst: Instance, tx: Transaction) -> list[Any]:
            if inst.state in ("shutting-down", "terminated"):
                raise errors.Ec2Error("IncorrectInstanceState",
                                      f"The instance '{inst.id}' is {inst.state}.")
            ids = {bd["volume_id"]: bd for bd in inst.block_devices}
            for vid in excluded:
                if vid not in ids:
                    raise errors.Ec2Error("InvalidParameterValue",
                                          f"The volume '{vid}' is not attached to {inst.id}")
                if ids[vid]["device"] == inst.root_device_name:
                    raise errors.Ec2Error("InvalidParameterValue",
                                          "The root volume cannot be excluded with "
                                          "ExcludeDataVolumeIds; use ExcludeBootVolume")
            plans = []
            for vid, bd in ids.items():
                if vid in excluded or (exclude_boot_volume and
                                       bd["device"] == inst.root_device_name):
                    continue
                t = dict(eng.get_volume(vid, tx=tx).tags) \
                    if copy_tags_from_source == "volume" else {}
                t.update(tags or {})
                plans.append((vid, check_tags(t)))
            snaps = []
            for vid, t in plans:
                snap = eng.create_snapshot(vid, description=description or "", tags=t or None,
                                           tx=tx)
                put_snapshot_region(eng, tx, snap.id, scope.region, scope.account_id)
                self.cloud.meter.snapshot(tx, snap.id)
                snaps.append(snap)
            return snaps

        return list(self._frozen(scope, instance_id, pick))

    def create_image(self, scope: Scope, instance_id: str, name: str, *,
                     description: str | None = None, no_reboot: bool = False,
                     block_device_mappings: list[dict[str, Any]] | None = None,
                     tag_specifications: list[dict[str, Any]] | None = None) -> Image:
        """CreateImage: every volume of the instance snapshotted at one point in time, and
        the ``Image`` naming them, in one unit of work."""
        check_image_name(name)
        if description is not None and len(description) > 255:
            raise errors.Ec2Error("InvalidParameterValue",
                                  "Description must be at most 255 characters")
        allowed = ("image", "snapshot")
        img_tags = spec_tags(tag_specifications, "image", allowed)
        snap_tags = spec_tags(tag_specifications, "snapshot", allowed)
        overrides: dict[str, dict[str, Any]] = {}
        for o in block_device_mappings or []:
            overrides[check_device_name(o.get("DeviceName"))] = o
        c = self.cloud
        eng = c.engine

        def pick(inst: Instance, tx: Transaction) -> Image:
            if inst.state not in ("running", "stopped"):
                raise errors.Ec2Error("IncorrectInstanceState",
                                      f"The instance '{inst.id}' is not in the 'running' or "
                                      f"'stopped' state.")
            c.images.check_unique(scope, name, tx)
            image_id = new_id("ami")
            mappings: list[dict[str, Any]] = []
            failed = False  # a snapshot ended in error (its volume's KMS key is unusable)
            devs = {bd["device"]: bd for bd in inst.block_devices}
            for bd in inst.block_devices:
                o = overrides.get(bd["device"]) or {}
                if "NoDevice" in o:
                    if bd["device"] == inst.root_device_name:
                        raise errors.Ec2Error("InvalidBlockDeviceMapping",
                                              "The root device cannot be excluded")
                    continue
                vol = eng.get_volume(bd["volume_id"], tx=tx)
                oe = {k: v for k, v in (o.get("Ebs") or {}).items() if v is not None}
                size = oe.get("VolumeSize", vol.size_gib)
                if size < vol.size_gib:
                    raise errors.Ec2Error("InvalidBlockDeviceMapping",
                                          f"Volume of size {size}GB is smaller than the "
                                          f"volume at {bd['device']} ({vol.size_gib}GB)")
                snap = eng.create_snapshot(vol.id, description=f"Created by CreateImage"
                                           f"({inst.id}) for {image_id}",
                                           tags=snap_tags or None, tx=tx)
                put_snapshot_region(eng, tx, snap.id, scope.region, scope.account_id)
                c.meter.snapshot(tx, snap.id)
                failed |= snap.state == "error"
                ebs: dict[str, Any] = {
                    "SnapshotId": snap.id, "VolumeSize": size, "VolumeType": vol.volume_type,
                    "DeleteOnTermination": bool(oe.get("DeleteOnTermination",
                                                       bd.get("delete_on_termination"))),
                    "Encrypted": bool(vol.encrypted)}
                if vol.volume_type in ("gp3", "io1", "io2"):
                    ebs["Iops"] = vol.iops
                if vol.volume_type == "gp3":
                    ebs["Throughput"] = vol.throughput
                mappings.append({"DeviceName": bd["device"], "Ebs": ebs})
            added = [o for dev, o in overrides.items() if dev not in devs and "NoDevice" not in o]
            if added:  # new devices: the rules of RegisterImage's mappings (snapshots exist...)
                mappings += c.images._mappings(scope, added, tx)
            # pending with a failed snapshot reads as failed (Images.state), as EC2's does
            img = Image(id=image_id, region=scope.region, owner_id=scope.account_id,
                        name=name, description=description,
                        state="pending" if failed else "available",
                        creation_time=c.now(), architecture=inst.architecture,
                        virtualization_type=inst.virtualization_type,
                        root_device_name=inst.root_device_name, root_device_type="ebs",
                        block_device_mappings=mappings, source_instance_id=inst.id,
                        tags=img_tags)
            return c.image_table.put(img, tx=tx)

        return self._frozen(scope, instance_id, pick)  # type: ignore[no-any-return]

    # --- rendering help -------------------------------------------------------------------

    def interfaces(self, inst: Instance) -> list[NetworkInterface]:
        out = []
        for eid in inst.network_interface_ids:
            eni = self.cloud.network_interfaces.get(eid)
            if eni is not None:
                out.append(eni)
        return out


__all__ = ["STATE_CODES", "Attachment", "Instances", "Transition", "check_instance_id", "gmt",
           "private_dns", "public_dns"]
