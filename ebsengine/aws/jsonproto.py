"""AWS's JSON protocol (``awsJson1_1``): ``POST /`` with ``X-Amz-Target: <prefix>.<Operation>``
and a JSON body, parsed and rendered from the service's botocore model.

Cost Explorer (``AWSInsightsIndexService.*``) and KMS (``TrentService.*``) speak it;
:class:`AwsApp` keeps one ``target prefix -> (JsonProtocol, model, error table)`` table, so a
JSON service plugs in by adding its row. A model has ``supports(operation)`` and
``call(ctx, operation, params)``, like the EC2 and EBS models.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

import botocore.model

from .errors import ApiError
from .shapes import parse_timestamp, service_model
from .store import Context

CONTENT_TYPE = "application/x-amz-json-1.1"


class JsonModel(Protocol):
    def supports(self, operation: str) -> bool: ...

    def call(self, ctx: Context, operation: str, params: dict[str, Any]) -> Mapping[str, Any] | None: ...


class JsonProtocol:
    """Parse a JSON-protocol request body into botocore member names (blobs decoded from
    base64, timestamps as epoch seconds; types, lengths, ranges, enums and patterns checked
    against the model) and render an output dict back."""

    def __init__(self, service: str) -> None:
        self.model = service_model(service)
        self.target_prefix = str(self.model.metadata.get("targetPrefix", ""))

    def has_operation(self, name: str) -> bool:
        return name in self.model.operation_names

    def parse_body(self, operation: str, body: bytes | bytearray | None) -> dict[str, Any]:
        shape = self.model.operation_model(operation).input_shape
        try:
            doc = json.loads(bytes(body or b"") or b"{}")
        except (ValueError, RecursionError):
            raise ApiError("SerializationException", "The request body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise ApiError("SerializationException", "The request body must be a JSON object")
        if shape is None:
            return {}
        out = self._value(shape, doc, operation)
        for member in shape.required_members:
            if member not in out:
                raise ApiError("ValidationException", f"1 validation error detected: Value null "
                                                      f"at '{member}' failed to satisfy "
                                                      f"constraint: Member must not be null")
        return out  # type: ignore[no-any-return]

    def _value(self, shape: botocore.model.Shape, value: Any, name: str) -> Any:
        kind = shape.type_name
        bad = ApiError("SerializationException", f"Invalid value for {name}")
        if kind == "structure":
            if not isinstance(value, dict):
                raise bad
            members: Mapping[str, botocore.model.Shape] = shape.members  # type: ignore[attr-defined]
            return {m: self._value(s, value[m], m) for m, s in members.items()
                    if value.get(m) is not None}
        if kind == "list":
            if not isinstance(value, list):
                raise bad
            items = [self._value(shape.member, v, name) for v in value]  # type: ignore[attr-defined]
            self._length(shape, items, name)
            return items
        if kind == "map":
            if not isinstance(value, dict):
                raise bad
            return {self._value(shape.key, k, name): self._value(shape.value, v, name)  # type: ignore[attr-defined]
                    for k, v in value.items()}
        if kind in ("integer", "long"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
            lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise ApiError("ValidationException", f"1 validation error detected: Value "
                                                      f"'{value}' at '{name}' failed to satisfy "
                                                      f"constraint: Member must have value "
                                                      f"between {lo} and {hi}")
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                raise bad
            return value
        if kind == "timestamp":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            try:
                return parse_timestamp(str(value))
            except ValueError:
                raise bad from None
        if kind == "blob":
            if not isinstance(value, str):
                raise bad
            try:
                data = base64.b64decode(value, validate=True)
            except (ValueError, binascii.Error):
                raise ApiError("SerializationException", f"{name} is not valid base64") from None
            self._length(shape, data, name)
            return data
        if kind == "string":
            if not isinstance(value, str):
                raise bad
            enum = getattr(shape, "enum", None)
            if enum and value not in enum:
                raise ApiError("ValidationException", f"1 validation error detected: Value "
                                                      f"'{value}' at '{name}' failed to satisfy "
                                                      f"constraint: Member must satisfy enum "
                                                      f"value set: {list(enum)}")
            self._length(shape, value, name)
            pattern = shape.metadata.get("pattern")
            try:  # Java-only classes (\\p{all}) are not Python patterns: skipped
                mismatch = bool(pattern) and not re.search(str(pattern), value)
            except re.error:
                mismatch = False
            if mismatch:
                raise ApiError("ValidationException", f"1 validation error detected: Value at "
                                                      f"'{name}' failed to satisfy constraint: "
                                                      f"Member must satisfy regular expression "
                                                      f"pattern: {pattern}")
            return value
        return value

    @staticmethod
    def _length(shape: botocore.model.Shape, value: Any, name: str) -> None:
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
            raise ApiError("ValidationException", f"1 validation error detected: Value at "
                                                  f"'{name}' failed to satisfy constraint: "
                                                  f"Member must have length between {lo} and "
                                                  f"{hi}")

    def render_json(self, operation: str, result: Mapping[str, Any] | None) -> bytes:
        shape = self.model.operation_model(operation).output_shape
        doc = {} if shape is None or not result else self._to_json(shape, result)
        return json.dumps(doc, separators=(",", ":")).encode()

    def _to_json(self, shape: botocore.model.Shape, v: Any) -> Any:
        kind = shape.type_name
        if kind == "structure":
            members: Mapping[str, botocore.model.Shape] = shape.members  # type: ignore[attr-defined]
            return {m: self._to_json(members[m], x) for m, x in v.items()
                    if x is not None and m in members}
        if kind == "list":
            return [self._to_json(shape.member, x) for x in v]  # type: ignore[attr-defined]
        if kind == "map":
            return {k: self._to_json(shape.value, x) for k, x in v.items()}  # type: ignore[attr-defined]
        if kind == "timestamp":
            return float(v)
        if kind == "blob":
            return base64.b64encode(bytes(v)).decode()
        return v

    @staticmethod
    def render_json_error(code: str, message: str) -> bytes:
        """The JSON protocol's error body (botocore reads ``__type`` and ``message``)."""
        return json.dumps({"__type": code, "message": message, "Message": message}).encode()


__all__ = ["CONTENT_TYPE", "JsonModel", "JsonProtocol"]
