"""The metadata of a ``rados://`` store: a :class:`~.base.KvBackend` over a RADOS pool.

The engine's tables (block maps, lineages, volumes, snapshots, service records, ...) keep
LMDB's semantics here (``base.py``): ordered tables, one writer at a time, read
transactions that see one commit for their whole life. They are laid out as LMDB lays out
its file, one level up:

* each table is a copy-on-write B+tree (:mod:`.cowtree`) whose nodes are immutable objects
  ``n.<hex id>`` of the metadata pool; a node is never changed once written, so any number
  of readers, in any process, read any committed version without locks, and a node can be
  cached anywhere with no invalidation;
* one small *root* object, ``kv.root``, names the root node of every table and carries the
  commit sequence number. A commit writes its new nodes first (pipelined, durable), then
  replaces the root in one compound operation that asserts the root's object version: the
  root write is the commit point, a crash before it leaves only unreferenced nodes, and a
  writer that lost its lock to another front end cannot overwrite that one's commit;
* one writer at a time across every process: a write transaction holds the RADOS lock
  ``writer`` on ``kv.lock`` (cls_lock, with a duration, so a dead writer's lock expires)
  from ``begin(write=True)`` to its commit or abort, and reads the root afresh under it;
* nodes a commit stops referencing are listed in an omap entry of the root written in the
  same compound op (``f<seq:016x>`` -> ``time_ns u64 | ids``) and removed only after
  ``grace`` seconds *and* once no read transaction of this process can still see them, so
  a reader in another process (whose snapshot is at most ``grace`` old: readers are kept
  short and long walks use fresh transactions) never finds a node missing.

What a commit costs: O(changed leaves x depth) node writes (one B-tree path per changed
region; unchanged subtrees are shared between versions), the lock round trips and one root
write. A lookup costs the tree's depth in node visits, from a shared cache of decoded nodes.

The pool is reached through :class:`ObjectPool`; :class:`DictPool` is an in-process one (the
same semantics, object versions and locks included) for tests that need no cluster.
The layout is part of the store's on-disk format: ``layout.py`` refers here.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import xxhash

from ..errors import BackendUnavailable, CorruptStore, FormatError, StoreLocked, VolumeInUse
from .base import DEFAULT_MAP_SIZE, ChunkBackend, Table
from .cowtree import BLOB_THRESHOLD, NODE_SIZE, NodeCache, NodeSource, Tree, check_tree
from .memory import _DELETED, Committed, MemoryBackend, MemoryError_, _Overlay
from .owner import StoreLock

if TYPE_CHECKING:
    from .rados_chunks import RadosChunks
    from .rados_io import RadosConnection
    from .store import Store

log = logging.getLogger("ebsengine.rados")

ROOT = "kv.root"
#: metadata node writes in flight at a commit: a flush over 7,500 patched chunks (as many
#: pages blobs) committed in 13% less time with 64 than with 16 (one memstore OSD)
NODE_WRITE_WINDOW = 64
LOCK = "kv.lock"  # the object carrying the writer lock (locking creates an empty object)
WRITER_LOCK = "writer"
ROOT_MAGIC = b"EBSKVR01"
NODE_PREFIX = "n."
FREE_PREFIX = "f"
#: the root's omap key that :meth:`RadosKv.fence_writers` rewrites (u64 ns; outside FREE_PREFIX)
FENCE_KEY = "w.fence"
ID_SIZE = 12  # random node ids: 96 bits, never reused
LOCK_SECONDS = 30.0  # a dead writer's lock expires after this long
LOCK_WAIT = 60.0  # begin(write=True) gives up (StoreLocked) after waiting this long
DEFAULT_GRACE = 60.0  # freed nodes outlive their last commit by this long
DEFAULT_REFRESH = 0.05  # a read transaction may see a root this old (other processes' commits)
_HEAD = struct.Struct(">8sQI")  # magic, seq, number of tables
_NAME = struct.Struct(">H")
_FREE = struct.Struct(">Q")
_NO_NAME = 0xFFFF  # the name length that marks the main (unnamed) table


class ObjectPool(Protocol):
    """The operations of one pool that the metadata needs (:class:`.rados_io.Pool`'s)."""

    def put_many(self, items: Sequence[tuple[str, bytes]], *, window: int = 16) -> None:
        """Write whole objects, pipelined (``window`` in flight); durable when it
        returns."""
        ...

    def read_many(self, names: Sequence[str]) -> list[bytes | None]:
        """Whole objects (None: no such object)."""
        ...

    def remove_many(self, names: Sequence[str]) -> int:
        """Remove objects (a missing one is no error); how many existed."""
        ...

    def read_versioned(self, name: str) -> tuple[bytes | None, int]:
        """The object and its version (None, 0 when it does not exist)."""
        ...

    def cas_write_version(self, name: str, expected_version: int | None, data: bytes | None,
                          *, omap_set: dict[str, bytes] | None = None,
                          omap_rm: Sequence[str] = ()) -> int | None:
        """Replace the object and change its omap in one atomic operation, only if its
        version is still ``expected_version`` (None: only if it does not exist). The new
        version, or None when the condition failed (nothing changed)."""
        ...

    def omap_get(self, name: str, *, start_after: str = "", prefix: str = "",
                 max_return: int = 1000) -> list[tuple[str, bytes]]:
        """Up to ``max_return`` omap entries after ``start_after`` starting with ``prefix``,
        in key order."""
        ...

    def try_lock(self, name: str, lockname: str, cookie: str, duration: float, *,
                 desc: str = "") -> bool:
        """Take (or renew, same cookie) an exclusive lock on ``name``; False if another
        cookie holds it. It expires after ``duration`` seconds unless renewed."""
        ...

    def unlock(self, name: str, lockname: str, cookie: str) -> bool: ...


class DictPool:
    """An :class:`ObjectPool` in this process's memory, with RADOS's semantics (object
    versions that change with every write, compound conditional writes, expiring locks).
    ``fail_after`` makes the N-th mutating call from now raise (crash tests)."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.omaps: dict[str, dict[str, bytes]] = {}
        self.locks: dict[tuple[str, str], tuple[str, float]] = {}
        self._mu = threading.Lock()
        self._version = 0
        self.fail_after: int | None = None

    def _mutating(self) -> None:
        if self.fail_after is not None:
            if self.fail_after <= 0:
                raise OSError(5, "injected pool failure")
            self.fail_after -= 1

    def put_many(self, items: Sequence[tuple[str, bytes]], *, window: int = 16) -> None:
        with self._mu:
            for name, data in items:
                self._mutating()
                self._version += 1
                self.objects[name] = (bytes(data), self._version)

    def read_many(self, names: Sequence[str]) -> list[bytes | None]:
        with self._mu:
            return [self.objects[n][0] if n in self.objects else None for n in names]

    def remove_many(self, names: Sequence[str]) -> int:
        with self._mu:
            found = 0
            for n in names:
                self._mutating()
                found += self.objects.pop(n, None) is not None
                self.omaps.pop(n, None)
            return found

    def read_versioned(self, name: str) -> tuple[bytes | None, int]:
        with self._mu:
            got = self.objects.get(name)
            return (None, 0) if got is None else got

    def cas_write_version(self, name: str, expected_version: int | None, data: bytes | None,
                          *, omap_set: dict[str, bytes] | None = None,
                          omap_rm: Sequence[str] = ()) -> int | None:
        with self._mu:
            self._mutating()
            got = self.objects.get(name)
            if (got is None) != (not expected_version) or \
                    (got is not None and got[1] != expected_version):
                return None
            self._version += 1
            self.objects[name] = (got[0] if data is None and got else bytes(data or b""),
                                  self._version)
            omap = self.omaps.setdefault(name, {})
            for k in omap_rm:
                omap.pop(k, None)
            omap.update(omap_set or {})
            return self._version

    def omap_get(self, name: str, *, start_after: str = "", prefix: str = "",
                 max_return: int = 1000) -> list[tuple[str, bytes]]:
        with self._mu:
            omap = self.omaps.get(name, {})
            got = sorted((k, v) for k, v in omap.items()
                         if k.startswith(prefix) and k > start_after)
            return got[:max_return]

    def try_lock(self, name: str, lockname: str, cookie: str, duration: float, *,
                 desc: str = "") -> bool:
        with self._mu:
            held = self.locks.get((name, lockname))
            now = time.monotonic()
            if held is not None and held[0] != cookie and held[1] > now:
                return False
            self.locks[(name, lockname)] = (cookie, now + duration)
            return True

    def unlock(self, name: str, lockname: str, cookie: str) -> bool:
        with self._mu:
            held = self.locks.get((name, lockname))
            if held is not None and held[0] == cookie:
                del self.locks[(name, lockname)]
                return True
            return False


def node_name(node_id: bytes) -> str:
    return NODE_PREFIX + node_id.hex()


class _Nodes:
    """The trees' :class:`~.cowtree.NodeSource`: nodes are objects of the pool."""

    def __init__(self, pool: ObjectPool) -> None:
        self.pool = pool

    def load_many(self, ids: Sequence[bytes]) -> list[bytes]:
        got = self.pool.read_many([node_name(i) for i in ids])
        out: list[bytes] = []
        for node_id, data in zip(ids, got, strict=True):
            if data is None:
                raise CorruptStore(f"metadata node {node_name(node_id)} is missing from the "
                                   f"pool (the store's metadata is damaged)")
            out.append(data)
        return out


def encode_root(seq: int, tables: dict[bytes | None, Tree]) -> bytes:
    """``kv.root``: magic, commit seq, then each table's name and tree meta; xxh3-64 last."""
    parts = [_HEAD.pack(ROOT_MAGIC, seq, len(tables))]
    for name in sorted(tables, key=lambda n: b"" if n is None else b"\x00" + n):
        meta = tables[name].to_meta()
        parts.append(_NAME.pack(_NO_NAME) if name is None else _NAME.pack(len(name)) + name)
        parts.append(_NAME.pack(len(meta)) + meta)
    body = b"".join(parts)
    return body + xxhash.xxh3_64_digest(body)


#: tables whose trees take another shape than cowtree's defaults: ``name -> (node size,
#: blob threshold)``. ``pages`` holds the page sets of patches (a few KiB each, nearly all
#: over the default 1 KiB threshold): kept inline in leaves of up to 128 KiB, a read of
#: neighbouring chunks' patches (a copy out, an export) fetches one leaf per ~10-30 of
#: them instead of one blob object each, and a flush writes that many fewer objects.
TABLE_SHAPES: dict[bytes | None, tuple[int, int]] = {b"pages": (128 << 10, 16 << 10)}


def new_tree(name: bytes | None, nodes: NodeSource, cache: NodeCache,
             meta: bytes | None = None) -> Tree:
    """Table ``name``'s tree (empty, or the one ``meta`` describes), in its shape."""
    size, threshold = TABLE_SHAPES.get(name, (NODE_SIZE, BLOB_THRESHOLD))
    if meta is None:
        return Tree(nodes, cache, node_size=size, blob_threshold=threshold)
    return Tree.from_meta(nodes, cache, meta, node_size=size, blob_threshold=threshold)


def decode_root(data: bytes, nodes: _Nodes, cache: NodeCache) -> tuple[int, dict[bytes | None,
                                                                               Tree]]:
    if len(data) < _HEAD.size + 8 or xxhash.xxh3_64_digest(data[:-8]) != data[-8:]:
        raise CorruptStore(f"the metadata root {ROOT} is damaged (checksum)")
    magic, seq, n = _HEAD.unpack_from(data)
    if magic != ROOT_MAGIC:
        raise FormatError(f"{ROOT} is not an ebsengine metadata root (magic {magic!r})")
    pos = _HEAD.size
    tables: dict[bytes | None, Tree] = {}
    try:
        for _ in range(n):
            (ln,) = _NAME.unpack_from(data, pos)
            pos += 2
            name: bytes | None = None
            if ln != _NO_NAME:
                name = data[pos:pos + ln]
                pos += ln
            (ml,) = _NAME.unpack_from(data, pos)
            pos += 2
            tables[name] = new_tree(name, nodes, cache, data[pos:pos + ml])
            pos += ml
    except struct.error as exc:
        raise CorruptStore(f"the metadata root {ROOT} is damaged ({exc})") from None
    if pos != len(data) - 8 or None not in tables:
        raise CorruptStore(f"the metadata root {ROOT} is damaged (layout)")
    return seq, tables


class _Snapshot(dict[bytes | None, Committed]):
    """The tables one transaction reads, and the commit they belong to (compared and
    hashed by identity: this process tracks which snapshots its transactions still hold)."""

    seq = 0
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return self is other


class RadosKv(MemoryBackend):
    """The metadata of a ``rados://`` store (see the module docstring).

    Transactions are :class:`~.memory.MemoryTxn`'s (an overlay per table over committed
    versions); what differs is where committed versions live and how a commit is published.
    """

    def __init__(self, pool: ObjectPool, *, path: str, map_size: int = DEFAULT_MAP_SIZE,
                 readonly: bool = False, grace: float = DEFAULT_GRACE,
                 refresh: float = DEFAULT_REFRESH, lock_seconds: float = LOCK_SECONDS,
                 lock_wait: float = LOCK_WAIT, cache_bytes: int = 64 << 20) -> None:
        super().__init__(None, map_size=map_size, readonly=readonly)
        self.path = path
        self.pool = pool
        self.grace = grace
        self.refresh_every = refresh
        self.lock_seconds = lock_seconds
        self.lock_wait = lock_wait
        self.cookie = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(6).hex()}"
        self._nodes = _Nodes(pool)
        self._cache = NodeCache(cache_bytes)
        self._mu = threading.Lock()  # guards _current, _version, _readers, _free
        self._current = _Snapshot({None: Tree(self._nodes, self._cache)})
        self._version: int | None = None  # kv.root's object version (None: no root yet)
        self._read_at = 0.0
        self._readers: weakref.WeakSet[_Snapshot] = weakref.WeakSet()
        #: freed-node records not yet removed: omap key -> (seq, time_ns, node names)
        self._free: dict[str, tuple[int, int, list[str]]] = {}
        self._free_seen: int | None = None  # the root seq at which _free was last listed
        self._locked = False
        self._locked_at = 0.0  # when this process took the writer lock (monotonic)
        self._removed = 0  # nodes the last commit removed (collect())
        self._load_root(force=True)
        if self._version is None and not readonly:
            self._create_root()

    # --- the root -------------------------------------------------------------------------

    def _load_root(self, *, force: bool = False, writer: bool = False) -> None:
        """Read ``kv.root`` (if ``force`` or older than ``refresh``) and adopt it if it is
        newer than what this process knows: a higher commit number, or the same one at a
        higher object version (a fence, see :meth:`fence_writers`; RADOS versions of one
        object only grow, so a reader's slow read never rolls the known version back; the
        writer's load under the lock is taken as it is). While this process holds the
        writer lock only the writer's own load (``writer``, when it takes the lock) may
        change them: the root it extends and the version its swap asserts must stay the
        ones it read under the lock, or a writer whose lock ran out would adopt a fence
        meant to stop it."""
        now = time.monotonic()
        if not force and now - self._read_at < self.refresh_every:
            return
        if self._locked and not writer:
            return
        data, version = self.pool.read_versioned(ROOT)
        if data is None:
            with self._mu:
                if self._locked and not writer:
                    return
                self._read_at = now
                self._version = None
            return
        if version == self._version:
            self._read_at = now
            return
        seq, tables = decode_root(data, self._nodes, self._cache)
        with self._mu:
            if self._locked and not writer:
                return
            self._read_at = now
            # the writer's own read under the lock is what its swap must assert, whatever
            # was known before (a wrong version must not stick: every swap would fail)
            newer = self._version is None or version > self._version
            if writer or seq > self._current.seq or (seq == self._current.seq and newer):
                if writer or force or seq > self._current.seq:
                    snap = _Snapshot(tables)
                    snap.seq = seq
                    self._current = snap
                self._version = version
            # else: a read that raced a newer commit or fence; keep the newer one

    def _create_root(self) -> None:
        snap = self._current
        tables = {n: t for n, t in snap.items() if isinstance(t, Tree)}
        version = self.pool.cas_write_version(ROOT, None, encode_root(0, tables))
        if version is None:
            self._load_root(force=True)  # another process created it first: use theirs
            return
        with self._mu:
            self._version = version

    # --- what the transactions ask of the backend ----------------------------------------

    def _snapshot(self) -> dict[bytes | None, Committed]:
        if not self._locked:
            self._load_root()
        with self._mu:
            snap = self._current
            self._readers.add(snap)
            return snap

    def _begin_write(self) -> None:
        super()._begin_write()  # this process's writers, one at a time
        try:
            deadline = time.monotonic() + self.lock_wait
            delay = 0.001
            while not self.pool.try_lock(LOCK, WRITER_LOCK, self.cookie, self.lock_seconds,
                                         desc="ebsengine metadata writer"):
                if time.monotonic() > deadline:
                    raise StoreLocked(f"{self.path}: another process has held the metadata "
                                      f"writer lock for over {self.lock_wait:g} s")
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            self._locked = True
            self._locked_at = time.monotonic()
            self._load_root(force=True, writer=True)  # the newest commit, ours to extend
        except BaseException:
            self._release_lock()
            super()._end_write()
            raise

    def _release_lock(self) -> None:
        if self._locked:
            self._locked = False
            try:
                self.pool.unlock(LOCK, WRITER_LOCK, self.cookie)
            except Exception:  # noqa: BLE001 - the lock expires by itself
                pass

    def _end_write(self) -> None:
        try:
            self._end_hooks()  # before the lock goes (MemoryBackend's own call is then idle)
        finally:
            try:
                self._release_lock()
            finally:
                super()._end_write()

    def _publish(self, base: dict[bytes | None, Committed],
                 over: dict[bytes | None, _Overlay]) -> None:
        assert isinstance(base, _Snapshot)
        if base is not self._current:
            raise CorruptStore("a write transaction began on a stale metadata root")
        tables: dict[bytes | None, Tree] = {n: t for n, t in base.items()
                                            if isinstance(t, Tree)}
        new_nodes: list[tuple[str, bytes]] = []
        freed: list[str] = []
        for name, ov in over.items():
            changes = [(k, None if ov.changes[k] is _DELETED else ov.changes[k])
                       for k in ov.keys]
            tree = tables.get(name) or new_tree(name, self._nodes, self._cache)
            new, nodes, gone = tree.apply(changes, _new_id)
            tables[name] = new
            new_nodes.extend((node_name(i), data) for i, data in nodes)
            freed.extend(node_name(i) for i in gone)
        now_ns = time.time_ns()
        removed = self._collect(now_ns)
        if not over and not removed:
            return  # nothing changed: no commit to publish
        seq = base.seq + 1
        if new_nodes:
            self.pool.put_many(new_nodes, window=NODE_WRITE_WINDOW)
        omap_set: dict[str, bytes] = {}
        if freed:
            omap_set[f"{FREE_PREFIX}{seq:016x}"] = _FREE.pack(now_ns) + \
                b"".join(bytes.fromhex(n[len(NODE_PREFIX):]) for n in freed)
        version = self.pool.cas_write_version(ROOT, self._version, encode_root(seq, tables),
                                              omap_set=omap_set, omap_rm=removed)
        if version is None:
            raise StoreLocked(f"{self.path}: the metadata root changed under this writer "
                              f"(its lock expired and another process committed); this "
                              f"transaction was not committed")
        snap = _Snapshot(tables)
        snap.seq = seq
        with self._mu:
            self._version = version
            self._current = snap
            self._read_at = time.monotonic()
            for key in removed:
                self._free.pop(key, None)
            if freed:
                self._free[f"{FREE_PREFIX}{seq:016x}"] = (seq, now_ns, freed)
            if self._free_seen == base.seq:
                self._free_seen = seq  # what we know of the records is still complete
            self._s.txnid = seq

    def fence_writers(self) -> None:
        """Inside a write transaction: make every write transaction that another process
        began before this one's lock unable to commit. A writer whose lock ran out under it
        (a stall longer than ``lock_seconds``) still means to publish with a compare-and-swap
        on ``kv.root``'s object version; this rewrites the root's omap key
        :data:`FENCE_KEY`, which changes that version, so such a commit fails (StoreLocked)
        instead of naming objects removed meanwhile. Call it before removing objects that
        only an uncommitted transaction could still mean to name (orphans, the objects of
        gc entries removed before the commit that drops them). StoreLocked, and nothing
        changed, if the root moved since this transaction took the lock (then this process's
        own lock ran out: it must remove nothing). Also StoreLocked if this transaction has
        held the lock for over half its duration: the lock could lapse before the removal
        that follows, and a removal cannot be fenced itself."""
        if not self._locked:
            raise RuntimeError("fence_writers() needs a write transaction")
        held = time.monotonic() - self._locked_at
        if held > self.lock_seconds / 2:
            raise StoreLocked(f"{self.path}: this writer has held the metadata writer lock "
                              f"for {held:.1f} s, too close to its {self.lock_seconds:g} s to "
                              f"remove objects safely; nothing was removed")
        version = self.pool.cas_write_version(
            ROOT, self._version, None, omap_set={FENCE_KEY: struct.pack("<Q", time.time_ns())})
        if version is None:
            raise StoreLocked(f"{self.path}: the metadata root changed under this writer "
                              f"(its lock expired and another process committed); nothing "
                              f"was removed")
        with self._mu:
            self._version = version

    def _collect(self, now_ns: int) -> list[str]:
        """Remove the nodes of freed-node records that are past their grace and that no
        read transaction of this process can see; their omap keys, for the root write.
        Runs under the writer lock."""
        if self._free_seen != self._current.seq:  # first time, or another process committed
            self._list_free()
        with self._mu:
            oldest = min((s.seq for s in self._readers), default=self._current.seq)
            due = [(key, names) for key, (seq, t, names) in sorted(self._free.items())
                   if seq <= oldest and now_ns - t >= self.grace * 1e9]
        if not due:
            return []
        names = [n for _, names in due for n in names]
        self.pool.remove_many(names)
        self._removed = len(names)
        return [key for key, _ in due]

    def _list_free(self) -> None:
        records: dict[str, tuple[int, int, list[str]]] = {}
        for key, value in self._omap(FREE_PREFIX):
            try:
                seq = int(key[len(FREE_PREFIX):], 16)
                (t,) = _FREE.unpack_from(value)
            except (ValueError, struct.error):
                raise CorruptStore(f"{ROOT}: damaged freed-node record {key!r}") from None
            ids = value[_FREE.size:]
            records[key] = (seq, t, [node_name(ids[i:i + ID_SIZE])
                                     for i in range(0, len(ids), ID_SIZE)])
        with self._mu:
            self._free = records
            self._free_seen = self._current.seq

    def _omap(self, prefix: str) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        while True:
            page = self.pool.omap_get(ROOT, start_after=out[-1][0] if out else "",
                                      prefix=prefix, max_return=1000)
            out.extend(page)
            if len(page) < 1000:
                return out

    def refresh(self) -> None:
        """Read the newest root now: the next read transaction sees every commit made
        before this call, by any process (one round trip)."""
        if not self._locked:
            self._load_root(force=True)

    # --- the rest of the protocol ---------------------------------------------------------

    def commit_id(self) -> int:
        if not self._locked:
            self._load_root(force=True)
        return self._current.seq

    def pending_free(self) -> int:
        """Nodes freed by commits and not yet removed (they wait for their grace)."""
        with self._mu:
            return sum(len(names) for _, _, names in self._free.values())

    def collect(self) -> int:
        """Remove what is due now (normally each commit does it); the number of nodes."""
        self._removed = 0
        with self.begin(write=True):
            pass  # an empty commit still removes what is due (_publish -> _collect)
        return self._removed

    def trees(self) -> dict[bytes | None, Tree]:
        """The committed trees, by table name (for fsck): the newest commit, or while this
        process writes, the one its write transaction extends."""
        self._load_root(force=True)  # (a no-op under the writer lock)
        return {n: t for n, t in self._current.items() if isinstance(t, Tree)}

    def check_structure(self) -> tuple[list[str], dict[str, int]]:
        """fsck's R1 (``layout.py``): every table's tree is sound (:func:`.cowtree.check_tree`:
        every node present, checksummed, ordered and counted). Problems, and statistics."""
        problems: list[str] = []
        nodes = 0
        for name, tree in sorted(self.trees().items(), key=lambda kv: kv[0] or b""):
            label = "the table of tables" if name is None else f"table {name.decode()!r}"
            problems.extend(f"{label}: {p}" for p in check_tree(tree))
            try:
                nodes += sum(1 for _ in tree.node_ids())
            except CorruptStore:
                pass  # already reported by check_tree
        self._list_free()
        return problems, {"metadata_nodes": nodes, "freed_nodes_pending": self.pending_free()}

    def sweep_orphan_nodes(self, grace: float | None = None) -> int:
        """Remove metadata nodes that no committed tree reaches and no freed-node record
        names, once older than ``grace`` (default: the store's): what commits that never
        reached their root write (a crash, a lost lock) left behind. Lists the pool without
        the writer lock, then removes in one write transaction that checks the candidates
        against the trees again if anything committed meanwhile, and fences off older
        writers (:meth:`fence_writers`: a stalled one may have written its nodes and still
        mean to publish them) before it removes. Returns how many it removed."""
        grace = self.grace if grace is None else grace
        stat = getattr(self.pool, "stat_many", None)
        list_objects = getattr(self.pool, "list_objects", None)
        if stat is None or list_objects is None:
            return 0
        keep = self._reachable()
        seq = self._current.seq  # what keep describes
        cutoff = time.time() - grace
        old: list[str] = []
        batch: list[str] = []

        def settle() -> None:
            old.extend(n for n, st in zip(batch, stat(batch), strict=True)
                       if st is not None and st.mtime <= cutoff)
            batch.clear()

        for name in list_objects(NODE_PREFIX):
            if name not in keep:
                batch.append(name)
                if len(batch) >= 1024:
                    settle()
        settle()
        if not old:
            return 0
        with self.begin(write=True):
            if self._current.seq != seq:  # commits since the listing (a fence changes none)
                keep = self._reachable()
            gone = [n for n in old if n not in keep]
            if not gone:
                return 0
            self.fence_writers()  # (refuses if the walk took the lock near its end)
            return int(self.pool.remove_many(gone))

    def _reachable(self) -> set[str]:
        """The nodes of every committed tree and of every freed-node record."""
        keep = {node_name(i) for tree in self.trees().values() for i in tree.node_ids()}
        self._list_free()
        with self._mu:
            keep.update(n for _, _, names in self._free.values() for n in names)
        return keep

    def close(self) -> None:
        self._release_lock()
        super().close()


def _new_id() -> bytes:
    return os.urandom(ID_SIZE)


LEASE_PREFIX = "lease."
LEASE_LOCK = "lease"
DEFAULT_LEASE = 30.0  # seconds: a dead front end's volumes are free again after this long
BLOCKLIST_SECONDS = 3600  # how long a fenced (taken-over) front end stays cut off


class RadosStore(RadosKv):
    """A ``rados://`` store: :class:`RadosKv` on the metadata pool of a connection, the
    chunks in its data pool (:class:`.rados_chunks.RadosChunks`), volume leases, and
    ownership on this host.

    Several processes ("front ends", on one host or many) may serve one store at once; each
    *volume* is written by one of them at a time. That one holds the volume's **lease**, the
    RADOS lock ``lease`` on object ``lease.<volume id>``: taken when the front end opens the
    volume for writing (or changes it: snapshot, resize, delete), renewed every third of its
    duration (``lease=`` in the URL, default 30 s), released when it is done with it. The
    object holds the holder's record (front end cookie, RADOS client address, host, pid). A
    lease that expired because its holder died or stalled is taken over by the next front end
    that asks; before using it, that front end **fences** the previous holder when the record
    names one: it adds the holder's client address to the cluster's blocklist
    (``BLOCKLIST_SECONDS``), so nothing a stalled holder still sends reaches the OSDs (RBD's
    exclusive-lock does the same). A holder that released its lease clears the record, and
    is not fenced.

    Ownership on this host is the lock file in the store's local directory
    (:func:`.store.local_dir`), exactly as for an LMDB store, so the CLI finds a local server
    and goes through its control socket; two front ends on one host need two local
    directories (``workdir=``)."""

    def __init__(self, conn: RadosConnection, *, path: str, workdir: str,
                 map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False,
                 grace: float = DEFAULT_GRACE, lease_seconds: float = DEFAULT_LEASE) -> None:
        self.conn = conn
        self.workdir = workdir
        self.owner: StoreLock | None = None
        self.lease_seconds = lease_seconds
        self._leases: dict[str, int] = {}  # volume id -> claims held by this engine
        self._lost: set[str] = set()
        self._retired: set[str] = set()  # deleted volumes: their lease object goes at release
        self._lease_mu = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._janitor: threading.Thread | None = None
        self._stop = threading.Event()
        super().__init__(conn.meta, path=path, map_size=map_size, readonly=readonly,
                         grace=grace, lock_seconds=min(LOCK_SECONDS, lease_seconds))
        if not readonly:
            os.makedirs(workdir, mode=0o700, exist_ok=True)
            self.owner = StoreLock.attach(workdir)

    def chunk_backend(self, store: Store) -> ChunkBackend:
        from .rados_chunks import RadosChunks

        def table(name: bytes, optional: bool = False) -> Table | None:
            try:
                return self.open_db(name, create=not self.readonly)
            except MemoryError_:
                if optional:  # a store from before packs, opened read-only: it has none
                    return None
                raise

        index, gc = table(b"rados_index"), table(b"rados_gc")
        assert index is not None and gc is not None
        chunks = RadosChunks(self.conn, store, index, gc, table(b"rados_packs", True),
                             table(b"rados_pack_gc", True), grace=self.grace,
                             pack_size=self.conn.url.pack_mib << 20,
                             fence=self.fence_writers)
        if not self.readonly and self._janitor is None:
            self._janitor = threading.Thread(target=self._sweeps, args=(chunks,),
                                             name="rados-janitor", daemon=True)
            self._janitor.start()
        return chunks

    def _sweeps(self, chunks: RadosChunks) -> None:
        """Remove what waited out its grace: deleted chunks' objects, freed metadata nodes;
        once per engine (after one grace), the orphans of commits that never happened."""
        period = min(max(self.grace / 4, 1.0), 30.0)
        started = time.monotonic()
        orphans_done = False
        while not self._stop.wait(period):
            try:
                while chunks.sweep() > 0 and not self._stop.is_set():
                    pass
                chunks.compact()  # a few packs a period: the sweeps above come first
                self.collect()
                if not orphans_done and time.monotonic() - started >= self.grace:
                    chunks.sweep_orphans()
                    self.sweep_orphan_nodes()
                    orphans_done = True
            except Exception as exc:  # noqa: BLE001 - the cluster may be away: next period
                log.warning("rados sweep of %s failed (will retry): %s", self.path, exc)

    def own(self, wait: float = 0.0) -> None:
        """Own the store on this host (the lock file of the local directory; see
        :mod:`.owner`). Across hosts there is no store-wide owner: volumes have leases."""
        if self.owner is not None:
            self.owner.own(wait)

    # --- volume leases ------------------------------------------------------------------

    def _record(self) -> bytes:
        return json.dumps({"cookie": self.cookie, "addr": self.conn.cluster.get_addrs(),
                           "host": os.uname().nodename, "pid": os.getpid(),
                           "cmdline": " ".join(sys.argv)[:200]}).encode()

    def lease(self, volume_id: str) -> None:
        """Take (or count one more claim on) the volume's lease; VolumeInUse naming the
        front end that holds it."""
        with self._lease_mu:
            if volume_id in self._leases and volume_id not in self._lost:
                self._leases[volume_id] += 1
                return
            name = LEASE_PREFIX + volume_id
            if not self.pool.try_lock(name, LEASE_LOCK, self.cookie, self.lease_seconds,
                                      desc="ebsengine volume lease"):
                raise VolumeInUse(f"Volume {volume_id} is being served by another front end "
                                  f"({_describe(self.pool.read_many([name])[0])}); it can "
                                  f"be changed there, or here once that front end releases "
                                  f"it or its lease ({self.lease_seconds:g} s) runs out")
            try:
                self._fence(name)
                self.pool.put_many([(name, self._record())])
            except BaseException:
                self.pool.unlock(name, LEASE_LOCK, self.cookie)
                raise
            self._leases[volume_id] = self._leases.get(volume_id, 0) + 1
            self._lost.discard(volume_id)
            self._start_renewer()

    def _fence(self, name: str) -> None:
        """The lease was free, but its record names a holder that did not release it: cut
        that client off before this one writes (see the class docstring)."""
        raw = self.pool.read_many([name])[0]
        if not raw:
            return
        try:
            prev = json.loads(raw)
        except ValueError:
            return
        if not isinstance(prev, dict) or prev.get("cookie") == self.cookie or \
                not prev.get("addr"):
            return
        log.warning("taking over the lease %s from %s: fencing it", name, _describe(raw))
        try:
            self.conn.cluster.blocklist_add(str(prev["addr"]), BLOCKLIST_SECONDS)
        except Exception as exc:  # noqa: BLE001 - any failure: refuse the takeover
            raise BackendUnavailable(
                f"cannot take over {name} from {_describe(raw)}: blocklisting that client "
                f"failed ({exc}); the client needs the monitor cap to blocklist "
                f"('allow command \"osd blocklist\"'). Nothing was changed") from None

    def release(self, volume_id: str) -> None:
        """Drop one claim; the last one clears the record and releases the lease."""
        with self._lease_mu:
            n = self._leases.get(volume_id, 0)
            if n > 1:
                self._leases[volume_id] = n - 1
                return
            self._leases.pop(volume_id, None)
            lost = volume_id in self._lost
            self._lost.discard(volume_id)
            gone = volume_id in self._retired
            self._retired.discard(volume_id)
        if n and not lost:
            name = LEASE_PREFIX + volume_id
            try:
                if gone:  # the volume was deleted: no lease object left behind
                    self.pool.remove_many([name])
                else:
                    self.pool.put_many([(name, b"")])
                    self.pool.unlock(name, LEASE_LOCK, self.cookie)
            except Exception as exc:  # noqa: BLE001 - it expires by itself
                log.warning("releasing %s: %s (it expires by itself)", name, exc)

    def retire(self, volume_id: str, *, holder_gone: bool = False) -> None:
        """The volume's deletion has committed: its lease object goes when the last claim
        on it is released (removing it takes its lock along); right away if none is held.
        ``holder_gone``: the caller knows the holder of a lock still on it is dead (a
        process of this host): the object goes, lock and all."""
        with self._lease_mu:
            if volume_id in self._leases and volume_id not in self._lost:
                self._retired.add(volume_id)
                return
        name = LEASE_PREFIX + volume_id
        try:
            if holder_gone or self.pool.try_lock(name, LEASE_LOCK, self.cookie,
                                                 self.lease_seconds,
                                                 desc="ebsengine volume lease"):
                self.pool.remove_many([name])
        except Exception as exc:  # noqa: BLE001 - a leftover object is harmless
            log.warning("removing the lease object of deleted %s: %s", volume_id, exc)

    def leased(self) -> list[str]:
        """The volumes whose leases this engine holds (and has not lost)."""
        with self._lease_mu:
            return sorted(v for v in self._leases if v not in self._lost)

    def _start_renewer(self) -> None:
        if self._renewer is None:
            self._renewer = threading.Thread(target=self._renew, name="rados-leases",
                                             daemon=True)
            self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lease_mu:
                held = [v for v in self._leases if v not in self._lost]
            for vid in held:
                try:
                    ok = self.pool.try_lock(LEASE_PREFIX + vid, LEASE_LOCK, self.cookie,
                                            self.lease_seconds,
                                            desc="ebsengine volume lease")
                except Exception as exc:  # noqa: BLE001 - the cluster is away: retry
                    log.warning("renewing the lease of %s: %s", vid, exc)
                    continue
                if not ok:
                    log.error("lost the lease of %s to another front end", vid)
                    with self._lease_mu:
                        self._lost.add(vid)

    def close(self) -> None:
        try:
            self._stop.set()
            if self._janitor is not None:
                self._janitor.join(30)
            if self._renewer is not None:
                self._renewer.join(5)
            with self._lease_mu:
                held = list(self._leases)
                self._leases = dict.fromkeys(held, 1)
            for vid in held:
                self.release(vid)
            super().close()
        finally:
            if self.owner is not None:
                self.owner.release()
            self.conn.close()


def _describe(raw: bytes | None) -> str:
    try:
        who = json.loads(raw or b"")
        return f"process {who.get('pid')} on {who.get('host')} ({who.get('cmdline', '')})"
    except (ValueError, AttributeError):
        return "another front end"


def open_rados(url: str, *, map_size: int = DEFAULT_MAP_SIZE,
               readonly: bool = False) -> RadosStore:
    """The backend of store URL ``rados://PREFIX?...`` (see :mod:`.rados_io`)."""
    from .rados_io import connect, parse_url, workdir
    parsed = parse_url(url)
    conn = connect(parsed, create=not readonly)
    try:
        return RadosStore(conn, path=url, workdir=workdir(url), map_size=map_size,
                          readonly=readonly, grace=parsed.grace,
                          lease_seconds=parsed.lease)
    except BaseException:
        conn.close()
        raise


__all__ = ["DictPool", "MemoryError_", "ObjectPool", "RadosKv", "RadosStore", "decode_root",
           "encode_root", "node_name", "open_rados"]
