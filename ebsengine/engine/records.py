"""Volume and snapshot records: how they are read, written and paged in a transaction.

The engine's concern modules (volumes, snapshots, transfer, usage) reach records only
through :class:`Records`; it holds the store's tables and nothing else, and opens no write
transaction of its own (the callers' unit of work does).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from .. import layout as L
from ..errors import IncorrectState, InvalidParameter, SnapshotNotFound, VolumeNotFound
from ..model import Snapshot, Volume
from ..rules import check_id
from ..storage.base import Txn
from ..storage.store import Store

R = TypeVar("R", Volume, Snapshot)


class Records:
    """The ``volumes``, ``snapshots`` and ``snaps_by_volume`` tables of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    def vol_rec(self, txn: Txn, volume_id: str) -> dict[str, Any]:
        check_id(volume_id, "vol")
        raw = txn.get(volume_id.encode(), db=self.db["volumes"])
        if raw is None:
            raise VolumeNotFound(f"The volume '{volume_id}' does not exist.")
        rec: dict[str, Any] = json.loads(raw)
        return rec

    def snap_rec(self, txn: Txn, snap_id: str) -> dict[str, Any]:
        check_id(snap_id, "snap")
        raw = txn.get(snap_id.encode(), db=self.db["snapshots"])
        if raw is None:
            raise SnapshotNotFound(f"The snapshot '{snap_id}' does not exist.")
        rec: dict[str, Any] = json.loads(raw)
        return rec

    def put_vol(self, txn: Txn, rec: dict[str, Any]) -> None:
        txn.put(rec["id"].encode(), json.dumps(rec, sort_keys=True).encode(),
                db=self.db["volumes"])

    def put_snap(self, txn: Txn, rec: dict[str, Any]) -> None:
        """Write a snapshot record and its ``snaps_by_volume`` entry (same transaction)."""
        txn.put(rec["id"].encode(), json.dumps(rec, sort_keys=True).encode(),
                db=self.db["snapshots"])
        if rec.get("volume_id"):
            txn.put(L.snap_volume_key(rec["volume_id"], rec["id"]), b"",
                    db=self.db["snaps_by_volume"])

    def delete_snap(self, txn: Txn, rec: dict[str, Any]) -> None:
        txn.delete(rec["id"].encode(), db=self.db["snapshots"])
        if rec.get("volume_id"):
            txn.delete(L.snap_volume_key(rec["volume_id"], rec["id"]),
                       db=self.db["snaps_by_volume"])

    def page(self, db: str, make: Callable[[dict[str, Any]], R], after: str | None,
              limit: int | None, keep: Callable[[R], bool] | None,
              prefix: bytes | None = None) -> tuple[list[R], str | None]:
        """Records of ``db`` (as ``make(record)``) in id order after id ``after``
        (exclusive), at most ``limit`` of them for which ``keep`` holds; with ``prefix``,
        the ids come from the ``snaps_by_volume`` entries under it, not a scan of ``db``.

        Returns the page and, when a further match exists, the id to resume after. Reads in
        short read transactions of at most ``limit + 1`` records and stops once the page is
        full and one more match is seen: a page costs O(page + records ``keep`` rejects),
        never O(all records). ``keep`` runs outside any transaction.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise InvalidParameter(f"A page holds at least one item, not {limit!r}")
        out: list[R] = []
        want = None if limit is None else limit + 1  # one more than a page: is there more?
        records = self.db[db]
        scanned = records if prefix is None else self.db["snaps_by_volume"]
        pos = (prefix or b"") + (b"" if after is None else after.encode())
        exclusive = after is not None  # ``pos`` itself was returned already
        while want is None or len(out) < want:
            step = 512 if want is None else max(16, want - len(out))
            batch: list[R] = []
            with self.store.read() as txn:
                cur = txn.cursor(db=scanned)
                ok = cur.set_range(pos)
                if ok and exclusive and cur.key() == pos:
                    ok = cur.next()
                while ok and len(batch) < step:
                    key = bytes(cur.key())
                    if prefix is None:
                        batch.append(make(json.loads(bytes(cur.value()))))
                    elif not key.startswith(prefix):
                        ok = False
                        break
                    else:
                        raw = txn.get(key[len(prefix):], db=records)
                        if raw is not None:
                            batch.append(make(json.loads(bytes(raw))))
                    ok = cur.next()
                if ok:
                    pos, exclusive = bytes(cur.key()), False  # the first key not read yet
            for rec in batch:
                if keep is None or keep(rec):
                    out.append(rec)
                    if want is not None and len(out) == want:
                        break
            if not ok:
                break
        if limit is None or len(out) <= limit:
            return out, None
        out = out[:limit]
        return out, out[-1].id

    def completed(self, txn: Txn, snap_id: str) -> dict[str, Any]:
        rec = self.snap_rec(txn, snap_id)
        if rec["state"] != "completed":
            raise IncorrectState(f"Snapshot '{snap_id}' is {rec['state']}, not completed.")
        return rec
