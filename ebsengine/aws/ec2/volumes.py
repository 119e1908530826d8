"""EC2 volume actions: create, delete, describe, modify (Elastic Volumes), attach and detach."""

from __future__ import annotations

from typing import Any, ClassVar

from ebsengine import errors as engine_errors
from ebsengine.engine import Transaction
from ebsengine.rules import modified_spec, region_of_zone
from ebsengine.rules import tokens as token_rules

from ..errors import ApiError
from ..store import NS_VOLMOD, Context
from .common import (
    Actions,
    CursorPages,
    Extractor,
    Paginator,
    Params,
    Result,
    _b,
    _iso,
    apply_filters,
    compile_filters,
    exact_values,
    volume_view,
)


class VolumeActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "CreateVolume": "create_volume",
        "DeleteVolume": "delete_volume",
        "DescribeVolumes": "describe_volumes",
        "ModifyVolume": "modify_volume",
        "DescribeVolumesModifications": "describe_volumes_modifications",
        "DescribeVolumeStatus": "describe_volume_status",
        "AttachVolume": "attach_volume",
        "DetachVolume": "detach_volume",
    }

    def _replay(self, ctx: Context, token: str | None, digest: str,
                tx: Any = None) -> Result | None:
        """The first response of a CreateVolume retried with its ClientToken, else None (a
        new request: no token, or one past its TTL or whose volume is gone)."""
        if token is None:
            return None
        prev = self.store.token_previous(ctx, "CreateVolume", token, digest, tx=tx)
        if prev is None:
            return None
        try:
            return volume_view(self.engine.get_volume(prev, tx=tx))
        except engine_errors.NotFound:  # deleted outside this API (the library): a new request
            return None


    # --- volumes -----------------------------------------------------------------------

    def create_volume(self, ctx: Context, p: Params) -> Result:
        token = token_rules.check_client_token(p.get("ClientToken"))
        digest = token_rules.request_digest(p)
        done = self._replay(ctx, token, digest)
        if done is not None:
            return done
        zone = self._zone(ctx, p)
        size, snap_id = p.get("Size"), p.get("SnapshotId")
        if size is None and not snap_id:
            raise ApiError("MissingParameter", "The request must contain the parameter size or snapshotId")
        snap = None
        if snap_id:
            snap = self.store.snapshot(ctx, snap_id, shared=True)  # or one shared with the caller
            if snap.state != "completed":
                raise ApiError("IncorrectState", f"Snapshot '{snap_id}' is not in the completed state")
        if p.get("KmsKeyId") and not p.get("Encrypted"):
            raise ApiError("InvalidParameterDependency",
                           "The parameter KmsKeyId requires the parameter Encrypted to be set.")
        if "VolumeInitializationRate" in p and not snap_id:
            raise ApiError("InvalidParameterCombination",
                           "VolumeInitializationRate can only be specified with SnapshotId")
        tags = self._spec_tags(p.get("TagSpecifications"), "volume")

        def resolve(tx: Transaction | None) -> tuple[bool, str | None]:
            # encrypted when asked, from an encrypted snapshot, or by the Region's default;
            # the key resolves in the caller's account and region (errors: aws/errors.py)
            return self.cloud.encryption.resolve(
                self.scope(ctx), encrypted=bool(p.get("Encrypted", False)),
                kms_key_id=p.get("KmsKeyId") or None,
                source_encrypted=bool(snap is not None and snap.encrypted), tx=tx)

        # a copy under a new data key is made first, in transactions of its own; the unit
        # adopts it (or, if the answer changed meanwhile, copies itself)
        staging, staged_key = resolve(None) if snap is not None else (False, None)
        with self.engine.staged_copy(snap.id if snap is not None else None,
                                     encrypted=staging, kms_key_id=staged_key,
                                     region=region_of_zone(zone),
                                     account=ctx.account_id) as staged:
            with self.engine.transaction() as tx:
                done = self._replay(ctx, token, digest, tx)  # a concurrent retry may have won
                if done is not None:
                    return done
                encrypted, kms_key_id = resolve(tx)
                vol = self.engine.create_volume(
                    size, p.get("VolumeType") or "gp2", snapshot_id=snap_id or None,
                    iops=p.get("Iops"), throughput=p.get("Throughput"), availability_zone=zone,
                    multi_attach_enabled=bool(p.get("MultiAttachEnabled", False)),
                    encrypted=encrypted, kms_key_id=kms_key_id, tags=tags or None,
                    account=ctx.account_id, tx=tx, staged=staged)
                self.store.put_volume_owner(tx, vol.id, ctx)
                if token is not None:  # commits with the volume: a crash cannot split them
                    self.store.put_token(tx, ctx, "CreateVolume", token, digest, vol.id)
                self.cloud.meter.volume(tx, vol.id)
        return volume_view(vol, state="creating")

    def delete_volume(self, ctx: Context, p: Params) -> None:
        vol = self.store.volume(ctx, p["VolumeId"])
        with self.engine.transaction() as tx:
            self.engine.delete_volume(vol.id, tx=tx)
            self.store.forget_volume(tx, vol.id)
            self.cloud.meter.volume(tx, vol.id)

    _VOLUME_FILTERS: ClassVar[dict[str, Extractor]] = {
        "volume-id": lambda v: [v.id],
        "status": lambda v: [v.state],
        "volume-type": lambda v: [v.volume_type],
        "size": lambda v: [str(v.size_gib)],
        "availability-zone": lambda v: [v.availability_zone],
        "snapshot-id": lambda v: [v.snapshot_id or ""],
        "encrypted": lambda v: [_b(v.encrypted)],
        "multi-attach-enabled": lambda v: [_b(v.multi_attach_enabled)],
        "create-time": lambda v: [_iso(v.create_time)],
        "attachment.instance-id": lambda v: [a.get("instance_id") for a in v.attachments],
        "attachment.device": lambda v: [a.get("device") for a in v.attachments],
        "attachment.status": lambda v: [a.get("state", "attached") for a in v.attachments],
        "attachment.attach-time": lambda v: [_iso(a.get("attach_time") or 0) for a in v.attachments],
        "attachment.delete-on-termination": lambda v: [_b(a.get("delete_on_termination", False))
                                                       for a in v.attachments],
    }

    def describe_volumes(self, ctx: Context, p: Params) -> Result:
        """Volumes in id order. A page reads only what it returns (plus what the filters
        reject on the way): the engine's cursor resumes after the token's id."""
        ids = p.get("VolumeIds")
        if ids and p.get("MaxResults") is not None:
            raise ApiError("InvalidParameterCombination",
                           "The parameter volumeSet cannot be used with the parameter maxResults")
        pages = CursorPages(self.store, "volumes", "vol")
        after, limit = pages.open(ctx, p)
        match = compile_filters(p.get("Filters"), self._VOLUME_FILTERS, lambda v: v.tags)

        def keep(v: Any) -> bool:
            return self.store.owns_volume(ctx, v) and match(v)

        if ids:  # direct lookups: O(ids), not O(all volumes)
            found = {vid: self.store.volume(ctx, vid) for vid in ids}  # raises Malformed / NotFound
            page, last = pages.in_memory([v for v in found.values() if match(v)], after, limit)
        elif (wanted := exact_values(p.get("Filters"), "volume-id")) is not None:
            vols = [v for v in map(self._volume_or_none, wanted) if v is not None and keep(v)]
            page, last = pages.in_memory(list({v.id: v for v in vols}.values()), after, limit)
        else:
            page, last = self.engine.page_volumes(after, limit, where=keep)
        return {"Volumes": [volume_view(v) for v in page], "NextToken": pages.token(ctx, last)}

    def _volume_or_none(self, volume_id: str) -> Any:
        try:
            return self.engine.get_volume(volume_id)
        except engine_errors.EbsError:
            return None

    def describe_volume_status(self, ctx: Context, p: Params) -> Result:
        table: dict[str, Extractor] = {
            "availability-zone": lambda v: [v.availability_zone],
            "volume-status.status": lambda v: ["ok"],
            "volume-status.details-name": lambda v: ["io-enabled", "io-performance"],
            "volume-status.details-status": lambda v: ["passed", "not-applicable"],
            "event.event-type": lambda v: [],
            "event.event-id": lambda v: [],
            "event.description": lambda v: [],
            "action.code": lambda v: [],
        }
        ids = p.get("VolumeIds")
        if ids:
            found = {vid: self.store.volume(ctx, vid) for vid in ids}
            vols = sorted(found.values(), key=lambda v: (v.create_time, v.id))
        else:
            vols = self.store.volumes(ctx)
        vols = apply_filters(vols, p.get("Filters"), table, None)
        page, token = Paginator("volstatus", 5, 1000).page(
            vols, lambda v: [v.create_time, v.id], p.get("MaxResults"), p.get("NextToken"))
        return {
            "VolumeStatuses": [
                {
                    "VolumeId": v.id,
                    "AvailabilityZone": v.availability_zone,
                    "VolumeStatus": {"Status": "ok", "Details": [
                        {"Name": "io-enabled", "Status": "passed"},
                        {"Name": "io-performance", "Status": "not-applicable"},
                    ]},
                    "Events": [],
                    "Actions": [],
                }
                for v in page
            ],
            "NextToken": token,
        }

    # --- modifications -----------------------------------------------------------------

    def _mod_view(self, rec: dict[str, Any], now: float) -> Result:
        out = dict(rec)
        if rec["ModificationState"] in ("modifying", "optimizing"):
            elapsed = max(0.0, now - rec["StartTime"])  # a clock stepped back is "just started"
            r = self.rules
            if elapsed < r.modifying_seconds:  # (so modifying_seconds > 0 here)
                out["ModificationState"] = "modifying"
                out["Progress"] = int(50 * elapsed / r.modifying_seconds)
            elif elapsed < r.modifying_seconds + r.optimizing_seconds:
                out["ModificationState"] = "optimizing"
                out["Progress"] = 50 + int(50 * (elapsed - r.modifying_seconds) / r.optimizing_seconds)
            else:
                out["ModificationState"] = "completed"
                out["Progress"] = 100
                out["EndTime"] = rec["StartTime"] + r.modifying_seconds + r.optimizing_seconds
        return out

    def modify_volume(self, ctx: Context, p: Params) -> Result:
        vol = self.store.volume(ctx, p["VolumeId"])
        # One unit: the rules see the history as it is, and the history (with its 4-per-24 h
        # count) commits with the modification itself, so it can never miss one.
        with self.engine.transaction() as tx:
            vol = self.engine.get_volume(vol.id, tx=tx)
            if vol.state not in ("available", "in-use"):
                raise ApiError("IncorrectState", f"Volume '{vol.id}' is in the '{vol.state}' state.")
            now = self.store.clock()
            history: list[dict[str, Any]] = self.engine.service_get(NS_VOLMOD, vol.id, tx=tx) or []
            if history:
                last = self._mod_view(history[-1], now)
                if last["ModificationState"] in ("modifying", "optimizing"):
                    raise ApiError("IncorrectModificationState",
                                   f"Volume {vol.id} cannot be modified in modification state "
                                   f"{last['ModificationState'].upper()}")
            recent = [h for h in history if now - h["StartTime"] < self.rules.window_seconds]
            if len(recent) >= self.rules.max_per_window:
                nxt = recent[-self.rules.max_per_window]["StartTime"] + self.rules.window_seconds
                raise ApiError("VolumeModificationRateExceeded",
                               f"You've reached the maximum modification rate per volume limit. "
                               f"Wait until {_iso(nxt)} before modifying volume {vol.id} again.")
            target_type, iops, throughput = modified_spec(
                (vol.volume_type, vol.iops, vol.throughput), p.get("VolumeType"), p.get("Iops"),
                p.get("Throughput"))
            size = p.get("Size")
            multi = p.get("MultiAttachEnabled")
            if (size in (None, vol.size_gib) and target_type == vol.volume_type and iops in (None, vol.iops)
                    and throughput in (None, vol.throughput) and multi in (None, vol.multi_attach_enabled)):
                raise ApiError("InvalidParameterValue",
                               f"New configuration for volume {vol.id} is identical to the current one")
            new = self.engine.modify_volume(
                vol.id, size_gib=size, volume_type=p.get("VolumeType"), iops=iops, throughput=throughput,
                multi_attach_enabled=multi, tx=tx)
            rec = {
                "VolumeId": vol.id,
                "ModificationState": "modifying",
                "TargetSize": new.size_gib, "TargetIops": new.iops, "TargetVolumeType": new.volume_type,
                "TargetThroughput": new.throughput,
                "TargetMultiAttachEnabled": bool(new.multi_attach_enabled),
                "OriginalSize": vol.size_gib, "OriginalIops": vol.iops, "OriginalVolumeType": vol.volume_type,
                "OriginalThroughput": vol.throughput,
                "OriginalMultiAttachEnabled": bool(vol.multi_attach_enabled),
                "Progress": 0, "StartTime": now,
            }
            history = [*recent, rec][-max(self.rules.max_per_window, 1):]
            self.engine.service_put(NS_VOLMOD, vol.id, history, tx=tx)
            self.cloud.meter.volume(tx, vol.id)
        return {"VolumeModification": rec}

    def describe_volumes_modifications(self, ctx: Context, p: Params) -> Result:
        now = self.store.clock()
        vols = {v.id: v for v in self.store.volumes(ctx)}
        ids = p.get("VolumeIds")
        if ids:
            for vid in ids:
                self.store.volume(ctx, vid)
        recs = []
        for vid, history in self.engine.service_items(NS_VOLMOD):
            if vid in vols and history and (not ids or vid in ids):
                recs.append(self._mod_view(history[-1], now))
        for vid in ids or []:
            if not any(r["VolumeId"] == vid for r in recs):
                raise ApiError("InvalidVolumeModification.NotFound", f"Modification for volume '{vid}' does not exist.")
        s = str
        table: dict[str, Extractor] = {
            "volume-id": lambda r: [r["VolumeId"]],
            "modification-state": lambda r: [r["ModificationState"]],
            "target-size": lambda r: [s(r["TargetSize"])],
            "target-iops": lambda r: [s(r["TargetIops"])],
            "target-volume-type": lambda r: [r["TargetVolumeType"]],
            "target-throughput": lambda r: [s(r["TargetThroughput"])],
            "target-multi-attach-enabled": lambda r: [_b(r["TargetMultiAttachEnabled"])],
            "original-size": lambda r: [s(r["OriginalSize"])],
            "original-iops": lambda r: [s(r["OriginalIops"])],
            "original-volume-type": lambda r: [r["OriginalVolumeType"]],
            "original-throughput": lambda r: [s(r["OriginalThroughput"])],
            "original-multi-attach-enabled": lambda r: [_b(r["OriginalMultiAttachEnabled"])],
            "start-time": lambda r: [_iso(r["StartTime"])],
        }
        recs = apply_filters(recs, p.get("Filters"), table, None)
        recs.sort(key=lambda r: r["VolumeId"])
        page, token = Paginator("volmods", 1, 500).page(
            recs, lambda r: [r["VolumeId"]], p.get("MaxResults"), p.get("NextToken"))
        return {"VolumesModifications": page, "NextToken": token}

    # --- attachments (the rules: ebsengine.cloud.instances) ----------------------------

    def attach_volume(self, ctx: Context, p: Params) -> Result:
        att = self.cloud.instances.attach_volume(self.scope(ctx), p["VolumeId"], p["InstanceId"],
                                                 p["Device"])
        return {"VolumeId": att.volume_id, "InstanceId": att.instance_id, "Device": att.device,
                "State": "attaching", "AttachTime": att.attach_time,
                "DeleteOnTermination": att.delete_on_termination}

    def detach_volume(self, ctx: Context, p: Params) -> Result:
        # Force only matters for an attachment a guest holds; these always detach at once
        att = self.cloud.instances.detach_volume(self.scope(ctx), p["VolumeId"],
                                                 p.get("InstanceId"), p.get("Device"),
                                                 bool(p.get("Force", False)))
        return {"VolumeId": att.volume_id, "InstanceId": att.instance_id, "Device": att.device,
                "State": "detaching", "AttachTime": att.attach_time,
                "DeleteOnTermination": att.delete_on_termination}
