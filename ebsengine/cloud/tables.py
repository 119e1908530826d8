"""Typed records of the cloud layer, persisted in the engine's service key/value space.

Each record kind is a frozen dataclass with a ``KIND`` (its namespace is ``ec2.<KIND>``,
keyed by the record's ``id``) stored as JSON. Records are read and written through a
:class:`Table`, always in the caller's unit of work when one is given (``tx=``), so a
change touching an instance, its volumes and its addresses commits once or not at all.
Unknown keys in a stored record are ignored on load and new fields take their defaults,
so adding a field needs no migration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, Generic, TypeVar

from ebsengine.engine import Engine, Transaction

R = TypeVar("R", bound="CloudRecord")


@dataclass(frozen=True)
class CloudRecord:
    """Fields every cloud resource has: its id, region, owner and tags."""

    KIND: ClassVar[str] = ""
    #: id prefix (``i``, ``ami``, ``key`` ...) and the ``ResourceType`` of its tags
    PREFIX: ClassVar[str] = ""
    RESOURCE_TYPE: ClassVar[str] = ""

    id: str
    region: str
    owner_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any]) -> R:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def but(self: R, **changes: Any) -> R:
        """A copy with ``changes`` applied (records are immutable)."""
        return replace(self, **changes)


class Table(Generic[R]):
    """The records of one kind: get, put, delete and list, in a unit of work or not."""

    def __init__(self, engine: Engine, cls: type[R],
                 observer: Callable[[str, str, CloudRecord | None, Transaction], None]
                 | None = None) -> None:
        self.engine = engine
        self.cls = cls
        self.ns = "ec2." + cls.KIND
        #: called with ``(KIND, id, record or None, tx)`` in the unit of every put/delete
        #: (the cost meter, :mod:`.meter`)
        self.observer = observer

    def get(self, rid: str, *, tx: Transaction | None = None) -> R | None:
        raw = self.engine.service_get(self.ns, rid, tx=tx)
        return None if raw is None else self.cls.from_dict(raw)

    def put(self, rec: R, *, tx: Transaction) -> R:
        self.engine.service_put(self.ns, rec.id, rec.to_dict(), tx=tx)
        if self.observer is not None:
            self.observer(self.cls.KIND, rec.id, rec, tx)
        return rec

    def delete(self, rid: str, *, tx: Transaction) -> None:
        self.engine.service_put(self.ns, rid, None, tx=tx)
        if self.observer is not None:
            self.observer(self.cls.KIND, rid, None, tx)

    def all(self, *, tx: Transaction | None = None) -> list[R]:
        """Every record of this kind, in id order."""
        return [self.cls.from_dict(v) for _, v in self.engine.service_items(self.ns, tx=tx)]

    def in_region(self, region: str, *, tx: Transaction | None = None) -> list[R]:
        return [r for r in self.all(tx=tx) if r.region == region]
