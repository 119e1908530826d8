"""Bulk transfer: raw images into volumes (:meth:`Transfer.import_image`, all or nothing,
through a read/compress/commit pipeline) and volumes or snapshots out to raw files
(:meth:`Transfer.export`, sparse, in short read transactions).

The public methods of :class:`ebsengine.engine.Engine` of the same names document them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from .. import layout as L
from ..block.context import BlockContext, check_domain
from ..block.maps import BlockMaps
from ..errors import IncorrectState, InvalidParameter, InvalidParameterCombination, VolumeInUse
from ..model import Volume
from ..storage.base import Txn
from ..storage.chunks import ChunkStore
from ..storage.envelope import encode_batch
from .devices import VolumeCaches
from .imports import drop_import, process_token
from .records import Records
from .volumes import Volumes

EXPORT_BATCH = 256  # chunks (16 MiB) per read transaction of an export
EXPORT_ATTEMPTS = 3


class Transfer:
    """Imports and exports of one engine."""

    def __init__(self, records: Records, maps: BlockMaps, chunks: ChunkStore,
                 ctx: BlockContext, pool: ThreadPoolExecutor, devices: VolumeCaches,
                 volumes: Volumes) -> None:
        self.records = records
        self.store = records.store
        self.maps = maps
        self.chunks = chunks
        self.ctx = ctx
        self.pool = pool
        self.devices = devices
        self.volumes = volumes

    def _volume(self, volume_id: str) -> Volume:
        with self.store.read() as txn:
            return Volume.from_dict(self.records.vol_rec(txn, volume_id))

    def _view_chain(self, txn: Txn,
                    resource_id: str) -> tuple[list[tuple[int, int]], int]:
        """The chain and size in bytes of a volume (at its head) or a completed snapshot."""
        if isinstance(resource_id, str) and resource_id.startswith("snap-"):
            rec = self.records.completed(txn, resource_id)
            return (self.maps.chain(txn, (rec["lineage"], rec["gen"])),
                    rec["volume_size_gib"] * L.GIB)
        rec = self.records.vol_rec(txn, resource_id)
        lin = self.maps.load(txn, rec["lineage"])
        assert lin.head is not None
        return self.maps.chain(txn, (lin.id, lin.head)), rec["size_gib"] * L.GIB

    def export(self, resource_id: str, path: str | os.PathLike[str],
               progress: Callable[[int, int], None] | None = None) -> int:
        is_vol = isinstance(resource_id, str) and resource_id.startswith("vol-")
        if is_vol:
            self.devices.flush(resource_id)
        with self.store.read() as txn:  # refused before the file is touched
            chain, _ = self._view_chain(txn, resource_id)
            self.volumes.domains.of_lineage(txn, chain[0][0])  # KmsError: key unusable
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for attempt in range(EXPORT_ATTEMPTS):
                hold: Any = contextlib.nullcontext()
                if is_vol and attempt == EXPORT_ATTEMPTS - 1:
                    with self.devices.lock:
                        cache = self.devices.caches.get(resource_id)
                    if cache is not None:
                        hold = cache.flush_lock
                with self.ctx.fold_lock, hold:  # no fold meanwhile; the lock order of folds
                    total = self._export_once(resource_id, fd, progress)
                if total is not None:
                    os.fsync(fd)
                    return total
            raise IncorrectState(f"{resource_id} kept changing during the export (another "
                                 f"process writes to it); snapshot it and export the snapshot")
        finally:
            os.close(fd)

    def _pages_of(self, txn: Txn, patch: bytes, tag: bytes | None) -> bool:
        """Whether the pages of ``patch`` are stored; CorruptStore if they are not sealed in
        the domain of the lineage exported (``check_domain``: a tampered map)."""
        for page_key, _, _ in L.patch_layers(patch):
            raw = txn.get(page_key, db=self.ctx.pages_db)
            if raw is None:
                return False
            check_domain(raw, tag, f"the pages of patch {page_key.hex()}")
        return True

    def _export_once(self, resource_id: str, fd: int,
                     progress: Callable[[int, int], None] | None) -> int | None:
        """One export attempt (see :meth:`export`); None if a chunk it needs was freed."""
        batch = EXPORT_BATCH
        with self.store.read() as txn:
            chain, size = self._view_chain(txn, resource_id)
            visible = sorted(self.maps.visible(txn, chain).items())
            domain = self.ctx.lineage_domain(txn, chain[0][0])  # unlocked by export()
        tag = domain.tag if domain is not None else None
        total = len(visible) * L.CHUNK_SIZE
        os.ftruncate(fd, 0)  # a retry leaves nothing of the attempt before
        os.ftruncate(fd, size)

        def fetch(start: int) -> tuple[list[int], Any] | None:
            part = visible[start:start + batch]
            with self.store.read() as txn:
                keys = [k for _, k in part if not L.is_patch(k)]
                got = dict(zip(keys, self.chunks.backend.get_many(txn, keys), strict=True))
                values: list[tuple[bytes, bytes] | bytearray | None] = []
                for _, k in part:
                    if not L.is_patch(k):
                        v = got[k]
                        if v is not None:
                            check_domain(v, tag, f"chunk {k.hex()}")
                        values.append(None if v is None else (k, v))
                    elif not self._pages_of(txn, k, tag) or \
                            txn.get(L.parse_patch(k)[2], db=self.maps.maps) != k:
                        # rewritten at its map key (a flush at the head) or gone since this
                        # attempt resolved it: its pages are not those any more; start over
                        values.append(None)
                    else:  # a patch is laid over its base here; stored chunks decode on the pool
                        values.append(bytearray(self.ctx.content(txn, k, domain)))
            if any(v is None for v in values):
                with self.store.read() as txn:
                    self._view_chain(txn, resource_id)  # VolumeNotFound if it was deleted
                return None
            found = [v for v in values if v is not None]
            half = (len(found) + 1) // 2
            decode = self.chunks.decode
            futs = [self.pool.submit(lambda vs: [
                v if isinstance(v, bytearray) else decode(*v) for v in vs], vs)
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
            for idx, data in zip(idxs, datas, strict=True):
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
        if "snapshot_id" in create_args:
            raise InvalidParameterCombination(
                "import_image creates an empty volume; restore the snapshot first and import "
                "into it with volume_id=")
        fd = os.open(os.fspath(path), os.O_RDONLY)
        try:
            size = _source_size(fd, os.fspath(path))
            if volume_id is None:
                gib = max(1, -(-size // L.GIB))
                vol = self.volumes.create_volume(size_gib=gib, volume_type=volume_type,
                                                 **create_args)
                release = self.devices.claim(vol.id)  # no other front end opens it meanwhile
                try:
                    lid = self._begin_import(vol.id, None)
                    try:
                        self._ingest(lid, fd, size, progress,
                                     lambda txn: self._end_import(txn, vol.id, None))
                    except BaseException:
                        self._abandon_import(vol.id, None)
                        raise
                finally:
                    if release is not None:
                        release()
                return self._volume(vol.id)
            vol = self._volume(volume_id)
            if vol.size_bytes < size:
                raise InvalidParameter(f"Image of {size} bytes does not fit volume "
                                       f"{volume_id} of {vol.size_bytes} bytes.")
            release = self.devices.claim(volume_id)  # VolumeInUse if served elsewhere
            try:
                staged = self._begin_import(volume_id, size)
                try:
                    self._ingest(staged, fd, size, progress,
                                 lambda txn: self._end_import(txn, volume_id, staged))
                except BaseException:
                    self._abandon_import(volume_id, staged)
                    raise
            finally:
                if release is not None:
                    release()
            return self._volume(volume_id)
        finally:
            os.close(fd)

    def _begin_import(self, volume_id: str, size: int | None) -> int:
        """Mark ``volume_id`` as being imported into; returns the lineage to load. ``size``
        None: the volume is new (its own lineage is loaded); else a new lineage is staged."""
        with self.devices.lock:
            cache = self.devices.caches.get(volume_id)
            if cache is not None and cache.users > 0:
                raise VolumeInUse(f"Volume {volume_id} is open ({cache.users} device(s)).")
            if cache is not None:
                cache.flush()
            with self.store.write() as txn:
                rec = self.records.vol_rec(txn, volume_id)
                if rec.get("staging") is not None or (size is not None and rec["state"] in
                                                       ("creating", "error")):
                    raise IncorrectState(f"Volume {volume_id} is {rec['state']}"
                                         f"{' (being imported into)' if rec.get('staging') else ''}"
                                         f"; nothing can be imported into it now.")
                # an encrypted volume takes an image only while its key is usable
                self.volumes.domains.of_lineage(txn, rec["lineage"])
                rec["importer"] = process_token()
                if size is None:
                    rec["state"] = "creating"
                    lid = int(rec["lineage"])
                else:  # the staged image is sealed in the volume's own domain
                    lid = self.maps.create(txn, volume_id, None, 0,
                                           self.maps.load(txn, rec["lineage"]).domain).id
                    rec["staging"] = lid
                self.records.put_vol(txn, rec)
            self.devices.forget(volume_id)  # flushed; reopened on the new lineage later
        return lid

    def _end_import(self, txn: Txn, volume_id: str, staged: int | None) -> None:
        """In the import's last transaction: the volume becomes the image. Into an
        existing volume this costs O(chunks of the volume and of the image) in this one
        transaction."""
        rec = self.records.vol_rec(txn, volume_id)
        if staged is not None:
            # The volume's head takes the staged image where they differ (a write at the
            # head, so its snapshots stay incremental), then the staged lineage goes.
            lin = self.maps.load(txn, rec["lineage"])
            assert lin.head is not None
            chain = self.maps.chain(txn, (lin.id, lin.head))
            now = self.maps.visible(txn, chain)
            image = self.maps.visible(txn, [(staged, 1)])
            floor = self.maps.head_floor(lin)
            cur = txn.cursor(db=self.maps.maps)
            for idx in sorted(set(now) | set(image)):
                key = image.get(idx)
                if now.get(idx) == key:
                    continue
                if key is not None:
                    self.chunks.incref(txn, key)
                self.maps.set_head(txn, lin, chain, idx, key, floor, cur)
            self.maps.save(txn, lin)
            drop_import(self.records, self.maps, txn, rec, staged, delete=False)
            return
        else:
            rec["state"] = "in-use" if rec["attachments"] else "available"
        rec.pop("importer", None)
        self.records.put_vol(txn, rec)

    def _abandon_import(self, volume_id: str, staged: int | None) -> None:
        """After a failed import: delete the new volume, or drop the staged lineage."""
        with self.store.write(freeing=True) as txn:
            rec = self.records.vol_rec(txn, volume_id)
            drop_import(self.records, self.maps, txn, rec, staged, delete=True)
        self.store.after_free()

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
        with self.store.read() as txn:
            domain = self.ctx.lineage_domain(txn, lid)  # unlocked by _begin_import
        batch = INGEST_BATCH_BYTES
        commit_bytes = INGEST_COMMIT_BYTES
        depth = INGEST_DEPTH
        ring = [bytearray(batch) for _ in range(depth + 3)]  # queued + storing + reading
        level = self.chunks.level
        threads = max(1, os.cpu_count() or 1)
        work: queue.Queue[Any] = queue.Queue(maxsize=depth)
        failed: list[BaseException] = []
        done = object()  # the reader got to the end; None: it failed, abort

        def committer() -> None:
            cm: AbstractContextManager[Txn] | None = None
            txn: Txn | None = None
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
                        cm = self.store.write()
                        txn = cm.__enter__()
                    lin = self.maps.load(txn, lid)
                    for (idx, fp, mv), enc in zip(entries, encoded, strict=True):
                        self.maps.set_fresh(txn, lin, idx,
                                            self.chunks.put(txn, fp, mv, enc, domain))
                    self.maps.save(txn, lin)
                    since += nbytes
                    if since >= commit_bytes:
                        assert cm is not None
                        cm.__exit__(None, None, None)
                        cm, txn, since = None, None, 0
                if txn is None:
                    cm = self.store.write()
                    txn = cm.__enter__()
                finish(txn)
                assert cm is not None
                cm.__exit__(None, None, None)
            except BaseException as exc:  # noqa: BLE001 -- handed to the reading thread
                err: BaseException = exc
                if cm is not None and txn is not None:
                    try:  # aborts; Store.write translates LMDB errors (map full -> StoreFull)
                        cm.__exit__(type(exc), exc, exc.__traceback__)
                    except BaseException as translated:  # noqa: BLE001 -- reported instead
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
                    fps = self.chunks.fingerprints(mv, domain)
                    first = pos // L.CHUNK_SIZE
                    entries = [(first + i, fp, mv[i * L.CHUNK_SIZE:(i + 1) * L.CHUNK_SIZE])
                               for i, fp in enumerate(fps) if fp is not None]
                    fut = self.pool.submit(encode_batch, [e[2] for e in entries], level,
                                           threads, domain, [e[1] for e in entries])
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
    """The reading side of :meth:`Transfer._ingest` failed: the committer aborts."""


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


