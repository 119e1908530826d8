"""Wire formats driven by botocore's service models.

Both protocols are parsed and rendered from the same shapes boto3 uses, so every field's
name, type and nesting match by construction; a new action costs a model method, not a
template.

* :class:`Ec2Protocol` -- the EC2 Query protocol: form-encoded ``Name.N.Field`` input
  (``locationName`` upper-cased first letter, 1-based flattened lists), XML output with
  ``<xxxSet><item>`` lists, lower-camel element names and ``<requestId>``.
* :class:`RestJsonProtocol` -- the EBS direct APIs: members bound to the URI, query string,
  headers, a JSON body or a raw streaming payload.

Values cross this module as plain Python: structures are ``dict`` keyed by the botocore
*member* name (exactly what boto3 returns), lists are ``list``, timestamps are ``float``
epoch seconds (``datetime`` also accepted on output), blobs are bytes-like.

Bad input raises :class:`~ebsengine.aws.errors.ApiError` with the code each protocol
uses for it (``MissingParameter``/``InvalidParameterValue`` for EC2,
``ValidationException`` for EBS).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime as _dt
import functools
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from xml.sax.saxutils import escape as _sax_escape

import botocore.loaders
import botocore.model

from .errors import ApiError

EC2_XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"

# Characters XML 1.0 cannot carry at all: rendered as U+FFFD so that one bad stored value
# (the engine refuses them on input) can never make a whole response unparseable.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_escape(text: str) -> str:
    return _sax_escape(_XML_INVALID.sub("\ufffd", text))


def _either(form: Mapping[str, str], first: str, second: str) -> str | None:
    """``form[first]`` if present (even empty), else ``form[second]``, else None."""
    value = form.get(first)
    return value if value is not None else form.get(second)


@functools.cache
def service_model(name: str) -> botocore.model.ServiceModel:
    """The botocore service model of ``name`` ("ec2", "ebs"), loaded once per process."""
    loader = botocore.loaders.create_loader()
    data = loader.load_service_model(name, "service-2")
    return botocore.model.ServiceModel(data, service_name=name)


# --- scalar conversion ---------------------------------------------------------------------


def iso8601(value: float | _dt.datetime) -> str:
    """Render a timestamp as EC2 does: ``2025-01-15T09:30:00.000Z`` (UTC, milliseconds)."""
    if isinstance(value, _dt.datetime):
        value = value.timestamp()
    secs = int(value)
    millis = round((value - secs) * 1000)
    if millis >= 1000:
        secs, millis = secs + 1, millis - 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


_ISO_RE = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d+))?)?)?(Z|[+-]\d\d:?\d\d)?$",
    re.ASCII,
)
# numbers as AWS reads them (Java's parseInt / parseDouble): ASCII digits only. Python's
# int() and float() also take other scripts' digits ("\u0663" is 3), "_" separators and
# surrounding blanks; none of those is a number on the wire.
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def parse_int(text: str) -> int:
    """An integer in ASCII digits with an optional sign; ValueError otherwise."""
    if not isinstance(text, str):  # already a number (a form built in Python)
        return int(text)
    if not _INT_RE.match(text):
        raise ValueError(text)
    return int(text)


def parse_float(text: str) -> float:
    """A decimal number in ASCII (``1``, ``-2.5``, ``1e3``); ValueError otherwise."""
    if not isinstance(text, str):  # already a number
        return float(text)
    if not _FLOAT_RE.match(text):
        raise ValueError(text)
    return float(text)


def parse_timestamp(text: str) -> float:
    """Parse an ISO 8601 timestamp or epoch seconds into epoch seconds; ValueError if neither."""
    try:
        return parse_float(text)
    except ValueError:
        pass
    m = _ISO_RE.match(text.strip())
    if not m:
        raise ValueError(text)
    y, mo, d, h, mi, s, frac, tz = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), 0, 0, 0))
    value = secs + (float("0." + frac) if frac else 0.0)
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        value -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return value


def _epoch(value: float | _dt.datetime) -> float:
    return value.timestamp() if isinstance(value, _dt.datetime) else float(value)


# --- EC2 query protocol --------------------------------------------------------------------


class Ec2Protocol:
    """Parse EC2 Query requests and render EC2 XML responses from the ``ec2`` model."""

    def __init__(self) -> None:
        self.model = service_model("ec2")
        self._ops = set(self.model.operation_names)

    def has_action(self, action: str) -> bool:
        return action in self._ops

    # input

    def parse(self, action: str, form: Mapping[str, str]) -> dict[str, Any]:
        """Turn a flat form (``Filter.1.Value.2=x``) into the input dict of ``action``.

        Raises ApiError ``MissingParameter`` for an absent required member and
        ``InvalidParameterValue`` for a value of the wrong type or outside the enum.
        """
        op = self.model.operation_model(action)
        shape = op.input_shape
        if shape is None:
            return {}
        prefixes: set[str] = set()
        for key in form:
            parts = key.split(".")
            for i in range(1, len(parts)):
                prefixes.add(".".join(parts[:i]))
        return self._parse_struct(shape, form, prefixes, "")

    @staticmethod
    def _wire_name(shape: botocore.model.Shape, member: str) -> str:
        ser = shape.serialization
        if "queryName" in ser:
            return str(ser["queryName"])
        name = ser.get("name")
        if name:
            return str(name[0].upper() + name[1:])
        return member

    def _parse_struct(
        self, shape: botocore.model.StructureShape, form: Mapping[str, str], prefixes: set[str], prefix: str
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for member, mshape in shape.members.items():
            key = self._wire_name(mshape, member)
            if prefix:
                key = prefix + "." + key
            value = self._parse_value(mshape, form, prefixes, key)
            if value is not None:
                out[member] = value
        for member in shape.required_members:
            if member not in out:
                raise ApiError(
                    "MissingParameter",
                    f"The request must contain the parameter {self._wire_name(shape.members[member], member)}",
                )
        return out

    def _parse_value(
        self, shape: botocore.model.Shape, form: Mapping[str, str], prefixes: set[str], key: str
    ) -> Any:
        kind = shape.type_name
        if kind == "structure":
            if key not in prefixes:
                return None
            return self._parse_struct(shape, form, prefixes, key)  # type: ignore[arg-type]
        if kind == "list":
            items = []
            i = 1
            member = shape.member  # type: ignore[attr-defined]
            while True:
                k = f"{key}.{i}"
                if k not in form and k not in prefixes:
                    break
                value = self._parse_value(member, form, prefixes, k)
                if value is not None:
                    items.append(value)
                i += 1
            if not items and key not in prefixes and key not in form:
                return None
            return items
        if kind == "map":
            result: dict[str, Any] = {}
            i = 1
            while f"{key}.{i}" in prefixes:
                name = _either(form, f"{key}.{i}.key", f"{key}.{i}.Key")
                if name is not None:
                    result[name] = _either(form, f"{key}.{i}.value", f"{key}.{i}.Value")
                i += 1
            return result or None
        raw = form.get(key)
        if raw is None:
            return None
        return self._scalar(shape, raw, key)

    @staticmethod
    def _scalar(shape: botocore.model.Shape, raw: str, key: str) -> Any:
        kind = shape.type_name
        try:
            if kind in ("integer", "long"):
                return parse_int(raw)
            if kind in ("float", "double"):
                return parse_float(raw)
            if kind == "boolean":
                low = raw.lower()
                if low not in ("true", "false"):
                    raise ValueError(raw)
                return low == "true"
            if kind == "timestamp":
                return parse_timestamp(raw)
            if kind == "blob":
                return base64.b64decode(raw, validate=True)
        except (ValueError, binascii.Error):
            raise ApiError("InvalidParameterValue", f"Invalid value '{raw}' for {key}") from None
        enum = getattr(shape, "enum", None)
        if enum and raw not in enum:
            raise ApiError(
                "InvalidParameterValue",
                f"Value ({raw}) for parameter {key} is invalid. Valid values: {', '.join(enum)}",
            )
        return raw

    # output

    def render(self, action: str, result: Mapping[str, Any] | None, request_id: str) -> bytes:
        """The XML body of a successful ``action``; actions without output get ``<return>true``."""
        op = self.model.operation_model(action)
        parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{EC2_XMLNS}">',
                 f"<requestId>{request_id}</requestId>"]
        shape = op.output_shape
        if shape is None or not shape.members:
            parts.append("<return>true</return>")
        else:
            self._render_members(shape, result or {}, parts)
        parts.append(f"</{action}Response>")
        return "".join(parts).encode()

    def _render_members(self, shape: botocore.model.StructureShape, value: Mapping[str, Any], out: list[str]) -> None:
        for member, mshape in shape.members.items():
            v = value.get(member)
            if v is None:
                continue
            name = mshape.serialization.get("name", member)
            self._render_value(mshape, v, name, out)

    def _render_value(self, shape: botocore.model.Shape, v: Any, name: str, out: list[str]) -> None:
        kind = shape.type_name
        if kind == "structure":
            out.append(f"<{name}>")
            self._render_members(shape, v, out)  # type: ignore[arg-type]
            out.append(f"</{name}>")
        elif kind == "list":
            member = shape.member  # type: ignore[attr-defined]
            item = member.serialization.get("name", "item")
            if shape.serialization.get("flattened"):
                for element in v:
                    self._render_value(member, element, item, out)
                return
            out.append(f"<{name}>")
            for element in v:
                self._render_value(member, element, item, out)
            out.append(f"</{name}>")
        elif kind == "map":
            out.append(f"<{name}>")
            for k, element in v.items():
                out.append(f"<item><key>{_xml_escape(str(k))}</key>")
                self._render_value(shape.value, element, "value", out)  # type: ignore[attr-defined]
                out.append("</item>")
            out.append(f"</{name}>")
        elif kind == "boolean":
            out.append(f"<{name}>{'true' if v else 'false'}</{name}>")
        elif kind == "timestamp":
            out.append(f"<{name}>{iso8601(v)}</{name}>")
        elif kind == "blob":
            out.append(f"<{name}>{base64.b64encode(bytes(v)).decode()}</{name}>")
        else:
            out.append(f"<{name}>{_xml_escape(str(v))}</{name}>")

    @staticmethod
    def render_error(code: str, message: str, request_id: str) -> bytes:
        """AWS's EC2 error document (root ``<Response>``, ``<RequestID>``)."""
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{_xml_escape(code)}</Code><Message>{_xml_escape(message)}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        ).encode()


# --- rest-json (EBS direct APIs) -----------------------------------------------------------


class RestRequest:
    """What :meth:`RestJsonProtocol.parse` needs from an HTTP request."""

    __slots__ = ("method", "path", "query", "headers", "body", "multi_query")

    def __init__(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: Any,
        multi_query: Mapping[str, list[str]] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # lower-case names
        self.body = body  # bytes-like (payload already read) or None
        #: every value of a repeated query key (list members bound to the query string: dlm)
        self.multi_query = multi_query


class RestJsonProtocol:
    """Route, parse and render a rest-json service (``ebs``, ``dlm``) from its model.

    ``validation_code``: the exception bad input raises (EBS: ``ValidationException``
    with a ``Reason``; DLM: ``InvalidRequestException``)."""

    def __init__(self, service: str = "ebs", validation_code: str = "ValidationException") -> None:
        self.model = service_model(service)
        self.validation_code = validation_code
        routes: list[tuple[str, re.Pattern[str], str, int]] = []
        for name in self.model.operation_names:
            op = self.model.operation_model(name)
            uri = op.http["requestUri"].split("?")[0]
            literal = len(re.sub(r"\{[^}]+\}", "", uri))
            pattern = "^" + re.sub(r"\\\{([A-Za-z0-9_]+)\\\}", r"(?P<\1>[^/]+)", re.escape(uri)) + "$"
            routes.append((op.http["method"], re.compile(pattern), name, literal))
        # the most literal route wins (/snapshots/completion/{id} before /snapshots/{id}/...)
        routes.sort(key=lambda r: -r[3])
        self._routes = routes

    def route(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        """``(operation, uri params)`` for a request line, or None when nothing matches."""
        for m, pattern, name, _ in self._routes:
            if m != method:
                continue
            match = pattern.match(path)
            if match:
                return name, match.groupdict()
        return None

    def parse(self, operation: str, uri: Mapping[str, str], req: RestRequest) -> dict[str, Any]:
        """Bind URI, query, header and body members of ``operation``'s input.

        Raises ApiError ``ValidationException`` (reason ``INVALID_PARAMETER_VALUE``) for a
        missing required member, a badly typed value, or a number outside the model's range.
        """
        from urllib.parse import unquote

        shape = self.model.operation_model(operation).input_shape
        out: dict[str, Any] = {}
        if shape is None:
            return out
        payload = shape.serialization.get("payload")
        body_members: dict[str, botocore.model.Shape] = {}
        for member, mshape in shape.members.items():
            ser = mshape.serialization
            loc = ser.get("location")
            wire = ser.get("name", member)
            if loc == "uri":
                raw = uri.get(wire)
                if raw is not None:
                    out[member] = self._scalar(mshape, unquote(raw), member)
            elif loc == "querystring":
                if mshape.type_name == "list":
                    values = (req.multi_query or {}).get(wire)
                    if values is None and req.query.get(wire) is not None:
                        values = [req.query[wire]]
                    if values is not None:
                        out[member] = [self._scalar(mshape.member, v, member)  # type: ignore[attr-defined]
                                       for v in values]
                    continue
                raw = req.query.get(wire)
                if raw is not None:
                    out[member] = self._scalar(mshape, raw, member)
            elif loc == "header":
                raw = req.headers.get(wire.lower())
                if raw is not None:
                    out[member] = self._scalar(mshape, raw, member)
            elif member == payload:
                if req.body is not None:
                    out[member] = req.body
            else:
                body_members[member] = mshape
        if body_members and req.body:
            try:
                doc = json.loads(bytes(req.body))
            except (ValueError, RecursionError):
                raise ApiError(self.validation_code, "The request body is not valid JSON",
                               reason="INVALID_PARAMETER_VALUE") from None
            if not isinstance(doc, dict):
                raise ApiError(self.validation_code, "The request body must be a JSON object",
                               reason="INVALID_PARAMETER_VALUE")
            for member, mshape in body_members.items():
                if doc.get(member) is not None:
                    out[member] = self._json_value(mshape, doc[member], member)
        for member in shape.required_members:
            if member not in out:
                raise ApiError(self.validation_code, f"{member} is required", reason="INVALID_PARAMETER_VALUE")
        for member, value in out.items():
            self._check_range(shape.members[member], value, member)
        return out

    def _check_range(self, shape: botocore.model.Shape, value: Any, name: str) -> None:
        meta = shape.metadata
        if shape.type_name in ("integer", "long"):
            lo, hi = meta.get("min"), meta.get("max")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise ApiError(self.validation_code, f"{name} must be between {lo} and {hi}",
                               reason="INVALID_PARAMETER_VALUE")
        elif shape.type_name == "string":
            lo, hi = meta.get("min"), meta.get("max")
            if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
                raise ApiError(self.validation_code, f"{name} has an invalid length",
                               reason="INVALID_PARAMETER_VALUE")
            pattern = meta.get("pattern")
            try:  # Java-only classes (\\p{all}) are not Python patterns: skipped
                mismatch = bool(pattern) and not re.search(str(pattern), value)
            except re.error:
                mismatch = False
            if mismatch:
                raise ApiError(self.validation_code, f"{name} has an invalid value",
                               reason="INVALID_PARAMETER_VALUE")

    def _scalar(self, shape: botocore.model.Shape, raw: str, name: str) -> Any:
        kind = shape.type_name
        try:
            if kind in ("integer", "long"):
                return parse_int(raw)
            if kind == "boolean":
                if raw.lower() not in ("true", "false"):
                    raise ValueError(raw)
                return raw.lower() == "true"
            if kind == "timestamp":
                return parse_timestamp(raw)
        except ValueError:
            raise ApiError(self.validation_code, f"Invalid value for {name}",
                           reason="INVALID_PARAMETER_VALUE") from None
        enum = getattr(shape, "enum", None)
        if enum and raw not in enum:
            raise ApiError(self.validation_code, f"Invalid value for {name}: {raw}",
                           reason="INVALID_PARAMETER_VALUE")
        return raw

    def _json_value(self, shape: botocore.model.Shape, value: Any, name: str) -> Any:
        kind = shape.type_name
        bad = ApiError(self.validation_code, f"Invalid value for {name}", reason="INVALID_PARAMETER_VALUE")
        if kind == "map":
            if not isinstance(value, dict):
                raise bad
            return {self._json_value(shape.key, k, name): self._json_value(shape.value, v, name)  # type: ignore[attr-defined]
                    for k, v in value.items()}
        if kind == "structure":
            if not isinstance(value, dict):
                raise bad
            return {m: self._json_value(s, value[m], m) for m, s in shape.members.items()  # type: ignore[attr-defined]
                    if value.get(m) is not None}
        if kind == "list":
            if not isinstance(value, list):
                raise bad
            return [self._json_value(shape.member, v, name) for v in value]  # type: ignore[attr-defined]
        if kind in ("integer", "long"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                raise bad
            return value
        if kind == "timestamp":
            if isinstance(value, (int, float)):
                return float(value)
            try:
                return parse_timestamp(str(value))
            except ValueError:
                raise bad from None
        if kind == "string":
            if not isinstance(value, str):
                raise bad
            enum = getattr(shape, "enum", None)
            if enum and value not in enum:
                raise bad
            return value
        return value

    def render(self, operation: str, result: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]], Iterable[Any]]:
        """``(status, headers, body chunks)`` for a successful ``operation``."""
        op = self.model.operation_model(operation)
        status = int(op.http.get("responseCode", 200))
        shape = op.output_shape
        headers: list[tuple[str, str]] = []
        if shape is None:
            return status, [("Content-Type", "application/json"), ("Content-Length", "2")], [b"{}"]
        payload = shape.serialization.get("payload")
        doc: dict[str, Any] = {}
        for member, mshape in shape.members.items():
            v = result.get(member)
            if v is None:
                continue
            ser = mshape.serialization
            if ser.get("location") == "header":
                headers.append((ser.get("name", member), self._header_value(mshape, v)))
            elif member == payload:
                continue
            else:
                doc[ser.get("name", member)] = self._to_json(mshape, v)
        if payload is not None and shape.members[payload].type_name == "blob":
            data = result.get(payload) or b""
            headers.append(("Content-Type", "application/octet-stream"))
            headers.append(("Content-Length", str(len(data))))
            return status, headers, [data]
        body = json.dumps(doc, separators=(",", ":")).encode()
        headers.append(("Content-Type", "application/json"))
        headers.append(("Content-Length", str(len(body))))
        return status, headers, [body]

    @staticmethod
    def _header_value(shape: botocore.model.Shape, v: Any) -> str:
        if shape.type_name == "boolean":
            return "true" if v else "false"
        if shape.type_name == "timestamp":
            return iso8601(v)
        return str(v)

    def _to_json(self, shape: botocore.model.Shape, v: Any) -> Any:
        kind = shape.type_name
        if kind == "structure":
            return {shape.members[m].serialization.get("name", m): self._to_json(shape.members[m], x)  # type: ignore[attr-defined]
                    for m, x in v.items() if x is not None and m in shape.members}  # type: ignore[attr-defined]
        if kind == "list":
            return [self._to_json(shape.member, x) for x in v]  # type: ignore[attr-defined]
        if kind == "timestamp":
            if shape.serialization.get("timestampFormat") == "iso8601":
                return iso8601(v)
            return _epoch(v)
        if kind == "map":
            return {k: self._to_json(shape.value, x) for k, x in v.items()}  # type: ignore[attr-defined]
        if kind == "blob":
            return base64.b64encode(bytes(v)).decode()
        return v

    @staticmethod
    def render_error(code: str, message: str, status: int, reason: str | None) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        """AWS's rest-json error: ``x-amzn-ErrorType`` header, JSON ``Message``/``Reason`` body."""
        doc: dict[str, str] = {"message": message, "Message": message}
        if reason:
            doc["Reason"] = reason
        body = json.dumps(doc).encode()
        return status, [
            ("x-amzn-ErrorType", code),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ], [body]
