"""Chunks as RADOS objects: a :class:`~.base.ChunkBackend` over a Ceph data pool.

Each chunk is one object, ``c.<hex key>``, in the data pool of a
:class:`~.rados_io.RadosConnection`. What exists is decided by the metadata, not by the
pool: two tables of the caller's key-value backend (the one holding the block maps and
reference counts) say it.

* the **index** (chunk key -> ``b""``): every chunk whose object may be read. ``has_many``,
  ``collision_keys`` and ``iter_all`` are answered from it (ordered, batched, in the caller's
  transaction), so a chunk exists exactly when the metadata commit that made it exists;
* the **gc** table (chunk key -> deadline, u64 milliseconds since the epoch): chunks deleted
  by a committed transaction whose objects are kept until the deadline.

How the contract of :class:`~.base.ChunkBackend` is kept:

1. ``put_many`` starts the objects' writes (``window`` in flight, write-behind: it returns
   without waiting unless the window is full) and adds their index entries to ``txn``; the
   metadata backend calls :meth:`RadosChunks.before_commit` before it publishes ``txn``'s
   commit, which waits until every object is durable (and fails the commit if one is not),
   so the objects exist before any commit can refer to them. If ``txn`` aborts (or the
   process dies first) the objects stay without an index entry: orphans, which
   :meth:`RadosChunks.sweep_orphans` removes once they are older than a grace period. A put
   of a key waiting in gc revives it (drops its gc entry).
2. ``delete_many`` removes nothing: it moves the key from the index to gc in ``txn``, with a
   deadline ``grace`` seconds on (default 60). :meth:`RadosChunks.sweep` removes the objects
   of passed deadlines later. Queued deletes with a grace period rather than mark-and-sweep:
   a delete costs one metadata entry, the sweep touches only what was deleted (no walk of
   every reference), and a reader that began before the delete committed (a read
   transaction, an export, another front end) can still read the object during the grace.
3. Read your writes: the index entries are in ``txn``, so its own puts show and its own
   deletes hide, in every call.
4. ``iter_all`` walks the index in batches (each in a fresh read transaction) and reads each
   batch's objects in parallel.
5. ``collision_keys`` lists index *and* gc keys with the fingerprint: a collision number is
   not given to different bytes while an old reader may still read the object under it
   (ChunkStore never finds a gc'd key equal to new data, since ``get_many`` hides it, so it
   takes the next number).

Sweeps run in a write transaction of the metadata store and remove objects before it
commits: the backend's one-writer-at-a-time rule keeps every ``put_many`` (which also runs
in a write transaction) out meanwhile, so a sweep never removes an object that a concurrent
transaction just wrote. If the sweep's commit fails, its entries stay and the next sweep
removes again (a missing object is fine).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from .. import layout as L
from ..errors import CorruptStore
from .base import Table, Txn
from .rados_io import DEFAULT_WINDOW, RadosConnection, Writer
from .store import Store

OBJECT_PREFIX = "c."
DEFAULT_GRACE = 60.0  # seconds a deleted chunk's object is kept
SWEEP_BATCH = 1024
#: chunk writes in flight behind a write transaction (write-behind, see put_many): on a
#: one-OSD BlueStore cluster here, 64 imported 512 MiB in 10-30% less time than 16
WRITE_WINDOW = 32


def object_name(key: bytes) -> str:
    return OBJECT_PREFIX + key.hex()


def key_of(name: str) -> bytes | None:
    """The chunk key an object name stands for (None: not a chunk object's name)."""
    if not name.startswith(OBJECT_PREFIX):
        return None
    try:
        key = bytes.fromhex(name[len(OBJECT_PREFIX):])
    except ValueError:
        return None
    return key if len(key) == L.KEY_SIZE else None


def _ms(t: float) -> bytes:
    return L.u64(max(0, int(t * 1000)))


class RadosChunks:
    """:class:`~.base.ChunkBackend` over the data pool of ``conn`` and the ``index`` and
    ``gc`` tables of ``store`` (see the module docstring). ``clock`` gives seconds since the
    epoch (tests pass their own)."""

    transactional_puts = False

    def __init__(self, conn: RadosConnection, store: Store, index: Table, gc: Table, *,
                 grace: float = DEFAULT_GRACE, window: int = DEFAULT_WINDOW,
                 write_window: int = WRITE_WINDOW, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.pool = conn.data
        self.store = store
        self.index = index
        self.gc = gc
        self.grace = grace
        self.window = window
        self.write_window = write_window
        self.clock = clock
        self._writer: Writer | None = None  # the current write transaction's object writes
        self._unwritten: dict[str, bytes] = {}  # object name -> value, until written
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
        writer = self._writer
        if writer is None:
            writer = self._writer = self.pool.writer(self.write_window, self._written)
        index, gc = self.index, self.gc
        for key, value in items:
            name = object_name(key)
            with self._mu:
                self._unwritten[name] = value
            writer.put(name, value)
            txn.put(key, b"", db=index)
            txn.delete(key, db=gc)  # a key waiting out its grace is revived
        if not self.write_behind:  # a backend without commit hooks: durable before return
            self._writer = None
            writer.wait()

    # Write-behind: a put starts its object's write and returns; the writes of a write
    # transaction are waited for in before_commit, which the metadata backend calls before
    # it publishes the commit (so every object is durable before an index entry naming it
    # commits: contract 1), and in end_write, after a commit or an abort. Until its write
    # is acknowledged, a value is also kept here, so that the transaction reads its own
    # puts without waiting for them. The backend has one writer at a time (per process
    # and, through its writer lock, per store).

    def _written(self, name: str) -> None:
        with self._mu:
            self._unwritten.pop(name, None)

    def before_commit(self) -> None:
        """Wait until every object put in the current write transaction is durable;
        raises (and the commit fails) if one could not be written."""
        writer = self._writer
        if writer is not None:
            writer.wait()

    def end_write(self) -> None:
        """The write transaction ended (committed or aborted): wait for its writes (an
        aborted one's objects are orphans for :meth:`sweep_orphans`) and forget them."""
        writer, self._writer = self._writer, None
        try:
            if writer is not None:  # a failure was raised to the commit by before_commit,
                writer.settle()  # or the transaction aborted and nothing refers to the objects
        finally:
            with self._mu:
                self._unwritten.clear()

    def get_many(self, txn: Txn, keys: Sequence[bytes]) -> list[bytes | None]:
        present = self.has_many(txn, keys)
        wanted: list[str] = []
        held: dict[str, bytes] = {}
        with self._mu:
            unwritten = self._unwritten
            for k, p in zip(keys, present, strict=True):
                if p:
                    name = object_name(k)
                    value = unwritten.get(name) if unwritten else None
                    if value is None:
                        wanted.append(name)
                    else:
                        held[name] = value
        read = iter(self.pool.read_many(wanted, window=self.window))
        out: list[bytes | None] = []
        for key, p in zip(keys, present, strict=True):
            if not p:
                out.append(None)
                continue
            value = held.get(object_name(key)) if held else None
            if value is None:
                value = next(read)
            if value is None:
                raise CorruptStore(f"chunk {key.hex()} is indexed but its object "
                                   f"{self.pool.name}/{object_name(key)} is missing")
            out.append(value)
        return out

    def has_many(self, txn: Txn, keys: Sequence[bytes]) -> list[bool]:
        cur = txn.cursor(db=self.index)
        return [cur.set_key(k) for k in keys]

    def delete_many(self, txn: Txn, keys: Sequence[bytes]) -> None:
        if not keys:
            return
        deadline = _ms(self.clock() + self.grace)
        index, gc = self.index, self.gc
        for key in keys:
            if txn.delete(key, db=index):
                txn.put(key, deadline, db=gc)

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
            keys = [k for k, _ in items]
            values = self.pool.read_many([object_name(k) for k in keys], window=self.window)
            out: list[tuple[bytes, bytes]] = []
            for key, value in zip(keys, values, strict=True):
                if value is None:
                    if self._still_indexed(key):
                        raise CorruptStore(f"chunk {key.hex()} is indexed but its object "
                                           f"{self.pool.name}/{object_name(key)} is missing")
                    continue  # deleted (and swept) since the batch was listed
                out.append((key, value))
            if out:
                yield out

    def _still_indexed(self, key: bytes) -> bool:
        with self.store.read() as txn:
            return txn.get(key, db=self.index) is not None

    # --- removing objects ---------------------------------------------------------------

    def pending(self, txn: Txn) -> int:
        """Chunks deleted and waiting for their deadline (as ``txn`` sees them)."""
        return int(txn.stat(self.gc)["entries"])

    def sweep(self, now: float | None = None, *, limit: int = SWEEP_BATCH) -> int:
        """Remove the objects of up to ``limit`` deleted chunks whose grace ended by ``now``
        (default: the clock), and their gc entries, in one write transaction; returns how
        many. Call repeatedly (until it returns 0) to drain a long queue."""
        with self.store.write(freeing=True) as txn:
            return self.sweep_in(txn, now, limit=limit)

    def sweep_in(self, txn: Txn, now: float | None = None, *, limit: int = SWEEP_BATCH) -> int:
        """:meth:`sweep` inside the caller's write transaction (which must commit for the
        entries to go; the objects are removed at once, see the module docstring)."""
        cutoff = L.read_u64(_ms(self.clock() if now is None else now))
        due: list[bytes] = []
        for key, deadline in txn.cursor(db=self.gc):
            if L.read_u64(deadline) <= cutoff:
                due.append(key)
                if len(due) >= limit:
                    break
        if not due:
            return 0
        self.pool.remove_many([object_name(k) for k in due], window=self.window)
        for key in due:
            txn.delete(key, db=self.gc)
        return len(due)

    def sweep_orphans(self, grace: float | None = None, *, now: float | None = None,
                      batch: int = SWEEP_BATCH) -> int:
        """Remove the data pool's chunk objects that no index or gc entry names and that are
        older than ``grace`` seconds (default: this backend's grace) — what a transaction
        that aborted or died after writing its objects left behind. Streams the pool's
        listing; each batch is checked and removed inside one write transaction, so no
        put can be between writing an object and indexing it meanwhile. Returns how many
        it removed."""
        grace = self.grace if grace is None else grace
        removed = 0
        names: list[str] = []
        for name in self.pool.list_objects(OBJECT_PREFIX):
            if key_of(name) is not None:
                names.append(name)
            if len(names) >= batch:
                removed += self._remove_orphans(names, grace, now)
                names = []
        if names:
            removed += self._remove_orphans(names, grace, now)
        return removed

    def _remove_orphans(self, names: list[str], grace: float, now: float | None) -> int:
        with self.store.write(freeing=True) as txn:
            candidates = []
            for name in names:
                key = key_of(name)
                assert key is not None
                if txn.get(key, db=self.index) is None and txn.get(key, db=self.gc) is None:
                    candidates.append(name)
            if not candidates:
                return 0
            cutoff = (self.clock() if now is None else now) - grace
            stats = self.pool.stat_many(candidates, window=self.window)
            old = [n for n, st in zip(candidates, stats, strict=True)
                   if st is not None and st.mtime <= cutoff]
            return self.pool.remove_many(old, window=self.window)
