"""Talking to a Ceph cluster through librados: store URLs, one connection, batched object I/O.

This module is the only one that imports the ``rados`` binding (Debian's ``python3-rados``;
``scripts/setup.sh --test`` makes it importable), and only when a connection is opened, so
the package imports without it.

Store URLs
----------
``rados://PREFIX?conf=/etc/ceph/ceph.conf&id=admin&keyring=/etc/ceph/ceph.client.admin.keyring&timeout=30``

``PREFIX`` names the pools: ``PREFIX.meta`` (replicated: metadata, which lives in omap and
object data, and erasure-coded pools have no omap) and ``PREFIX.data`` (chunks), each
created with the cluster's defaults if missing (create a pool beforehand to choose its size,
placement groups or an erasure-coded profile for the data pool). Options, all optional:

``conf``
    the ceph.conf to read (default: librados's own search: ``$CEPH_CONF``,
    ``/etc/ceph/ceph.conf``, ``~/.ceph/config``, ``./ceph.conf``);
``id``
    the client's name without ``client.`` (default ``admin``);
``keyring``
    its keyring file (default: what the conf names);
``timeout``
    seconds (default 30) after which an operation that the cluster does not answer fails with
    :class:`~ebsengine.errors.BackendUnavailable` instead of waiting for ever: sets librados's
    ``rados_osd_op_timeout``, ``rados_mon_op_timeout`` and ``client_mount_timeout`` (and an
    unanswered operation makes the client fetch a newer OSD map after 2 s, see
    ``_OBJECTER_AT_MOST``);
``meta`` / ``data``
    pool names that replace ``PREFIX.meta`` / ``PREFIX.data``;
``grace``
    seconds (default 60) that stored objects a commit stopped referencing (chunks, metadata
    nodes) are kept before they are removed, so that a reader in another process whose
    snapshot is that old still finds them;
``lease``
    seconds (default 30) a front end's lease on a volume lasts unless renewed: after a front
    end dies, another one can take its volumes over this long after (see
    :class:`~.rados_kv.RadosStore`);
``pack``
    MiB (default 4, at most 64) of chunks a write transaction gathers into one object of the
    data pool (a *pack*, see :mod:`.rados_chunks`), so that an import writes a few large
    objects instead of one small object per chunk; ``0`` writes one object per chunk.
    Either way the store reads both kinds;
``workdir``
    the store's local directory on this host (owner lock, control and NBD sockets; never any
    data): default ``~/.cache/ebsengine/rados/<hash of the pools and the conf>``.

Operations
----------
:func:`connect` gives a :class:`RadosConnection` holding one :class:`Pool` per pool
(``conn.meta``, ``conn.data``). A :class:`Pool` does batched I/O (``put_many``,
``read_many``, ``stat_many``, ``remove_many``: asynchronous, ``window`` operations in flight),
versioned reads and compare-and-swap writes (``read_versioned``, ``cas_write``: one compound
operation asserting the object's version, writing its data and its omap), omap reads,
advisory locks with a duration (``try_lock``/``renew_lock``/``unlock``) and a streaming
listing. Object names are ``str`` (RADOS names), omap keys ``str``, values ``bytes``.

Errors become the engine's: a full cluster or pool quota is
:class:`~ebsengine.errors.StoreFull`; a cluster that cannot be reached, an operation that
timed out or a refused login is :class:`~ebsengine.errors.BackendUnavailable`; an object
the cluster cannot read (EIO) is :class:`~ebsengine.errors.CorruptStore`; anything else an
:class:`~ebsengine.errors.EbsError` naming the operation, object and errno. None is
swallowed; a missing object is a result (None, False) where the operation says so.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import BackendUnavailable, CorruptStore, EbsError, InvalidParameter, StoreFull

SCHEME = "rados://"
DEFAULT_TIMEOUT = 30.0
DEFAULT_WINDOW = 16  # operations in flight per batch: about 6x the put rate of one at a time
READ_HINT = 128 * 1024  # bytes asked for by a first read; a longer object is read again
APPLICATION = "ebsengine"  # the pool application tag (Ceph warns about untagged pools)

_POOL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,100}")
_OPTIONS = ("conf", "id", "keyring", "timeout", "meta", "data", "grace", "lease", "pack",
            "workdir")
DEFAULT_PACK_MIB = 4
DEFAULT_GRACE = 60.0
DEFAULT_LEASE = 30.0

# errno values that mean "the cluster cannot be reached or did not answer in time"
_UNAVAILABLE = {errno.ETIMEDOUT, errno.ESHUTDOWN, errno.ENOTCONN, errno.ECONNREFUSED,
                errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EINTR,
                errno.EAGAIN, errno.EACCES, errno.EPERM, errno.ECANCELED}
_FULL = {errno.ENOSPC, errno.EDQUOT}
# errno values of a compare-and-swap whose condition failed (version moved, object created
# or removed meanwhile)
_CAS_LOST = {errno.ERANGE, errno.EOVERFLOW, errno.ENOENT, errno.EEXIST}

# Ceph's lock object class (cls_lock): lock type and flags of its "lock" call
_LOCK_EXCLUSIVE = 1
_LOCK_MAY_RENEW = 1  # taking a lock this cookie holds renews it
_LOCK_MUST_RENEW = 2  # renew only: fails (ENOENT) unless this cookie holds the lock


def _enc_str(text: str) -> bytes:
    """A string in Ceph's encoding: u32 length (little-endian), then the bytes."""
    b = text.encode()
    return struct.pack("<I", len(b)) + b


def _enc_struct(body: bytes, version: int = 1, compat: int = 1) -> bytes:
    """A versioned struct in Ceph's encoding: version, oldest compatible version, length."""
    return bytes([version, compat]) + struct.pack("<I", len(body)) + body


@dataclass(frozen=True)
class RadosUrl:
    """A parsed ``rados://`` store URL (see the module docstring)."""

    prefix: str
    conf: str | None = None
    id: str = "admin"
    keyring: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    meta_pool: str = ""
    data_pool: str = ""
    grace: float = DEFAULT_GRACE
    lease: float = DEFAULT_LEASE
    pack_mib: int = DEFAULT_PACK_MIB
    workdir: str | None = None

    def __str__(self) -> str:
        opts = [f"{k}={v}" for k, v in (("conf", self.conf), ("id", self.id),
                                         ("keyring", self.keyring)) if v]
        return f"{SCHEME}{self.prefix}?{'&'.join(opts)}" if opts else SCHEME + self.prefix


def is_rados_url(path: object) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def parse_url(url: str) -> RadosUrl:
    """The parts of ``rados://PREFIX?opt=value&...``; InvalidParameter for anything else."""
    if not is_rados_url(url):
        raise InvalidParameter(f"not a rados:// store URL: {url!r}")
    parts = urlsplit(url)
    prefix = unquote(parts.netloc + parts.path).rstrip("/")
    if not _POOL_NAME.fullmatch(prefix or "-"):
        raise InvalidParameter(f"{url!r}: the pool prefix must be 1-101 letters, digits, "
                               f"'.', '_' or '-' (rados://PREFIX?conf=...)")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise InvalidParameter(f"{url!r}: bad option list: {exc}") from None
    unknown = sorted(set(query) - set(_OPTIONS))
    if unknown:
        raise InvalidParameter(f"{url!r}: unknown option(s) {', '.join(unknown)} "
                               f"(known: {', '.join(_OPTIONS)})")
    one: dict[str, str] = {}
    for key, values in query.items():
        if len(values) != 1 or not values[0]:
            raise InvalidParameter(f"{url!r}: option {key} needs exactly one non-empty value")
        one[key] = values[0]
    timeout = _seconds(url, one, "timeout", DEFAULT_TIMEOUT, 0, 3600, low_open=True)
    grace = _seconds(url, one, "grace", DEFAULT_GRACE, 0, 86400)
    lease = _seconds(url, one, "lease", DEFAULT_LEASE, 1, 300)
    pack = one.get("pack", str(DEFAULT_PACK_MIB))
    if not pack.isdigit() or int(pack) > 64:
        raise InvalidParameter(f"{url!r}: pack must be a whole number of MiB from 0 to 64, "
                               f"not {pack!r}")
    meta = one.get("meta", prefix + ".meta")
    data = one.get("data", prefix + ".data")
    for name in (meta, data):
        if not _POOL_NAME.fullmatch(name):
            raise InvalidParameter(f"{url!r}: {name!r} is not a usable pool name")
    if meta == data:
        raise InvalidParameter(f"{url!r}: the meta and data pools must differ")
    return RadosUrl(prefix=prefix, conf=one.get("conf"), id=one.get("id", "admin"),
                    keyring=one.get("keyring"), timeout=timeout, meta_pool=meta,
                    data_pool=data, grace=grace, lease=lease, pack_mib=int(pack),
                    workdir=one.get("workdir"))


def _seconds(url: str, one: dict[str, str], key: str, default: float, low: float,
             high: float, *, low_open: bool = False) -> float:
    """Option ``key`` of ``url``: a number of seconds in [low, high] (``low_open``: (low,
    high]), else ``default`` when absent; InvalidParameter for anything else."""
    if key not in one:
        return default
    try:
        value = float(one[key])
    except ValueError:
        value = float("nan")
    if not ((low < value if low_open else low <= value) and value <= high):
        span = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise InvalidParameter(f"{url!r}: {key} must be a number of seconds in {span}")
    return value


def workdir(url: str | RadosUrl) -> str:
    """The store's local directory on this host (see the ``workdir`` option)."""
    u = parse_url(url) if isinstance(url, str) else url
    if u.workdir:
        return os.path.abspath(u.workdir)
    conf = os.path.realpath(u.conf) if u.conf else ""
    ident = hashlib.sha256(f"{conf}\0{u.id}\0{u.meta_pool}\0{u.data_pool}".encode())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ebsengine", "rados", ident.hexdigest()[:16])


def _rados() -> Any:
    try:
        import rados
    except ImportError as exc:
        raise BackendUnavailable(
            "the librados Python binding is not installed (Debian: apt-get install "
            "python3-rados; scripts/setup.sh --test links it into this Python): "
            f"{exc}") from None
    return rados


def _errno_of(exc: BaseException) -> int | None:
    n = getattr(exc, "errno", None)
    return abs(n) if isinstance(n, int) else None


def translate(exc: BaseException, what: str) -> Exception:
    """The engine's error for librados error ``exc`` raised while doing ``what`` (a phrase
    naming the operation, pool and object)."""
    n = _errno_of(exc)
    return translate_errno(n, what, str(exc))


def translate_errno(n: int | None, what: str, detail: str = "") -> Exception:
    """The engine's error for errno ``n`` (positive) returned by ``what``."""
    detail = f" ({detail})" if detail else ""
    if n in _FULL:
        return StoreFull(f"the Ceph cluster is full or the pool is at its quota: {what} "
                         f"failed{detail}; nothing was committed (deleting frees space)")
    if n in (errno.EACCES, errno.EPERM):
        return BackendUnavailable(f"the Ceph cluster refused access: {what} failed{detail}; "
                                  f"check the client id, its keyring and its caps. "
                                  f"Nothing was lost")
    if n in _UNAVAILABLE or n is None:
        return BackendUnavailable(f"the Ceph cluster is unavailable: {what} failed"
                                  f"{detail}; nothing stored was lost, retry when it is back")
    if n == errno.EIO:
        return CorruptStore(f"the Ceph cluster could not read it: {what} failed{detail}")
    return EbsError(f"{what} failed: {errno.errorcode.get(n, n)} ({n}){detail}")


# How soon the client asks the monitors for a newer OSD map when an operation goes unanswered
# (librados's defaults: 10 s laggy, checked every 5 s). The client subscribes to maps only
# when it needs one: after an OSD dies, the dropped connection makes it ask at once, but an
# OSD that hangs (frozen, partitioned) drops nothing, so the ops queued to it would wait for
# the objecter's tick even after the monitors have marked it down and its PGs have a new
# primary: 2-10 s of stall added to the heartbeat grace. A lower value in the conf is kept.
_OBJECTER_AT_MOST = {"objecter_timeout": 2.0, "objecter_tick_interval": 1.0}


class RadosConnection:
    """One client session with the cluster and the two pools of a store URL. Thread-safe
    (librados is); close it once (also a context manager)."""

    def __init__(self, url: RadosUrl, *, create: bool = True) -> None:
        rados = _rados()
        self.url = url
        self.timeout = url.timeout
        where = f"connecting to the Ceph cluster (conf {url.conf or 'default'}, " \
                f"client.{url.id})"
        try:
            cluster = rados.Rados(conffile=url.conf, rados_id=url.id)
        except rados.Error as exc:
            raise BackendUnavailable(f"{where}: cannot read the configuration: {exc}") from None
        self.cluster = cluster
        try:
            secs = str(max(1, math.ceil(url.timeout)))
            for opt in ("rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout"):
                cluster.conf_set(opt, secs)
            for opt, most in _OBJECTER_AT_MOST.items():
                if float(cluster.conf_get(opt)) > most:
                    cluster.conf_set(opt, str(most))
            if url.keyring:
                cluster.conf_set("keyring", url.keyring)
            cluster.connect()
        except rados.Error as exc:
            self._shutdown()
            raise translate(exc, where) from None
        try:
            self.meta = Pool(self, self._open(url.meta_pool, create))
            self.data = Pool(self, self._open(url.data_pool, create))
        except BaseException:
            self._shutdown()
            raise

    def _open(self, name: str, create: bool) -> Any:
        rados = _rados()
        try:
            if not self.cluster.pool_exists(name):
                if not create:
                    raise BackendUnavailable(f"pool {name!r} does not exist on the cluster")
                try:
                    self.cluster.create_pool(name)
                except rados.ObjectExists:
                    pass  # another client made it meanwhile
            ioctx = self.cluster.open_ioctx(name)
            # a full cluster refuses writes at once (ENOSPC: StoreFull) instead of holding
            # them until it has room or the timeout passes; deletes still go through
            ioctx.set_osdmap_full_try()
            if create and APPLICATION not in ioctx.application_list():
                ioctx.application_enable(APPLICATION)
            return ioctx
        except rados.Error as exc:
            raise translate(exc, f"opening pool {name!r}") from None

    def delete_pools(self) -> None:
        """Remove both pools and everything in them (tests; the monitor must allow it:
        ``mon allow pool delete = true``)."""
        rados = _rados()
        for pool in (self.meta, self.data):
            pool.ioctx.close()
            try:
                self.cluster.delete_pool(pool.name)
            except rados.ObjectNotFound:
                pass
            except rados.Error as exc:
                raise translate(exc, f"deleting pool {pool.name!r}") from None

    def _shutdown(self) -> None:
        try:
            self.cluster.shutdown()
        except Exception:  # noqa: BLE001 - closing a half-made session: its error is moot
            pass

    def close(self) -> None:
        for pool in (getattr(self, "meta", None), getattr(self, "data", None)):
            if pool is not None:
                pool.close()
        self._shutdown()

    def __enter__(self) -> RadosConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(url: str | RadosUrl, *, create: bool = True) -> RadosConnection:
    """A connection to the pools of ``url`` (created if missing, unless ``create=False``)."""
    return RadosConnection(parse_url(url) if isinstance(url, str) else url, create=create)


@dataclass
class ObjectStat:
    size: int
    mtime: float  # seconds since the epoch (RADOS keeps whole seconds here)


class _Batch:
    """Up to ``window`` asynchronous operations in flight; results by index."""

    def __init__(self, n: int, window: int) -> None:
        self.slots = threading.BoundedSemaphore(max(1, window))
        self.results: list[Any] = [None] * n
        self.codes: list[int] = [0] * n
        self.completions: list[Any] = []

    def done(self, i: int, code: int, value: Any = None) -> None:
        self.codes[i] = code
        self.results[i] = value
        self.slots.release()

    def run(self, items: Iterable[Any], submit: Callable[[int, Any], Any]) -> None:
        """Submit each item (``submit(i, item)`` returns a completion whose callback calls
        :meth:`done`), then wait for every one (each ends: librados times them out)."""
        try:
            for i, item in enumerate(items):
                self.slots.acquire()
                try:
                    self.completions.append(submit(i, item))
                except BaseException:
                    self.slots.release()
                    raise
        finally:
            for c in self.completions:
                c.wait_for_complete_and_cb()


class Writer:
    """Whole-object writes in flight while their producer goes on (write-behind).

    :meth:`put` starts a write and returns at once, or once a slot is free when ``window``
    are in flight; :meth:`wait` returns when every write started so far is durable, or
    raises the first failure (after all have ended). ``done(name)``, if given, is called
    from librados's callback thread when a write succeeds. One producer at a time.
    """

    def __init__(self, pool: Pool, window: int, done: Callable[[str], None] | None) -> None:
        self.pool = pool
        self.window = max(1, window)
        self.done = done
        self.failures: list[tuple[str, int]] = []
        self.started = 0
        self._cv = threading.Condition()
        self._inflight: dict[int, Any] = {}  # completions whose callback has not run yet

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        rados = _rados()
        n = self.started
        with self._cv:
            while len(self._inflight) >= self.window:
                self._cv.wait()
            self._inflight[n] = None  # the slot, taken before the write can end

        def finished(c: Any) -> None:
            code = c.get_return_value()
            try:
                if code < 0:
                    self.failures.append((name, code))
                elif self.done is not None:
                    self.done(name)
            finally:
                with self._cv:
                    self._inflight.pop(n, None)
                    self._cv.notify_all()

        try:
            c = self.pool.ioctx.aio_write_full(name, bytes(data), oncomplete=finished)
        except BaseException as exc:
            with self._cv:
                self._inflight.pop(n, None)
                self._cv.notify_all()
            if isinstance(exc, rados.Error):
                raise translate(exc, self.pool._what("writing", name)) from None
            raise
        self.started += 1
        with self._cv:
            if n in self._inflight:  # keep the completion alive until its callback ran
                self._inflight[n] = c

    def settle(self) -> None:
        """Until every write started has ended (librados times each out)."""
        with self._cv:
            while self._inflight:
                self._cv.wait()

    def wait(self) -> None:
        """:meth:`settle`, then raise the first failure, if any."""
        self.settle()
        if self.failures:
            name, code = self.failures[0]
            raise translate_errno(-code, self.pool._what("writing", name))


class Pool:
    """Object I/O on one pool (an ioctx of a :class:`RadosConnection`)."""

    def __init__(self, conn: RadosConnection, ioctx: Any) -> None:
        self.conn = conn
        self.ioctx = ioctx
        self.name: str = ioctx.get_pool_name()
        # get_last_version() reports the last synchronous operation of an ioctx, whichever
        # thread ran it (a lease renewal, an omap read): versioned operations run on an
        # ioctx of their own, one at a time, so each reads its own version
        self._version_lock = threading.Lock()
        self._vioctx: Any = None

    def _what(self, op: str, name: str | None = None) -> str:
        return f"{op} {self.name}/{name}" if name is not None else f"{op} in pool {self.name}"

    def _versioned(self) -> Any:
        """The ioctx of versioned operations (call with ``_version_lock`` held)."""
        if self._vioctx is None:
            rados = _rados()
            try:
                ioctx = self.conn.cluster.open_ioctx(self.name)
            except rados.Error as exc:
                raise translate(exc, f"opening pool {self.name!r}") from None
            ioctx.set_osdmap_full_try()
            self._vioctx = ioctx
        return self._vioctx

    def close(self) -> None:
        for ioctx in (self.ioctx, self._vioctx):
            if ioctx is None:
                continue
            try:
                ioctx.close()
            except Exception:  # noqa: BLE001 - closing: nothing useful to do with its error
                pass

    # --- batched I/O -----------------------------------------------------------------

    def put_many(self, items: Sequence[tuple[str, bytes | bytearray | memoryview]], *,
                 window: int = DEFAULT_WINDOW) -> None:
        """Write each ``(name, data)`` as a whole object (replacing any), ``window`` writes in
        flight; returns once every one is durable (acknowledged by all replicas), raises the
        first failure after all have ended (the others may be written; so may a write that
        timed out, later)."""
        if not items:
            return
        writer = self.writer(window)
        try:
            for name, data in items:
                writer.put(name, data)
        except BaseException:
            writer.settle()  # every write started has ended before the error is raised
            raise
        writer.wait()

    def read_many(self, names: Sequence[str], *, window: int = DEFAULT_WINDOW,
                  hint: int = READ_HINT) -> list[bytes | None]:
        """Each object's whole data (None: no such object), ``window`` reads in flight. An
        object longer than ``hint`` bytes is read again whole."""
        if not names:
            return []
        hint = max(hint, 4096)  # (a read of length 0 means "all of it" to RADOS)
        heads = self.read_ranges([(name, 0, hint) for name in names], window=window)
        return [data if data is None or len(data) < hint else self.read(name, hint * 4)
                for name, data in zip(names, heads, strict=True)]

    def read_ranges(self, ranges: Sequence[tuple[str, int, int]], *,
                    window: int = DEFAULT_WINDOW) -> list[bytes | None]:
        """The bytes of each ``(name, offset, length)`` (None: no such object), ``window``
        reads in flight. A range past the object's end comes back short: the caller checks
        the length."""
        if not ranges:
            return []
        if any(length <= 0 for _, _, length in ranges):  # RADOS reads length 0 as "all"
            raise ValueError("read_ranges: every range needs a positive length")
        batch = _Batch(len(ranges), window)

        def submit(i: int, item: tuple[str, int, int]) -> Any:
            name, offset, length = item
            return self.ioctx.aio_read(
                name, length, offset,
                oncomplete=lambda c, data: batch.done(i, c.get_return_value(), data))

        self._run(batch, ranges, submit, "reading")
        out: list[bytes | None] = []
        for (name, _, _), code, data in zip(ranges, batch.codes, batch.results, strict=True):
            if code == -errno.ENOENT:
                out.append(None)
            elif code < 0:
                raise translate_errno(-code, self._what("reading", name))
            else:  # the binding leaves its buffer whole when nothing was read: cut to code
                out.append(bytes(data[:code]) if data else b"")
        return out

    def stat_many(self, names: Sequence[str], *,
                  window: int = DEFAULT_WINDOW) -> list[ObjectStat | None]:
        """Each object's size and modification time (None: no such object)."""
        if not names:
            return []
        batch = _Batch(len(names), window)

        def submit(i: int, name: str) -> Any:
            def cb(c: Any, size: int | None, mtime: time.struct_time | None) -> None:
                batch.done(i, c.get_return_value(),
                           None if size is None or mtime is None
                           else ObjectStat(size, time.mktime(mtime)))
            return self.ioctx.aio_stat(name, cb)

        self._run(batch, names, submit, "looking up")
        out: list[ObjectStat | None] = []
        for name, code, st in zip(names, batch.codes, batch.results, strict=True):
            if code == -errno.ENOENT:
                out.append(None)
            elif code < 0:
                raise translate_errno(-code, self._what("looking up", name))
            else:
                out.append(st)
        return out

    def remove_many(self, names: Sequence[str], *, window: int = DEFAULT_WINDOW) -> int:
        """Remove each object (a missing one is fine); the number that existed."""
        if not names:
            return 0
        batch = _Batch(len(names), window)

        def submit(i: int, name: str) -> Any:
            return self.ioctx.aio_remove(
                name, oncomplete=lambda c: batch.done(i, c.get_return_value()))

        self._run(batch, names, submit, "removing")
        removed = 0
        for name, code in zip(names, batch.codes, strict=True):
            if code >= 0:
                removed += 1
            elif code != -errno.ENOENT:
                raise translate_errno(-code, self._what("removing", name))
        return removed

    def writer(self, window: int = DEFAULT_WINDOW,
               done: Callable[[str], None] | None = None) -> Writer:
        """An open-ended :meth:`put_many`: writes started one by one as a caller produces
        them (``window`` in flight), waited for together (see :class:`Writer`)."""
        return Writer(self, window, done)

    def _run(self, batch: _Batch, items: Iterable[Any], submit: Callable[[int, Any], Any],
             op: str) -> None:
        rados = _rados()
        try:
            batch.run(items, submit)
        except rados.Error as exc:
            raise translate(exc, self._what(op)) from None

    # --- single objects --------------------------------------------------------------

    def read(self, name: str, hint: int = READ_HINT) -> bytes | None:
        """The whole object (None: no such object)."""
        return self._read_whole(name, hint)[0]

    def _read_whole(self, name: str, hint: int) -> tuple[bytes | None, int]:
        """(data or None, version) of one object, read in one operation (a read that fills
        its buffer is repeated with a bigger one, so data and version always match)."""
        rados = _rados()
        length = max(hint, 4096)
        with self._version_lock:
            ioctx = self._versioned()
            while True:
                try:
                    data = ioctx.read(name, length, 0)
                except rados.ObjectNotFound:
                    return None, 0
                except rados.Error as exc:
                    raise translate(exc, self._what("reading", name)) from None
                version = int(ioctx.get_last_version())
                if len(data) < length:
                    return bytes(data), version
                length *= 4

    def read_versioned(self, name: str) -> tuple[bytes | None, int]:
        """``(data, version)`` of one object; ``(None, 0)`` if it does not exist. Pass the
        version to :meth:`cas_write` to replace exactly what was read."""
        return self._read_whole(name, READ_HINT)

    def cas_write(self, name: str, expected_version: int | None, data: bytes | None, *,
                  omap_set: dict[str, bytes] | None = None,
                  omap_rm: Sequence[str] = ()) -> bool:
        """Compare-and-swap: if the object is still at ``expected_version`` (None or 0: if
        it does not exist yet), replace its data with ``data`` (None: keep it) and apply
        the omap changes, all in one atomic operation. False (nothing changed) when the
        version moved or the object appeared or vanished meanwhile.

        BackendUnavailable (a timeout) leaves the outcome unknown: the operation may still
        be applied when the cluster answers again. Read the object's version to learn."""
        return self.cas_write_version(name, expected_version, data, omap_set=omap_set,
                                      omap_rm=omap_rm) is not None

    def cas_write_version(self, name: str, expected_version: int | None,
                          data: bytes | None, *, omap_set: dict[str, bytes] | None = None,
                          omap_rm: Sequence[str] = ()) -> int | None:
        """:meth:`cas_write` returning the object's new version (None: the swap lost)."""
        rados = _rados()
        with self._version_lock, rados.WriteOpCtx() as op:
            ioctx = self._versioned()
            if expected_version:
                op.assert_version(expected_version)
            else:
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            if data is not None:
                op.write_full(bytes(data))
            if omap_rm:
                ioctx.remove_omap_keys(op, tuple(omap_rm))
            if omap_set:
                keys = tuple(omap_set)
                ioctx.set_omap(op, keys, tuple(bytes(omap_set[k]) for k in keys))
            try:
                ioctx.operate_write_op(op, name)
            except rados.Error as exc:
                if _errno_of(exc) in _CAS_LOST:
                    return None
                raise translate(exc, self._what("compare-and-swap of", name)) from None
            return int(ioctx.get_last_version())

    def write_full(self, name: str, data: bytes) -> None:
        """Replace one object's data (unconditionally)."""
        self.put_many([(name, data)], window=1)

    # --- omap ------------------------------------------------------------------------

    def omap_get(self, name: str, *, start_after: str = "", prefix: str = "",
                 max_return: int = 1000) -> list[tuple[str, bytes]]:
        """Up to ``max_return`` omap entries of ``name`` after ``start_after`` (in key
        order), only those starting with ``prefix`` if given; [] if no such object. Page
        through with the last key returned as the next ``start_after``."""
        rados = _rados()
        with rados.ReadOpCtx() as op:
            it, _ = self.ioctx.get_omap_vals(op, start_after, prefix, max_return)
            try:
                self.ioctx.operate_read_op(op, name)
            except rados.ObjectNotFound:
                return []
            except rados.Error as exc:
                raise translate(exc, self._what("reading the omap of", name)) from None
            return [(k, bytes(v or b"")) for k, v in it]

    def omap_get_keys(self, name: str, keys: Sequence[str]) -> dict[str, bytes]:
        """The values of those of ``keys`` that ``name``'s omap holds ({} if no object)."""
        rados = _rados()
        if not keys:
            return {}
        with rados.ReadOpCtx() as op:
            it, _ = self.ioctx.get_omap_vals_by_keys(op, tuple(keys))
            try:
                self.ioctx.operate_read_op(op, name)
            except rados.ObjectNotFound:
                return {}
            except rados.Error as exc:
                raise translate(exc, self._what("reading the omap of", name)) from None
            return {k: bytes(v or b"") for k, v in it}

    # --- locks -----------------------------------------------------------------------

    def try_lock(self, name: str, lockname: str, cookie: str, duration: float, *,
                 desc: str = "") -> bool:
        """Take exclusive lock ``lockname`` on object ``name`` (created if missing) for
        ``duration`` seconds, as ``cookie``; False if another cookie holds it. Taking a lock
        this cookie already holds renews it.

        The OSD judges the expiry by its own clock, from when it took the lock: a holder
        renews well before (at a third of the duration, say) and stops writing once a
        renewal is late, rather than counting on the last fraction of a second."""
        return self._lock(name, lockname, cookie, duration, desc, _LOCK_MAY_RENEW)

    def renew_lock(self, name: str, lockname: str, cookie: str, duration: float, *,
                   desc: str = "") -> bool:
        """Extend this cookie's lock to ``duration`` from now; False if it does not hold the
        lock any more (it expired, or was broken, and may have been taken by another)."""
        return self._lock(name, lockname, cookie, duration, desc, _LOCK_MUST_RENEW)

    def _lock(self, name: str, lockname: str, cookie: str, duration: float, desc: str,
              flags: int) -> bool:
        # Ceph's lock object class, called with arguments encoded here: the binding's
        # lock_exclusive passes whole seconds plus an unset microseconds field, which made
        # a 1 s lock last anywhere from 0.6 s to 3 s here.
        if not 0 < duration < 2**31:
            raise InvalidParameter(f"a lock duration must be positive seconds, not {duration}")
        sec = int(duration)
        nsec = min(round((duration - sec) * 1e9), 999_999_999)
        body = (_enc_str(lockname) + bytes([_LOCK_EXCLUSIVE]) + _enc_str(cookie) + _enc_str("")
                + _enc_str(desc) + struct.pack("<II", sec, nsec) + bytes([flags]))
        code = self._call(name, "lock", _enc_struct(body), f"locking {lockname!r} on")
        return code == 0

    def unlock(self, name: str, lockname: str, cookie: str) -> bool:
        """Release this cookie's lock; False if it did not hold it (expired or broken)."""
        code = self._call(name, "unlock", _enc_struct(_enc_str(lockname) + _enc_str(cookie)),
                          f"unlocking {lockname!r} on")
        return code == 0

    def _call(self, name: str, method: str, arg: bytes, what: str) -> int:
        """Run ``lock.<method>`` on object ``name`` as a write; 0, or the errno of a refusal
        (held by another, already held, not held)."""
        rados = _rados()
        with rados.WriteOpCtx() as op:
            op.execute("lock", method, arg)
            try:
                self.ioctx.operate_write_op(op, name)
            except rados.Error as exc:
                n = _errno_of(exc)
                if n in (errno.EBUSY, errno.EEXIST, errno.ENOENT):
                    return n
                raise translate(exc, self._what(what, name)) from None
        return 0

    # --- listing ---------------------------------------------------------------------

    def list_objects(self, prefix: str = "") -> Iterator[str]:
        """The names of the pool's objects that start with ``prefix``, streamed as the
        cluster lists them (in no particular order; objects made or removed meanwhile may
        or may not show)."""
        rados = _rados()
        try:
            for obj in self.ioctx.list_objects():
                key = obj.key
                if key.startswith(prefix):
                    yield key
        except rados.Error as exc:
            raise translate(exc, self._what("listing objects")) from None
