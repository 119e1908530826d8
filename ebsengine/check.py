"""``fsck``: verify every invariant written down in ``layout.py`` (I1-I11, and R1-R2 on RADOS).

The check never holds one read transaction for its whole run (on LMDB that would stop
the pages that concurrent commits free from being reused, so a busy store would fill up
early). It reads every table in bounded batches, each in a fresh short read transaction
(:meth:`Store.scan`, :meth:`ChunkStore.iter_stored`), and still proves consistency of one
point in time:

* it reads the store's commit counter (:meth:`Store.commit_id`) before the first batch and
  after the last one; equal readings mean no commit happened in between, so every batch
  saw the same state and the report describes that state;
* if something committed meanwhile, the pass is thrown away and run again (up to
  ``OPTIMISTIC_PASSES`` times), then once more holding the store's write lock: writers of
  this process wait for that pass (they are not refused, and since nothing commits, no
  page is kept from reuse). A store that still changed under the lock is being written by
  another process: :class:`StoreLocked`, run fsck again when it is idle.

It reports every violation it finds instead of stopping at the first.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from . import layout as L
from .block.context import page_digest
from .block.maps import BlockMaps, Lineage
from .errors import CorruptStore, StoreLocked
from .kms.service import NS_DOMAINS
from .model import FsckReport
from .storage.base import Txn
from .storage.chunks import ChunkStore
from .storage.envelope import decode_chunk, decode_pages
from .storage.migrate import readable_as_is
from .storage.sealing import SEAL_OVERHEAD, Keyring, sealed_tag
from .storage.store import Store

MAX_REPORTED = 200
MAX_TXN_AGE = 0.05  # seconds a lookup transaction may live
BATCH = 1024  # items per read transaction
CHUNK_BATCH = 128  # chunks (about 8 MiB decoded) per read transaction
OPTIMISTIC_PASSES = 1


def _int(raw: bytes | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or "state" not in rec:
        return None
    return rec


class _Reader:
    """Bounded read transactions for one pass: point lookups share a read transaction that
    is renewed every ``batch`` lookups (or ``MAX_TXN_AGE`` seconds) and closed whenever the
    next batch of a scan is fetched, so none lives longer than one batch."""

    def __init__(self, store: Store, chunks: ChunkStore, batch: int, chunk_batch: int) -> None:
        self.store = store
        self.chunks = chunks
        self.batch = batch
        self.chunk_batch = chunk_batch
        self._cm: Any = None
        self._txn: Txn | None = None
        self._ops = 0
        self._born = 0.0

    def txn(self) -> Txn:
        now = time.monotonic()
        if self._txn is None or self._ops >= self.batch or now - self._born > MAX_TXN_AGE:
            self.close()
            self._cm = self.store.read()
            self._txn = self._cm.__enter__()
            self._ops, self._born = 0, now
        self._ops += 1
        assert self._txn is not None
        return self._txn

    def get(self, name: str, key: bytes) -> bytes | None:
        return self.txn().get(key, db=self.store.db[name])  # type: ignore[no-any-return]

    def rows(self, name: str) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of table ``name``, fetched in batches."""
        return self._flat(self.store.scan(self.store.db[name], batch=self.batch))

    def chunk_rows(self) -> Iterator[tuple[bytes, bytes]]:
        """Every stored chunk, streamed from the chunk backend in batches."""
        return self._flat(self.chunks.iter_stored(self.chunk_batch))

    def _flat(self, batches: Iterator[list[tuple[bytes, bytes]]]) -> Iterator[tuple[bytes, bytes]]:
        while True:
            self.close()  # no lookup transaction outlives a batch
            items = next(batches, None)
            if items is None:
                return
            yield from items

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm, self._txn = self._cm, None, None
            cm.__exit__(None, None, None)


def _domain_id_ok(dom: object) -> bool:
    """Whether a lineage's ``domain`` is a well-formed domain id (it comes from JSON: any
    type)."""
    if not isinstance(dom, str):
        return False
    try:
        return dom.startswith("dom-") and len(bytes.fromhex(dom[4:])) == L.DOMAIN_TAG_SIZE
    except ValueError:
        return False


def _dom(tag: bytes | None) -> str:
    return "plaintext" if tag is None else f"dom-{tag.hex()}"


def check_store(store: Store, chunks: ChunkStore, maps: BlockMaps, *,
                batch: int = BATCH, chunk_batch: int = CHUNK_BATCH,
                keys: Keyring | None = None) -> FsckReport:
    """Check every invariant over one point in time of the store (see the module doc).
    Encrypted values are opened and checked with the domains in ``keys``; those of other
    domains get the structural checks only, counted in ``unverified``."""
    keys = keys if keys is not None else Keyring()
    for _ in range(OPTIMISTIC_PASSES):
        before = store.commit_id()
        report = _check_pass(store, chunks, maps, batch, chunk_batch, keys)
        if store.commit_id() == before:
            return report
    with store.write_lock:
        before = store.commit_id()
        report = _check_pass(store, chunks, maps, batch, chunk_batch, keys)
        if store.commit_id() == before:
            return report
    raise StoreLocked("the store kept changing during the check (another process is writing "
                      "to it); run fsck again when it is idle")


def _check_pass(store: Store, chunks: ChunkStore, maps: BlockMaps, batch: int,
                chunk_batch: int, keys: Keyring) -> FsckReport:
    problems: list[str] = []
    unverified: Counter[str] = Counter()  # domain id -> values not opened

    def bad(msg: str) -> None:
        if len(problems) < MAX_REPORTED:
            problems.append(msg)
        elif len(problems) == MAX_REPORTED:
            problems.append("... more problems not listed")

    stats: Counter[str] = Counter()
    structure = getattr(store.backend, "check_structure", None)
    if structure is not None:  # R1: a backend's own structures (rados://: its trees)
        found, extra = structure()
        for msg in found:
            bad(f"R1: {msg}")
        stats.update(extra)
        if found:  # the tables cannot be read as they are: report what is known
            return FsckReport(ok=False, problems=problems, stats=dict(stats), unverified=[])
    packs = getattr(chunks.backend, "check", None)
    if packs is not None:  # R2: where a backend keeps chunk bytes (rados://: its packs)
        for msg in packs():
            bad(msg)
    rd = _Reader(store, chunks, batch, chunk_batch)
    try:
        # I1 format
        fmt = rd.get("meta", b"format")
        if not readable_as_is(_int(fmt)):  # format 2 is a valid format 3 (read-only open)
            bad(f"I1: format version is {fmt!r}, expected {L.FORMAT_VERSION}")
        cs = rd.get("meta", b"chunk_size")
        if _int(cs) != L.CHUNK_SIZE:
            bad(f"I1: chunk size is {cs!r}, expected {L.CHUNK_SIZE}")

        # lineages
        lineages: dict[int, Lineage] = {}
        for k, v in rd.rows("lineages"):
            try:
                lid = L.read_u64(k)
                lineages[lid] = Lineage.from_json(lid, v)
            except (ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
                bad(f"I7: lineage record {k.hex()} unreadable: {exc}")
        stats["lineages"] = len(lineages)
        # I11: a lineage and its base share one domain
        for lid, lg in lineages.items():
            if lg.domain is not None and not _domain_id_ok(lg.domain):
                bad(f"I11: lineage {lid} names a malformed domain {lg.domain!r}")
            elif lg.domain is not None and keys.exists is not None and \
                    not keys.exists(lg.domain):
                bad(f"I11: lineage {lid} names {lg.domain}, which is no data-key domain of "
                    f"this store: its data cannot be decrypted")
            if lg.base is not None and lg.base[0] in lineages and \
                    lineages[lg.base[0]].domain != lg.domain:
                bad(f"I11: lineage {lid} (domain {lg.domain}) reads through lineage "
                    f"{lg.base[0]} of domain {lineages[lg.base[0]].domain}")
        stats["encrypted_lineages"] = sum(1 for lg in lineages.values() if lg.domain)
        # I11: every domain record is used by some lineage (it goes with the last one)
        used = {lg.domain for lg in lineages.values() if isinstance(lg.domain, str)}
        prefix = L.service_key(NS_DOMAINS, "")
        domain_records = 0
        for k, _ in rd.rows("service"):
            if bytes(k[:len(prefix)]) != prefix:
                continue
            domain_records += 1
            dom = bytes(k[len(prefix):]).decode(errors="replace")
            if dom not in used:
                bad(f"I11: data-key domain {dom} has a record (its wrapped data key) but no "
                    f"lineage uses it")
        stats["domain_records"] = domain_records

        def want_tag(lid: int) -> bytes | None:
            dom = lineages[lid].domain
            return bytes.fromhex(dom[4:]) if dom and _domain_id_ok(dom) else None

        chunk_tag: dict[bytes, bytes | None] = {}  # chunk key -> the domain tag referring to it

        def refer(lid: int, key: bytes) -> None:
            tag = want_tag(lid)
            if chunk_tag.setdefault(key, tag) != tag:
                bad(f"I11: chunk {key.hex()} is referenced from two domains")

        # maps: I2, I6 (membership, generation bound, one entry per interval)
        refcount: Counter[bytes] = Counter()
        map_triples: set[tuple[int, int, int]] = set()
        per_interval: dict[tuple[int, int, int], int] = defaultdict(int)
        live_cache: dict[int, list[int]] = {}
        patches: dict[bytes, tuple[bytes, int, bytes]] = {}  # pages key -> (patch, mask, digest)
        for k, v in rd.rows("maps"):
            stats["map_entries"] += 1
            try:
                lid, idx, gen = L.parse_map_key(k)
            except struct.error:
                bad(f"I6: malformed map key {k.hex()}")
                continue
            map_triples.add((lid, idx, gen))
            if L.is_patch(v):  # its pages are not orphans, whatever else
                try:
                    for key, m, d in L.patch_layers(bytes(v)):
                        patches[key] = (bytes(v), m, d)
                except ValueError:
                    patches[bytes(k)] = (bytes(v), 0, b"")
            lin = lineages.get(lid)
            if lin is None:
                bad(f"I6: map entry {lid}/{idx}/{gen} belongs to unknown lineage {lid}")
                continue
            if L.is_patch(v):
                try:
                    mask, _, page_key, base = L.parse_patch(v)
                    layers = L.patch_layers(v)
                except ValueError:
                    bad(f"I10: map entry {lid}/{idx}/{gen} has a malformed patch value")
                    continue
                if page_key != k:
                    bad(f"I10: patch {lid}/{idx}/{gen} names the pages of another entry")
                union = 0
                for _, m, _ in layers:
                    union |= m
                    if not m:
                        bad(f"I10: patch {lid}/{idx}/{gen} has an empty layer")
                if not mask or mask > L.FULL_MASK or union != mask:
                    bad(f"I10: patch {lid}/{idx}/{gen} has a bad page mask {mask:#x}")
                if lin.domain and L.DIGEST_OF[L.patch_tag(v)] != L.PATCH_TAG:
                    bad(f"I10: patch {lid}/{idx}/{gen} of an encrypted lineage carries an "
                        f"unkeyed xxh3 digest of its pages")
                if base is not None:
                    refcount[base] += 1
                    refer(lid, base)
            elif v:
                if len(v) != L.KEY_SIZE:
                    bad(f"I2: map entry {lid}/{idx}/{gen} has a malformed value")
                    continue
                refcount[v] += 1
                refer(lid, bytes(v))
            live = live_cache.setdefault(lid, lin.live_points())
            if not live or gen > live[-1]:
                bad(f"I6: map entry {lid}/{idx}/{gen} is newer than every live point of its "
                    f"lineage {live}")
                continue
            upper = next(p for p in live if p >= gen)
            per_interval[(lid, idx, upper)] += 1
            if per_interval[(lid, idx, upper)] == 2:
                bad(f"I6: chunk {idx} of lineage {lid} has several entries in the interval "
                    f"ending at generation {upper}")
        # I8: data chunks visible at each head, through the base chain too
        for lid, lin in lineages.items():
            if lin.head is None:
                continue
            try:
                txn = rd.txn()
                chain = maps.chain(txn, (lid, lin.head))
            except CorruptStore as exc:
                bad(f"I7: lineage {lid} cannot be read through its bases: {exc}")
                continue
            n = len(maps.visible(txn, chain))
            if n != lin.allocated:
                bad(f"I8: lineage {lid} records {lin.allocated} allocated chunks, "
                    f"{n} are visible at its head")

        # I3 / I4: chunks and reference counts
        for k, v in rd.chunk_rows():
            stats["chunks"] += 1
            stats["stored_bytes"] += len(v) - 1
            if len(k) != L.KEY_SIZE:
                bad(f"I3: chunk key {k.hex()} has a bad length")
                continue
            tag = sealed_tag(v)
            if k in chunk_tag and chunk_tag[k] != tag:
                bad(f"I11: chunk {k.hex()} is sealed in "
                    f"{_dom(tag)} but referenced from {_dom(chunk_tag[k])}")
            domain = keys.get(tag) if tag is not None else None
            if tag is not None and domain is None:
                unverified[_dom(tag)] += 1
                if len(v) < 1 + L.DOMAIN_TAG_SIZE + SEAL_OVERHEAD + 2:
                    bad(f"I3: sealed chunk {k.hex()} is too short to hold a chunk")
                data = None
            else:
                try:
                    data = decode_chunk(v, k, keys)
                except (CorruptStore, IndexError) as exc:
                    bad(f"I3: chunk {k.hex()} does not decode: {exc or 'empty value'}")
                    continue
            fp = chunks.fingerprints(data, domain)[0] if data is not None else k[:L.FP_SIZE]
            if fp is None:
                bad(f"I3: chunk {k.hex()} is all zeros (zero chunks are never stored)")
            elif fp != k[:L.FP_SIZE]:
                bad(f"I3: chunk {k.hex()} does not match its fingerprint")
            want = refcount.get(k, 0)
            raw = rd.get("refs", k)
            try:
                have = L.read_u64(raw) if raw else 0
            except struct.error:
                bad(f"I4: reference count of chunk {k.hex()} is malformed")
                continue
            if want == 0:
                bad(f"I4: chunk {k.hex()} is stored but nothing references it (orphan)")
            if have != want:
                bad(f"I4: chunk {k.hex()} has reference count {have}, but {want} references")
        for k, _ in rd.rows("refs"):
            if not chunks.backend.has_many(rd.txn(), [k])[0]:
                bad(f"I4: reference count for missing chunk {k.hex()}")
        for k in refcount:
            if not chunks.backend.has_many(rd.txn(), [k])[0]:
                bad(f"I2: map entries reference missing chunk {k.hex()} ({refcount[k]}x)")

        # I10 pages: exactly one per patch, decoding to its mask's pages with its digest
        for k, v in rd.rows("pages"):
            stats["patches"] += len(k) == L.MAP_KEY_SIZE  # a patch's first (or only) layer
            stats["page_layers"] += 1
            stats["page_bytes"] += len(v) - 1
            layer = patches.pop(bytes(k), None)
            if layer is None:
                bad(f"I10: pages {k.hex()} belong to no patch entry (orphan)")
                continue
            value, mask, digest = layer
            if not mask:
                continue  # a malformed patch: reported with its map entry
            tag = sealed_tag(v)
            plid = L.parse_map_key(bytes(k)[:L.MAP_KEY_SIZE])[0]
            if plid in lineages and want_tag(plid) != tag:
                bad(f"I11: pages {k.hex()} are sealed in {_dom(tag)} but belong to lineage "
                    f"{plid} of {_dom(want_tag(plid))}")
            domain = keys.get(tag) if tag is not None else None
            if tag is not None and domain is None:
                unverified[_dom(tag)] += 1
                continue
            try:
                data = decode_pages(v, mask.bit_count() * L.PAGE_SIZE, bytes(k), keys)
            except (CorruptStore, IndexError) as exc:
                bad(f"I10: pages {k.hex()} do not decode: {exc or 'empty value'}")
                continue
            try:
                expected = page_digest(data, domain, L.patch_tag(value))
            except ValueError:
                continue  # an xxh3 tag in an encrypted lineage: reported with its map entry
            if expected != digest:
                bad(f"I10: pages {k.hex()} do not match their patch's digest")
        for k in sorted(patches)[:20]:
            try:
                lid, idx, gen = L.parse_map_key(k[:L.MAP_KEY_SIZE])
                bad(f"I10: patch {lid}/{idx}/{gen} has no pages")
            except struct.error:
                bad(f"I10: patch {k.hex()} has no pages")

        # I5 gens index
        gen_triples = set()
        for k, _ in rd.rows("gens"):
            try:
                lid, gen, idx = L.parse_gen_key(k)
            except struct.error:
                bad(f"I5: malformed gens key {k.hex()}")
                continue
            gen_triples.add((lid, idx, gen))
        for t in sorted(map_triples - gen_triples)[:20]:
            bad(f"I5: map entry {t[0]}/{t[1]}/{t[2]} is missing from the gens index")
        for t in sorted(gen_triples - map_triples)[:20]:
            bad(f"I5: gens index names missing map entry {t[0]}/{t[1]}/{t[2]}")

        # I7 records vs lineages
        owners: dict[int, str] = {}
        for k, v in rd.rows("volumes"):
            stats["volumes"] += 1
            rec = _record(v)
            if rec is None:
                bad(f"I7: volume record {k!r} is unreadable")
                continue
            lin = lineages.get(rec["lineage"]) if isinstance(rec.get("lineage"), int) else None
            if lin is None:
                bad(f"I7: volume {rec['id']} names missing lineage {rec.get('lineage')}")
            elif lin.owner != rec["id"] or lin.head is None:
                bad(f"I7: volume {rec['id']}'s lineage {lin.id} is owned by {lin.owner}")
            else:
                owners[lin.id] = rec["id"]
            if rec.get("staging") is not None:  # an image being loaded beside the volume
                staged = lineages.get(rec["staging"])
                if staged is None or staged.owner != rec["id"] or staged.head is None:
                    bad(f"I7: volume {rec['id']} stages missing or foreign lineage "
                        f"{rec['staging']}")
                else:
                    owners[staged.id] = rec["id"]
        snaps_at: set[tuple[int, int]] = set()
        by_volume: set[bytes] = set()  # the snaps_by_volume keys the records call for
        for k, v in rd.rows("snapshots"):
            stats["snapshots"] += 1
            rec = _record(v)
            if rec is None:
                bad(f"I7: snapshot record {k!r} is unreadable")
                continue
            if isinstance(rec.get("volume_id"), str) and rec["volume_id"]:
                by_volume.add(L.snap_volume_key(rec["volume_id"], rec["id"]))
            if rec["state"] == "error":
                continue
            lin = lineages.get(rec["lineage"]) if isinstance(rec.get("lineage"), int) else None
            if lin is None:
                bad(f"I7: snapshot {rec['id']} names missing lineage {rec.get('lineage')}")
            elif rec["state"] == "pending":
                if lin.owner != rec["id"] or lin.head is None:
                    bad(f"I7: pending snapshot {rec['id']} does not own lineage {lin.id}")
                owners[lin.id] = rec["id"]
            elif lin.points.get(rec["gen"]) != rec["id"]:
                bad(f"I7: snapshot {rec['id']} is not point {rec['gen']} of lineage {lin.id}")
            else:
                snaps_at.add((lin.id, rec["gen"]))
        # I7 the snaps_by_volume index holds exactly the records' (volume, snapshot) pairs
        indexed = {bytes(k) for k, _ in rd.rows("snaps_by_volume")}
        for entry in sorted(by_volume - indexed):
            evid, _, esid = entry.partition(b"\x00")
            bad(f"I7: snapshot {esid.decode()} of volume {evid.decode()} is missing from "
                f"snaps_by_volume")
        for entry in sorted(indexed - by_volume):
            evid, _, esid = entry.partition(b"\x00")
            bad(f"I7: snaps_by_volume entry {evid.decode(errors='replace')}/"
                f"{esid.decode(errors='replace')} has no such snapshot record")
        # I9 checksums of pending snapshots' blocks
        for k, _ in rd.rows("blocksums"):
            owner, sep, blk = k.partition(b"\x00")
            raw = rd.get("snapshots", owner) if sep and len(blk) == 4 else None
            rec = _record(raw) if raw is not None else None
            if rec is None or rec["state"] != "pending":
                bad(f"I9: block checksum {k!r} does not belong to a pending snapshot")
            elif int.from_bytes(blk, "big") >= rec["volume_size_gib"] * L.GIB // L.BLOCK_SIZE:
                bad(f"I9: block checksum {k!r} names a block beyond its snapshot")
        # I7 copies staged under a new data key (engine.domains): owned by their copy id
        for lid, lin in lineages.items():
            if lin.copier is None:
                continue
            stats["staged_copies"] += 1
            if lin.head is None or not isinstance(lin.owner, str) or \
                    not lin.owner.startswith("copy-") or lin.base is not None or \
                    lin.points or lin.domain is None:
                bad(f"I7: lineage {lid} is marked as a staged copy but is not one (head "
                    f"{lin.head}, owner {lin.owner}, base {lin.base}, domain {lin.domain})")
            elif lid in owners:
                bad(f"I7: staged copy {lid} is also named by {owners[lid]}")
            else:
                owners[lid] = lin.owner
        pins: Counter[tuple[int, int]] = Counter()
        for lid, lin in lineages.items():
            for g, sid in lin.points.items():
                if (lid, g) not in snaps_at:
                    bad(f"I7: lineage {lid} point {g} names unknown snapshot {sid}")
            if lin.head is not None and owners.get(lid) != lin.owner:
                bad(f"I7: lineage {lid} has a head owned by unknown {lin.owner}")
            if lin.base is not None:
                blid, bgen = lin.base
                if blid not in lineages:
                    bad(f"I7: lineage {lid} reads through missing lineage {blid}")
                pins[(blid, bgen)] += 1
            if not lin.live_points():
                bad(f"I7: lineage {lid} has no live point but still exists")
        for lid, lin in lineages.items():
            for g, n in lin.pins.items():
                if pins.get((lid, g), 0) != n:
                    bad(f"I7: lineage {lid} pins generation {g} {n} times, "
                        f"{pins.get((lid, g), 0)} lineages read through it")
        for (blid, bgen), n in pins.items():
            if blid in lineages and lineages[blid].pins.get(bgen, 0) != n:
                bad(f"I7: {n} lineages read through {blid}@{bgen}, which records "
                    f"{lineages[blid].pins.get(bgen, 0)} pins")
    finally:
        rd.close()
    stats["unverified_values"] = sum(unverified.values())
    notes = [f"{n} encrypted values of {dom} not verified: its data key was not given (run "
             f"fsck with the store's master key to open and check them)"
             for dom, n in sorted(unverified.items())]
    return FsckReport(ok=not problems, problems=problems, stats=dict(stats), unverified=notes)
