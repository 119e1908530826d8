"""The engine's open volumes: one write-back cache per volume, shared by its devices."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .. import layout as L
from ..block.context import BlockContext
from ..block.device import Device
from ..block.volume import SnapshotView, VolumeCache
from ..errors import IncorrectState, VolumeInUse
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
        unwrapped then: KmsError if its KMS key is disabled or pending deletion). On a store
        with volume leases (``rados://``) the cache holds the volume's lease: VolumeInUse
        while another front end serves the volume."""
        self.store._live()
        with self.lock:
            cache = self.caches.get(volume_id)
            if cache is None:
                lease = getattr(self.store.backend, "lease", None)
                if lease is not None:
                    self._fresh()  # another front end may have just made or changed it
                    with self.store.read() as txn:
                        self.records.vol_rec(txn, volume_id)  # NotFound before any lease
                    lease(volume_id)
                try:
                    with self.store.read() as txn:
                        rec = self.records.vol_rec(txn, volume_id)
                        if rec["state"] in ("creating", "error") or \
                                rec.get("staging") is not None:
                            raise IncorrectState(
                                f"Volume '{volume_id}' is {rec['state']}"
                                + (" (being imported into)" if rec.get("staging") else "")
                                + "; it cannot be opened now.")
                        domain = self.domains.of_lineage(txn, rec["lineage"])
                    cache = VolumeCache(self.ctx, volume_id, rec["lineage"],
                                        rec["size_gib"] * L.GIB, self.dirty_limit, domain)
                except BaseException:
                    self._release(volume_id)
                    raise
                self.caches[volume_id] = cache
            return cache

    def _fresh(self) -> None:
        refresh = getattr(self.store.backend, "refresh", None)
        if refresh is not None:
            refresh()

    def _release(self, volume_id: str) -> None:
        release = getattr(self.store.backend, "release", None)
        if release is not None:
            release(volume_id)

    def forget(self, volume_id: str) -> None:
        """Drop the volume's cache (its writes committed or moot) and with it its lease."""
        with self.lock:
            if self.caches.pop(volume_id, None) is not None:
                self._release(volume_id)

    def retire(self, volume_id: str) -> None:
        """The volume's deletion has committed: a store with leases drops its lease object
        once this engine's claims on it end."""
        retire = getattr(self.store.backend, "retire", None)
        if retire is not None:
            retire(volume_id)

    def lease_free(self, volume_id: str) -> bool:
        """Whether no front end holds the volume's lease (on a store with leases; elsewhere
        False: there is nothing to tell)."""
        lease = getattr(self.store.backend, "lease", None)
        if lease is None:
            return False
        try:
            lease(volume_id)
        except VolumeInUse:
            return False
        self._release(volume_id)
        return True

    def drop_idle(self, volume_id: str) -> None:
        """On a store with volume leases, drop a cache no device uses (and its lease): it
        was opened only for one operation. Elsewhere caches stay until the engine closes."""
        if getattr(self.store.backend, "lease", None) is None:
            return
        with self.lock:
            cache = self.caches.get(volume_id)
            if cache is not None and not cache.users:
                self.forget(volume_id)

    def claim(self, volume_id: str) -> Callable[[], None] | None:
        """Make sure no other front end serves the volume while this engine changes it
        (stores with volume leases; elsewhere nothing to do): one more claim on its lease
        (taken if this engine does not hold it yet), until the returned function is called.
        VolumeInUse while another front end holds it."""
        lease = getattr(self.store.backend, "lease", None)
        if lease is None:
            return None
        lease(volume_id)  # counted: also when an open cache of this engine holds it
        self._fresh()  # what the previous holder committed
        return lambda: self._release(volume_id)

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
                idle = not cache.users and self.caches.get(volume_id) is cache and \
                    getattr(self.store.backend, "lease", None) is not None
            if not idle:
                return
            # a store with leases: hand the volume back once no device uses it
            try:
                cache.flush()
            except Exception:  # noqa: BLE001 - keep it (and its writes) for a retry
                return
            with self.lock:
                if not cache.users and self.caches.get(volume_id) is cache:
                    self.forget(volume_id)

        return Device(cache, release)

    def open_snapshot(self, snapshot_id: str) -> Device:
        """A read-only device on a completed snapshot, served from the snapshot (no copy)."""
        self._fresh()  # it may have just been taken by another front end
        with self.store.read() as txn:
            rec = self.records.completed(txn, snapshot_id)
            domain = self.domains.of_lineage(txn, rec["lineage"])  # refused while locked
        view = SnapshotView(self.ctx, snapshot_id, rec["lineage"], rec["gen"],
                            rec["volume_size_gib"] * L.GIB, domain)
        return Device(view, lambda: None)

    def flush(self, volume_id: str) -> None:
        """Commit the volume's acknowledged writes (durable on return)."""
        self.no_unit("flush_volume")
        with self.lock:
            cache = self.caches.get(volume_id)
        if cache is not None:
            cache.flush()
