"""Volumes and snapshots as byte sources over the chunk store: a volume's write-back cache and
read-only snapshot views (the user-facing file object is :class:`.device.Device`).

Write protocol of a volume (one :class:`VolumeCache` per volume per engine, shared by every
device opened on it, so several NBD connections see one volume):

* ``pwrite``/``trim``/``write_zeroes`` change entries of ``dirty`` under ``lock``. An entry
  of chunk ``idx`` is a whole-chunk buffer, None (a hole) or a :class:`PageSet` (some 4 KiB
  pages of the chunk). A write of whole 4 KiB pages into a chunk that is not cached adds
  pages to a page set and reads nothing; only a write of part of a page reads that one page
  (from a cached entry, else from the store). Nothing touches LMDB in the write itself.
* ``flush`` (one at a time, ``flush_lock``) moves ``dirty`` to ``flushing``; outside any
  write transaction it fingerprints and compresses whole chunks and prepares *patches* for
  page sets (over a patch written at the head since the last snapshot, a new layer of just
  the page set's pages; else its pages merged with those of the patch visible there; no
  chunk decompressed either way; their digests, compression and sealing run in batches on
  the worker pool while the next patches are prepared); then it commits chunks, patches,
  map entries and reference counts in LMDB write transactions at the lineage head, one per
  ``FLUSH_GROUP_BYTES`` of prepared chunks and pages (synced commits: durable on
  return). Each group's entries leave ``flushing`` (and give their bytes back to writers
  waiting for room) once their group has committed; a failed flush puts the rest back in ``dirty``.
  Readers consult ``dirty``, then ``flushing``, then LMDB; the switch from ``flushing`` to
  LMDB happens under ``lock`` after the commit, and a reader that falls through to LMDB opens
  its read transaction while still holding ``lock``, so it never sees neither.
* A snapshot is a flush whose last transaction also freezes the head generation, so it
  holds exactly the writes acknowledged before it (DESIGN invariant 2).
* ``dirty`` and ``flushing`` together stay under ``dirty_limit`` bytes: a writer that would
  pass it flushes (or waits for the running flush) first. After a large flush the freed heap
  is handed back to the OS.

Reads resolve chunk indexes along the chain of points (the volume's head, then the snapshots
it was restored from). Where an index resolved *below* a live head is cached per source: an
entry visible at a frozen, live point does not move (the folder replaces values in place), so
a read costs one lookup in the head lineage plus one get, however deep the chain is.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from .. import codec
from .. import layout as L
from ..errors import Closed, CorruptStore, OutOfRange, SnapshotNotFound, VolumeNotFound
from ..storage.base import Cursor, Txn
from ..storage.envelope import RAW_MARK, encode_many, encode_pages_many
from ..storage.sealing import Domain
from .context import ZERO_CHUNK, BlockContext, page_digest, patch_tag_for, release_memory

PS = L.PAGE_SIZE
CS = L.CHUNK_SIZE
Buf = bytes | bytearray | memoryview
WHERE_LIMIT = 1 << 17  # cached chain locations per source
TRIM_AFTER = 16 * 1024 * 1024  # flushed bytes after which the heap is trimmed


class Extent(enum.IntFlag):
    """Allocation state of a range (:meth:`Device.extents`): ``DATA`` (0) is stored data;
    a hole is ``HOLE | ZERO`` (not allocated, reads as zeros)."""

    DATA = 0
    HOLE = 1
    ZERO = 2


HOLE = Extent.HOLE | Extent.ZERO
DATA = Extent.DATA


class PageSet:
    """Dirty 4 KiB pages of one chunk: ``pages[p]`` replaces page ``p`` of what lies below."""

    __slots__ = ("pages",)

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}

    @property
    def mask(self) -> int:
        m = 0
        for p in self.pages:
            m |= 1 << p
        return m


Entry = bytearray | PageSet | None


def _entry_bytes(e: Entry) -> int:
    if e is None:
        return 0
    if isinstance(e, PageSet):
        return PS * len(e.pages)
    return CS


def check_range(offset: int, length: int, size: int) -> None:
    if offset < 0 or length < 0:
        raise OutOfRange(f"negative offset or length ({offset}, {length})")
    if offset + length > size:
        raise OutOfRange(f"range [{offset}, {offset + length}) is beyond the device size {size}")


def _merge_runs(runs: list[tuple[int, Extent]]) -> list[tuple[int, Extent]]:
    out: list[tuple[int, Extent]] = []
    for length, flags in runs:
        if length <= 0:
            continue
        if out and out[-1][1] == flags:
            out[-1] = (out[-1][0] + length, flags)
        else:
            out.append((length, flags))
    return out


def _runs(offset: int, length: int, flags_of: Callable[[int], Extent]) -> list[tuple[int, Extent]]:
    runs = []
    pos = offset
    end = offset + length
    while pos < end:
        idx = pos // CS
        nxt = min((idx + 1) * CS, end)
        runs.append((nxt - pos, flags_of(idx)))
        pos = nxt
    return _merge_runs(runs)


def _pieces(offset: int, n: int) -> list[tuple[int, int, int]]:
    """``(chunk idx, offset within the chunk, length)`` of a byte range, with the position of
    each piece in the range implied by the order."""
    out = []
    pos = 0
    while pos < n:
        idx, within = divmod(offset + pos, CS)
        take = min(CS - within, n - pos)
        out.append((idx, within, take))
        pos += take
    return out


def _touched(within: int, take: int) -> range:
    return range(within // PS, (within + take - 1) // PS + 1)


PATCH_BATCH = 256  # prepared patches per pool task of a flush (:func:`_finish_patches`)
#: bytes a flush's write transaction holds prepared (a chunk: 64 KiB; a patch: the pages it
#: stores, with those of the patch it merges), about: a flush commits in groups of that
#: size, each entry of a group once (at most ``FLUSH_GROUP_MAX`` of them). What a flush
#: prepares for a page set follows the size of the patch already stored, not the dirty
#: bytes, and its compressed form and the transaction's dirty LMDB pages come on top: with
#: one transaction per flush, 4 KiB random writes under a 256 MiB dirty limit took ``serve``
#: to about 1 GiB (README, bench_writepath.py memory --randwrite). Groups of 1,024 chunks
#: bounded that as well, but cost a synced commit (~15 ms here) per 1,024 single pages.
FLUSH_GROUP_BYTES = 32 * 1024 * 1024
FLUSH_GROUP_MAX = 16384
PAGES_AHEAD = 256  # patches whose pages a flush loads ahead in one batch (remote metadata)
#: mask, RAW_MARK + pages, map key, base, and the patch a new layer is laid over (or None)
PreparedPatch = tuple[int, bytes, bytes, bytes | None, bytes | None]


def _finish_patches(prepared: list[PreparedPatch], domain: Domain | None
                    ) -> list[tuple[bytes, bytes]]:
    """``(patch value, stored pages)`` of patches prepared by ``VolumeCache._patch``: their
    digests, and their pages (a new layer's: only its own) compressed in one zstd batch and
    sealed with their pages keys. Pure computation that mostly releases the GIL (zstd,
    AES-GCM, keyed blake2b), so a flush runs it on the worker pool while it prepares the
    next patches."""
    tag = patch_tag_for(domain)
    values, keys = [], []
    for mask, framed, mk, base, prior in prepared:
        digest = page_digest(memoryview(framed)[1:], domain, tag)
        if prior is None:
            values.append(L.patch_value(mask, digest, mk, base, tag))
            keys.append(mk)
        else:
            values.append(L.add_layer(prior, mask, digest, L.LAYERED_OF[tag]))
            keys.append(L.layer_key(mk, L.layer_count(prior)))
    stored = encode_pages_many([p[1] for p in prepared], L.PAGE_ZSTD_LEVEL, domain, keys)
    return list(zip(values, stored, strict=True))


class _Source:
    """Common read side of volumes and snapshots: resolve map values along a chain."""

    readonly = True
    id: str
    size: int
    #: chain positions below this one are frozen and their locations are cached
    _frozen_from = 0
    #: the data-key domain of the lineage read (None: plaintext): every stored value read
    #: must be sealed in it (``BlockContext.check_domain``)
    domain: Domain | None = None

    def __init__(self, ctx: BlockContext) -> None:
        self.ctx = ctx
        self._where: dict[int, int] = {}  # idx -> chain position << 32 | entry gen (or -1)
        self._frozen: list[tuple[int, int]] | None = None

    def _chain(self, txn: Txn) -> list[tuple[int, int]]:
        raise NotImplementedError

    def _engine_open(self) -> None:
        self.ctx.check_open(self.id)

    def _values(self, txn: Txn, idxs: list[int]) -> dict[int, bytes | None]:
        """The map value visible for each index (None: nothing stored)."""
        chain = self._chain(txn)
        maps = self.ctx.maps
        cur = txn.cursor(db=maps.maps)
        out: dict[int, bytes | None] = {}
        f = self._frozen_from
        for idx in idxs:
            value: bytes | None = None
            found = False
            for lid, gen in chain[:f]:
                e = maps.entry(txn, lid, idx, gen, cur)
                if e is not None:
                    value, found = e[1], True
                    break
            if not found:
                value = self._frozen_value(txn, chain, idx, cur)
            out[idx] = value or None
        return out

    def _frozen_value(self, txn: Txn, chain: list[tuple[int, int]], idx: int,
                      cur: Cursor) -> bytes | None:
        f = self._frozen_from
        where = self._where.get(idx)
        if where is not None:
            if where < 0:
                return None
            k, gen = where >> 32, where & 0xFFFFFFFF
            if f + k < len(chain):
                value: bytes | None = txn.get(L.map_key(chain[f + k][0], idx, gen),
                                              db=self.ctx.maps.maps)
                if value is not None:
                    return value
        hit = self.ctx.maps.resolve_at(txn, chain[f:], idx, cur)
        if len(self._where) >= WHERE_LIMIT:
            self._where.clear()
        self._where[idx] = -1 if hit is None else hit[0] << 32 | hit[1]
        return None if hit is None else hit[2]

    def _stored_extents(self, txn: Txn, lo: int, hi: int) -> set[int]:
        return set(self.ctx.maps.visible(txn, self._chain(txn), lo, hi))

    def _fill_stored(self, txn: Txn, mv: memoryview, offset: int,
                     want: dict[int, list[int] | None]) -> None:
        """Fill the parts of ``mv`` (at volume ``offset``) of chunk indexes ``want`` (all of
        each piece, or only the listed pages) from the store."""
        values = self._values(txn, sorted(want))
        raws = self.ctx.prefetch(txn, values.values())
        pos = 0
        for idx, within, take in _pieces(offset, len(mv)):
            if idx in want:
                self.ctx.fill(txn, values[idx], mv[pos:pos + take], within, want[idx],
                              self.domain, raws)
            pos += take


class SnapshotView(_Source):
    """Read-only view of a completed snapshot (no copy: reads resolve along its chain)."""

    def __init__(self, ctx: BlockContext, snap_id: str, lineage: int, gen: int,
                 size: int, domain: Domain | None = None) -> None:
        super().__init__(ctx)
        self.domain = domain
        self.id = snap_id
        self.lineage = lineage
        self.gen = gen
        self.size = size

    def _chain(self, txn: Txn) -> list[tuple[int, int]]:
        maps = self.ctx.maps
        lin = maps.peek(txn, self.lineage)
        if lin is None or lin.points.get(self.gen) != self.id:
            raise SnapshotNotFound(f"The snapshot '{self.id}' does not exist.")
        if self._frozen is None:  # a live snapshot's chain never changes
            self._frozen = maps.chain(txn, (self.lineage, self.gen))
        return self._frozen

    def read_into(self, mv: memoryview, offset: int) -> None:
        first, last = offset // CS, (offset + len(mv) - 1) // CS
        self._engine_open()
        self.ctx.last_io = time.monotonic()
        with self.ctx.store.read() as txn:
            self._fill_stored(txn, mv, offset, dict.fromkeys(range(first, last + 1)))

    def extents(self, offset: int, length: int) -> list[tuple[int, Extent]]:
        first, last = offset // CS, (offset + length - 1) // CS
        self._engine_open()
        with self.ctx.store.read() as txn:
            data = self._stored_extents(txn, first, last + 1)
        return _runs(offset, length, lambda idx: DATA if idx in data else HOLE)


class VolumeCache(_Source):
    """The shared, write-back state of one volume inside one engine (see module doc)."""

    readonly = False
    _frozen_from = 1  # the head lineage's entries change; the bases it reads through do not

    def __init__(self, ctx: BlockContext, volume_id: str, lineage: int, size: int,
                 dirty_limit: int, domain: Domain | None = None) -> None:
        super().__init__(ctx)
        self.id = volume_id
        #: the data-key domain its writes are sealed in (None: a plaintext volume)
        self.domain = domain
        self.lineage = lineage
        self.size = size
        self.dirty_limit = dirty_limit
        self.lock = threading.Lock()
        self.flush_lock = threading.Lock()
        self.flushed = threading.Condition(self.lock)
        self.dirty: dict[int, Entry] = {}
        self.flushing: dict[int, Entry] = {}
        self.dirty_bytes = 0
        self.flushing_bytes = 0
        self.epoch = 0  # flushes committed; stale-read detection in write()
        self.users = 0
        self.deleted = False
        #: the chain at the head last seen (callers do not change it)
        self._head_chain: list[tuple[int, int]] | None = None

    def _chain(self, txn: Txn) -> list[tuple[int, int]]:
        maps = self.ctx.maps
        lin = maps.peek(txn, self.lineage)
        if lin is None:
            raise CorruptStore(f"lineage {self.lineage} is referenced but missing")
        assert lin.head is not None
        head = lin.head
        chain = self._head_chain
        if chain is None or chain[0][1] != head:  # the head moves only with a snapshot
            if self._frozen is None:
                self._frozen = maps.chain(txn, (self.lineage, head))[1:]
            chain = self._head_chain = [(self.lineage, head), *self._frozen]
        return chain

    def _check(self) -> None:
        if self.deleted:
            raise Closed(f"volume {self.id} was deleted")
        self._engine_open()

    def drop(self) -> None:
        """Forget every cached write (the volume was deleted; lock held by the caller)."""
        self.deleted = True
        self.dirty.clear()
        self.dirty_bytes = 0

    # --- reads ------------------------------------------------------------------------------

    def _layers(self, idx: int) -> list[Entry]:
        out = []
        if idx in self.dirty:
            out.append(self.dirty[idx])
        if idx in self.flushing:
            out.append(self.flushing[idx])
        return out

    def read_into(self, mv: memoryview, offset: int) -> None:
        want: dict[int, list[int] | None] = {}
        pos = 0
        self.ctx.last_io = time.monotonic()
        with self.lock:
            self._check()
            for idx, within, take in _pieces(offset, len(mv)):
                rest = self._fill_cached(idx, mv[pos:pos + take], within)
                if rest is None or rest:
                    want[idx] = rest
                pos += take
            txn = self.ctx.store.read() if want else None
        if txn is not None:
            with txn:
                self._fill_stored(txn, mv, offset, want)

    def _fill_cached(self, idx: int, dst: memoryview, within: int) -> list[int] | None:
        """Copy what the cache holds of ``[within, within + len(dst))`` of chunk ``idx``
        into ``dst`` (lock held). Returns the pages still to read from the store ([] if
        none, None for all of them)."""
        layers = self._layers(idx)
        if not layers:
            return None
        take = len(dst)
        need = list(_touched(within, take))
        for e in layers:
            if not isinstance(e, PageSet):
                src = ZERO_CHUNK if e is None else e
                for p in need:
                    a, b = max(within, p * PS), min(within + take, (p + 1) * PS)
                    dst[a - within:b - within] = src[a:b]
                return []
            left = []
            for p in need:
                page = e.pages.get(p)
                if page is None:
                    left.append(p)
                    continue
                a, b = max(within, p * PS), min(within + take, (p + 1) * PS)
                dst[a - within:b - within] = page[a - p * PS:b - p * PS]
            need = left
            if not need:
                return []
        return need

    def extents(self, offset: int, length: int) -> list[tuple[int, Extent]]:
        first, last = offset // CS, (offset + length - 1) // CS
        with self.lock:
            self._check()
            overlay: dict[int, Entry] = {}
            for cached in (self.flushing, self.dirty):
                if len(cached) < last - first + 1:
                    overlay.update((i, v) for i, v in cached.items() if first <= i <= last)
                else:
                    overlay.update((i, cached[i]) for i in range(first, last + 1) if i in cached)
            # A page set reads through to what lies below it: only the topmost layer decides
            # whether the chunk holds data, and a page set always does.
            txn = self.ctx.store.read()
        with txn:
            data = self._stored_extents(txn, first, last + 1)

        def flags(idx: int) -> Extent:
            if idx in overlay:
                return HOLE if overlay[idx] is None else DATA
            return DATA if idx in data else HOLE

        return _runs(offset, length, flags)

    # --- writes -----------------------------------------------------------------------------

    def _set_dirty(self, idx: int, e: Entry) -> None:
        self.dirty_bytes += _entry_bytes(e) - _entry_bytes(self.dirty.get(idx))
        self.dirty[idx] = e

    def write(self, data: Buf, offset: int, *, room: bool = True) -> None:
        """Apply a write to the cache. The one base page of a write that covers part of a
        4 KiB page not cached is read *outside* the lock (a decompression would otherwise
        stall every other request on this volume); ``epoch`` tells if a flush committed in
        the meantime, in which case those reads are stale and are done again. ``room=False``:
        the caller has made room already (:meth:`zero`, for its two partial chunks at once)."""
        mv = memoryview(data).cast("B")
        if len(mv) == PS and not offset % PS and self._write_page(mv, offset, room):
            return
        pieces = _pieces(offset, len(mv))
        self.ctx.last_io = time.monotonic()
        partial: list[tuple[int, int]] = []  # (idx, page) written in part
        for idx, within, take in pieces:
            if take == CS:
                continue
            for p in {within // PS, (within + take - 1) // PS}:
                lo_p, hi_p = p * PS, (p + 1) * PS
                if max(within, lo_p) != lo_p or min(within + take, hi_p) != hi_p:
                    partial.append((idx, p))
        if room:
            self._make_room(len(mv))
        bases: dict[tuple[int, int], bytes] = {}
        seen = -1
        while True:
            with self.lock:
                self._check()
                if self.epoch != seen:
                    bases = {}
                need = [ip for ip in partial if ip not in bases and self._needs_base(*ip)]
                if not need:
                    self._apply(mv, pieces, bases)
                    return
                seen = self.epoch
                txn = self.ctx.store.read()  # begun under the lock: see the flush protocol
            with txn:
                values = self._values(txn, sorted({i for i, _ in need}))
                for idx, p in need:
                    bases[(idx, p)] = self.ctx.page(txn, values[idx], p, self.domain)

    def _write_page(self, mv: memoryview, offset: int, room: bool) -> bool:
        """The common case of :meth:`write`, one whole aligned 4 KiB page, in fewer steps;
        the same outcome as :meth:`_apply`. False (nothing done) if the dirty entry is a hole,
        or there is none and the flushing one is a whole chunk or a hole: the general path
        handles those."""
        idx, within = divmod(offset, CS)
        p = within // PS
        self.ctx.last_io = time.monotonic()
        if room and self.dirty_bytes + self.flushing_bytes + PS > self.dirty_limit:
            self._make_room(PS)
        with self.lock:
            self._check()
            e = self.dirty.get(idx, False)
            if isinstance(e, bytearray):
                e[within:within + PS] = mv
                return True
            if e is False:
                below = self.flushing.get(idx, False)
                if below is not False and not isinstance(below, PageSet):
                    return False
                e = self.dirty[idx] = PageSet()
            elif not isinstance(e, PageSet):  # a hole
                return False
            pages = e.pages
            if p in pages:
                pages[p][:] = mv
                return True
            pages[p] = bytearray(mv)
            self.dirty_bytes += PS
            if len(pages) == L.PAGES_PER_CHUNK:  # whole again: one buffer
                buf = bytearray(CS)
                for q, page in pages.items():
                    buf[q * PS:(q + 1) * PS] = page
                self._set_dirty(idx, buf)
            return True

    def _needs_base(self, idx: int, p: int) -> bool:
        """Whether a partial write of page ``p`` of chunk ``idx`` needs that page from the
        store (lock held)."""
        e = self.dirty.get(idx, False)
        if e is not False and (not isinstance(e, PageSet) or p in e.pages):
            return False
        return self._below_page(idx, p) is None

    def _make_room(self, n: int) -> None:
        """Keep dirty + flushing under the limit: flush *before* taking a write when the
        cache would pass it, or wait for the flush in progress to make room. If the flush
        is refused (store full), the write is refused with it and leaves no trace."""
        with self.lock:
            while self.dirty_bytes + self.flushing_bytes + min(n, CS) > self.dirty_limit:
                if not self.flushing_bytes or self.dirty_bytes >= self.dirty_limit // 2:
                    break
                self.flushed.wait()
            else:
                return
        self.flush()

    def _below_page(self, idx: int, p: int) -> bytes | bytearray | None:
        """Page ``p`` of chunk ``idx`` as ``flushing`` holds it, or None if it does not."""
        if idx not in self.flushing:
            return None
        below = self.flushing[idx]
        if below is None:
            return ZERO_CHUNK[:PS]
        if isinstance(below, PageSet):
            return below.pages.get(p)
        return below[p * PS:(p + 1) * PS]

    def _apply(self, mv: memoryview, pieces: list[tuple[int, int, int]],
               bases: dict[tuple[int, int], bytes]) -> None:
        """Copy ``mv`` into dirty entries (lock held; base pages are cached or in
        ``bases``)."""
        pos = 0
        for idx, within, take in pieces:
            src = mv[pos:pos + take]
            pos += take
            if take == CS:
                self._set_dirty(idx, bytearray(src))
                continue
            e = self.dirty.get(idx, False)
            if isinstance(e, bytearray):
                e[within:within + take] = src
                continue
            if e is None or (e is False and idx in self.flushing
                             and not isinstance(self.flushing[idx], PageSet)):
                below = None if e is None else self.flushing[idx]
                buf = bytearray(CS) if below is None else bytearray(below)  # type: ignore[arg-type]
                buf[within:within + take] = src
                self._set_dirty(idx, buf)
                continue
            ps = e if isinstance(e, PageSet) else PageSet()
            added = 0
            for p in _touched(within, take):
                a, b = max(within, p * PS), min(within + take, (p + 1) * PS)
                page = ps.pages.get(p)
                if page is None:
                    if b - a == PS:
                        page = bytearray(src[a - within:b - within])
                        ps.pages[p] = page
                        added += 1
                        continue
                    under = self._below_page(idx, p)
                    page = bytearray(under if under is not None else bases[(idx, p)])
                    ps.pages[p] = page
                    added += 1
                page[a - p * PS:b - p * PS] = src[a - within:b - within]
            if e is False:
                self.dirty[idx] = ps
            self.dirty_bytes += added * PS
            if len(ps.pages) == L.PAGES_PER_CHUNK:  # whole again: one buffer
                buf = bytearray(CS)
                for p, page in ps.pages.items():
                    buf[p * PS:(p + 1) * PS] = page
                self._set_dirty(idx, buf)

    def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros; whole chunks become holes.

        Whole chunks that hold nothing (neither stored nor cached) are skipped, so trimming
        a whole large device (mkfs does) costs O(chunks holding data), not O(size). The
        partial chunks at either end are a write of zeros (see :meth:`write`).

        Room is made once, before anything changes: a flush refused then (store full)
        refuses the whole request and leaves no trace; after it, nothing can be refused.
        """
        end = offset + length
        lo = -(-offset // CS)  # whole chunks: [lo, hi)
        hi = end // CS
        start = min(end, lo * CS) if offset % CS else offset
        tail = max(start, hi * CS) if end % CS and end > start else end
        self._make_room((start - offset) + (end - tail))
        if start > offset:
            self.write(bytes(start - offset), offset, room=False)
        if end > tail:
            self.write(bytes(end - tail), tail, room=False)
        if hi > lo:
            with self.lock:
                self._check()
                with self.ctx.store.read() as txn:  # begun under the lock: flush protocol
                    targets = set(self._stored_extents(txn, lo, hi))
                for cached in (self.dirty, self.flushing):
                    if len(cached) < hi - lo:
                        targets.update(i for i in cached if lo <= i < hi)
                    else:
                        targets.update(i for i in range(lo, hi) if i in cached)
                for idx in sorted(targets):
                    self._set_dirty(idx, None)

    def flush(self, in_txn: Callable[[Txn, object], None] | None = None) -> None:
        """Commit every acknowledged write durably; ``in_txn(txn, lineage)`` runs inside the
        same transaction (after the writes) when given — used to freeze a snapshot.
        Refused (``ctx.no_unit``) on a thread inside a unit of work: its commit would wait
        for the unit's own, which may wait for this flush lock."""
        self.ctx.no_unit(f"a flush of volume {self.id}")
        with self.flush_lock:
            flushed = self.flush_held(in_txn)
        if flushed >= TRIM_AFTER:
            release_memory()

    def flush_held(self, in_txn: Callable[[Txn, object], None] | None = None) -> int:
        """:meth:`flush` by a caller that holds ``flush_lock``; returns the bytes flushed
        (the caller trims the heap after a large flush). A unit of work holds the lock from
        its last flush until its own transaction is open, so no later flush commits some of
        its groups before the unit's snapshot freezes."""
        self.ctx.last_io = time.monotonic()
        with self.lock:
            self._check()
            self.flushing, self.dirty = self.dirty, {}
            self.flushing_bytes, self.dirty_bytes = self.dirty_bytes, 0
        flushed = self.flushing_bytes
        try:
            items = sorted(self.flushing.items())
            if items or in_txn is not None:
                self._commit_groups(items, in_txn)
        except BaseException:
            with self.lock:
                for idx, e in self.flushing.items():
                    if idx not in self.dirty:
                        self._set_dirty(idx, e)
                    elif isinstance(self.dirty[idx], PageSet) and e is not None:
                        self._reapply(idx, e)
                self.flushing, self.flushing_bytes = {}, 0
                self.flushed.notify_all()
            raise
        with self.lock:
            gone, self.flushing, self.flushing_bytes = self.flushing, {}, 0
            self.epoch += 1
            self.flushed.notify_all()
        del gone  # its buffers are freed here, outside the lock that writers wait for
        return flushed

    def _commit_groups(self, items: list[tuple[int, Entry]],
                       in_txn: Callable[[Txn, object], None] | None) -> None:
        """Commit ``items`` in transactions of about ``FLUSH_GROUP_BYTES`` each (see there),
        ``in_txn`` in the last one. (A method of its own so that its groups, which hold the
        flushed buffers, are gone before :meth:`flush` trims the heap.)"""
        pending: list[tuple[int, Entry] | None] = list(items)
        items.clear()  # each group's buffers go once it has committed (see below)
        pos = 0
        while True:
            window = pending[pos:pos + FLUSH_GROUP_MAX]
            last = pos + len(window) == len(pending)
            taken = self._commit(window, in_txn if last else None)  # type: ignore[arg-type]
            if last and taken == len(window):
                return
            # The group is durable: its entries leave ``flushing`` (readers now find them in
            # the store) and give their bytes back, so writers waiting for room go on while
            # the later groups commit instead of stalling for the whole flush. No reference
            # to its buffers is left here, so the room given back is free.
            done = [e[0] for e in window[:taken]]  # type: ignore[index]
            del window
            pending[pos:pos + taken] = [None] * taken
            pos += taken
            with self.lock:
                self.epoch += 1  # stored values changed under the flushing entries
                gone = [self.flushing.pop(idx) for idx in done]
                self.flushing_bytes -= sum(map(_entry_bytes, gone))
                self.flushed.notify_all()
            del gone  # freed outside the lock (thousands of buffers in a group)

    def _reapply(self, idx: int, older: Entry) -> None:
        """After a failed flush: lay the newer dirty page set of ``idx`` over the older
        entry that was being flushed (lock held), so nothing acknowledged is lost."""
        newer = self.dirty[idx]
        assert isinstance(newer, PageSet)
        if isinstance(older, PageSet):
            merged = PageSet()
            merged.pages = {**older.pages, **newer.pages}
            self._set_dirty(idx, merged)
            if len(merged.pages) == L.PAGES_PER_CHUNK:
                self._set_dirty(idx, bytearray(b"".join(merged.pages[p] for p in range(
                    L.PAGES_PER_CHUNK))))
        else:
            buf = bytearray(older)  # type: ignore[arg-type]
            for p, page in newer.pages.items():
                buf[p * PS:(p + 1) * PS] = page
            self._set_dirty(idx, buf)

    # --- committing -------------------------------------------------------------------------

    def _patch(self, txn: Txn, mk: bytes, ps: PageSet, below: bytes | None
               ) -> tuple[str, object, bytes | None]:
        """What a page set becomes over the visible value ``below``: ``("chunk", bytes)`` if
        it covers the whole chunk with what lies below, else ``("patch", (value, pages))`` with
        the pages not encoded yet (:func:`encode_pages_many` does a flush's in one batch);
        the third item is the chunk key to take a reference on.

        Over a patch at the same map key (written since the last snapshot) the page set
        becomes a new layer of just its pages, ``("patch", (mask, framed, below))``: the
        pages stored below are neither read nor written again. Else, or when that patch has
        :data:`layout.MAX_LAYERS` layers, holds a chunk's worth of pages in them or would
        cover the whole chunk, its pages are merged into one new layer, as here."""
        layer = self._layer(mk, ps, below)
        if layer is not None:
            return layer
        pages: dict[int, bytes | bytearray] = {}
        base: bytes | None = None
        if below and L.is_patch(below):
            pages.update(self.ctx.patch_pages(txn, below, self.domain))
            base = L.parse_patch(below)[3]
        elif below:
            base = below
        pages.update(ps.pages)
        if len(pages) == L.PAGES_PER_CHUNK:
            return "chunk", b"".join(pages[p] for p in range(L.PAGES_PER_CHUNK)), None
        if len(pages) * PS >= CS - 2 * PS and base is None:
            buf = bytearray(CS)
            for p, page in pages.items():
                buf[p * PS:(p + 1) * PS] = page
            return "chunk", bytes(buf), None
        order = sorted(pages)
        framed = b"".join([RAW_MARK, *[pages[p] for p in order]])  # the one copy of the pages
        data = memoryview(framed)[1:]
        # data[-1]: a written page nearly never ends in a zero byte unless it is all zeros, so
        # only zero writes (and the rare page ending in 0) pay the full check
        if not data[-1] and codec.is_zero(data):
            # Zeros written over zeros, or over the only non-zero pages of the base, make a
            # hole as before (zero chunks are never stored); only zero writes pay this check.
            if base is None:
                return "chunk", ZERO_CHUNK, None
            buf = bytearray(self.ctx.chunk(txn, base, self.domain))
            for p in order:
                buf[p * PS:(p + 1) * PS] = ZERO_CHUNK[:PS]
            if codec.is_zero(buf):
                return "chunk", ZERO_CHUNK, None
        mask = 0
        for p in order:
            mask |= 1 << p
        return "patch", (mask, framed, None), base

    def _layer_fits(self, mk: bytes, ps: PageSet, below: bytes | None) -> bool:
        """Whether page set ``ps`` may be a new layer over ``below`` (:meth:`_layer` may still
        merge pages that are all zeros)."""
        if not below or not L.is_patch(below):
            return False
        union, _, page_key, base = L.parse_patch(below)
        if page_key != mk or L.DIGEST_OF[below[0]] != patch_tag_for(self.domain):
            return False  # frozen below a snapshot, or a format-4 digest: merged instead
        masks = L.layer_masks(below)
        whole = union | ps.mask
        return not (len(masks) >= L.MAX_LAYERS or whole == L.FULL_MASK
                    or sum(m.bit_count() for m in masks) + len(ps.pages) > L.PAGES_PER_CHUNK
                    or (base is None and whole.bit_count() * PS >= CS - 2 * PS))

    def _layer(self, mk: bytes, ps: PageSet, below: bytes | None
               ) -> tuple[str, object, bytes | None] | None:
        """:meth:`_patch` of a page set as a new layer over patch ``below``, or None if it
        is not to be one (see there)."""
        if not self._layer_fits(mk, ps, below):
            return None
        assert below is not None
        base = L.chunk_of(below)
        mask = ps.mask
        order = sorted(ps.pages)
        framed = b"".join([RAW_MARK, *[ps.pages[p] for p in order]])
        if not framed[-1] and codec.is_zero(memoryview(framed)[1:]):
            return None  # zeros may make a hole: the merge path finds out
        return "patch", (mask, framed, below), base

    def _submit_finish(self, batch: list[PreparedPatch]) -> Future[list[tuple[bytes, bytes]]]:
        """:func:`_finish_patches` of ``batch`` on the worker pool (inline once the pool is
        shut down: an engine closing while a flush is under way)."""
        try:
            return self.ctx.pool.submit(_finish_patches, batch, self.domain)
        except RuntimeError:
            done: Future[list[tuple[bytes, bytes]]] = Future()
            done.set_result(_finish_patches(batch, self.domain))
            return done

    def _commit(self, items: list[tuple[int, Entry]],
                in_txn: Callable[[Txn, object], None] | None) -> int:
        """Commit the first entries of ``items`` (sorted by index) that hold about
        ``FLUSH_GROUP_BYTES`` once prepared, at least one, in one write transaction; returns
        how many. ``in_txn`` runs in it only if it takes them all."""
        ctx = self.ctx
        maps, chunks = ctx.maps, ctx.chunks
        fulls: dict[int, bytes | bytearray] = {}
        patches: dict[int, tuple[bytes | None, bytes, tuple[bytes, bytes], bytes | None]] = {}
        order: list[tuple[int, bytes, bytes | None]] = []  # (idx, map key, base) submitted
        futs: list[Future[list[tuple[bytes, bytes]]]] = []
        below: dict[int, bytes | None] = {}
        mask: int
        framed: bytes
        prior: bytes | None
        seen = ctx.store.commit_id()  # read before the transaction begins: see below
        with ctx.store.read() as txn:
            raw = txn.get(L.lineage_key(self.lineage), db=maps.lineages)
            lin = maps.load(txn, self.lineage) if raw is not None else None
            if lin is None or lin.owner != self.id or lin.head is None:
                raise VolumeNotFound(f"The volume '{self.id}' does not exist.")
            head = lin.head
            # patches are finished (digested, compressed, sealed) in batches on the pool
            # while the next ones are prepared here
            batch: list[PreparedPatch] = []
            held = 0  # bytes the group holds prepared: its chunks, its patches' pages
            taken = len(items)
            for pos, (idx, e) in enumerate(items):
                if held >= FLUSH_GROUP_BYTES:
                    taken = pos
                    break
                if isinstance(e, bytearray):
                    fulls[idx] = e
                    held += CS
                    continue
                if e is None:
                    held += PS  # (a hole's entries and tombstones)
                    continue
                if idx not in below:
                    # the visible values of the next page sets, and the pages of the patches
                    # they are written over, which _patch reads (RADOS: a few batched loads
                    # instead of a round trip each; a bounded run at a time, so the node
                    # cache holds them until they are used; not those a layer goes on:
                    # they are not read; a generator: a backend that takes no hints, as
                    # LMDB, does not pay for the question)
                    ahead = [(i, x) for i, x in items[pos:pos + PAGES_AHEAD]
                             if isinstance(x, PageSet)]
                    below.update(self._values(txn, [i for i, _ in ahead]))
                    ctx.prefetch_pages(txn, (
                        below[i] for i, x in ahead if not self._layer_fits(
                            L.map_key(self.lineage, i, head), x, below[i])))
                mk = L.map_key(self.lineage, idx, head)
                kind, what, base = self._patch(txn, mk, e, below[idx])
                if kind == "chunk":
                    fulls[idx] = what  # type: ignore[assignment]
                    held += CS
                    continue
                mask, framed, prior = what  # type: ignore[misc]  # a prepared patch
                held += len(framed)  # (RAW_MARK + its pages)
                order.append((idx, mk, base))
                batch.append((mask, framed, mk, base, prior))
                if len(batch) == PATCH_BATCH:
                    futs.append(self._submit_finish(batch))
                    batch = []
            if batch:
                futs.append(self._submit_finish(batch))
            if taken < len(items):
                items, in_txn = items[:taken], None
            entries = dict(items)
            fps = {i: chunks.fingerprints(b, self.domain)[0] for i, b in fulls.items()}
            # Compress, outside the write transaction, the chunks probably not stored yet (a
            # colliding fingerprint that turns out to hold other bytes is encoded inline by put).
            todo = [i for i in sorted(fulls)
                    if (fp := fps[i]) is not None and not chunks.maybe_stored(txn, fp)]
        finished = [r for f in futs for r in f.result()]
        for (idx, mk, base), done in zip(order, finished, strict=True):
            patches[idx] = (below[idx], mk, done, base)
        encoded: dict[int, bytes] = dict(zip(
            todo, encode_many([memoryview(fulls[i]) for i in todo], chunks.level, ctx.pool,
                              self.domain, [fps[i] for i in todo]),  # type: ignore[misc]
            strict=True))
        with ctx.store.write() as txn:
            raw = txn.get(L.lineage_key(self.lineage), db=maps.lineages)
            lin = maps.load(txn, self.lineage) if raw is not None else None
            if lin is None or lin.owner != self.id or lin.head is None:
                raise VolumeNotFound(f"The volume '{self.id}' does not exist.")
            chain = self._chain(txn)
            floor = maps.head_floor(lin)
            cur = txn.cursor(db=maps.maps)
            redo = [i for i in patches if lin.head != head]
            if not redo and patches and ctx.store.commit_id() != seen:
                # a commit since the values were read (a fold, elsewhere too) may have
                # changed some: those are prepared again; with none, none changed
                now = self._values(txn, sorted(patches))
                redo = [i for i, p in patches.items() if now[i] != p[0]]
            for idx in redo:  # what lies below changed (a fold): prepare it again
                mk = L.map_key(self.lineage, idx, lin.head)
                below_now = self._values(txn, [idx])[idx]
                ps = entries[idx]
                assert isinstance(ps, PageSet)
                kind, what, base = self._patch(txn, mk, ps, below_now)
                if kind == "chunk":
                    del patches[idx]
                    fulls[idx] = what  # type: ignore[assignment]
                    fps[idx] = chunks.fingerprints(what, self.domain)[0]  # type: ignore[arg-type]
                else:
                    mask, framed, prior = what  # type: ignore[misc]  # a prepared patch
                    done = _finish_patches([(mask, framed, mk, base, prior)], self.domain)[0]
                    patches[idx] = (below_now, mk, done, base)
            for idx, _e in items:
                if idx in patches:
                    prior, _, (value, pages), base = patches[idx]
                    if base is not None and not (prior and L.lays_on(value, prior)):
                        chunks.incref(txn, base)  # (a new layer keeps the reference below)
                    maps.set_head(txn, lin, chain, idx, value, floor, cur, pages=pages)
                elif idx in fulls:
                    fp = fps[idx]
                    key = None if fp is None else chunks.put(txn, fp, memoryview(fulls[idx]),
                                                             encoded.get(idx), self.domain)
                    maps.set_head(txn, lin, chain, idx, key, floor, cur)
                else:
                    maps.set_head(txn, lin, chain, idx, None, floor, cur)
            if in_txn is not None:
                in_txn(txn, lin)
            maps.save(txn, lin)
        return len(items)

