"""AWS-only state kept beside the engine's resources, shared by the EC2 and EBS models.

Everything here lives in the engine's service key/value space, so it survives a restart
and is as durable as the volumes it describes:

=====================  ==========================  ============================================
namespace              key                          value
=====================  ==========================  ============================================
``aws.snapshot``       snapshot id                  ``{"region": str}`` -- region it was made in
``aws.direct``         snapshot id                  pending EBS-direct snapshot: ``{"timeout": min,
                                                    "last": epoch, "progress": int, ...}``
``aws.block``          ``<snap>/<sequence>``        ``{index: base64 SHA-256}`` of blocks put to a pending
                                                    snapshot (one group commit each; later keys win)
``aws.volmod``         volume id                    list of modification records (newest last)
``aws.snapattr``       snapshot id                  ``{"users": [...], "groups": [...]}``
``aws.token``          ``<region>|<action>|<tok>``  ``{"digest": str, "id": str, "time": epoch}``
``aws.secret``         ``hmac``                     hex key signing block and page tokens
=====================  ==========================  ============================================

Volumes need no record: a volume's region is its availability zone minus the zone letter.
Resources made through the library (no record) belong to the region of their volume, else
to ``default_region``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ebsengine import errors as engine_errors

from .errors import ApiError

NS_SNAPSHOT = "aws.snapshot"
NS_DIRECT = "aws.direct"
NS_VOLMOD = "aws.volmod"
NS_SNAPATTR = "aws.snapattr"
NS_TOKEN = "aws.token"
NS_SECRET = "aws.secret"

VOLUME_ID_RE = re.compile(r"^vol-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
SNAPSHOT_ID_RE = re.compile(r"^snap-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
INSTANCE_ID_RE = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")


class EngineLike(Protocol):
    """The slice of :class:`ebsengine.Engine` this package calls (see ENGINE_API.md)."""

    def get_volume(self, id: str) -> Any: ...
    def list_volumes(self) -> list[Any]: ...
    def get_snapshot(self, id: str) -> Any: ...
    def list_snapshots(self, volume_id: str | None = None) -> list[Any]: ...
    def fail_snapshot(self, snap_id: str) -> None: ...
    def service_get(self, namespace: str, key: str) -> Any: ...
    def service_put(self, namespace: str, key: str, value: Any) -> None: ...
    def service_items(self, namespace: str, prefix: str = "") -> list[tuple[str, Any]]: ...


@dataclass(frozen=True)
class Context:
    """Who asks and where: taken from the request (SigV4 credential scope)."""

    region: str
    account_id: str
    request_id: str


def region_of_zone(zone: str) -> str:
    """``us-east-1a`` -> ``us-east-1``."""
    return zone[:-1] if zone and zone[-1].isalpha() else zone


class AwsStore:
    """Lookups scoped to a region plus the persisted AWS-only records."""

    def __init__(self, engine: EngineLike, *, default_region: str = "us-east-1",
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.default_region = default_region
        self.clock = clock
        #: serialises check-then-act sequences (client tokens, modification rules)
        self.lock = threading.RLock()
        key = engine.service_get(NS_SECRET, "hmac")
        if key is None:
            key = secrets.token_hex(32)
            engine.service_put(NS_SECRET, "hmac", key)
        self._hmac_key = bytes.fromhex(str(key))

    # regions

    def volume_region(self, vol: Any) -> str:
        return region_of_zone(vol.availability_zone)

    def snapshot_region(self, snap: Any) -> str:
        rec = self.engine.service_get(NS_SNAPSHOT, snap.id)
        if rec and rec.get("region"):
            return str(rec["region"])
        try:
            return self.volume_region(self.engine.get_volume(snap.volume_id))
        except (engine_errors.EbsError, AttributeError, TypeError):
            return self.default_region

    def record_snapshot(self, snap_id: str, region: str) -> None:
        self.engine.service_put(NS_SNAPSHOT, snap_id, self.snapshot_record(snap_id, region)[2])

    @staticmethod
    def snapshot_record(snap_id: str, region: str) -> tuple[str, str, Any]:
        """The snapshot's region record, for an engine ``service=`` hook (same commit)."""
        return NS_SNAPSHOT, snap_id, {"region": region}

    def forget_snapshot(self, snap_id: str) -> None:
        for ns in (NS_SNAPSHOT, NS_DIRECT, NS_SNAPATTR):
            self.engine.service_put(ns, snap_id, None)

    # region-scoped lookups (EC2 error codes; the EBS model translates)

    def volume(self, ctx: Context, volume_id: str) -> Any:
        if not VOLUME_ID_RE.match(volume_id or ""):
            raise ApiError("InvalidVolumeID.Malformed", f'Invalid id: "{volume_id}" (expecting "vol-...")')
        try:
            vol = self.engine.get_volume(volume_id)
        except engine_errors.NotFound:
            vol = None
        if vol is None or self.volume_region(vol) != ctx.region:
            raise ApiError("InvalidVolume.NotFound", f"The volume '{volume_id}' does not exist.")
        return vol

    def snapshot(self, ctx: Context, snapshot_id: str) -> Any:
        if not SNAPSHOT_ID_RE.match(snapshot_id or ""):
            raise ApiError("InvalidSnapshotID.Malformed", f'Invalid id: "{snapshot_id}" (expecting "snap-...")')
        try:
            snap = self.engine.get_snapshot(snapshot_id)
        except engine_errors.NotFound:
            snap = None
        if snap is None or self.snapshot_region(snap) != ctx.region:
            raise ApiError("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")
        self.expire_pending(snap.id)
        return self.engine.get_snapshot(snapshot_id) if snap.state == "pending" else snap

    def volumes(self, ctx: Context) -> list[Any]:
        vols = [v for v in self.engine.list_volumes() if self.volume_region(v) == ctx.region]
        vols.sort(key=lambda v: (v.create_time, v.id))
        return vols

    def snapshots(self, ctx: Context) -> list[Any]:
        self.expire_pending()
        snaps = [s for s in self.engine.list_snapshots() if self.snapshot_region(s) == ctx.region]
        snaps.sort(key=lambda s: (s.start_time, s.id))
        return snaps

    # pending EBS-direct snapshots: Timeout

    def expire_pending(self, snap_id: str | None = None) -> None:
        """Fail pending direct snapshots idle longer than their Timeout (all, or just one)."""
        now = self.clock()
        if snap_id is not None:
            rec = self.engine.service_get(NS_DIRECT, snap_id)
            items = [(snap_id, rec)] if rec else []
        else:
            items = self.engine.service_items(NS_DIRECT)
        for sid, rec in items:
            if rec.get("state") != "pending":
                continue
            if now > float(rec["last"]) + 60 * float(rec["timeout"]):
                with self.lock:
                    try:
                        self.engine.fail_snapshot(sid)
                    except engine_errors.EbsError:
                        pass
                    rec = dict(rec, state="error")
                    self.engine.service_put(NS_DIRECT, sid, rec)

    # client tokens

    def token_lookup(self, ctx: Context, action: str, token: str) -> Any:
        return self.engine.service_get(NS_TOKEN, f"{ctx.region}|{action}|{token}")

    def token_store(self, ctx: Context, action: str, token: str, digest: str, resource_id: str) -> None:
        self.engine.service_put(*self.token_record(ctx, action, token, digest, resource_id))

    def token_record(self, ctx: Context, action: str, token: str, digest: str,
                     resource_id: str) -> tuple[str, str, Any]:
        """The ClientToken record, for an engine ``service=`` hook: committed with the
        resource it names, so a crash cannot leave one without the other."""
        return (NS_TOKEN, f"{ctx.region}|{action}|{token}",
                {"digest": digest, "id": resource_id, "time": self.clock()})

    @staticmethod
    def digest(params: dict[str, Any]) -> str:
        clean = {k: v for k, v in params.items() if k not in ("ClientToken", "DryRun")}
        return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()

    # signed opaque tokens (block tokens, page tokens): standard base64, <= 256 chars

    def sign(self, *fields: object) -> str:
        body = "|".join(str(f) for f in fields)
        mac = hmac.new(self._hmac_key, body.encode(), hashlib.sha256).digest()[:18]
        return base64.b64encode(mac).decode()

    def make_token(self, payload: str, *bound: object) -> str:
        """Token carrying ``payload`` (no ``|``), valid only with the same ``bound`` values."""
        mac = self.sign(payload, *bound)
        return base64.b64encode(f"{payload}|{mac}".encode()).decode()

    def open_token(self, token: str, *bound: object) -> str | None:
        """The payload of a token made by :meth:`make_token` with the same ``bound``, else None."""
        try:
            text = base64.b64decode(token, validate=True).decode()
            payload, mac = text.rsplit("|", 1)
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(mac, self.sign(payload, *bound)):
            return None
        return payload
