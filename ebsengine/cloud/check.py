"""The cloud records' consistency check, and the reset that wipes a store's resources.

:func:`check_cloud` proves what the multi-resource units of work promise: after any crash,
every reference between records resolves. An instance's devices are engine volumes attached
to it at those devices (and the other way round), its interfaces exist and point back at it,
an Elastic IP's association names a live interface of the instance it claims, an image's
snapshots exist, and every subnet, interface and group lives in an existing VPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ebsengine import errors

from .model import KINDS

if TYPE_CHECKING:
    from .core import Cloud

#: service namespaces of AWS-side records the reset wipes (the HMAC secret stays; so does the
#: KMS master key's check value: it names no resource, and the master key file stays too).
#: KMS keys, aliases and data-key domains go, as moto's reset drops its KMS keys: every
#: volume and snapshot a domain could protect goes in the same unit.
AWS_NAMESPACES = ("aws.snapshot", "aws.direct", "aws.volmod", "aws.volume", "aws.snapattr",
                  "aws.token", "aws.token-of", "aws.token-expiry", "ec2.region", "ec2.eip-released",
                  "ec2.instance-expiry", "ec2.reservation", "meter.ledger", "meter.api",
                  # lifecycle policies, their runs and what they made (cloud/dlm.py)
                  "dlm.policy", "dlm.run", "dlm.made",
                  # encryption by default and the default KMS key (cloud/encryption.py)
                  "ec2.ebs-encryption",
                  # KMS keys, aliases and data-key domains (ebsengine/kms)
                  "kms.keys", "kms.aliases", "kms.domains")


def check_cloud(cloud: Cloud) -> list[str]:
    problems: list[str] = []
    eng = cloud.engine
    with eng.transaction() as tx:  # one consistent view (and no writer in between)
        vols = {v.id: v for v in (eng.get_volume(v.id, tx=tx) for v in eng.list_volumes())}
        snaps = {s.id for s in eng.list_snapshots()}
        # states as a reader sees them: a stored transient state may have matured (maturing
        # is never written), and a terminating instance holds nothing but its record
        now = cloud.now()
        instances = {i.id: cloud.instances.settled(i, now)
                     for i in cloud.instance_table.all(tx=tx)}
        enis = {e.id: e for e in cloud.network_interfaces.all(tx=tx)}
        vpcs = {v.id for v in cloud.vpcs.all(tx=tx)}
        subnets = {s.id: s for s in cloud.subnets.all(tx=tx)}
        groups = {g.id for g in cloud.security_groups.all(tx=tx)}
        live = {i.id for i in instances.values() if i.state != "terminated"}
        for inst in instances.values():
            if inst.state in ("shutting-down", "terminated"):
                continue
            for bd in inst.block_devices:
                vol = vols.get(bd["volume_id"])
                if vol is None:
                    problems.append(f"{inst.id}: device {bd['device']} names missing volume "
                                    f"{bd['volume_id']}")
                elif not any(a.get("instance_id") == inst.id and a.get("device") == bd["device"]
                             for a in vol.attachments):
                    problems.append(f"{inst.id}: volume {vol.id} is not attached to it at "
                                    f"{bd['device']}")
            for eid in inst.network_interface_ids:
                eni = enis.get(eid)
                if eni is None:
                    problems.append(f"{inst.id}: missing network interface {eid}")
                elif (eni.attachment or {}).get("instance_id") != inst.id:
                    problems.append(f"{inst.id}: interface {eid} is not attached to it")
            if inst.subnet_id and inst.subnet_id not in subnets:
                problems.append(f"{inst.id}: missing subnet {inst.subnet_id}")
        for vol in vols.values():
            for a in vol.attachments:
                iid = a.get("instance_id")
                if iid not in live:
                    problems.append(f"{vol.id}: attached to unknown or terminated instance {iid}")
                elif not any(bd["volume_id"] == vol.id for bd in instances[iid].block_devices):
                    problems.append(f"{vol.id}: attached to {iid}, which does not list it")
        for eni in enis.values():
            if eni.subnet_id not in subnets:
                problems.append(f"{eni.id}: missing subnet {eni.subnet_id}")
            att = eni.attachment
            if att is not None:
                owner = instances.get(att.get("instance_id", ""))
                if owner is None or owner.state == "terminated" or \
                        eni.id not in owner.network_interface_ids:
                    problems.append(f"{eni.id}: attached to {att.get('instance_id')}, which "
                                    f"does not list it")
            for gid in eni.security_group_ids:
                if gid not in groups:
                    problems.append(f"{eni.id}: missing security group {gid}")
        for addr in cloud.addresses.all(tx=tx):
            if addr.network_interface_id is not None:
                eni = enis.get(addr.network_interface_id)
                if eni is None:
                    problems.append(f"{addr.id}: associated with missing interface "
                                    f"{addr.network_interface_id}")
                elif addr.instance_id is not None and \
                        (eni.attachment or {}).get("instance_id") != addr.instance_id:
                    problems.append(f"{addr.id}: names instance {addr.instance_id}, but its "
                                    f"interface is not attached to it")
        problems += _check_addresses(cloud, enis, subnets, tx)
        for img in cloud.image_table.all(tx=tx):
            if img.state in ("deregistered", "failed"):
                continue
            for m in img.block_device_mappings:
                sid = (m.get("Ebs") or {}).get("SnapshotId")
                if sid and sid not in snaps:
                    problems.append(f"{img.id}: mapping {m.get('DeviceName')} names missing "
                                    f"snapshot {sid}")
        for sub in subnets.values():
            if sub.vpc_id not in vpcs:
                problems.append(f"{sub.id}: missing VPC {sub.vpc_id}")
        for g in cloud.security_groups.all(tx=tx):
            if g.vpc_id and g.vpc_id not in vpcs:
                problems.append(f"{g.id}: missing VPC {g.vpc_id}")
        # security group rules: unique ids, references to live groups (deletion refuses a
        # referenced group), and live instances' groups exist
        rule_ids: set[str] = set()
        for g in cloud.security_groups.all(tx=tx):
            for r in [*g.ingress, *g.egress]:
                rid = r.get("SecurityGroupRuleId", "")
                if rid in rule_ids:
                    problems.append(f"{g.id}: rule id {rid} used twice")
                rule_ids.add(rid)
                ref = (r.get("ReferencedGroupInfo") or {}).get("GroupId")
                if ref and ref not in groups:
                    problems.append(f"{g.id}: rule {rid} references missing group {ref}")
        for inst in instances.values():
            if inst.state not in ("shutting-down", "terminated"):
                for gid in inst.security_group_ids:
                    if gid not in groups:
                        problems.append(f"{inst.id}: missing security group {gid}")
    return problems


def _check_addresses(cloud: Cloud, enis: dict[str, Any], subnets: dict[str, Any],
                     tx: Any) -> list[str]:
    """Interfaces and Elastic IPs: an interface's VPC and zone are its subnet's, its private
    IP lies in the subnet and no other interface of it holds it, attachment ids and device
    indexes are unique; an Elastic IP's association is whole (id, interface, private IP),
    names the interface's private IP, and no interface holds two Elastic IPs nor an
    auto-assigned address beside one; no public IP is held twice."""
    import ipaddress

    problems: list[str] = []
    seen_ip: dict[tuple[str, str], str] = {}
    seen_att: dict[str, str] = {}
    seen_dev: dict[tuple[str, int], str] = {}
    public: dict[str, str] = {}
    for eni in enis.values():
        sub = subnets.get(eni.subnet_id)
        if sub is not None:
            if (eni.vpc_id, eni.availability_zone) != (sub.vpc_id, sub.availability_zone):
                problems.append(f"{eni.id}: VPC/zone differ from its subnet {sub.id}'s")
            if ipaddress.ip_address(eni.private_ip) not in ipaddress.ip_network(sub.cidr_block):
                problems.append(f"{eni.id}: private IP {eni.private_ip} outside {sub.id}")
        other = seen_ip.setdefault((eni.subnet_id, eni.private_ip), eni.id)
        if other != eni.id:
            problems.append(f"{eni.id}: private IP {eni.private_ip} also held by {other}")
        if eni.attachment is not None:
            att = eni.attachment
            o = seen_att.setdefault(str(att.get("attachment_id")), eni.id)
            if o != eni.id:
                problems.append(f"{eni.id}: attachment id shared with {o}")
            key = (str(att.get("instance_id")), int(att.get("device_index", -1)))
            o = seen_dev.setdefault(key, eni.id)
            if o != eni.id:
                problems.append(f"{eni.id}: device index {key[1]} of {key[0]} shared with {o}")
        if eni.public_ip:
            o = public.setdefault(eni.public_ip, eni.id)
            if o != eni.id:
                problems.append(f"{eni.id}: public IP {eni.public_ip} also held by {o}")
    on_eni: dict[str, str] = {}
    for addr in cloud.addresses.all(tx=tx):
        o = public.setdefault(addr.public_ip, addr.id)
        if o != addr.id:
            problems.append(f"{addr.id}: public IP {addr.public_ip} also held by {o}")
        parts = (addr.association_id, addr.network_interface_id, addr.private_ip)
        if any(p is None for p in parts) and any(p is not None for p in parts):
            problems.append(f"{addr.id}: partial association {parts}")
        eni = enis.get(addr.network_interface_id or "")
        if eni is None:
            if addr.instance_id is not None and addr.network_interface_id is None:
                problems.append(f"{addr.id}: names instance {addr.instance_id} but no interface")
            continue
        if addr.private_ip != eni.private_ip:
            problems.append(f"{addr.id}: private IP {addr.private_ip} is not {eni.id}'s")
        if eni.public_ip:
            problems.append(f"{eni.id}: auto-assigned {eni.public_ip} beside Elastic IP "
                            f"{addr.id}")
        if addr.instance_id != (eni.attachment or {}).get("instance_id"):
            problems.append(f"{addr.id}: instance {addr.instance_id} is not the one {eni.id} "
                            f"is attached to")
        o = on_eni.setdefault(eni.id, addr.id)
        if o != addr.id:
            problems.append(f"{eni.id}: holds Elastic IPs {o} and {addr.id}")
    return problems


def reset_all(cloud: Cloud) -> dict[str, Any]:
    """Remove every volume, snapshot and cloud record, in ONE unit of work: it all goes or
    nothing does. A volume open on a device (an NBD client) or being imported refuses the
    reset (``VolumeInUse`` / ``IncorrectState`` from the engine's delete) and then nothing was
    removed; one unit also means no request can slip a resource in half-way, and a crash
    leaves the store as it was before or empty. Returns how many of each kind went."""
    eng = cloud.engine
    removed: dict[str, int] = {}
    with eng.transaction() as tx:
        for kind in KINDS:  # cloud records first: nothing may then name a volume
            table = cloud.table(kind)
            recs = table.all(tx=tx)
            for r in recs:
                table.delete(r.id, tx=tx)
            removed[kind.KIND] = len(recs)
        removed["kms-key"] = len(eng.service_items("kms.keys", tx=tx))
        for ns in AWS_NAMESPACES:
            for key, _ in eng.service_items(ns, tx=tx):
                eng.service_put(ns, key, None, tx=tx)
        vols = eng.list_volumes()
        for vol in vols:
            if vol.attachments:
                eng.detach_volume(vol.id, tx=tx)
            eng.delete_volume(vol.id, tx=tx)
        removed["volume"] = len(vols)
        n = 0
        # newest first: a delete merges into the successor, so deleting from the end never
        # merges
        for snap in sorted(eng.list_snapshots(), key=lambda s: s.start_time, reverse=True):
            try:
                eng.delete_snapshot(snap.id, tx=tx)
            except errors.NotFound:
                continue
            n += 1
        removed["snapshot"] = n
    return removed
