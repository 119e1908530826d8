"""Snapshots: create (one volume or several in one unit), copy, delete, list and page;
snapshots written block by block (EBS direct API: start, put, complete, fail) and the
block listings (a snapshot's blocks, the blocks changed between two snapshots).

The public methods of :class:`ebsengine.engine.Engine` of the same names document them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .. import layout as L
from ..block.context import BlockContext
from ..block.maps import BlockMaps, Lineage
from ..errors import (
    IncorrectState,
    InvalidBlock,
    InvalidVolumeSize,
    MissingParameter,
    UnrelatedSnapshots,
)
from ..model import Snapshot
from ..rules import MAX_SNAPSHOT_GIB, check_description, check_tags, new_id
from ..storage.base import Txn
from ..storage.chunks import ChunkStore
from ..storage.envelope import encode_chunk
from .devices import VolumeCaches
from .domains import Domains
from .records import Records
from .unit import Transaction, Units


class Snapshots:
    """The snapshot records of one engine and the lineage points they name."""

    def __init__(self, records: Records, maps: BlockMaps, chunks: ChunkStore,
                 ctx: BlockContext, devices: VolumeCaches, units: Units,
                 domains: Domains) -> None:
        self.records = records
        self.domains = domains
        self.store = records.store
        self.maps = maps
        self.chunks = chunks
        self.ctx = ctx
        self.devices = devices
        self.units = units

    def create_snapshot(self, volume_id: str, description: str = "",
                        tags: dict[str, str] | None = None, *,
                        tx: Transaction | None = None) -> Snapshot:
        tags = check_tags(tags)
        check_description(description)
        sid = new_id("snap")
        if tx is not None:
            with self.units.unit(tx, grows=True) as (unit, txn):
                if volume_id not in unit.flushed:
                    raise IncorrectState(
                        f"Volume {volume_id} was not flushed for this unit of work: name it in "
                        f"transaction(flush=...) so its snapshot holds every acknowledged write.")
                rec = self.records.vol_rec(txn, volume_id)
                lin = self.maps.load(txn, rec["lineage"])
                snap = self._freeze(txn, lin, rec, sid, description, tags, unit.now)
                self.maps.save(txn, lin)
                return snap
        self.units.no_unit("create_snapshot without tx=")
        out: list[Snapshot] = []

        def freeze(txn: Txn, lin: object) -> None:
            assert isinstance(lin, Lineage)
            out.append(self._freeze(txn, lin, self.records.vol_rec(txn, volume_id), sid,
                                    description, tags, self.units.clock()))

        opened = volume_id not in self.devices.caches
        cache = self.devices.cache(volume_id)  # VolumeInUse if another front end serves it
        try:
            cache.flush(in_txn=freeze)  # the flush's commit holds the freeze
        finally:
            if opened:
                self.devices.drop_idle(volume_id)
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
        self.records.put_snap(txn, {**snap.to_dict(), "lineage": lin.id, "gen": gen})
        return snap

    def list_snapshots(self, volume_id: str | None = None) -> list[Snapshot]:
        if volume_id is None:
            with self.store.read() as txn:
                snaps = [Snapshot.from_dict(json.loads(v)) for _, v in
                         txn.cursor(db=self.store.db["snapshots"])]
        else:
            snaps, _ = self.page_snapshots(volume_id=volume_id)
        return sorted(snaps, key=lambda s: (s.start_time, s.id))

    def page_snapshots(self, after: str | None = None, limit: int | None = None, *,
                       volume_id: str | None = None,
                       where: Callable[[Snapshot], bool] | None = None
                       ) -> tuple[list[Snapshot], str | None]:
        prefix = None if volume_id is None else L.snap_volume_prefix(volume_id)
        return self.records.page("snapshots", Snapshot.from_dict, after, limit, where, prefix)

    def delete_snapshot(self, snapshot_id: str, *, tx: Transaction | None = None) -> None:
        with self.units.unit(tx, frees=True) as (_, txn):
            rec = self.records.snap_rec(txn, snapshot_id)
            if rec["state"] == "pending":
                self._abandon_pending(txn, rec)
            elif rec["state"] == "completed":
                lin = self.maps.load(txn, rec["lineage"])
                del lin.points[rec["gen"]]
                self.maps.drop_point(txn, lin, rec["gen"])
            self.records.delete_snap(txn, rec)

    def copy_snapshot(self, snapshot_id: str, description: str = "",
                      tags: dict[str, str] | None = None, *, encrypted: bool = False,
                      kms_key_id: str | None = None, region: str | None = None,
                      account: str | None = None,
                      tx: Transaction | None = None) -> Snapshot:
        tags = check_tags(tags)
        check_description(description)
        if kms_key_id is not None and not encrypted:
            raise MissingParameter("The parameter KmsKeyId requires the parameter Encrypted "
                                   "to be set.")
        sid = new_id("snap")
        with self.units.unit(tx, grows=True) as (_, txn):
            src = self.records.completed(txn, snapshot_id)
            lin, arn = self.domains.lineage_for(
                txn, None, (src["lineage"], src["gen"]), 0, encrypted=encrypted,
                kms_key_id=kms_key_id, region=region, account=account)
            lin.head = None
            lin.points[1] = sid
            self.maps.save(txn, lin)
            now = self.units.clock()
            snap = Snapshot(id=sid, volume_id=src["volume_id"],
                            volume_size_gib=src["volume_size_gib"], state="completed",
                            start_time=now, completion_time=now,
                            description=description or src["description"],
                            encrypted=arn is not None, kms_key_id=arn,
                            parent_id=None, full_size_bytes=src["full_size_bytes"], tags=tags)
            self.records.put_snap(txn, {**snap.to_dict(), "lineage": lin.id, "gen": 1})
        return snap

    def _point(self, txn: Txn, snapshot_id: str) -> list[tuple[int, int]]:
        rec = self.records.completed(txn, snapshot_id)
        return self.maps.chain(txn, (rec["lineage"], rec["gen"]))

    def list_snapshot_blocks(self, snapshot_id: str, start_block: int = 0) -> list[int]:
        lo = min(max(0, start_block) * L.CHUNKS_PER_BLOCK, L.MAX_CHUNKS)
        with self.store.read() as txn:
            chain = self._point(txn, snapshot_id)
            idxs = self.maps.visible(txn, chain, lo=lo)
        return sorted({i // L.CHUNKS_PER_BLOCK for i in idxs})

    def list_changed_blocks(self, first_snapshot_id: str | None, second_snapshot_id: str,
                            start_block: int = 0) -> list[int]:
        if first_snapshot_id is None:
            return self.list_snapshot_blocks(second_snapshot_id, start_block)
        lo = min(max(0, start_block) * L.CHUNKS_PER_BLOCK, L.MAX_CHUNKS)
        with self.store.read() as txn:
            a = self._point(txn, first_snapshot_id)
            b = self._point(txn, second_snapshot_id)
            cands = self._diff_candidates(txn, a, b)
            if cands is None:
                cands = self._diff_candidates(txn, b, a)
            if cands is None:
                raise UnrelatedSnapshots(
                    f"Snapshots {first_snapshot_id} and {second_snapshot_id} are not related.")
            cur = txn.cursor(db=self.maps.maps)
            changed = {i for i in cands if i >= lo and not self.ctx.same_content(
                txn, self.maps.resolve(txn, a, i, cur), self.maps.resolve(txn, b, i, cur))}
        return sorted({i // L.CHUNKS_PER_BLOCK for i in changed})

    def _diff_candidates(self, txn: Txn, a: list[tuple[int, int]],
                         b: list[tuple[int, int]]) -> set[int] | None:
        """Chunk indexes that may differ between chain ``a`` and the descendant chain ``b``,
        or None if ``b`` does not descend from ``a``'s point."""
        alid, agen = a[0]
        for k, (lid, gen) in enumerate(b):
            if lid == alid and gen >= agen:
                cands = self.maps.changed_candidates(txn, lid, agen, gen)
                for lid2, gen2 in b[:k]:
                    cands |= self.maps.changed_candidates(txn, lid2, 0, gen2)
                return cands
        return None

    def start_snapshot(self, volume_size_gib: int, *, parent_snapshot_id: str | None = None,
                       description: str = "", tags: dict[str, str] | None = None,
                       encrypted: bool = False, kms_key_id: str | None = None,
                       region: str | None = None, account: str | None = None,
                       tx: Transaction | None = None) -> Snapshot:
        tags = check_tags(tags)
        if isinstance(volume_size_gib, bool) or not isinstance(volume_size_gib, int) or \
                not 1 <= volume_size_gib <= MAX_SNAPSHOT_GIB:
            raise InvalidVolumeSize(f"VolumeSize must be 1-{MAX_SNAPSHOT_GIB} GiB.")
        check_description(description)
        sid = new_id("snap")
        with self.units.unit(tx, grows=True) as (_, txn):
            base = None
            allocated = 0
            if parent_snapshot_id is not None:
                parent = self.records.completed(txn, parent_snapshot_id)
                if parent["volume_size_gib"] > volume_size_gib:
                    raise InvalidVolumeSize(
                        f"VolumeSize {volume_size_gib} is smaller than the parent snapshot's "
                        f"{parent['volume_size_gib']}.")
                base = (parent["lineage"], parent["gen"])
                allocated = parent["full_size_bytes"] // L.CHUNK_SIZE
            lin, arn = self.domains.lineage_for(
                txn, sid, base, allocated, encrypted=bool(encrypted), kms_key_id=kms_key_id,
                region=region, account=account)
            snap = Snapshot(id=sid, volume_id=None, volume_size_gib=volume_size_gib,
                            state="pending", start_time=self.units.clock(), progress=0,
                            description=description, encrypted=arn is not None,
                            kms_key_id=arn, parent_id=parent_snapshot_id, tags=tags)
            self.records.put_snap(txn, {**snap.to_dict(), "lineage": lin.id, "gen": None})
        return snap

    def put_snapshot_block(self, snapshot_id: str, block_index: int, data: bytes | memoryview,
                           progress: int | None = None, checksum: str | None = None) -> None:
        with self.store.coming():
            self._put_block(snapshot_id, block_index, data, progress, checksum)

    def _put_block(self, snapshot_id: str, block_index: int, data: bytes | memoryview,
                   progress: int | None, checksum: str | None) -> None:
        mv = memoryview(data).cast("B")
        if len(mv) != L.BLOCK_SIZE:
            raise InvalidBlock(f"Block data must be exactly {L.BLOCK_SIZE} bytes, "
                               f"not {len(mv)}.")
        with self.store.read() as txn:
            rec = self.records.snap_rec(txn, snapshot_id)
            self._check_block(rec, block_index)
            domain = self.domains.of_lineage(txn, rec["lineage"])
            fps = self.chunks.fingerprints(mv, domain)
            pieces = [mv[i * L.CHUNK_SIZE:(i + 1) * L.CHUNK_SIZE] for i in range(len(fps))]
            todo = [i for i, fp in enumerate(fps)
                    if fp is not None and not self.chunks.maybe_stored(txn, fp)]
        enc = {i: encode_chunk(pieces[i], self.chunks.level, domain, fps[i]) for i in todo}

        def apply(txn: Txn) -> None:
            rec = self.records.snap_rec(txn, snapshot_id)
            self._check_block(rec, block_index)
            lin = self.maps.load(txn, rec["lineage"])
            if lin.domain != (domain.id if domain is not None else None):
                raise IncorrectState(f"Snapshot {snapshot_id} changed while its block was "
                                     f"prepared.")
            assert lin.head is not None  # pending: the head is its open generation
            chain = self.maps.chain(txn, (lin.id, lin.head))
            floor = self.maps.head_floor(lin)
            cur = txn.cursor(db=self.maps.maps)
            for i, fp in enumerate(fps):
                key = None if fp is None else self.chunks.put(txn, fp, pieces[i], enc.get(i),
                                                              domain)
                self.maps.set_head(txn, lin, chain, block_index * L.CHUNKS_PER_BLOCK + i, key,
                                    floor, cur)
            self.maps.save(txn, lin)
            if progress is not None:
                rec["progress"] = max(0, min(100, int(progress)))
                self.records.put_snap(txn, rec)
            bkey = L.blocksum_key(snapshot_id, block_index)
            if checksum is not None:
                txn.put(bkey, checksum.encode(), db=self.store.db["blocksums"])
            else:
                txn.delete(bkey, db=self.store.db["blocksums"])

        self.store.group(apply)

    def snapshot_block_checksums(self, snapshot_id: str) -> dict[int, str]:
        with self.store.read() as txn:
            self.records.snap_rec(txn, snapshot_id)
            return self._blocksums(txn, snapshot_id)

    def _blocksums(self, txn: Txn, snapshot_id: str) -> dict[int, str]:
        prefix = snapshot_id.encode() + b"\x00"
        out: dict[int, str] = {}
        cur = txn.cursor(db=self.store.db["blocksums"])
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                out[int.from_bytes(k[len(prefix):], "big")] = v.decode()
        return out

    def _drop_blocksums(self, txn: Txn, snapshot_id: str) -> None:
        prefix = snapshot_id.encode() + b"\x00"
        cur = txn.cursor(db=self.store.db["blocksums"])
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
        with self.units.unit(tx, grows=True) as (_, txn):
            rec = self.records.snap_rec(txn, snapshot_id)
            if rec["state"] != "pending":
                raise IncorrectState(f"Snapshot {snapshot_id} is {rec['state']}, not pending.")
            if verify is not None:
                verify(self._blocksums(txn, snapshot_id))
            lin = self.maps.load(txn, rec["lineage"])
            assert lin.head is not None
            gen = lin.head
            lin.points[gen] = snapshot_id
            rec.update(state="completed", progress=100, completion_time=self.units.clock(), gen=gen,
                       full_size_bytes=lin.allocated * L.CHUNK_SIZE)
            lin.head = None
            lin.owner = None
            lin.allocated = 0
            self.maps.save(txn, lin)
            self.records.put_snap(txn, rec)
            self._drop_blocksums(txn, snapshot_id)
        return Snapshot.from_dict(rec)

    def fail_snapshot(self, snapshot_id: str, *, tx: Transaction | None = None) -> Snapshot:
        with self.units.unit(tx, frees=True) as (_, txn):
            rec = self.records.snap_rec(txn, snapshot_id)
            if rec["state"] != "pending":
                raise IncorrectState(f"Snapshot {snapshot_id} is {rec['state']}, not pending.")
            self._abandon_pending(txn, rec)
            rec.update(state="error", lineage=None, gen=None)
            self.records.put_snap(txn, rec)
        return Snapshot.from_dict(rec)

    def _abandon_pending(self, txn: Txn, rec: dict[str, Any]) -> None:
        lin = self.maps.load(txn, rec["lineage"])
        head = lin.head
        assert head is not None
        lin.head = None
        lin.owner = None
        self.maps.drop_point(txn, lin, head)
        self._drop_blocksums(txn, rec["id"])
