"""EBS encryption by default and the default KMS key of the Region (the rules and their
storage: ``ebsengine.cloud.encryption``)."""

from __future__ import annotations

from typing import ClassVar

from ..store import Context
from .common import Actions, Params, Result


class EncryptionActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "EnableEbsEncryptionByDefault": "enable_ebs_encryption_by_default",
        "DisableEbsEncryptionByDefault": "disable_ebs_encryption_by_default",
        "GetEbsEncryptionByDefault": "get_ebs_encryption_by_default",
        "GetEbsDefaultKmsKeyId": "get_ebs_default_kms_key_id",
        "ModifyEbsDefaultKmsKeyId": "modify_ebs_default_kms_key_id",
        "ResetEbsDefaultKmsKeyId": "reset_ebs_default_kms_key_id",
    }

    def enable_ebs_encryption_by_default(self, ctx: Context, p: Params) -> Result:
        return {"EbsEncryptionByDefault": self.cloud.encryption.set_enabled(self.scope(ctx), True)}

    def disable_ebs_encryption_by_default(self, ctx: Context, p: Params) -> Result:
        return {"EbsEncryptionByDefault": self.cloud.encryption.set_enabled(self.scope(ctx), False)}

    def get_ebs_encryption_by_default(self, ctx: Context, p: Params) -> Result:
        # SseType is "reserved for future use" in the model: not sent
        return {"EbsEncryptionByDefault": self.cloud.encryption.enabled(self.scope(ctx))}

    def get_ebs_default_kms_key_id(self, ctx: Context, p: Params) -> Result:
        return {"KmsKeyId": self.cloud.encryption.default_key(self.scope(ctx))}

    def modify_ebs_default_kms_key_id(self, ctx: Context, p: Params) -> Result:
        return {"KmsKeyId": self.cloud.encryption.modify_default_key(self.scope(ctx), p["KmsKeyId"])}

    def reset_ebs_default_kms_key_id(self, ctx: Context, p: Params) -> Result:
        return {"KmsKeyId": self.cloud.encryption.reset_default_key(self.scope(ctx))}
