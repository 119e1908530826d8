"""EBS direct APIs (service ``ebs``): AWS's rules over the engine's 512 KiB block calls.

Owned here: block and page tokens (HMAC-signed, so validating them needs no lookup),
per-block checksums of pending snapshots and the LINEAR aggregate checked at completion,
ChangedBlocksCount, Timeout of idle pending snapshots, ClientToken idempotency of
StartSnapshot, progress, region scoping and the ValidationException reasons.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, ClassVar

from ebsengine import errors as engine_errors
from ebsengine.cloud.encryption import EbsEncryption
from ebsengine.cloud.meter import Meter
from ebsengine.cloud.pricing import DIRECT_API
from ebsengine.cloud.scope import Scope
from ebsengine.rules import EBS_DIRECT_TAG_LIMITS, MAX_SNAPSHOT_GIB, check_tags, is_aws_id
from ebsengine.rules import tokens as token_rules

from .errors import ApiError
from .store import NS_DIRECT, AwsStore, Context

BLOCK_SIZE = 524288
BLOCKS_PER_GIB = (1 << 30) // BLOCK_SIZE
BLOCK_TOKEN_TTL = 7 * 86400.0
PAGE_TOKEN_TTL = 3600.0
DEFAULT_TIMEOUT_MIN = 60
#: a pending snapshot's "last activity" is persisted at most this often (Timeout is minutes)
ACTIVITY_PERSIST_SECONDS = 5.0

Params = dict[str, Any]
Result = dict[str, Any]


def _validation(message: str, reason: str) -> ApiError:
    return ApiError("ValidationException", message, reason=reason)


def _not_found(snapshot_id: str) -> ApiError:
    return ApiError("ResourceNotFoundException", f"The snapshot '{snapshot_id}' does not exist.",
                    reason="SNAPSHOT_NOT_FOUND")


def checksum(data: Any) -> str:
    """Base64 SHA-256 of a block, as in ``x-amz-Checksum``."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class EbsModel:
    """The six EBS direct-API operations over an :class:`AwsStore`."""

    ACTIONS: ClassVar[dict[str, str]] = {
        "StartSnapshot": "start_snapshot",
        "PutSnapshotBlock": "put_snapshot_block",
        "CompleteSnapshot": "complete_snapshot",
        "ListSnapshotBlocks": "list_snapshot_blocks",
        "ListChangedBlocks": "list_changed_blocks",
        "GetSnapshotBlock": "get_snapshot_block",
    }

    def __init__(self, store: AwsStore) -> None:
        self.store = store
        self.engine: Any = store.engine
        #: snapshot id -> last activity persisted (avoids one store write per block for Timeout)
        self._persisted_activity: dict[str, float] = {}
        #: the cost meter (set by the app): counts the billable calls, meters completions
        self.meter: Meter | None = None
        #: the Region's encryption by default and default key (stored in the engine)
        self.encryption = EbsEncryption(store.engine)

    def _count(self, ctx: Context, action: str, n: int = 1) -> None:
        if self.meter is not None:
            self.meter.count(ctx.region, DIRECT_API[action], n, ctx.account_id)

    def call(self, ctx: Context, action: str, params: Params) -> Result:
        return getattr(self, self.ACTIONS[action])(ctx, params)  # type: ignore[no-any-return]

    # --- lookups -------------------------------------------------------------------------

    def _snapshot(self, ctx: Context, snapshot_id: str) -> Any:
        if not is_aws_id(snapshot_id, "snap"):
            raise _validation(f"Invalid snapshot id: {snapshot_id}", "INVALID_SNAPSHOT_ID")
        try:
            return self.store.snapshot(ctx, snapshot_id)
        except ApiError:
            raise _not_found(snapshot_id) from None

    def _completed(self, ctx: Context, snapshot_id: str) -> Any:
        snap = self._snapshot(ctx, snapshot_id)
        if snap.state != "completed":
            raise _validation(f"The snapshot '{snapshot_id}' is in the {snap.state} state; "
                              "only completed snapshots can be read", "INVALID_SNAPSHOT_ID")
        return snap

    def _pending(self, ctx: Context, snapshot_id: str) -> tuple[Any, dict[str, Any]]:
        snap = self._snapshot(ctx, snapshot_id)
        rec = self.engine.service_get(NS_DIRECT, snap.id)
        if snap.state == "pending" and rec is None:
            # A pending snapshot without its record (made through the library, or by a
            # release that did not commit the two together): adopt it with the default
            # Timeout counted from its start, so it can still be written, completed, or time
            # out (never stuck pending for ever). Only while it is still pending.
            with self.engine.transaction() as tx:
                snap = self.engine.get_snapshot(snap.id, tx=tx)
                rec = self.engine.service_get(NS_DIRECT, snap.id, tx=tx)
                if snap.state == "pending" and rec is None:
                    rec = {"state": "pending", "timeout": DEFAULT_TIMEOUT_MIN, "last": snap.start_time,
                           "progress": snap.progress}
                    self.engine.service_put(NS_DIRECT, snap.id, rec, tx=tx)
        if snap.state == "error" and rec and rec.get("state") == "error":
            raise _validation(f"The snapshot '{snapshot_id}' timed out waiting for writes and was cancelled",
                              "WRITE_REQUEST_TIMEOUT")
        if snap.state != "pending" or rec is None:
            raise _validation(f"The snapshot '{snapshot_id}' is in the {snap.state} state; "
                              "blocks can only be written to a pending snapshot", "INVALID_SNAPSHOT_ID")
        return snap, rec

    def _touch(self, snap_id: str, **changes: Any) -> None:
        """Persist activity (for Timeout) and progress of a pending snapshot.

        A read-modify-write of the record in one unit, and only while the record still says
        pending: a CompleteSnapshot (or a timeout) that ended the snapshot since this block
        was put is never undone by writing back an older copy of the record."""
        now = self.store.clock()
        if not changes and now - self._persisted_activity.get(snap_id, 0.0) < ACTIVITY_PERSIST_SECONDS:
            return
        with self.engine.transaction() as tx:
            cur = self.engine.service_get(NS_DIRECT, snap_id, tx=tx)
            if cur is None or cur.get("state") != "pending":
                return
            self.engine.service_put(NS_DIRECT, snap_id, dict(cur, last=now, **changes), tx=tx)
        self._persisted_activity[snap_id] = now

    # --- writing -------------------------------------------------------------------------

    def start_snapshot(self, ctx: Context, p: Params) -> Result:
        size = int(p["VolumeSize"])
        if not 1 <= size <= MAX_SNAPSHOT_GIB:
            raise _validation(f"Volume size {size} GiB is outside 1-{MAX_SNAPSHOT_GIB}", "INVALID_VOLUME_SIZE")
        # AWS's encryption outcomes for StartSnapshot ("Encryption outcomes for EBS direct
        # APIs"): Encrypted (true or false) and ParentSnapshotId never go together, nor
        # KmsKeyArn and a parent (a child takes its parent's key); KmsKeyArn needs
        # Encrypted=true; with encryption by default on, an unencrypted snapshot (Encrypted=
        # false, or an unencrypted parent) is refused and Encrypted omitted means encrypted
        # under the Region's default key. Every refusal is a ValidationException.
        parent_id = p.get("ParentSnapshotId")
        given = p.get("Encrypted")
        encrypted = bool(given)
        kms_arn = p.get("KmsKeyArn") or None
        if parent_id and given is not None:
            raise _validation("ParentSnapshotId cannot be combined with Encrypted", "INVALID_PARAMETER_VALUE")
        if parent_id and kms_arn:
            raise _validation("KmsKeyArn cannot be combined with ParentSnapshotId: a snapshot takes "
                              "its parent's key", "INVALID_PARAMETER_VALUE")
        if kms_arn and not encrypted:
            raise _validation("KmsKeyArn requires Encrypted", "INVALID_PARAMETER_VALUE")
        timeout = int(p.get("Timeout") or DEFAULT_TIMEOUT_MIN)
        if not 10 <= timeout <= 4320:
            raise _validation("Timeout must be between 10 and 4320 minutes", "INVALID_PARAMETER_VALUE")
        tags = check_tags({t.get("Key") or "": t.get("Value") or "" for t in p.get("Tags") or []},
                          EBS_DIRECT_TAG_LIMITS)
        token = token_rules.check_client_token(p.get("ClientToken"), token_rules.EBS_DIRECT_TOKEN_MAX)
        digest = token_rules.request_digest(p)
        done = self._replay(ctx, token, digest)
        if done is not None:
            return done
        scope = Scope(ctx.region, ctx.account_id)
        by_default = self.encryption.enabled(scope)
        if parent_id:
            parent = self._snapshot(ctx, parent_id)  # region-scoped; the engine checks the rest
            if parent.state != "completed":
                raise _validation(f"The parent snapshot '{parent_id}' is not completed", "INVALID_SNAPSHOT_ID")
            if by_default and not parent.encrypted:
                raise _validation("Encryption by default is enabled: a snapshot cannot start from the "
                                  f"unencrypted parent '{parent_id}' (copy it encrypted first)",
                                  "INVALID_PARAMETER_VALUE")
        elif by_default and given is False:
            raise _validation("Encryption by default is enabled: unencrypted snapshots cannot be made",
                              "INVALID_PARAMETER_VALUE")
        kms = None
        if not parent_id:  # the key named, else the Region's default key (None: alias/aws/ebs)
            encrypted, kms = self.encryption.resolve(scope, encrypted=encrypted,
                                                                 kms_key_id=kms_arn)
        now = self.store.clock()
        # The snapshot, its region, its Timeout bookkeeping and its ClientToken: one unit.
        with self.engine.transaction() as tx:
            done = self._replay(ctx, token, digest, tx)
            if done is not None:
                return done
            try:
                snap = self.engine.start_snapshot(size, parent_snapshot_id=parent_id or None,
                                                  description=p.get("Description") or "", tags=tags or None,
                                                  encrypted=encrypted, kms_key_id=kms, region=ctx.region,
                                                  account=ctx.account_id, tx=tx)
            except engine_errors.KmsError as exc:
                if parent_id:  # the parent's key: a dependency (errors.ebs_error)
                    raise
                # the key named (or the default) is unknown, disabled or not for EBS
                raise _validation(f"The KMS key is not valid for this snapshot: {exc}",
                                  "INVALID_CUSTOMER_KEY") from None
            self.store.put_snapshot_region(tx, snap.id, ctx)
            self.engine.service_put(NS_DIRECT, snap.id, {"state": "pending", "timeout": timeout, "last": now,
                                                         "progress": 0}, tx=tx)
            if token is not None:
                self.store.put_token(tx, ctx, "StartSnapshot", token, digest, snap.id)
        self._persisted_activity[snap.id] = now
        return self._start_view(ctx, snap)

    def _replay(self, ctx: Context, token: str | None, digest: str, tx: Any = None) -> Result | None:
        """The first response of a StartSnapshot retried with its ClientToken, else None (a new
        request). The same token with other parameters is a ConflictException."""
        if token is None:
            return None
        try:
            prev = self.store.token_previous(ctx, "StartSnapshot", token, digest, tx=tx)
        except engine_errors.IdempotencyMismatch as exc:
            raise ApiError("ConflictException", str(exc), status=409) from None
        if prev is None:
            return None
        try:
            snap = self.engine.get_snapshot(prev, tx=tx)
        except engine_errors.NotFound:  # deleted outside this API: a new request
            return None
        return self._start_view(ctx, snap)

    def _start_view(self, ctx: Context, snap: Any) -> Result:
        return {
            "SnapshotId": snap.id,
            "OwnerId": ctx.account_id,
            "Status": snap.state,
            "StartTime": snap.start_time,
            "VolumeSize": snap.volume_size_gib,
            "BlockSize": BLOCK_SIZE,
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(snap.tags.items())] or None,
            "ParentSnapshotId": snap.parent_id,
            "Description": snap.description or None,
            "KmsKeyArn": snap.kms_key_id if snap.encrypted else None,
            "SseType": "sse-kms" if snap.encrypted else "none",
        }

    def put_snapshot_block(self, ctx: Context, p: Params) -> Result:
        """Verify DataLength and the SHA-256 checksum, then hand the (unread-copied) body to the engine."""
        snap, rec = self._pending(ctx, p["SnapshotId"])
        index = int(p["BlockIndex"])
        if not 0 <= index < snap.volume_size_gib * BLOCKS_PER_GIB:
            raise _validation(f"Block index {index} is beyond the volume size extent", "INVALID_BLOCK")
        if p["DataLength"] != BLOCK_SIZE:
            raise _validation(f"DataLength must be {BLOCK_SIZE}", "INVALID_PARAMETER_VALUE")
        data = p["BlockData"]
        if len(data) != p["DataLength"]:
            raise _validation(f"Received {len(data)} bytes but x-amz-Data-Length is {p['DataLength']}",
                              "INVALID_PARAMETER_VALUE")
        if p["ChecksumAlgorithm"] != "SHA256":
            raise _validation("ChecksumAlgorithm must be SHA256", "INVALID_PARAMETER_VALUE")
        digest = checksum(data)
        if digest != p["Checksum"]:
            raise _validation("The checksum of the block data does not match x-amz-Checksum",
                              "INVALID_PARAMETER_VALUE")
        progress = p.get("Progress")
        if progress is not None and not 0 <= progress <= 100:
            raise _validation("Progress must be between 0 and 100", "INVALID_PARAMETER_VALUE")
        # The checksum is stored with the block in the same (group-)commit: durable together.
        self.engine.put_snapshot_block(snap.id, index, data, checksum=digest)
        if progress is not None and progress != rec.get("progress"):
            self._touch(snap.id, progress=progress)
        else:
            self._touch(snap.id)
        self._count(ctx, "PutSnapshotBlock")
        return {"Checksum": digest, "ChecksumAlgorithm": "SHA256"}

    def complete_snapshot(self, ctx: Context, p: Params) -> Result:
        snap, _ = self._pending(ctx, p["SnapshotId"])
        # The checks run inside the sealing unit (verify below), so a block put concurrently
        # is either counted here or refused as not pending; the record goes in the same commit.
        with self.engine.transaction() as tx:
            self.engine.complete_snapshot(snap.id, verify=lambda written: self._check_completion(p, written),
                                          tx=tx)
            self.engine.service_put(NS_DIRECT, snap.id, None, tx=tx)
            if self.meter is not None:
                self.meter.snapshot(tx, snap.id)
        self._persisted_activity.pop(snap.id, None)
        return {"Status": "completed"}

    @staticmethod
    def _check_completion(p: Params, written: dict[int, str]) -> None:
        """ChangedBlocksCount and the LINEAR aggregate against the blocks written."""
        count = p["ChangedBlocksCount"]
        if count < 0 or count != len(written):
            raise _validation(f"ChangedBlocksCount {count} does not match the {len(written)} blocks written",
                              "INVALID_PARAMETER_VALUE")
        given = p.get("Checksum")
        if given is not None or p.get("ChecksumAlgorithm") or p.get("ChecksumAggregationMethod"):
            if p.get("ChecksumAlgorithm", "SHA256") != "SHA256":
                raise _validation("ChecksumAlgorithm must be SHA256", "INVALID_PARAMETER_VALUE")
            if p.get("ChecksumAggregationMethod", "LINEAR") != "LINEAR":
                raise _validation("ChecksumAggregationMethod must be LINEAR", "INVALID_PARAMETER_VALUE")
            if given is None:
                raise _validation("x-amz-Checksum is required with a checksum algorithm",
                                  "INVALID_PARAMETER_VALUE")
            sums = [written[i] for i in sorted(written)]
            raw = hashlib.sha256(b"".join(base64.b64decode(s) for s in sums)).digest()
            text = hashlib.sha256("".join(sums).encode()).digest()
            if given not in (base64.b64encode(raw).decode(), base64.b64encode(text).decode()):
                raise _validation("The aggregated checksum does not match the blocks written",
                                  "INVALID_PARAMETER_VALUE")

    # --- reading -------------------------------------------------------------------------

    def _page_start(self, token: str | None, start: int | None, *bound: object) -> tuple[int, float]:
        """First block index of this page: the page token wins over StartingBlockIndex."""
        now = self.store.clock()
        if token:
            payload = self.store.open_token(token, "page", *bound)
            if payload is None:
                raise _validation("The page token is not valid", "INVALID_PAGE_TOKEN")
            nxt, expiry = payload.split(":")
            if float(expiry) < now:
                raise _validation("The page token has expired", "INVALID_PAGE_TOKEN")
            return int(nxt), now
        return int(start or 0), now

    def _page_token(self, nxt: int, now: float, *bound: object) -> str:
        return self.store.make_token(f"{nxt}:{int(now + PAGE_TOKEN_TTL)}", "page", *bound)

    def _block_token(self, snap_id: str, index: int, expiry: int) -> str:
        return self.store.make_token(str(expiry), "block", snap_id, index)

    def list_snapshot_blocks(self, ctx: Context, p: Params) -> Result:
        snap = self._completed(ctx, p["SnapshotId"])
        start, now = self._page_start(p.get("NextToken"), p.get("StartingBlockIndex"), snap.id)
        limit = int(p.get("MaxResults") or 10000)
        blocks = self.engine.list_snapshot_blocks(snap.id, start)
        page = blocks[:limit]
        expiry = int(now + BLOCK_TOKEN_TTL)
        out: Result = {
            "Blocks": [{"BlockIndex": i, "BlockToken": self._block_token(snap.id, i, expiry)} for i in page],
            "ExpiryTime": float(expiry),
            "VolumeSize": snap.volume_size_gib,
            "BlockSize": BLOCK_SIZE,
        }
        if len(blocks) > limit:
            out["NextToken"] = self._page_token(blocks[limit], now, snap.id)
        self._count(ctx, "ListSnapshotBlocks")
        return out

    def list_changed_blocks(self, ctx: Context, p: Params) -> Result:
        second = self._completed(ctx, p["SecondSnapshotId"])
        first_id = p.get("FirstSnapshotId")
        first = self._completed(ctx, first_id) if first_id else None
        if first is not None and first.id == second.id:
            raise _validation("FirstSnapshotId and SecondSnapshotId must differ", "INVALID_PARAMETER_VALUE")
        start, now = self._page_start(p.get("NextToken"), p.get("StartingBlockIndex"),
                                      first.id if first else "", second.id)
        limit = int(p.get("MaxResults") or 10000)
        try:
            changed = self.engine.list_changed_blocks(first.id if first else None, second.id, start)
        except engine_errors.UnrelatedSnapshots as exc:
            raise _validation(str(exc) or "The snapshots are not related", "UNRELATED_SNAPSHOTS") from None
        page = changed[:limit]
        expiry = int(now + BLOCK_TOKEN_TTL)
        in_first: set[int] = set()
        in_second: set[int] = set()
        if page:
            in_second = {i for i in self.engine.list_snapshot_blocks(second.id, page[0]) if i <= page[-1]}
            if first is not None:
                in_first = {i for i in self.engine.list_snapshot_blocks(first.id, page[0]) if i <= page[-1]}
        rows = []
        for i in page:
            row: dict[str, Any] = {"BlockIndex": i}
            if i in in_first and first is not None:
                row["FirstBlockToken"] = self._block_token(first.id, i, expiry)
            if i in in_second:
                row["SecondBlockToken"] = self._block_token(second.id, i, expiry)
            rows.append(row)
        out: Result = {
            "ChangedBlocks": rows,
            "ExpiryTime": float(expiry),
            "VolumeSize": second.volume_size_gib,
            "BlockSize": BLOCK_SIZE,
        }
        if len(changed) > limit:
            out["NextToken"] = self._page_token(changed[limit], now, first.id if first else "", second.id)
        self._count(ctx, "ListChangedBlocks")
        return out

    def get_snapshot_block(self, ctx: Context, p: Params) -> Result:
        snap = self._completed(ctx, p["SnapshotId"])
        index = int(p["BlockIndex"])
        if not 0 <= index < snap.volume_size_gib * BLOCKS_PER_GIB:
            raise _validation(f"Block index {index} is beyond the volume size extent", "INVALID_BLOCK")
        payload = self.store.open_token(p["BlockToken"], "block", snap.id, index)
        if payload is None or float(payload) < self.store.clock():
            raise _validation("The block token is not valid for this snapshot and block index",
                              "INVALID_BLOCK_TOKEN")
        data = self.engine.read_snapshot_block(snap.id, index)
        self._count(ctx, "GetSnapshotBlock")
        return {"BlockData": data, "DataLength": len(data), "Checksum": checksum(data),
                "ChecksumAlgorithm": "SHA256"}
