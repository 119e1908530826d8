"""One owner per store: the ``owner.lock`` file of a store directory.

A process *owns* a store while it serves it (``ebsengine serve``, ``ebsengine.nbd.serve``,
the AWS endpoint) or has devices open on it: its write cache then holds acknowledged writes
that only it can see, and its open devices pin volumes. Another process must not change the
store behind it, so the lock file says who may open the store read-write:

* every read-write engine holds a POSIX record lock (``fcntl``) on the whole of
  ``STORE/owner.lock``: a *read* lock while it merely uses the store, a *write* lock while it
  owns it. Many users coexist; an owner excludes every other process, and a process cannot
  become owner while another one uses the store;
* the owner writes one JSON line into the file (``pid``, ``cmdline``, ``since``) so that a
  refusal names it (:class:`StoreOwned`); the kernel also reports the holder's pid
  (``F_GETLK``), which covers the moment before the line is written;
* the kernel drops the lock when the process ends, however it ends (``kill -9`` included):
  a dead owner never keeps a store.

POSIX locks belong to a process, not to a file descriptor, and closing *any* descriptor of
the file drops all of them; so a process keeps one descriptor per store (``_REGISTRY``)
shared by all its engines on that store, which therefore count as one user (an owner when
any of them owns). Read-only engines take no lock (LMDB lets readers run beside a writer;
they see what is committed, not an owner's write cache). LMDB's own ``lock.mdb`` is no
owner lock: it admits any number of read-write processes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass

from ..errors import StoreOwned

OWNER_FILE = "owner.lock"
FILE_MODE = 0o600
#: ``struct flock`` on Linux (l_type, l_whence, l_start, l_len, l_pid), native alignment
_FLOCK = "hhqqi"


@dataclass(frozen=True)
class Holder:
    """A process holding the store: ``pid`` and its command line; ``owner`` when it holds
    the write lock (serving or with devices open), else it only uses the store."""

    pid: int
    cmdline: str
    owner: bool

    def describe(self) -> str:
        return f"process {self.pid} ({self.cmdline})" if self.cmdline else f"process {self.pid}"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
    if len(parts) >= 3 and os.path.basename(parts[0]).startswith("python") and \
            parts[1] == "-m" and parts[2] == "ebsengine.cli":
        parts = ["ebsengine", *parts[3:]]  # as a person typed it
    return " ".join(parts)


class _Entry:
    """This process's descriptor of one store's lock file and what its engines hold."""

    def __init__(self, fd: int, key: tuple[int, int]) -> None:
        self.fd = fd
        self.key = key
        self.pid = os.getpid()
        self.users = 0
        self.owners = 0


_REGISTRY: dict[tuple[int, int], _Entry] = {}
_REGISTRY_LOCK = threading.Lock()


def _open(directory: str, create: bool) -> int | None:
    path = os.path.join(directory, OWNER_FILE)
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError:
        if create:
            raise
        return None  # no store (yet), or not ours to read: nobody is known to own it
    if create:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
    return fd


def _key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _entry(directory: str, create: bool) -> _Entry | None:
    """This process's entry for the store's lock file (opened if new); call with
    ``_REGISTRY_LOCK`` held. A file open already is not opened again: closing a second
    descriptor would drop the locks the first one holds (POSIX)."""
    entry = _REGISTRY.get(_key_of(directory))
    if entry is not None:
        if entry.pid == os.getpid():
            return entry
        _REGISTRY.pop(entry.key)  # inherited across fork: this process holds no lock
        os.close(entry.fd)
    fd = _open(directory, create)
    if fd is None:
        return None
    entry = _REGISTRY[_key(fd)] = _Entry(fd, _key(fd))
    return entry


def _drop(entry: _Entry) -> None:
    _REGISTRY.pop(entry.key, None)
    os.close(entry.fd)  # drops this process's lock


def _setlk(fd: int, kind: int) -> bool:
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _holder(fd: int, write: bool) -> Holder | None:
    """Another process whose lock keeps this one from taking a write (``write``) or read
    lock, or None."""
    query = struct.pack(_FLOCK, fcntl.F_WRLCK if write else fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
    l_type, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    if l_type == fcntl.F_UNLCK:
        return None
    owner = l_type == fcntl.F_WRLCK
    cmdline = ""
    if owner:
        try:
            line = os.pread(fd, 65536, 0).split(b"\n", 1)[0]
            info = json.loads(line) if line else {}
            if info.get("pid") == pid:
                cmdline = str(info.get("cmdline", ""))
        except (OSError, ValueError, AttributeError):
            pass
    return Holder(pid, cmdline or _cmdline(pid), owner)


def store_owner(directory: str) -> Holder | None:
    """The process owning the store in ``directory`` (holding the write lock), if another
    process does; None when nobody else owns it (also when the store has no lock file)."""
    with _REGISTRY_LOCK:
        entry = _REGISTRY.get(_key_of(directory))
        if entry is not None and entry.pid == os.getpid():
            return _holder(entry.fd, write=False)
        fd = _open(directory, create=False)
        if fd is None:
            return None
        try:
            return _holder(fd, write=False)
        finally:
            os.close(fd)  # this process held no lock on the file (no entry)


def _key_of(directory: str) -> tuple[int, int]:
    try:
        st = os.stat(os.path.join(directory, OWNER_FILE))
    except OSError:
        return (-1, -1)
    return (st.st_dev, st.st_ino)


def _refusal(directory: str, holder: Holder, wanted: str) -> StoreOwned:
    if holder.owner:
        return StoreOwned(
            f"store {directory!r} is owned by {holder.describe()}, which serves it or has "
            f"devices open on it; {wanted} is refused so that nothing changes behind its "
            f"back (nothing was changed). Go through it (the ebsengine CLI does, over its "
            f"control socket), open the store read-only, or stop it first")
    return StoreOwned(
        f"store {directory!r} is in use by {holder.describe()}; {wanted} needs the store "
        f"to itself (nothing was changed): close the store there first")


class StoreLock:
    """One engine's hold on a store's lock file: a user from :meth:`attach` on, an owner
    from :meth:`own` on, nothing after :meth:`release`."""

    def __init__(self, directory: str, entry: _Entry) -> None:
        self.directory = directory
        self._entry: _Entry | None = entry
        self.owner = False

    @classmethod
    def attach(cls, directory: str) -> StoreLock:
        """Use the store (read lock); StoreOwned when another process owns it."""
        with _REGISTRY_LOCK:
            entry = _entry(directory, create=True)
            assert entry is not None
            if entry.users == 0 and not _setlk(entry.fd, fcntl.LOCK_SH):
                holder = _holder(entry.fd, write=False)
                _drop(entry)
                raise _refusal(directory, holder or Holder(0, "", True),
                               "opening it read-write")
            entry.users += 1
            return cls(directory, entry)

    def own(self, wait: float = 0.0) -> None:
        """Become the store's owner (write lock), waiting up to ``wait`` seconds for other
        processes to close it; StoreOwned naming one of them when they do not. Idempotent."""
        deadline = time.monotonic() + wait
        while True:
            with _REGISTRY_LOCK:
                entry = self._entry
                if entry is None:
                    raise StoreOwned(f"store {self.directory!r}: the engine is closed")
                if self.owner:
                    return
                if entry.owners > 0 or _setlk(entry.fd, fcntl.LOCK_EX):
                    if entry.owners == 0:
                        line = json.dumps({"pid": os.getpid(), "cmdline": _cmdline(os.getpid())
                                           or " ".join(sys.argv), "since": time.time()})
                        os.ftruncate(entry.fd, 0)
                        os.pwrite(entry.fd, line.encode() + b"\n", 0)
                    entry.owners += 1
                    self.owner = True
                    return
                holder = _holder(entry.fd, write=True)
            if time.monotonic() >= deadline:
                raise _refusal(self.directory, holder or Holder(0, "", False),
                               "owning it (serving it, or opening a device)")
            time.sleep(0.05)

    def _disown(self, entry: _Entry) -> None:
        if not self.owner:
            return
        self.owner = False
        entry.owners -= 1
        if entry.owners == 0:
            try:
                os.ftruncate(entry.fd, 0)
            except OSError:
                pass
            if entry.users > 1:
                _setlk(entry.fd, fcntl.LOCK_SH)  # a downgrade always succeeds

    def release(self) -> None:
        """Stop using the store (idempotent): the last owner of this process downgrades the
        lock to a read lock, the last user drops it."""
        with _REGISTRY_LOCK:
            entry, self._entry = self._entry, None
            if entry is None:
                return
            self._disown(entry)
            entry.users -= 1
            if entry.users == 0:
                _drop(entry)


__all__ = ["OWNER_FILE", "Holder", "StoreLock", "store_owner"]
