"""The LMDB environment: :class:`Store` owns it and hands out transactions.

Every durable change is one write transaction (see ``layout.py``); the chunk store and the
block maps run inside the caller's transaction.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Iterator
from typing import Callable, TypeVar

import lmdb

from .. import layout as L
from .envelope import DEFAULT_ZSTD_LEVEL
from ..errors import Closed, CorruptStore, FormatError, StoreFull, StoreLocked

DEFAULT_MAP_SIZE = 1 << 40  # 1 TiB of address space; the file grows only as data is written
GROUP_LINGER = 0.004  # seconds a group-commit leader waits for announced callers

T = TypeVar("T")


class Store:
    """One LMDB environment in directory ``path``, created if missing.

    Write transactions are serialised by a process-local lock (LMDB also serialises them
    across processes). ``sync=True`` makes every commit durable when it returns.
    """

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE,
                 readonly: bool = False, zstd_level: int = DEFAULT_ZSTD_LEVEL) -> None:
        self.path = os.fspath(path)
        if not readonly:
            os.makedirs(self.path, exist_ok=True)
        try:
            self.env = lmdb.open(self.path, map_size=map_size, max_dbs=len(L.DBS) + 2,
                                 subdir=True, readonly=readonly, sync=True, metasync=True,
                                 readahead=True, writemap=False, max_readers=1024, lock=True)
        except lmdb.Error as exc:
            raise CorruptStore(f"cannot open store at {self.path}: {exc}") from exc
        self.readonly = readonly
        self.closed = False
        self.map_size = map_size
        self.reserve = max(map_size // 32, 256 * 1024)
        self._psize = self.env.stat()["psize"]
        self.db = {}
        for name in L.DBS:
            try:
                self.db[name] = self.env.open_db(name.encode(), create=not readonly)
            except lmdb.Error as exc:  # a read-only open of an older format lacks new dbs
                self.env.close()
                raise FormatError(f"{self.path} lacks the '{name}' database of format "
                                  f"{L.FORMAT_VERSION}: open it read-write once to migrate "
                                  f"it ({exc})") from exc
        self.write_lock = threading.RLock()
        self._group_mutex = threading.Lock()
        self._group_queue: list[_Job] = []
        self._coming = 0
        self._init_meta(zstd_level)

    def _init_meta(self, zstd_level: int) -> None:
        with self.env.begin(db=self.db["meta"]) as txn:
            fmt = txn.get(b"format")
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
        if fmt.isdigit() and int(fmt) in L.MIGRATABLE_FORMATS and not self.readonly:
            # 1 -> 2: the new sub-databases were created empty above (see layout.py)
            with self.write() as txn:
                txn.put(b"format", str(L.FORMAT_VERSION).encode(), db=self.db["meta"])
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
    def write(self, *, freeing: bool = False) -> Iterator[lmdb.Transaction]:
        """A write transaction: commits (durably) on success, aborts on any exception.

        LMDB's "map full" and the disk's ENOSPC become :class:`StoreFull`; in both cases the
        transaction was aborted, so the store is exactly as before. The last ``reserve``
        bytes of the map are kept for transactions that free space (``freeing=True``:
        deletions): a full store can always be emptied again.
        """
        self._live()
        with self.write_lock:
            try:
                txn = self.env.begin(write=True)
            except lmdb.Error as exc:
                raise self._translate(exc) from exc
            try:
                yield txn
                if not freeing:
                    self._check_room(txn)
                txn.commit()
            except lmdb.Error as exc:
                txn.abort()
                err = self._translate(exc)
                if isinstance(err, StoreFull):
                    self._advance()
                raise err from exc
            except BaseException:
                txn.abort()
                raise

    def _check_room(self, txn: lmdb.Transaction) -> None:
        """Refuse (StoreFull) a transaction that would leave less than ``reserve`` free."""
        psize = self._psize
        used = 0  # pages in use after this transaction (freed pages are not counted)
        for name in L.DBS:
            st = txn.stat(self.db[name])
            used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        st = txn.stat()  # the main DB, which names the sub-databases
        used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        if used * psize > self.map_size - self.reserve:
            raise StoreFull(f"the store is full ({used * psize >> 20} MiB of "
                            f"{self.map_size >> 20} MiB in use; the rest is kept so that "
                            f"deletions can free space); nothing was changed")

    def _advance(self) -> None:
        """Commit two tiny transactions (best effort).

        LMDB hands pages freed by commit N to writers only from commit N+2 on, and a refused
        (aborted) transaction does not move that clock. After a "full" refusal, or after a
        delete when the map is nearly full, this makes freed space usable by the very next
        request instead of leaving every retry refused.
        """
        for _ in range(2):
            try:
                with self.env.begin(write=True) as txn:
                    # dirties a page and leaves the content as it was
                    txn.put(b"tick", b"", db=self.db["meta"])
                    txn.delete(b"tick", db=self.db["meta"])
            except lmdb.Error:
                return

    def after_free(self) -> None:
        """Call after a transaction that freed space (deletes): see :meth:`_advance`."""
        info = self.env.info()
        if (info["last_pgno"] + 1) * self.env.stat()["psize"] > 0.8 * info["map_size"]:
            with self.write_lock:
                self._advance()

    def group(self, fn: Callable[[lmdb.Transaction], T]) -> T:
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
                            except lmdb.Error as exc:
                                child.abort()
                                j.error = self._translate(exc)
                            except Exception as exc:
                                child.abort()
                                j.error = exc
                    committed = True
                except Exception as exc:
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

    def read(self) -> lmdb.Transaction:
        """A read-only snapshot transaction (use as a context manager)."""
        self._live()
        return self.env.begin(buffers=False)

    def _translate(self, exc: lmdb.Error) -> Exception:
        return _translate(exc, self.path)

    def _live(self) -> None:
        if self.closed:
            raise Closed(f"the store at {self.path} is closed")

    def next_lineage(self, txn: lmdb.Transaction) -> int:
        n = L.read_u64(txn.get(b"next_lineage", db=self.db["meta"]))
        txn.put(b"next_lineage", L.u64(n + 1), db=self.db["meta"])
        return n

    def close(self) -> None:
        self.closed = True
        self.env.close()


class _Job:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[lmdb.Transaction], object]) -> None:
        self.fn = fn
        self.done = False
        self.result: object = None
        self.error: BaseException | None = None


def _translate(exc: lmdb.Error, path: str | None = None) -> Exception:
    """One table from LMDB failures to ours. A commit that fails with EIO on a nearly full
    disk is a full disk (LMDB reports a short write as EIO), not a corrupt store."""
    if isinstance(exc, lmdb.MapFullError):
        return StoreFull("the store is full (LMDB map size reached); nothing was changed")
    if isinstance(exc, lmdb.DiskError) or getattr(exc, "errno", None) == errno.ENOSPC \
            or "No space left" in str(exc):
        return StoreFull(f"the disk holding the store is full; nothing was changed ({exc})")
    if path is not None and ("Input/output error" in str(exc)
                             or getattr(exc, "errno", None) == errno.EIO) and _disk_nearly_full(path):
        return StoreFull(f"the disk holding the store is full; nothing was changed ({exc})")
    return CorruptStore(f"LMDB error: {exc}")


def _disk_nearly_full(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bavail * st.f_frsize
    return free < max(64 * 1024 * 1024, st.f_blocks * st.f_frsize // 100)
