"""The engine facade: volumes, snapshots and their AWS-style rules over the chunk store.

Every public method is one unit of work: it validates first, then changes the store in one
LMDB write transaction, so a refused request leaves the store exactly as it was (DESIGN
invariant 7). Services (NBD, the HTTP API, the CLI) call only this module.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

import lmdb

from . import layout as L
from .block.context import BlockContext
from .block.device import Device
from .block.folder import Folder
from .block.maps import BlockMaps, Lineage
from .block.volume import SnapshotView, VolumeCache
from .errors import (EbsError, IncorrectState, InvalidParameter, InvalidParameterCombination,
                     MissingParameter, SnapshotNotFound, VolumeInUse, VolumeNotFound)
from .model import FsckReport, Snapshot, Usage, Volume
from .rules import (VOLUME_TYPES, check_description, check_id, check_int, check_tags, new_id,
                    validate_volume_spec)
from .storage.chunks import ChunkStore
from .storage.envelope import DEFAULT_ZSTD_LEVEL, decode_chunk, encode_chunk, encode_list
from .storage.lmdb_env import DEFAULT_MAP_SIZE, Store

DEFAULT_DIRTY_LIMIT = 256 * 1024 * 1024
#: ``service=`` hooks: given the new/changed resource, the (namespace, key, JSON value or None)
#: records a service layer wants committed atomically with it.
ServiceHook = Callable[[Any], Iterable[tuple[str, str, Any]]]
MAX_SNAPSHOT_GIB = 65536


def default_store_path() -> str:
    """``$EBSENGINE_STORE``, else ``$XDG_DATA_HOME/ebsengine`` (``~/.local/share/ebsengine``)."""
    env = os.environ.get("EBSENGINE_STORE")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(base, "ebsengine")


class Engine:
    """An ebsengine store opened for use. Thread-safe; a context manager.

    Args:
        path: store directory (created if missing); default :func:`default_store_path`.
        map_size: LMDB map size in bytes: the most the store may hold.
        dirty_limit: bytes of unflushed writes per volume before a writer flushes itself.
        zstd_level: compression level for a new store (an existing store keeps its own).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 map_size: int = DEFAULT_MAP_SIZE, dirty_limit: int = DEFAULT_DIRTY_LIMIT,
                 zstd_level: int = DEFAULT_ZSTD_LEVEL, readonly: bool = False) -> None:
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
        self._closed = False

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

    # --- records ----------------------------------------------------------------------------

    def _vol_rec(self, txn: lmdb.Transaction, volume_id: str) -> dict[str, Any]:
        check_id(volume_id, "vol")
        raw = txn.get(volume_id.encode(), db=self._store.db["volumes"])
        if raw is None:
            raise VolumeNotFound(f"The volume '{volume_id}' does not exist.")
        return json.loads(raw)

    def _snap_rec(self, txn: lmdb.Transaction, snap_id: str) -> dict[str, Any]:
        check_id(snap_id, "snap")
        raw = txn.get(snap_id.encode(), db=self._store.db["snapshots"])
        if raw is None:
            raise SnapshotNotFound(f"The snapshot '{snap_id}' does not exist.")
        return json.loads(raw)

    def _put_vol(self, txn: lmdb.Transaction, rec: dict[str, Any]) -> None:
        txn.put(rec["id"].encode(), json.dumps(rec, sort_keys=True).encode(),
                db=self._store.db["volumes"])

    def _put_snap(self, txn: lmdb.Transaction, rec: dict[str, Any]) -> None:
        txn.put(rec["id"].encode(), json.dumps(rec, sort_keys=True).encode(),
                db=self._store.db["snapshots"])

    def _completed(self, txn: lmdb.Transaction, snap_id: str) -> dict[str, Any]:
        rec = self._snap_rec(txn, snap_id)
        if rec["state"] != "completed":
            raise IncorrectState(f"Snapshot '{snap_id}' is {rec['state']}, not completed.")
        return rec

    def _service_records(self, txn: lmdb.Transaction, service: ServiceHook | None,
                         resource: Any) -> None:
        """Write a service layer's records about ``resource`` in the engine's own
        transaction, so they commit (or vanish) together with the resource."""
        if service is None:
            return
        for namespace, key, value in service(resource):
            k = L.service_key(namespace, key)
            if value is None:
                txn.delete(k, db=self._store.db["service"])
            else:
                txn.put(k, json.dumps(value).encode(), db=self._store.db["service"])

    # --- volumes ----------------------------------------------------------------------------

    def create_volume(self, size_gib: int | None = None, volume_type: str = "gp2", *,
                      snapshot_id: str | None = None, iops: int | None = None,
                      throughput: int | None = None, availability_zone: str = "us-east-1a",
                      multi_attach_enabled: bool = False, encrypted: bool = False,
                      kms_key_id: str | None = None,
                      tags: dict[str, str] | None = None,
                      service: ServiceHook | None = None) -> Volume:
        """Create an empty volume, or one from a snapshot in O(1) (data read through lazily).

        Raises MissingParameter (no size and no snapshot), InvalidParameter (size/type/IOPS
        limits, size below the snapshot's), SnapshotNotFound, IncorrectState.
        """
        if size_gib is None and snapshot_id is None:
            raise MissingParameter("The request must contain the parameter size or snapshotId")
        check_int("size", size_gib)
        tags = check_tags(tags)
        if kms_key_id is not None and not encrypted:
            raise MissingParameter("The parameter KmsKeyId requires the parameter Encrypted "
                                   "to be set.")
        vid = new_id("vol")
        with self._store.write() as txn:
            base = None
            allocated = 0
            if snapshot_id is not None:
                snap = self._completed(txn, snapshot_id)
                if size_gib is None:
                    size_gib = snap["volume_size_gib"]
                if size_gib < snap["volume_size_gib"]:
                    raise InvalidParameter(
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
            self._service_records(txn, service, vol)
        return vol

    def get_volume(self, volume_id: str) -> Volume:
        with self._store.read() as txn:
            return Volume.from_dict(self._vol_rec(txn, volume_id))

    def list_volumes(self) -> list[Volume]:
        with self._store.read() as txn:
            return [Volume.from_dict(json.loads(v)) for _, v in
                    txn.cursor(db=self._store.db["volumes"])]

    def delete_volume(self, volume_id: str) -> None:
        """Delete a volume and free what only it referenced. Its snapshots stay.

        Raises VolumeInUse if it is attached or open on a device of this engine.
        """
        with self._lock:
            cache = self._caches.get(volume_id)
            if cache is not None and cache.users > 0:
                raise VolumeInUse(f"Volume {volume_id} is open ({cache.users} device(s)).")
            with self._store.write(freeing=True) as txn:
                rec = self._vol_rec(txn, volume_id)
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
            self._store.after_free()
            if cache is not None:
                with cache.lock:
                    cache.drop()
                self._caches.pop(volume_id, None)

    def modify_volume(self, volume_id: str, size_gib: int | None = None,
                      volume_type: str | None = None, iops: int | None = None,
                      throughput: int | None = None,
                      multi_attach_enabled: bool | None = None,
                      service: ServiceHook | None = None) -> Volume:
        """Elastic Volumes: grow, change type/IOPS/throughput. Shrinking is refused."""
        with self._lock, self._store.write() as txn:
            rec = self._vol_rec(txn, volume_id)
            new_size = rec["size_gib"] if size_gib is None else size_gib
            if isinstance(new_size, bool) or not isinstance(new_size, int):
                raise InvalidParameter(f"Size must be a whole number of GiB, not {new_size!r}")
            if new_size < rec["size_gib"]:
                raise InvalidParameter(
                    f"New size cannot be smaller than existing size ({new_size}GiB < "
                    f"{rec['size_gib']}GiB).")
            new_type = volume_type or rec["volume_type"]
            type_changed = new_type != rec["volume_type"]
            rule = VOLUME_TYPES.get(new_type)
            new_iops = iops
            if new_iops is None and rule is not None and rule.iops is not None:
                new_iops = 3000 if type_changed else rec["iops"]
            new_tp = throughput
            if new_tp is None and rule is not None and rule.throughput is not None:
                new_tp = 125 if type_changed or rec["throughput"] is None else rec["throughput"]
            multi = rec["multi_attach_enabled"] if multi_attach_enabled is None \
                else multi_attach_enabled
            new_iops, new_tp = validate_volume_spec(new_type, new_size, new_iops, new_tp, multi)
            rec.update(size_gib=new_size, volume_type=new_type, iops=new_iops,
                       throughput=new_tp, multi_attach_enabled=multi)
            self._put_vol(txn, rec)
            self._service_records(txn, service, Volume.from_dict(rec))
        cache = self._caches.get(volume_id)
        if cache is not None:
            cache.size = new_size * L.GIB
        return Volume.from_dict(rec)

    def attach_volume(self, volume_id: str, instance_id: str, device: str,
                      delete_on_termination: bool = False) -> Volume:
        """Record an attachment (the instance layer checks the instance itself)."""
        with self._store.write() as txn:
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

    def detach_volume(self, volume_id: str, instance_id: str | None = None,
                      force: bool = False) -> Volume:
        with self._store.write() as txn:
            rec = self._vol_rec(txn, volume_id)
            atts = rec["attachments"]
            if not atts:
                raise IncorrectState(f"Volume '{volume_id}' is in the 'available' state.")
            keep = [a for a in atts if instance_id is not None and a["instance_id"] != instance_id]
            if len(keep) == len(atts):
                raise IncorrectState(
                    f"The volume {volume_id} is not attached to instance {instance_id}",
                    code="InvalidAttachment.NotFound")
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
        with self._lock:
            cache = self._caches.get(volume_id)
        if cache is not None:
            cache.flush()

    # --- snapshots --------------------------------------------------------------------------

    def create_snapshot(self, volume_id: str, description: str = "",
                        tags: dict[str, str] | None = None,
                        service: ServiceHook | None = None) -> Snapshot:
        """Snapshot a volume at this point in time: every write acknowledged before the call,
        none after. The first snapshot is full; later ones record only what changed since
        the previous one: O(chunks changed)."""
        tags = check_tags(tags)
        check_description(description)
        sid = new_id("snap")
        out: list[Snapshot] = []

        def freeze(txn: lmdb.Transaction, lin_obj: object) -> None:
            lin = lin_obj
            assert isinstance(lin, Lineage) and lin.head is not None
            rec = self._vol_rec(txn, volume_id)
            gen = lin.head
            prev = max((g for g in lin.points if g < gen), default=None)
            if prev is not None:
                parent = lin.points[prev]
            else:
                parent = rec["snapshot_id"] if lin.base is not None else None
            now = time.time()
            snap = Snapshot(id=sid, volume_id=volume_id, volume_size_gib=rec["size_gib"],
                            state="completed", start_time=now, progress=100,
                            completion_time=now, description=description,
                            encrypted=rec["encrypted"], kms_key_id=rec["kms_key_id"],
                            parent_id=parent, full_size_bytes=lin.allocated * L.CHUNK_SIZE,
                            tags=tags)
            lin.points[gen] = sid
            lin.head = gen + 1
            self._put_snap(txn, {**snap.to_dict(), "lineage": lin.id, "gen": gen})
            self._service_records(txn, service, snap)
            out.append(snap)

        with self._store.read() as txn:
            self._vol_rec(txn, volume_id)
        self._cache(volume_id).flush(in_txn=freeze)
        return out[0]

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        with self._store.read() as txn:
            return Snapshot.from_dict(self._snap_rec(txn, snapshot_id))

    def list_snapshots(self, volume_id: str | None = None) -> list[Snapshot]:
        with self._store.read() as txn:
            snaps = [Snapshot.from_dict(json.loads(v)) for _, v in
                     txn.cursor(db=self._store.db["snapshots"])]
        if volume_id is not None:
            snaps = [s for s in snaps if s.volume_id == volume_id]
        return sorted(snaps, key=lambda s: (s.start_time, s.id))

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete a snapshot. Its still-needed entries merge into its successor, so no other
        snapshot or volume changes; chunks nobody references any more are freed. Costs
        O(entries the snapshot recorded). A pending snapshot is cancelled."""
        with self._store.write(freeing=True) as txn:
            rec = self._snap_rec(txn, snapshot_id)
            if rec["state"] == "pending":
                self._abandon_pending(txn, rec)
            elif rec["state"] == "completed":
                lin = self._maps.load(txn, rec["lineage"])
                del lin.points[rec["gen"]]
                self._maps.drop_point(txn, lin, rec["gen"])
            txn.delete(snapshot_id.encode(), db=self._store.db["snapshots"])
        self._store.after_free()

    def copy_snapshot(self, snapshot_id: str, description: str = "",
                      tags: dict[str, str] | None = None,
                      service: ServiceHook | None = None) -> Snapshot:
        """A new snapshot with the same content, sharing every chunk: O(1)."""
        tags = check_tags(tags)
        check_description(description)
        sid = new_id("snap")
        with self._store.write() as txn:
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
            self._service_records(txn, service, snap)
        return snap

    # --- EBS direct API units (512 KiB blocks) ---------------------------------------------

    def _point(self, txn: lmdb.Transaction, snapshot_id: str) -> list[tuple[int, int]]:
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
        every block holding data in the second. Raises InvalidParameter with code
        ``UNRELATED_SNAPSHOTS`` when neither descends from the other."""
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
                raise InvalidParameter(
                    f"Snapshots {first_snapshot_id} and {second_snapshot_id} are not related.",
                    code="UNRELATED_SNAPSHOTS")
            cur = txn.cursor(db=self._maps.maps)
            changed = {i for i in cands if i >= lo and not self._ctx.same_content(
                txn, self._maps.resolve(txn, a, i, cur), self._maps.resolve(txn, b, i, cur))}
        return sorted({i // L.CHUNKS_PER_BLOCK for i in changed})

    def _diff_candidates(self, txn: lmdb.Transaction, a: list[tuple[int, int]],
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
                raise InvalidParameter(f"Block index {block_index} is beyond the volume size "
                                       f"extent.", code="INVALID_BLOCK")
            return dev.pread(L.BLOCK_SIZE, block_index * L.BLOCK_SIZE)

    def start_snapshot(self, volume_size_gib: int, *, parent_snapshot_id: str | None = None,
                       description: str = "", tags: dict[str, str] | None = None,
                       encrypted: bool = False, kms_key_id: str | None = None,
                       service: ServiceHook | None = None) -> Snapshot:
        """Begin a snapshot written block by block (EBS direct API StartSnapshot)."""
        tags = check_tags(tags)
        if isinstance(volume_size_gib, bool) or not isinstance(volume_size_gib, int) or \
                not 1 <= volume_size_gib <= MAX_SNAPSHOT_GIB:
            raise InvalidParameter(f"VolumeSize must be 1-{MAX_SNAPSHOT_GIB} GiB.",
                                   code="INVALID_VOLUME_SIZE")
        check_description(description)
        sid = new_id("snap")
        with self._store.write() as txn:
            base = None
            allocated = 0
            if parent_snapshot_id is not None:
                parent = self._completed(txn, parent_snapshot_id)
                if parent["volume_size_gib"] > volume_size_gib:
                    raise InvalidParameter(
                        f"VolumeSize {volume_size_gib} is smaller than the parent snapshot's "
                        f"{parent['volume_size_gib']}.", code="INVALID_VOLUME_SIZE")
                base = (parent["lineage"], parent["gen"])
                allocated = parent["full_size_bytes"] // L.CHUNK_SIZE
            lin = self._maps.create(txn, sid, base, allocated)
            snap = Snapshot(id=sid, volume_id=None, volume_size_gib=volume_size_gib,
                            state="pending", start_time=time.time(), progress=0,
                            description=description, encrypted=bool(encrypted),
                            kms_key_id=kms_key_id, parent_id=parent_snapshot_id, tags=tags)
            self._put_snap(txn, {**snap.to_dict(), "lineage": lin.id, "gen": None})
            self._service_records(txn, service, snap)
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
            raise InvalidParameter(f"Block data must be exactly {L.BLOCK_SIZE} bytes, "
                                   f"not {len(mv)}.", code="INVALID_BLOCK")
        fps = self._chunks.fingerprints(mv)
        pieces = [mv[i * L.CHUNK_SIZE:(i + 1) * L.CHUNK_SIZE] for i in range(len(fps))]
        with self._store.read() as txn:
            rec = self._snap_rec(txn, snapshot_id)
            self._check_block(rec, block_index)
            todo = [i for i, fp in enumerate(fps)
                    if fp is not None and not self._chunks.maybe_stored(txn, fp)]
        enc = {i: encode_chunk(pieces[i], self._chunks.level) for i in todo}

        def apply(txn: lmdb.Transaction) -> None:
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

    def _blocksums(self, txn: lmdb.Transaction, snapshot_id: str) -> dict[int, str]:
        prefix = snapshot_id.encode() + b"\x00"
        out: dict[int, str] = {}
        cur = txn.cursor(db=self._store.db["blocksums"])
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                out[int.from_bytes(k[len(prefix):], "big")] = v.decode()
        return out

    def _drop_blocksums(self, txn: lmdb.Transaction, snapshot_id: str) -> None:
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
            raise InvalidParameter(f"Block index {block_index} is beyond the volume size "
                                   f"extent.", code="INVALID_BLOCK")

    def complete_snapshot(self, snapshot_id: str,
                          verify: Callable[[dict[int, str]], None] | None = None) -> Snapshot:
        """Seal a pending snapshot: it becomes ``completed`` and readable.

        ``verify(checksums)`` runs inside the sealing transaction with the block checksums
        written so far (see :meth:`snapshot_block_checksums`); if it raises, nothing changes.
        A block put concurrently is either seen by ``verify`` or refused (not pending).
        """
        with self._store.write() as txn:
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

    def fail_snapshot(self, snapshot_id: str) -> Snapshot:
        """Move a pending snapshot to ``error`` and free what it had written."""
        with self._store.write(freeing=True) as txn:
            rec = self._snap_rec(txn, snapshot_id)
            if rec["state"] != "pending":
                raise IncorrectState(f"Snapshot {snapshot_id} is {rec['state']}, not pending.")
            self._abandon_pending(txn, rec)
            rec.update(state="error", lineage=None, gen=None)
            self._put_snap(txn, rec)
        return Snapshot.from_dict(rec)

    def _abandon_pending(self, txn: lmdb.Transaction, rec: dict[str, Any]) -> None:
        lin = self._maps.load(txn, rec["lineage"])
        head = lin.head
        assert head is not None
        lin.head = None
        lin.owner = None
        self._maps.drop_point(txn, lin, head)
        self._drop_blocksums(txn, rec["id"])

    # --- tags -------------------------------------------------------------------------------

    def _retag(self, resource_id: str, change: Callable[[dict[str, str]], dict[str, str]]) -> None:
        if not isinstance(resource_id, str):
            raise InvalidParameter(f"Resource id {resource_id!r} is not a volume or snapshot")
        with self._store.write() as txn:
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

    def set_tags(self, resource_id: str, tags: dict[str, str]) -> None:
        """Add or overwrite tags of a volume or snapshot."""
        self._retag(resource_id, lambda cur: {**cur, **tags})

    def delete_tags(self, resource_id: str, tags: dict[str, str | None]) -> None:
        """Remove tags; a None value removes the key whatever its value."""
        self._retag(resource_id, lambda cur: {
            k: v for k, v in cur.items()
            if not (k in tags and (tags[k] is None or tags[k] == v))})

    # --- service key/value space -------------------------------------------------------------

    def service_get(self, namespace: str, key: str) -> Any:
        with self._store.read() as txn:
            raw = txn.get(L.service_key(namespace, key), db=self._store.db["service"])
        return None if raw is None else json.loads(raw)

    def service_put(self, namespace: str, key: str, value: Any) -> None:
        with self._store.write() as txn:
            k = L.service_key(namespace, key)
            if value is None:
                txn.delete(k, db=self._store.db["service"])
            else:
                txn.put(k, json.dumps(value).encode(), db=self._store.db["service"])

    def service_items(self, namespace: str, prefix: str = "") -> list[tuple[str, Any]]:
        start = L.service_key(namespace, prefix)
        ns = L.service_key(namespace, "")
        out = []
        with self._store.read() as txn:
            cur = txn.cursor(db=self._store.db["service"])
            if cur.set_range(start):
                for k, v in cur:
                    if not k.startswith(start):
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
        with self._lock:
            for cache in list(self._caches.values()):
                if not cache.deleted:
                    try:
                        cache.flush()
                    except EbsError:
                        pass  # a full store or disk still deserves a check of what it holds
        return check_store(self._store, self._chunks, self._maps)

    # --- bulk transfer ----------------------------------------------------------------------

    def _view_chain(self, txn: lmdb.Transaction,
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
        """
        if isinstance(resource_id, str) and resource_id.startswith("vol-"):
            self.flush_volume(resource_id)
        batch = 256
        with self._store.read() as txn:
            chain, size = self._view_chain(txn, resource_id)
            visible = sorted(self._maps.visible(txn, chain).items())
            total = len(visible) * L.CHUNK_SIZE
            fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, size)

                def fetch(start: int) -> tuple[list[int], Any]:
                    part = visible[start:start + batch]
                    # a patch is laid over its base here; stored chunks decode on the pool
                    values = [bytearray(self._ctx.content(txn, k)) if L.is_patch(k) else
                              txn.get(k, db=self._chunks.chunks) for _, k in part]
                    half = (len(values) + 1) // 2
                    futs = [self._pool.submit(lambda vs: [
                        v if isinstance(v, bytearray) else decode_chunk(v) for v in vs], vs)
                            for vs in (values[:half], values[half:]) if vs]
                    return [i for i, _ in part], futs

                done = 0
                nxt = fetch(0) if visible else None
                for start in range(0, len(visible), batch):
                    idxs, futs = nxt  # type: ignore[misc]
                    nxt = fetch(start + batch) if start + batch < len(visible) else None
                    datas = [d for f in futs for d in f.result()]
                    run_start, run = 0, []
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
                os.fsync(fd)
            finally:
                os.close(fd)
        return total

    def import_image(self, path: str | os.PathLike[str], *, volume_id: str | None = None,
                     volume_type: str = "gp2",
                     progress: Callable[[int, int], None] | None = None,
                     **create_args: Any) -> Volume:
        """Copy a raw image into a new volume (size rounded up to whole GiB) or into an
        existing one (which must be at least as large). Holes in the file are skipped."""
        if "snapshot_id" in create_args:
            raise InvalidParameterCombination(
                "import_image creates an empty volume; restore the snapshot first and import "
                "into it with volume_id=")
        size = os.path.getsize(path)
        if volume_id is None:
            gib = max(1, -(-size // L.GIB))
            vol = self.create_volume(size_gib=gib, volume_type=volume_type, **create_args)
            try:
                with open(path, "rb", buffering=0) as f:
                    self._ingest(vol.id, f.fileno(), size, progress)
            except BaseException:
                self.delete_volume(vol.id)
                raise
            return self.get_volume(vol.id)
        vol = self.get_volume(volume_id)
        if vol.size_bytes < size:
            raise InvalidParameter(f"Image of {size} bytes does not fit volume "
                                   f"{volume_id} of {vol.size_bytes} bytes.")
        step = 8 * 1024 * 1024
        with open(path, "rb", buffering=0) as f, self.open_volume(vol.id) as dev:
            dev.trim(0, dev.size)
            buf = bytearray(step)
            for start, end in _data_ranges(f.fileno(), size):
                pos = start - start % L.CHUNK_SIZE
                while pos < end:
                    n = os.preadv(f.fileno(), [memoryview(buf)[:min(step, size - pos)]], pos)
                    dev.pwrite(memoryview(buf)[:n], pos)
                    pos += n
                    if progress:
                        progress(min(pos, size), size)
            dev.flush()
        return self.get_volume(vol.id)

    def _ingest(self, volume_id: str, fd: int, size: int,
                progress: Callable[[int, int], None] | None) -> None:
        """Bulk-load a file into a fresh, unopened volume.

        A three-stage pipeline rather than the write cache: this thread reads a batch and
        fingerprints it (C core, GIL released); the pool compresses it; a committer thread
        stores batches in a write transaction and commits every ``commit_bytes`` of input,
        so the disk's fsync overlaps the reading and compressing of what follows. Each
        commit is a durable point; a failure deletes the half-imported volume (see
        :meth:`import_image`).
        """
        batch = 16 * 1024 * 1024
        commit_bytes = 256 * 1024 * 1024
        depth = 2
        ring = [bytearray(batch) for _ in range(depth + 3)]  # queued + storing + reading
        level = self._chunks.level
        with self._store.read() as txn:
            lid = self._vol_rec(txn, volume_id)["lineage"]
        work: queue.Queue[Any] = queue.Queue(maxsize=depth)
        failed: list[BaseException] = []

        def committer() -> None:
            cm = txn = None
            since = 0
            try:
                while True:
                    item = work.get()
                    if item is None:
                        break
                    entries, futs, nbytes = item
                    encoded = [e for f in futs for e in f.result()]
                    if txn is None:
                        cm = self._store.write()
                        txn = cm.__enter__()
                    lin = self._maps.load(txn, lid)
                    chain = self._maps.chain(txn, (lid, lin.head))
                    floor = self._maps.head_floor(lin)
                    cur = txn.cursor(db=self._maps.maps)
                    for (idx, fp, mv), enc in zip(entries, encoded):
                        key = self._chunks.put(txn, fp, mv, enc)
                        self._maps.set_head(txn, lin, chain, idx, key, floor, cur)
                    self._maps.save(txn, lin)
                    since += nbytes
                    if since >= commit_bytes:
                        cm, txn, since = cm.__exit__(None, None, None), None, 0
                if cm is not None and txn is not None:
                    cm.__exit__(None, None, None)
            except BaseException as exc:  # handed to the reading thread
                err: BaseException = exc
                if cm is not None and txn is not None:
                    try:  # aborts; Store.write translates LMDB errors (map full -> StoreFull)
                        cm.__exit__(type(exc), exc, exc.__traceback__)
                    except BaseException as translated:
                        err = translated
                failed.append(err)
                while work.get() is not None:  # unblock the reader, drop the rest
                    pass

        thread = threading.Thread(target=committer, name="ebsengine-ingest", daemon=True)
        thread.start()
        k = 0
        read = 0
        try:
            for start, end in _data_ranges(fd, size):
                pos = max(start - start % L.CHUNK_SIZE, read)
                while pos < end and not failed:
                    buf = ring[k % len(ring)]
                    k += 1
                    n = os.preadv(fd, [memoryview(buf)[:min(batch, size - pos)]], pos)
                    if n <= 0:
                        break
                    padded = -(-n // L.CHUNK_SIZE) * L.CHUNK_SIZE
                    buf[n:padded] = bytes(padded - n)  # zero-pad a short final chunk
                    mv = memoryview(buf)[:padded]
                    fps = self._chunks.fingerprints(mv)
                    first = pos // L.CHUNK_SIZE
                    entries = [(first + i, fp, mv[i * L.CHUNK_SIZE:(i + 1) * L.CHUNK_SIZE])
                               for i, fp in enumerate(fps) if fp is not None]
                    half = (len(entries) + 1) // 2
                    futs = [self._pool.submit(encode_list, [e[2] for e in part], level)
                            for part in (entries[:half], entries[half:]) if part]
                    work.put((entries, futs, n))
                    pos += n
                    read = pos
                    if progress:
                        progress(min(pos, size), size)
        finally:
            work.put(None)
            thread.join()
        if failed:
            raise failed[0]
        if progress:
            progress(size, size)  # a trailing hole is read by nobody but is done too


def _data_ranges(fd: int, size: int) -> Iterable[tuple[int, int]]:
    """``(start, end)`` ranges of a file that may hold data (SEEK_DATA/SEEK_HOLE)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        pos = end


__all__ = ["Engine", "EbsError", "default_store_path"]
