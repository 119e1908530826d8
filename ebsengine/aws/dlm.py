"""Data Lifecycle Manager (service ``dlm``, rest-json): parse, call ``cloud.dlm``, render.

The rules live in :mod:`ebsengine.cloud.dlm`; this module maps the eight operations onto
its methods and the errors onto the model's exceptions (``InvalidRequestException`` 400,
``ResourceNotFoundException`` 404, ``LimitExceededException`` 429).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ebsengine import errors as engine_errors
from ebsengine.cloud import Cloud, Scope

from .errors import AUTH_CODES, ApiError
from .store import Context

Params = dict[str, Any]
Result = dict[str, Any]

DLM_STATUS = {"InvalidRequestException": 400, "ResourceNotFoundException": 404,
              "LimitExceededException": 429, "InternalServerException": 500}


def dlm_error(exc: BaseException) -> tuple[str, str, int]:
    """``(exception name, message, http status)`` of a failed DLM operation."""
    if isinstance(exc, ApiError):
        if exc.code in AUTH_CODES:  # a refused signature, as the protocol answers it
            return exc.code, exc.message, exc.status or 403
        code = exc.code if exc.code in DLM_STATUS else "InvalidRequestException"
        return code, exc.message, exc.status or DLM_STATUS[code]
    if isinstance(exc, engine_errors.Ec2Error) and exc.code in DLM_STATUS:
        return exc.code, exc.message or exc.code, DLM_STATUS[exc.code]
    if isinstance(exc, (engine_errors.InvalidParameter, engine_errors.Ec2Error)):
        return "InvalidRequestException", str(exc.message or exc), 400
    return "InternalServerException", "An internal error has occurred", 500


class DlmModel:
    ACTIONS: ClassVar[dict[str, str]] = {
        "CreateLifecyclePolicy": "create_lifecycle_policy",
        "GetLifecyclePolicies": "get_lifecycle_policies",
        "GetLifecyclePolicy": "get_lifecycle_policy",
        "UpdateLifecyclePolicy": "update_lifecycle_policy",
        "DeleteLifecyclePolicy": "delete_lifecycle_policy",
        "TagResource": "tag_resource",
        "UntagResource": "untag_resource",
        "ListTagsForResource": "list_tags_for_resource",
    }

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.dlm = cloud.dlm

    def call(self, ctx: Context, action: str, params: Params) -> Result:
        return getattr(self, self.ACTIONS[action])(ctx, params)  # type: ignore[no-any-return]

    @staticmethod
    def scope(ctx: Context) -> Scope:
        return Scope(ctx.region, ctx.account_id)

    _DEFAULT_ONLY = ("CreateInterval", "RetainInterval", "CopyTags", "ExtendDeletion",
                     "CrossRegionCopyTargets", "Exclusions")

    def create_lifecycle_policy(self, ctx: Context, p: Params) -> Result:
        extra = [k for k in self._DEFAULT_ONLY if p.get(k) is not None]
        if extra and p.get("DefaultPolicy") is None:
            raise ApiError("InvalidRequestException", f"{', '.join(extra)}: default policies only")
        pid = self.dlm.create(self.scope(ctx), execution_role_arn=p["ExecutionRoleArn"],
                              description=p["Description"], state=p["State"],
                              policy_details=p.get("PolicyDetails"), tags=p.get("Tags"),
                              default_policy=p.get("DefaultPolicy"))
        return {"PolicyId": pid}

    def get_lifecycle_policies(self, ctx: Context, p: Params) -> Result:
        return {"Policies": self.dlm.describe(
            self.scope(ctx), policy_ids=p.get("PolicyIds"), state=p.get("State"),
            resource_types=p.get("ResourceTypes"), target_tags=p.get("TargetTags"),
            tags_to_add=p.get("TagsToAdd"), default_policy_type=p.get("DefaultPolicyType"))}

    def get_lifecycle_policy(self, ctx: Context, p: Params) -> Result:
        return {"Policy": self.dlm.get(self.scope(ctx), p["PolicyId"])}

    def update_lifecycle_policy(self, ctx: Context, p: Params) -> Result:
        self.dlm.update(self.scope(ctx), p["PolicyId"],
                        execution_role_arn=p.get("ExecutionRoleArn"), state=p.get("State"),
                        description=p.get("Description"), policy_details=p.get("PolicyDetails"),
                        **{k: p.get(k) for k in self._DEFAULT_ONLY})
        return {}

    def delete_lifecycle_policy(self, ctx: Context, p: Params) -> Result:
        self.dlm.delete(self.scope(ctx), p["PolicyId"])
        return {}

    def tag_resource(self, ctx: Context, p: Params) -> Result:
        self.dlm.tag(p["ResourceArn"], p["Tags"], self.scope(ctx))
        return {}

    def untag_resource(self, ctx: Context, p: Params) -> Result:
        self.dlm.untag(p["ResourceArn"], p["TagKeys"], self.scope(ctx))
        return {}

    def list_tags_for_resource(self, ctx: Context, p: Params) -> Result:
        return {"Tags": self.dlm.tags_of(p["ResourceArn"], self.scope(ctx))}


__all__ = ["DLM_STATUS", "DlmModel", "dlm_error"]
