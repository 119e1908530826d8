"""The LMDB backend of :class:`~.store.Store`: the only module that imports ``lmdb``.

:class:`LmdbBackend` opens one LMDB environment in a directory and hands out py-lmdb's own
transactions and cursors, which already have the call shape of :mod:`.base` (no wrapper on
the hot path). What is LMDB-specific lives here: opening flags, the translation of LMDB
failures into the engine's errors, page-based space accounting and the two-commit page
reuse clock (:meth:`LmdbBackend.reclaim`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import Any

import lmdb

from .. import layout as L
from ..errors import CorruptStore, InsecureStore, StoreFull
from .base import DEFAULT_MAP_SIZE, Table, Txn
from .owner import StoreLock


class LmdbBackend:
    """One LMDB environment in directory ``path`` (created if missing unless ``readonly``)."""

    errors: tuple[type[BaseException], ...] = (lmdb.Error,)

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE,
                 readonly: bool = False, fix_permissions: bool = False) -> None:
        self.path = os.fspath(path)
        if not readonly:
            make_private_dir(self.path)
        check_permissions(self.path, fix=fix_permissions)
        #: this engine's hold on the store's owner lock (see :mod:`.owner`): a read-write
        #: store is refused (StoreOwned) while another process owns it; read-only takes none
        self.owner: StoreLock | None = None if readonly else StoreLock.attach(self.path)
        try:
            # room beyond the store's own tables for a chunk backend's (RadosChunks keeps
            # four: index, gc, packs, pack gc) over an LMDB metadata store
            self.env = lmdb.open(self.path, map_size=map_size, max_dbs=len(L.DBS) + 4,
                                 subdir=True, readonly=readonly, sync=True, metasync=True,
                                 readahead=True, writemap=False, max_readers=1024, lock=True,
                                 mode=FILE_MODE)  # LMDB makes its files this & ~umask
        except lmdb.Error as exc:
            self._release()
            raise CorruptStore(f"cannot open store at {self.path}: {exc}") from exc
        except BaseException:
            self._release()
            raise
        self.map_size = map_size
        self.readonly = readonly
        self._psize = self.env.stat()["psize"]

    def open_db(self, key: bytes, create: bool = True) -> Table:
        env: Any = self.env
        return env.open_db(key, create=create)  # type: ignore[no-any-return]

    def begin(self, db: Table | None = None, parent: Txn | None = None, write: bool = False,
              buffers: bool = False) -> Txn:
        env: Any = self.env  # py-lmdb's Transaction has the shape of Txn
        return env.begin(db=db, parent=parent, write=write,  # type: ignore[no-any-return]
                         buffers=buffers)

    def translate(self, exc: BaseException) -> Exception:
        return _translate(exc, self.path)

    def used_bytes(self, txn: Txn, tables: Iterable[Table]) -> int:
        used = 0  # pages in use after this transaction (freed pages are not counted)
        for h in tables:
            st = txn.stat(h)
            used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        st = txn.stat()  # the main DB, which names the sub-databases
        used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return used * self._psize

    def commit_id(self) -> int:
        # The id of the snapshot a reader begun now gets, not ``env.info()["last_txnid"]``: a
        # commit writes its meta page (which env.info() reads) before it publishes the txnid
        # new readers take, so in between env.info() is one ahead of what a transaction
        # begun after it sees (a reviewer's count: a third of all readings under a busy
        # writer), and "no commit since" would hold for a reader of the older state.
        with self.env.begin() as txn:
            return int(txn.id())

    def reclaim(self) -> None:
        """Commit two tiny transactions (best effort).

        LMDB hands pages freed by commit N to writers only from commit N+2 on, and a refused
        (aborted) transaction does not move that clock. After a "full" refusal, or after a
        delete when the map is nearly full, this makes freed space usable by the very next
        request instead of leaving every retry refused.
        """
        meta = self.env.open_db(b"meta", create=False)
        for _ in range(2):
            try:
                with self.env.begin(write=True) as txn:
                    # dirties a page and leaves the content as it was
                    txn.put(b"tick", b"", db=meta)
                    txn.delete(b"tick", db=meta)
            except lmdb.Error:
                return

    def nearly_full(self) -> bool:
        info = self.env.info()
        return bool((info["last_pgno"] + 1) * self._psize > 0.8 * info["map_size"])

    def own(self, wait: float = 0.0) -> None:
        """Make this process the store's owner (see :mod:`.owner`); StoreOwned naming the
        process that keeps it from that. Read-only: nothing to own."""
        if self.owner is not None:
            self.owner.own(wait)

    def _release(self) -> None:
        if self.owner is not None:
            self.owner.release()

    def close(self) -> None:
        try:
            self.env.close()
        finally:
            self._release()


DIR_MODE = 0o700  # the store directory: its owner's alone
FILE_MODE = 0o600  # every file in it (data.mdb, lock.mdb, the NBD socket)
_LOOSE = 0o077  # group or other bits: refused


def make_private_dir(path: str) -> None:
    """Create the store directory ``path`` mode 0700 whatever the umask (parents as
    ``makedirs`` makes them). A directory that exists but holds no store yet (no
    ``data.mdb``: e.g. made by ``mkdir`` or a test's tmp dir) is a new store: tightened to
    0700 as ``initdb`` does, rather than refused."""
    if os.path.isdir(path):
        if not os.path.lexists(os.path.join(path, "data.mdb")):
            os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~_LOOSE | DIR_MODE)
        return
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    os.chmod(path, DIR_MODE)


def check_permissions(path: str, *, fix: bool = False) -> None:
    """Refuse (:class:`InsecureStore`) a store directory whose mode or whose files' modes
    give its group or others any access; ``fix`` tightens them instead (clears the group
    and other bits). A missing directory is left to LMDB's own error."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    loose: list[tuple[str, int]] = []
    if stat.S_IMODE(st.st_mode) & _LOOSE:
        loose.append((path, stat.S_IMODE(st.st_mode)))
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_symlink():
                    continue  # its mode means nothing; the target is checked where it lives
                mode = stat.S_IMODE(entry.stat().st_mode)
                if mode & _LOOSE:
                    loose.append((entry.path, mode))
    if not loose:
        return
    if fix:
        for p, mode in loose:
            os.chmod(p, mode & ~_LOOSE)
        return
    listed = ", ".join(f"{p} is {mode:04o}" for p, mode in loose[:4])
    more = f" (and {len(loose) - 4} more)" if len(loose) > 4 else ""
    raise InsecureStore(
        f"store directory {path!r} has invalid permissions: {listed}{more}; the directory "
        f"must be 0700 and its files 0600 (u=rwx / u=rw, no group or other access). Nothing "
        f"was changed; run with --fix-permissions (Engine(path, fix_permissions=True)) or "
        f"chmod -R go-rwx {path!r} to fix them")


def _translate(exc: BaseException, path: str | None = None) -> Exception:
    """One table from LMDB failures to ours. A commit that fails with EIO on a nearly full
    disk is a full disk (LMDB reports a short write as EIO), not a corrupt store."""
    if isinstance(exc, lmdb.MapFullError):
        return StoreFull("the store is full (LMDB map size reached); nothing was changed")
    if isinstance(exc, lmdb.DiskError) or getattr(exc, "errno", None) == errno.ENOSPC \
            or "No space left" in str(exc):
        return StoreFull(f"the disk holding the store is full; nothing was changed ({exc})")
    eio = "Input/output error" in str(exc) or getattr(exc, "errno", None) == errno.EIO
    if path is not None and eio and _disk_nearly_full(path):
        return StoreFull(f"the disk holding the store is full; nothing was changed ({exc})")
    return CorruptStore(f"LMDB error: {exc}")


def _disk_nearly_full(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bavail * st.f_frsize
    return free < max(64 * 1024 * 1024, st.f_blocks * st.f_frsize // 100)


__all__ = ["LmdbBackend"]
