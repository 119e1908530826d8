"""Tags, descriptions and names: EC2's limits, and no character AWS's XML cannot carry."""

from __future__ import annotations

from ..errors import InvalidParameter

MAX_TAGS = 50


def check_tags(tags: dict[str, str] | None) -> dict[str, str]:
    if tags is not None and not isinstance(tags, dict):
        raise InvalidParameter(f"Tags must be a mapping of key to value, not {type(tags).__name__}")
    tags = dict(tags or {})
    if len(tags) > MAX_TAGS:
        raise InvalidParameter(f"A resource can have at most {MAX_TAGS} tags.")
    for k, v in tags.items():
        if not isinstance(k, str) or not k or len(k) > 128:
            raise InvalidParameter(f"Tag key {k!r} must be 1-128 characters.")
        if not isinstance(v, str) or len(v) > 256:
            raise InvalidParameter(f"Tag value for {k!r} must be at most 256 characters.")
        if k.lower().startswith("aws:"):
            raise InvalidParameter(f"Tag keys starting with 'aws:' are reserved ({k!r}).")
        check_text(f"tag {k!r}", k)
        check_text(f"tag value for {k!r}", v)
    return tags


def check_text(what: str, text: str) -> None:
    """Refuse control characters: they cannot travel in AWS's XML responses (a stored one
    would break every later Describe) and no EBS name or value allows them."""
    if any((ord(c) < 32 and c not in "\t\n\r") or ord(c) == 0x7F or 0xD800 <= ord(c) < 0xE000
           or ord(c) in (0xFFFE, 0xFFFF) for c in text):
        raise InvalidParameter(f"The {what} contains a control character.")


def check_description(description: str) -> None:
    if not isinstance(description, str) or len(description) > 255:
        raise InvalidParameter("Description must be a string of at most 255 characters.")
    check_text("description", description)
