"""The LMDB backend of :class:`~.store.Store`: the only module that imports ``lmdb``.

:class:`LmdbBackend` opens one LMDB environment in a directory and hands out py-lmdb's own
transactions and cursors, which already have the call shape of :mod:`.base` (no wrapper on
the hot path). What is LMDB-specific lives here: opening flags, the translation of LMDB
failures into the engine's errors, page-based space accounting and the two-commit page
reuse clock (:meth:`LmdbBackend.reclaim`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import Any

import lmdb

from .. import layout as L
from ..errors import CorruptStore, StoreFull
from .base import DEFAULT_MAP_SIZE, Table, Txn


class LmdbBackend:
    """One LMDB environment in directory ``path`` (created if missing unless ``readonly``)."""

    errors: tuple[type[BaseException], ...] = (lmdb.Error,)

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE,
                 readonly: bool = False) -> None:
        self.path = os.fspath(path)
        if not readonly:
            os.makedirs(self.path, exist_ok=True)
        try:
            self.env = lmdb.open(self.path, map_size=map_size, max_dbs=len(L.DBS) + 2,
                                 subdir=True, readonly=readonly, sync=True, metasync=True,
                                 readahead=True, writemap=False, max_readers=1024, lock=True)
        except lmdb.Error as exc:
            raise CorruptStore(f"cannot open store at {self.path}: {exc}") from exc
        self.map_size = map_size
        self.readonly = readonly
        self._psize = self.env.stat()["psize"]

    def open_db(self, key: bytes, create: bool = True) -> Table:
        env: Any = self.env
        return env.open_db(key, create=create)  # type: ignore[no-any-return]

    def begin(self, db: Table | None = None, parent: Txn | None = None, write: bool = False,
              buffers: bool = False) -> Txn:
        env: Any = self.env  # py-lmdb's Transaction has the shape of Txn
        return env.begin(db=db, parent=parent, write=write,  # type: ignore[no-any-return]
                         buffers=buffers)

    def translate(self, exc: BaseException) -> Exception:
        return _translate(exc, self.path)

    def used_bytes(self, txn: Txn, tables: Iterable[Table]) -> int:
        used = 0  # pages in use after this transaction (freed pages are not counted)
        for h in tables:
            st = txn.stat(h)
            used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        st = txn.stat()  # the main DB, which names the sub-databases
        used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return used * self._psize

    def commit_id(self) -> int:
        return int(self.env.info()["last_txnid"])

    def reclaim(self) -> None:
        """Commit two tiny transactions (best effort).

        LMDB hands pages freed by commit N to writers only from commit N+2 on, and a refused
        (aborted) transaction does not move that clock. After a "full" refusal, or after a
        delete when the map is nearly full, this makes freed space usable by the very next
        request instead of leaving every retry refused.
        """
        meta = self.env.open_db(b"meta", create=False)
        for _ in range(2):
            try:
                with self.env.begin(write=True) as txn:
                    # dirties a page and leaves the content as it was
                    txn.put(b"tick", b"", db=meta)
                    txn.delete(b"tick", db=meta)
            except lmdb.Error:
                return

    def nearly_full(self) -> bool:
        info = self.env.info()
        return bool((info["last_pgno"] + 1) * self._psize > 0.8 * info["map_size"])

    def close(self) -> None:
        self.env.close()


def _translate(exc: BaseException, path: str | None = None) -> Exception:
    """One table from LMDB failures to ours. A commit that fails with EIO on a nearly full
    disk is a full disk (LMDB reports a short write as EIO), not a corrupt store."""
    if isinstance(exc, lmdb.MapFullError):
        return StoreFull("the store is full (LMDB map size reached); nothing was changed")
    if isinstance(exc, lmdb.DiskError) or getattr(exc, "errno", None) == errno.ENOSPC \
            or "No space left" in str(exc):
        return StoreFull(f"the disk holding the store is full; nothing was changed ({exc})")
    eio = "Input/output error" in str(exc) or getattr(exc, "errno", None) == errno.EIO
    if path is not None and eio and _disk_nearly_full(path):
        return StoreFull(f"the disk holding the store is full; nothing was changed ({exc})")
    return CorruptStore(f"LMDB error: {exc}")


def _disk_nearly_full(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bavail * st.f_frsize
    return free < max(64 * 1024 * 1024, st.f_blocks * st.f_frsize // 100)


__all__ = ["LmdbBackend"]
