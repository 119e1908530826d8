"""Chunks as RADOS objects: a :class:`~.base.ChunkBackend` over a Ceph data pool.

A chunk's bytes live in the data pool of a :class:`~.rados_io.RadosConnection`, in one of
two ways, told apart by its index value (below):

* **in a pack** (the default): a write transaction appends the chunks it puts to a buffer
  and writes it as one object ``p.<hex pack id>`` (16 random bytes) once it holds
  ``pack_size`` bytes, and at its commit. An object of ~44 KB per chunk cost this cluster's
  OSD 4x the CPU, and the client 4x, of the same bytes in 4 MiB objects, which is most of
  what an import spent beyond LMDB's. A pack is the chunks' encoded values back to back,
  then a trailer: ``key | offset u32 | length u32`` per chunk, then ``count u32`` and
  ``PACK_MAGIC`` (so a pack says what it holds, for compaction and fsck). A read of several
  chunks of one pack that lie close together is one ranged read;
* **alone**: one object ``c.<hex key>`` per chunk (``pack=0`` in the URL, and every chunk
  written before packs existed).

What exists is decided by the metadata, not by the pool: tables of the caller's key-value
backend (the one holding the block maps and reference counts) say it.

* the **index** (chunk key -> location): every chunk that may be read. The location is
  ``b""`` for a chunk alone, else ``pack id[16] | offset u32 | length u32``.
  ``has_many``, ``collision_keys`` and ``iter_all`` are answered from it (ordered, batched,
  in the caller's transaction), so a chunk exists exactly when the metadata commit that
  made it exists;
* the **gc** table (chunk key -> deadline u64, milliseconds since the epoch, then the
  chunk's location): chunks deleted by a committed transaction whose bytes are kept until
  the deadline;
* the **packs** table (pack id -> ``count u32 | live u64 | size u64``): for each pack, how
  many index and gc entries name it, their bytes, and the end of its last chunk. A pack
  whose count drops to 0 leaves the table for
* the **pack gc** table (pack id -> deadline): packs no entry names any more, removed after
  the deadline (``grace`` seconds after the last entry went), *after* the commit that
  drops them (a pack id is never written again, so nothing can race the removal; a crash
  in between leaves an orphan).
* **Compaction** (:meth:`RadosChunks.compact`): a pack whose live bytes fell below half its
  size has its indexed chunks copied into a new pack in one transaction; the old pack is
  then named only by gc entries (or by none: pack gc), so readers that began before the
  compaction still read it during the grace.

How the contract of :class:`~.base.ChunkBackend` is kept:

1. ``put_many`` starts the objects' writes (``window`` in flight, write-behind: it returns
   without waiting unless the window is full) and adds their index entries to ``txn``; the
   metadata backend calls :meth:`RadosChunks.before_commit` before it publishes ``txn``'s
   commit, which waits until every object is durable (and fails the commit if one is not),
   so the objects exist before any commit can refer to them. If ``txn`` aborts (or the
   process dies first) the objects stay without an index entry: orphans, which
   :meth:`RadosChunks.sweep_orphans` removes once they are older than a grace period. A put
   of a key waiting in gc revives it (drops its gc entry).
2. ``delete_many`` removes nothing: it moves the key (and its location) from the index to
   gc in ``txn``, with a deadline ``grace`` seconds on (default 60).
   :meth:`RadosChunks.sweep` removes the objects of passed deadlines later. Queued deletes
   with a grace period rather than mark-and-sweep: a delete costs one metadata entry, the
   sweep touches only what was deleted (no walk of every reference), and a reader that
   began before the delete committed (a read transaction, an export, another front end)
   can still read the object during the grace.
3. Read your writes: the index entries are in ``txn``, so its own puts show and its own
   deletes hide, in every call.
4. ``iter_all`` walks the index in batches (each in a fresh read transaction) and reads each
   batch's objects in parallel.
5. ``collision_keys`` lists index *and* gc keys with the fingerprint: a collision number is
   not given to different bytes while an old reader may still read the object under it
   (ChunkStore never finds a gc'd key equal to new data, since ``get_many`` hides it, so it
   takes the next number).

A put of a key waiting in gc with a packed location puts that location back in the index
(its bytes are still in the pack, which gc's entry kept alive; a key's bytes never change):
nothing is written. Sweeps run in a write transaction of the metadata store and remove
objects of chunks alone before it commits (packs: after, see above): the backend's
one-writer-at-a-time rule keeps every ``put_many`` (which also runs in a write
transaction) out meanwhile, so a sweep never removes an object that a concurrent
transaction just wrote. Across processes that rule is the metadata writer lock, which
expires: a writer that stalled past it may still mean to commit entries naming objects a
sweep now finds unnamed (its packs) or drops (a gc'd key it revived). So a sweep first
*fences* (the ``fence`` callable, :meth:`.rados_kv.RadosKv.fence_writers`): it changes the
metadata root's version, so every write transaction that began before the sweep's fails to
commit. If the sweep's commit fails, its entries stay and the next sweep removes again (a
missing object is fine).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from .. import layout as L
from ..errors import BackendUnavailable, CorruptStore
from .base import Table, Txn
from .rados_io import DEFAULT_WINDOW, RadosConnection, Writer
from .store import Store

OBJECT_PREFIX = "c."
PACK_PREFIX = "p."
PACK_ID_SIZE = 16
PACK_MAGIC = b"EBSPACK1"
DEFAULT_PACK_SIZE = 4 << 20
DEFAULT_GRACE = 60.0  # seconds a deleted chunk's object is kept
SWEEP_BATCH = 1024
#: chunk writes in flight behind a write transaction (write-behind, see put_many): on a
#: one-OSD BlueStore cluster here, 64 imported 512 MiB in 10-30% less time than 16
WRITE_WINDOW = 32
#: packs in flight behind a write transaction (each up to ``pack_size`` bytes)
PACK_WINDOW = 4
#: chunks of one pack read together when the gap between them is at most this
READ_GAP = 64 * 1024
#: a pack is compacted once its live bytes are below this share of its size
COMPACT_BELOW = 0.5

_LOC = struct.Struct(f"<{PACK_ID_SIZE}sII")  # pack id, offset, length
_REC = struct.Struct("<IQQ")  # count, live bytes, size
_ENTRY = struct.Struct(f"<{L.KEY_SIZE}sII")  # trailer: key, offset, length
_TAIL = struct.Struct(f"<I{len(PACK_MAGIC)}s")  # trailer: count, magic
_DEADLINE = 8  # a gc value: deadline u64 (ms), then the chunk's location


def object_name(key: bytes) -> str:
    return OBJECT_PREFIX + key.hex()


def pack_name(pid: bytes) -> str:
    return PACK_PREFIX + pid.hex()


def key_of(name: str) -> bytes | None:
    """The chunk key an object name stands for (None: not a chunk object's name)."""
    return _hex_of(name, OBJECT_PREFIX, L.KEY_SIZE)


def pack_of(name: str) -> bytes | None:
    """The pack id an object name stands for (None: not a pack's name)."""
    return _hex_of(name, PACK_PREFIX, PACK_ID_SIZE)


def _hex_of(name: str, prefix: str, size: int) -> bytes | None:
    if not name.startswith(prefix):
        return None
    try:
        raw = bytes.fromhex(name[len(prefix):])
    except ValueError:
        return None
    return raw if len(raw) == size else None


def location(pid: bytes, offset: int, length: int) -> bytes:
    return _LOC.pack(pid, offset, length)


def parse_location(value: bytes) -> tuple[bytes, int, int] | None:
    """``(pack id, offset, length)`` of an index value; None for a chunk alone (``b""``)."""
    if not value:
        return None
    if len(value) != _LOC.size:
        raise CorruptStore(f"a chunk location of {len(value)} bytes (expected 0 or "
                           f"{_LOC.size})")
    pid, off, length = _LOC.unpack(value)
    return bytes(pid), off, length


def pack_record(count: int, live: int, size: int) -> bytes:
    return _REC.pack(count, live, size)


def parse_pack_record(value: bytes) -> tuple[int, int, int]:
    if len(value) != _REC.size:
        raise CorruptStore(f"a pack record of {len(value)} bytes (expected {_REC.size})")
    count, live, size = _REC.unpack(value)
    return count, live, size


def pack_trailer(entries: Sequence[tuple[bytes, int, int]]) -> bytes:
    return b"".join(_ENTRY.pack(k, o, n) for k, o, n in entries) + \
        _TAIL.pack(len(entries), PACK_MAGIC)


def parse_pack(data: bytes, name: str) -> list[tuple[bytes, int, int]]:
    """The ``(key, offset, length)`` entries a pack's trailer lists (CorruptStore if it
    has none or it does not fit)."""
    if len(data) < _TAIL.size:
        raise CorruptStore(f"pack {name} is {len(data)} bytes: no trailer")
    n, magic = _TAIL.unpack_from(data, len(data) - _TAIL.size)
    start = len(data) - _TAIL.size - n * _ENTRY.size
    if magic != PACK_MAGIC or start < 0:
        raise CorruptStore(f"pack {name} has no valid trailer")
    out = []
    for i in range(n):
        k, o, ln = _ENTRY.unpack_from(data, start + i * _ENTRY.size)
        if o + ln > start:
            raise CorruptStore(f"pack {name}: entry {k.hex()} lies outside its data")
        out.append((bytes(k), o, ln))
    return out


def _ms(t: float) -> bytes:
    return L.u64(max(0, int(t * 1000)))


def _due(txn: Txn, table: Table, cutoff: int, limit: int) -> list[tuple[bytes, bytes]]:
    """Up to ``limit`` ``(key, value)`` of ``table`` whose value starts with a deadline (u64
    ms) of at most ``cutoff``, in key order."""
    out: list[tuple[bytes, bytes]] = []
    for key, value in txn.cursor(db=table):
        if L.read_u64(value[:_DEADLINE]) <= cutoff:
            out.append((bytes(key), bytes(value)))
            if len(out) >= limit:
                break
    return out


@dataclass
class _OpenPack:
    """The pack a write transaction is filling (not written yet)."""

    pid: bytes
    buf: bytearray = field(default_factory=bytearray)
    entries: list[tuple[bytes, int, int]] = field(default_factory=list)


class RadosChunks:
    """:class:`~.base.ChunkBackend` over the data pool of ``conn`` and the ``index``, ``gc``,
    ``packs`` and ``pack_gc`` tables of ``store`` (see the module docstring). ``clock`` gives
    seconds since the epoch (tests pass their own). ``pack_size`` 0 writes each chunk as an
    object of its own (``packs``/``pack_gc`` may then be None, for a store without packs)."""

    transactional_puts = False

    def __init__(self, conn: RadosConnection, store: Store, index: Table, gc: Table,
                 packs: Table | None = None, pack_gc: Table | None = None, *,
                 grace: float = DEFAULT_GRACE, window: int = DEFAULT_WINDOW,
                 write_window: int = WRITE_WINDOW, pack_size: int = DEFAULT_PACK_SIZE,
                 clock: Callable[[], float] = time.time,
                 fence: Callable[[], None] | None = None) -> None:
        self.conn = conn
        self.pool = conn.data
        self.store = store
        self.index = index
        self.gc = gc
        self.packs = packs
        self.pack_gc = pack_gc
        self.pack_size = pack_size if packs is not None and pack_gc is not None else 0
        self.grace = grace
        self.window = window
        self.write_window = write_window
        self.clock = clock
        #: called in a write transaction before it removes objects that an uncommitted
        #: transaction of another process could still mean to name (see ``_fence``)
        self.fence = fence
        self._writer: Writer | None = None  # the current write transaction's object writes
        self._unwritten: dict[str, bytes] = {}  # object name -> value, until written
        self._open: _OpenPack | None = None  # the pack being filled
        #: why a pack of the current write transaction was not written (its entries may
        #: already be in the transaction, from a child that committed into it): the commit
        #: must fail
        self._lost: BaseException | None = None
        #: packs compaction found nothing to move out of (gc entries keep them): their
        #: record then, so they are looked at again only once it changed
        self._barren: dict[bytes, bytes] = {}
        self._compact_from = b""  # where compact's next scan of the pack records starts
        self._mu = threading.Lock()
        add_hook = getattr(store.backend, "add_commit_hook", None)
        #: whether commits wait for this backend's writes; if not, put_many waits itself
        self.write_behind = add_hook is not None
        if add_hook is not None:
            add_hook(self)

    # --- the ChunkBackend contract ------------------------------------------------------

    def put_many(self, txn: Txn, items: Sequence[tuple[bytes, bytes]]) -> None:
        if not items:
            return
        if self.pack_size:
            self._put_packed(txn, items)
        else:
            self._put_alone(txn, items)
        if not self.write_behind:  # a backend without commit hooks: durable before return
            try:
                self._seal()
                writer, self._writer = self._writer, None
                if writer is not None:
                    writer.wait()
            finally:
                self._lost = None
                with self._mu:
                    self._unwritten.clear()

    def _put_alone(self, txn: Txn, items: Sequence[tuple[bytes, bytes]]) -> None:
        writer = self._writer_now()
        index, gc = self.index, self.gc
        for key, value in items:
            name = object_name(key)
            with self._mu:
                self._unwritten[name] = value
            writer.put(name, value)
            old = txn.get(key, db=index)
            if old:  # was in a pack: that entry no longer names it
                self._unref(txn, old)
            txn.put(key, b"", db=index)
            dead = txn.get(key, db=gc)
            if dead is not None:  # a key waiting out its grace is revived
                txn.delete(key, db=gc)
                if len(dead) > _DEADLINE:
                    self._unref(txn, dead[_DEADLINE:])

    def _put_packed(self, txn: Txn, items: Sequence[tuple[bytes, bytes]]) -> None:
        index, gc = self.index, self.gc
        for key, value in items:
            if txn.get(key, db=index) is not None:
                continue  # stored already: a key's bytes never change
            dead = txn.get(key, db=gc)
            if dead is not None:
                txn.delete(key, db=gc)
                if len(dead) > _DEADLINE:  # its bytes are still in their pack: name them
                    txn.put(key, dead[_DEADLINE:], db=index)
                    continue
            op = self._open
            if op is None:
                op = self._open = _OpenPack(os.urandom(PACK_ID_SIZE))
            off = len(op.buf)
            op.buf += value
            op.entries.append((key, off, len(value)))
            txn.put(key, location(op.pid, off, len(value)), db=index)
            self._ref(txn, op.pid, len(value), off + len(value))
            if len(op.buf) >= self.pack_size:
                self._seal()

    def _ref(self, txn: Txn, pid: bytes, length: int, end: int) -> None:
        assert self.packs is not None
        old = txn.get(pid, db=self.packs)
        count, live, size = parse_pack_record(old) if old is not None else (0, 0, 0)
        txn.put(pid, pack_record(count + 1, live + length, max(size, end)), db=self.packs)

    def _unref(self, txn: Txn, loc: bytes) -> None:
        """One index or gc entry stops naming ``loc``'s pack; a pack that no entry names is
        queued for removal after the grace."""
        where = parse_location(loc)
        if where is None or self.packs is None or self.pack_gc is None:
            return
        pid, _, length = where
        old = txn.get(pid, db=self.packs)
        if old is None:
            raise CorruptStore(f"chunk location names pack {pack_name(pid)}, which has no "
                               f"record")
        count, live, size = parse_pack_record(old)
        if count > 1:
            txn.put(pid, pack_record(count - 1, max(0, live - length), size), db=self.packs)
        else:
            txn.delete(pid, db=self.packs)
            txn.put(pid, _ms(self.clock() + self.grace), db=self.pack_gc)

    def _writer_now(self) -> Writer:
        writer = self._writer
        if writer is None:
            window = PACK_WINDOW if self.pack_size else self.write_window
            writer = self._writer = self.pool.writer(window, self._written)
        return writer

    def _seal(self) -> None:
        """Start writing the open pack (if any) with its trailer."""
        op, self._open = self._open, None
        if op is None or not op.entries:
            return
        try:
            op.buf += pack_trailer(op.entries)
            data = bytes(op.buf)  # the one copy (the writer keeps it as it is)
            name = pack_name(op.pid)
            with self._mu:
                self._unwritten[name] = data
            self._writer_now().put(name, data)
        except BaseException as exc:
            # the put that filled the pack fails (its transaction, maybe a child, aborts),
            # but entries of the pack may be in the transaction already: fail its commit
            self._lost = exc
            raise

    # Write-behind: a put starts its object's write (or adds to the open pack) and
    # returns; the writes of a write transaction are waited for in before_commit, which
    # the metadata backend calls before it publishes the commit (so every object is
    # durable before an index entry naming it commits: contract 1), and in end_write,
    # after a commit or an abort. Until its write is acknowledged, a value is also kept
    # here, so that the transaction reads its own puts without waiting for them. The
    # backend has one writer at a time (per process and, through its writer lock, per
    # store).

    def _written(self, name: str) -> None:
        with self._mu:
            self._unwritten.pop(name, None)

    def before_commit(self) -> None:
        """Write the open pack, then wait until every object put in the current write
        transaction is durable; raises (and the commit fails) if one could not be
        written."""
        self._seal()
        writer = self._writer
        if writer is not None:
            writer.wait()
        if self._lost is not None:
            raise BackendUnavailable(f"a pack of this transaction could not be written "
                                     f"({self._lost!r}); nothing was committed") \
                from self._lost

    def end_write(self) -> None:
        """The write transaction ended (committed or aborted): wait for its writes (an
        aborted one's objects are orphans for :meth:`sweep_orphans`) and forget them."""
        writer, self._writer = self._writer, None
        self._open = None
        self._lost = None
        try:
            if writer is not None:  # a failure was raised to the commit by before_commit,
                writer.settle()  # or the transaction aborted and nothing refers to the objects
        finally:
            with self._mu:
                self._unwritten.clear()

    def get_many(self, txn: Txn, keys: Sequence[bytes]) -> list[bytes | None]:
        index = self.index
        return self._read([(k, txn.get(k, db=index)) for k in keys])

    def _read(self, located: Sequence[tuple[bytes, bytes | None]]) -> list[bytes | None]:
        """The values of ``(key, index value)`` pairs (None where the value is None): the
        chunks alone read whole, those in packs by ranges, neighbours in one read."""
        out: list[bytes | None] = [None] * len(located)
        alone: list[tuple[int, str]] = []
        packed: dict[bytes, list[tuple[int, int, int]]] = {}  # pid -> (offset, length, i)
        with self._mu:
            unwritten = self._unwritten
            op = self._open
            for i, (key, loc) in enumerate(located):
                if loc is None:
                    continue
                where = parse_location(loc)
                if where is None:
                    name = object_name(key)
                    held = unwritten.get(name) if unwritten else None
                    if held is None:
                        alone.append((i, name))
                    else:
                        out[i] = held
                    continue
                pid, off, length = where
                if op is not None and pid == op.pid:
                    out[i] = bytes(op.buf[off:off + length])
                    continue
                held = unwritten.get(pack_name(pid)) if unwritten else None
                if held is not None:
                    out[i] = held[off:off + length]
                else:
                    packed.setdefault(pid, []).append((off, length, i))
        if alone:
            values = self.pool.read_many([n for _, n in alone], window=self.window)
            for (i, name), value in zip(alone, values, strict=True):
                if value is None:
                    raise CorruptStore(f"chunk {located[i][0].hex()} is indexed but its "
                                       f"object {self.pool.name}/{name} is missing")
                out[i] = value
        if packed:
            self._read_packed(packed, located, out)
        return out

    def _read_packed(self, packed: dict[bytes, list[tuple[int, int, int]]],
                     located: Sequence[tuple[bytes, bytes | None]],
                     out: list[bytes | None]) -> None:
        ranges: list[tuple[str, int, int]] = []
        parts: list[list[tuple[int, int, int]]] = []  # per range: (offset, length, i)
        for pid, wanted in packed.items():
            wanted.sort()
            name = pack_name(pid)
            run = [wanted[0]]
            lo, hi = wanted[0][0], wanted[0][0] + wanted[0][1]
            for w in wanted[1:]:
                if w[0] <= hi + READ_GAP:
                    run.append(w)
                    hi = max(hi, w[0] + w[1])
                    continue
                ranges.append((name, lo, hi - lo))
                parts.append(run)
                run, lo, hi = [w], w[0], w[0] + w[1]
            ranges.append((name, lo, hi - lo))
            parts.append(run)
        reading = [r for r in ranges if r[2] > 0]  # (a chunk of no bytes reads as such)
        fetched = iter(self.pool.read_ranges(reading, window=self.window))
        got = [next(fetched) if n > 0 else b"" for _, _, n in ranges]
        for (name, lo, n), run, data in zip(ranges, parts, got, strict=True):
            if data is None or len(data) < n:
                i = run[0][2]
                what = "is missing" if data is None else f"ends at byte {lo + len(data)}"
                raise CorruptStore(f"chunk {located[i][0].hex()} is indexed in pack "
                                   f"{self.pool.name}/{name}, which {what}")
            view = memoryview(data)
            for off, length, i in run:
                out[i] = bytes(view[off - lo:off - lo + length])

    def has_many(self, txn: Txn, keys: Sequence[bytes]) -> list[bool]:
        cur = txn.cursor(db=self.index)
        return [cur.set_key(k) for k in keys]

    def delete_many(self, txn: Txn, keys: Sequence[bytes]) -> None:
        if not keys:
            return
        deadline = _ms(self.clock() + self.grace)
        index, gc = self.index, self.gc
        for key in keys:
            loc = txn.get(key, db=index)
            if loc is not None:
                txn.delete(key, db=index)
                txn.put(key, deadline + loc, db=gc)

    def collision_keys(self, txn: Txn, fp: bytes) -> list[bytes]:
        found: set[bytes] = set()
        for table in (self.index, self.gc):
            cur = txn.cursor(db=table)
            if not cur.set_range(fp):
                continue
            key = cur.key()
            while key[:L.FP_SIZE] == fp:
                found.add(key)
                if not cur.next():
                    break
                key = cur.key()
        return sorted(found)

    def iter_all(self, batch: int = 256) -> Iterator[list[tuple[bytes, bytes]]]:
        for items in self.store.scan(self.index, batch=batch):
            try:
                values = self._read(items)
            except CorruptStore:
                # deleted (and swept) since the batch was listed, or truly missing
                values = self._read_settled(items)
            out = [(k, v) for (k, _), v in zip(items, values, strict=True) if v is not None]
            if out:
                yield out

    def _read_settled(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes | None]:
        """:meth:`_read` of a batch whose objects were not all there (deleted, or moved by a
        compaction, since it was listed): what is indexed now must read."""
        with self.store.read() as txn:
            now = [(k, txn.get(k, db=self.index)) for k, _ in items]
        return self._read(now)

    # --- removing objects ---------------------------------------------------------------

    def pending(self, txn: Txn) -> int:
        """Chunks deleted and waiting for their deadline (as ``txn`` sees them)."""
        return int(txn.stat(self.gc)["entries"])

    def sweep(self, now: float | None = None, *, limit: int = SWEEP_BATCH) -> int:
        """Remove the objects of up to ``limit`` deleted chunks whose grace ended by ``now``
        (default: the clock), and their gc entries, in one write transaction, then the
        packs whose grace ended; returns how many chunks and packs. Call repeatedly (until
        it returns 0) to drain a long queue."""
        gone: list[str] = []
        with self.store.write(freeing=True) as txn:
            n = self.sweep_in(txn, now, limit=limit, packs_gone=gone)
        if gone:  # after the commit: no entry names them now (see the module docstring)
            self.pool.remove_many(gone, window=self.window)
        return n + len(gone)

    def sweep_in(self, txn: Txn, now: float | None = None, *, limit: int = SWEEP_BATCH,
                 packs_gone: list[str] | None = None) -> int:
        """:meth:`sweep` inside the caller's write transaction (which must commit for the
        entries to go; the objects of chunks alone are removed at once, see the module
        docstring). The names of packs due for removal are added to ``packs_gone``: remove
        them once ``txn`` committed (they are left as orphans if not given)."""
        cutoff = L.read_u64(_ms(self.clock() if now is None else now))
        due = [(key, value[_DEADLINE:]) for key, value in _due(txn, self.gc, cutoff, limit)]
        if due:
            alone = [object_name(k) for k, loc in due if not loc]
            if alone:
                self._fence()
                self.pool.remove_many(alone, window=self.window)
            for key, loc in due:
                txn.delete(key, db=self.gc)
                if loc:
                    self._unref(txn, loc)
        if self.pack_gc is not None:
            packs = [pid for pid, _ in _due(txn, self.pack_gc, cutoff, limit)]
            for pid in packs:
                txn.delete(pid, db=self.pack_gc)
            if packs_gone is not None:
                packs_gone.extend(pack_name(p) for p in packs)
        return len(due)

    def compact(self, *, limit: int = 4, scan: int = SWEEP_BATCH) -> int:
        """Copy the indexed chunks of up to ``limit`` sparse packs (live bytes below
        :data:`COMPACT_BELOW` of their size; among the first ``scan`` records after where
        the last call stopped) into new packs, in one write transaction; returns how many
        chunks it moved. Their old packs' space comes back after the grace (pack gc), or
        once the gc entries still naming them are swept. A pack with nothing indexed to
        move is looked at again only once its record changed."""
        if self.packs is None:  # (with pack=0, the live chunks move to objects alone)
            return 0
        with self.store.write() as txn:
            sparse: list[bytes] = []
            cur = txn.cursor(db=self.packs)
            start = self._compact_from
            found = cur.set_range(start) if start else cur.first()
            looked = 0
            while found and looked < scan and len(sparse) < limit:
                pid, rec = bytes(cur.key()), bytes(cur.value())
                _, live, size = parse_pack_record(rec)
                if live < size * COMPACT_BELOW and self._barren.get(pid) != rec:
                    sparse.append(pid)
                looked += 1
                found = cur.next()
            self._compact_from = bytes(cur.key()) if found else b""
            if not sparse:
                return 0
            datas = self.pool.read_many([pack_name(p) for p in sparse], window=self.window,
                                        hint=max(self.pack_size, DEFAULT_PACK_SIZE) * 2)
            moved: list[tuple[bytes, bytes]] = []
            for pid, data in zip(sparse, datas, strict=True):
                name = pack_name(pid)
                if data is None:
                    raise CorruptStore(f"pack {self.pool.name}/{name} has a record but no "
                                       f"object")
                before = len(moved)
                for key, off, length in parse_pack(data, name):
                    loc = location(pid, off, length)
                    if txn.get(key, db=self.index) == loc:
                        txn.delete(key, db=self.index)
                        self._unref(txn, loc)
                        moved.append((key, data[off:off + length]))
                if len(moved) == before:  # only gc entries name it: they go by themselves
                    if len(self._barren) >= 65536:
                        self._barren.clear()
                    rec = txn.get(pid, db=self.packs)
                    if rec is not None:
                        self._barren[pid] = bytes(rec)
            self.put_many(txn, moved)
            return len(moved)

    def sweep_orphans(self, grace: float | None = None, *, now: float | None = None,
                      batch: int = SWEEP_BATCH) -> int:
        """Remove the data pool's chunk objects and packs that no index, gc or pack entry
        names and that are older than ``grace`` seconds (default: this backend's grace) —
        what a transaction that aborted or died after writing its objects left behind, or a
        sweep that died after its commit. Streams the pool's listing; each batch is checked
        and removed inside one write transaction, so no put can be between writing an
        object and indexing it meanwhile. Returns how many it removed."""
        grace = self.grace if grace is None else grace
        removed = 0
        names: list[str] = []
        for name in self.pool.list_objects():
            if key_of(name) is not None or pack_of(name) is not None:
                names.append(name)
            if len(names) >= batch:
                removed += self._remove_orphans(names, grace, now)
                names = []
        if names:
            removed += self._remove_orphans(names, grace, now)
        return removed

    def _named(self, txn: Txn, name: str) -> bool:
        key = key_of(name)
        if key is not None:  # named by an entry of a chunk alone (not one now in a pack)
            loc = txn.get(key, db=self.index)
            dead = txn.get(key, db=self.gc)
            return loc == b"" or (dead is not None and len(dead) == _DEADLINE)
        pid = pack_of(name)
        assert pid is not None
        return any(table is not None and txn.get(pid, db=table) is not None
                   for table in (self.packs, self.pack_gc))

    def _remove_orphans(self, names: list[str], grace: float, now: float | None) -> int:
        with self.store.write(freeing=True) as txn:
            candidates = [n for n in names if not self._named(txn, n)]
            if not candidates:
                return 0
            cutoff = (self.clock() if now is None else now) - grace
            stats = self.pool.stat_many(candidates, window=self.window)
            old = [n for n, st in zip(candidates, stats, strict=True)
                   if st is not None and st.mtime <= cutoff]
            if not old:
                return 0
            self._fence()
            return self.pool.remove_many(old, window=self.window)

    def _fence(self) -> None:
        """Before removing, inside a write transaction, objects that no committed entry
        names (orphans) or whose entries this transaction drops (chunks alone past their
        grace): another process's write transaction that began before ours, and whose writer
        lock ran out under it, could be about to commit entries naming them (its packs,
        or a revival of a gc'd key). The fence makes such a commit fail."""
        if self.fence is not None:
            self.fence()

    # --- fsck ---------------------------------------------------------------------------

    def check(self) -> list[str]:
        """R2 (see ``layout.py``): every pack location of the index and gc lies inside its
        pack's recorded size; each pack record counts exactly the entries naming it and
        their bytes; every recorded pack's object exists and is at least that long, and no
        pack is both recorded and queued for removal. Streams the tables (memory: one
        counter per pack)."""
        problems: list[str] = []
        counted: dict[bytes, list[int]] = {}  # pid -> [count, live, end]
        for table, skip in ((self.index, 0), (self.gc, _DEADLINE)):
            for items in self.store.scan(table):
                for key, value in items:
                    try:
                        where = parse_location(bytes(value[skip:]))
                    except CorruptStore as exc:
                        problems.append(f"R2: chunk {key.hex()}: {exc}")
                        continue
                    if where is None:
                        continue
                    pid, off, length = where
                    c = counted.setdefault(pid, [0, 0, 0])
                    c[0] += 1
                    c[1] += length
                    c[2] = max(c[2], off + length)
        recorded: dict[bytes, tuple[int, int, int]] = {}
        if self.packs is not None:
            for items in self.store.scan(self.packs):
                for pid, value in items:
                    try:
                        recorded[bytes(pid)] = parse_pack_record(bytes(value))
                    except CorruptStore as exc:
                        problems.append(f"R2: pack {pack_name(pid)}: {exc}")
        queued: set[bytes] = set()
        if self.pack_gc is not None:
            for items in self.store.scan(self.pack_gc):
                queued.update(bytes(p) for p, _ in items)
        for pid, (count, live, end) in sorted(counted.items()):
            rec = recorded.get(pid)
            if rec is None:
                problems.append(f"R2: {count} chunk entries name pack {pack_name(pid)}, "
                                f"which has no record")
            elif rec[:2] != (count, live) or end > rec[2]:
                problems.append(f"R2: pack {pack_name(pid)} records count {rec[0]}, "
                                f"{rec[1]} bytes, size {rec[2]}; its entries: count {count}, "
                                f"{live} bytes, ending at {end}")
        for pid in sorted(set(recorded) - set(counted)):
            problems.append(f"R2: pack {pack_name(pid)} has a record but no entry names it")
        for pid in sorted(set(recorded) & queued):
            problems.append(f"R2: pack {pack_name(pid)} is recorded and queued for removal")
        names = sorted(recorded)
        for i in range(0, len(names), SWEEP_BATCH):
            part = names[i:i + SWEEP_BATCH]
            stats = self.pool.stat_many([pack_name(p) for p in part], window=self.window)
            for pid, st in zip(part, stats, strict=True):
                if st is None:
                    problems.append(f"R2: pack {self.pool.name}/{pack_name(pid)} is missing")
                elif st.size < recorded[pid][2] + _TAIL.size:
                    problems.append(f"R2: pack {self.pool.name}/{pack_name(pid)} is "
                                    f"{st.size} bytes, shorter than its chunks and trailer")
        return problems
