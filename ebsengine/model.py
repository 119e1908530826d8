"""Resource records (volumes, snapshots) as the engine stores them, and its reports."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from .layout import GIB

_R = TypeVar("_R", bound="_Record")


@dataclass(frozen=True)
class _Record:
    """JSON (de)serialisation shared by the records; unknown keys are kept out."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, **extra: Any) -> bytes:
        d = self.to_dict()
        d.update(extra)
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_dict(cls: type[_R], d: dict[str, Any]) -> _R:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Volume(_Record):
    """An EBS volume as the engine stores it."""

    id: str
    size_gib: int
    volume_type: str
    state: str
    create_time: float
    availability_zone: str
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
    #: why a snapshot is in state ``error`` (EC2's ``StateMessage``), else None
    state_message: str | None = None

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
    #: what could not be verified (encrypted data whose keys were not given), and why
    unverified: list[str] = field(default_factory=list)
