"""Store copy: every table and every chunk of one store into a new one, on any backend
(LMDB directory, ``memory://NAME``, ``rados://``): the way to move a store between LMDB
and Ceph RADOS (issue 10).

What is copied, and how
-----------------------
* Every row of every table of ``layout.DBS`` except ``chunks``, as stored (keys and values
  byte for byte): block maps, lineages with their bases and pins, volume and snapshot
  records, reference counts, pages, service records (KMS keys stay sealed by the same
  master key) and ``meta`` (format, chunk size, zstd level, next lineage id).
* Every chunk through the chunk backends: the source's ``iter_all`` into the destination's
  ``put_many``, keys kept, so ``refs`` and ``maps`` stay valid. Values are copied as stored:
  compressed and sealed bytes unchanged, so an encrypted store stays encrypted and no key
  is needed to copy it. The RADOS-only tables (``rados_index``, ``rados_gc``) are not copied:
  a RADOS destination's ``put_many`` writes its own index; chunks waiting out their grace
  in a source's ``rados_gc`` are no longer stored and are left behind.
* In bounded batches (``batch`` rows, ``chunk_batch`` chunks or ``pages`` rows, whose
  values are up to a chunk's size), each read in a fresh short
  read transaction of the source and written in a fresh write transaction of the
  destination: never one huge transaction. The next batch is read (by a helper thread)
  while the current one is written, so memory is bounded by a few batches.

All or nothing, for the user
----------------------------
* The destination must not exist or be empty (no table holds a row); anything else is
  refused before a write, with :class:`~ebsengine.errors.IncorrectState`. The copier owns
  the destination (:mod:`.owner`) for the whole copy.
* Its first commit that holds data writes ``meta[COPY_MARKER]`` (the source and the start
  time) together with the source's ``meta`` rows; its last commit removes it. A store
  carrying the marker is refused at open (:class:`~ebsengine.errors.FormatError`, "an
  unfinished copy from X: delete it and copy again"), except by the copier, so a copy that
  fails, is interrupted or is killed leaves nothing that opens as a store.

The source: read-only, idle, one point in time
----------------------------------------------
The source is opened read-only (nothing of it changes; a source carrying a copy marker is
refused like any open). A source that another process *owns* (``ebsengine serve``, open
devices) is refused up front with :class:`~ebsengine.errors.StoreOwned`: its write cache
holds acknowledged writes that the store does not. The copy is then proven to be of one
point in time the way fsck proves its check (``check.py``): the source's commit counter
(:meth:`.store.Store.commit_id`) is read before the first batch, after every batch and
before the last commit; if a commit happened meanwhile (another process wrote to the
source), the copy stops with :class:`~ebsengine.errors.StoreLocked` and the destination
keeps its marker (delete it and copy again once the source is idle). No retry: a retry
would first have to empty the destination, and a source that is being written to will
usually change again.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TypeVar

from .. import layout as L
from ..errors import IncorrectState, InvalidParameter, StoreLocked, StoreOwned
from .base import DEFAULT_MAP_SIZE, KvBackend, Table, Txn
from .chunks import ChunkStore
from .owner import store_owner
from .store import MEMORY_URL, RADOS_URL, Store, copy_source, local_dir, open_backend

BATCH = 1024  # table rows per transaction
CHUNK_BATCH = 128  # chunks per transaction (at most 8 MiB plus their envelopes)
#: tables of rados:// stores only (``layout.py``): checked for emptiness, never copied
RADOS_ONLY = ("rados_index", "rados_gc")
PREFETCH = 1  # source batches read ahead of the destination's writes
T = TypeVar("T")
#: ``progress(done, total)``: rows and chunks copied so far, of how many
ProgressFn = Callable[[int, int], None]


@dataclass
class CopyStats:
    """What :func:`copy_tables` copied: ``rows`` per table, ``chunks`` and the stored bytes
    (keys and values as stored) of both, and how long it took."""

    source: str
    destination: str
    rows: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    row_bytes: int = 0
    chunk_bytes: int = 0
    commits: int = 0
    seconds: float = 0.0

    @property
    def stored_bytes(self) -> int:
        return self.row_bytes + self.chunk_bytes

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "destination": self.destination,
                "rows": dict(self.rows), "chunks": self.chunks, "row_bytes": self.row_bytes,
                "chunk_bytes": self.chunk_bytes, "stored_bytes": self.stored_bytes,
                "commits": self.commits, "seconds": round(self.seconds, 3)}


def _same_store(a: str, b: str) -> bool:
    if a.startswith(MEMORY_URL) or b.startswith(MEMORY_URL):
        return a == b and a != MEMORY_URL
    return a == b or local_dir(a) == local_dir(b)


def _nonempty_tables(backend: KvBackend) -> tuple[list[str], bytes | None]:
    """The tables of ``backend`` holding rows, and its copy marker if it has one."""
    used: list[str] = []
    marker = None
    for name in (*L.DBS, *RADOS_ONLY):
        try:
            table = backend.open_db(name.encode(), create=False)
        except backend.errors:
            continue  # no such table: nothing in it
        with backend.begin(db=table) as txn:
            if txn.stat(table)["entries"]:
                used.append(name)
            if name == "meta":
                marker = txn.get(L.COPY_MARKER)
    return used, marker


def _refuse_owned_source(path: str) -> None:
    where = local_dir(path)
    holder = store_owner(where) if where is not None else None
    if holder is not None:
        raise StoreOwned(f"source store {path!r} is owned by {holder.describe()}, which "
                         f"serves it or has devices open on it: its write cache may hold "
                         f"writes the store does not, so it is not copied (nothing was "
                         f"changed). Stop it first, then copy")


def _prefetched(batches: Iterator[T]) -> Iterator[T]:
    """``batches``, each read by a helper thread while the caller writes the one before:
    the source's reads overlap the destination's writes, and at most ``PREFETCH`` batches
    wait (memory stays bounded). The helper stops when the caller stops iterating."""
    q: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()

    def hand(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for b in batches:
                if not hand(("batch", b)):
                    return
            hand(("end", None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            hand(("error", exc))

    helper = threading.Thread(target=run, name="copy-store-read", daemon=True)
    helper.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        helper.join()


def _put_rows(txn: Txn, table: Table, items: Sequence[tuple[bytes, bytes]]) -> int:
    put = txn.put
    n = 0
    for key, value in items:
        put(key, value, db=table)
        n += len(key) + len(value)
    return n


class _Copier:
    """One run of :func:`copy_tables` (see the module docstring)."""

    def __init__(self, src: Store, dst: Store, begin: int, stats: CopyStats, total: int,
                 progress: ProgressFn | None) -> None:
        self.src = src
        self.dst = dst
        self.stats = stats
        self.total = total
        self.progress = progress
        self.done = 0
        self.begin = begin  # the source's commit counter before its first read

    def check_source(self) -> None:
        if self.src.commit_id() != self.begin:
            raise StoreLocked(
                f"the source store {self.src.path!r} changed during the copy (another process "
                f"wrote to it): the copy is not of one point in time and is left unfinished "
                f"in {self.dst.path!r}, which refuses to open; delete it and copy again once "
                f"the source is idle")

    def advanced(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)

    def tables(self, batch: int, chunk_batch: int) -> None:
        for name in L.DBS:
            if name in ("meta", "chunks"):
                continue
            src_table, dst_table = self.src.db[name], self.dst.db[name]
            self.stats.rows.setdefault(name, 0)
            # a pages value holds up to a chunk's worth of pages: batched like chunks
            n = chunk_batch if name == "pages" else batch
            for items in _prefetched(self.src.scan(src_table, batch=n)):
                self.check_source()
                with commit(self.dst) as txn:
                    self.stats.row_bytes += _put_rows(txn, dst_table, items)
                self.stats.commits += 1
                self.stats.rows[name] += len(items)
                self.advanced(len(items))

    def chunks(self, chunk_batch: int) -> None:
        source = ChunkStore(self.src).backend
        target = ChunkStore(self.dst).backend
        for items in _prefetched(source.iter_all(chunk_batch)):
            self.check_source()
            with commit(self.dst) as txn:
                target.put_many(txn, items)
            self.stats.commits += 1
            self.stats.chunks += len(items)
            self.stats.chunk_bytes += sum(len(k) + len(v) for k, v in items)
            self.advanced(len(items))


def commit(store: Store) -> AbstractContextManager[Txn]:
    """One write transaction of the destination (every batch goes through here: a test
    makes the N-th one fail to interrupt a copy in the middle)."""
    return store.write()


def copy_tables(src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str], *,
                batch: int = BATCH, chunk_batch: int = CHUNK_BATCH,
                progress: ProgressFn | None = None,
                map_size: int = DEFAULT_MAP_SIZE) -> CopyStats:
    """Copy every row and chunk of the store at ``src_path`` into a new store at
    ``dst_path`` (see the module docstring for what, how, and what is refused). Returns
    what was copied; the destination then opens as a normal store. ``progress(done,
    total)`` is called after every batch with the rows and chunks copied so far."""
    src_p, dst_p = os.fspath(src_path), os.fspath(dst_path)
    if batch < 1 or chunk_batch < 1:
        raise InvalidParameter("batch sizes must be at least 1")
    if _same_store(src_p, dst_p):
        raise InvalidParameter(f"source and destination are the same store ({src_p!r})")
    t0 = time.monotonic()
    if not src_p.startswith((MEMORY_URL, RADOS_URL)) and not os.path.isdir(src_p):
        raise FileNotFoundError(errno.ENOENT, "no store directory", src_p)
    _refuse_owned_source(src_p)
    src = Store(src_p, readonly=True, map_size=map_size)
    try:
        begin = src.commit_id()
        with src.read() as txn:
            meta_rows = list(txn.cursor(db=src.db["meta"]))
            total = sum(int(txn.stat(src.db[n])["entries"]) for n in L.DBS
                        if n not in ("meta", "chunks"))
            total += int(txn.stat(src.db["refs"])["entries"])  # one per stored chunk (I4)
        backend = open_backend(dst_p, map_size=map_size)
        try:
            own = getattr(backend, "own", None)
            if own is not None:
                own()  # nobody else opens the destination while it fills
            used, marker = _nonempty_tables(backend)
            if used:
                what = (f"it holds an unfinished copy from {copy_source(marker)}: delete it "
                        f"and copy again" if marker is not None else
                        f"it holds data ({', '.join(used)})")
                raise IncorrectState(f"the destination {dst_p!r} is not empty: {what}. A "
                                     f"store copy goes only into a new, empty store; nothing "
                                     f"was changed")
            stats = CopyStats(src_p, dst_p)
            stamp = json.dumps({"from": src_p, "since": time.time(), "pid": os.getpid()})
            meta = backend.open_db(b"meta", create=True)
            # the first commit that holds data carries the marker
            try:
                with backend.begin(write=True) as txn:
                    stats.row_bytes += _put_rows(txn, meta, [(k, v) for k, v in meta_rows
                                                             if k != L.COPY_MARKER])
                    txn.put(L.COPY_MARKER, stamp.encode(), db=meta)
            except backend.errors as exc:
                raise backend.translate(exc) from exc
            stats.commits += 1
            stats.rows["meta"] = len(meta_rows)
            dst = Store(backend=backend, copying=True)
        except BaseException:
            backend.close()
            raise
        try:
            copier = _Copier(src, dst, begin, stats, total, progress)
            copier.tables(batch, chunk_batch)
            copier.chunks(chunk_batch)
            copier.check_source()
            with commit(dst) as txn:  # the last commit: the copy is complete
                txn.delete(L.COPY_MARKER, db=dst.db["meta"])
            stats.commits += 1
        finally:
            dst.close()
    finally:
        src.close()
    stats.seconds = time.monotonic() - t0
    return stats


__all__ = ["BATCH", "CHUNK_BATCH", "CopyStats", "copy_tables"]
