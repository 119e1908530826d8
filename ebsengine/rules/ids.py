"""Resource ids in AWS's format (``vol-`` + 17 hex digits, ...) and whole-number checks."""

from __future__ import annotations

import re
import secrets

from ..errors import InvalidParameter, MalformedId


def new_id(prefix: str) -> str:
    """An AWS-style id: prefix, dash, 17 lowercase hex digits."""
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


_AWS_ID = re.compile(r"^[a-z]+-(?:[0-9a-f]{8}|[0-9a-f]{17})$")


def is_aws_id(value: object, prefix: str) -> bool:
    """True when ``value`` is an id AWS could have issued: ``prefix-`` and 8 or 17 lowercase
    hex digits (``vol-``, ``snap-``, ``i-`` ...). The engine itself accepts any short hex tail
    (:func:`check_id`); the AWS endpoint answers ``*.Malformed`` for anything else."""
    return isinstance(value, str) and value.startswith(prefix + "-") and \
        _AWS_ID.match(value) is not None


def check_id(value: str, prefix: str) -> None:
    """Raise :class:`MalformedId` unless ``value`` looks like ``prefix-<hex>``."""
    if not isinstance(value, str) or not value.startswith(prefix + "-"):
        raise MalformedId(f'Invalid id: "{value}" (expecting "{prefix}-...")')
    rest = value[len(prefix) + 1:]
    if not rest or any(c not in "0123456789abcdef" for c in rest) or len(rest) > 32:
        raise MalformedId(f'Invalid id: "{value}" (expecting "{prefix}-...")')


def check_int(name: str, value: object) -> None:
    """Refuse a present value that is not a whole number (bools included)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidParameter(f"Value ({value!r}) for parameter {name} is invalid: "
                               f"expected a whole number.")
