"""AWS-only state kept beside the engine's resources, shared by the EC2 and EBS models.

Everything here lives in the engine's service key/value space, so it survives a restart
and is as durable as the volumes it describes:

=====================  ==========================  ============================================
namespace              key                          value
=====================  ==========================  ============================================
``aws.snapshot``       snapshot id                  ``{"region": str, "owner": account}`` -- region
                                                    it was made in, account it belongs to
``aws.volume``         volume id                    ``{"owner": account}`` (none: open mode's)
``aws.direct``         snapshot id                  pending EBS-direct snapshot: ``{"timeout": min,
                                                    "last": epoch, "progress": int, "state": str}``
``aws.volmod``         volume id                    list of modification records (newest last)
``aws.snapattr``       snapshot id                  ``{"users": [...], "groups": [...]}``
``aws.token*``         see ``cloud/tokens.py``      ClientToken records (kept by the cloud layer)
``aws.secret``         ``hmac``                     hex key signing block and page tokens
=====================  ==========================  ============================================

Every record commits in the engine's unit of work together with the resource it describes
(``with engine.transaction() as tx``), so a crash or a refused step cannot split them: a
resource's records are written with it and deleted with it.

A volume's region is its availability zone minus the zone letter. Resources made through
the library (no record) belong to the region of their volume, else to ``default_region``,
and to open mode's account (``123456789012``).

Lookups are the caller's account's: another account's volume or snapshot is NotFound, as on
AWS, except a snapshot shared with the caller (createVolumePermission) where sharing reaches
(``shared=True``: DescribeSnapshots, CreateVolume, CopySnapshot, RunInstances).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ebsengine import errors as engine_errors
from ebsengine.cloud.scope import (
    NS_SNAPSHOT_ATTR,
    NS_SNAPSHOT_REGION,
    Scope,
    forget_volume_owner,
    put_snapshot_region,
    put_volume_owner,
    region_of_zone,
    snapshot_owner,
    snapshot_region,
    snapshot_usable_by,
    volume_owner,
)
from ebsengine.cloud.tokens import TOKEN_SWEEP, TokenStore
from ebsengine.engine import Engine, Transaction
from ebsengine.rules import is_aws_id

from .errors import ApiError

NS_SNAPSHOT = NS_SNAPSHOT_REGION
NS_DIRECT = "aws.direct"
NS_VOLMOD = "aws.volmod"
NS_SNAPATTR = NS_SNAPSHOT_ATTR
NS_SECRET = "aws.secret"


@dataclass(frozen=True)
class Context:
    """Who asks and where: taken from the request (SigV4 credential scope)."""

    region: str
    account_id: str
    request_id: str


class AwsStore:
    """Lookups scoped to a region plus the persisted AWS-only records."""

    def __init__(self, engine: Engine, *, default_region: str = "us-east-1",
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.default_region = default_region
        self.clock = clock
        self.tokens = TokenStore(engine, clock)
        key = engine.service_get(NS_SECRET, "hmac")
        if key is None:
            key = secrets.token_hex(32)
            engine.service_put(NS_SECRET, "hmac", key)
        self._hmac_key = bytes.fromhex(str(key))

    # regions

    def volume_region(self, vol: Any) -> str:
        return region_of_zone(vol.availability_zone)

    def snapshot_region(self, snap: Any) -> str:
        return snapshot_region(self.engine, snap, self.default_region)

    def put_snapshot_region(self, tx: Transaction, snap_id: str, ctx: Context) -> None:
        """Record the region a snapshot was made in and its owner (the caller's account), in
        the unit that makes it."""
        put_snapshot_region(self.engine, tx, snap_id, ctx.region, ctx.account_id)

    def put_volume_owner(self, tx: Transaction, volume_id: str, ctx: Context) -> None:
        """Record a volume's owner (the caller's account), in the unit that makes it."""
        put_volume_owner(self.engine, tx, volume_id, ctx.account_id)

    # owners

    def volume_owner(self, vol: Any) -> str:
        return volume_owner(self.engine, vol.id)

    def snapshot_owner(self, snap: Any) -> str:
        return snapshot_owner(self.engine, snap.id)

    def snapshot_usable(self, ctx: Context, snap: Any) -> bool:
        """Whether the caller owns the snapshot or may restore it (createVolumePermission)."""
        return snapshot_usable_by(self.engine, snap.id, ctx.account_id)

    def owns_volume(self, ctx: Context, vol: Any) -> bool:
        """The volume is in the caller's region and account."""
        return self.volume_region(vol) == ctx.region and self.volume_owner(vol) == ctx.account_id

    def forget_snapshot(self, tx: Transaction, snap_id: str) -> None:
        """Drop a snapshot's records, in the unit that deletes it."""
        for ns in (NS_SNAPSHOT, NS_DIRECT, NS_SNAPATTR):
            self.engine.service_put(ns, snap_id, None, tx=tx)
        self.drop_tokens(tx, snap_id)

    def forget_volume(self, tx: Transaction, volume_id: str) -> None:
        """Drop a volume's records, in the unit that deletes it."""
        self.engine.service_put(NS_VOLMOD, volume_id, None, tx=tx)
        forget_volume_owner(self.engine, tx, volume_id)
        self.drop_tokens(tx, volume_id)

    # region-scoped lookups (EC2 error codes; the EBS model translates)

    def volume(self, ctx: Context, volume_id: str) -> Any:
        if not is_aws_id(volume_id, "vol"):
            raise ApiError("InvalidVolumeID.Malformed", f'Invalid id: "{volume_id}" (expecting "vol-...")')
        try:
            vol = self.engine.get_volume(volume_id)
        except engine_errors.NotFound:
            vol = None
        if vol is None or not self.owns_volume(ctx, vol):
            raise ApiError("InvalidVolume.NotFound", f"The volume '{volume_id}' does not exist.")
        return vol

    def snapshot(self, ctx: Context, snapshot_id: str, *, shared: bool = False) -> Any:
        """The caller's snapshot in the request's region (``shared``: or one another account
        lets it restore); InvalidSnapshot.NotFound otherwise."""
        if not is_aws_id(snapshot_id, "snap"):
            raise ApiError("InvalidSnapshotID.Malformed", f'Invalid id: "{snapshot_id}" (expecting "snap-...")')
        try:
            snap = self.engine.get_snapshot(snapshot_id)
        except engine_errors.NotFound:
            snap = None
        if snap is None or self.snapshot_region(snap) != ctx.region or not (
                self.snapshot_usable(ctx, snap) if shared
                else self.snapshot_owner(snap) == ctx.account_id):
            raise ApiError("InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist.")
        self.expire_pending(snap.id)
        return self.engine.get_snapshot(snapshot_id) if snap.state == "pending" else snap

    def volumes(self, ctx: Context) -> list[Any]:
        vols = [v for v in self.engine.list_volumes() if self.owns_volume(ctx, v)]
        vols.sort(key=lambda v: (v.create_time, v.id))
        return vols

    def snapshots(self, ctx: Context) -> list[Any]:
        self.expire_pending()
        snaps = [s for s in self.engine.list_snapshots()
                 if self.snapshot_region(s) == ctx.region and self.snapshot_owner(s) == ctx.account_id]
        snaps.sort(key=lambda s: (s.start_time, s.id))
        return snaps

    # pending EBS-direct snapshots: Timeout

    def expire_pending(self, snap_id: str | None = None) -> None:
        """Fail pending direct snapshots idle longer than their Timeout (all, or just one).

        Each one fails in a unit of its own, together with its record, and only if it is
        still pending then (a concurrent CompleteSnapshot wins cleanly)."""
        now = self.clock()
        if snap_id is not None:
            rec = self.engine.service_get(NS_DIRECT, snap_id)
            items = [(snap_id, rec)] if rec else []
        else:
            items = self.engine.service_items(NS_DIRECT)
        for sid, rec in items:
            if not _timed_out(rec, now):
                continue
            with self.engine.transaction() as tx:
                cur = self.engine.service_get(NS_DIRECT, sid, tx=tx)
                if cur is None or not _timed_out(cur, now):
                    continue
                try:
                    snap = self.engine.get_snapshot(sid, tx=tx)
                except engine_errors.NotFound:
                    snap = None
                if snap is None or snap.state != "pending":  # a record its snapshot outlived
                    self.engine.service_put(NS_DIRECT, sid, None, tx=tx)
                    continue
                self.engine.fail_snapshot(sid, tx=tx)
                self.engine.service_put(NS_DIRECT, sid, dict(cur, state="error"), tx=tx)

    # client tokens (records: ebsengine/cloud/tokens.py; rules: ebsengine/rules/tokens.py)

    def token_previous(self, ctx: Context, action: str, token: str, digest: str,
                       tx: Transaction | None = None) -> str | None:
        """The id of the resource an earlier request with this token made, or None when this
        request is new. Raises IdempotencyMismatch (token reused with other parameters)."""
        return self.tokens.previous(Scope(ctx.region, ctx.account_id), action, token, digest, tx=tx)

    def put_token(self, tx: Transaction, ctx: Context, action: str, token: str, digest: str,
                  resource_id: str) -> None:
        """Record a token in the unit that makes its resource (and sweep expired ones)."""
        self.tokens.put(tx, Scope(ctx.region, ctx.account_id), action, token, digest, resource_id)

    def drop_tokens(self, tx: Transaction, resource_id: str) -> None:
        """Forget the tokens that made a resource, in the unit that deletes it."""
        self.tokens.drop(tx, resource_id)

    def sweep_tokens(self, tx: Transaction, limit: int = TOKEN_SWEEP) -> int:
        return self.tokens.sweep(tx, limit)

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


def _timed_out(rec: dict[str, Any], now: float) -> bool:
    return rec.get("state") == "pending" and now > float(rec["last"]) + 60 * float(rec["timeout"])
