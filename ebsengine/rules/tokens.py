"""ClientToken idempotency: AWS's rules, as pure functions over token records.

A request carrying a ClientToken creates its resource once: a retry with the same token and
the same parameters gets the first request's resource; the same token with other parameters
is refused (:class:`IdempotencyMismatch`; the EBS direct API answers ConflictException).
boto3 fills in a fresh token itself for CreateVolume and StartSnapshot, so every such call
leaves a record.

Lifetime. AWS documents tokens as valid "for at least 24 hours" (EC2 API reference,
"Ensuring idempotency"). Here a token record lives ``TOKEN_TTL`` (24 h) from the request that
made it, and no longer than its resource: deleting the resource drops its token in the same
commit. A retry after either is a new request. Records past their TTL are ignored at once
and swept in time order (see :func:`expiry_key`), so they cost nothing once expired.

A record is ``{"digest": str, "id": resource id, "time": epoch}`` stored under
:func:`token_key`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..errors import IdempotencyMismatch, InvalidParameter

TOKEN_TTL = 24 * 3600.0
#: longest token: EC2 allows 64 ASCII characters, the EBS direct API's model 255
EC2_TOKEN_MAX = 64
EBS_DIRECT_TOKEN_MAX = 255


def check_client_token(token: object, max_length: int = EC2_TOKEN_MAX) -> str | None:
    """The token to use (None when absent or empty), or InvalidParameter for one AWS would
    refuse: not text, longer than ``max_length``, or not printable ASCII without spaces."""
    if token is None or token == "":
        return None
    if not isinstance(token, str) or len(token) > max_length or \
            any(not 0x21 <= ord(c) <= 0x7E for c in token):
        raise InvalidParameter(f"Value ({token!r}) for parameter clientToken is invalid: at "
                               f"most {max_length} printable ASCII characters.")
    return token


def request_digest(params: dict[str, Any]) -> str:
    """What must match for a retry to count as the same request: every parameter but the
    token itself and DryRun."""
    clean = {k: v for k, v in params.items() if k not in ("ClientToken", "DryRun")}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()


def token_key(region: str, action: str, token: str) -> str:
    """Tokens are scoped to a region and an action."""
    return f"{region}|{action}|{token}"


def token_record(digest: str, resource_id: str, now: float) -> dict[str, Any]:
    return {"digest": digest, "id": resource_id, "time": now}


def expired(record: dict[str, Any], now: float) -> bool:
    return now >= float(record["time"]) + TOKEN_TTL


def previous(record: dict[str, Any] | None, digest: str, token: str, now: float) -> str | None:
    """The resource id an earlier request with this token made, or None when this request
    is new (no record, or one past its TTL). Raises IdempotencyMismatch when the token was
    used with other parameters."""
    if record is None or expired(record, now):
        return None
    if record["digest"] != digest:
        raise IdempotencyMismatch(f"Client token '{token}' was already used with different "
                                  f"parameters.")
    return str(record["id"])


def expiry_key(record: dict[str, Any], key: str) -> str:
    """Key of a record's entry in the expiry index: its expiry time first (zero-padded
    seconds), so the index sorts by expiry and a sweep reads only what is due."""
    return f"{int(float(record['time']) + TOKEN_TTL):012d}|{key}"


def due(expiry: str, now: float) -> bool:
    """Whether an expiry-index entry (see :func:`expiry_key`) is past its time."""
    return int(expiry.split("|", 1)[0]) <= now
