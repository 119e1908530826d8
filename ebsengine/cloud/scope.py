"""Who asks and where: accounts, regions and availability zones.

Every EC2 resource belongs to one account and one region; the cloud layer's lookups are
scoped by a :class:`Scope` (the HTTP layer builds it from the request's SigV4 credential
scope and signer, the library passes one). Volumes and snapshots live in the engine, which
knows no regions or accounts: a volume's region is its zone minus the zone letter and its
owner is recorded beside it (``aws.volume``), a snapshot's region and owner are recorded
beside it (``aws.snapshot``), each written in the unit that makes the resource. A volume or
snapshot without an owner record (made through the library or the CLI, or before accounts
existed) belongs to :data:`DEFAULT_ACCOUNT`, the account of open mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ebsengine import errors
from ebsengine.engine import Engine, Transaction
from ebsengine.rules import DEFAULT_ACCOUNT, DEFAULT_REGION, region_of_zone

#: service namespace of a snapshot's region record: ``{"region": str, "owner": account}``
NS_SNAPSHOT_REGION = "aws.snapshot"
#: service namespace of a volume's owner record: ``{"owner": account}``
NS_VOLUME_OWNER = "aws.volume"
#: service namespace of a snapshot's createVolumePermission: ``{"users": [...], "groups": [...]}``
NS_SNAPSHOT_ATTR = "aws.snapattr"

#: the commercial regions answered by DescribeRegions, with how many zones each has here
#: (AWS's own counts for the big ones; three elsewhere)
REGIONS: dict[str, int] = {
    "us-east-1": 6, "us-east-2": 3, "us-west-1": 2, "us-west-2": 4,
    "ca-central-1": 3, "sa-east-1": 3,
    "eu-west-1": 3, "eu-west-2": 3, "eu-west-3": 3, "eu-central-1": 3, "eu-north-1": 3,
    "ap-south-1": 3, "ap-northeast-1": 3, "ap-northeast-2": 4, "ap-northeast-3": 3,
    "ap-southeast-1": 3, "ap-southeast-2": 3,
}


@dataclass(frozen=True)
class Scope:
    """The account and region a request acts in."""

    region: str = DEFAULT_REGION
    account_id: str = DEFAULT_ACCOUNT




def zones(region: str) -> list[str]:
    """The availability zones of ``region`` (``us-east-1a`` ...); unknown regions get three."""
    return [region + chr(ord("a") + i) for i in range(REGIONS.get(region, 3))]


#: how AWS's zone ids shorten a region name's direction word (``ap-southeast-1`` ->
#: ``apse1``, ``cn-northwest-1`` -> ``cnnw1``); other words keep their first letter
_DIRECTIONS = {"northeast": "ne", "northwest": "nw", "southeast": "se", "southwest": "sw"}


def zone_id(zone: str) -> str:
    """AWS's zone id (``use1-az1``, ``apse1-az2``) for a zone name; the letter order is the id
    order here."""
    region = region_of_zone(zone)
    parts = region.split("-")
    short = parts[0] + "".join(_DIRECTIONS.get(p, p[:1]) for p in parts[1:-1]) + parts[-1]
    return f"{short}-az{ord(zone[-1]) - ord('a') + 1}"


def check_zone(scope: Scope, zone: str) -> str:
    """``zone`` if it is a zone of the scope's region, else ``InvalidParameterValue``."""
    if zone not in zones(scope.region):
        raise errors.Ec2Error("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
    return zone


def zone_of(scope: Scope, zone: str | None, zid: str | None) -> str | None:
    """The zone a request names by ``AvailabilityZone`` or ``AvailabilityZoneId`` (None:
    neither given)."""
    if zone and zid:
        raise errors.Ec2Error("InvalidParameterCombination",
                              "Only one of AvailabilityZone or AvailabilityZoneId can be "
                              "specified")
    if zid:
        for z in zones(scope.region):
            if zone_id(z) == zid:
                return z
        raise errors.Ec2Error("InvalidParameterValue", f"Invalid availability zone ID: [{zid}]")
    return check_zone(scope, zone) if zone else None


def snapshot_region(engine: Engine, snap: Any, default: str = DEFAULT_REGION,
                    tx: Transaction | None = None) -> str:
    """The region a snapshot was made in (its record, else its volume's, else ``default``)."""
    rec = engine.service_get(NS_SNAPSHOT_REGION, snap.id, tx=tx)
    if rec and rec.get("region"):
        return str(rec["region"])
    try:
        return region_of_zone(engine.get_volume(snap.volume_id, tx=tx).availability_zone)
    except (errors.EbsError, AttributeError, TypeError):
        return default


def put_snapshot_region(engine: Engine, tx: Transaction, snap_id: str, region: str,
                        owner: str = DEFAULT_ACCOUNT) -> None:
    """Record the region a snapshot was made in and its owner, in the unit that makes it."""
    engine.service_put(NS_SNAPSHOT_REGION, snap_id, {"region": region, "owner": owner}, tx=tx)


def snapshot_owner(engine: Engine, snap_id: str, tx: Transaction | None = None) -> str:
    """The account a snapshot belongs to (no record: :data:`DEFAULT_ACCOUNT`)."""
    rec = engine.service_get(NS_SNAPSHOT_REGION, snap_id, tx=tx)
    return str(rec.get("owner") or DEFAULT_ACCOUNT) if rec else DEFAULT_ACCOUNT


def put_volume_owner(engine: Engine, tx: Transaction, volume_id: str, owner: str) -> None:
    """Record a volume's owner, in the unit that makes it (open mode's account needs none)."""
    engine.service_put(NS_VOLUME_OWNER, volume_id,
                       None if owner == DEFAULT_ACCOUNT else {"owner": owner}, tx=tx)


def volume_owner(engine: Engine, volume_id: str, tx: Transaction | None = None) -> str:
    """The account a volume belongs to (no record: :data:`DEFAULT_ACCOUNT`)."""
    rec = engine.service_get(NS_VOLUME_OWNER, volume_id, tx=tx)
    return str(rec.get("owner") or DEFAULT_ACCOUNT) if rec else DEFAULT_ACCOUNT


def forget_volume_owner(engine: Engine, tx: Transaction, volume_id: str) -> None:
    """Drop a volume's owner record, in the unit that deletes it."""
    engine.service_put(NS_VOLUME_OWNER, volume_id, None, tx=tx)


def snapshot_permission(engine: Engine, snap_id: str, tx: Transaction | None = None
                        ) -> dict[str, list[str]]:
    """A snapshot's createVolumePermission: ``{"users": [...], "groups": [...]}``."""
    rec = engine.service_get(NS_SNAPSHOT_ATTR, snap_id, tx=tx)
    return rec if rec else {"users": [], "groups": []}


def snapshot_usable_by(engine: Engine, snap_id: str, account: str,
                       tx: Transaction | None = None) -> bool:
    """Whether ``account`` may restore a snapshot: it owns it, or the snapshot's
    createVolumePermission names it or the group ``all``."""
    if snapshot_owner(engine, snap_id, tx) == account:
        return True
    perm = snapshot_permission(engine, snap_id, tx)
    return "all" in perm["groups"] or account in perm["users"]
