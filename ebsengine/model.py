"""Resource records (volumes, snapshots) and EBS's volume-type rules.

Limits follow ../shared/spec/AWS_SEMANTICS.md section 1.1 (the current botocore model).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import (InvalidParameter, InvalidParameterCombination, MalformedId,
                     MissingParameter)
from .layout import GIB


def new_id(prefix: str) -> str:
    """An AWS-style id: prefix, dash, 17 lowercase hex digits."""
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


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


@dataclass(frozen=True)
class TypeRule:
    min_gib: int
    max_gib: int
    iops: tuple[int, int, int] | None = None  # (min, max, max per GiB); None = not settable
    iops_required: bool = False
    iops_default: int | None = None
    throughput: tuple[int, int] | None = None  # (min, max) MiB/s; None = not settable
    throughput_default: int | None = None
    multi_attach: bool = False


VOLUME_TYPES: dict[str, TypeRule] = {
    "gp2": TypeRule(1, 16384),
    "gp3": TypeRule(1, 65536, iops=(3000, 80000, 500), iops_default=3000,
                    throughput=(125, 2000), throughput_default=125),
    "io1": TypeRule(4, 16384, iops=(100, 64000, 50), iops_required=True, multi_attach=True),
    "io2": TypeRule(4, 65536, iops=(100, 256000, 1000), iops_required=True, multi_attach=True),
    "st1": TypeRule(125, 16384),
    "sc1": TypeRule(125, 16384),
    "standard": TypeRule(1, 1024),
}


def gp2_iops(size_gib: int) -> int:
    """gp2 baseline IOPS: 3 per GiB, at least 100, at most 16,000."""
    return max(100, min(16000, 3 * size_gib))


def validate_volume_spec(volume_type: str, size_gib: int, iops: int | None,
                         throughput: int | None, multi_attach: bool,
                         *, defaults: bool = True) -> tuple[int | None, int | None]:
    """Check a volume's type, size, IOPS and throughput as EBS does.

    Returns the effective ``(iops, throughput)`` (defaults filled in when ``defaults``).
    Raises InvalidParameter / InvalidParameterCombination / MissingParameter.
    """
    rule = VOLUME_TYPES.get(volume_type)
    if rule is None:
        raise InvalidParameter(f"The volume type '{volume_type}' is not valid. Valid types: "
                               + ", ".join(VOLUME_TYPES))
    check_int("size", size_gib)
    check_int("iops", iops)
    check_int("throughput", throughput)
    if not rule.min_gib <= size_gib <= rule.max_gib:
        raise InvalidParameter(f"Volume of {size_gib}GiB is out of range for volume type "
                               f"{volume_type}: size must be {rule.min_gib}-{rule.max_gib} GiB")
    if iops is not None and rule.iops is None:
        raise InvalidParameterCombination(
            f"The parameter iops is not supported for {volume_type} volumes.")
    if throughput is not None and rule.throughput is None:
        raise InvalidParameterCombination(
            f"The parameter throughput is not supported for {volume_type} volumes.")
    if multi_attach and not rule.multi_attach:
        raise InvalidParameterCombination(
            f"Multi-Attach is not supported for {volume_type} volumes.")
    if rule.iops is not None:
        if iops is None:
            if rule.iops_required:
                raise MissingParameter(f"The request must contain the parameter iops "
                                       f"for {volume_type} volumes.")
            iops = rule.iops_default if defaults else None
        if iops is not None:
            lo, hi, per_gib = rule.iops
            if not lo <= iops <= hi:
                raise InvalidParameter(f"Volume iops of {iops} is out of range for "
                                       f"{volume_type}: {lo}-{hi}.")
            if iops > per_gib * size_gib and iops > lo:
                raise InvalidParameter(
                    f"Iops to volume size ratio of {iops / size_gib:g} is too high; maximum "
                    f"is {per_gib}.")
    elif volume_type == "gp2":
        iops = gp2_iops(size_gib)
    if rule.throughput is not None:
        if throughput is None:
            throughput = rule.throughput_default if defaults else None
        if throughput is not None:
            lo, hi = rule.throughput
            if not lo <= throughput <= hi:
                raise InvalidParameter(f"Throughput of {throughput} MiB/s is out of range for "
                                       f"{volume_type}: {lo}-{hi}.")
            if iops is not None and throughput > iops // 4 and throughput > lo:
                raise InvalidParameter(f"Throughput of {throughput} MiB/s is too high for "
                                       f"{iops} IOPS; maximum is 0.25 MiB/s per IOPS.")
    return iops, throughput


class _Record:
    """JSON (de)serialisation shared by the records; unknown keys are kept out."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self, **extra: Any) -> bytes:
        d = self.to_dict()
        d.update(extra)
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Volume(_Record):
    """An EBS volume as the engine stores it."""

    id: str
    size_gib: int
    volume_type: str
    state: str
    create_time: float
    availability_zone: str = "us-east-1a"
    iops: int | None = None
    throughput: int | None = None
    snapshot_id: str | None = None
    encrypted: bool = False
    kms_key_id: str | None = None
    multi_attach_enabled: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    attachments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return self.size_gib * GIB


@dataclass(frozen=True)
class Snapshot(_Record):
    """An EBS snapshot as the engine stores it."""

    id: str
    volume_id: str | None
    volume_size_gib: int
    state: str
    start_time: float
    progress: int = 100
    completion_time: float | None = None
    description: str = ""
    encrypted: bool = False
    kms_key_id: str | None = None
    parent_id: str | None = None
    full_size_bytes: int = 0
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return self.volume_size_gib * GIB


@dataclass(frozen=True)
class Usage:
    """Storage accounting for one volume or snapshot, in bytes.

    ``logical_bytes``: the size a reader sees. ``stored_bytes``: bytes of stored (compressed)
    chunks it references (for a snapshot, those it recorded itself: its incremental size).
    ``unique_bytes``: stored bytes that deleting it would free now.
    """

    logical_bytes: int
    stored_bytes: int
    unique_bytes: int
    written_bytes: int = 0


@dataclass
class FsckReport:
    ok: bool
    problems: list[str]
    stats: dict[str, int]
