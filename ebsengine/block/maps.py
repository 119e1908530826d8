"""Generation-indexed block maps: the point-in-time structure behind volumes and snapshots.

See ``layout.py`` ("How a point in time is read") for the model. In short: a *lineage* is a
volume's history; each entry ``(lineage, idx, gen) -> chunk key | tombstone`` says what chunk
``idx`` holds from generation ``gen`` on; a *point* ``(lineage, gen)`` names a frozen view
(a snapshot) or the live head. All functions take the caller's LMDB transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from .. import layout as L
from ..errors import CorruptStore
from ..storage.base import Cursor, Txn
from ..storage.chunks import ChunkStore
from ..storage.store import Store

Point = tuple[int, int]  # (lineage, gen)


@dataclass
class Lineage:
    """Metadata of one lineage (the JSON value in ``lineages``)."""

    id: int
    head: int | None = None
    owner: str | None = None
    base: list[int] | None = None  # [lineage, gen]
    points: dict[int, str] = field(default_factory=dict)  # gen -> snapshot id
    pins: dict[int, int] = field(default_factory=dict)  # gen -> number of child lineages
    allocated: int = 0  # data chunks visible at the head
    domain: str | None = None  # data-key domain of an encrypted lineage (format 3)
    #: a copy being staged into this lineage (re-keying, ``engine.domains``): the copying
    #: process (``engine.imports.process_token``); None once adopted by a volume or snapshot
    copier: dict[str, object] | None = None

    def live_points(self) -> list[int]:
        pts = set(self.points) | set(self.pins)
        if self.head is not None:
            pts.add(self.head)
        return sorted(pts)

    def to_json(self) -> bytes:
        d = asdict(self)
        d["points"] = {str(k): v for k, v in self.points.items()}
        d["pins"] = {str(k): v for k, v in self.pins.items()}
        del d["id"]
        if d["domain"] is None:
            del d["domain"]  # a plaintext lineage's record is as in format 2
        if d["copier"] is None:
            del d["copier"]
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, lid: int, raw: bytes) -> Lineage:
        d = json.loads(raw)
        return cls(id=lid, head=d["head"], owner=d["owner"], base=d["base"],
                   points={int(k): v for k, v in d["points"].items()},
                   pins={int(k): int(v) for k, v in d["pins"].items()},
                   allocated=d["allocated"], domain=d.get("domain"),
                   copier=d.get("copier"))


class BlockMaps:
    """Operations on ``maps``/``gens``/``lineages``; chunk references through ``chunks``."""

    def __init__(self, store: Store, chunks: ChunkStore) -> None:
        self.store = store
        self.chunks = chunks
        self.maps = store.db["maps"]
        self.gens = store.db["gens"]
        self.lineages = store.db["lineages"]
        self.pages = store.db["pages"]
        #: called with a chunk key once its last reference is released (cache eviction)
        self.on_free: Callable[[bytes], None] | None = None
        #: called with a patch value and the first of its layers whose rows were deleted
        self.on_free_layers: Callable[[bytes, int], None] | None = None
        #: called in the transaction that destroys the last lineage of a data-key domain,
        #: with that domain's id (the engine deletes the domain's record: its wrapped key)
        self.on_domain_gone: Callable[[Txn, str], None] | None = None
        self._parsed: dict[int, tuple[bytes, Lineage]] = {}

    # --- lineage records --------------------------------------------------------------------

    def peek(self, txn: Txn, lid: int) -> Lineage | None:
        """The lineage record as stored in ``txn``, or None if there is none: a *shared*
        parsed object that the caller must not change (see :meth:`load`).

        Parsed records are cached by their exact stored bytes, so a read path that looks at
        the same unchanged record for every request pays one get and one compare, no JSON
        decoding and no copy.
        """
        raw = txn.get(L.lineage_key(lid), db=self.lineages)
        if raw is None:
            return None
        hit = self._parsed.get(lid)
        if hit is None or hit[0] != raw:
            hit = (raw, Lineage.from_json(lid, raw))
            if len(self._parsed) > 4096:
                self._parsed.clear()
            self._parsed[lid] = hit
        return hit[1]

    def load(self, txn: Txn, lid: int) -> Lineage:
        """The lineage record as stored in ``txn`` (a private copy: callers may change it)."""
        lin = self.peek(txn, lid)
        if lin is None:
            raise CorruptStore(f"lineage {lid} is referenced but missing")
        return Lineage(id=lid, head=lin.head, owner=lin.owner,
                       base=list(lin.base) if lin.base is not None else None,
                       points=dict(lin.points), pins=dict(lin.pins), allocated=lin.allocated,
                       domain=lin.domain,
                       copier=dict(lin.copier) if lin.copier is not None else None)

    def save(self, txn: Txn, lin: Lineage) -> None:
        txn.put(L.lineage_key(lin.id), lin.to_json(), db=self.lineages)

    def create(self, txn: Txn, owner: str | None, base: Point | None,
               allocated: int = 0, domain: str | None = None) -> Lineage:
        """A new lineage with head generation 1, reading through ``base`` (pinned), sealed
        in data-key domain ``domain`` (None: plaintext), which must be its base's (I11)."""
        lin = Lineage(id=self.store.next_lineage(txn), head=1, owner=owner,
                      base=list(base) if base else None, allocated=allocated, domain=domain)
        if base is not None:
            parent = self.load(txn, base[0])
            if parent.domain != domain:
                raise ValueError(f"a lineage of domain {domain} cannot read through lineage "
                                 f"{parent.id} of domain {parent.domain}: copy it instead")
            parent.pins[base[1]] = parent.pins.get(base[1], 0) + 1
            self.save(txn, parent)
        self.save(txn, lin)
        return lin

    def chain(self, txn: Txn, point: Point) -> list[Point]:
        """The point followed by the bases it reads through, nearest first."""
        out = [point]
        lin = self.load(txn, point[0])
        while lin.base is not None:
            out.append((lin.base[0], lin.base[1]))
            lin = self.load(txn, lin.base[0])
        return out

    # --- lookups ----------------------------------------------------------------------------

    def entry(self, txn: Txn, lid: int, idx: int, gen: int,
              cur: Cursor | None = None) -> tuple[int, bytes] | None:
        """Newest entry ``(gen', value)`` of ``idx`` in lineage ``lid`` with ``gen' <= gen``."""
        if gen <= 0:
            return None
        cur = cur or txn.cursor(db=self.maps)
        if not cur.set_range(L.map_key(lid, idx, gen)):
            return None
        key = cur.key()
        klid, kidx, kgen = L.parse_map_key(key)
        if klid != lid or kidx != idx:
            return None
        return kgen, cur.value()

    def resolve(self, txn: Txn, chain: list[Point], idx: int,
                cur: Cursor | None = None) -> bytes | None:
        """Chunk key visible at ``chain[0]`` for ``idx``; None = reads as zeros."""
        cur = cur or txn.cursor(db=self.maps)
        for lid, gen in chain:
            e = self.entry(txn, lid, idx, gen, cur)
            if e is not None:
                return e[1] or None
        return None

    def resolve_at(self, txn: Txn, chain: list[Point], idx: int,
                   cur: Cursor | None = None) -> tuple[int, int, bytes] | None:
        """Like :meth:`resolve`, with where the value was found: ``(chain position, entry
        generation, value)``, or None when no point of the chain has an entry."""
        cur = cur or txn.cursor(db=self.maps)
        for k, (lid, gen) in enumerate(chain):
            e = self.entry(txn, lid, idx, gen, cur)
            if e is not None:
                return k, e[0], e[1]
        return None

    def visible(self, txn: Txn, chain: list[Point], lo: int = 0,
                hi: int = L.MAX_CHUNKS) -> dict[int, bytes]:
        """``{idx: chunk key}`` of every data chunk visible at ``chain[0]`` in ``[lo, hi)``.

        Costs O(entries in the range over the chain), never O(volume size).
        """
        decided: dict[int, bytes] = {}
        if lo >= hi:
            return decided
        cur = txn.cursor(db=self.maps)
        for lid, gen in chain:
            if not cur.set_range(L.map_key(lid, lo, L.MAX_GEN)):
                continue
            for key, value in cur:
                klid, kidx, kgen = L.parse_map_key(key)
                if klid != lid or kidx >= hi:
                    break
                if kgen > gen or kidx in decided:
                    continue
                decided[kidx] = value
        return {i: v for i, v in decided.items() if v}

    def changed_candidates(self, txn: Txn, lid: int, after: int,
                           upto: int) -> set[int]:
        """Chunk indexes with an entry in generations ``(after, upto]`` of lineage ``lid``."""
        out: set[int] = set()
        if upto <= after:
            return out
        cur = txn.cursor(db=self.gens)
        if not cur.set_range(L.gen_key(lid, after + 1, 0)):
            return out
        for key in cur.iternext(keys=True, values=False):
            klid, kgen, kidx = L.parse_gen_key(key)
            if klid != lid or kgen > upto:
                break
            out.add(kidx)
        return out

    def interval_entries(self, txn: Txn, lid: int, after: int,
                         upto: int) -> Iterator[tuple[int, int]]:
        """``(gen, idx)`` of entries in generations ``(after, upto]``, materialised first so
        the caller may modify the databases while iterating."""
        cur = txn.cursor(db=self.gens)
        items: list[tuple[int, int]] = []
        if cur.set_range(L.gen_key(lid, after + 1, 0)):
            for key in cur.iternext(keys=True, values=False):
                klid, kgen, kidx = L.parse_gen_key(key)
                if klid != lid or kgen > upto:
                    break
                items.append((kgen, kidx))
        return iter(items)

    # --- writes at the head -----------------------------------------------------------------

    def head_floor(self, lin: Lineage) -> int:
        """The newest live point below the head (0 if none): the head interval's floor."""
        assert lin.head is not None
        return max((p for p in set(lin.points) | set(lin.pins) if p < lin.head), default=0)

    def set_head(self, txn: Txn, lin: Lineage, chain: list[Point], idx: int,
                 key: bytes | None, floor: int, cur: Cursor | None = None,
                 pages: bytes | None = None) -> None:
        """Make ``idx`` hold ``key`` (a chunk key or a patch value; None = zeros) at the head
        of ``lin``; a patch's encoded ``pages`` are stored with it.

        ``floor`` is :meth:`head_floor`. The head interval ``(floor, head]`` keeps at most one
        entry per index: an entry already in it is replaced (its reference and pages
        released), even if it has an older generation left there by a merged snapshot
        deletion. The caller has taken the reference on ``key`` (or on a patch's base),
        except for a layer laid on the patch already at the head (``layout.lays_on``), which
        keeps that patch's base and layers; and saves ``lin`` (``allocated`` is kept up to
        date).
        """
        assert lin.head is not None
        head = lin.head
        cur = cur or txn.cursor(db=self.maps)
        e = self.entry(txn, lin.id, idx, head, cur)
        mk = L.map_key(lin.id, idx, head)
        in_place = False
        below: bytes | None = None
        if e is not None and e[0] > floor:
            was_data = bool(e[1])
            if key is None:  # what lies below decides between a tombstone and nothing
                below = self.resolve(txn, [(lin.id, floor), *chain[1:]], idx, cur)
            if e[0] != head or key is None:
                self._drop_entry(txn, lin.id, idx, e[0])
            else:  # replaced in place (its gens entry stays); a new layer keeps those below
                self.release(txn, mk, e[1], keep=key)
                in_place = True
        else:
            below = (e[1] or None) if e is not None else self.resolve(txn, chain[1:], idx, cur)
            was_data = below is not None
        if key is not None:
            txn.put(mk, key, db=self.maps)
            if not in_place:
                txn.put(L.gen_key(lin.id, head, idx), b"", db=self.gens)
            if L.is_patch(key):
                if pages is None or L.parse_patch(key)[2] != mk:
                    raise ValueError("a patch is stored at its own map key, with its pages")
                # ``pages`` are its newest layer's (a one-layer patch: all of them)
                txn.put(L.layer_key(mk, L.layer_count(key) - 1), pages, db=self.pages)
        elif below is not None:
            txn.put(mk, L.TOMBSTONE, db=self.maps)
            txn.put(L.gen_key(lin.id, head, idx), b"", db=self.gens)
        lin.allocated += int(key is not None) - int(was_data)

    def _drop_entry(self, txn: Txn, lid: int, idx: int, gen: int) -> None:
        mk = L.map_key(lid, idx, gen)
        value = txn.get(mk, db=self.maps)
        if value is None:
            raise CorruptStore(f"gens index names a missing map entry {lid}/{idx}/{gen}")
        self.release(txn, mk, value)
        txn.delete(mk, db=self.maps)
        txn.delete(L.gen_key(lid, gen, idx), db=self.gens)

    def release(self, txn: Txn, mk: bytes, value: bytes, keep: bytes | None = None) -> None:
        """Release what the map value at ``mk`` holds: its chunk reference (a chunk key or a
        patch's base) and a patch's pages (all its layers, but those that ``keep``, the
        value replacing it at ``mk``, still has: a layer laid over them). The entry itself
        is the caller's."""
        key = L.chunk_of(value)
        if key is not None and not (keep is not None and L.lays_on(keep, value)):
            self.unref(txn, key)  # (a layer laid on the patch keeps its base reference)
        if L.is_patch(value):
            # layer i of a patch at mk is stored at layer_key(mk, i), whatever its pages: a
            # patch replacing it there with n layers writes layer n - 1 and keeps those below
            kept = L.layer_count(keep) - 1 if keep is not None and L.is_patch(keep) else 0
            for i in range(kept, L.layer_count(value)):
                txn.delete(L.layer_key(mk, i), db=self.pages)
            if self.on_free_layers is not None:  # decoded pages are cached per layer
                self.on_free_layers(value, kept)

    def unref(self, txn: Txn, key: bytes) -> None:
        self.chunks.decref(txn, key)
        if self.on_free is not None and txn.get(key, db=self.chunks.refs) is None:
            self.on_free(key)

    def entry_stored_size(self, txn: Txn, mk: bytes, value: bytes) -> int:
        """Stored bytes of an entry: its chunk's (a chunk key) or its pages' (a patch)."""
        if L.is_patch(value):
            raws = [txn.get(k, db=self.pages) for k, _, _ in L.patch_layers(value)]
            return sum(len(raw) - 1 for raw in raws if raw is not None)
        return self.chunks.stored_size(txn, value) if value else 0

    # --- dropping points --------------------------------------------------------------------

    def drop_point(self, txn: Txn, lin: Lineage, gen: int) -> None:
        """Forget live point ``gen`` of ``lin`` (already removed from points/pins/head by the
        caller), merging its interval into its successor; then collect the lineage if no
        point is left. Saves ``lin`` (or deletes it)."""
        live = lin.live_points()
        if gen in live:  # still needed by something else: nothing to merge
            self.save(txn, lin)
            return
        prev = max((p for p in live if p < gen), default=0)
        nxt = min((p for p in live if p > gen), default=None)
        cur = txn.cursor(db=self.maps)
        first_interval_without_base = prev == 0 and lin.base is None
        for egen, idx in self.interval_entries(txn, lin.id, prev, gen):
            if nxt is None:
                self._drop_entry(txn, lin.id, idx, egen)
                continue
            newer = self.entry(txn, lin.id, idx, nxt, cur)
            assert newer is not None
            if newer[0] > gen:
                self._drop_entry(txn, lin.id, idx, egen)  # superseded: nobody sees it now
            elif first_interval_without_base and newer[1] == L.TOMBSTONE:
                self._drop_entry(txn, lin.id, idx, egen)  # a tombstone over nothing
        if not live:
            self.destroy(txn, lin)
        else:
            self.save(txn, lin)

    def destroy(self, txn: Txn, lin: Lineage) -> None:
        """Delete a lineage that has no live point left and release its base pin."""
        for egen, idx in self.interval_entries(txn, lin.id, 0, L.MAX_GEN - 1):
            self._drop_entry(txn, lin.id, idx, egen)
        txn.delete(L.lineage_key(lin.id), db=self.lineages)
        if lin.domain is not None and lin.base is None and self.on_domain_gone is not None \
                and not self.domain_used(txn, lin.domain):
            self.on_domain_gone(txn, lin.domain)
        if lin.base is not None:
            parent = self.load(txn, lin.base[0])
            g = lin.base[1]
            n = parent.pins.get(g, 0) - 1
            if n < 0:
                raise CorruptStore(f"lineage {parent.id} pin count at {g} went negative")
            if n:
                parent.pins[g] = n
            else:
                parent.pins.pop(g, None)
            self.drop_point(txn, parent, g)

    def domain_used(self, txn: Txn, domain_id: str) -> bool:
        """Whether some lineage in ``txn`` is sealed in data-key domain ``domain_id``.

        Only a lineage with no base can be the last of its domain (a lineage with a base
        keeps that base, of the same domain, alive), so :meth:`destroy` asks only then: the
        roots of a domain are its first lineage and the lineages staged beside one of its
        volumes (imports), any number of them. O(lineages), on raw records: the id is
        looked for in the stored bytes and only a record holding it is parsed."""
        needle = domain_id.encode()
        for key, raw in txn.cursor(db=self.lineages):
            if needle in raw and \
                    Lineage.from_json(L.read_u64(key), raw).domain == domain_id:
                return True
        return False

    def set_fresh(self, txn: Txn, lin: Lineage, idx: int, key: bytes) -> None:
        """:meth:`set_head` for a lineage known to hold no entry at ``idx`` and to read
        through no base (a bulk load into a new lineage, each index once): no lookup, two
        puts. The caller has taken the reference on ``key`` and saves ``lin``."""
        assert lin.head is not None and lin.base is None
        txn.put(L.map_key(lin.id, idx, lin.head), key, db=self.maps)
        txn.put(L.gen_key(lin.id, lin.head, idx), b"", db=self.gens)
        lin.allocated += 1
