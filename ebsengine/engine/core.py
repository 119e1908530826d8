"""The :class:`Engine` facade: lifecycle, the unit of work, and the public methods, each
a thin call into the module of its concern (``volumes``, ``snapshots``, ``devices``,
``transfer``, ``imports``, ``usage``, ``meta``, over ``records``). The package docstring of
:mod:`ebsengine.engine` describes units of work.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from .. import layout as L
from ..block.context import BlockContext
from ..block.device import Device
from ..block.folder import Folder
from ..block.maps import BlockMaps
from ..errors import (
    EbsError,
    IncorrectState,
    InvalidBlock,
    InvalidParameterCombination,
    KmsError,
    MasterKeyError,
)
from ..kms import KeyService, MasterKey, check_store_master
from ..model import FsckReport, Snapshot, Usage, Volume
from ..rules import check_id
from ..storage.base import DEFAULT_MAP_SIZE, KvBackend, Txn
from ..storage.chunks import ChunkStore
from ..storage.envelope import DEFAULT_ZSTD_LEVEL
from ..storage.sealing import Keyring
from ..storage.store import Store
from .devices import VolumeCaches
from .domains import Domains, Staged
from .imports import recover_imports
from .meta import Meta
from .records import Records
from .snapshots import Snapshots
from .transfer import Transfer
from .unit import Transaction, Units
from .usage import usage
from .volumes import Volumes

DEFAULT_DIRTY_LIMIT = 256 * 1024 * 1024


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
            ``"memory://"`` is a fresh in-memory store (nothing durable; for tests).
        map_size: LMDB map size in bytes: the most the store may hold.
        dirty_limit: bytes of unflushed writes per volume before a writer flushes itself.
        zstd_level: compression level for a new store (an existing store keeps its own).
        backend: an opened storage backend (:class:`ebsengine.storage.base.KvBackend`, e.g.
            ``ebsengine.storage.memory.MemoryBackend()``) instead of ``path``; the engine
            closes it with itself.
        master_key: the master key file sealing the store's KMS keys (see
            :mod:`ebsengine.kms`); default ``$EBSENGINE_MASTER_KEY``, else
            ``~/.config/ebsengine/master.key``. Read only when the store holds KMS keys
            (then checked at open: MasterKeyError / WrongMasterKey, nothing changed) or when
            :attr:`kms` makes its first key (then created, mode 0600).
        fix_permissions: a store directory must be 0700 and its files 0600 (created so
            whatever the umask); a looser one is refused with :class:`InsecureStore`
            (nothing changed) unless this is true, which tightens the modes first.
            ``memory://`` stores have no permissions and ignore it.

    A read-write engine on a store that another process owns (serves it, or has devices
    open on it) is refused with :class:`StoreOwned` naming that process, nothing changed;
    ``readonly=True`` opens beside it and sees what it has committed. See :meth:`own` and
    :mod:`ebsengine.storage.owner`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 map_size: int = DEFAULT_MAP_SIZE, dirty_limit: int = DEFAULT_DIRTY_LIMIT,
                 zstd_level: int = DEFAULT_ZSTD_LEVEL, readonly: bool = False,
                 backend: KvBackend | None = None,
                 master_key: str | os.PathLike[str] | None = None,
                 fix_permissions: bool = False) -> None:
        if backend is not None:
            if path is not None:
                raise InvalidParameterCombination("give a store path or a backend, not both")
            self._store = Store(backend=backend, zstd_level=zstd_level)
            self.path = self._store.path
        else:
            self.path = os.fspath(path) if path is not None else default_store_path()
            self._store = Store(self.path, map_size=map_size, readonly=readonly,
                                zstd_level=zstd_level, fix_permissions=fix_permissions)
        # a store holding KMS keys opens only with its master key: refused before anything
        # else reads or writes it
        self._master = MasterKey(master_key)
        try:
            check_store_master(self._store, self._master)
        except BaseException:
            self._store.close()
            raise
        self._kms: KeyService | None = None
        self._kms_lock = threading.Lock()
        self._chunks = ChunkStore(self._store)
        self._maps = BlockMaps(self._store, self._chunks)
        self._pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)),
                                        thread_name_prefix="ebsengine-zstd")
        self._dirty_limit = dirty_limit
        self._units = threading.local()  # .current: the unit open on this thread, if any
        self._ctx = BlockContext(self._store, self._chunks, self._maps, self._pool,
                                 lambda: self._closed, no_unit=self._no_unit)
        self._domains = Domains(self._chunks, self._maps, self._ctx, lambda: self.kms)
        self._chunks.keys.exists = lambda domain_id: self.kms.has_domain(domain_id)
        self._maps.on_domain_gone = self._domains.forget
        self._folder = Folder(self._ctx)
        if not readonly:
            self._folder.start()
        self._closed = False
        self._clock: Callable[[], float] = time.time
        units = Units(self._unit, self._reading, self._no_unit, lambda: self._clock())
        self._records = Records(self._store)
        self._devices = VolumeCaches(self._store, self._ctx, self._records, dirty_limit,
                                     self._no_unit, self._domains)
        self._caches = self._devices.caches  # volume id -> its cache (open volumes)
        self._lock = self._devices.lock      # the engine lock
        self._volumes = Volumes(self._records, self._maps, self._devices, units,
                                self._domains)
        self._snapshots = Snapshots(self._records, self._maps, self._chunks, self._ctx,
                                    self._devices, units, self._domains)
        self._meta = Meta(self._records, units)
        self._transfer = Transfer(self._records, self._maps, self._chunks, self._ctx,
                                  self._pool, self._devices, self._volumes)
        if not readonly:
            recover_imports(self._records, self._maps, self._devices.lease_free)
            self._domains.recover()

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
                    except Exception as exc:  # noqa: BLE001 -- close anyway; report the first
                        error = error or exc
            self._closed = True
        self._folder.stop()
        self._pool.shutdown(wait=True)
        self._store.close()
        if error is not None:
            raise error

    def own(self, wait: float = 0.0) -> None:
        """Make this process the store's owner until the engine closes (see
        :mod:`ebsengine.storage.owner`): other processes cannot open the store read-write
        meanwhile (StoreOwned, naming this process); read-only opens still work. Serving a
        store and opening a device do it by themselves. Waits up to ``wait`` seconds for
        other processes using the store to close it, then raises StoreOwned naming one.
        In-memory stores are this process's alone already."""
        self._store._live()
        own = getattr(self._store.backend, "own", None)
        if own is not None:
            own(wait)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Stamp records (create, attach, snapshot start and completion times) with
        ``clock()`` instead of the wall clock: the cloud layer's one clock, simulated or not,
        so every time a user reads comes from the same clock."""
        self._clock = clock

    # --- units of work ----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, flush: Iterable[str] = ()) -> Iterator[Transaction]:
        """Open a unit of work: every engine call given ``tx=`` the yielded
        :class:`Transaction` commits with the others when the block ends, or not at all.

        ``flush``: ids of volumes to snapshot in the unit; their caches are flushed first (not
        part of the unit: it commits writes already acknowledged), see :mod:`ebsengine.engine`.
        Raises StoreFull at the end when the unit would not leave the deletion reserve (a
        unit that only deletes may use it), then nothing of it is stored.
        """
        if getattr(self._units, "current", None) is not None:
            raise IncorrectState("A unit of work is already open on this thread; pass tx= to "
                                 "join it instead of opening another.")
        names = list(dict.fromkeys(flush))
        for vid in names:
            check_id(vid, "vol")
        claims: list[Callable[[], None]] = []
        try:
            for vid in sorted(names):  # no other front end writes them until the unit ends
                release = self._devices.claim(vid)
                if release is not None:
                    claims.append(release)
            for vid in sorted(names):
                self.flush_volume(vid)
            # Lock order everywhere: engine lock, then a volume's flush lock, then the
            # store's write lock.
            with self._lock:
                with contextlib.ExitStack() as unit_txn:
                    # The unit's point in time: its volumes are flushed once more, their
                    # flush locks held until the unit's transaction is open, so a flush
                    # that begins later (a writer past its dirty limit, the NBD
                    # write-back) commits after the unit, never some of its groups before
                    # the unit's snapshots freeze.
                    held = [c for c in (self._caches.get(vid) for vid in sorted(names))
                            if c is not None and not c.deleted]
                    with contextlib.ExitStack() as locks:
                        for cache in held:
                            locks.enter_context(cache.flush_lock)
                        for cache in held:
                            cache.flush_held()
                        txn = unit_txn.enter_context(self._store.write(freeing=True))
                    tx = Transaction(self, txn, frozenset(names))
                    tx._releases = claims
                    tx.now = self._clock()
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
        finally:
            for release in reversed(claims):
                release()

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

    # --- volumes ------------------------------------------------------------------------------

    def create_volume(self, size_gib: int | None = None, volume_type: str = "gp2", *,
                      snapshot_id: str | None = None, iops: int | None = None,
                      throughput: int | None = None, availability_zone: str | None = None,
                      multi_attach_enabled: bool = False, encrypted: bool = False,
                      kms_key_id: str | None = None,
                      tags: dict[str, str] | None = None, account: str | None = None,
                      tx: Transaction | None = None, staged: Staged | None = None) -> Volume:
        """Create an empty volume, or one from a snapshot in O(1) (data read through lazily).

        ``availability_zone``: the zone to record (default: the rules'
        ``DEFAULT_AVAILABILITY_ZONE``). ``encrypted``: seal its data under a new data key
        wrapped by KMS key ``kms_key_id`` (id, ARN, alias or alias ARN of ``account`` in the
        zone's region; default ``alias/aws/ebs``). A volume from an encrypted snapshot is
        always encrypted: with the snapshot's data key (O(1)) unless another key is named;
        another key, or encrypting a plaintext snapshot, copies the data under a new data
        key (O(data)), in transactions of its own before the unit (:meth:`staged_copy`;
        inside a unit, pass ``staged`` or the unit makes the copy). The volume's
        ``kms_key_id`` is the key's ARN. Raises
        MissingParameter (no size and no snapshot; KmsKeyId without Encrypted),
        InvalidParameter (size/type/IOPS limits), InvalidVolumeSize (below the snapshot's),
        SnapshotNotFound, IncorrectState, KmsError (unknown, disabled or pending-deletion
        key: nothing is created).
        """
        return self._volumes.create_volume(
            size_gib, volume_type, snapshot_id=snapshot_id, iops=iops, throughput=throughput,
            availability_zone=availability_zone, multi_attach_enabled=multi_attach_enabled,
            encrypted=encrypted, kms_key_id=kms_key_id, tags=tags, account=account, tx=tx,
            staged=staged)

    def get_volume(self, volume_id: str, *, tx: Transaction | None = None) -> Volume:
        with self._reading(tx) as txn:
            return Volume.from_dict(self._records.vol_rec(txn, volume_id))

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
        return self._records.page("volumes", Volume.from_dict, after, limit, where)

    def delete_volume(self, volume_id: str, *, tx: Transaction | None = None) -> None:
        """Delete a volume and free what only it referenced. Its snapshots stay.

        Raises VolumeInUse if it is attached or open on a device of this engine.
        """
        self._volumes.delete_volume(volume_id, tx=tx)

    def modify_volume(self, volume_id: str, size_gib: int | None = None,
                      volume_type: str | None = None, iops: int | None = None,
                      throughput: int | None = None,
                      multi_attach_enabled: bool | None = None, *,
                      tx: Transaction | None = None) -> Volume:
        """Elastic Volumes: grow, change type/IOPS/throughput. Shrinking is refused
        (InvalidVolumeSize)."""
        return self._volumes.modify_volume(volume_id, size_gib, volume_type, iops, throughput,
                                           multi_attach_enabled, tx=tx)

    def attach_volume(self, volume_id: str, instance_id: str, device: str,
                      delete_on_termination: bool = False, *,
                      tx: Transaction | None = None) -> Volume:
        """Record an attachment (the instance layer checks the instance itself)."""
        return self._volumes.attach_volume(volume_id, instance_id, device,
                                           delete_on_termination, tx=tx)

    def detach_volume(self, volume_id: str, instance_id: str | None = None, *,
                      tx: Transaction | None = None) -> Volume:
        """Remove an attachment (of ``instance_id``, or every one when None)."""
        return self._volumes.detach_volume(volume_id, instance_id, tx=tx)

    # --- devices ------------------------------------------------------------------------------

    def open_volume(self, volume_id: str) -> Device:
        """A read-write device on the volume, sharing one cache with every other device of it
        in this engine. The engine becomes the store's owner (:meth:`own`): its cache holds
        writes no other process sees."""
        self.own()
        return self._devices.open(volume_id)

    def open_snapshot(self, snapshot_id: str) -> Device:
        """A read-only device on a completed snapshot, served from the snapshot (no copy)."""
        return self._devices.open_snapshot(snapshot_id)

    def flush_volume(self, volume_id: str) -> None:
        """Commit the volume's acknowledged writes (durable on return)."""
        self._devices.flush(volume_id)

    # --- snapshots ----------------------------------------------------------------------------

    def create_snapshot(self, volume_id: str, description: str = "",
                        tags: dict[str, str] | None = None, *,
                        tx: Transaction | None = None) -> Snapshot:
        """Snapshot a volume at this point in time: every write acknowledged before the call,
        none after. The first snapshot is full; later ones record only what changed since
        the previous one: O(chunks changed).

        Alone, the volume's cache is flushed and the snapshot frozen in that one commit. In a
        unit (``tx=``) the volume must be one the unit flushed (``transaction(flush=...)``),
        else IncorrectState: see :mod:`ebsengine.engine`.
        """
        return self._snapshots.create_snapshot(volume_id, description, tags, tx=tx)

    def get_snapshot(self, snapshot_id: str, *, tx: Transaction | None = None) -> Snapshot:
        with self._reading(tx) as txn:
            return Snapshot.from_dict(self._records.snap_rec(txn, snapshot_id))

    def list_snapshots(self, volume_id: str | None = None) -> list[Snapshot]:
        """Every snapshot, or those of one volume (an index lookup: O(its snapshots)),
        oldest first."""
        return self._snapshots.list_snapshots(volume_id)

    def page_snapshots(self, after: str | None = None, limit: int | None = None, *,
                       volume_id: str | None = None,
                       where: Callable[[Snapshot], bool] | None = None
                       ) -> tuple[list[Snapshot], str | None]:
        """One page of snapshots in id order, like :meth:`page_volumes`; with ``volume_id``
        only that volume's (read from the ``snaps_by_volume`` index: O(page))."""
        return self._snapshots.page_snapshots(after, limit, volume_id=volume_id, where=where)

    def delete_snapshot(self, snapshot_id: str, *, tx: Transaction | None = None) -> None:
        """Delete a snapshot. Its still-needed entries merge into its successor, so no other
        snapshot or volume changes; chunks nobody references any more are freed. Costs
        O(entries the snapshot recorded). A pending snapshot is cancelled."""
        self._snapshots.delete_snapshot(snapshot_id, tx=tx)

    def copy_snapshot(self, snapshot_id: str, description: str = "",
                      tags: dict[str, str] | None = None, *, encrypted: bool = False,
                      kms_key_id: str | None = None, region: str | None = None,
                      account: str | None = None, tx: Transaction | None = None,
                      staged: Staged | None = None) -> Snapshot:
        """A new snapshot with the same content, sharing every chunk: O(1). An encrypted
        source stays encrypted; ``encrypted`` encrypts a plaintext one, and ``kms_key_id``
        (of ``account`` in ``region``) moves it to another key: both copy the data under a
        new data key (O(data)), in transactions of their own before the unit (see
        :meth:`staged_copy`; inside a unit, pass ``staged`` or the unit makes the copy).
        Decrypting is never possible."""
        return self._snapshots.copy_snapshot(snapshot_id, description, tags,
                                             encrypted=encrypted, kms_key_id=kms_key_id,
                                             region=region, account=account, tx=tx,
                                             staged=staged)

    def staged_copy(self, snapshot_id: str | None, *, encrypted: bool = False,
                    kms_key_id: str | None = None, region: str | None = None,
                    account: str | None = None) -> AbstractContextManager[Staged | None]:
        """Before a unit of work that will make a volume (:meth:`create_volume`) or a
        snapshot (:meth:`copy_snapshot`) from snapshot ``snapshot_id`` with these
        encryption arguments: when that needs a copy under a new data key, make it now, in
        bounded transactions of its own (the writer is never held for the whole copy), and
        yield it (else None) to pass as ``staged=`` in the unit, which adopts it in O(1).
        All or nothing: a copy the unit did not adopt (it failed, or asked for something
        else) is dropped when the block ends; after a crash, at the next read-write open.
        Must be entered outside any unit of work."""
        if snapshot_id is not None:
            self._no_unit("staged_copy")
        return self._snapshots.staged_copy(snapshot_id, encrypted=encrypted,
                                           kms_key_id=kms_key_id, region=region,
                                           account=account)

    def list_snapshot_blocks(self, snapshot_id: str, start_block: int = 0) -> list[int]:
        """Indexes of the 512 KiB blocks holding data in a snapshot, ascending, from
        ``start_block``. Costs O(entries), not O(volume size)."""
        return self._snapshots.list_snapshot_blocks(snapshot_id, start_block)

    def list_changed_blocks(self, first_snapshot_id: str | None, second_snapshot_id: str,
                            start_block: int = 0) -> list[int]:
        """Blocks whose content differs between two snapshots of one lineage (the second
        may descend from the first through restores and copies). With no first snapshot,
        every block holding data in the second. Raises UnrelatedSnapshots when neither
        descends from the other."""
        return self._snapshots.list_changed_blocks(first_snapshot_id, second_snapshot_id,
                                                   start_block)

    def read_snapshot_block(self, snapshot_id: str, block_index: int) -> bytes:
        """The 524,288 bytes of one block of a completed snapshot."""
        with self.open_snapshot(snapshot_id) as dev:
            if isinstance(block_index, bool) or not isinstance(block_index, int) or \
                    not 0 <= block_index < dev.size // L.BLOCK_SIZE:
                raise InvalidBlock(f"Block index {block_index} is beyond the volume size "
                                   f"extent.")
            return dev.pread(L.BLOCK_SIZE, block_index * L.BLOCK_SIZE)

    # --- EBS direct API units (512 KiB blocks) ------------------------------------------------

    def start_snapshot(self, volume_size_gib: int, *, parent_snapshot_id: str | None = None,
                       description: str = "", tags: dict[str, str] | None = None,
                       encrypted: bool = False, kms_key_id: str | None = None,
                       region: str | None = None, account: str | None = None,
                       tx: Transaction | None = None) -> Snapshot:
        """Begin a snapshot written block by block (EBS direct API StartSnapshot);
        ``encrypted``/``kms_key_id`` as in :meth:`create_volume` (a child of an encrypted
        parent is encrypted with the parent's data key unless another key is named)."""
        return self._snapshots.start_snapshot(
            volume_size_gib, parent_snapshot_id=parent_snapshot_id, description=description,
            tags=tags, encrypted=encrypted, kms_key_id=kms_key_id, region=region,
            account=account, tx=tx)

    def put_snapshot_block(self, snapshot_id: str, block_index: int, data: bytes | memoryview,
                           progress: int | None = None, checksum: str | None = None) -> None:
        """Write one 512 KiB block of a pending snapshot (durable on return).

        ``checksum`` (opaque text, e.g. the client's base64 SHA-256) is kept with the block
        until the snapshot completes: see :meth:`snapshot_block_checksums`. Concurrent calls
        share commits (group commit), so parallel uploaders are not serialised on fsync.
        """
        self._snapshots.put_snapshot_block(snapshot_id, block_index, data, progress, checksum)

    def snapshot_block_checksums(self, snapshot_id: str) -> dict[int, str]:
        """``{block index: checksum}`` given with the blocks of a pending snapshot."""
        return self._snapshots.snapshot_block_checksums(snapshot_id)

    def complete_snapshot(self, snapshot_id: str,
                          verify: Callable[[dict[int, str]], None] | None = None, *,
                          tx: Transaction | None = None) -> Snapshot:
        """Seal a pending snapshot: it becomes ``completed`` and readable.

        ``verify(checksums)`` runs inside the sealing transaction with the block checksums
        written so far (see :meth:`snapshot_block_checksums`); if it raises, nothing changes.
        A block put concurrently is either seen by ``verify`` or refused (not pending).
        """
        return self._snapshots.complete_snapshot(snapshot_id, verify, tx=tx)

    def fail_snapshot(self, snapshot_id: str, *, tx: Transaction | None = None) -> Snapshot:
        """Move a pending snapshot to ``error`` and free what it had written."""
        return self._snapshots.fail_snapshot(snapshot_id, tx=tx)

    # --- tags ---------------------------------------------------------------------------------

    def set_tags(self, resource_id: str, tags: dict[str, str], *,
                 tx: Transaction | None = None) -> None:
        """Add or overwrite tags of a volume or snapshot."""
        self._meta.set_tags(resource_id, tags, tx=tx)

    def delete_tags(self, resource_id: str, tags: dict[str, str | None], *,
                    tx: Transaction | None = None) -> None:
        """Remove tags; a None value removes the key whatever its value."""
        self._meta.delete_tags(resource_id, tags, tx=tx)

    # --- the key service ------------------------------------------------------------------------

    @property
    def kms(self) -> KeyService:
        """The store's key service (KMS keys, aliases, data-key domains: see
        :mod:`ebsengine.kms`), made on first use. Its ``txn=`` arguments take a unit of this
        engine (:meth:`transaction`) or, below the engine, a storage transaction."""
        if self._kms is None:
            with self._kms_lock:
                if self._kms is None:
                    self._kms = KeyService(self._store, self._master, unit=self._kms_unit,
                                           reading=self._kms_reading)
        return self._kms

    @contextlib.contextmanager
    def _kms_unit(self, txn: Any) -> Iterator[Txn]:
        if txn is None or isinstance(txn, Transaction):
            with self._unit(txn, grows=True) as (_, t):
                yield t
        else:  # a storage transaction of the caller (the data path below the engine)
            yield txn

    @contextlib.contextmanager
    def _kms_reading(self, txn: Any) -> Iterator[Txn]:
        if txn is None or isinstance(txn, Transaction):
            with self._reading(txn) as t:
                yield t
        else:
            yield txn

    # --- service key/value space --------------------------------------------------------------

    def service_get(self, namespace: str, key: str, *, tx: Transaction | None = None) -> Any:
        """The JSON value a service layer stored under ``(namespace, key)``, or None."""
        return self._meta.service_get(namespace, key, tx=tx)

    def service_put(self, namespace: str, key: str, value: Any, *,
                    tx: Transaction | None = None) -> None:
        """Store a JSON ``value`` under ``(namespace, key)``; None deletes it."""
        self._meta.service_put(namespace, key, value, tx=tx)

    def service_items(self, namespace: str, prefix: str = "", *, limit: int | None = None,
                      tx: Transaction | None = None) -> list[tuple[str, Any]]:
        """``(key, value)`` of a namespace whose keys start with ``prefix``, in key order
        (the first ``limit`` of them when given)."""
        return self._meta.service_items(namespace, prefix, limit=limit, tx=tx)

    # --- accounting and checking --------------------------------------------------------------

    def usage(self, resource_id: str) -> Usage:
        """Storage accounting for a volume or snapshot (see :class:`Usage`)."""
        if resource_id.startswith("vol-"):
            self.flush_volume(resource_id)
        return usage(self._records, self._maps, self._chunks, resource_id)

    def stored_bytes(self, snapshot_id: str) -> int:
        """A completed snapshot's own stored bytes (``usage(id).stored_bytes``), in
        O(entries it recorded): without the O(volume) count of written bytes that
        :meth:`usage` also makes. What the cost meter bills a snapshot by."""
        return usage(self._records, self._maps, self._chunks, snapshot_id,
                     written=False).stored_bytes

    def fold(self) -> int:
        """Merge every patch (partial-chunk writes) into whole chunks now; returns how many.
        A background folder does this by itself when the store is quiet; what any volume
        or snapshot reads never changes."""
        with self._lock:
            for cache in list(self._caches.values()):
                if not cache.deleted:
                    cache.flush()
        return self._folder.fold_all()

    def fsck(self, *, keys: bool = True) -> FsckReport:
        """Verify every storage invariant of ``layout.py``; flushes open volumes first.

        Encrypted data is opened and verified with its data keys, unwrapped through KMS
        (which needs the master key) unless ``keys`` is False. A domain whose key cannot be
        had (no master key, a disabled key) gets the structural checks only, and the
        report's ``unverified`` says so; that alone does not make the report fail."""
        from ..check import check_store
        self._no_unit("fsck")
        ring = Keyring(exists=self._chunks.keys.exists)  # a lineage naming no domain: I11
        why: list[str] = []
        if keys:
            for domain_id in self._lineage_domains():
                try:
                    domain = self._domains.unlock(domain_id)
                except (KmsError, MasterKeyError) as exc:
                    why.append(f"{domain_id}: {exc}")
                    continue
                if domain is not None:
                    ring.add(domain)
        with self._lock:
            for cache in list(self._caches.values()):
                if not cache.deleted:
                    try:
                        cache.flush()
                    except EbsError:
                        pass  # a full store or disk still deserves a check of what it holds
        report = check_store(self._store, self._chunks, self._maps, keys=ring)
        report.unverified.extend(why)
        return report

    def _lineage_domains(self) -> list[str]:
        out: set[str] = set()
        for batch in self._store.scan(self._store.db["lineages"]):
            for _, raw in batch:
                try:
                    dom = json.loads(raw).get("domain")
                except ValueError:
                    continue  # fsck reports it
                if isinstance(dom, str):
                    out.add(dom)
        return sorted(out)

    # --- bulk transfer ------------------------------------------------------------------------

    def export(self, resource_id: str, path: str | os.PathLike[str],
               progress: Callable[[int, int], None] | None = None) -> int:
        """Write a volume or snapshot to a raw file, sparse where it holds no data.

        Returns the number of data bytes written. ``progress(done, total)`` is called with
        bytes of data chunks written so far. Decompression of the next batch runs on the
        pool while this thread writes the previous one.

        The image is one point in time of the resource: when the export began, or when
        its last attempt began if it had to start over (below; a volume is flushed
        first). The chunk keys are resolved once; the chunks are then read in batches of
        ``EXPORT_BATCH``, each in a fresh short read transaction, so a long export does not
        keep the store from reusing the space concurrent writers free. Chunks are
        immutable, so a key still stored still holds the bytes it had; a patch (partial
        chunk) is checked to be still the value at its map key. If a concurrent flush freed
        a chunk or rewrote a patch the export still needs, the export starts over from a
        new point in time, and its last attempt holds the volume's flush lock (writers of
        that volume wait for it; other volumes are not held up; ``progress`` must then not
        flush that volume itself). The background folder waits while an export attempt
        runs (folding keeps content but replaces values), so ``progress`` must not call
        :meth:`fold`.
        """
        return self._transfer.export(resource_id, path, progress)

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
        return self._transfer.import_image(path, volume_id=volume_id, volume_type=volume_type,
                                           progress=progress, **create_args)
