"""What every EC2 action module shares: filters, pagination, renderers and the base of the
action classes (its store, engine, cloud layer and the checks several resources use).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from ebsengine import errors as engine_errors
from ebsengine.cloud import Cloud, Scope
from ebsengine.cloud.scope import zone_of
from ebsengine.rules import check_tags, is_aws_id

from ..errors import ApiError
from ..store import AwsStore, Context

Params = dict[str, Any]
Result = dict[str, Any]


@dataclass
class ModificationRules:
    """Elastic Volumes timing and rate limit (AWS: up to 4 per rolling 24 h)."""

    modifying_seconds: float = 0.0
    optimizing_seconds: float = 0.0
    max_per_window: int = 4
    window_seconds: float = 86400.0


# --- filters and pagination ----------------------------------------------------------------


def _wildcard(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$", re.S)


Extractor = Callable[[Any], Iterable[str]]


def apply_filters(items: list[Any], filters: list[dict[str, Any]] | None, table: dict[str, Extractor],
                  tags: Callable[[Any], dict[str, str]] | None) -> list[Any]:
    """Keep items matching every filter (values within one filter OR; ``*``/``?`` wildcards).

    ``tag:<key>`` and ``tag-key`` work when ``tags`` is given. Unknown filter names raise
    ``InvalidParameterValue`` before anything is evaluated.
    """
    if not filters:
        return items
    match = compile_filters(filters, table, tags)
    return [item for item in items if match(item)]


def compile_filters(filters: list[dict[str, Any]] | None, table: dict[str, Extractor],
                    tags: Callable[[Any], dict[str, str]] | None) -> Callable[[Any], bool]:
    """The predicate of :func:`apply_filters`, to test items one by one while paging.
    Unknown filter names raise ``InvalidParameterValue`` here, before any item is read."""
    if not filters:
        return lambda item: True
    compiled: list[tuple[Extractor, list[re.Pattern[str]]]] = []
    for f in filters:
        name = f.get("Name") or ""
        values = [_wildcard(v) for v in f.get("Values") or []]
        if name.startswith("tag:") and tags is not None:
            key = name[4:]
            ext: Extractor = (lambda k: (lambda r: [tags(r)[k]] if k in tags(r) else []))(key)
        elif name == "tag-key" and tags is not None:
            ext = lambda r: list(tags(r))  # noqa: E731
        elif name == "tag-value" and tags is not None:
            ext = lambda r: list(tags(r).values())  # noqa: E731
        elif name in table:
            ext = table[name]
        else:
            raise ApiError("InvalidParameterValue", f"The filter '{name}' is invalid")
        compiled.append((ext, values))
    return lambda item: all(any(p.match(str(v)) for v in ext(item) for p in pats)
                            for ext, pats in compiled)


def exact_values(filters: list[dict[str, Any]] | None, name: str) -> list[str] | None:
    """The values of filter ``name`` when it is given once with no wildcard in any value
    (so that an index lookup can replace the scan), else None."""
    found = [f for f in filters or [] if f.get("Name") == name]
    if len(found) != 1:
        return None
    values = found[0].get("Values") or []
    if not values or any(any(c in v for c in "*?\\") for v in values):
        return None
    return [str(v) for v in values]


def _b(v: bool) -> str:
    return "true" if v else "false"


class Paginator:
    """MaxResults/NextToken over a list sorted by a stable key; tokens name the last key returned."""

    def __init__(self, kind: str, lo: int, hi: int) -> None:
        self.kind, self.lo, self.hi = kind, lo, hi

    def page(self, items: list[Any], key: Callable[[Any], list[Any]], max_results: int | None,
             next_token: str | None) -> tuple[list[Any], str | None]:
        if max_results is not None and max_results < self.lo:
            raise ApiError("InvalidParameterValue",
                           f"Value ( {max_results} ) for parameter maxResults is invalid. "
                           f"Expecting a value greater than {self.lo}.")
        if next_token:
            try:
                doc = json.loads(base64.b64decode(next_token, validate=True))
                if not isinstance(doc, dict) or doc.get("k") != self.kind:
                    raise ValueError
                after = doc["a"]
                items = [i for i in items if key(i) > after]  # a forged key may not compare
            except (ValueError, KeyError, TypeError):
                raise ApiError("InvalidParameterValue", f"Invalid value '{next_token}' for nextToken") from None
        if max_results is None and not next_token:
            return items, None
        limit = min(max_results if max_results is not None else self.hi, self.hi)
        page = items[:limit]
        if len(items) > limit:
            last = key(page[-1])
            token = base64.b64encode(json.dumps({"k": self.kind, "a": last}).encode()).decode()
            return page, token
        return page, None


class CursorPages:
    """MaxResults/NextToken for the engine's cursor paging (items in id order).

    A token names the last id of its page, signed (:meth:`AwsStore.make_token`) and bound to
    its kind and region, so a forged or foreign token is refused; the next page resumes
    right after that id, so paging costs O(page), and an item deleted meanwhile does not
    shift the pages.
    """

    def __init__(self, store: AwsStore, kind: str, id_prefix: str, lo: int = 5,
                 hi: int = 1000) -> None:
        self.store, self.kind, self.id_prefix, self.lo, self.hi = store, kind, id_prefix, lo, hi

    def open(self, ctx: Context, p: Params) -> tuple[str | None, int | None]:
        """``(after, limit)`` of the request; ``limit`` is None for an unpaged call."""
        max_results, token = p.get("MaxResults"), p.get("NextToken")
        if max_results is not None and max_results < self.lo:
            raise ApiError("InvalidParameterValue",
                           f"Value ( {max_results} ) for parameter maxResults is invalid. "
                           f"Expecting a value greater than {self.lo}.")
        after = None
        if token:
            after = self.store.open_token(token, "page", self.kind, ctx.region)
            if after is None or not is_aws_id(after, self.id_prefix):
                raise ApiError("InvalidParameterValue", f"Invalid value '{token}' for nextToken")
        if max_results is None and not token:
            return None, None
        return after, min(max_results if max_results is not None else self.hi, self.hi)

    def token(self, ctx: Context, last: str | None) -> str | None:
        return None if last is None else self.store.make_token(last, "page", self.kind, ctx.region)

    @staticmethod
    def in_memory(items: list[Any], after: str | None,
                  limit: int | None) -> tuple[list[Any], str | None]:
        """The same paging over an explicit list (id lookups)."""
        items = sorted((i for i in items if after is None or i.id > after), key=lambda i: i.id)
        if limit is None or len(items) <= limit:
            return items, None
        return items[:limit], items[limit - 1].id


# --- renderers (engine dataclass -> botocore output shape) ---------------------------------


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]] | None:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())] or None


def volume_view(vol: Any, state: str | None = None) -> Result:
    return {
        "VolumeId": vol.id,
        "Size": vol.size_gib,
        "SnapshotId": vol.snapshot_id or "",
        "AvailabilityZone": vol.availability_zone,
        "State": state or vol.state,
        "CreateTime": vol.create_time,
        "Attachments": [
            {
                "VolumeId": vol.id,
                "InstanceId": a.get("instance_id"),
                "Device": a.get("device"),
                "State": a.get("state", "attached"),
                "AttachTime": a.get("attach_time"),
                "DeleteOnTermination": bool(a.get("delete_on_termination", False)),
            }
            for a in (vol.attachments or [])
        ],
        "Tags": _tag_list(vol.tags),
        "VolumeType": vol.volume_type,
        "Iops": vol.iops,
        "Throughput": vol.throughput,
        "Encrypted": bool(vol.encrypted),
        "KmsKeyId": vol.kms_key_id,
        "MultiAttachEnabled": bool(vol.multi_attach_enabled),
    }



class Actions:
    """Base of the per-resource action classes that :class:`~ebsengine.aws.ec2.Ec2Model`
    combines: one method per action, named like boto3's, listed in ``ACTIONS``."""

    ACTIONS: ClassVar[dict[str, str]] = {}

    store: AwsStore
    engine: Any
    cloud: Cloud
    rules: ModificationRules

    def _snapshot_or_none(self, snapshot_id: str) -> Any:
        try:
            return self.engine.get_snapshot(snapshot_id)
        except engine_errors.EbsError:
            return None

    def scope(self, ctx: Context) -> Scope:
        return Scope(ctx.region, ctx.account_id)

    def _spec_tags(self, specs: list[dict[str, Any]] | None, resource_type: str) -> dict[str, str]:
        tags: dict[str, str] = {}
        for spec in specs or []:
            rtype = spec.get("ResourceType")
            if rtype != resource_type:
                raise ApiError("InvalidParameterValue",
                               f"'{rtype}' is not a valid taggable resource type for this operation.")
            for t in spec.get("Tags") or []:
                tags[t.get("Key", "")] = t.get("Value", "")
        return check_tags(tags)

    def _zone(self, ctx: Context, params: Params) -> str:
        """The zone of a CreateVolume: one of the region's zones (those DescribeAvailabilityZones
        lists), by name or by id."""
        zone = zone_of(self.scope(ctx), params.get("AvailabilityZone"),
                       params.get("AvailabilityZoneId"))
        if not zone:
            raise ApiError("MissingParameter", "The request must contain the parameter AvailabilityZone")
        return zone


def _iso(t: float) -> str:
    from ..shapes import iso8601

    return iso8601(t)
