"""The engine's open volumes: one write-back cache per volume, shared by its devices."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .. import layout as L
from ..block.context import BlockContext
from ..block.device import Device
from ..block.volume import SnapshotView, VolumeCache
from ..errors import IncorrectState
from ..storage.store import Store
from .domains import Domains
from .records import Records


class VolumeCaches:
    """The caches of the volumes open in one engine, and the engine lock that guards them.

    ``lock`` is the engine lock (lock order everywhere: this lock, then the store's write
    lock); ``caches`` maps a volume id to its cache. ``no_unit(what)`` refuses a flush on a
    thread inside a unit of work.
    """

    def __init__(self, store: Store, ctx: BlockContext, records: Records, dirty_limit: int,
                 no_unit: Callable[[str], None], domains: Domains) -> None:
        self.store = store
        self.domains = domains
        self.ctx = ctx
        self.records = records
        self.dirty_limit = dirty_limit
        self.no_unit = no_unit
        self.lock = threading.RLock()
        self.caches: dict[str, VolumeCache] = {}

    def cache(self, volume_id: str) -> VolumeCache:
        """The volume's cache, opened on first use (an encrypted volume's data key is
        unwrapped then: KmsError if its KMS key is disabled or pending deletion)."""
        self.store._live()
        with self.lock:
            cache = self.caches.get(volume_id)
            if cache is None:
                with self.store.read() as txn:
                    rec = self.records.vol_rec(txn, volume_id)
                    if rec["state"] in ("creating", "error") or rec.get("staging") is not None:
                        raise IncorrectState(f"Volume '{volume_id}' is {rec['state']}"
                                             + (" (being imported into)" if rec.get("staging")
                                                else "") + "; it cannot be opened now.")
                    domain = self.domains.of_lineage(txn, rec["lineage"])
                cache = VolumeCache(self.ctx, volume_id, rec["lineage"], rec["size_gib"] * L.GIB,
                                    self.dirty_limit, domain)
                self.caches[volume_id] = cache
            return cache

    def open(self, volume_id: str) -> Device:
        """A read-write device on the volume, sharing one cache with every other device of it
        in this engine. An encrypted volume opens only while KMS can unwrap its data key."""
        with self.lock:
            cache = self.cache(volume_id)
            if cache.domain is not None:
                self.domains.unlock(cache.domain.id)  # the key may be disabled since
            cache.users += 1

        def release() -> None:
            with self.lock:
                cache.users -= 1

        return Device(cache, release)

    def open_snapshot(self, snapshot_id: str) -> Device:
        """A read-only device on a completed snapshot, served from the snapshot (no copy)."""
        with self.store.read() as txn:
            rec = self.records.completed(txn, snapshot_id)
            self.domains.of_lineage(txn, rec["lineage"])  # refused while its key is unusable
        view = SnapshotView(self.ctx, snapshot_id, rec["lineage"], rec["gen"],
                            rec["volume_size_gib"] * L.GIB)
        return Device(view, lambda: None)

    def flush(self, volume_id: str) -> None:
        """Commit the volume's acknowledged writes (durable on return)."""
        self.no_unit("flush_volume")
        with self.lock:
            cache = self.caches.get(volume_id)
        if cache is not None:
            cache.flush()
