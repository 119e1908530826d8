"""AWS's JSON protocol (``awsJson1_1``): ``POST /`` with ``X-Amz-Target: <prefix>.<Operation>``
and a JSON body, parsed and rendered from the service's botocore model.

Cost Explorer (``AWSInsightsIndexService.*``) speaks it; :class:`AwsApp` keeps one
``target prefix -> (JsonProtocol, model)`` table, so another JSON service (KMS's
``TrentService.*``) plugs in by adding its row. A model has ``supports(operation)`` and
``call(ctx, operation, params)``, like the EC2 and EBS models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from .errors import ApiError
from .shapes import RestJsonProtocol
from .store import Context

CONTENT_TYPE = "application/x-amz-json-1.1"


class JsonModel(Protocol):
    def supports(self, operation: str) -> bool: ...

    def call(self, ctx: Context, operation: str, params: dict[str, Any]) -> Mapping[str, Any]: ...


class JsonProtocol(RestJsonProtocol):
    """Parse a JSON-protocol body into botocore member values and render results back (the
    value rules are rest-json's; only the framing differs)."""

    def __init__(self, service: str) -> None:
        super().__init__(service)
        self.target_prefix = str(self.model.metadata.get("targetPrefix", ""))

    def has_operation(self, operation: str) -> bool:
        return operation in self.model.operation_names

    def parse_body(self, operation: str, body: bytes | bytearray | None) -> dict[str, Any]:
        """The input members of ``operation`` from its JSON body (``ValidationException``
        for a missing required member or a badly typed value)."""
        shape = self.model.operation_model(operation).input_shape
        if shape is None:
            return {}
        try:
            doc = json.loads(bytes(body or b"{}") or b"{}")
        except (ValueError, RecursionError):
            raise ApiError("SerializationException", "The request body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise ApiError("SerializationException", "The request body must be a JSON object")
        out: dict[str, Any] = {}
        for member, mshape in shape.members.items():
            if doc.get(member) is not None:
                out[member] = self._json_value(mshape, doc[member], member)
        for member in shape.required_members:
            if member not in out:
                raise ApiError("ValidationException",
                               f"1 validation error detected: Value null at '{member}' failed to "
                               f"satisfy constraint: Member must not be null")
        return out

    def render_json(self, operation: str, result: Mapping[str, Any]) -> bytes:
        shape = self.model.operation_model(operation).output_shape
        doc: dict[str, Any] = {}
        if shape is not None:
            for member, mshape in shape.members.items():
                v = result.get(member)
                if v is not None:
                    doc[member] = self._to_json(mshape, v)
        return json.dumps(doc, separators=(",", ":")).encode()

    @staticmethod
    def render_json_error(code: str, message: str) -> bytes:
        """The JSON protocol's error body (botocore reads ``__type`` and ``message``)."""
        return json.dumps({"__type": code, "message": message, "Message": message}).encode()


__all__ = ["CONTENT_TYPE", "JsonModel", "JsonProtocol"]
