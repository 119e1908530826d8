"""EC2 key pair actions: CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair
(the rules: ``ebsengine.cloud.keypairs``)."""

from __future__ import annotations

from typing import Any, ClassVar

from ebsengine.cloud.model import KeyPair

from ..store import Context
from .common import Actions, Extractor, Params, Result, _tag_list, compile_filters


def _view(k: KeyPair, public_key: bool = False) -> Result:
    out: Result = {"KeyPairId": k.id, "KeyName": k.name, "KeyFingerprint": k.fingerprint,
                   "KeyType": k.key_type, "Tags": _tag_list(k.tags) or [],
                   "CreateTime": k.create_time}
    if public_key:
        out["PublicKey"] = k.public_key
    return out


class KeyPairActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "CreateKeyPair": "create_key_pair",
        "ImportKeyPair": "import_key_pair",
        "DescribeKeyPairs": "describe_key_pairs",
        "DeleteKeyPair": "delete_key_pair",
    }

    _KEY_FILTERS: ClassVar[dict[str, Extractor]] = {
        "key-name": lambda k: [k.name],
        "key-pair-id": lambda k: [k.id],
        "fingerprint": lambda k: [k.fingerprint],
        "key-type": lambda k: [k.key_type],
    }

    def create_key_pair(self, ctx: Context, p: Params) -> Result:
        rec, material = self.cloud.keypairs.create(
            self.scope(ctx), p.get("KeyName", ""), key_type=p.get("KeyType") or "rsa",
            key_format=p.get("KeyFormat") or "pem", tag_specifications=p.get("TagSpecifications"))
        return {"KeyPairId": rec.id, "KeyName": rec.name, "KeyFingerprint": rec.fingerprint,
                "KeyMaterial": material, "Tags": _tag_list(rec.tags)}

    def import_key_pair(self, ctx: Context, p: Params) -> Result:
        rec = self.cloud.keypairs.import_key(self.scope(ctx), p.get("KeyName", ""),
                                             p.get("PublicKeyMaterial") or b"",
                                             tag_specifications=p.get("TagSpecifications"))
        return {"KeyPairId": rec.id, "KeyName": rec.name, "KeyFingerprint": rec.fingerprint,
                "Tags": _tag_list(rec.tags)}

    def describe_key_pairs(self, ctx: Context, p: Params) -> Result:
        match = compile_filters(p.get("Filters"), self._KEY_FILTERS, lambda k: k.tags)
        recs = self.cloud.keypairs.describe(self.scope(ctx), names=p.get("KeyNames"),
                                            ids=p.get("KeyPairIds"))
        include = bool(p.get("IncludePublicKey", False))
        return {"KeyPairs": [_view(k, include) for k in recs if match(k)]}

    def delete_key_pair(self, ctx: Context, p: Params) -> Result:
        deleted: Any = self.cloud.keypairs.delete(self.scope(ctx), name=p.get("KeyName"),
                                                  key_pair_id=p.get("KeyPairId"))
        return {"Return": True, "KeyPairId": deleted}
