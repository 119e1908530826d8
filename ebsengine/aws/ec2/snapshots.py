"""EC2 snapshot actions: create (one or a crash-consistent set), copy, delete, describe, permissions."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ebsengine.engine import Transaction
from ebsengine.rules import is_aws_id

from ..errors import ApiError
from ..store import NS_DIRECT, NS_SNAPATTR, Context
from .common import (
    Actions,
    CursorPages,
    Extractor,
    Params,
    Result,
    _b,
    _iso,
    _tag_list,
    compile_filters,
    exact_values,
)


class SnapshotActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "CreateSnapshot": "create_snapshot",
        "CreateSnapshots": "create_snapshots",
        "DeleteSnapshot": "delete_snapshot",
        "DescribeSnapshots": "describe_snapshots",
        "CopySnapshot": "copy_snapshot",
        "ModifySnapshotAttribute": "modify_snapshot_attribute",
        "DescribeSnapshotAttribute": "describe_snapshot_attribute",
    }

    def _snapshot_view(self, ctx: Context, snap: Any, state: str | None = None) -> Result:
        progress = snap.progress
        direct = self.engine.service_get(NS_DIRECT, snap.id)
        if snap.state == "pending" and direct:
            progress = int(direct.get("progress", 0))
        return {
            "SnapshotId": snap.id,
            "VolumeId": snap.volume_id or "vol-ffffffff",
            "State": state or snap.state,
            "StartTime": snap.start_time,
            "Progress": f"{100 if snap.state == 'completed' and state is None else progress}%",
            "OwnerId": self.store.snapshot_owner(snap),
            "Description": snap.description or "",
            "VolumeSize": snap.volume_size_gib,
            "Encrypted": bool(snap.encrypted),
            "KmsKeyId": snap.kms_key_id,
            "Tags": _tag_list(snap.tags),
            "StorageTier": "standard",
            "CompletionTime": snap.completion_time if snap.state == "completed" and state is None else None,
            "FullSnapshotSizeInBytes": snap.full_size_bytes if snap.state == "completed" else None,
            "StateMessage": snap.state_message if state is None else None,
        }


    # --- snapshots ---------------------------------------------------------------------

    def create_snapshot(self, ctx: Context, p: Params) -> Result:
        vol = self.store.volume(ctx, p["VolumeId"])
        tags = self._spec_tags(p.get("TagSpecifications"), "snapshot")
        desc = p.get("Description") or ""
        if len(desc) > 255:
            raise ApiError("InvalidParameterValue", "Description must be at most 255 characters")
        with self.engine.transaction(flush=[vol.id]) as tx:
            snap = self.engine.create_snapshot(vol.id, description=desc, tags=tags or None, tx=tx)
            self.store.put_snapshot_region(tx, snap.id, ctx)
            self.cloud.meter.snapshot(tx, snap.id)
        return self._snapshot_view(ctx, snap, state="pending")

    def create_snapshots(self, ctx: Context, p: Params) -> Result:
        """One crash-consistent set: every snapshot of the set freezes in one unit of work
        (the rules: ``cloud.instances.create_snapshots``)."""
        spec = p["InstanceSpecification"]
        instance_id = spec.get("InstanceId")
        if not instance_id:
            raise ApiError("MissingParameter", "The request must contain the parameter InstanceSpecification.InstanceId")
        tags = self._spec_tags(p.get("TagSpecifications"), "snapshot")
        snaps = self.cloud.instances.create_snapshots(
            self.scope(ctx), instance_id, exclude_boot_volume=bool(spec.get("ExcludeBootVolume")),
            exclude_data_volume_ids=spec.get("ExcludeDataVolumeIds") or [],
            description=p.get("Description") or "", tags=tags,
            copy_tags_from_source=p.get("CopyTagsFromSource"))
        out = []
        for snap in snaps:
            view = self._snapshot_view(ctx, snap, state="pending")
            out.append({k: view.get(k) for k in ("SnapshotId", "VolumeId", "State", "StartTime", "Progress",
                                                 "OwnerId", "Description", "VolumeSize", "Encrypted", "Tags")})
        return {"Snapshots": out}

    def delete_snapshot(self, ctx: Context, p: Params) -> None:
        snap = self.store.snapshot(ctx, p["SnapshotId"])
        with self.engine.transaction() as tx:  # InUse checked in the unit that deletes
            self.cloud.images.check_snapshot_deletable(self.scope(ctx), snap.id, tx)
            self.engine.delete_snapshot(snap.id, tx=tx)
            self.store.forget_snapshot(tx, snap.id)
            self.cloud.meter.snapshot(tx, snap.id)

    _SNAPSHOT_FILTERS: ClassVar[dict[str, Extractor]] = {
        "snapshot-id": lambda s: [s.id],
        "volume-id": lambda s: [s.volume_id or "vol-ffffffff"],
        "status": lambda s: [s.state],
        "encrypted": lambda s: [_b(s.encrypted)],
        "storage-tier": lambda s: ["standard"],
        "start-time": lambda s: [_iso(s.start_time)],
        "volume-size": lambda s: [str(s.volume_size_gib)],
        "description": lambda s: [s.description or ""],
        "progress": lambda s: ["100%" if s.state == "completed" else f"{s.progress}%"],
        "kms-key-id": lambda s: [s.kms_key_id] if s.kms_key_id else [],
        "owner-alias": lambda s: [],
    }

    def _visible(self, ctx: Context, owners: list[str] | None, restorable: list[str] | None
                 ) -> Any:
        """The test DescribeSnapshots applies: the caller sees its own snapshots and those
        shared with it or public; ``OwnerIds`` keeps those of the accounts named,
        ``RestorableByUserIds`` those the accounts named may restore (``self``: the caller)."""
        me = ctx.account_id
        want_owners = {me if o == "self" else o for o in owners or []}
        want_users = {me if u == "self" else u for u in restorable or []}

        def visible(s: Any) -> bool:
            owner = self.store.snapshot_owner(s)
            if want_owners and owner not in want_owners:
                return False
            if owner == me and not want_users:
                return True
            perm = self.engine.service_get(NS_SNAPATTR, s.id) or {"users": [], "groups": []}
            users, public = perm["users"], "all" in perm["groups"]
            if owner != me and not (public or me in users):
                return False
            return not want_users or public or any(u == owner or u in users for u in want_users)

        return visible

    def describe_snapshots(self, ctx: Context, p: Params) -> Result:
        """Snapshots in id order, paged by the engine's cursor like DescribeVolumes; an
        exact ``volume-id`` filter reads the engine's per-volume index, an exact
        ``snapshot-id`` filter looks the ids up, other filters test while scanning."""
        ids = p.get("SnapshotIds")
        if ids and p.get("MaxResults") is not None:
            raise ApiError("InvalidParameterCombination",
                           "The parameter snapshotSet cannot be used with the parameter maxResults")
        pages = CursorPages(self.store, "snapshots", "snap")
        after, limit = pages.open(ctx, p)
        table = dict(self._SNAPSHOT_FILTERS)
        table["owner-id"] = lambda s: [self.store.snapshot_owner(s)]
        filters = p.get("Filters")
        match = compile_filters(filters, table, lambda s: s.tags)
        shared = self._visible(ctx, p.get("OwnerIds"), p.get("RestorableByUserIds"))

        region = ctx.region

        def keep(s: Any) -> bool:
            return self.store.snapshot_region(s) == region and match(s) and shared(s)

        if ids:
            found = {sid: self.store.snapshot(ctx, sid, shared=True) for sid in ids}
            page, last = pages.in_memory([s for s in found.values() if match(s) and shared(s)],
                                         after, limit)
        elif (wanted := exact_values(filters, "snapshot-id")) is not None:
            self.store.expire_pending()
            snaps = [s for s in map(self._snapshot_or_none, wanted) if s is not None and keep(s)]
            page, last = pages.in_memory(list({s.id: s for s in snaps}.values()), after, limit)
        else:
            self.store.expire_pending()
            vids = exact_values(filters, "volume-id")
            if vids is not None and len(vids) == 1 and is_aws_id(vids[0], "vol") \
                    and vids[0] != "vol-ffffffff":  # the stand-in of direct snapshots
                page, last = self.engine.page_snapshots(after, limit, volume_id=vids[0],
                                                        where=keep)
            else:
                page, last = self.engine.page_snapshots(after, limit, where=keep)
        return {"Snapshots": [self._snapshot_view(ctx, s) for s in page],
                "NextToken": pages.token(ctx, last)}

    def copy_snapshot(self, ctx: Context, p: Params) -> Result:
        src_region = p["SourceRegion"]
        dest = p.get("DestinationRegion") or ctx.region
        if dest != ctx.region:
            raise ApiError("InvalidParameterValue",
                           f"DestinationRegion {dest} must be the region of the request ({ctx.region})")
        src_ctx = Context(src_region, ctx.account_id, ctx.request_id)
        snap = self.store.snapshot(src_ctx, p["SourceSnapshotId"], shared=True)
        if snap.state != "completed":
            raise ApiError("IncorrectState", f"Snapshot '{snap.id}' is not in the completed state")
        if p.get("KmsKeyId") and not p.get("Encrypted"):
            raise ApiError("InvalidParameterDependency",
                           "The parameter KmsKeyId requires the parameter Encrypted to be set.")
        dur = p.get("CompletionDurationMinutes")
        if dur is not None and (dur < 15 or dur > 2880 or dur % 15):
            raise ApiError("InvalidParameterValue", "CompletionDurationMinutes must be a multiple of 15 in 15-2880")
        tags = self._spec_tags(p.get("TagSpecifications"), "snapshot")

        def resolve(tx: Transaction | None) -> tuple[bool, str | None]:
            # Encrypted=true encrypts a plaintext source, KmsKeyId re-encrypts, encryption
            # by default of the destination applies; an encrypted source stays encrypted
            # (Encrypted=false never decrypts). The key resolves in the destination region
            # (the request's: DestinationRegion must be it, above).
            return self.cloud.encryption.resolve(
                self.scope(ctx), encrypted=bool(p.get("Encrypted", False)),
                kms_key_id=p.get("KmsKeyId") or None, source_encrypted=bool(snap.encrypted), tx=tx)

        # a copy under a new data key is made first, in transactions of its own; the unit
        # adopts it (or, if the answer changed meanwhile, copies itself)
        staging, staged_key = resolve(None)
        with self.engine.staged_copy(snap.id, encrypted=staging, kms_key_id=staged_key,
                                     region=ctx.region, account=ctx.account_id) as staged:
            with self.engine.transaction() as tx:
                encrypted, kms_key_id = resolve(tx)
                copy = self.engine.copy_snapshot(snap.id, description=p.get("Description") or "",
                                                 tags=tags or None, encrypted=encrypted,
                                                 kms_key_id=kms_key_id, region=ctx.region,
                                                 account=ctx.account_id, tx=tx, staged=staged)
                self.store.put_snapshot_region(tx, copy.id, ctx)
                self.cloud.meter.snapshot(tx, copy.id)
        return {"SnapshotId": copy.id, "Tags": _tag_list(copy.tags)}

    def modify_snapshot_attribute(self, ctx: Context, p: Params) -> None:
        snap = self.store.snapshot(ctx, p["SnapshotId"])
        attr = p.get("Attribute") or "createVolumePermission"
        if attr != "createVolumePermission":
            raise ApiError("InvalidParameterValue", f"The attribute {attr} cannot be modified")
        add: list[dict[str, str]] = []
        remove: list[dict[str, str]] = []
        perm = p.get("CreateVolumePermission") or {}
        add += perm.get("Add") or []
        remove += perm.get("Remove") or []
        op = p.get("OperationType")
        flat = [{"UserId": u} for u in p.get("UserIds") or []] + [{"Group": g} for g in p.get("GroupNames") or []]
        if flat:
            if op not in ("add", "remove"):
                raise ApiError("MissingParameter", "The request must contain the parameter OperationType")
            (add if op == "add" else remove).extend(flat)
        if not add and not remove:
            raise ApiError("MissingParameter", "The request must contain the parameter createVolumePermission")
        for e in add + remove:
            if e.get("Group") not in (None, "all"):
                raise ApiError("InvalidParameterValue", f"Value ({e['Group']}) for parameter group is invalid")
            if e.get("UserId") is not None and not re.match(r"^[0-9]{12}$", e["UserId"]):
                raise ApiError("InvalidParameterValue", f"Value ({e['UserId']}) for parameter userId is invalid")
        if snap.encrypted and any(e.get("Group") == "all" for e in add):
            raise ApiError("InvalidParameterValue", "Encrypted snapshots cannot be made public")
        if snap.encrypted and any(e.get("UserId") not in (None, ctx.account_id) for e in add):
            raise ApiError("InvalidParameterValue",
                           "Encrypted snapshots cannot be shared with other accounts: their KMS "
                           "keys cannot be granted to another account here")
        with self.engine.transaction() as tx:  # read-modify-write; not after a concurrent delete
            self.engine.get_snapshot(snap.id, tx=tx)
            cur = self.engine.service_get(NS_SNAPATTR, snap.id, tx=tx) or {"users": [], "groups": []}
            users, groups = list(cur["users"]), list(cur["groups"])
            for e in add:
                if e.get("UserId") and e["UserId"] not in users:
                    users.append(e["UserId"])
                if e.get("Group") and e["Group"] not in groups:
                    groups.append(e["Group"])
            for e in remove:
                if e.get("UserId") in users:
                    users.remove(e["UserId"])
                if e.get("Group") in groups:
                    groups.remove(e["Group"])
            self.engine.service_put(NS_SNAPATTR, snap.id, {"users": users, "groups": groups}, tx=tx)

    def describe_snapshot_attribute(self, ctx: Context, p: Params) -> Result:
        snap = self.store.snapshot(ctx, p["SnapshotId"])
        attr = p["Attribute"]
        if attr == "productCodes":
            return {"SnapshotId": snap.id, "ProductCodes": []}
        if attr != "createVolumePermission":
            raise ApiError("InvalidParameterValue", f"Value ({attr}) for parameter attribute is invalid")
        cur = self.engine.service_get(NS_SNAPATTR, snap.id) or {"users": [], "groups": []}
        perms = [{"Group": g} for g in cur["groups"]] + [{"UserId": u} for u in cur["users"]]
        return {"SnapshotId": snap.id, "CreateVolumePermissions": perms}

