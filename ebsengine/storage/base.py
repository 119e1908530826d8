"""The storage seam: typed protocols every storage backend implements.

Code above ``storage/`` sees only these types. They keep py-lmdb's call shape, so the LMDB
backend hands out its own transactions and cursors unwrapped (no cost on the hot path) and
every other backend (:mod:`.memory` now, Ceph RADOS later) imitates that shape:

* :class:`KvBackend` — an environment of named, ordered tables (``open_db``) and its
  transactions (``begin``), plus what :class:`~.store.Store` needs to run it (error
  translation, space accounting, a commit counter);
* :class:`Txn` — one transaction: ``get``/``put``/``delete``/``cursor``/``stat``,
  ``commit``/``abort``, a context manager (commits on success, aborts on an exception);
* :class:`Cursor` — an ordered cursor over one table;
* :class:`ChunkBackend` — where chunk *bytes* live, with batch operations; see its
  docstring for the contract (ordering against the metadata commit) a backend must keep.

A key-value backend that keeps chunk bytes elsewhere (``rados://``: objects of a data pool)
has a method ``chunk_backend(store) -> ChunkBackend``, which the chunk store uses instead
of a table of the key-value backend.

The contract every backend must pass is ``tests/storage/test_backend_contract.py``.

Semantics a :class:`KvBackend` must keep (LMDB's, which the engine relies on):

* Keys are non-empty byte strings of at most :data:`MAX_KEY_SIZE` bytes; tables are
  ordered by unsigned byte order of their keys; values are byte strings of any length
  (a value is copied when put: the caller may reuse its buffer).
* A write transaction's changes are invisible to every other transaction until it
  commits; ``abort`` (or an exception in its ``with`` block) discards them all. One write
  transaction at a time (``begin(write=True)`` waits for the previous one to end).
* A read transaction sees one consistent snapshot, the last commit before it began, for
  its whole life, whatever writers commit meanwhile. (On LMDB a long-lived reader also
  keeps the pages that later commits free from being reused: keep readers short and
  iterate in batches — :meth:`.store.Store.scan`.)
* ``begin(write=True, parent=txn)`` starts a nested transaction: it sees ``txn``'s changes,
  its own commit merges into ``txn`` (durable only when ``txn`` commits), its abort undoes
  only itself. ``txn`` must not be used while the child is open.
* Cursors follow py-lmdb: a new cursor is unpositioned, its ``key()``/``value()`` are
  ``b""``, and its first ``next()`` moves to the first item (``prev()``: the last); a
  move that fails (``set_range`` past the end, ``next()`` at the last item) leaves it
  unpositioned with ``key() == b""`` and a further ``next()`` returns False (where a
  further ``prev()`` lands is unspecified); iterating a positioned cursor starts at its
  current item, iterating an unpositioned one at the first (``iterprev``: the last);
  ``delete()`` removes the current item and moves to the next one (unpositioned if none).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space; an LMDB file grows only as data is written
MAX_KEY_SIZE = 511  # LMDB's default maximum key size; every backend enforces the same

Buf = bytes | bytearray | memoryview


_T = TypeVar("_T")


class Table(Protocol):
    """Opaque handle of one named table (LMDB: a sub-database) of one backend."""


class Cursor(Protocol):
    """An ordered cursor over one table of a transaction (py-lmdb's ``Cursor`` shape)."""

    def set_range(self, key: Buf) -> bool: ...
    def set_key(self, key: Buf) -> bool: ...
    def first(self) -> bool: ...
    def last(self) -> bool: ...
    def next(self) -> bool: ...
    def prev(self) -> bool: ...
    def key(self) -> bytes: ...
    def value(self) -> bytes: ...
    def item(self) -> tuple[bytes, bytes]: ...
    def delete(self) -> bool: ...
    def iternext(self, keys: bool = True, values: bool = True) -> Iterator[Any]: ...
    def iterprev(self, keys: bool = True, values: bool = True) -> Iterator[Any]: ...
    def __iter__(self) -> Iterator[tuple[bytes, bytes]]: ...


class Txn(Protocol):
    """One transaction (py-lmdb's ``Transaction`` shape). ``db`` names the table; None is
    the transaction's default table."""

    def get(self, key: Buf, default: Any = None, db: Table | None = None) -> Any: ...
    def put(self, key: Buf, value: Buf, dupdata: bool = True, overwrite: bool = True,
            append: bool = False, db: Table | None = None) -> bool: ...
    def delete(self, key: Buf, value: Buf = b"", db: Table | None = None) -> bool: ...
    def cursor(self, db: Table | None = None) -> Cursor: ...
    def stat(self, db: Table | None = None) -> dict[str, int]: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self: _T) -> _T: ...
    def __exit__(self, *exc: object) -> Any: ...


class KvBackend(Protocol):
    """An environment of ordered tables with transactions (see the module docstring)."""

    #: where it lives, for messages (a directory, or ``memory://``)
    path: str
    #: the most it may hold, in bytes (``Store`` refuses commits that would pass it)
    map_size: int
    readonly: bool
    #: the exception types its transactions raise; :meth:`translate` maps them
    errors: tuple[type[BaseException], ...]

    def open_db(self, key: bytes, create: bool = True) -> Table: ...
    def begin(self, db: Table | None = None, parent: Txn | None = None, write: bool = False,
              buffers: bool = False) -> Txn: ...
    def translate(self, exc: BaseException) -> Exception:
        """The engine's error (StoreFull, CorruptStore, ...) for one of :attr:`errors`."""
        ...
    def used_bytes(self, txn: Txn, tables: Iterable[Table]) -> int:
        """Bytes in use as seen by write transaction ``txn`` (freed space not counted)."""
        ...
    def commit_id(self) -> int:
        """A number that changes with every commit (by any process): two equal readings
        mean no commit happened between them. It never runs ahead of what readers see: a
        transaction begun after a reading sees that commit or a newer one, so a reading
        before a read transaction and an equal one later prove it saw the newest state."""
        ...
    def reclaim(self) -> None:
        """Best effort: make space freed by recent commits usable by the next writer
        (LMDB needs two more commits; other backends do nothing). Caller holds the write
        lock."""
        ...
    def nearly_full(self) -> bool:
        """Whether the backend is close enough to full that :meth:`reclaim` after a
        freeing commit is worth it."""
        ...
    def close(self) -> None: ...


class ChunkBackend(Protocol):
    """Where the stored bytes of chunks live: an immutable, content-addressed key -> value
    space with batch operations. Keys are ``fingerprint[16] | collision_no u32`` (see
    ``layout.py``); a key is never rebound to different bytes while it exists.

    Every call takes ``txn``, the metadata transaction of the caller (the one that writes
    the block maps and reference counts referring to these chunks). The contract:

    1. **Puts before the metadata.** A chunk put in ``txn`` is readable by every
       transaction that can see ``txn``'s metadata commit: either it commits with ``txn``
       (LMDB, memory: same transaction, atomic) or it is durable before ``txn`` commits
       (RADOS: ``put_many`` starts the objects' writes, pipelined, and the metadata
       backend waits for them to be durable before it publishes ``txn``'s commit). A
       backend that cannot undo a put may leave unreferenced chunks behind when ``txn``
       aborts; ``iter_all`` shows them and a sweep (or fsck) finds them.
    2. **Deletes after the metadata.** ``delete_many`` in ``txn`` must not remove anything
       before ``txn`` commits (the commit drops the last reference), and nothing at all if
       ``txn`` aborts. A non-transactional backend queues the deletes on the transaction
       and runs them after its commit (a crash in between leaves orphans, never a map entry
       naming a missing chunk).
    3. **Read your writes.** Within ``txn`` (and its children), ``get_many``/``has_many``/
       ``collision_keys`` see its own puts and hide its own deletes; a put of a key deleted
       earlier in the same transaction cancels that delete.
    4. **Streaming iteration.** ``iter_all`` lists every stored chunk in key order, in
       batches of at most ``batch`` items, each batch read in a fresh, short read
       transaction (never one snapshot held for the whole walk). It is for fsck and sweeps;
       the caller detects concurrent commits itself (:meth:`KvBackend.commit_id`).
    5. **Ordered collision listing.** ``collision_keys(txn, fp)`` returns the stored keys
       whose first 16 bytes are ``fp``, ascending. A backend that keeps deleted chunks for a
       grace period (RADOS: :mod:`.rados_chunks`) also lists those still kept, although
       ``get_many``/``has_many`` hide them, so a collision number is not given to other
       bytes while an older reader may still read the chunk under it.
    """

    #: whether an aborted transaction's puts vanish (True: LMDB, memory)
    transactional_puts: bool

    def put_many(self, txn: Txn, items: Sequence[tuple[bytes, bytes]]) -> None: ...
    def get_many(self, txn: Txn, keys: Sequence[bytes]) -> list[bytes | None]: ...
    def has_many(self, txn: Txn, keys: Sequence[bytes]) -> list[bool]: ...
    def delete_many(self, txn: Txn, keys: Sequence[bytes]) -> None: ...
    def collision_keys(self, txn: Txn, fp: bytes) -> list[bytes]: ...
    def iter_all(self, batch: int = 256) -> Iterator[list[tuple[bytes, bytes]]]: ...
