"""Storage accounting of a volume or snapshot (:class:`ebsengine.model.Usage`)."""

from __future__ import annotations

from .. import layout as L
from ..block.maps import BlockMaps
from ..model import Usage
from ..storage.chunks import ChunkStore
from .records import Records


def usage(records: Records, maps: BlockMaps, chunks: ChunkStore, resource_id: str, *,
          written: bool = True) -> Usage:
    """Storage accounting for a volume (at its head: flush it first) or a completed
    snapshot; see :meth:`ebsengine.engine.Engine.usage`. ``written=False`` leaves
    ``written_bytes`` 0 and skips its count, the one part that costs O(volume entries)."""
    with records.store.read() as txn:
        if resource_id.startswith("snap-"):
            rec = records.completed(txn, resource_id)
            lid, gen = rec["lineage"], rec["gen"]
            lin = maps.load(txn, lid)
            live = lin.live_points()
            prev = max((p for p in live if p < gen), default=0)
            nxt = min((p for p in live if p > gen), default=None)
            pinned = gen in lin.pins
            size = rec["volume_size_gib"] * L.GIB
            chain = maps.chain(txn, (lid, gen))
        else:
            rec = records.vol_rec(txn, resource_id)
            lid = rec["lineage"]
            lin = maps.load(txn, lid)
            assert lin.head is not None
            gen = lin.head
            prev = maps.head_floor(lin)
            nxt, pinned = None, False
            size = rec["size_gib"] * L.GIB
            chain = maps.chain(txn, (lid, gen))
        stored = unique = 0
        cur = txn.cursor(db=maps.maps)
        for egen, idx in maps.interval_entries(txn, lid, prev, gen):
            value = txn.get(L.map_key(lid, idx, egen), db=maps.maps)
            if not value:
                continue
            n = maps.entry_stored_size(txn, L.map_key(lid, idx, egen), value)
            stored += n
            if nxt is None:
                superseded = True
            else:  # the entry at ``egen`` <= ``gen`` < ``nxt`` is there at least
                newest = maps.entry(txn, lid, idx, nxt, cur)
                assert newest is not None
                superseded = newest[0] > gen
            if superseded and not pinned and (L.is_patch(value) or
                                              chunks.refcount(txn, value) == 1):
                unique += n
        n_written = len(maps.visible(txn, chain)) * L.CHUNK_SIZE if written else 0
    return Usage(logical_bytes=size, stored_bytes=stored, unique_bytes=unique,
                 written_bytes=n_written)
