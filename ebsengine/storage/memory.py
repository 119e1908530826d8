"""An in-memory :class:`~.base.KvBackend` with real transaction semantics.

It keeps the contract of ``base.py`` the way LMDB does, so the whole engine runs on it
(``Engine("memory://")``), and tests of the layers above run without a disk:

* each table's committed content is an immutable version (a dict plus its sorted key
  list); a commit publishes new versions of the tables it changed (copy on write) and
  never touches the old ones, so a read transaction keeps the snapshot it began with;
* a write transaction collects its changes in an overlay per table (``_DELETED`` marks a
  delete); nothing is visible elsewhere until commit, and abort drops the overlay;
* a child transaction (``begin(write=True, parent=txn)``) is one more overlay on top of
  its parent's; its commit merges into the parent;
* one writer at a time (a lock taken by ``begin(write=True)``, released at commit/abort);
* cursors merge the overlays with the committed version in key order.

Nothing is durable: ``memory://`` lives as long as its backend object, ``memory://NAME``
until the process ends or :func:`forget` drops it. ``map_size`` bounds
what it may hold (keys + values + :data:`ENTRY_OVERHEAD` per entry), so "store full"
behaves as on LMDB.
"""

from __future__ import annotations

import itertools
import threading
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from ..errors import CorruptStore, StoreFull
from .base import DEFAULT_MAP_SIZE, MAX_KEY_SIZE, Buf, Table, Txn

ENTRY_OVERHEAD = 16

_DELETED: Any = object()
_ids = itertools.count(1)


class CommitHook(Protocol):
    """See :meth:`MemoryBackend.add_commit_hook`."""

    def before_commit(self) -> None: ...
    def end_write(self) -> None: ...


class MemoryError_(Exception):
    """Misuse of a memory transaction (closed, read-only, bad key, ...)."""


class BadValsize(MemoryError_):
    """A key that is empty or longer than :data:`MAX_KEY_SIZE` (LMDB: MDB_BAD_VALSIZE)."""


class MapFull(MemoryError_):
    """The backend's ``map_size`` is reached."""


class _Handle:
    """A table handle: a name, bound to one backend."""

    __slots__ = ("env_id", "name")

    def __init__(self, name: bytes | None, env_id: int) -> None:
        self.name = name
        self.env_id = env_id

    def __repr__(self) -> str:
        return f"<memory table {self.name!r}>"


class _Version:
    """Committed content of one table (never changed once published).

    Transactions read a committed version only through :meth:`get`, :meth:`seek`,
    :attr:`count` and :attr:`nbytes` (the :class:`Committed` shape), so another backend
    (:mod:`.rados_kv`: a copy-on-write B-tree) plugs in its own versions."""

    __slots__ = ("data", "keys", "nbytes")

    def __init__(self, data: dict[bytes, bytes], keys: list[bytes], nbytes: int) -> None:
        self.data = data
        self.keys = keys
        self.nbytes = nbytes

    @property
    def count(self) -> int:
        return len(self.data)

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def size_of(self, key: bytes) -> int | None:
        v = self.data.get(key)
        return None if v is None else len(v)

    def seek(self, key: bytes | None, *, forward: bool, strict: bool) -> bytes | None:
        return _seek_sorted(self.keys, key, forward=forward, strict=strict)


_EMPTY = _Version({}, [], 0)


class Committed(Protocol):
    """What a transaction reads of one table's committed content."""

    @property
    def count(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def get(self, key: bytes) -> bytes | None: ...
    def size_of(self, key: bytes) -> int | None:
        """``len(get(key))``, or None; cheaper where values are stored apart."""
        ...
    def seek(self, key: bytes | None, *, forward: bool, strict: bool) -> bytes | None:
        """The first key >= ``key`` (forward; > if strict; None: the first), or the last
        key <= ``key`` (backward; < if strict; None: the last); None when there is none."""
        ...


def _seek_sorted(keys: list[bytes], key: bytes | None, *, forward: bool,
                 strict: bool) -> bytes | None:
    if not keys:
        return None
    if forward:
        if key is None:
            return keys[0]
        i = bisect_right(keys, key) if strict else bisect_left(keys, key)
        return keys[i] if i < len(keys) else None
    if key is None:
        return keys[-1]
    i = (bisect_left(keys, key) if strict else bisect_right(keys, key)) - 1
    return keys[i] if i >= 0 else None


class _Overlay:
    """Uncommitted changes of one table in one transaction."""

    __slots__ = ("changes", "keys")

    def __init__(self) -> None:
        self.changes: dict[bytes, Any] = {}
        self.keys: list[bytes] = []

    def set(self, key: bytes, value: Any) -> None:
        if key not in self.changes:
            insort(self.keys, key)
        self.changes[key] = value


def _key(key: Buf) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"key must be bytes-like, not {type(key).__name__}")
    k = bytes(key)
    if not k or len(k) > MAX_KEY_SIZE:
        raise BadValsize(f"key of {len(k)} bytes: keys are 1-{MAX_KEY_SIZE} bytes")
    return k


class _State:
    """The committed content of one memory store and its locks (shared by every backend
    object opened on the same ``memory://NAME``)."""

    def __init__(self) -> None:
        self.id = next(_ids)
        self.tables: dict[bytes | None, _Version] = {None: _EMPTY}
        self.writer = threading.Lock()
        self.publish = threading.Lock()
        self.txnid = 0


_named: dict[str, _State] = {}
_named_lock = threading.Lock()


def forget(name: str) -> None:
    """Drop the named memory store ``memory://NAME`` (its content is gone)."""
    with _named_lock:
        _named.pop(name, None)


class MemoryBackend:
    """An in-memory environment of ordered tables (see the module docstring).

    ``name=None`` is a private store that lives as long as this object; a ``name`` opens
    the process-wide store ``memory://NAME``, which outlives its backends (it can be
    reopened, as a directory can) until :func:`forget`."""

    errors: tuple[type[BaseException], ...] = (MemoryError_,)

    def __init__(self, name: str | None = None, *, map_size: int = DEFAULT_MAP_SIZE,
                 readonly: bool = False) -> None:
        self.path = f"memory://{name or ''}"
        self.map_size = map_size
        self.readonly = readonly
        if name:
            with _named_lock:
                self._s = _named.setdefault(name, _State())
        else:
            self._s = _State()
        self._closed = False
        #: told before a write transaction's commit is published and when it ends (see
        #: :meth:`add_commit_hook`)
        self._commit_hooks: list[CommitHook] = []

    def add_commit_hook(self, hook: CommitHook) -> None:
        """Have ``hook`` told of every write transaction of this backend: its
        ``before_commit()`` runs before a commit is published (raising fails the commit: the
        transaction aborts), its ``end_write()`` once the transaction ended, committed or
        not. For what writes outside the tables on a transaction's behalf and must be
        durable before its commit (chunk objects: :mod:`.rados_chunks`)."""
        self._commit_hooks.append(hook)

    def _end_hooks(self) -> None:
        for hook in self._commit_hooks:
            hook.end_write()

    # --- the KvBackend protocol ---------------------------------------------------------------

    def open_db(self, key: bytes, create: bool = True) -> Table:
        self._live()
        name = _key(key)
        if self._snapshot()[None].get(name) is None:
            if not create or self.readonly:
                raise MemoryError_(f"table {name!r} does not exist")
            with self.begin(write=True) as txn:  # the main table names the tables, as LMDB's
                txn.put(name, b"")
        return _Handle(name, self._s.id)

    def begin(self, db: Table | None = None, parent: Txn | None = None, write: bool = False,
              buffers: bool = False) -> Txn:
        self._live()
        if parent is not None:
            if not isinstance(parent, MemoryTxn) or parent._env is not self:
                raise MemoryError_("parent is not a transaction of this backend")
            if not write or not parent.write:
                raise MemoryError_("only a write transaction can have a child")
            return MemoryTxn(self, write=True, parent=parent, default=db)
        if write:
            if self.readonly:
                raise MemoryError_("the backend is read-only")
            self._begin_write()
            try:
                return MemoryTxn(self, write=True, parent=None, default=db)
            except BaseException:
                self._end_write()
                raise
        return MemoryTxn(self, write=False, parent=None, default=db)

    def translate(self, exc: BaseException) -> Exception:
        if isinstance(exc, MapFull):
            return StoreFull("the store is full (memory map size reached); nothing was changed")
        return CorruptStore(f"memory backend error: {exc}")

    def used_bytes(self, txn: Txn, tables: Iterable[Table]) -> int:
        assert isinstance(txn, MemoryTxn)
        return sum(txn._nbytes(h.name) for h in tables if isinstance(h, _Handle)) \
            + txn._nbytes(None)

    def commit_id(self) -> int:
        return self._s.txnid

    def reclaim(self) -> None:
        """Nothing to do: freed memory is reusable at once."""

    def nearly_full(self) -> bool:
        return False

    def close(self) -> None:
        self._closed = True

    # --- internals --------------------------------------------------------------------------

    # --- what the transactions ask of their backend (another backend overrides these) --------

    def _snapshot(self) -> dict[bytes | None, Committed]:
        """The committed tables a new transaction starts from (a read snapshot)."""
        return self._s.tables  # type: ignore[return-value]

    def _begin_write(self) -> None:
        """Take the one-writer lock (``begin(write=True)``)."""
        self._s.writer.acquire()

    def _end_write(self) -> None:
        """Release what :meth:`_begin_write` took (after commit or abort)."""
        try:
            self._end_hooks()
        finally:
            self._s.writer.release()

    def _publish(self, base: dict[bytes | None, Committed],
                 over: dict[bytes | None, _Overlay]) -> None:
        """Make a root write transaction's changes the committed state (atomically)."""
        with self._s.publish:
            tables = dict(self._s.tables)
            for name, ov in over.items():
                old = tables.get(name, _EMPTY)
                assert isinstance(old, _Version)
                tables[name] = _apply(old, ov)
            self._s.tables = tables
            self._s.txnid += 1

    def _live(self) -> None:
        if self._closed:
            raise MemoryError_("the memory backend is closed")

    def _table_name(self, db: Table | None) -> bytes | None:
        if db is None:
            return None
        if not isinstance(db, _Handle) or db.env_id != self._s.id:
            raise MemoryError_(f"{db!r} is not a table of this backend")
        return db.name


class MemoryTxn:
    """A transaction of :class:`MemoryBackend` (py-lmdb's ``Transaction`` shape)."""

    def __init__(self, env: MemoryBackend, *, write: bool, parent: MemoryTxn | None,
                 default: Table | None) -> None:
        self._env = env
        self.write = write
        self._parent = parent
        self._base: dict[bytes | None, Committed] = parent._base if parent else env._snapshot()
        self._over: dict[bytes | None, _Overlay] = {}
        self._default = env._table_name(default)
        self._child: MemoryTxn | None = None
        self._done = False
        if parent is not None:
            parent._usable()
            parent._child = self

    # --- state ------------------------------------------------------------------------------

    def _usable(self) -> None:
        if self._done:
            raise MemoryError_("the transaction has ended")
        if self._child is not None:
            raise MemoryError_("the transaction has an open child transaction")
        self._env._live()

    def _name(self, db: Table | None) -> bytes | None:
        return self._default if db is None else self._env._table_name(db)

    def _layers(self, name: bytes | None) -> list[_Overlay]:
        out = []
        t: MemoryTxn | None = self
        while t is not None:
            ov = t._over.get(name)
            if ov is not None:
                out.append(ov)
            t = t._parent
        return out

    def _lookup(self, name: bytes | None, key: bytes) -> bytes | None:
        t: MemoryTxn | None = self
        while t is not None:
            ov = t._over.get(name)
            if ov is not None and key in ov.changes:
                v = ov.changes[key]
                return None if v is _DELETED else v
            t = t._parent
        return self._base.get(name, _EMPTY).get(key)

    def _present(self, name: bytes | None, key: bytes) -> bool:
        """``_lookup(name, key) is not None`` without reading a committed value (a RADOS
        tree would load an out-of-line one)."""
        t: MemoryTxn | None = self
        while t is not None:
            ov = t._over.get(name)
            if ov is not None and key in ov.changes:
                return ov.changes[key] is not _DELETED
            t = t._parent
        return self._base.get(name, _EMPTY).size_of(key) is not None

    def _seek(self, name: bytes | None, key: bytes | None, *, forward: bool,
              strict: bool) -> bytes | None:
        """The first live key after (forward) or before ``key`` (None: from the end)."""
        layers = [ov.keys for ov in self._layers(name)]
        base = self._base.get(name, _EMPTY)
        while True:
            best = base.seek(key, forward=forward, strict=strict)
            for keys in layers:
                k = _seek_sorted(keys, key, forward=forward, strict=strict)
                if k is not None and (best is None or (k < best if forward else k > best)):
                    best = k
            if best is None:
                return None
            if self._present(name, best):  # (not _lookup: a cursor's value is read lazily)
                return best
            key, strict = best, True

    def _nbytes(self, name: bytes | None) -> int:
        ver = self._base.get(name, _EMPTY)
        n = ver.nbytes
        merged: dict[bytes, Any] = {}
        for ov in reversed(self._layers(name)):
            merged.update(ov.changes)
        for k, v in merged.items():
            old = ver.size_of(k)  # a length, not the value (a RADOS blob would be loaded)
            if old is not None:
                n -= len(k) + old + ENTRY_OVERHEAD
            if v is not _DELETED:
                n += len(k) + len(v) + ENTRY_OVERHEAD
        return n

    # --- reads ------------------------------------------------------------------------------

    def get(self, key: Buf, default: Any = None, db: Table | None = None) -> Any:
        self._usable()
        k = bytes(key)
        if not k:
            raise BadValsize("empty key")
        v = self._lookup(self._name(db), k) if len(k) <= MAX_KEY_SIZE else None
        return default if v is None else v

    def prefetch(self, keys: Sequence[bytes], db: Table | None = None) -> None:
        """A hint: ``get`` of these keys follows. A committed table that can load their
        values in one batch (a RADOS tree's out-of-line values) does so now; keys this
        transaction changed are skipped."""
        self._usable()
        name = self._name(db)
        warm = getattr(self._base.get(name, _EMPTY), "warm", None)
        if warm is None:
            return
        layers = self._layers(name)
        warm([k for k in keys if not any(k in ov.changes for ov in layers)])

    def cursor(self, db: Table | None = None) -> MemoryCursor:
        self._usable()
        return MemoryCursor(self, self._name(db))

    def stat(self, db: Table | None = None) -> dict[str, int]:
        self._usable()
        name = self._name(db)
        ver = self._base.get(name, _EMPTY)
        n = ver.count
        merged: dict[bytes, Any] = {}
        for ov in reversed(self._layers(name)):
            merged.update(ov.changes)
        for k, v in merged.items():
            n += int(v is not _DELETED) - int(ver.get(k) is not None)
        return {"psize": 4096, "depth": 1 if n else 0, "branch_pages": 0, "leaf_pages": 0,
                "overflow_pages": 0, "entries": n}

    # --- writes -----------------------------------------------------------------------------

    def _writable(self) -> None:
        self._usable()
        if not self.write:
            raise MemoryError_("a read-only transaction cannot change anything")

    def put(self, key: Buf, value: Buf, dupdata: bool = True, overwrite: bool = True,
            append: bool = False, db: Table | None = None) -> bool:
        self._writable()
        name = self._name(db)
        k = _key(key)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"value must be bytes-like, not {type(value).__name__}")
        if not overwrite and self._lookup(name, k) is not None:
            return False
        ov = self._over.get(name)
        if ov is None:
            ov = self._over[name] = _Overlay()
        ov.set(k, bytes(value))
        return True

    def delete(self, key: Buf, value: Buf = b"", db: Table | None = None) -> bool:
        return self._delete_in(self._name(db), _key(key))

    def _delete_in(self, name: bytes | None, k: bytes) -> bool:
        self._writable()
        if not self._present(name, k):
            return False
        ov = self._over.get(name)
        if ov is None:
            ov = self._over[name] = _Overlay()
        ov.set(k, _DELETED)
        return True

    # --- end --------------------------------------------------------------------------------

    def _drop_base(self) -> None:
        """An ended transaction lets go of its snapshot (a backend may free what only
        old snapshots still see)."""
        self._base = {}
        self._over = {}

    def commit(self) -> None:
        self._usable()
        self._done = True
        if not self.write:
            self._drop_base()
            return
        if self._parent is not None:
            parent = self._parent
            parent._child = None
            for name, ov in self._over.items():
                pov = parent._over.get(name)
                if pov is None:
                    parent._over[name] = ov
                else:
                    for k in ov.keys:
                        pov.set(k, ov.changes[k])
            self._drop_base()
            return
        env = self._env
        try:
            for hook in env._commit_hooks:
                hook.before_commit()
            env._publish(self._base, self._over)
        finally:
            self._drop_base()
            env._end_write()

    def abort(self) -> None:
        if self._done:
            return
        if self._child is not None:
            self._child.abort()
        self._done = True
        self._drop_base()
        if self._parent is not None:
            self._parent._child = None
        elif self.write:
            self._env._end_write()

    def __del__(self) -> None:  # like LMDB: a forgotten transaction is aborted
        if not getattr(self, "_done", True):
            self.abort()

    def __enter__(self) -> MemoryTxn:
        return self

    def __exit__(self, *exc: object) -> None:
        if not exc or exc[0] is None:
            self.commit()
        else:
            self.abort()


def _apply(ver: _Version, ov: _Overlay) -> _Version:
    """A new version: ``ver`` with the overlay's changes (``ver`` stays as it was)."""
    data = dict(ver.data)
    nbytes = ver.nbytes
    added: list[bytes] = []
    removed = 0
    for k in ov.keys:
        v = ov.changes[k]
        old = data.get(k)
        if old is not None:
            nbytes -= len(k) + len(old) + ENTRY_OVERHEAD
        if v is _DELETED:
            if old is not None:
                del data[k]
                removed += 1
        else:
            data[k] = v
            nbytes += len(k) + len(v) + ENTRY_OVERHEAD
            if old is None:
                added.append(k)
    if not added and not removed:
        keys = ver.keys
    elif len(added) + removed > len(ver.keys) // 8:
        keys = sorted(data)
    else:
        keys = list(ver.keys)
        if removed:
            keys = [k for k in keys if k in data]
        for k in added:
            insort(keys, k)
    return _Version(data, keys, nbytes)


class MemoryCursor:
    """An ordered cursor over one table of a :class:`MemoryTxn` (py-lmdb's shape). It is
    positioned by key, so changes made through the transaction while it iterates are
    seen as LMDB shows them."""

    def __init__(self, txn: MemoryTxn, name: bytes | None) -> None:
        self._txn = txn
        self._name = name
        self._key: bytes | None = None
        self._moved = False  # a cursor never moved: next()/prev() go to the first/last item

    def _go(self, key: bytes | None) -> bool:
        self._key = key
        self._moved = True
        return key is not None

    def set_range(self, key: Buf) -> bool:
        self._txn._usable()
        k = bytes(key)
        if not k:
            return self.first()
        return self._go(self._txn._seek(self._name, k, forward=True, strict=False))

    def set_key(self, key: Buf) -> bool:
        self._txn._usable()
        k = _key(key)
        return self._go(k if self._txn._present(self._name, k) else None)

    def first(self) -> bool:
        self._txn._usable()
        return self._go(self._txn._seek(self._name, None, forward=True, strict=False))

    def last(self) -> bool:
        self._txn._usable()
        return self._go(self._txn._seek(self._name, None, forward=False, strict=False))

    def next(self) -> bool:
        if self._key is None:
            return False if self._moved else self.first()
        self._txn._usable()
        return self._go(self._txn._seek(self._name, self._key, forward=True, strict=True))

    def prev(self) -> bool:
        if self._key is None:
            return self.last()
        self._txn._usable()
        return self._go(self._txn._seek(self._name, self._key, forward=False, strict=True))

    def key(self) -> bytes:
        return self._key if self._key is not None else b""

    def value(self) -> bytes:
        if self._key is None:
            return b""
        self._txn._usable()
        v = self._txn._lookup(self._name, self._key)
        return v if v is not None else b""

    def item(self) -> tuple[bytes, bytes]:
        return self.key(), self.value()

    def delete(self) -> bool:
        if self._key is None:
            return False
        k = self._key
        if not self._txn._delete_in(self._name, k):
            return False
        self._go(self._txn._seek(self._name, k, forward=True, strict=True))
        return True

    def _iter(self, keys: bool, values: bool, forward: bool) -> Iterator[Any]:
        if self._key is None and not (self.first() if forward else self.last()):
            return
        while True:
            if keys and values:
                yield self.item()
            elif keys:
                yield self.key()
            else:
                yield self.value()
            step = self._txn._seek(self._name, self._key, forward=forward, strict=True)
            if not self._go(step):
                return

    def iternext(self, keys: bool = True, values: bool = True) -> Iterator[Any]:
        return self._iter(keys, values, True)

    def iterprev(self, keys: bool = True, values: bool = True) -> Iterator[Any]:
        return self._iter(keys, values, False)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self._iter(True, True, True)
