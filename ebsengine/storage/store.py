"""The store: a :class:`~.base.KvBackend` run with the engine's commit discipline.

:class:`Store` owns one backend (LMDB by default, :mod:`.memory` for ``memory://``) and
hands out its transactions: every durable change is one write transaction (see
``layout.py``), refused with :class:`StoreFull` when it would leave less than ``reserve``
bytes free, and grouped with concurrent callers by :meth:`Store.group`. The chunk store and
the block maps run inside the caller's transaction.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from .. import layout as L
from ..errors import Closed, FormatError, StoreFull, StoreLocked
from .base import DEFAULT_MAP_SIZE, KvBackend, Table, Txn
from .envelope import DEFAULT_ZSTD_LEVEL
from .migrate import STEPS, migrate, readable_as_is

GROUP_LINGER = 0.004  # seconds a group-commit leader waits for announced callers
MEMORY_URL = "memory://"
RADOS_URL = "rados://"
SCAN_BATCH = 1024  # items per read transaction in :meth:`Store.scan`

T = TypeVar("T")


def local_dir(path: str | os.PathLike[str]) -> str | None:
    """The local directory of a store: where its owner lock, control socket and NBD socket
    live. An LMDB store's own directory; for ``rados://`` stores (see
    :mod:`.rados_io`) the URL's ``workdir`` or one derived from the pools and the cluster
    conf under ``~/.cache/ebsengine/rados/`` (it holds no data: a lost one loses nothing);
    None for in-memory stores."""
    p = os.fspath(path)
    if p.startswith(MEMORY_URL):
        return None
    if p.startswith(RADOS_URL):
        from .rados_io import workdir
        return workdir(p)
    return os.path.abspath(p)


def open_backend(path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE,
                 readonly: bool = False, fix_permissions: bool = False) -> KvBackend:
    """The backend for ``path``: ``memory://`` is a fresh in-memory store, ``memory://NAME``
    the process-wide in-memory store NAME (reopenable), ``rados://PREFIX?...`` a store on
    a Ceph cluster (:mod:`.rados_kv`, :mod:`.rados_io`), anything else an LMDB directory
    (its owner's alone: refused with InsecureStore if its modes are looser than 0700/0600,
    unless ``fix_permissions`` tightens them)."""
    p = os.fspath(path)
    if p.startswith(MEMORY_URL):
        from .memory import MemoryBackend
        return MemoryBackend(p[len(MEMORY_URL):] or None, map_size=map_size,
                             readonly=readonly)
    if p.startswith(RADOS_URL):
        from .rados_kv import open_rados
        return open_rados(p, map_size=map_size, readonly=readonly)
    from .lmdb_env import LmdbBackend
    return LmdbBackend(path, map_size=map_size, readonly=readonly,
                       fix_permissions=fix_permissions)


class Store:
    """The engine's store over one backend: ``path`` (an LMDB directory, created if
    missing, or ``memory://``), or an opened ``backend``.

    Write transactions are serialised by a process-local lock (LMDB also serialises them
    across processes). Every commit is durable when it returns (on LMDB; the memory
    backend is not durable at all).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False,
                 zstd_level: int = DEFAULT_ZSTD_LEVEL,
                 backend: KvBackend | None = None, fix_permissions: bool = False,
                 copying: bool = False) -> None:
        opened = backend is None
        #: this is the store copy filling the store: its marker does not refuse the open
        self._copying = copying
        if backend is None:
            if path is None:
                raise ValueError("Store needs a path or a backend")
            backend = open_backend(path, map_size=map_size, readonly=readonly,
                                   fix_permissions=fix_permissions)
        self.backend = backend
        #: the backend under its py-lmdb name: ``env.begin(...)`` as on an LMDB Environment
        self.env = backend
        self.path = backend.path
        self.readonly = backend.readonly
        self.closed = False
        self.map_size = backend.map_size
        self.reserve = max(self.map_size // 32, 256 * 1024)
        self.write_lock = threading.RLock()
        self._group_mutex = threading.Lock()
        self._group_queue: list[_Job] = []
        self._coming = 0
        self.db: dict[str, Table] = {}
        try:
            for name in L.DBS:
                try:
                    self.db[name] = backend.open_db(name.encode(), create=not self.readonly)
                except backend.errors:
                    if name == "meta" or not self.readonly:
                        raise
                    # read-only and an older format lacking this table: _init_meta refuses it
            self._init_meta(zstd_level)
        except BaseException:
            if opened:  # refused: the backend (and its hold on the owner lock) goes too
                backend.close()
            raise

    def _init_meta(self, zstd_level: int) -> None:
        with self.env.begin(db=self.db["meta"]) as txn:
            fmt = txn.get(b"format")
            marker = txn.get(L.COPY_MARKER)
        if marker is not None and not self._copying:
            raise FormatError(f"{self.path} holds an unfinished copy from "
                              f"{copy_source(marker)}: delete it and copy again")
        if fmt is None:
            if self.readonly:
                raise FormatError(f"{self.path} is not an ebsengine store")
            with self.env.begin() as txn:
                used = [n for n in L.DBS if n != "meta" and txn.stat(self.db[n])["entries"]]
            if used:  # data without a format record: never re-initialise over it
                raise FormatError(f"{self.path} holds data ({', '.join(used)}) but no format "
                                  f"record; refusing to open it")
            with self.write() as txn:
                txn.put(b"format", str(L.FORMAT_VERSION).encode(), db=self.db["meta"])
                txn.put(b"chunk_size", str(L.CHUNK_SIZE).encode(), db=self.db["meta"])
                txn.put(b"zstd_level", str(zstd_level).encode(), db=self.db["meta"])
                txn.put(b"next_lineage", L.u64(1), db=self.db["meta"])
            fmt = str(L.FORMAT_VERSION).encode()
        if fmt.isdigit() and self.readonly and readable_as_is(int(fmt)):
            fmt = str(L.FORMAT_VERSION).encode()  # nothing to change: readable as it is
        if fmt.isdigit() and int(fmt) in STEPS:  # an older format: migrate (one commit)
            if self.readonly:
                raise FormatError(f"store format {int(fmt)} must be migrated to format "
                                  f"{L.FORMAT_VERSION}: open it read-write once")
            with self.write() as txn:
                migrate(txn, self.db, int(fmt))
            fmt = str(L.FORMAT_VERSION).encode()
        if not fmt.isdigit() or int(fmt) != L.FORMAT_VERSION:
            raise FormatError(f"store format {fmt!r} is not supported "
                              f"(this ebsengine reads format {L.FORMAT_VERSION})")
        with self.env.begin(db=self.db["meta"]) as txn:
            cs = txn.get(b"chunk_size", b"")
            level = txn.get(b"zstd_level", str(DEFAULT_ZSTD_LEVEL).encode())
        if not cs.isdigit() or int(cs) != L.CHUNK_SIZE:
            raise FormatError(f"store chunk size {cs!r} differs from {L.CHUNK_SIZE}")
        self.zstd_level = int(level) if level.lstrip(b"-").isdigit() else DEFAULT_ZSTD_LEVEL

    @contextlib.contextmanager
    def write(self, *, freeing: bool = False) -> Iterator[Txn]:
        """A write transaction: commits (durably) on success, aborts on any exception.

        LMDB's "map full" and the disk's ENOSPC become :class:`StoreFull`; in both cases the
        transaction was aborted, so the store is exactly as before. The last ``reserve``
        bytes of the map are kept for transactions that free space (``freeing=True``:
        deletions): a full store can always be emptied again.
        """
        self._live()
        with self.write_lock:
            errors = self.backend.errors
            try:
                txn = self.env.begin(write=True)
            except errors as exc:
                raise self._translate(exc) from exc
            try:
                yield txn
                if not freeing:
                    self._check_room(txn)
                txn.commit()
            except errors as exc:
                txn.abort()
                err = self._translate(exc)
                if isinstance(err, StoreFull):
                    self.backend.reclaim()
                raise err from exc
            except BaseException:
                txn.abort()
                raise

    def _check_room(self, txn: Txn) -> None:
        """Refuse (StoreFull) a transaction that would leave less than ``reserve`` free."""
        used = self.backend.used_bytes(txn, self.db.values())
        if used > self.map_size - self.reserve:
            raise StoreFull(f"the store is full ({used >> 20} MiB of "
                            f"{self.map_size >> 20} MiB in use; the rest is kept so that "
                            f"deletions can free space); nothing was changed")

    def after_free(self) -> None:
        """Call after a transaction that freed space (deletes): on LMDB, makes the freed
        pages reusable by the next writer when the map is nearly full."""
        if self.backend.nearly_full():
            with self.write_lock:
                self.backend.reclaim()

    def group(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn(txn)`` in a write transaction shared with concurrent callers.

        Group commit: callers queue their work; whoever takes the write lock first applies
        every queued job, each in its own nested transaction (so one job's error undoes only
        that job), and commits them all with one synced commit. Returns ``fn``'s result once
        the commit holding it is durable, or raises its error (or the commit's).
        """
        job = _Job(fn)
        with self._group_mutex:
            self._group_queue.append(job)
        with self.write_lock:
            if not job.done:
                # Callers still preparing (see :meth:`coming`) will queue within moments:
                # waiting briefly for them turns several fsyncs into one.
                deadline = time.monotonic() + GROUP_LINGER
                while len(self._group_queue) < self._coming and time.monotonic() < deadline:
                    time.sleep(0.0002)
                with self._group_mutex:
                    batch, self._group_queue = self._group_queue, []
                committed = False
                try:
                    with self.write() as txn:
                        for j in batch:
                            child = self.env.begin(write=True, parent=txn)
                            try:
                                j.result = j.fn(child)
                                child.commit()
                            except self.backend.errors as exc:
                                child.abort()
                                j.error = self._translate(exc)
                            except Exception as exc:  # noqa: BLE001 - handed to its caller
                                child.abort()
                                j.error = exc
                    committed = True
                except Exception as exc:  # noqa: BLE001 - handed to every caller
                    for j in batch:
                        if j.error is None:
                            j.error, j.result = exc, None
                finally:
                    for j in batch:
                        if not committed and j.error is None:  # e.g. KeyboardInterrupt
                            j.error = StoreLocked("the shared commit was interrupted; "
                                                     "nothing of this request was stored")
                            j.result = None
                        j.done = True
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Announce a :meth:`group` call being prepared (lets the leader wait for it)."""
        with self._group_mutex:
            self._coming += 1
        try:
            yield
        finally:
            with self._group_mutex:
                self._coming -= 1

    def read(self) -> Txn:
        """A read-only snapshot transaction (use as a context manager). Keep it short: on
        LMDB a live reader stops the pages freed after it began from being reused."""
        self._live()
        return self.env.begin(buffers=False)

    def commit_id(self) -> int:
        """Changes with every commit (by any process): see :meth:`KvBackend.commit_id`."""
        self._live()
        return self.backend.commit_id()

    def scan(self, table: Table, *, start: bytes = b"", batch: int = SCAN_BATCH
             ) -> Iterator[list[tuple[bytes, bytes]]]:
        """Every ``(key, value)`` of ``table`` from ``start`` on, in key order, as lists of
        at most ``batch`` items, each read in its own short read transaction (none is open
        while the caller handles a batch).

        Batches may come from different commits; a caller that needs one point in time
        compares :meth:`commit_id` before and after (see ``check.py``).
        """
        after: bytes | None = None
        while True:
            self._live()
            items: list[tuple[bytes, bytes]] = []
            with self.env.begin(buffers=False) as txn:
                cur = txn.cursor(db=table)
                found = cur.set_range(after if after is not None else start) if \
                    (after is not None or start) else cur.first()
                if found and after is not None and cur.key() == after:
                    found = cur.next()
                while found and len(items) < batch:
                    items.append(cur.item())
                    found = cur.next()
            if not items:
                return
            yield items
            if not found:
                return
            after = items[-1][0]

    def _translate(self, exc: BaseException) -> Exception:
        return self.backend.translate(exc)

    def _live(self) -> None:
        if self.closed:
            raise Closed(f"the store at {self.path} is closed")

    def next_lineage(self, txn: Txn) -> int:
        n = L.read_u64(txn.get(b"next_lineage", db=self.db["meta"]))
        txn.put(b"next_lineage", L.u64(n + 1), db=self.db["meta"])
        return n

    def close(self) -> None:
        self.closed = True
        self.env.close()


def copy_source(marker: bytes) -> str:
    """Where the unfinished copy that left ``marker`` (``meta[COPY_MARKER]``) came from."""
    try:
        info = json.loads(marker)
        src = info["from"]
    except (ValueError, TypeError, KeyError):
        return "an unknown store"
    since = info.get("since")
    when = (time.strftime(" (begun %Y-%m-%d %H:%M:%S UTC)", time.gmtime(since))
            if isinstance(since, (int, float)) else "")
    return f"{src!r}{when}"


class _Job:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[Txn], object]) -> None:
        self.fn = fn
        self.done = False
        self.result: object = None
        self.error: BaseException | None = None
