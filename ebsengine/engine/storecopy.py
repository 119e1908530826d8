"""``copy_store``: a store copied to another backend, then checked (see
:mod:`ebsengine.storage.copy` for what is copied, what is refused and why a copy is all or
nothing). This module adds the engine's part: fsck of the destination once it is complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import MasterKeyError
from ..model import FsckReport
from ..storage.base import DEFAULT_MAP_SIZE
from ..storage.copy import BATCH, CHUNK_BATCH, CopyStats, ProgressFn, copy_tables
from .core import Engine


@dataclass
class CopyReport:
    """What :func:`copy_store` copied (``stats``) and the destination's fsck (``fsck``)."""

    stats: CopyStats
    fsck: FsckReport

    @property
    def ok(self) -> bool:
        return self.fsck.ok

    @property
    def rate(self) -> float:
        """Stored bytes copied per second (MiB/s: divide by 2**20)."""
        return self.stats.stored_bytes / max(self.stats.seconds, 1e-9)


def copy_store(src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str], *,
               batch: int = BATCH, chunk_batch: int = CHUNK_BATCH,
               progress: ProgressFn | None = None,
               master_key: str | os.PathLike[str] | None = None,
               map_size: int = DEFAULT_MAP_SIZE) -> CopyReport:
    """Copy the store at ``src_path`` (LMDB directory, ``memory://NAME`` or ``rados://``)
    into a new, empty store at ``dst_path`` on any backend, then fsck the destination.

    Every table row and every chunk is copied as stored (compressed and sealed values
    unchanged: no key is needed and an encrypted store stays encrypted), in batches of
    ``batch`` rows / ``chunk_batch`` chunks per transaction; ``progress(done, total)``
    counts rows and chunks. Refused, nothing changed: a destination that is not empty
    (IncorrectState), a source owned by a serving process (StoreOwned). A source written to
    during the copy stops it (StoreLocked). Until the copy's last commit the destination
    carries a marker and refuses to open ("an unfinished copy from ...: delete it and copy
    again"). The destination's fsck opens encrypted data with ``master_key`` (default as
    :class:`Engine`'s); without it, encrypted values get the structural checks only and
    the report's ``unverified`` says so.
    """
    stats = copy_tables(src_path, dst_path, batch=batch, chunk_batch=chunk_batch,
                        progress=progress, map_size=map_size)
    try:
        with Engine(dst_path, readonly=True, master_key=master_key, map_size=map_size) as eng:
            report = eng.fsck()
    except MasterKeyError as exc:  # the copy needs no key; its check of sealed values does
        report = _fsck_without_keys(os.fspath(dst_path), map_size)
        report.unverified.append(f"every encrypted value: {exc}")
    return CopyReport(stats, report)


def _fsck_without_keys(path: str, map_size: int) -> FsckReport:
    from ..block.maps import BlockMaps
    from ..check import check_store
    from ..storage.chunks import ChunkStore
    from ..storage.store import Store
    store = Store(path, readonly=True, map_size=map_size)
    try:
        chunks = ChunkStore(store)
        return check_store(store, chunks, BlockMaps(store, chunks))
    finally:
        store.close()


__all__ = ["CopyReport", "copy_store"]
