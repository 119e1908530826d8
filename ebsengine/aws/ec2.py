"""EC2 volume, snapshot and tag actions: AWS's rules on top of the engine.

One method per action, named like boto3's (``create_volume``), taking a :class:`Context`
and the action's parsed input dict (botocore member names) and returning its output dict.
The rules (volume types, sizes, IOPS defaults and limits, Multi-Attach, tags, ids,
ClientTokens) live in ``ebsengine.rules``, shared with the engine; this layer owns what only
the EC2 API has: regions, owner id, DryRun, TagSpecifications, Describe filters and
pagination, modification states and their rate limit, snapshot permissions, and the
transient states of create responses.

A request that changes several records (a resource and its AWS records, several snapshots,
the tags of several resources) makes them in one unit of work of the engine, so they commit
together or not at all; a refused request changes nothing.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ebsengine import errors as engine_errors
from ebsengine.rules import check_tag_key, check_tags, is_aws_id, modified_spec
from ebsengine.rules import tokens as token_rules

from .errors import ApiError
from .store import NS_DIRECT, NS_SNAPATTR, NS_VOLMOD, AwsStore, Context

Params = dict[str, Any]
Result = dict[str, Any]


class InstanceDirectory(Protocol):
    """Where AttachVolume/CreateSnapshots learn about instances (the future instance layer)."""

    def find(self, ctx: Context, instance_id: str) -> dict[str, Any] | None:
        """``{"availability_zone": ..., "state": ...}`` of a known instance, else None."""


class NoInstances:
    """No instance layer yet: every instance id is unknown."""

    def find(self, ctx: Context, instance_id: str) -> dict[str, Any] | None:
        return None


@dataclass
class ModificationRules:
    """Elastic Volumes timing and rate limit (AWS: up to 4 per rolling 24 h)."""

    modifying_seconds: float = 0.0
    optimizing_seconds: float = 0.0
    max_per_window: int = 4
    window_seconds: float = 86400.0


# --- filters and pagination ----------------------------------------------------------------


def _wildcard(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$", re.S)


Extractor = Callable[[Any], Iterable[str]]


def apply_filters(items: list[Any], filters: list[dict[str, Any]] | None, table: dict[str, Extractor],
                  tags: Callable[[Any], dict[str, str]] | None) -> list[Any]:
    """Keep items matching every filter (values within one filter OR; ``*``/``?`` wildcards).

    ``tag:<key>`` and ``tag-key`` work when ``tags`` is given. Unknown filter names raise
    ``InvalidParameterValue`` before anything is evaluated.
    """
    if not filters:
        return items
    match = compile_filters(filters, table, tags)
    return [item for item in items if match(item)]


def compile_filters(filters: list[dict[str, Any]] | None, table: dict[str, Extractor],
                    tags: Callable[[Any], dict[str, str]] | None) -> Callable[[Any], bool]:
    """The predicate of :func:`apply_filters`, to test items one by one while paging.
    Unknown filter names raise ``InvalidParameterValue`` here, before any item is read."""
    if not filters:
        return lambda item: True
    compiled: list[tuple[Extractor, list[re.Pattern[str]]]] = []
    for f in filters:
        name = f.get("Name") or ""
        values = [_wildcard(v) for v in f.get("Values") or []]
        if name.startswith("tag:") and tags is not None:
            key = name[4:]
            ext: Extractor = (lambda k: (lambda r: [tags(r)[k]] if k in tags(r) else []))(key)
        elif name == "tag-key" and tags is not None:
            ext = lambda r: list(tags(r))  # noqa: E731
        elif name == "tag-value" and tags is not None:
            ext = lambda r: list(tags(r).values())  # noqa: E731
        elif name in table:
            ext = table[name]
        else:
            raise ApiError("InvalidParameterValue", f"The filter '{name}' is invalid")
        compiled.append((ext, values))
    return lambda item: all(any(p.match(str(v)) for v in ext(item) for p in pats)
                            for ext, pats in compiled)


def exact_values(filters: list[dict[str, Any]] | None, name: str) -> list[str] | None:
    """The values of filter ``name`` when it is given once with no wildcard in any value
    (so that an index lookup can replace the scan), else None."""
    found = [f for f in filters or [] if f.get("Name") == name]
    if len(found) != 1:
        return None
    values = found[0].get("Values") or []
    if not values or any(any(c in v for c in "*?\\") for v in values):
        return None
    return [str(v) for v in values]


def _b(v: bool) -> str:
    return "true" if v else "false"


class Paginator:
    """MaxResults/NextToken over a list sorted by a stable key; tokens name the last key returned."""

    def __init__(self, kind: str, lo: int, hi: int) -> None:
        self.kind, self.lo, self.hi = kind, lo, hi

    def page(self, items: list[Any], key: Callable[[Any], list[Any]], max_results: int | None,
             next_token: str | None) -> tuple[list[Any], str | None]:
        if max_results is not None and max_results < self.lo:
            raise ApiError("InvalidParameterValue",
                           f"Value ( {max_results} ) for parameter maxResults is invalid. "
                           f"Expecting a value greater than {self.lo}.")
        if next_token:
            try:
                doc = json.loads(base64.b64decode(next_token, validate=True))
                if not isinstance(doc, dict) or doc.get("k") != self.kind:
                    raise ValueError
                after = doc["a"]
                items = [i for i in items if key(i) > after]  # a forged key may not compare
            except (ValueError, KeyError, TypeError):
                raise ApiError("InvalidParameterValue", f"Invalid value '{next_token}' for nextToken") from None
        if max_results is None and not next_token:
            return items, None
        limit = min(max_results if max_results is not None else self.hi, self.hi)
        page = items[:limit]
        if len(items) > limit:
            last = key(page[-1])
            token = base64.b64encode(json.dumps({"k": self.kind, "a": last}).encode()).decode()
            return page, token
        return page, None


class CursorPages:
    """MaxResults/NextToken for the engine's cursor paging (items in id order).

    A token names the last id of its page, signed (:meth:`AwsStore.make_token`) and bound to
    its kind and region, so a forged or foreign token is refused; the next page resumes
    right after that id, so paging costs O(page), and an item deleted meanwhile does not
    shift the pages.
    """

    def __init__(self, store: AwsStore, kind: str, id_prefix: str, lo: int = 5,
                 hi: int = 1000) -> None:
        self.store, self.kind, self.id_prefix, self.lo, self.hi = store, kind, id_prefix, lo, hi

    def open(self, ctx: Context, p: Params) -> tuple[str | None, int | None]:
        """``(after, limit)`` of the request; ``limit`` is None for an unpaged call."""
        max_results, token = p.get("MaxResults"), p.get("NextToken")
        if max_results is not None and max_results < self.lo:
            raise ApiError("InvalidParameterValue",
                           f"Value ( {max_results} ) for parameter maxResults is invalid. "
                           f"Expecting a value greater than {self.lo}.")
        after = None
        if token:
            after = self.store.open_token(token, "page", self.kind, ctx.region)
            if after is None or not is_aws_id(after, self.id_prefix):
                raise ApiError("InvalidParameterValue", f"Invalid value '{token}' for nextToken")
        if max_results is None and not token:
            return None, None
        return after, min(max_results if max_results is not None else self.hi, self.hi)

    def token(self, ctx: Context, last: str | None) -> str | None:
        return None if last is None else self.store.make_token(last, "page", self.kind, ctx.region)

    @staticmethod
    def in_memory(items: list[Any], after: str | None,
                  limit: int | None) -> tuple[list[Any], str | None]:
        """The same paging over an explicit list (id lookups)."""
        items = sorted((i for i in items if after is None or i.id > after), key=lambda i: i.id)
        if limit is None or len(items) <= limit:
            return items, None
        return items[:limit], items[limit - 1].id


# --- renderers (engine dataclass -> botocore output shape) ---------------------------------


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]] | None:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())] or None


def volume_view(vol: Any, state: str | None = None) -> Result:
    return {
        "VolumeId": vol.id,
        "Size": vol.size_gib,
        "SnapshotId": vol.snapshot_id or "",
        "AvailabilityZone": vol.availability_zone,
        "State": state or vol.state,
        "CreateTime": vol.create_time,
        "Attachments": [
            {
                "VolumeId": vol.id,
                "InstanceId": a.get("instance_id"),
                "Device": a.get("device"),
                "State": a.get("state", "attached"),
                "AttachTime": a.get("attach_time"),
                "DeleteOnTermination": bool(a.get("delete_on_termination", False)),
            }
            for a in (vol.attachments or [])
        ],
        "Tags": _tag_list(vol.tags),
        "VolumeType": vol.volume_type,
        "Iops": vol.iops,
        "Throughput": vol.throughput,
        "Encrypted": bool(vol.encrypted),
        "KmsKeyId": vol.kms_key_id,
        "MultiAttachEnabled": bool(vol.multi_attach_enabled),
    }


class Ec2Model:
    """The EC2 actions of issue 4 over an :class:`AwsStore`."""

    ACTIONS: ClassVar[dict[str, str]] = {
        "CreateVolume": "create_volume",
        "DeleteVolume": "delete_volume",
        "DescribeVolumes": "describe_volumes",
        "ModifyVolume": "modify_volume",
        "DescribeVolumesModifications": "describe_volumes_modifications",
        "DescribeVolumeStatus": "describe_volume_status",
        "AttachVolume": "attach_volume",
        "DetachVolume": "detach_volume",
        "CreateSnapshot": "create_snapshot",
        "CreateSnapshots": "create_snapshots",
        "DeleteSnapshot": "delete_snapshot",
        "DescribeSnapshots": "describe_snapshots",
        "CopySnapshot": "copy_snapshot",
        "ModifySnapshotAttribute": "modify_snapshot_attribute",
        "DescribeSnapshotAttribute": "describe_snapshot_attribute",
        "CreateTags": "create_tags",
        "DeleteTags": "delete_tags",
        "DescribeTags": "describe_tags",
    }

    def __init__(self, store: AwsStore, *, instances: InstanceDirectory | None = None,
                 modification: ModificationRules | None = None) -> None:
        self.store = store
        self.engine: Any = store.engine
        self.instances = instances or NoInstances()
        self.rules = modification or ModificationRules()

    def supports(self, action: str) -> bool:
        return action in self.ACTIONS

    def call(self, ctx: Context, action: str, params: Params) -> Result | None:
        """Run ``action``; DryRun answers ``DryRunOperation`` once the input has parsed."""
        if params.pop("DryRun", False):
            raise ApiError("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
        method: Callable[[Context, Params], Result | None] = getattr(self, self.ACTIONS[action])
        return method(ctx, params)

    # --- shared checks -----------------------------------------------------------------

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
            "OwnerId": ctx.account_id,
            "Description": snap.description or "",
            "VolumeSize": snap.volume_size_gib,
            "Encrypted": bool(snap.encrypted),
            "KmsKeyId": snap.kms_key_id,
            "Tags": _tag_list(snap.tags),
            "StorageTier": "standard",
            "CompletionTime": snap.completion_time if snap.state == "completed" and state is None else None,
            "FullSnapshotSizeInBytes": snap.full_size_bytes if snap.state == "completed" else None,
        }

    def _spec_tags(self, specs: list[dict[str, Any]] | None, resource_type: str) -> dict[str, str]:
        tags: dict[str, str] = {}
        for spec in specs or []:
            rtype = spec.get("ResourceType")
            if rtype != resource_type:
                raise ApiError("InvalidParameterValue",
                               f"'{rtype}' is not a valid taggable resource type for this operation.")
            for t in spec.get("Tags") or []:
                tags[t.get("Key", "")] = t.get("Value", "")
        return check_tags(tags)

    def _zone(self, ctx: Context, params: Params) -> str:
        zone: str | None = params.get("AvailabilityZone")
        zone_id: str | None = params.get("AvailabilityZoneId")
        if zone and zone_id:
            raise ApiError("InvalidParameterCombination",
                           "Only one of AvailabilityZone or AvailabilityZoneId can be specified")
        if zone_id:
            m = re.match(r"^[a-z0-9]+-az(\d+)$", zone_id)
            if not m or not 1 <= int(m.group(1)) <= 6:
                raise ApiError("InvalidParameterValue", f"Invalid availability zone ID: [{zone_id}]")
            zone = ctx.region + chr(ord("a") + int(m.group(1)) - 1)
        if not zone:
            raise ApiError("MissingParameter", "The request must contain the parameter AvailabilityZone")
        if not re.match("^" + re.escape(ctx.region) + "[a-z]$", zone):
            raise ApiError("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
        return zone

    def _instance(self, ctx: Context, instance_id: str) -> dict[str, Any]:
        if not is_aws_id(instance_id, "i"):
            raise ApiError("InvalidInstanceID.Malformed", f'Invalid id: "{instance_id}"')
        found = self.instances.find(ctx, instance_id)
        if found is None:
            raise ApiError("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")
        return found

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
        if snap_id:
            snap = self.store.snapshot(ctx, snap_id)
            if snap.state != "completed":
                raise ApiError("IncorrectState", f"Snapshot '{snap_id}' is not in the completed state")
        if p.get("KmsKeyId") and not p.get("Encrypted"):
            raise ApiError("InvalidParameterDependency",
                           "The parameter KmsKeyId requires the parameter Encrypted to be set.")
        if "VolumeInitializationRate" in p and not snap_id:
            raise ApiError("InvalidParameterCombination",
                           "VolumeInitializationRate can only be specified with SnapshotId")
        tags = self._spec_tags(p.get("TagSpecifications"), "volume")
        with self.engine.transaction() as tx:
            done = self._replay(ctx, token, digest, tx)  # a concurrent retry may have won
            if done is not None:
                return done
            vol = self.engine.create_volume(
                size, p.get("VolumeType") or "gp2", snapshot_id=snap_id or None, iops=p.get("Iops"),
                throughput=p.get("Throughput"), availability_zone=zone,
                multi_attach_enabled=bool(p.get("MultiAttachEnabled", False)),
                encrypted=bool(p.get("Encrypted", False)), kms_key_id=p.get("KmsKeyId"), tags=tags or None,
                tx=tx)
            if token is not None:  # commits with the volume: a crash cannot split them
                self.store.put_token(tx, ctx, "CreateVolume", token, digest, vol.id)
        return volume_view(vol, state="creating")

    def delete_volume(self, ctx: Context, p: Params) -> None:
        vol = self.store.volume(ctx, p["VolumeId"])
        with self.engine.transaction() as tx:
            self.engine.delete_volume(vol.id, tx=tx)
            self.store.forget_volume(tx, vol.id)

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
        region = ctx.region

        def keep(v: Any) -> bool:
            return self.store.volume_region(v) == region and match(v)

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

    def _snapshot_or_none(self, snapshot_id: str) -> Any:
        try:
            return self.engine.get_snapshot(snapshot_id)
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

    # --- attachments (no instance layer yet: instances come from self.instances) -------

    def attach_volume(self, ctx: Context, p: Params) -> Result:
        vol = self.store.volume(ctx, p["VolumeId"])
        inst = self._instance(ctx, p["InstanceId"])
        device = p["Device"]
        if not re.match(r"^/dev/(sd[a-z]\d{0,2}|xvd[a-z]{1,2}\d{0,2}|hd[a-z])$", device) and not re.match(
                r"^xvd[a-z]{1,2}$", device):
            raise ApiError("InvalidParameterValue",
                           f"Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name.")
        if inst.get("availability_zone") and inst["availability_zone"] != vol.availability_zone:
            raise ApiError("InvalidVolume.ZoneMismatch",
                           f"The volume '{vol.id}' is not in the same availability zone as instance "
                           f"'{p['InstanceId']}'")
        new = self.engine.attach_volume(vol.id, p["InstanceId"], device)
        att = next(a for a in new.attachments if a.get("instance_id") == p["InstanceId"])
        return {"VolumeId": vol.id, "InstanceId": p["InstanceId"], "Device": att.get("device", device),
                "State": "attaching", "AttachTime": att.get("attach_time") or self.store.clock(),
                "DeleteOnTermination": bool(att.get("delete_on_termination", False))}

    def detach_volume(self, ctx: Context, p: Params) -> Result:
        vol = self.store.volume(ctx, p["VolumeId"])
        instance_id = p.get("InstanceId")
        if instance_id:
            self._instance(ctx, instance_id)
        if not vol.attachments:
            raise ApiError("IncorrectState", f"Volume '{vol.id}' is in the '{vol.state}' state.")
        att = next((a for a in vol.attachments if not instance_id or a.get("instance_id") == instance_id), None)
        if att is None:
            raise ApiError("InvalidAttachment.NotFound",
                           f"The volume '{vol.id}' is not attached to instance '{instance_id}'")
        # Force only matters for an attachment a guest holds; these always detach at once
        self.engine.detach_volume(vol.id, instance_id=att.get("instance_id"))
        return {"VolumeId": vol.id, "InstanceId": att.get("instance_id"), "Device": att.get("device"),
                "State": "detaching", "AttachTime": att.get("attach_time"),
                "DeleteOnTermination": bool(att.get("delete_on_termination", False))}

    # --- snapshots ---------------------------------------------------------------------

    def create_snapshot(self, ctx: Context, p: Params) -> Result:
        vol = self.store.volume(ctx, p["VolumeId"])
        tags = self._spec_tags(p.get("TagSpecifications"), "snapshot")
        desc = p.get("Description") or ""
        if len(desc) > 255:
            raise ApiError("InvalidParameterValue", "Description must be at most 255 characters")
        with self.engine.transaction(flush=[vol.id]) as tx:
            snap = self.engine.create_snapshot(vol.id, description=desc, tags=tags or None, tx=tx)
            self.store.put_snapshot_region(tx, snap.id, ctx.region)
        return self._snapshot_view(ctx, snap, state="pending")

    def create_snapshots(self, ctx: Context, p: Params) -> Result:
        """One crash-consistent set: every snapshot of the set freezes in one unit of work."""
        spec = p["InstanceSpecification"]
        instance_id = spec.get("InstanceId")
        if not instance_id:
            raise ApiError("MissingParameter", "The request must contain the parameter InstanceSpecification.InstanceId")
        inst = self._instance(ctx, instance_id)
        tags = self._spec_tags(p.get("TagSpecifications"), "snapshot")
        excluded = set(spec.get("ExcludeDataVolumeIds") or [])
        root = inst.get("root_volume_id")
        if root and root in excluded:
            raise ApiError("InvalidParameterValue", "The root volume cannot be excluded")
        vols = [v for v in self.store.volumes(ctx)
                if any(a.get("instance_id") == instance_id for a in v.attachments)
                and v.id not in excluded and not (spec.get("ExcludeBootVolume") and v.id == root)]
        desc = p.get("Description") or ""
        plans = []
        for v in vols:
            t = dict(v.tags) if p.get("CopyTagsFromSource") == "volume" else {}
            t.update(tags)
            plans.append((v.id, check_tags(t)))
        snaps = []
        with self.engine.transaction(flush=[v.id for v in vols]) as tx:
            for vid, t in plans:
                snap = self.engine.create_snapshot(vid, description=desc, tags=t or None, tx=tx)
                self.store.put_snapshot_region(tx, snap.id, ctx.region)
                snaps.append(snap)
        out = []
        for snap in snaps:
            view = self._snapshot_view(ctx, snap, state="pending")
            out.append({k: view.get(k) for k in ("SnapshotId", "VolumeId", "State", "StartTime", "Progress",
                                                 "OwnerId", "Description", "VolumeSize", "Encrypted", "Tags")})
        return {"Snapshots": out}

    def delete_snapshot(self, ctx: Context, p: Params) -> None:
        snap = self.store.snapshot(ctx, p["SnapshotId"])
        with self.engine.transaction() as tx:
            self.engine.delete_snapshot(snap.id, tx=tx)
            self.store.forget_snapshot(tx, snap.id)

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
        table["owner-id"] = lambda s: [ctx.account_id]
        filters = p.get("Filters")
        match = compile_filters(filters, table, lambda s: s.tags)
        owners = p.get("OwnerIds")
        if owners and not any(o in ("self", ctx.account_id) for o in owners):
            return {"Snapshots": [], "NextToken": None}
        restorable: list[str] = p.get("RestorableByUserIds") or []
        others = bool(restorable) and not any(u in ("self", ctx.account_id) for u in restorable)

        def shared(s: Any) -> bool:
            """With RestorableByUserIds naming other accounts: only snapshots shared with
            one of them, or public ones."""
            if not others:
                return True
            perm = self.engine.service_get(NS_SNAPATTR, s.id) or {"users": [], "groups": []}
            return "all" in perm["groups"] or any(u in perm["users"] for u in restorable)

        region = ctx.region

        def keep(s: Any) -> bool:
            return self.store.snapshot_region(s) == region and match(s) and shared(s)

        if ids:
            found = {sid: self.store.snapshot(ctx, sid) for sid in ids}
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
        snap = self.store.snapshot(src_ctx, p["SourceSnapshotId"])
        if snap.state != "completed":
            raise ApiError("IncorrectState", f"Snapshot '{snap.id}' is not in the completed state")
        if p.get("KmsKeyId") and not p.get("Encrypted"):
            raise ApiError("InvalidParameterDependency",
                           "The parameter KmsKeyId requires the parameter Encrypted to be set.")
        if p.get("Encrypted") and not snap.encrypted:
            raise ApiError("InvalidParameterValue", "Encrypting a copy of an unencrypted snapshot is not supported")
        dur = p.get("CompletionDurationMinutes")
        if dur is not None and (dur < 15 or dur > 2880 or dur % 15):
            raise ApiError("InvalidParameterValue", "CompletionDurationMinutes must be a multiple of 15 in 15-2880")
        tags = self._spec_tags(p.get("TagSpecifications"), "snapshot")
        with self.engine.transaction() as tx:
            copy = self.engine.copy_snapshot(snap.id, description=p.get("Description") or "",
                                             tags=tags or None, tx=tx)
            self.store.put_snapshot_region(tx, copy.id, ctx.region)
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
            if e.get("UserId") is not None and not re.match(r"^\d{12}$", e["UserId"]):
                raise ApiError("InvalidParameterValue", f"Value ({e['UserId']}) for parameter userId is invalid")
        if snap.encrypted and any(e.get("Group") == "all" for e in add):
            raise ApiError("InvalidParameterValue", "Encrypted snapshots cannot be made public")
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

    # --- tags --------------------------------------------------------------------------

    def _resource(self, ctx: Context, rid: str) -> Any:
        if rid.startswith("vol-"):
            return self.store.volume(ctx, rid)
        if rid.startswith("snap-"):
            return self.store.snapshot(ctx, rid)
        raise ApiError("InvalidID", f"The ID '{rid}' is not valid")

    def create_tags(self, ctx: Context, p: Params) -> None:
        new = check_tags({t.get("Key", ""): t.get("Value", "") for t in p["Tags"]})
        resources = [self._resource(ctx, rid) for rid in p["Resources"]]
        with self.engine.transaction() as tx:  # every resource or none (the engine checks the sum)
            for r in resources:
                self.engine.set_tags(r.id, new, tx=tx)

    def delete_tags(self, ctx: Context, p: Params) -> None:
        resources = [self._resource(ctx, rid) for rid in p["Resources"]]
        tags = p.get("Tags")
        for t in tags or []:
            check_tag_key(t.get("Key", ""))
        with self.engine.transaction() as tx:
            for r in resources:
                if tags is None:
                    spec: dict[str, str | None] = dict.fromkeys(r.tags)
                else:
                    spec = {t.get("Key", ""): t.get("Value") for t in tags}
                if spec:
                    self.engine.delete_tags(r.id, spec, tx=tx)

    def describe_tags(self, ctx: Context, p: Params) -> Result:
        rows = []
        for v in self.store.volumes(ctx):
            rows += [{"ResourceId": v.id, "ResourceType": "volume", "Key": k, "Value": val} for k, val in v.tags.items()]
        for s in self.store.snapshots(ctx):
            rows += [{"ResourceId": s.id, "ResourceType": "snapshot", "Key": k, "Value": val}
                     for k, val in s.tags.items()]
        table: dict[str, Extractor] = {
            "resource-id": lambda r: [r["ResourceId"]],
            "resource-type": lambda r: [r["ResourceType"]],
            "key": lambda r: [r["Key"]],
            "value": lambda r: [r["Value"]],
        }
        rows = apply_filters(rows, p.get("Filters"), table, lambda r: {r["Key"]: r["Value"]})
        rows.sort(key=lambda r: (r["ResourceId"], r["Key"]))
        page, token = Paginator("tags", 5, 1000).page(
            rows, lambda r: [r["ResourceId"], r["Key"]], p.get("MaxResults"), p.get("NextToken"))
        return {"Tags": page, "NextToken": token}


def _iso(t: float) -> str:
    from .shapes import iso8601

    return iso8601(t)

