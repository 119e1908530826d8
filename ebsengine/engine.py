"""The engine facade: volumes, snapshots and their AWS-style rules over the chunk store.

Every public method that changes records is one unit of work: it validates first, then
changes the store in one LMDB write transaction, so a refused request leaves the store
exactly as it was (DESIGN invariant 7). Services (NBD, the HTTP API, the CLI) call only this
module.

Several changes become one unit of work with :meth:`Engine.transaction`::

    with eng.transaction(flush=[a.id, b.id]) as tx:
        s1 = eng.create_snapshot(a.id, tx=tx)
        s2 = eng.create_snapshot(b.id, tx=tx)
        eng.service_put("app", "pair", [s1.id, s2.id], tx=tx)

Every record method (create/modify/delete/attach/detach volumes, create/copy/start/complete/
fail/delete snapshots, tags, ``service_get/put/items``, ``get_volume``/``get_snapshot``)
takes ``tx=``: given, it runs inside that unit (and sees its uncommitted changes); omitted,
it is a unit of its own. A unit is one LMDB write transaction: it commits when the ``with``
block ends, and an exception (a refused step included) aborts all of it, leaving the store
byte-identical. While it is open it holds the store's write lock, so no other change, flush
included, commits in between: the unit sees and freezes one state.

Snapshots in a unit: a volume's acknowledged writes may still sit in its write-back cache,
and a cache can only commit in a transaction of its own. So the volumes to snapshot are
named up front (``flush=``): their caches are flushed just before the unit begins, and
:meth:`Engine.create_snapshot` with ``tx=`` refuses a volume not named. Each snapshot then
holds every write acknowledged before :meth:`Engine.transaction` was called and is a point
in time of its volume (all writes acknowledged before some instant while the unit opened,
none after); snapshots of several volumes freeze in the one commit, so they hold together
every write whose flush completed before it: crash-consistent with each other.

A unit belongs to the thread that opened it. On that thread, engine calls without ``tx=``
and device I/O would need a second write transaction and are refused (no nesting).
Bulk transfers (``import_image``, ``export``, ``put_snapshot_block``) are not part of units.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

from . import layout as L
from .block.context import BlockContext
from .block.device import Device
from .block.folder import Folder
from .block.maps import BlockMaps, Lineage
from .block.volume import SnapshotView, VolumeCache
from .errors import (AttachmentNotFound, EbsError, IncorrectState, InvalidBlock, InvalidParameter,
                     InvalidParameterCombination, InvalidVolumeSize, MissingParameter,
                     SnapshotNotFound, UnrelatedSnapshots, VolumeInUse, VolumeNotFound)
from .model import FsckReport, Snapshot, Usage, Volume
from .rules import (DEFAULT_AVAILABILITY_ZONE, MAX_SNAPSHOT_GIB, check_description, check_id,
                    check_int, check_tags, modified_spec, new_id, validate_volume_spec)
from .storage.base import DEFAULT_MAP_SIZE, KvBackend, Txn
from .storage.chunks import ChunkStore
from .storage.envelope import DEFAULT_ZSTD_LEVEL, decode_chunk, encode_batch, encode_chunk
from .storage.store import Store

DEFAULT_DIRTY_LIMIT = 256 * 1024 * 1024
EXPORT_BATCH = 256  # chunks (16 MiB) per read transaction of an export
EXPORT_ATTEMPTS = 3
R = TypeVar("R", Volume, Snapshot)


def default_store_path() -> str:
    """``$EBSENGINE_STORE``, else ``$XDG_DATA_HOME/ebsengine`` (``~/.local/share/ebsengine``)."""
    env = os.environ.get("EBSENGINE_STORE")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(base, "ebsengine")


class Transaction:
    """One unit of work of an :class:`Engine` (see the module docstring): made by
    :meth:`Engine.transaction`, passed as ``tx=`` to the engine's record methods.

    ``flushed``: the volumes whose caches were flushed before the unit began (the ones
    :meth:`Engine.create_snapshot` may snapshot in it). ``now``: the unit's time, the start
    time of every snapshot it takes (one point in time, one timestamp).
    """

    def __init__(self, engine: Engine, txn: Txn, flushed: frozenset[str]) -> None:
        self._engine = engine
        self._txn = txn
        self.flushed = flushed
        self.now = time.time()
        self._thread = threading.get_ident()
        self._open = True
        self._grows = False   # something was added: the commit must leave the deletion reserve
        self._freed = False   # something was deleted: free space may need to be made usable
        self._after: list[Callable[[], None]] = []

    @property
    def open(self) -> bool:
        """True until the unit has committed or aborted."""
        return self._open

    def _use(self, engine: Engine) -> Txn:
        if engine is not self._engine:
            raise InvalidParameter("This unit of work belongs to another engine.")
        if not self._open:
            raise IncorrectState("This unit of work has already ended.")
        if threading.get_ident() != self._thread:
            raise IncorrectState("A unit of work can only be used on the thread that opened it.")
        return self._txn


class Engine:
    """An ebsengine store opened for use. Thread-safe; a context manager.

    Args:
        path: store directory (created if missing); default :func:`default_store_path`.
            ``"memory://"`` is a fresh in-memory store (nothing durable; for tests).
        map_size: LMDB map size in bytes: the most the store may hold.
        dirty_limit: bytes of unflushed writes per volume before a writer flushes itself.
        zstd_level: compression level for a new store (an existing store keeps its own).
        backend: an opened storage backend (:class:`ebsengine.storage.base.KvBackend`, e.g.
            ``ebsengine.storage.memory.MemoryBackend()``) instead of ``path``; the engine
            closes it with itself.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 map_size: int = DEFAULT_MAP_SIZE, dirty_limit: int = DEFAULT_DIRTY_LIMIT,
                 zstd_level: int = DEFAULT_ZSTD_LEVEL, readonly: bool = False,
                 backend: KvBackend | None = None) -> None:
        if backend is not None:
            if path is not None:
                raise InvalidParameterCombination("give a store path or a backend, not both")
            self._store = Store(backend=backend, zstd_level=zstd_level)
            self.path = self._store.path
        else:
            self.path = os.fspath(path) if path is not None else default_store_path()
            self._store = Store(self.path, map_size=map_size, readonly=readonly,
                                zstd_level=zstd_level)
        self._chunks = ChunkStore(self._store)
        self._maps = BlockMaps(self._store, self._chunks)
        self._pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)),
                                        thread_name_prefix="ebsengine-zstd")
        self._dirty_limit = dirty_limit
        self._ctx = BlockContext(self._store, self._chunks, self._maps, self._pool,
                                 lambda: self._closed)
        self._folder = Folder(self._ctx)
        if not readonly:
            self._folder.start()
        self._caches: dict[str, VolumeCache] = {}
        self._lock = threading.RLock()
        self._units = threading.local()  # .current: the unit open on this thread, if any
        self._closed = False
        if not readonly:
            self._recover_imports()

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Flush every open volume and close the store."""
        if self._closed:
            return
        error: BaseException | None = None
        with self._lock:
            for cache in list(self._caches.values()):
                if not cache.deleted:
                    try:
                        cache.flush()
                    except Exception as exc:  # close the store anyway; report the first
                        error = error or exc
            self._closed = True
        self._folder.stop()
        self._pool.shutdown(wait=True)
        self._store.close()
        if error is not None:
            raise error

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- units of work ----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, flush: Iterable[str] = ()) -> Iterator[Transaction]:
        """Open a unit of work: every engine call given ``tx=`` the yielded
        :class:`Transaction` commits with the others when the block ends, or not at all.

        ``flush``: ids of volumes to snapshot in the unit; their caches are flushed first (not
        part of the unit: it commits writes already acknowledged), see the module docstring.
        Raises StoreFull at the end when the unit would not leave the deletion reserve (a
        unit that only deletes may use it), then nothing of it is stored.
        """
        if getattr(self._units, "current", None) is not None:
            raise IncorrectState("A unit of work is already open on this thread; pass tx= to "
                                 "join it instead of opening another.")
        names = list(dict.fromkeys(flush))
        for vid in names:
            check_id(vid, "vol")
        for vid in sorted(names):
            self.flush_volume(vid)
        # Lock order everywhere: engine lock, then the store's write lock.
        with self._lock:
            with self._store.write(freeing=True) as txn:
                tx = Transaction(self, txn, frozenset(names))
                self._units.current = tx
                try:
                    yield tx
                    if tx._grows:
                        self._store._check_room(txn)
                finally:
                    self._units.current = None
                    tx._open = False
            if tx._freed:
                self._store.after_free()
            for fn in tx._after:
                fn()

    @contextlib.contextmanager
    def _unit(self, tx: Transaction | None, *, grows: bool = False,
              frees: bool = False) -> Iterator[tuple[Transaction, Txn]]:
        """The unit a record method runs in: the caller's ``tx``, else one of its own."""
        if tx is None:
            with self.transaction() as own:
                own._grows |= grows
                own._freed |= frees
                yield own, own._txn
        else:
            txn = tx._use(self)
            tx._grows |= grows
            tx._freed |= frees
            yield tx, txn

    def _no_unit(self, what: str) -> None:
        """Refuse work that needs a write transaction of its own on a thread inside a unit."""
        if getattr(self._units, "current", None) is not None:
            raise IncorrectState(f"{what} cannot run inside a unit of work (it needs a "
                                 f"transaction of its own): do it before or after the unit.")

    @contextlib.contextmanager
    def _reading(self, tx: Transaction | None) -> Iterator[Txn]:
        """A read transaction, or the unit's own (which sees its uncommitted changes)."""
        if tx is not None:
            yield tx._use(self)
        else:
            with self._store.read() as txn:
                yield txn

    # --- records ----------------------------------------------------------------------------

    def _vol_rec(self, txn: Txn, volume_id: str) -> dict[str, Any]:
        check_id(volume_id, "vol")
        raw = txn.get(volume_id.encode(), db=self._store.db["volumes"])
        if raw is None:
            raise VolumeNotFound(f"The volume '{volume_id}' does not exist.")
        return json.loads(raw)

    def _snap_rec(self, txn: Txn, snap_id: str) -> dict[str, Any]:
        check_id(snap_id, "snap")
        raw = txn.get(snap_id.encode(), db=self._store.db["snapshots"])
        if raw is None:
            raise SnapshotNotFound(f"The snapshot '{snap_id}' does not exist.")
        return json.loads(raw)

    def _put_vol(self, txn: Txn, rec: dict[str, Any]) -> None:
        txn.put(rec["id"].encode(), json.dumps(rec, sort_keys=True).encode(),
                db=self._store.db["volumes"])

    def _put_snap(self, txn: Txn, rec: dict[str, Any]) -> None:
        """Write a snapshot record and its ``snaps_by_volume`` entry (same transaction)."""
        txn.put(rec["id"].encode(), json.dumps(rec, sort_keys=True).encode(),
                db=self._store.db["snapshots"])
        if rec.get("volume_id"):
            txn.put(L.snap_volume_key(rec["volume_id"], rec["id"]), b"",
                    db=self._store.db["snaps_by_volume"])

    def _delete_snap(self, txn: Txn, rec: dict[str, Any]) -> None:
        txn.delete(rec["id"].encode(), db=self._store.db["snapshots"])
        if rec.get("volume_id"):
            txn.delete(L.snap_volume_key(rec["volume_id"], rec["id"]),
                       db=self._store.db["snaps_by_volume"])

    def _page(self, db: str, make: Callable[[dict[str, Any]], R], after: str | None,
              limit: int | None, keep: Callable[[R], bool] | None,
              prefix: bytes | None = None) -> tuple[list[R], str | None]:
        """Records of ``db`` (as ``make(record)``) in id order after id ``after``
        (exclusive), at most ``limit`` of them for which ``keep`` holds; with ``prefix``,
        the ids come from the ``snaps_by_volume`` entries under it, not a scan of ``db``.

        Returns the page and, when a further match exists, the id to resume after. Reads in
        short read transactions of at most ``limit + 1`` records and stops once the page is
        full and one more match is seen: a page costs O(page + records ``keep`` rejects),
        never O(all records). ``keep`` runs outside any transaction.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise InvalidParameter(f"A page holds at least one item, not {limit!r}")
        out: list[R] = []
        want = None if limit is None else limit + 1  # one more than a page: is there more?
        records = self._store.db[db]
        scanned = records if prefix is None else self._store.db["snaps_by_volume"]
        pos = (prefix or b"") + (b"" if after is None else after.encode())
        exclusive = after is not None  # ``pos`` itself was returned already
        while want is None or len(out) < want:
            step = 512 if want is None else max(16, want - len(out))
            batch: list[R] = []
            with self._store.read() as txn:
                cur = txn.cursor(db=scanned)
                ok = cur.set_range(pos)
                if ok and exclusive and cur.key() == pos:
                    ok = cur.next()
                while ok and len(batch) < step:
                    key = bytes(cur.key())
                    if prefix is None:
                        batch.append(make(json.loads(bytes(cur.value()))))
                    elif not key.startswith(prefix):
                        ok = False
                        break
                    else:
                        raw = txn.get(key[len(prefix):], db=records)
                        if raw is not None:
                            batch.append(make(json.loads(bytes(raw))))
                    ok = cur.next()
                if ok:
                    pos, exclusive = bytes(cur.key()), False  # the first key not read yet
            for rec in batch:
                if keep is None or keep(rec):
                    out.append(rec)
                    if want is not None and len(out) == want:
                        break
            if not ok:
                break
        if limit is None or len(out) <= limit:
            return out, None
        out = out[:limit]
        return out, out[-1].id

    def _completed(self, txn: Txn, snap_id: str) -> dict[str, Any]:
        rec = self._snap_rec(txn, snap_id)
        if rec["state"] != "completed":
            raise IncorrectState(f"Snapshot '{snap_id}' is {rec['state']}, not completed.")
        return rec

    # --- volumes ----------------------------------------------------------------------------

    def create_volume(self, size_gib: int | None = None, volume_type: str = "gp2", *,
                      snapshot_id: str | None = None, iops: int | None = None,
                      throughput: int | None = None, availability_zone: str | None = None,
                      multi_attach_enabled: bool = False, encrypted: bool = False,
                      kms_key_id: str | None = None,
                      tags: dict[str, str] | None = None,
                      tx: Transaction | None = None) -> Volume:
        """Create an empty volume, or one from a snapshot in O(1) (data read through lazily).

        ``availability_zone``: the zone to record (default: the rules'
        ``DEFAULT_AVAILABILITY_ZONE``). Raises MissingParameter (no size and no snapshot),
        InvalidParameter (size/type/IOPS limits), InvalidVolumeSize (below the snapshot's),
        SnapshotNotFound, IncorrectState.
        """
        if size_gib is None and snapshot_id is None:
            raise MissingParameter("The request must contain the parameter size or snapshotId")
        check_int("size", size_gib)
        tags = check_tags(tags)
        if kms_key_id is not None and not encrypted:
            raise MissingParameter("The parameter KmsKeyId requires the parameter Encrypted "
                                   "to be set.")
        if availability_zone is None:
            availability_zone = DEFAULT_AVAILABILITY_ZONE
        elif not isinstance(availability_zone, str) or not availability_zone:
            raise InvalidParameter(f"Invalid availability zone: {availability_zone!r}")
        vid = new_id("vol")
        with self._unit(tx, grows=True) as (_, txn):
            base = None
            allocated = 0
            if snapshot_id is not None:
                snap = self._completed(txn, snapshot_id)
                if size_gib is None:
                    size_gib = snap["volume_size_gib"]
                if size_gib < snap["volume_size_gib"]:
                    raise InvalidVolumeSize(
                        f"Volume of size {size_gib}GiB is smaller than snapshot "
                        f"'{snapshot_id}', expect size >= {snap['volume_size_gib']}GiB")
                base = (snap["lineage"], snap["gen"])
                allocated = snap["full_size_bytes"] // L.CHUNK_SIZE
                if snap["encrypted"]:
                    encrypted = True
                    kms_key_id = kms_key_id or snap["kms_key_id"]
            assert size_gib is not None
            iops, throughput = validate_volume_spec(volume_type, size_gib, iops, throughput,
                                                    multi_attach_enabled)
            lin = self._maps.create(txn, vid, base, allocated)
            vol = Volume(id=vid, size_gib=size_gib, volume_type=volume_type, state="available",
                         create_time=time.time(), availability_zone=availability_zone,
                         iops=iops, throughput=throughput, snapshot_id=snapshot_id,
                         encrypted=bool(encrypted),
                         kms_key_id=kms_key_id if encrypted else None,
                         multi_attach_enabled=multi_attach_enabled, tags=tags)
            self._put_vol(txn, {**vol.to_dict(), "lineage": lin.id})
        return vol

    def get_volume(self, volume_id: str, *, tx: Transaction | None = None) -> Volume:
        with self._reading(tx) as txn:
            return Volume.from_dict(self._vol_rec(txn, volume_id))

    def list_volumes(self) -> list[Volume]:
        with self._store.read() as txn:
            return [Volume.from_dict(json.loads(v)) for _, v in
                    txn.cursor(db=self._store.db["volumes"])]

    def page_volumes(self, after: str | None = None, limit: int | None = None, *,
                     where: Callable[[Volume], bool] | None = None
                     ) -> tuple[list[Volume], str | None]:
        """One page of volumes in id order: up to ``limit`` (every one with None) of those
        after id ``after`` (exclusive) for which ``where`` holds. Returns the page and the
        ``after`` of the next page, or None when nothing follows. Costs O(page) plus the
        volumes ``where`` rejects on the way, not O(all volumes)."""
        return self._page("volumes", Volume.from_dict, after, limit, where)

    def delete_volume(self, volume_id: str, *, tx: Transaction | None = None) -> None:
        """Delete a volume and free what only it referenced. Its snapshots stay.

        Raises VolumeInUse if it is attached or open on a device of this engine.
        """
        with self._unit(tx, frees=True) as (unit, txn):
            # the unit holds the engine lock: no device can open the volume meanwhile
            cache = self._caches.get(volume_id)
            if cache is not None and cache.users > 0:
                raise VolumeInUse(f"Volume {volume_id} is open ({cache.users} device(s)).")
            rec = self._vol_rec(txn, volume_id)
            if self._importing(rec):
                raise IncorrectState(f"Volume {volume_id} is being imported into.")
            if rec.get("staging") is not None:  # left by a crashed import: drop it too
                self._drop_import(txn, rec, rec["staging"], delete=False)
            if rec["attachments"]:
                raise VolumeInUse(f"Volume {volume_id} is currently attached to "
                                  f"{rec['attachments'][0]['instance_id']}")
            lin = self._maps.load(txn, rec["lineage"])
            head = lin.head
            assert head is not None
            lin.head = None
            lin.owner = None
            lin.allocated = 0
            self._maps.drop_point(txn, lin, head)
            txn.delete(volume_id.encode(), db=self._store.db["volumes"])

            def forget() -> None:  # once committed: the cache's writes have nowhere to go
                if cache is not None:
                    with cache.lock:
                        cache.drop()
                    self._caches.pop(volume_id, None)

            unit._after.append(forget)

    def modify_volume(self, volume_id: str, size_gib: int | None = None,
                      volume_type: str | None = None, iops: int | None = None,
                      throughput: int | None = None,
                      multi_attach_enabled: bool | None = None, *,
                      tx: Transaction | None = None) -> Volume:
        """Elastic Volumes: grow, change type/IOPS/throughput. Shrinking is refused
        (InvalidVolumeSize)."""
        with self._unit(tx, grows=True) as (unit, txn):
            rec = self._vol_rec(txn, volume_id)
            new_size = rec["size_gib"] if size_gib is None else size_gib
            if isinstance(new_size, bool) or not isinstance(new_size, int):
                raise InvalidParameter(f"Size must be a whole number of GiB, not {new_size!r}")
            if new_size < rec["size_gib"]:
                raise InvalidVolumeSize(
                    f"New size cannot be smaller than existing size ({new_size}GiB < "
                    f"{rec['size_gib']}GiB).")
            new_type, new_iops, new_tp = modified_spec(
                (rec["volume_type"], rec["iops"], rec["throughput"]), volume_type, iops,
                throughput)
            multi = rec["multi_attach_enabled"] if multi_attach_enabled is None \
                else multi_attach_enabled
            new_iops, new_tp = validate_volume_spec(new_type, new_size, new_iops, new_tp, multi)
            rec.update(size_gib=new_size, volume_type=new_type, iops=new_iops,
                       throughput=new_tp, multi_attach_enabled=multi)
            self._put_vol(txn, rec)

            def resize() -> None:  # once committed
                cache = self._caches.get(volume_id)
                if cache is not None:
                    cache.size = new_size * L.GIB

            unit._after.append(resize)
        return Volume.from_dict(rec)

    def attach_volume(self, volume_id: str, instance_id: str, device: str,
                      delete_on_termination: bool = False, *,
                      tx: Transaction | None = None) -> Volume:
        """Record an attachment (the instance layer checks the instance itself)."""
        with self._unit(tx, grows=True) as (_, txn):
            rec = self._vol_rec(txn, volume_id)
            atts = rec["attachments"]
            if atts and not rec["multi_attach_enabled"]:
                raise VolumeInUse(f"{volume_id} is already attached to an instance")
            if any(a["instance_id"] == instance_id for a in atts):
                raise VolumeInUse(f"{volume_id} is already attached to {instance_id}")
            atts.append({"instance_id": instance_id, "device": device, "state": "attached",
                         "attach_time": time.time(),
                         "delete_on_termination": bool(delete_on_termination)})
            rec["state"] = "in-use"
            self._put_vol(txn, rec)
        return Volume.from_dict(rec)

    def detach_volume(self, volume_id: str, instance_id: str | None = None, *,
                      tx: Transaction | None = None) -> Volume:
        """Remove an attachment (of ``instance_id``, or every one when None)."""
        with self._unit(tx, grows=True) as (_, txn):
            rec = self._vol_rec(txn, volume_id)
            atts = rec["attachments"]
            if not atts:
                raise IncorrectState(f"Volume '{volume_id}' is in the 'available' state.")
            keep = [a for a in atts if instance_id is not None and a["instance_id"] != instance_id]
            if len(keep) == len(atts):
                raise AttachmentNotFound(
                    f"The volume {volume_id} is not attached to instance {instance_id}")
            rec["attachments"] = keep
            rec["state"] = "in-use" if keep else "available"
            self._put_vol(txn, rec)
        return Volume.from_dict(rec)

    # --- devices ----------------------------------------------------------------------------

    def _cache(self, volume_id: str) -> VolumeCache:
        self._store._live()
        with self._lock:
            cache = self._caches.get(volume_id)
            if cache is None:
                with self._store.read() as txn:
                    rec = self._vol_rec(txn, volume_id)
                if rec["state"] in ("creating", "error") or rec.get("staging") is not None:
                    raise IncorrectState(f"Volume '{volume_id}' is {rec['state']}"
                                         + (" (being imported into)" if rec.get("staging")
                                            else "") + "; it cannot be opened now.")
                cache = VolumeCache(self._ctx, volume_id, rec["lineage"], rec["size_gib"] * L.GIB,
                                    self._dirty_limit)
                self._caches[volume_id] = cache
            return cache

    def open_volume(self, volume_id: str) -> Device:
        """A read-write device on the volume, sharing one cache with every other device of it
        in this engine."""
        with self._lock:
            cache = self._cache(volume_id)
            cache.users += 1

        def release() -> None:
            with self._lock:
                cache.users -= 1

        return Device(cache, release)

    def open_snapshot(self, snapshot_id: str) -> Device:
        """A read-only device on a completed snapshot, served from the snapshot (no copy)."""
        with self._store.read() as txn:
            rec = self._completed(txn, snapshot_id)
        view = SnapshotView(self._ctx, snapshot_id, rec["lineage"], rec["gen"],
                            rec["volume_size_gib"] * L.GIB)
        return Device(view, lambda: None)

    def flush_volume(self, volume_id: str) -> None:
        """Commit the volume's acknowledged writes (durable on return)."""
        self._no_unit("flush_volume")
        with self._lock:
            cache = self._caches.get(volume_id)
        if cache is not None:
            cache.flush()

    # --- snapshots --------------------------------------------------------------------------

    def create_snapshot(self, volume_id: str, description: str = "",
                        tags: dict[str, str] | None = None, *,
                        tx: Transaction | None = None) -> Snapshot:
        """Snapshot a volume at this point in time: every write acknowledged before the call,
        none after. The first snapshot is full; later ones record only what changed since
        the previous one: O(chunks changed).

        Alone, the volume's cache is flushed and the snapshot frozen in that one commit. In a
        unit (``tx=``) the volume must be one the unit flushed (``transaction(flush=...)``),
        else IncorrectState: see the module docstring.
        """
        tags = check_tags(tags)
        check_description(description)
        sid = new_id("snap")
        if tx is not None:
            with self._unit(tx, grows=True) as (unit, txn):
                if volume_id not in unit.flushed:
                    raise IncorrectState(
                        f"Volume {volume_id} was not flushed for this unit of work: name it in "
                        f"transaction(flush=...) so its snapshot holds every acknowledged write.")
                rec = self._vol_rec(txn, volume_id)
                lin = self._maps.load(txn, rec["lineage"])
                snap = self._freeze(txn, lin, rec, sid, description, tags, unit.now)
                self._maps.save(txn, lin)
                return snap
        self._no_unit("create_snapshot without tx=")
        out: list[Snapshot] = []

        def freeze(txn: Txn, lin: object) -> None:
            assert isinstance(lin, Lineage)
            out.append(self._freeze(txn, lin, self._vol_rec(txn, volume_id), sid,
                                    description, tags, time.time()))

        with self._store.read() as txn:
            self._vol_rec(txn, volume_id)
        self._cache(volume_id).flush(in_txn=freeze)  # the flush's commit holds the freeze
        return out[0]

    def _freeze(self, txn: Txn, lin: Lineage, rec: dict[str, Any], sid: str,
                description: str, tags: dict[str, str], now: float) -> Snapshot:
        """Make the volume's head generation snapshot ``sid`` (the caller saves ``lin``)."""
        assert lin.head is not None
        gen = lin.head
        prev = max((g for g in lin.points if g < gen), default=None)
        parent: str | None
        if prev is not None:
            parent = lin.points[prev]
        else:
            parent = rec["snapshot_id"] if lin.base is not None else None
        snap = Snapshot(id=sid, volume_id=rec["id"], volume_size_gib=rec["size_gib"],
                        state="completed", start_time=now, progress=100,
                        completion_time=now, description=description,
                        encrypted=rec["encrypted"], kms_key_id=rec["kms_key_id"],
                        parent_id=parent, full_size_bytes=lin.allocated * L.CHUNK_SIZE,
                        tags=tags)
        lin.points[gen] = sid
        lin.head = gen + 1
        self._put_snap(txn, {**snap.to_dict(), "lineage": lin.id, "gen": gen})
        return snap

    def get_snapshot(self, snapshot_id: str, *, tx: Transaction | None = None) -> Snapshot:
        with self._reading(tx) as txn:
            return Snapshot.from_dict(self._snap_rec(txn, snapshot_id))

    def list_snapshots(self, volume_id: str | None = None) -> list[Snapshot]:
        """Every snapshot, or those of one volume (an index lookup: O(its snapshots)),
        oldest first."""
        if volume_id is None:
            with self._store.read() as txn:
                snaps = [Snapshot.from_dict(json.loads(v)) for _, v in
                         txn.cursor(db=self._store.db["snapshots"])]
        else:
            snaps, _ = self.page_snapshots(volume_id=volume_id)
        return sorted(snaps, key=lambda s: (s.start_time, s.id))

    def page_snapshots(self, after: str | None = None, limit: int | None = None, *,
                       volume_id: str | None = None,
                       where: Callable[[Snapshot], bool] | None = None
                       ) -> tuple[list[Snapshot], str | None]:
        """One page of snapshots in id order, like :meth:`page_volumes`; with ``volume_id``
        only that volume's (read from the ``snaps_by_volume`` index: O(page))."""
        prefix = None if volume_id is None else L.snap_volume_prefix(volume_id)
        return self._page("snapshots", Snapshot.from_dict, after, limit, where, prefix)

    def delete_snapshot(self, snapshot_id: str, *, tx: Transaction | None = None) -> None:
        """Delete a snapshot. Its still-needed entries merge into its successor, so no other
        snapshot or volume changes; chunks nobody references any more are freed. Costs
        O(entries the snapshot recorded). A pending snapshot is cancelled."""
        with self._unit(tx, frees=True) as (_, txn):
            rec = self._snap_rec(txn, snapshot_id)
            if rec["state"] == "pending":
                self._abandon_pending(txn, rec)
            elif rec["state"] == "completed":
                lin = self._maps.load(txn, rec["lineage"])
                del lin.points[rec["gen"]]
                self._maps.drop_point(txn, lin, rec["gen"])
            self._delete_snap(txn, rec)

    def copy_snapshot(self, snapshot_id: str, description: str = "",
                      tags: dict[str, str] | None = None, *,
                      tx: Transaction | None = None) -> Snapshot:
        """A new snapshot with the same content, sharing every chunk: O(1)."""
        tags = check_tags(tags)
        check_description(description)
        sid = new_id("snap")
        with self._unit(tx, grows=True) as (_, txn):
            src = self._completed(txn, snapshot_id)
            lin = self._maps.create(txn, None, (src["lineage"], src["gen"]))
            lin.head = None
            lin.points[1] = sid
            self._maps.save(txn, lin)
            now = time.time()
            snap = Snapshot(id=sid, volume_id=src["volume_id"],
                            volume_size_gib=src["volume_size_gib"], state="completed",
                            start_time=now, completion_time=now,
                            description=description or src["description"],
                            encrypted=src["encrypted"], kms_key_id=src["kms_key_id"],
                            parent_id=None, full_size_bytes=src["full_size_bytes"], tags=tags)
            self._put_snap(txn, {**snap.to_dict(), "lineage": lin.id, "gen": 1})
        return snap

    # --- EBS direct API units (512 KiB blocks) ---------------------------------------------

    def _point(self, txn: Txn, snapshot_id: str) -> list[tuple[int, int]]:
        rec = self._completed(txn, snapshot_id)
        return self._maps.chain(txn, (rec["lineage"], rec["gen"]))

    def list_snapshot_blocks(self, snapshot_id: str, start_block: int = 0) -> list[int]:
        """Indexes of the 512 KiB blocks holding data in a snapshot, ascending, from
        ``start_block``. Costs O(entries), not O(volume size)."""
        lo = min(max(0, start_block) * L.CHUNKS_PER_BLOCK, L.MAX_CHUNKS)
        with self._store.read() as txn:
            chain = self._point(txn, snapshot_id)
            idxs = self._maps.visible(txn, chain, lo=lo)
        return sorted({i // L.CHUNKS_PER_BLOCK for i in idxs})

    def list_changed_blocks(self, first_snapshot_id: str | None, second_snapshot_id: str,
                            start_block: int = 0) -> list[int]:
        """Blocks whose content differs between two snapshots of one lineage (the second
        may descend from the first through restores and copies). With no first snapshot,
        every block holding data in the second. Raises UnrelatedSnapshots when neither
        descends from the other."""
        if first_snapshot_id is None:
            return self.list_snapshot_blocks(second_snapshot_id, start_block)
        lo = min(max(0, start_block) * L.CHUNKS_PER_BLOCK, L.MAX_CHUNKS)
        with self._store.read() as txn:
            a = self._point(txn, first_snapshot_id)
            b = self._point(txn, second_snapshot_id)
            cands = self._diff_candidates(txn, a, b)
            if cands is None:
                cands = self._diff_candidates(txn, b, a)
            if cands is None:
                raise UnrelatedSnapshots(
                    f"Snapshots {first_snapshot_id} and {second_snapshot_id} are not related.")
            cur = txn.cursor(db=self._maps.maps)
            changed = {i for i in cands if i >= lo and not self._ctx.same_content(
                txn, self._maps.resolve(txn, a, i, cur), self._maps.resolve(txn, b, i, cur))}
        return sorted({i // L.CHUNKS_PER_BLOCK for i in changed})

    def _diff_candidates(self, txn: Txn, a: list[tuple[int, int]],
                         b: list[tuple[int, int]]) -> set[int] | None:
        """Chunk indexes that may differ between chain ``a`` and the descendant chain ``b``,
        or None if ``b`` does not descend from ``a``'s point."""
        alid, agen = a[0]
        for k, (lid, gen) in enumerate(b):
            if lid == alid and gen >= agen:
                cands = self._maps.changed_candidates(txn, lid, agen, gen)
                for lid2, gen2 in b[:k]:
                    cands |= self._maps.changed_candidates(txn, lid2, 0, gen2)
                return cands
        return None

    def read_snapshot_block(self, snapshot_id: str, block_index: int) -> bytes:
        """The 524,288 bytes of one block of a completed snapshot."""
        with self.open_snapshot(snapshot_id) as dev:
            if isinstance(block_index, bool) or not isinstance(block_index, int) or \
                    not 0 <= block_index < dev.size // L.BLOCK_SIZE:
                raise InvalidBlock(f"Block index {block_index} is beyond the volume size "
                                   f"extent.")
            return dev.pread(L.BLOCK_SIZE, block_index * L.BLOCK_SIZE)

    def start_snapshot(self, volume_size_gib: int, *, parent_snapshot_id: str | None = None,
                       description: str = "", tags: dict[str, str] | None = None,
                       encrypted: bool = False, kms_key_id: str | None = None,
                       tx: Transaction | None = None) -> Snapshot:
        """Begin a snapshot written block by block (EBS direct API StartSnapshot)."""
        tags = check_tags(tags)
        if isinstance(volume_size_gib, bool) or not isinstance(volume_size_gib, int) or \
                not 1 <= volume_size_gib <= MAX_SNAPSHOT_GIB:
            raise InvalidVolumeSize(f"VolumeSize must be 1-{MAX_SNAPSHOT_GIB} GiB.")
        check_description(description)
        sid = new_id("snap")
        with self._unit(tx, grows=True) as (_, txn):
            base = None
            allocated = 0
            if parent_snapshot_id is not None:
                parent = self._completed(txn, parent_snapshot_id)
                if parent["volume_size_gib"] > volume_size_gib:
                    raise InvalidVolumeSize(
                        f"VolumeSize {volume_size_gib} is smaller than the parent snapshot's "
                        f"{parent['volume_size_gib']}.")
                base = (parent["lineage"], parent["gen"])
                allocated = parent["full_size_bytes"] // L.CHUNK_SIZE
            lin = self._maps.create(txn, sid, base, allocated)
            snap = Snapshot(id=sid, volume_id=None, volume_size_gib=volume_size_gib,
                            state="pending", start_time=time.time(), progress=0,
                            description=description, encrypted=bool(encrypted),
                            kms_key_id=kms_key_id, parent_id=parent_snapshot_id, tags=tags)
            self._put_snap(txn, {**snap.to_dict(), "lineage": lin.id, "gen": None})
        return snap

    def put_snapshot_block(self, snapshot_id: str, block_index: int, data: bytes | memoryview,
                           progress: int | None = None, checksum: str | None = None) -> None:
        """Write one 512 KiB block of a pending snapshot (durable on return).

        ``checksum`` (opaque text, e.g. the client's base64 SHA-256) is kept with the block
        until the snapshot completes: see :meth:`snapshot_block_checksums`. Concurrent calls
        share commits (group commit), so parallel uploaders are not serialised on fsync.
        """
        with self._store.coming():
            self._put_block(snapshot_id, block_index, data, progress, checksum)

    def _put_block(self, snapshot_id: str, block_index: int, data: bytes | memoryview,
                   progress: int | None, checksum: str | None) -> None:
        mv = memoryview(data).cast("B")
        if len(mv) != L.BLOCK_SIZE:
            raise InvalidBlock(f"Block data must be exactly {L.BLOCK_SIZE} bytes, "
                               f"not {len(mv)}.")
        fps = self._chunks.fingerprints(mv)
        pieces = [mv[i * L.CHUNK_SIZE:(i + 1) * L.CHUNK_SIZE] for i in range(len(fps))]
        with self._store.read() as txn:
            rec = self._snap_rec(txn, snapshot_id)
            self._check_block(rec, block_index)
            todo = [i for i, fp in enumerate(fps)
                    if fp is not None and not self._chunks.maybe_stored(txn, fp)]
        enc = {i: encode_chunk(pieces[i], self._chunks.level) for i in todo}

        def apply(txn: Txn) -> None:
            rec = self._snap_rec(txn, snapshot_id)
            self._check_block(rec, block_index)
            lin = self._maps.load(txn, rec["lineage"])
            chain = self._maps.chain(txn, (lin.id, lin.head))
            floor = self._maps.head_floor(lin)
            cur = txn.cursor(db=self._maps.maps)
            for i, fp in enumerate(fps):
                key = None if fp is None else self._chunks.put(txn, fp, pieces[i], enc.get(i))
                self._maps.set_head(txn, lin, chain, block_index * L.CHUNKS_PER_BLOCK + i, key,
                                    floor, cur)
            self._maps.save(txn, lin)
            if progress is not None:
                rec["progress"] = max(0, min(100, int(progress)))
                self._put_snap(txn, rec)
            bkey = L.blocksum_key(snapshot_id, block_index)
            if checksum is not None:
                txn.put(bkey, checksum.encode(), db=self._store.db["blocksums"])
            else:
                txn.delete(bkey, db=self._store.db["blocksums"])

        self._store.group(apply)

    def snapshot_block_checksums(self, snapshot_id: str) -> dict[int, str]:
        """``{block index: checksum}`` given with the blocks of a pending snapshot."""
        with self._store.read() as txn:
            self._snap_rec(txn, snapshot_id)
            return self._blocksums(txn, snapshot_id)

    def _blocksums(self, txn: Txn, snapshot_id: str) -> dict[int, str]:
        prefix = snapshot_id.encode() + b"\x00"
        out: dict[int, str] = {}
        cur = txn.cursor(db=self._store.db["blocksums"])
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                out[int.from_bytes(k[len(prefix):], "big")] = v.decode()
        return out

    def _drop_blocksums(self, txn: Txn, snapshot_id: str) -> None:
        prefix = snapshot_id.encode() + b"\x00"
        cur = txn.cursor(db=self._store.db["blocksums"])
        if cur.set_range(prefix):
            while cur.key().startswith(prefix):
                if not cur.delete():
                    break

    @staticmethod
    def _check_block(rec: dict[str, Any], block_index: int) -> None:
        if rec["state"] != "pending":
            raise IncorrectState(f"Snapshot {rec['id']} is {rec['state']}, not pending.")
        nblocks = rec["volume_size_gib"] * L.GIB // L.BLOCK_SIZE
        if isinstance(block_index, bool) or not isinstance(block_index, int) or \
                not 0 <= block_index < nblocks:
            raise InvalidBlock(f"Block index {block_index} is beyond the volume size "
                               f"extent.")

    def complete_snapshot(self, snapshot_id: str,
                          verify: Callable[[dict[int, str]], None] | None = None, *,
                          tx: Transaction | None = None) -> Snapshot:
        """Seal a pending snapshot: it becomes ``completed`` and readable.

        ``verify(checksums)`` runs inside the sealing transaction with the block checksums
        written so far (see :meth:`snapshot_block_checksums`); if it raises, nothing changes.
        A block put concurrently is either seen by ``verify`` or refused (not pending).
        """
        with self._unit(tx, grows=True) as (_, txn):
            rec = self._snap_rec(txn, snapshot_id)
            if rec["state"] != "pending":
                raise IncorrectState(f"Snapshot {snapshot_id} is {rec['state']}, not pending.")
            if verify is not None:
                verify(self._blocksums(txn, snapshot_id))
            lin = self._maps.load(txn, rec["lineage"])
            assert lin.head is not None
            gen = lin.head
            lin.points[gen] = snapshot_id
            rec.update(state="completed", progress=100, completion_time=time.time(), gen=gen,
                       full_size_bytes=lin.allocated * L.CHUNK_SIZE)
            lin.head = None
            lin.owner = None
            lin.allocated = 0
            self._maps.save(txn, lin)
            self._put_snap(txn, rec)
            self._drop_blocksums(txn, snapshot_id)
        return Snapshot.from_dict(rec)

    def fail_snapshot(self, snapshot_id: str, *, tx: Transaction | None = None) -> Snapshot:
        """Move a pending snapshot to ``error`` and free what it had written."""
        with self._unit(tx, frees=True) as (_, txn):
            rec = self._snap_rec(txn, snapshot_id)
            if rec["state"] != "pending":
                raise IncorrectState(f"Snapshot {snapshot_id} is {rec['state']}, not pending.")
            self._abandon_pending(txn, rec)
            rec.update(state="error", lineage=None, gen=None)
            self._put_snap(txn, rec)
        return Snapshot.from_dict(rec)

    def _abandon_pending(self, txn: Txn, rec: dict[str, Any]) -> None:
        lin = self._maps.load(txn, rec["lineage"])
        head = lin.head
        assert head is not None
        lin.head = None
        lin.owner = None
        self._maps.drop_point(txn, lin, head)
        self._drop_blocksums(txn, rec["id"])

    # --- tags -------------------------------------------------------------------------------

    def _retag(self, resource_id: str, change: Callable[[dict[str, str]], dict[str, str]],
               tx: Transaction | None) -> None:
        if not isinstance(resource_id, str):
            raise InvalidParameter(f"Resource id {resource_id!r} is not a volume or snapshot")
        with self._unit(tx, grows=True) as (_, txn):
            if resource_id.startswith("vol-"):
                rec = self._vol_rec(txn, resource_id)
                rec["tags"] = check_tags(change(dict(rec["tags"])))
                self._put_vol(txn, rec)
            elif resource_id.startswith("snap-"):
                rec = self._snap_rec(txn, resource_id)
                rec["tags"] = check_tags(change(dict(rec["tags"])))
                self._put_snap(txn, rec)
            else:
                raise InvalidParameter(f"Resource id {resource_id!r} is not a volume or snapshot")

    def set_tags(self, resource_id: str, tags: dict[str, str], *,
                 tx: Transaction | None = None) -> None:
        """Add or overwrite tags of a volume or snapshot."""
        self._retag(resource_id, lambda cur: {**cur, **tags}, tx)

    def delete_tags(self, resource_id: str, tags: dict[str, str | None], *,
                    tx: Transaction | None = None) -> None:
        """Remove tags; a None value removes the key whatever its value."""
        self._retag(resource_id, lambda cur: {
            k: v for k, v in cur.items()
            if not (k in tags and (tags[k] is None or tags[k] == v))}, tx)

    # --- service key/value space -------------------------------------------------------------

    def service_get(self, namespace: str, key: str, *, tx: Transaction | None = None) -> Any:
        """The JSON value a service layer stored under ``(namespace, key)``, or None."""
        with self._reading(tx) as txn:
            raw = txn.get(L.service_key(namespace, key), db=self._store.db["service"])
        return None if raw is None else json.loads(raw)

    def service_put(self, namespace: str, key: str, value: Any, *,
                    tx: Transaction | None = None) -> None:
        """Store a JSON ``value`` under ``(namespace, key)``; None deletes it."""
        k = L.service_key(namespace, key)
        with self._unit(tx, grows=value is not None, frees=value is None) as (_, txn):
            if value is None:
                txn.delete(k, db=self._store.db["service"])
            else:
                txn.put(k, json.dumps(value).encode(), db=self._store.db["service"])

    def service_items(self, namespace: str, prefix: str = "", *, limit: int | None = None,
                      tx: Transaction | None = None) -> list[tuple[str, Any]]:
        """``(key, value)`` of a namespace whose keys start with ``prefix``, in key order
        (the first ``limit`` of them when given)."""
        start = L.service_key(namespace, prefix)
        ns = L.service_key(namespace, "")
        out: list[tuple[str, Any]] = []
        with self._reading(tx) as txn:
            cur = txn.cursor(db=self._store.db["service"])
            if cur.set_range(start):
                for k, v in cur:
                    if not k.startswith(start) or (limit is not None and len(out) >= limit):
                        break
                    out.append((k[len(ns):].decode(), json.loads(v)))
        return out

    # --- accounting and checking -------------------------------------------------------------

    def usage(self, resource_id: str) -> Usage:
        """Storage accounting for a volume or snapshot (see :class:`Usage`)."""
        if resource_id.startswith("vol-"):
            self.flush_volume(resource_id)
        with self._store.read() as txn:
            if resource_id.startswith("snap-"):
                rec = self._completed(txn, resource_id)
                lid, gen = rec["lineage"], rec["gen"]
                lin = self._maps.load(txn, lid)
                live = lin.live_points()
                prev = max((p for p in live if p < gen), default=0)
                nxt = min((p for p in live if p > gen), default=None)
                pinned = gen in lin.pins
                size = rec["volume_size_gib"] * L.GIB
                chain = self._maps.chain(txn, (lid, gen))
            else:
                rec = self._vol_rec(txn, resource_id)
                lid = rec["lineage"]
                lin = self._maps.load(txn, lid)
                assert lin.head is not None
                gen = lin.head
                prev = self._maps.head_floor(lin)
                nxt, pinned = None, False
                size = rec["size_gib"] * L.GIB
                chain = self._maps.chain(txn, (lid, gen))
            stored = unique = 0
            cur = txn.cursor(db=self._maps.maps)
            for egen, idx in self._maps.interval_entries(txn, lid, prev, gen):
                value = txn.get(L.map_key(lid, idx, egen), db=self._maps.maps)
                if not value:
                    continue
                n = self._maps.entry_stored_size(txn, L.map_key(lid, idx, egen), value)
                stored += n
                superseded = nxt is None or self._maps.entry(txn, lid, idx, nxt, cur)[0] > gen
                if superseded and not pinned and (L.is_patch(value) or
                                                  self._chunks.refcount(txn, value) == 1):
                    unique += n
            written = len(self._maps.visible(txn, chain)) * L.CHUNK_SIZE
        return Usage(logical_bytes=size, stored_bytes=stored, unique_bytes=unique,
                     written_bytes=written)

    def fold(self) -> int:
        """Merge every patch (partial-chunk writes) into whole chunks now; returns how many.
        A background folder does this by itself when the store is quiet; what any volume
        or snapshot reads never changes."""
        with self._lock:
            for cache in list(self._caches.values()):
                if not cache.deleted:
                    cache.flush()
        return self._folder.fold_all()

    def fsck(self) -> FsckReport:
        """Verify every storage invariant of ``layout.py``; flushes open volumes first."""
        from .check import check_store
        self._no_unit("fsck")
        with self._lock:
            for cache in list(self._caches.values()):
                if not cache.deleted:
                    try:
                        cache.flush()
                    except EbsError:
                        pass  # a full store or disk still deserves a check of what it holds
        return check_store(self._store, self._chunks, self._maps)

    # --- bulk transfer ----------------------------------------------------------------------

    def _view_chain(self, txn: Txn,
                    resource_id: str) -> tuple[list[tuple[int, int]], int]:
        """The chain and size in bytes of a volume (at its head) or a completed snapshot."""
        if isinstance(resource_id, str) and resource_id.startswith("snap-"):
            rec = self._completed(txn, resource_id)
            return (self._maps.chain(txn, (rec["lineage"], rec["gen"])),
                    rec["volume_size_gib"] * L.GIB)
        rec = self._vol_rec(txn, resource_id)
        lin = self._maps.load(txn, rec["lineage"])
        return self._maps.chain(txn, (lin.id, lin.head)), rec["size_gib"] * L.GIB

    def export(self, resource_id: str, path: str | os.PathLike[str],
               progress: Callable[[int, int], None] | None = None) -> int:
        """Write a volume or snapshot to a raw file, sparse where it holds no data.

        Returns the number of data bytes written. ``progress(done, total)`` is called with
        bytes of data chunks written so far. Decompression of the next batch runs on the
        pool while this thread writes the previous one.

        The image is the resource as it was when the export began (a volume is flushed
        first). The chunk keys are resolved once; the chunks are then read in batches of
        ``EXPORT_BATCH``, each in a fresh short read transaction, so a long export does not
        keep the store from reusing the space concurrent writers free. Chunks are
        immutable, so a key still stored still holds the bytes it had; if a concurrent
        flush freed one the export still needs, the export starts over from a new point in
        time, and its last attempt holds the volume's flush lock (writers of that volume
        wait for it; other volumes are not held up; ``progress`` must then not flush that
        volume itself).
        """
        is_vol = isinstance(resource_id, str) and resource_id.startswith("vol-")
        if is_vol:
            self.flush_volume(resource_id)
        with self._store.read() as txn:
            self._view_chain(txn, resource_id)  # refused before the file is touched
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for attempt in range(EXPORT_ATTEMPTS):
                hold: Any = contextlib.nullcontext()
                if is_vol and attempt == EXPORT_ATTEMPTS - 1:
                    with self._lock:
                        cache = self._caches.get(resource_id)
                    if cache is not None:
                        hold = cache.flush_lock
                with hold:
                    total = self._export_once(resource_id, fd, progress)
                if total is not None:
                    os.fsync(fd)
                    return total
            raise IncorrectState(f"{resource_id} kept changing during the export (another "
                                 f"process writes to it); snapshot it and export the snapshot")
        finally:
            os.close(fd)

    def _export_once(self, resource_id: str, fd: int,
                     progress: Callable[[int, int], None] | None) -> int | None:
        """One export attempt (see :meth:`export`); None if a chunk it needs was freed."""
        batch = EXPORT_BATCH
        with self._store.read() as txn:
            chain, size = self._view_chain(txn, resource_id)
            visible = sorted(self._maps.visible(txn, chain).items())
        total = len(visible) * L.CHUNK_SIZE
        os.ftruncate(fd, 0)  # a retry leaves nothing of the attempt before
        os.ftruncate(fd, size)

        def fetch(start: int) -> tuple[list[int], Any] | None:
            part = visible[start:start + batch]
            with self._store.read() as txn:
                keys = [k for _, k in part if not L.is_patch(k)]
                got = dict(zip(keys, self._chunks.backend.get_many(txn, keys)))
                values: list[bytes | bytearray | None] = []
                for _, k in part:
                    if not L.is_patch(k):
                        values.append(got[k])
                    elif txn.get(L.parse_patch(k)[2], db=self._ctx.pages_db) is None:
                        values.append(None)  # folded meanwhile: start over (below)
                    else:  # a patch is laid over its base here; stored chunks decode on the pool
                        values.append(bytearray(self._ctx.content(txn, k)))
            if any(v is None for v in values):
                with self._store.read() as txn:
                    self._view_chain(txn, resource_id)  # VolumeNotFound if it was deleted
                return None
            found = [v for v in values if v is not None]
            half = (len(found) + 1) // 2
            futs = [self._pool.submit(lambda vs: [
                v if isinstance(v, bytearray) else decode_chunk(v) for v in vs], vs)
                    for vs in (found[:half], found[half:]) if vs]
            return [i for i, _ in part], futs

        done = 0
        nxt = fetch(0) if visible else None
        for start in range(0, len(visible), batch):
            if nxt is None:
                return None
            idxs, futs = nxt
            nxt = fetch(start + batch) if start + batch < len(visible) else None
            datas = [d for f in futs for d in f.result()]
            run_start, run = 0, list[bytes]()
            for idx, data in zip(idxs, datas):
                if run and idx != run_start + len(run):
                    os.pwritev(fd, run, run_start * L.CHUNK_SIZE)
                    run = []
                if not run:
                    run_start = idx
                run.append(data)
                if len(run) >= 512:  # stay well under IOV_MAX
                    os.pwritev(fd, run, run_start * L.CHUNK_SIZE)
                    run = []
            if run:
                os.pwritev(fd, run, run_start * L.CHUNK_SIZE)
            done += len(idxs) * L.CHUNK_SIZE
            if progress:
                progress(done, total)
        return total

    def import_image(self, path: str | os.PathLike[str], *, volume_id: str | None = None,
                     volume_type: str = "gp2",
                     progress: Callable[[int, int], None] | None = None,
                     **create_args: Any) -> Volume:
        """Copy a raw image (a file or a block device) into a new volume (size rounded up to
        whole GiB) or into an existing one (which must be at least as large). Holes in the
        file are skipped.

        All or nothing: a new volume is ``creating`` until the last commit makes it
        ``available``; an existing volume keeps its content until the last commit replaces
        it (the image is loaded beside it, into a lineage of its own, and swapped in). On a
        failure the new volume is deleted, or the existing one left as it was; after a crash
        a reopened store shows a half-imported new volume as ``error`` and drops the partial
        copy beside an existing one (see :meth:`_recover_imports`).
        """
        if "snapshot_id" in create_args:
            raise InvalidParameterCombination(
                "import_image creates an empty volume; restore the snapshot first and import "
                "into it with volume_id=")
        fd = os.open(os.fspath(path), os.O_RDONLY)
        try:
            size = _source_size(fd, os.fspath(path))
            if volume_id is None:
                gib = max(1, -(-size // L.GIB))
                vol = self.create_volume(size_gib=gib, volume_type=volume_type, **create_args)
                lid = self._begin_import(vol.id, None)
                try:
                    self._ingest(lid, fd, size, progress,
                                 lambda txn: self._end_import(txn, vol.id, None))
                except BaseException:
                    self._abandon_import(vol.id, None)
                    raise
                return self.get_volume(vol.id)
            vol = self.get_volume(volume_id)
            if vol.size_bytes < size:
                raise InvalidParameter(f"Image of {size} bytes does not fit volume "
                                       f"{volume_id} of {vol.size_bytes} bytes.")
            staged = self._begin_import(volume_id, size)
            try:
                self._ingest(staged, fd, size, progress,
                             lambda txn: self._end_import(txn, volume_id, staged))
            except BaseException:
                self._abandon_import(volume_id, staged)
                raise
            return self.get_volume(volume_id)
        finally:
            os.close(fd)

    # An import in progress is marked in its volume's record: ``state`` "creating" (a new
    # volume) or ``staging`` (the lineage being loaded beside an existing volume), with
    # ``importer``, the process doing it, so that a reopened store can tell a crashed import
    # from one still running in another process.

    def _begin_import(self, volume_id: str, size: int | None) -> int:
        """Mark ``volume_id`` as being imported into; returns the lineage to load. ``size``
        None: the volume is new (its own lineage is loaded); else a new lineage is staged."""
        with self._lock:
            cache = self._caches.get(volume_id)
            if cache is not None and cache.users > 0:
                raise VolumeInUse(f"Volume {volume_id} is open ({cache.users} device(s)).")
            if cache is not None:
                cache.flush()
            with self._store.write() as txn:
                rec = self._vol_rec(txn, volume_id)
                if rec.get("staging") is not None or (size is not None and rec["state"] in
                                                       ("creating", "error")):
                    raise IncorrectState(f"Volume {volume_id} is {rec['state']}"
                                         f"{' (being imported into)' if rec.get('staging') else ''}"
                                         f"; nothing can be imported into it now.")
                rec["importer"] = _process_token()
                if size is None:
                    rec["state"] = "creating"
                    lid = int(rec["lineage"])
                else:
                    lid = self._maps.create(txn, volume_id, None).id
                    rec["staging"] = lid
                self._put_vol(txn, rec)
            self._caches.pop(volume_id, None)  # flushed; reopened on the new lineage later
        return lid

    def _end_import(self, txn: Txn, volume_id: str, staged: int | None) -> None:
        """In the import's last transaction: the volume becomes the image. Into an
        existing volume this costs O(chunks of the volume and of the image) in this one
        transaction."""
        rec = self._vol_rec(txn, volume_id)
        if staged is not None:
            # The volume's head takes the staged image where they differ (a write at the
            # head, so its snapshots stay incremental), then the staged lineage goes.
            lin = self._maps.load(txn, rec["lineage"])
            assert lin.head is not None
            chain = self._maps.chain(txn, (lin.id, lin.head))
            now = self._maps.visible(txn, chain)
            image = self._maps.visible(txn, [(staged, 1)])
            floor = self._maps.head_floor(lin)
            cur = txn.cursor(db=self._maps.maps)
            for idx in sorted(set(now) | set(image)):
                key = image.get(idx)
                if now.get(idx) == key:
                    continue
                if key is not None:
                    self._chunks.incref(txn, key)
                self._maps.set_head(txn, lin, chain, idx, key, floor, cur)
            self._maps.save(txn, lin)
            self._drop_import(txn, rec, staged, delete=False)
            return
        else:
            rec["state"] = "in-use" if rec["attachments"] else "available"
        rec.pop("importer", None)
        self._put_vol(txn, rec)

    def _abandon_import(self, volume_id: str, staged: int | None) -> None:
        """After a failed import: delete the new volume, or drop the staged lineage."""
        with self._store.write(freeing=True) as txn:
            rec = self._vol_rec(txn, volume_id)
            self._drop_import(txn, rec, staged, delete=True)
        self._store.after_free()

    def _drop_import(self, txn: Txn, rec: dict[str, Any], staged: int | None,
                     delete: bool) -> None:
        if staged is not None:
            lin = self._maps.load(txn, staged)
            head = lin.head
            assert head is not None
            lin.head, lin.owner, lin.allocated = None, None, 0
            self._maps.drop_point(txn, lin, head)
            rec.pop("staging", None)
        elif delete:
            lin = self._maps.load(txn, rec["lineage"])
            head = lin.head
            assert head is not None
            lin.head, lin.owner, lin.allocated = None, None, 0
            self._maps.drop_point(txn, lin, head)
            txn.delete(rec["id"].encode(), db=self._store.db["volumes"])
            return
        else:
            rec["state"] = "error"
        rec.pop("importer", None)
        self._put_vol(txn, rec)

    def _recover_imports(self) -> None:
        """On open: imports whose process is gone (a crash) are settled. A new volume that
        was being imported shows as ``error`` (delete it); a partial copy staged beside an
        existing volume is dropped, the volume keeps its content."""
        with self._store.read() as txn:
            stale = [json.loads(v) for _, v in txn.cursor(db=self._store.db["volumes"])
                     if b'"importer"' in v]  # cheap: no JSON for the volumes at rest
        stale = [r for r in stale if r.get("importer") is not None
                 and not _process_alive(r["importer"])]
        if not stale:
            return
        with self._store.write(freeing=True) as txn:
            for old in stale:
                rec = self._vol_rec(txn, old["id"])
                if rec.get("importer") != old["importer"]:
                    continue
                self._drop_import(txn, rec, rec.get("staging"), delete=False)
        self._store.after_free()

    def _importing(self, rec: dict[str, Any]) -> bool:
        """Whether an import into this volume record is running (in some live process)."""
        return rec.get("importer") is not None and _process_alive(rec["importer"])

    def _ingest(self, lid: int, fd: int, size: int,
                progress: Callable[[int, int], None] | None,
                finish: Callable[[Txn], None]) -> None:
        """Bulk-load a file into the fresh lineage ``lid`` (no entries, no base).

        A three-stage pipeline rather than the write cache: this thread reads a batch and
        fingerprints it (C core, GIL released); a pool task compresses it with every core
        (:func:`encode_batch`: one call, GIL released, contexts reused); a committer thread
        stores batches in a write transaction (one chunk lookup per chunk, map entries put
        without resolving anything: the lineage is fresh) and commits every
        ``INGEST_COMMIT_BYTES`` of input, so the disk's fsync overlaps the reading and
        compressing of what follows. ``finish(txn)`` runs in the last transaction: what makes
        the import visible. Every commit before is durable, and invisible until that one.
        """
        batch = INGEST_BATCH_BYTES
        commit_bytes = INGEST_COMMIT_BYTES
        depth = INGEST_DEPTH
        ring = [bytearray(batch) for _ in range(depth + 3)]  # queued + storing + reading
        level = self._chunks.level
        threads = max(1, os.cpu_count() or 1)
        work: queue.Queue[Any] = queue.Queue(maxsize=depth)
        failed: list[BaseException] = []
        done = object()  # the reader got to the end; None: it failed, abort

        def committer() -> None:
            cm = txn = None
            since = 0
            try:
                while True:
                    item = work.get()
                    if item is None:
                        raise _IngestAborted()
                    if item is done:
                        break
                    entries, fut, nbytes = item
                    encoded = fut.result()
                    if txn is None:
                        cm = self._store.write()
                        txn = cm.__enter__()
                    lin = self._maps.load(txn, lid)
                    for (idx, fp, mv), enc in zip(entries, encoded):
                        self._maps.set_fresh(txn, lin, idx, self._chunks.put(txn, fp, mv, enc))
                    self._maps.save(txn, lin)
                    since += nbytes
                    if since >= commit_bytes:
                        cm, txn, since = cm.__exit__(None, None, None), None, 0
                if txn is None:
                    cm = self._store.write()
                    txn = cm.__enter__()
                finish(txn)
                cm.__exit__(None, None, None)  # type: ignore[union-attr]
            except BaseException as exc:  # handed to the reading thread
                err: BaseException = exc
                if cm is not None and txn is not None:
                    try:  # aborts; Store.write translates LMDB errors (map full -> StoreFull)
                        cm.__exit__(type(exc), exc, exc.__traceback__)
                    except BaseException as translated:
                        err = translated
                if not isinstance(exc, _IngestAborted):
                    failed.append(err)
                    while work.get() not in (None, done):  # unblock the reader, drop the rest
                        pass

        thread = threading.Thread(target=committer, name="ebsengine-ingest", daemon=True)
        thread.start()
        k = 0
        read = 0
        end_item: object = None
        try:
            for start, end in _data_ranges(fd, size):
                pos = max(start - start % L.CHUNK_SIZE, read)
                while pos < end and not failed:
                    buf = ring[k % len(ring)]
                    k += 1
                    n = os.preadv(fd, [memoryview(buf)[:min(batch, size - pos)]], pos)
                    if n <= 0:
                        raise InvalidParameter(f"The image ended at byte {pos} while "
                                               f"{size} bytes were expected.")
                    padded = -(-n // L.CHUNK_SIZE) * L.CHUNK_SIZE
                    buf[n:padded] = bytes(padded - n)  # zero-pad a short final chunk
                    mv = memoryview(buf)[:padded]
                    fps = self._chunks.fingerprints(mv)
                    first = pos // L.CHUNK_SIZE
                    entries = [(first + i, fp, mv[i * L.CHUNK_SIZE:(i + 1) * L.CHUNK_SIZE])
                               for i, fp in enumerate(fps) if fp is not None]
                    fut = self._pool.submit(encode_batch, [e[2] for e in entries], level,
                                            threads)
                    work.put((entries, fut, n))
                    pos += n
                    read = pos
                    if progress:
                        progress(min(pos, size), size)
            end_item = done
        finally:
            work.put(end_item)
            thread.join()
        if failed:
            raise failed[0]
        if progress:
            progress(size, size)  # a trailing hole is read by nobody but is done too


class _IngestAborted(Exception):
    """The reading side of :meth:`Engine._ingest` failed: the committer aborts."""


INGEST_BATCH_BYTES = 16 * 1024 * 1024
INGEST_COMMIT_BYTES = 256 * 1024 * 1024
INGEST_DEPTH = 3  # batches compressed ahead of the committer (it waits for each fsync)


def _source_size(fd: int, path: str) -> int:
    """Bytes of an image: a regular file's size, or a block device's (``st_size`` of a
    device is 0). Anything else (a pipe, a directory) is refused."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    raise InvalidParameter(f"{path} is neither a regular file nor a block device.")


def _data_ranges(fd: int, size: int) -> Iterable[tuple[int, int]]:
    """``(start, end)`` ranges of a file that may hold data (SEEK_DATA/SEEK_HOLE).

    ENXIO means no data after the position; a file system or device without hole
    support (EINVAL, EOPNOTSUPP) is all data from there on. Any other error is raised:
    an unreadable source must not import as an empty volume.
    """
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, size
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        pos = end


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_token() -> dict[str, Any]:
    """Names this process across the machine's lifetime (pid reuse included)."""
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "boot": _boot_id()}


def _process_alive(token: Any) -> bool:
    """Whether the process a :func:`_process_token` names still runs. Without /proc the
    answer is yes (never settle an import that may be running)."""
    if not isinstance(token, dict) or not isinstance(token.get("pid"), int):
        return False
    boot = _boot_id()
    if not boot or token.get("start") is None:
        return True
    if token.get("boot") != boot:
        return False
    return _start_time(token["pid"]) == token["start"]


__all__ = ["Engine", "EbsError", "Transaction", "default_store_path"]
