"""Tags, descriptions and names: EC2's limits, and no character AWS's XML cannot carry."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from ..errors import InvalidParameter, InvalidTag, TagLimitExceeded

MAX_TAGS = 50
#: (longest key, longest value): EC2's tags, and the EBS direct API's (its model's Tag shape)
EC2_TAG_LIMITS = (128, 256)
EBS_DIRECT_TAG_LIMITS = (127, 255)


def check_tags(tags: dict[str, str] | None,
               limits: tuple[int, int] = EC2_TAG_LIMITS) -> dict[str, str]:
    """A copy of ``tags`` if they obey the tag rules, else InvalidTag (TagLimitExceeded for
    more than ``MAX_TAGS``). ``limits``: the longest key and value allowed."""
    max_key, max_value = limits
    if tags is not None and not isinstance(tags, dict):
        raise InvalidTag(f"Tags must be a mapping of key to value, not {type(tags).__name__}")
    tags = dict(tags or {})
    if len(tags) > MAX_TAGS:
        raise TagLimitExceeded(f"A resource can have at most {MAX_TAGS} tags.")
    for k, v in tags.items():
        if not isinstance(k, str) or not k or len(k) > max_key:
            raise InvalidTag(f"Tag key {k!r} must be 1-{max_key} characters.")
        if not isinstance(v, str) or len(v) > max_value:
            raise InvalidTag(f"Tag value for {k!r} must be at most {max_value} characters.")
        check_tag_key(k)
        check_text(f"tag {k!r}", k, InvalidTag)
        check_text(f"tag value for {k!r}", v, InvalidTag)
    return tags


#: the reserved (``aws:``) keys the system itself is setting right now (see system_tag_keys)
_SYSTEM_KEYS: ContextVar[frozenset[str]] = ContextVar("system_tag_keys", default=frozenset())


@contextlib.contextmanager
def system_tag_keys(*keys: str) -> Iterator[None]:
    """Within the block (this thread/context only), :func:`check_tags` accepts exactly these
    reserved ``aws:`` keys: how the system puts AWS's own tags on what it makes (Data
    Lifecycle Manager's ``aws:dlm:lifecycle-policy-id``...) or keeps them on a resource
    whose other tags change. User input never runs inside it."""
    for k in keys:
        if not k.lower().startswith("aws:"):
            raise ValueError(f"system_tag_keys is for reserved aws: keys, not {k!r}")
    token = _SYSTEM_KEYS.set(_SYSTEM_KEYS.get() | frozenset(keys))
    try:
        yield
    finally:
        _SYSTEM_KEYS.reset(token)


def kept_reserved(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """The reserved keys of ``old`` that ``new`` keeps unchanged (a user changing other
    tags of a resource the system tagged keeps the system's tags)."""
    return [k for k, v in old.items() if k.lower().startswith("aws:") and new.get(k) == v]


def check_tag_key(key: str) -> None:
    """Refuse a key that users may neither set nor delete: the ``aws:`` prefix is AWS's own
    (except the exact keys the system sets inside :func:`system_tag_keys`)."""
    if key.lower().startswith("aws:") and key not in _SYSTEM_KEYS.get():
        raise InvalidTag(f"Tag keys starting with 'aws:' are reserved ({key!r}).")


def check_text(what: str, text: str,
               error: type[InvalidParameter] = InvalidParameter) -> None:
    """Refuse control characters: they cannot travel in AWS's XML responses (a stored one
    would break every later Describe) and no EBS name or value allows them."""
    if any((ord(c) < 32 and c not in "\t\n\r") or ord(c) == 0x7F or 0xD800 <= ord(c) < 0xE000
           or ord(c) in (0xFFFE, 0xFFFF) for c in text):
        raise error(f"The {what} contains a control character.")


def check_description(description: str) -> None:
    if not isinstance(description, str) or len(description) > 255:
        raise InvalidParameter("Description must be a string of at most 255 characters.")
    check_text("description", description)
