"""Tags of volumes and snapshots, and the service key/value space (records a service
layer keeps beside the engine's own, committed in the same units of work)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .. import layout as L
from ..errors import InvalidParameter
from ..rules import check_tags, kept_reserved, system_tag_keys
from .records import Records
from .unit import Transaction, Units


class Meta:
    """Tags and service records, each change in the caller's unit of work or one of its own."""

    def __init__(self, records: Records, units: Units) -> None:
        self.records = records
        self.store = records.store
        self.units = units

    def _retag(self, resource_id: str, change: Callable[[dict[str, str]], dict[str, str]],
               tx: Transaction | None) -> None:
        if not isinstance(resource_id, str):
            raise InvalidParameter(f"Resource id {resource_id!r} is not a volume or snapshot")
        with self.units.unit(tx, grows=True) as (_, txn):
            if resource_id.startswith("vol-"):
                rec = self.records.vol_rec(txn, resource_id)
                rec["tags"] = _retagged(rec["tags"], change)
                self.records.put_vol(txn, rec)
            elif resource_id.startswith("snap-"):
                rec = self.records.snap_rec(txn, resource_id)
                rec["tags"] = _retagged(rec["tags"], change)
                self.records.put_snap(txn, rec)
            else:
                raise InvalidParameter(f"Resource id {resource_id!r} is not a volume or snapshot")

    def set_tags(self, resource_id: str, tags: dict[str, str], *,
                 tx: Transaction | None = None) -> None:
        self._retag(resource_id, lambda cur: {**cur, **tags}, tx)

    def delete_tags(self, resource_id: str, tags: dict[str, str | None], *,
                    tx: Transaction | None = None) -> None:
        self._retag(resource_id, lambda cur: {
            k: v for k, v in cur.items()
            if not (k in tags and (tags[k] is None or tags[k] == v))}, tx)

    def service_get(self, namespace: str, key: str, *, tx: Transaction | None = None) -> Any:
        with self.units.reading(tx) as txn:
            raw = txn.get(L.service_key(namespace, key), db=self.store.db["service"])
        return None if raw is None else json.loads(raw)

    def service_put(self, namespace: str, key: str, value: Any, *,
                    tx: Transaction | None = None) -> None:
        k = L.service_key(namespace, key)
        with self.units.unit(tx, grows=value is not None, frees=value is None) as (_, txn):
            if value is None:
                txn.delete(k, db=self.store.db["service"])
            else:
                txn.put(k, json.dumps(value).encode(), db=self.store.db["service"])

    def service_items(self, namespace: str, prefix: str = "", *, limit: int | None = None,
                      tx: Transaction | None = None) -> list[tuple[str, Any]]:
        start = L.service_key(namespace, prefix)
        ns = L.service_key(namespace, "")
        out: list[tuple[str, Any]] = []
        with self.units.reading(tx) as txn:
            cur = txn.cursor(db=self.store.db["service"])
            if cur.set_range(start):
                for k, v in cur:
                    if not k.startswith(start) or (limit is not None and len(out) >= limit):
                        break
                    out.append((k[len(ns):].decode(), json.loads(v)))
        return out


def _retagged(old: dict[str, str],
              change: Callable[[dict[str, str]], dict[str, str]]) -> dict[str, str]:
    """``change(old)``, checked; reserved ``aws:`` tags the system put on (DLM's) and the
    change keeps stay allowed, a new one is still refused."""
    new = change(dict(old))
    with system_tag_keys(*kept_reserved(old, new)):
        return check_tags(new)
