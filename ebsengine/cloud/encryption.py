"""EBS encryption by default and the default KMS key, per account and region.

Two settings of a Region, as EC2 keeps them (Enable/Disable/GetEbsEncryptionByDefault,
Get/Modify/ResetEbsDefaultKmsKeyId), stored in the engine's service space (namespace
``ec2.ebs-encryption``, key ``<account>/<region>``: ``{"enabled": bool, "kms_key_id": ARN or
None}``), so they survive restarts and commit with what changes them.

What they change (AWS's "Encryption by default"): every *new* volume of the Region
(CreateVolume, with or without a snapshot, and the volumes RunInstances makes) and every
snapshot *copy* (CopySnapshot) is encrypted when the setting is on, even with
``Encrypted=false``; a snapshot of a volume takes the volume's encryption (the setting does
not apply); EBS direct StartSnapshot refuses an unencrypted snapshot. The default key is the
one named when ``Encrypted`` is asked without a ``KmsKeyId``, whether encryption by default is
on or not: ``alias/aws/ebs`` (the AWS-managed key, made on first use) unless
ModifyEbsDefaultKmsKeyId named another.
"""

from __future__ import annotations

from typing import Any

from ebsengine import errors
from ebsengine.engine import Engine, Transaction

from .scope import Scope

#: service namespace of the per-region settings
NS_EBS_ENCRYPTION = "ec2.ebs-encryption"
#: the AWS-managed key EBS uses when no other is named
EBS_ALIAS = "alias/aws/ebs"


class EbsEncryption:
    """The Region's encryption-by-default settings and the rule that applies them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @staticmethod
    def _key(scope: Scope) -> str:
        return f"{scope.account_id}/{scope.region}"

    def _rec(self, scope: Scope, tx: Transaction | None = None) -> dict[str, Any]:
        rec = self.engine.service_get(NS_EBS_ENCRYPTION, self._key(scope), tx=tx)
        return dict(rec) if isinstance(rec, dict) else {"enabled": False, "kms_key_id": None}

    def _put(self, scope: Scope, **changes: Any) -> dict[str, Any]:
        eng = self.engine
        with eng.transaction() as tx:
            rec = {**self._rec(scope, tx), **changes}
            eng.service_put(NS_EBS_ENCRYPTION, self._key(scope), rec, tx=tx)
        return rec

    # --- encryption by default --------------------------------------------------------------

    def enabled(self, scope: Scope, tx: Transaction | None = None) -> bool:
        """GetEbsEncryptionByDefault."""
        return bool(self._rec(scope, tx).get("enabled"))

    def set_enabled(self, scope: Scope, on: bool) -> bool:
        """Enable/DisableEbsEncryptionByDefault; returns the new setting."""
        return bool(self._put(scope, enabled=bool(on))["enabled"])

    # --- the default KMS key ----------------------------------------------------------------

    def default_key(self, scope: Scope, tx: Transaction | None = None) -> str:
        """GetEbsDefaultKmsKeyId: the ARN of the key ModifyEbsDefaultKmsKeyId named, else
        the ARN of the alias ``alias/aws/ebs`` (as AWS answers before any change)."""
        arn = self._rec(scope, tx).get("kms_key_id")
        return str(arn) if arn else f"arn:aws:kms:{scope.region}:{scope.account_id}:{EBS_ALIAS}"

    def modify_default_key(self, scope: Scope, kms_key_id: str) -> str:
        """ModifyEbsDefaultKmsKeyId (id, alias, key ARN or alias ARN of the scope's account
        and region): stores and returns the key's ARN. A key that does not exist raises
        KmsError (``NotFoundException``); an asymmetric or HMAC key, which EBS cannot use,
        ``InvalidParameterValue``. Nothing changes on error."""
        if not isinstance(kms_key_id, str) or not kms_key_id:
            raise errors.Ec2Error("MissingParameter",
                                  "The request must contain the parameter KmsKeyId")
        key = self.engine.kms.describe_key(kms_key_id, scope.region, scope.account_id)
        if key.usage != "ENCRYPT_DECRYPT" or key.spec != "SYMMETRIC_DEFAULT":
            raise errors.Ec2Error("InvalidParameterValue",
                                  f"Value ({kms_key_id}) for parameter kmsKeyId is invalid. "
                                  f"Amazon EBS supports symmetric encryption KMS keys only.")
        return str(self._put(scope, kms_key_id=key.arn)["kms_key_id"])

    def reset_default_key(self, scope: Scope) -> str:
        """ResetEbsDefaultKmsKeyId: back to ``alias/aws/ebs``; returns its ARN."""
        self._put(scope, kms_key_id=None)
        return self.default_key(scope)

    # --- the rule ---------------------------------------------------------------------------

    def resolve(self, scope: Scope, *, encrypted: bool | None, kms_key_id: str | None,
                source_encrypted: bool = False,
                tx: Transaction | None = None) -> tuple[bool, str | None]:
        """``(encrypted, kms_key_id)`` to hand the engine for a new volume or snapshot copy
        made in ``scope``: encrypted when asked, when the source is encrypted (never
        decrypted) or when encryption by default is on; the key is the one named, else the
        source's (None: the engine keeps the source's data key), else the Region's default
        key (None when that is ``alias/aws/ebs``: the engine makes it on first use).
        ``KmsKeyId`` without ``Encrypted=true`` is the caller's ``InvalidParameterDependency``.
        """
        rec = self._rec(scope, tx)
        if not (encrypted or source_encrypted or rec.get("enabled")):
            return False, None
        if kms_key_id:
            return True, kms_key_id
        if source_encrypted:
            return True, None
        return True, rec.get("kms_key_id") or None


__all__ = ["EBS_ALIAS", "NS_EBS_ENCRYPTION", "EbsEncryption"]
