"""Volumes and snapshots as byte sources over the chunk store: a volume's write-back cache and
read-only snapshot views (the user-facing file object is :class:`.device.Device`).

Write protocol of a volume (one :class:`VolumeCache` per volume per engine, shared by every
device opened on it, so several NBD connections see one volume):

* ``pwrite``/``trim``/``write_zeroes`` change whole-chunk buffers in ``dirty`` under
  ``lock`` (read-modify-write for partial chunks). Nothing touches LMDB, so a 4 KiB write
  costs a memcpy, not a compression.
* ``flush`` (one at a time, ``flush_lock``) moves ``dirty`` to ``flushing``, fingerprints and
  compresses outside any transaction, then commits chunks + map entries + reference counts in
  one LMDB write transaction at the lineage head (a synced commit: durable on return).
  Readers consult ``dirty``, then ``flushing``, then LMDB; the switch from ``flushing`` to
  LMDB happens under ``lock`` after the commit, and a reader that falls through to LMDB opens
  its read transaction while still holding ``lock``, so it never sees neither.
* A snapshot is a flush whose transaction also freezes the head generation, so it holds
  exactly the writes acknowledged before it (DESIGN invariant 2).
* When ``dirty`` exceeds ``dirty_limit`` bytes the writer flushes on its own.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Callable

from .. import layout as L
from ..errors import Closed, OutOfRange, SnapshotNotFound, VolumeNotFound
from ..storage.base import Txn
from ..storage.envelope import encode_many

if TYPE_CHECKING:
    from ..engine import Engine

ZERO_CHUNK = bytes(L.CHUNK_SIZE)
HOLE = 3  # NBD base:allocation: STATE_HOLE | STATE_ZERO
DATA = 0

Buf = bytes | bytearray | memoryview


def check_range(offset: int, length: int, size: int) -> None:
    if offset < 0 or length < 0:
        raise OutOfRange(f"negative offset or length ({offset}, {length})")
    if offset + length > size:
        raise OutOfRange(f"range [{offset}, {offset + length}) is beyond the device size {size}")


def _merge_runs(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for length, flags in runs:
        if length <= 0:
            continue
        if out and out[-1][1] == flags:
            out[-1] = (out[-1][0] + length, flags)
        else:
            out.append((length, flags))
    return out


class _Source:
    """Common read side of volumes and snapshots: resolve chunk keys along a chain."""

    readonly = True

    def __init__(self, eng: "Engine") -> None:
        self.eng = eng

    # subclasses provide: size, _chain(txn), _overlay(idx) and _begin_read()
    size: int

    def _chain(self, txn: Txn) -> list[tuple[int, int]]:
        raise NotImplementedError

    def _engine_open(self) -> None:
        if self.eng._closed:
            raise Closed(f"the engine holding {self.id} is closed")

    def _read_chunks(self, txn: Txn, idxs: list[int]) -> dict[int, bytes]:
        chain = self._chain(txn)
        cur = txn.cursor(db=self.eng._maps.maps)
        out: dict[int, bytes] = {}
        for idx in idxs:
            key = self.eng._maps.resolve(txn, chain, idx, cur)
            out[idx] = ZERO_CHUNK if key is None else self.eng._chunks.get(txn, key)
        return out

    def _stored_extents(self, txn: Txn, lo: int, hi: int) -> set[int]:
        return set(self.eng._maps.visible(txn, self._chain(txn), lo, hi))


class SnapshotView(_Source):
    """Read-only view of a completed snapshot (no copy: reads resolve along its chain)."""

    def __init__(self, eng: "Engine", snap_id: str, lineage: int, gen: int, size: int) -> None:
        super().__init__(eng)
        self.id = snap_id
        self.lineage = lineage
        self.gen = gen
        self.size = size

    def _chain(self, txn: Txn) -> list[tuple[int, int]]:
        lin = self.eng._maps.load(txn, self.lineage) if txn.get(
            L.lineage_key(self.lineage), db=self.eng._maps.lineages) else None
        if lin is None or lin.points.get(self.gen) != self.id:
            raise SnapshotNotFound(f"The snapshot '{self.id}' does not exist.")
        return self.eng._maps.chain(txn, (self.lineage, self.gen))

    def read_into(self, mv: memoryview, offset: int) -> None:
        first, last = offset // L.CHUNK_SIZE, (offset + len(mv) - 1) // L.CHUNK_SIZE
        self._engine_open()
        with self.eng._store.read() as txn:
            chunks = self._read_chunks(txn, list(range(first, last + 1)))
        _copy_out(mv, offset, chunks)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        first, last = offset // L.CHUNK_SIZE, (offset + length - 1) // L.CHUNK_SIZE
        self._engine_open()
        with self.eng._store.read() as txn:
            data = self._stored_extents(txn, first, last + 1)
        return _runs(offset, length, lambda idx: DATA if idx in data else HOLE)


def _copy_out(mv: memoryview, offset: int, chunks: dict[int, Buf]) -> None:
    pos = 0
    n = len(mv)
    while pos < n:
        idx, within = divmod(offset + pos, L.CHUNK_SIZE)
        take = min(L.CHUNK_SIZE - within, n - pos)
        src = chunks[idx]
        mv[pos:pos + take] = src[within:within + take] if src is not None else ZERO_CHUNK[:take]
        pos += take


def _runs(offset: int, length: int, flags_of: Callable[[int], int]) -> list[tuple[int, int]]:
    runs = []
    pos = offset
    end = offset + length
    while pos < end:
        idx = pos // L.CHUNK_SIZE
        nxt = min((idx + 1) * L.CHUNK_SIZE, end)
        runs.append((nxt - pos, flags_of(idx)))
        pos = nxt
    return _merge_runs(runs)


class VolumeCache(_Source):
    """The shared, write-back state of one volume inside one engine (see module doc)."""

    readonly = False

    def __init__(self, eng: "Engine", volume_id: str, lineage: int, size: int,
                 dirty_limit: int) -> None:
        super().__init__(eng)
        self.id = volume_id
        self.lineage = lineage
        self.size = size
        self.dirty_limit = dirty_limit
        self.lock = threading.Lock()
        self.flush_lock = threading.Lock()
        self.dirty: dict[int, bytearray | None] = {}
        self.flushing: dict[int, bytearray | None] = {}
        self.dirty_bytes = 0
        self.epoch = 0  # flushes committed; stale-read detection in write()
        self.users = 0
        self.deleted = False

    def _chain(self, txn: Txn) -> list[tuple[int, int]]:
        lin = self.eng._maps.load(txn, self.lineage)
        assert lin.head is not None
        return self.eng._maps.chain(txn, (self.lineage, lin.head))

    def _check(self) -> None:
        if self.deleted:
            raise Closed(f"volume {self.id} was deleted")
        self._engine_open()

    # --- reads ------------------------------------------------------------------------------

    def _cached(self, idx: int) -> tuple[bool, bytearray | None]:
        if idx in self.dirty:
            return True, self.dirty[idx]
        if idx in self.flushing:
            return True, self.flushing[idx]
        return False, None

    def read_into(self, mv: memoryview, offset: int) -> None:
        first, last = offset // L.CHUNK_SIZE, (offset + len(mv) - 1) // L.CHUNK_SIZE
        chunks: dict[int, Buf] = {}
        missing: list[int] = []
        with self.lock:
            self._check()
            for idx in range(first, last + 1):
                hit, buf = self._cached(idx)
                if hit:
                    # A copy: the buffer may be changed by a writer once the lock is dropped.
                    chunks[idx] = bytes(buf) if buf is not None else ZERO_CHUNK
                else:
                    missing.append(idx)
            txn = self.eng._store.read() if missing else None
        if txn is not None:
            with txn:
                chunks.update(self._read_chunks(txn, missing))
        _copy_out(mv, offset, chunks)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        first, last = offset // L.CHUNK_SIZE, (offset + length - 1) // L.CHUNK_SIZE
        with self.lock:
            self._check()
            overlay = {**self.flushing, **self.dirty}
            overlay = {i: v for i, v in overlay.items() if first <= i <= last}
            txn = self.eng._store.read()
        with txn:
            data = self._stored_extents(txn, first, last + 1)

        def flags(idx: int) -> int:
            if idx in overlay:
                return HOLE if overlay[idx] is None else DATA
            return DATA if idx in data else HOLE

        return _runs(offset, length, flags)

    # --- writes -----------------------------------------------------------------------------

    def _set_dirty(self, idx: int, buf: bytearray | None) -> None:
        old = self.dirty.get(idx)
        if old is not None:
            self.dirty_bytes -= L.CHUNK_SIZE
        if buf is not None:
            self.dirty_bytes += L.CHUNK_SIZE
        self.dirty[idx] = buf

    def write(self, data: Buf, offset: int) -> None:
        """Apply a write to the cache. The stored content of partially written chunks that
        are not cached is read *outside* the lock (a decompression would otherwise stall
        every other request on this volume); ``epoch`` tells if a flush committed in the
        meantime, in which case those reads are stale and are done again."""
        mv = memoryview(data).cast("B")
        n = len(mv)
        first, within_first = divmod(offset, L.CHUNK_SIZE)
        last = (offset + n - 1) // L.CHUNK_SIZE
        partial = [i for i in {first, last}
                   if not (i * L.CHUNK_SIZE >= offset
                           and (i + 1) * L.CHUNK_SIZE <= offset + n)]
        self._make_room()
        bases: dict[int, bytes] = {}
        seen = -1
        while True:
            with self.lock:
                self._check()
                if self.epoch != seen:
                    bases = {}
                need = [i for i in partial if i not in self.dirty and i not in self.flushing
                        and i not in bases]
                if not need:
                    self._apply(mv, offset, bases)
                    break
                seen = self.epoch
                txn = self.eng._store.read()  # begun under the lock: see the flush protocol
            with txn:
                bases.update(self._read_chunks(txn, need))

    def _make_room(self) -> None:
        """Flush *before* taking a write when the cache is over its limit: if the flush is
        refused (store full), the write is refused with it and leaves no trace."""
        if self.dirty_bytes >= self.dirty_limit:
            self.flush()

    def _apply(self, mv: memoryview, offset: int, bases: dict[int, bytes]) -> None:
        """Copy ``mv`` into dirty buffers (lock held; partial chunks are cached or in
        ``bases``)."""
        n = len(mv)
        pos = 0
        while pos < n:
            idx, within = divmod(offset + pos, L.CHUNK_SIZE)
            take = min(L.CHUNK_SIZE - within, n - pos)
            if take == L.CHUNK_SIZE:
                self._set_dirty(idx, bytearray(mv[pos:pos + take]))
            else:
                buf = self.dirty.get(idx)
                if buf is None:
                    if idx in self.dirty or (idx in self.flushing and self.flushing[idx] is None):
                        buf = bytearray(L.CHUNK_SIZE)
                    elif idx in self.flushing:
                        buf = bytearray(self.flushing[idx])  # type: ignore[arg-type]
                    else:
                        buf = bytearray(bases[idx])
                    self._set_dirty(idx, buf)
                buf[within:within + take] = mv[pos:pos + take]
            pos += take

    def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros; whole chunks become holes.

        Whole chunks that hold nothing (neither stored nor cached) are skipped, so trimming
        a whole large device (mkfs does) costs O(chunks holding data), not O(size). The
        partial chunks at either end are a write of zeros (see :meth:`write`).
        """
        self._make_room()
        end = offset + length
        lo = -(-offset // L.CHUNK_SIZE)  # whole chunks: [lo, hi)
        hi = end // L.CHUNK_SIZE
        if hi > lo:
            with self.lock:
                self._check()
                with self.eng._store.read() as txn:  # begun under the lock: flush protocol
                    targets = set(self._stored_extents(txn, lo, hi))
                for cached in (self.dirty, self.flushing):
                    if len(cached) < hi - lo:
                        targets.update(i for i in cached if lo <= i < hi)
                    else:
                        targets.update(i for i in range(lo, hi) if i in cached)
                for idx in sorted(targets):
                    self._set_dirty(idx, None)
        start = offset
        if offset % L.CHUNK_SIZE:
            start = min(end, lo * L.CHUNK_SIZE)
            self.write(bytes(start - offset), offset)
        if end % L.CHUNK_SIZE and end > start:
            tail = max(start, hi * L.CHUNK_SIZE)
            self.write(bytes(end - tail), tail)

    def flush(self, in_txn: Callable[[Txn, object], None] | None = None) -> None:
        """Commit every acknowledged write durably; ``in_txn(txn, lineage)`` runs inside the
        same transaction (after the writes) when given — used to freeze a snapshot."""
        with self.flush_lock:
            with self.lock:
                self._check()
                self.flushing, self.dirty = self.dirty, {}
                self.dirty_bytes = 0
            try:
                items = sorted(self.flushing.items())
                if items or in_txn is not None:
                    self._commit(items, in_txn)
            except BaseException:
                with self.lock:
                    for idx, buf in self.flushing.items():
                        if idx not in self.dirty:
                            self._set_dirty(idx, buf)
                    self.flushing = {}
                raise
            with self.lock:
                self.flushing = {}
                self.epoch += 1

    def _commit(self, items: list[tuple[int, bytearray | None]],
                in_txn: Callable[[Txn, object], None] | None) -> None:
        eng = self.eng
        fps = [eng._chunks.fingerprints(buf)[0] if buf is not None else None
               for _, buf in items]
        # Compress, outside the write transaction, the chunks probably not stored yet (a
        # colliding fingerprint that turns out to hold other bytes is encoded inline by put).
        with eng._store.read() as txn:
            todo = [i for i, fp in enumerate(fps)
                    if fp is not None and not eng._chunks.maybe_stored(txn, fp)]
        encoded: dict[int, bytes] = dict(zip(
            todo, encode_many([items[i][1] for i in todo], eng._chunks.level, eng._pool)))
        with eng._store.write() as txn:
            maps = eng._maps
            raw = txn.get(L.lineage_key(self.lineage), db=maps.lineages)
            lin = maps.load(txn, self.lineage) if raw is not None else None
            if lin is None or lin.owner != self.id or lin.head is None:
                raise VolumeNotFound(f"The volume '{self.id}' does not exist.")
            chain = maps.chain(txn, (lin.id, lin.head))
            floor = maps.head_floor(lin)
            cur = txn.cursor(db=maps.maps)
            for i, ((idx, buf), fp) in enumerate(zip(items, fps)):
                key = None if fp is None else eng._chunks.put(txn, fp, buf, encoded.get(i))
                maps.set_head(txn, lin, chain, idx, key, floor, cur)
            if in_txn is not None:
                in_txn(txn, lin)
            maps.save(txn, lin)
