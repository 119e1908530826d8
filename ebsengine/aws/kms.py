"""KMS on the endpoint: :class:`KmsModel` maps each operation (``X-Amz-Target:
TrentService.<Operation>``, parsed and rendered from botocore's ``kms`` model by
:mod:`.jsonproto`) onto :class:`ebsengine.kms.KeyService` (the rules live there; this module
only translates), and :func:`kms_error` is its error table.

Errors are KMS's: ``{"__type": code, "message": ...}`` with HTTP 400 (500 for
KMSInternalException, 412 for DryRunOperationException).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, ClassVar

from ebsengine.errors import KmsError
from ebsengine.kms import Alias, KeyService, KmsKey

from .errors import ApiError
from .store import Context

ALGORITHM = "SYMMETRIC_DEFAULT"

#: HTTP status of a KMS error code; anything else is 400
KMS_STATUS = {"KMSInternalException": 500, "DependencyTimeoutException": 503,
              "DryRunOperationException": 412}


def kms_error(exc: BaseException) -> tuple[str, str, int]:
    """``(code, message, status)`` of any exception raised serving a KMS operation."""
    if isinstance(exc, KmsError):
        return exc.code, exc.message, KMS_STATUS.get(exc.code, exc.status)
    if isinstance(exc, ApiError):
        return exc.code, exc.message, exc.status or KMS_STATUS.get(exc.code, 400)
    from ebsengine.errors import EbsError

    if isinstance(exc, EbsError):  # the master key file, a full store...
        return "KMSInternalException", exc.message or exc.code, 500
    return "KMSInternalException", "An internal error has occurred", 500


def _tags_in(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["TagKey"]: t.get("TagValue", "") for t in tags or []}


def _tags_out(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"TagKey": k, "TagValue": v} for k, v in sorted(tags.items())]


def _page(items: list[Any], sort_key: Callable[[Any], str], p: dict[str, Any],
          field: str) -> dict[str, Any]:
    """One page of ``items`` for Limit/Marker: ``{field: page, Truncated, NextMarker}``.
    The marker is the (opaque) sort key of the last item returned."""
    limit = p.get("Limit", 100)
    items = sorted(items, key=sort_key)
    marker = p.get("Marker")
    if marker is not None:
        try:
            after = base64.b64decode(marker.encode(), altchars=b"-_", validate=True).decode()
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise KmsError("InvalidMarkerException", "The marker is not valid") from None
        items = [i for i in items if sort_key(i) > after]
    page, rest = items[:limit], items[limit:]
    out: dict[str, Any] = {field: page, "Truncated": bool(rest)}
    if rest:
        out["NextMarker"] = base64.urlsafe_b64encode(sort_key(page[-1]).encode()).decode()
    return out


def _alias_out(a: Alias) -> dict[str, Any]:
    return {"AliasName": a.name, "AliasArn": a.arn, "TargetKeyId": a.target,
            "CreationDate": a.created, "LastUpdatedDate": a.updated}


class KmsModel:
    """One method per supported KMS operation: ``(ctx, params) -> output``."""

    OPERATIONS: ClassVar[dict[str, str]] = {
        "CreateKey": "create_key", "DescribeKey": "describe_key", "ListKeys": "list_keys",
        "EnableKey": "enable_key", "DisableKey": "disable_key",
        "ScheduleKeyDeletion": "schedule_key_deletion",
        "CancelKeyDeletion": "cancel_key_deletion",
        "UpdateKeyDescription": "update_key_description",
        "CreateAlias": "create_alias", "UpdateAlias": "update_alias",
        "DeleteAlias": "delete_alias", "ListAliases": "list_aliases",
        "TagResource": "tag_resource", "UntagResource": "untag_resource",
        "ListResourceTags": "list_resource_tags",
        "Encrypt": "encrypt", "Decrypt": "decrypt", "ReEncrypt": "re_encrypt",
        "GenerateDataKey": "generate_data_key",
        "GenerateDataKeyWithoutPlaintext": "generate_data_key_without_plaintext",
        "GenerateRandom": "generate_random", "GenerateMac": "generate_mac",
        "VerifyMac": "verify_mac", "GetKeyRotationStatus": "get_key_rotation_status",
    }

    def __init__(self, keys: KeyService) -> None:
        self.keys = keys

    def supports(self, operation: str) -> bool:
        return operation in self.OPERATIONS

    def call(self, ctx: Context, operation: str, p: dict[str, Any]) -> dict[str, Any]:
        fn: Callable[[Context, dict[str, Any]], dict[str, Any]] = getattr(
            self, self.OPERATIONS[operation])
        return fn(ctx, p)

    @staticmethod
    def _algorithm(p: dict[str, Any], name: str = "EncryptionAlgorithm") -> None:
        alg = p.get(name)
        if alg is not None and alg != ALGORITHM:
            raise KmsError("InvalidKeyUsageException",
                           f"{name} {alg} is not valid for a symmetric key")

    @staticmethod
    def _dry_run(p: dict[str, Any]) -> None:
        if p.get("DryRun"):
            raise KmsError("DryRunOperationException",
                           "The request would have succeeded, but the DryRun flag is set.")

    # keys

    def create_key(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        key = self.keys.create_key(
            ctx.region, ctx.account_id, description=p.get("Description", ""),
            key_usage=p.get("KeyUsage"), key_spec=p.get("KeySpec") or p.get("CustomerMasterKeySpec"),
            origin=p.get("Origin", "AWS_KMS"), multi_region=bool(p.get("MultiRegion")),
            tags=_tags_in(p.get("Tags")))
        return {"KeyMetadata": key.metadata()}

    def describe_key(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        return {"KeyMetadata": self.keys.describe_key(p["KeyId"], ctx.region,
                                                      ctx.account_id).metadata()}

    def list_keys(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        out = _page(self.keys.list_keys(ctx.region, ctx.account_id), lambda k: k.id, p, "Keys")
        out["Keys"] = [{"KeyId": k.id, "KeyArn": k.arn} for k in out["Keys"]]
        return out

    def enable_key(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        self.keys.enable_key(p["KeyId"], ctx.region, ctx.account_id)
        return {}

    def disable_key(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        self.keys.disable_key(p["KeyId"], ctx.region, ctx.account_id)
        return {}

    def schedule_key_deletion(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        key = self.keys.schedule_key_deletion(p["KeyId"], ctx.region, ctx.account_id,
                                              p.get("PendingWindowInDays"))
        return {"KeyId": key.arn, "DeletionDate": key.deletion_date, "KeyState": key.state,
                "PendingWindowInDays": key.pending_days}

    def cancel_key_deletion(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        return {"KeyId": self.keys.cancel_key_deletion(p["KeyId"], ctx.region,
                                                       ctx.account_id).arn}

    def update_key_description(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        self.keys.update_key_description(p["KeyId"], p["Description"], ctx.region,
                                         ctx.account_id)
        return {}

    def get_key_rotation_status(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        key = self.keys.describe_key(p["KeyId"], ctx.region, ctx.account_id)
        return {"KeyRotationEnabled": False, "KeyId": key.arn}

    # aliases

    def create_alias(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        self.keys.create_alias(p["AliasName"], p["TargetKeyId"], ctx.region, ctx.account_id)
        return {}

    def update_alias(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        self.keys.update_alias(p["AliasName"], p["TargetKeyId"], ctx.region, ctx.account_id)
        return {}

    def delete_alias(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        self.keys.delete_alias(p["AliasName"], ctx.region, ctx.account_id)
        return {}

    def list_aliases(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        aliases = self.keys.list_aliases(ctx.region, ctx.account_id, p.get("KeyId"))
        out = _page(aliases, lambda a: a.name, p, "Aliases")
        out["Aliases"] = [_alias_out(a) for a in out["Aliases"]]
        return out

    # tags

    def tag_resource(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        self.keys.tag_resource(p["KeyId"], _tags_in(p["Tags"]), ctx.region, ctx.account_id)
        return {}

    def untag_resource(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        self.keys.untag_resource(p["KeyId"], p["TagKeys"], ctx.region, ctx.account_id)
        return {}

    def list_resource_tags(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        tags = self.keys.list_resource_tags(p["KeyId"], ctx.region, ctx.account_id)
        out = _page(_tags_out(tags), lambda t: t["TagKey"], p, "Tags")
        return out

    # cryptography

    def encrypt(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        blob, key = self.keys.encrypt(p["KeyId"], p["Plaintext"], ctx.region, ctx.account_id,
                                      context=p.get("EncryptionContext"))
        self._algorithm(p)
        self._dry_run(p)
        return {"CiphertextBlob": blob, "KeyId": key.arn, "EncryptionAlgorithm": ALGORITHM}

    def decrypt(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        if "CiphertextBlob" not in p:
            raise KmsError("ValidationException", "CiphertextBlob is required")
        plain, key = self.keys.decrypt(p["CiphertextBlob"], ctx.region, ctx.account_id,
                                       context=p.get("EncryptionContext"),
                                       key_id=p.get("KeyId"))
        self._algorithm(p)
        self._dry_run(p)
        return {"KeyId": key.arn, "Plaintext": plain, "EncryptionAlgorithm": ALGORITHM}

    def re_encrypt(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        if "CiphertextBlob" not in p:
            raise KmsError("ValidationException", "CiphertextBlob is required")
        blob, source, dest = self.keys.re_encrypt(
            p["CiphertextBlob"], p["DestinationKeyId"], ctx.region, ctx.account_id,
            source_context=p.get("SourceEncryptionContext"),
            destination_context=p.get("DestinationEncryptionContext"),
            source_key_id=p.get("SourceKeyId"))
        self._algorithm(p, "SourceEncryptionAlgorithm")
        self._algorithm(p, "DestinationEncryptionAlgorithm")
        self._dry_run(p)
        return {"CiphertextBlob": blob, "SourceKeyId": source.arn, "KeyId": dest.arn,
                "SourceEncryptionAlgorithm": ALGORITHM,
                "DestinationEncryptionAlgorithm": ALGORITHM}

    def _data_key(self, ctx: Context, p: dict[str, Any]) -> tuple[bytes, bytes, KmsKey]:
        return self.keys.generate_data_key(
            p["KeyId"], ctx.region, ctx.account_id, number_of_bytes=p.get("NumberOfBytes"),
            key_spec=p.get("KeySpec"), context=p.get("EncryptionContext"))

    def generate_data_key(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        plain, blob, key = self._data_key(ctx, p)
        self._dry_run(p)
        return {"CiphertextBlob": blob, "Plaintext": plain, "KeyId": key.arn}

    def generate_data_key_without_plaintext(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        _, blob, key = self._data_key(ctx, p)
        self._dry_run(p)
        return {"CiphertextBlob": blob, "KeyId": key.arn}

    def generate_random(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        if "NumberOfBytes" not in p:
            raise KmsError("ValidationException", "NumberOfBytes is required")
        return {"Plaintext": self.keys.generate_random(p["NumberOfBytes"])}

    def generate_mac(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        mac, key = self.keys.generate_mac(p["KeyId"], p["Message"], p["MacAlgorithm"],
                                          ctx.region, ctx.account_id)
        self._dry_run(p)
        return {"Mac": mac, "MacAlgorithm": p["MacAlgorithm"], "KeyId": key.arn}

    def verify_mac(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        key = self.keys.verify_mac(p["KeyId"], p["Message"], p["Mac"], p["MacAlgorithm"],
                                   ctx.region, ctx.account_id)
        self._dry_run(p)
        return {"KeyId": key.arn, "MacValid": True, "MacAlgorithm": p["MacAlgorithm"]}
