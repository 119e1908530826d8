"""Tags of every resource type: volumes and snapshots (kept by the engine) and the cloud
layer's records, behind one interface that CreateTags, DeleteTags, DescribeTags and every
TagSpecification use. The rules (lengths, the ``aws:`` prefix, 50 per resource) are
``ebsengine.rules.tags``, shared with the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ebsengine import errors
from ebsengine.engine import Transaction
from ebsengine.rules import check_tags, is_aws_id, kept_reserved, system_tag_keys

from .model import KINDS
from .scope import Scope, region_of_zone, snapshot_owner, snapshot_region, volume_owner
from .tables import CloudRecord, Table

if TYPE_CHECKING:
    from .core import Cloud

#: id prefix -> (resource type of DescribeTags, NotFound code, Malformed code)
ENGINE_TYPES = {"vol": "volume", "snap": "snapshot"}

NOT_FOUND = {
    "vol": "InvalidVolume.NotFound", "snap": "InvalidSnapshot.NotFound",
    "i": "InvalidInstanceID.NotFound", "ami": "InvalidAMIID.NotFound",
    "key": "InvalidKeyPair.NotFound", "sg": "InvalidGroup.NotFound",
    "vpc": "InvalidVpcID.NotFound", "subnet": "InvalidSubnetID.NotFound",
    "eni": "InvalidNetworkInterfaceID.NotFound", "eipalloc": "InvalidAllocationID.NotFound",
}


def spec_tags(specs: list[dict[str, Any]] | None, resource_type: str,
              allowed: tuple[str, ...] | None = None) -> dict[str, str]:
    """The tags a request's TagSpecifications give ``resource_type``.

    ``allowed``: every resource type the action may tag (default: just ``resource_type``);
    a specification for any other is ``InvalidParameterValue``."""
    ok = allowed or (resource_type,)
    tags: dict[str, str] = {}
    for spec in specs or []:
        rtype = spec.get("ResourceType")
        if rtype not in ok:
            raise errors.Ec2Error("InvalidParameterValue",
                                  f"'{rtype}' is not a valid taggable resource type for this "
                                  f"operation.")
        if rtype == resource_type:
            for t in spec.get("Tags") or []:
                tags[t.get("Key", "")] = t.get("Value", "")
    return check_tags(tags)


class Tags:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.tables: dict[str, Table[Any]] = {k.PREFIX: cloud.table(k) for k in KINDS}

    @staticmethod
    def prefix(rid: str) -> str:
        return rid.split("-", 1)[0] if isinstance(rid, str) and "-" in rid else ""

    def resource(self, scope: Scope, rid: str, tx: Transaction | None = None) -> Any:
        """The tagged resource ``rid`` of the scope's region (engine record or cloud record)."""
        prefix = self.prefix(rid)
        if prefix not in NOT_FOUND or not is_aws_id(rid, prefix):
            raise errors.Ec2Error("InvalidID", f"The ID '{rid}' is not valid")
        eng = self.cloud.engine
        found: Any = None
        try:
            if prefix == "vol":
                found = eng.get_volume(rid, tx=tx)
                if region_of_zone(found.availability_zone) != scope.region or \
                        volume_owner(eng, rid, tx) != scope.account_id:
                    found = None
            elif prefix == "snap":
                found = eng.get_snapshot(rid, tx=tx)
                if snapshot_region(eng, found, scope.region, tx=tx) != scope.region or \
                        snapshot_owner(eng, rid, tx) != scope.account_id:
                    found = None
            else:
                rec = self.tables[prefix].get(rid, tx=tx)
                found = rec if rec is not None and rec.region == scope.region and \
                    _owner(rec) in (None, scope.account_id) else None
        except errors.NotFound:
            found = None
        if found is None:
            raise errors.Ec2Error(NOT_FOUND[prefix], f"The ID '{rid}' does not exist")
        return found

    def resource_type(self, rid: str) -> str:
        prefix = self.prefix(rid)
        if prefix in ENGINE_TYPES:
            return ENGINE_TYPES[prefix]
        return str(self.tables[prefix].cls.RESOURCE_TYPE)

    def set(self, scope: Scope, rids: list[str], tags: dict[str, str],
            tx: Transaction | None = None) -> None:
        """Add or overwrite ``tags`` on every resource, all or none."""
        new = check_tags(tags)
        eng = self.cloud.engine
        if tx is None:
            with eng.transaction() as own:
                self.set(scope, rids, new, own)
            return
        for rid in rids:
            r = self.resource(scope, rid, tx)
            if isinstance(r, CloudRecord):
                merged = {**r.tags, **new}  # type: ignore[attr-defined]
                # the system's aws: tags (DLM's) stay; a user still cannot set one
                with system_tag_keys(*kept_reserved(r.tags, merged)):  # type: ignore[attr-defined]
                    self._put(r, check_tags(merged), tx)
            else:
                eng.set_tags(rid, new, tx=tx)

    def delete(self, scope: Scope, rids: list[str], spec: dict[str, str | None] | None,
               tx: Transaction | None = None) -> None:
        """Remove tags: ``spec`` maps a key to the value it must have (None: any value);
        ``spec=None`` removes every tag."""
        eng = self.cloud.engine
        if tx is None:
            with eng.transaction() as own:
                self.delete(scope, rids, spec, own)
            return
        for rid in rids:
            r = self.resource(scope, rid, tx)
            want = dict.fromkeys(r.tags) if spec is None else spec
            if isinstance(r, CloudRecord):
                kept = {k: v for k, v in r.tags.items()  # type: ignore[attr-defined]
                        if not (k in want and (want[k] is None or want[k] == v))}
                self._put(r, kept, tx)
            elif want:
                eng.delete_tags(rid, want, tx=tx)

    def _put(self, rec: CloudRecord, tags: dict[str, str], tx: Transaction) -> None:
        self.tables[rec.PREFIX].put(rec.but(tags=tags), tx=tx)

    def rows(self, scope: Scope) -> list[dict[str, str]]:
        """Every tag of the region as DescribeTags rows (ResourceId, ResourceType, Key, Value)."""
        out: list[dict[str, str]] = []

        def add(rid: str, rtype: str, tags: dict[str, str]) -> None:
            out.extend({"ResourceId": rid, "ResourceType": rtype, "Key": k, "Value": v}
                       for k, v in tags.items())

        eng = self.cloud.engine
        me = scope.account_id
        for v in eng.list_volumes():
            if region_of_zone(v.availability_zone) == scope.region and \
                    volume_owner(eng, v.id) == me:
                add(v.id, "volume", v.tags)
        for s in eng.list_snapshots():
            if s.tags and snapshot_region(eng, s, scope.region) == scope.region and \
                    snapshot_owner(eng, s.id) == me:
                add(s.id, "snapshot", s.tags)
        for table in self.tables.values():
            for r in table.in_region(scope.region):
                if r.tags and _owner(r) in (None, me):
                    add(r.id, table.cls.RESOURCE_TYPE, r.tags)
        out.sort(key=lambda r: (r["ResourceId"], r["Key"]))
        return out


def _owner(rec: Any) -> str | None:
    """The account a cloud record belongs to (None: a record kind without owners)."""
    owner = getattr(rec, "owner_id", None)
    return None if owner is None else str(owner)
