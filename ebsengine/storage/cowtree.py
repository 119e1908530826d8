"""A persistent copy-on-write B+tree of immutable nodes (issue 10: metadata on Ceph RADOS).

One table of a key-value backend is one :class:`Tree`: an immutable value naming a root
node. Nodes are immutable byte strings stored under ids that the caller hands out (on
RADOS: objects of a pool); :meth:`Tree.apply` never changes a node, it writes the changed
leaves and the paths above them as *new* nodes and returns the new tree, the nodes to
persist and the ids of the old nodes the new tree no longer references. A commit persists
the new nodes, then swaps the table's root pointer (:meth:`Tree.to_meta`); old trees stay
readable as long as their nodes exist, which is what MVCC read snapshots need.

Entries: keys are 1-511 bytes, ordered by unsigned byte order; values any length. A value
longer than ``blob_threshold`` bytes lives out of line in a *blob* node of its own. The
tree's ``nbytes`` is ``sum(len(key) + len(value) + 16)`` over its entries (as
:data:`.memory.ENTRY_OVERHEAD`).

Node format (on-disk; format version 1). Integers are little-endian::

    node     := type u8 | version u8 (= 1) | level u8 | body | checksum u64
    checksum := xxh3-64 of every byte before it

* type 1, **leaf** (level 0)::

      body := n u32 | klen u16 [n] | vlen u32 [n] | key bytes [n] | value area [n]

  Entries in strictly ascending key order; ``1 <= klen <= 511``. The value area of entry
  ``i`` is ``vlen[i] & 0x7fffffff`` bytes. If bit 31 of ``vlen[i]`` is clear, the area is
  the value itself; if it is set, the value is out of line and the area is
  ``value length u64 | blob id`` (the id is the rest of the area, at least 1 byte).
* type 2, **internal** (level >= 1; its children are at level - 1)::

      body := n u32 (>= 1) | idlen u8 [n] | seplen u16 [n - 1] | child ids [n] | separators [n - 1]

  Child ``i`` holds exactly the keys ``k`` with ``sep[i-1] <= k < sep[i]`` (no lower bound
  for the first child, no upper bound for the last, beyond the node's own). Separators are
  strictly ascending, 1-511 bytes; a separator between two leaves is the shortest prefix of
  the right leaf's first key that sorts after the left leaf's last key.
* type 3, **blob** (level 0)::

      body := the value's bytes

Decoding checks the checksum first, then every length against the node's size, and raises
:class:`~ebsengine.errors.CorruptStore` naming the node id on any mismatch, truncation or
impossible field. The tree's root record (:meth:`Tree.to_meta`, 27 bytes + the root id)::

    meta := version u8 (= 1) | depth u8 | count u64 | nbytes u64 | idlen u8 | root id
            | xxh3-64 u64 (of the rest)

(``idlen`` 0 and depth 0: the empty tree.)

Shape: all leaves are at the same depth. A node is cut at ``node_size`` encoded bytes
(default 32 KiB); it is larger only when it holds the fewest entries a node of its kind can
(a leaf of one entry, an internal node of at most three children) and a long key forces it.
A rewritten node smaller than a quarter of ``node_size`` is merged with a neighbour (one more
read when that neighbour was not rewritten anyway), empty nodes are removed, and a root with
one child is replaced by that child; so every non-root internal node has at least two
children and the depth stays below ``log2(entries) + 2``.

Cost: :meth:`Tree.apply` takes its changes sorted and descends once, one batched
:meth:`NodeSource.load_many` per level for every node it touches; it re-encodes only the
touched leaves, the internal nodes above them and the (rare) neighbours merged into them.
Reads go through a :class:`NodeCache` of decoded nodes shared by every version of a table
(nodes are immutable, so a cached node is never stale); a decoded leaf holds its keys and
values as lists (bisect for seeks and scans) and, once it serves a ``get``, a dict of them.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate, pairwise
from operator import add
from struct import pack, unpack_from
from typing import Any, Protocol

from xxhash import xxh3_64_intdigest

from ..errors import CorruptStore

FORMAT_VERSION = 1
NODE_SIZE = 32 << 10  # target encoded size of a node
BLOB_THRESHOLD = 1024  # values longer than this are stored out of line
MAX_KEY_SIZE = 511
ENTRY_OVERHEAD = 16  # as memory.ENTRY_OVERHEAD: nbytes counts len(k) + len(v) + 16 per entry

LEAF = 1
INTERNAL = 2
BLOB = 3

_HEADER = 7  # type, version, level, n u32
_TRAILER = 8
_BLOB_FLAG = 0x80000000
_META_FIXED = 1 + 1 + 8 + 8 + 1
_PREFETCH = 8  # leaves loaded ahead in one batch by items()


class NodeSource(Protocol):
    """Where encoded nodes are read from (on RADOS: one pool)."""

    def load_many(self, ids: Sequence[bytes]) -> list[bytes]:
        """The encoded nodes named by ``ids``, in order; CorruptStore if one is missing."""
        ...


class BlobRef(bytes):
    """A leaf's reference to a value stored out of line. It is its own encoded value area
    (``value length u64 | blob id``), so a leaf encodes and measures its values with
    C-level joins and ``len``; ``type(v) is bytes`` tells inline values from these."""

    __slots__ = ()

    @classmethod
    def to(cls, nid: bytes, length: int) -> BlobRef:
        return cls(pack("<Q", length) + nid)

    @property
    def id(self) -> bytes:
        return bytes(self[8:])

    @property
    def length(self) -> int:
        return int(unpack_from("<Q", self)[0])

    def __repr__(self) -> str:
        return f"BlobRef({self.id!r}, {self.length})"


class Node:
    """A decoded node. Leaf: ``keys``/``vals`` (bytes or :class:`BlobRef`), ``kids`` None.
    Internal: ``keys`` are the separators (one fewer than ``kids``), ``vals`` None. Blob:
    ``vals`` is the value (bytes), ``keys`` empty. Shared between threads: never mutated."""

    __slots__ = ("kind", "level", "keys", "vals", "kids", "enc", "size", "map")

    def __init__(self, kind: int, level: int, keys: list[bytes], vals: Any,
                 kids: list[bytes] | None, enc: int) -> None:
        self.kind = kind
        self.level = level
        self.keys = keys
        self.vals = vals
        self.kids = kids
        self.enc = enc  # its encoded size
        # about what it holds in memory (for the cache), with the map
        self.size = 200 + enc + 150 * len(keys)
        # leaf: key -> value, built by the first get (exact lookups: one hash, no bisect)
        self.map: dict[bytes, Any] | None = None


def _corrupt(nid: bytes, what: str) -> CorruptStore:
    return CorruptStore(f"tree node {nid.hex()}: {what}")


# --- encoding ---------------------------------------------------------------------------------


def _seal(body: bytes) -> bytes:
    return body + pack("<Q", xxh3_64_intdigest(body))


def encode_leaf(keys: Sequence[bytes], vals: Sequence[bytes | BlobRef]) -> bytes:
    n = len(keys)
    if len(vals) != n:
        raise ValueError("a leaf needs one value per key")
    if BlobRef in set(map(type, vals)):
        vlens = [len(v) | _BLOB_FLAG if v.__class__ is BlobRef else len(v) for v in vals]
    else:
        vlens = list(map(len, vals))
    return _seal(b"".join([pack(f"<BBBI{n}H{n}I", LEAF, FORMAT_VERSION, 0, n, *map(len, keys),
                                *vlens), *keys, *vals]))


def encode_internal(level: int, seps: Sequence[bytes], kids: Sequence[bytes]) -> bytes:
    n = len(kids)
    if len(seps) != n - 1:
        raise ValueError("an internal node needs one separator fewer than children")
    return _seal(b"".join([pack(f"<BBBI{n}B{n - 1}H", INTERNAL, FORMAT_VERSION, level, n,
                                *map(len, kids), *map(len, seps)), *kids, *seps]))


def encode_blob(value: bytes) -> bytes:
    return _seal(bytes((BLOB, FORMAT_VERSION, 0)) + value)


def decode_node(nid: bytes, raw: bytes) -> Node:
    """The node encoded in ``raw`` (stored under ``nid``); CorruptStore if it is not one."""
    size = len(raw)
    if size < 3 + _TRAILER:
        raise _corrupt(nid, f"truncated ({size} bytes)")
    end = size - _TRAILER
    if xxh3_64_intdigest(memoryview(raw)[:end]) != unpack_from("<Q", raw, end)[0]:
        raise _corrupt(nid, "checksum mismatch")
    kind, version, level = raw[0], raw[1], raw[2]
    if version != FORMAT_VERSION:
        raise _corrupt(nid, f"format version {version}, expected {FORMAT_VERSION}")
    if kind == BLOB:
        if level:
            raise _corrupt(nid, f"blob at level {level}")
        return Node(BLOB, 0, [], raw[3:end], None, size)
    if end < _HEADER:
        raise _corrupt(nid, "truncated header")
    n = unpack_from("<I", raw, 3)[0]
    if kind == LEAF:
        if level:
            raise _corrupt(nid, f"leaf at level {level}")
        off = _HEADER + 6 * n
        if off > end:
            raise _corrupt(nid, f"{n} entries do not fit in {size} bytes")
        klens = unpack_from(f"<{n}H", raw, _HEADER)
        vlens = unpack_from(f"<{n}I", raw, _HEADER + 2 * n)
        if n and (min(klens) == 0 or max(klens) > MAX_KEY_SIZE):
            raise _corrupt(nid, "key length out of range")
        kpos = list(accumulate(klens, initial=off))
        blobs = n and max(vlens) & _BLOB_FLAG
        vpos = list(accumulate([v & ~_BLOB_FLAG for v in vlens] if blobs else vlens,
                               initial=kpos[-1]))
        if vpos[-1] != end:
            raise _corrupt(nid, f"lengths add up to {vpos[-1]} bytes, not {end}")
        keys = [raw[a:b] for a, b in pairwise(kpos)]
        vals: list[Any] = [raw[a:b] for a, b in pairwise(vpos)]
        if blobs:
            for i, vl in enumerate(vlens):
                if vl & _BLOB_FLAG:
                    area = vals[i]
                    if len(area) < 9:
                        raise _corrupt(nid, f"blob reference of {len(area)} bytes")
                    vals[i] = BlobRef(area)
        return Node(LEAF, 0, keys, vals, None, size)
    if kind == INTERNAL:
        if level == 0 or n == 0:
            raise _corrupt(nid, f"internal node at level {level} with {n} children")
        off = _HEADER + n + 2 * (n - 1)
        if off > end:
            raise _corrupt(nid, f"{n} children do not fit in {size} bytes")
        idlens = raw[_HEADER:_HEADER + n]
        seplens = unpack_from(f"<{n - 1}H", raw, _HEADER + n)
        if min(idlens) == 0 or (n > 1 and (min(seplens) == 0 or max(seplens) > MAX_KEY_SIZE)):
            raise _corrupt(nid, "id or separator length out of range")
        ipos = list(accumulate(idlens, initial=off))
        spos = list(accumulate(seplens, initial=ipos[-1]))
        if spos[-1] != end:
            raise _corrupt(nid, f"lengths add up to {spos[-1]} bytes, not {end}")
        kids = [raw[a:b] for a, b in pairwise(ipos)]
        seps = [raw[a:b] for a, b in pairwise(spos)]
        return Node(INTERNAL, level, seps, None, kids, size)
    raise _corrupt(nid, f"unknown node type {kind}")


# --- the cache --------------------------------------------------------------------------------


class NodeCache:
    """Decoded nodes by id, bounded by their approximate size in bytes; thread-safe.

    Two generations approximate LRU with one dict lookup per hit: nodes enter the young
    generation; when it holds half the budget it becomes the old one (the previous old
    generation is dropped); a hit in the old generation moves the node back into the young
    one. What is dropped is what was not used during one young generation's life."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._young: dict[bytes, Node] = {}
        self._old: dict[bytes, Node] = {}
        self._young_bytes = 0
        self._lock = threading.Lock()
        self.misses = 0  # nodes read from the source through this cache (approximate)

    def get(self, nid: bytes) -> Node | None:
        node = self._young.get(nid)
        if node is None:
            node = self._old.get(nid)
            if node is not None:
                self.put(nid, node)
        return node

    def put(self, nid: bytes, node: Node) -> None:
        if node.size > self.max_bytes >> 3:
            return  # a huge blob would flush everything else
        with self._lock:
            if nid in self._young:
                return
            self._young[nid] = node
            self._young_bytes += node.size
            if self._young_bytes > self.max_bytes >> 1:
                self._old = self._young
                self._young = {}
                self._young_bytes = 0

    def clear(self) -> None:
        with self._lock:
            self._young = {}
            self._old = {}
            self._young_bytes = 0

    def __len__(self) -> int:
        return len(self._young.keys() | self._old.keys())


# --- the tree ---------------------------------------------------------------------------------


class _Pending:
    """A node being built by :meth:`Tree.apply` (lists it may change; not yet encoded).
    Leaf: ``keys``/``vals``; internal: ``keys`` = separators, ``vals`` = child ids."""

    __slots__ = ("leaf", "keys", "vals", "absorbed", "_size")

    def __init__(self, leaf: bool, keys: list[bytes], vals: list[Any],
                 size: int | None = None) -> None:
        self.leaf = leaf
        self.keys = keys
        self.vals = vals
        self.absorbed = False  # merged with a neighbour that had to be read
        self._size = size  # encoded size, when known

    def empty(self) -> bool:
        return not self.vals

    def sizes(self) -> list[int]:
        """Encoded bytes of each entry (internal: a child with the separator before it)."""
        if self.leaf:
            return list(map(add, map(len, self.keys), map(len, self.vals)))  # + 6 each
        return [0, *map(len, self.keys)]  # + 3 each but the first: + 1 + len(id) each

    def size(self) -> int:
        if self._size is None:
            self._size = self._measure()
        return self._size

    def _measure(self) -> int:
        n = len(self.vals)
        if self.leaf:
            return _HEADER + _TRAILER + 6 * n + sum(map(len, self.keys)) \
                + sum(map(len, self.vals))
        return _HEADER + _TRAILER + 3 * n - 2 + sum(map(len, self.vals)) \
            + sum(map(len, self.keys))

    def small(self, limit: int) -> bool:
        return (not self.leaf and len(self.vals) < 2) or self.size() < limit


_UNCHANGED: Any = object()


class _Touch:
    """A node on a rewritten path: its id, decoded node, the slice of the changes it
    receives, and (internal) the touched children as (index, _Touch)."""

    __slots__ = ("nid", "node", "lo", "hi", "kids")

    def __init__(self, nid: bytes, node: Node, lo: int, hi: int) -> None:
        self.nid = nid
        self.node = node
        self.lo = lo
        self.hi = hi
        self.kids: list[tuple[int, _Touch]] = []


class _Build:
    """What one :meth:`Tree.apply` produces besides the new root."""

    def __init__(self, new_id: Callable[[], bytes]) -> None:
        self._new_id = new_id
        self.new: dict[bytes, tuple[bytes, Node]] = {}
        self.freed: list[bytes] = []
        self.dcount = 0
        self.dbytes = 0

    def new_id(self) -> bytes:
        nid = self._new_id()
        if nid.__class__ is not bytes or not 0 < len(nid) < 256 or nid in self.new:
            raise ValueError(f"new_id() gave {nid!r}: ids are unique, 1-255 bytes")
        return nid


def _shortest_sep(left: bytes, right: bytes) -> bytes:
    """The shortest prefix of ``right`` that sorts after ``left`` (left < right)."""
    n = min(len(left), len(right))
    i = 0
    while i < n and left[i] == right[i]:
        i += 1
    return right[:i + 1]


class Tree:
    """One immutable version of an ordered table (see the module docstring). Any number of
    threads may read one Tree at once; :meth:`apply` returns a new one."""

    __slots__ = ("_source", "_cache", "root", "count", "nbytes", "depth", "node_size",
                 "blob_threshold")

    def __init__(self, source: NodeSource, cache: NodeCache, root: bytes | None = None,
                 count: int = 0, nbytes: int = 0, depth: int = 0, *,
                 node_size: int = NODE_SIZE, blob_threshold: int = BLOB_THRESHOLD) -> None:
        if (root is None) != (depth == 0):
            raise ValueError("an empty tree has no root and depth 0")
        if node_size < 64:
            raise ValueError("node_size must be at least 64 bytes")
        self._source = source
        self._cache = cache
        self.root = root
        self.count = count
        self.nbytes = nbytes
        self.depth = depth
        self.node_size = node_size
        self.blob_threshold = blob_threshold

    def __repr__(self) -> str:
        root = self.root.hex() if self.root else None
        return f"<Tree root={root} count={self.count} depth={self.depth}>"

    # --- meta ---------------------------------------------------------------------------------

    def to_meta(self) -> bytes:
        root = self.root or b""
        return _seal(pack("<BBQQB", FORMAT_VERSION, self.depth, self.count, self.nbytes,
                          len(root)) + root)

    @classmethod
    def from_meta(cls, source: NodeSource, cache: NodeCache, b: bytes, *,
                  node_size: int = NODE_SIZE, blob_threshold: int = BLOB_THRESHOLD) -> Tree:
        b = bytes(b)
        if len(b) < _META_FIXED + _TRAILER:
            raise CorruptStore(f"tree root record of {len(b)} bytes")
        end = len(b) - _TRAILER
        if xxh3_64_intdigest(b[:end]) != unpack_from("<Q", b, end)[0]:
            raise CorruptStore("tree root record: checksum mismatch")
        version, depth, count, nbytes, idlen = unpack_from("<BBQQB", b)
        if version != FORMAT_VERSION or _META_FIXED + idlen != end or (idlen == 0) != (depth == 0):
            raise CorruptStore(f"tree root record: impossible fields (version {version}, "
                               f"depth {depth}, id of {idlen} bytes in {len(b)})")
        root = b[_META_FIXED:end] or None
        return cls(source, cache, root, count, nbytes, depth, node_size=node_size,
                   blob_threshold=blob_threshold)

    # --- loading ------------------------------------------------------------------------------

    def _load(self, nid: bytes) -> Node:
        node = self._cache.get(nid)
        if node is None:
            node = self._fetch([nid], cache=True)[0]
        return node

    def _fetch(self, ids: Sequence[bytes], cache: bool) -> list[Node]:
        """Nodes ``ids`` (all of them) from the source in one batch, decoded."""
        self._cache.misses += len(ids)
        raws = self._source.load_many(ids)
        if len(raws) != len(ids):
            raise CorruptStore(f"node source returned {len(raws)} nodes for {len(ids)} ids")
        nodes = [decode_node(nid, raw if raw.__class__ is bytes else bytes(raw))
                 for nid, raw in zip(ids, raws, strict=True)]
        if cache:
            for nid, node in zip(ids, nodes, strict=True):
                self._cache.put(nid, node)
        return nodes

    def _load_many(self, ids: Sequence[bytes], cache: bool = True) -> list[Node]:
        get = self._cache.get
        out: list[Node | None] = [get(nid) for nid in ids]
        missing = [i for i, n in enumerate(out) if n is None]
        if missing:
            got = self._fetch([ids[i] for i in missing], cache)
            for i, node in zip(missing, got, strict=True):
                out[i] = node
        return out  # type: ignore[return-value]

    def _expect(self, nid: bytes, node: Node, level: int) -> Node:
        want = LEAF if level == 0 else INTERNAL
        if node.kind != want or node.level != level:
            raise _corrupt(nid, f"a node of type {node.kind} at level {node.level} where "
                                f"type {want} at level {level} belongs")
        return node

    def _value(self, v: bytes | BlobRef) -> bytes:
        if v.__class__ is bytes:
            return v
        ref: BlobRef = v  # type: ignore[assignment]
        node = self._load(ref.id)
        if node.kind != BLOB or len(node.vals) != ref.length:
            raise _corrupt(ref.id, f"not a blob of {ref.length} bytes")
        return node.vals  # type: ignore[no-any-return]

    # --- reads --------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        nid = self.root
        if nid is None:
            return None
        young = self._cache._young  # the hot path: one dict lookup per level
        node = young.get(nid) or self._load(nid)
        for _ in range(self.depth - 1):
            kids = node.kids
            if kids is None:
                self._expect(nid, node, 1)
            nid = kids[bisect_right(node.keys, key)]  # type: ignore[index]
            node = young.get(nid) or self._load(nid)
        m = node.map
        if m is None:
            if node.kind != LEAF:
                self._expect(nid, node, 0)
            m = node.map = dict(zip(node.keys, node.vals, strict=True))  # a benign race
        v = m.get(key)
        if v is None or v.__class__ is bytes:
            return v
        return self._value(v)

    def warm(self, keys: Iterable[bytes]) -> int:
        """Load what :meth:`get` of each of ``keys`` reads and the node cache lacks, one
        batch per level (the internal nodes, then the leaves, then the out-of-line values),
        so that the gets then cost no round trip: a few round trips however many leaves the
        keys are spread over. Returns how many blobs were loaded."""
        if self.root is None:
            return 0
        todo = sorted(set(keys))
        if not todo:
            return 0
        frontier: list[tuple[bytes, list[bytes]]] = [(self.root, todo)]
        for level in range(self.depth - 1, 0, -1):
            nodes = self._load_many([nid for nid, _ in frontier])
            below: dict[bytes, list[bytes]] = {}
            for (nid, ks), node in zip(frontier, nodes, strict=True):
                if node.kids is None:
                    self._expect(nid, node, level)
                for key in ks:
                    below.setdefault(node.kids[bisect_right(node.keys, key)], []).append(key)  # type: ignore[index]
            frontier = list(below.items())
        get = self._cache.get
        want: list[bytes] = []
        leaves = self._load_many([nid for nid, _ in frontier])
        for (nid, ks), node in zip(frontier, leaves, strict=True):
            if node.kind != LEAF:
                self._expect(nid, node, 0)
            for key in ks:
                i = bisect_left(node.keys, key)
                if i < len(node.keys) and node.keys[i] == key:
                    v = node.vals[i]
                    if v.__class__ is BlobRef and get(v.id) is None:
                        want.append(v.id)
        if want:
            self._load_many(sorted(set(want)))
        return len(want)

    def size_of(self, key: bytes) -> int | None:
        """``len(get(key))`` (None: no such key) without loading an out-of-line value."""
        nid = self.root
        if nid is None:
            return None
        node = self._load(nid)
        for _ in range(self.depth - 1):
            if node.kids is None:
                self._expect(nid, node, 1)
            nid = node.kids[bisect_right(node.keys, key)]  # type: ignore[index]
            node = self._load(nid)
        if node.kind != LEAF:
            self._expect(nid, node, 0)
        i = bisect_left(node.keys, key)
        if i == len(node.keys) or node.keys[i] != key:
            return None
        v = node.vals[i]
        return len(v) if v.__class__ is bytes else v.length

    def seek(self, key: bytes | None, *, forward: bool, strict: bool) -> bytes | None:
        """Forward: the first key >= ``key`` (strict: > key), None: the first key. Backward:
        the last key <= ``key`` (strict: < key), None: the last key. None if there is none."""
        if self.root is None:
            return None
        young = self._cache._young
        nid: bytes = self.root
        node = young.get(nid) or self._load(nid)
        # the deepest ancestor with a sibling in the direction of travel, for falling off
        alt: Node | None = None
        alt_i = 0
        alt_level = 0
        for level in range(self.depth - 1, 0, -1):
            kids = node.kids
            if kids is None:
                self._expect(nid, node, level)
            if key is None:
                i = 0 if forward else len(kids) - 1  # type: ignore[arg-type]
            else:
                i = bisect_right(node.keys, key)
            if forward:
                if i + 1 < len(kids):  # type: ignore[arg-type]
                    alt, alt_i, alt_level = node, i + 1, level
            elif i > 0:
                alt, alt_i, alt_level = node, i - 1, level
            nid = kids[i]  # type: ignore[index]
            node = young.get(nid) or self._load(nid)
        if node.kind != LEAF:
            self._expect(nid, node, 0)
        keys = node.keys
        if forward:
            if key is None:
                i = 0
            else:
                i = bisect_right(keys, key) if strict else bisect_left(keys, key)
            if i < len(keys):
                return keys[i]
        else:
            if key is None:
                i = len(keys) - 1
            else:
                i = (bisect_left(keys, key) if strict else bisect_right(keys, key)) - 1
            if i >= 0:
                return keys[i]
        if alt is None:
            return None
        # the neighbouring subtree's first (forward) or last key
        level = alt_level
        node = alt
        i = alt_i
        while True:
            nid = node.kids[i]  # type: ignore[index]
            level -= 1
            node = self._expect(nid, young.get(nid) or self._load(nid), level)
            if level == 0:
                if not node.keys:
                    raise _corrupt(nid, "empty leaf")
                return node.keys[0] if forward else node.keys[-1]
            i = 0 if forward else len(node.kids) - 1  # type: ignore[arg-type]

    def items(self, start: bytes | None = None,
              forward: bool = True) -> Iterator[tuple[bytes, bytes]]:
        """The entries in key order (``forward=False``: descending) from ``start``
        (inclusive; None: from the first/last)."""
        if self.root is None:
            return
        nid = self.root
        node = self._expect(nid, self._load(nid), self.depth - 1)
        stack: list[list[Any]] = []  # [internal node, index of the child being walked]
        for level in range(self.depth - 1, 0, -1):
            kids: list[bytes] = node.kids  # type: ignore[assignment]
            if start is None:
                i = 0 if forward else len(kids) - 1
            else:
                i = bisect_right(node.keys, start)
            stack.append([node, i])
            node = self._child(node, i, level - 1, forward)
        keys = node.keys
        if start is None:
            i = 0 if forward else len(keys) - 1
        elif forward:
            i = bisect_left(keys, start)
        else:
            i = bisect_right(keys, start) - 1
        value = self._value
        while True:
            keys = node.keys
            vals = node.vals
            if forward:
                while i < len(keys):
                    v = vals[i]
                    yield keys[i], v if v.__class__ is bytes else value(v)
                    i += 1
            else:
                while i >= 0:
                    v = vals[i]
                    yield keys[i], v if v.__class__ is bytes else value(v)
                    i -= 1
            # next leaf: up to the first ancestor with a further child, then down its edge
            depth = len(stack)
            while stack:
                top = stack[-1]
                top[1] += 1 if forward else -1
                if 0 <= top[1] < len(top[0].kids):
                    break
                stack.pop()
            if not stack:
                return
            while True:
                parent, j = stack[-1]
                level = depth - len(stack)
                node = self._child(parent, j, level, forward)
                if level == 0:
                    break
                stack.append([node, 0 if forward else len(node.kids) - 1])  # type: ignore[arg-type]
            i = 0 if forward else len(node.keys) - 1

    def _child(self, parent: Node, i: int, level: int, forward: bool) -> Node:
        """Child ``i`` of ``parent`` (at ``level``); for a leaf not cached, the next few
        leaves in the direction of travel are loaded in the same batch."""
        kids: list[bytes] = parent.kids  # type: ignore[assignment]
        nid = kids[i]
        node = self._cache.get(nid)
        if node is None:
            if level == 0:
                ids = kids[i:i + _PREFETCH] if forward else kids[max(0, i - _PREFETCH + 1):i + 1]
                nodes = self._load_many(ids)
                node = nodes[0] if forward else nodes[-1]
            else:
                node = self._load(nid)
        return self._expect(nid, node, level)

    def node_ids(self) -> Iterator[bytes]:
        """Every node id the tree references (internal, leaf and blob nodes), depth first,
        each once. Nodes not in the cache are read in batches and not cached."""
        if self.root is None:
            return
        yield self.root
        root = self._expect(self.root, self._load_many([self.root], cache=False)[0],
                            self.depth - 1)
        stack: list[tuple[Node, int]] = [(root, self.depth - 1)]
        while stack:
            node, level = stack.pop()
            if level == 0:
                for v in node.vals:
                    if v.__class__ is not bytes:
                        yield v.id
                continue
            kids: list[bytes] = node.kids  # type: ignore[assignment]
            yield from kids
            nodes = self._load_many(kids, cache=False)
            for nid, child in zip(reversed(kids), reversed(nodes), strict=True):
                stack.append((self._expect(nid, child, level - 1), level - 1))

    # --- writes -------------------------------------------------------------------------------

    def apply(self, changes: Sequence[tuple[bytes, bytes | None]],
              new_id: Callable[[], bytes]
              ) -> tuple[Tree, list[tuple[bytes, bytes]], list[bytes]]:
        """This tree with ``changes`` (sorted by key, unique keys; value None deletes, a
        no-op for an absent key). Returns the new tree, the new nodes to persist as
        ``(id, encoded)`` (children before parents) and the ids of this tree's nodes the
        new tree no longer references. ``new_id`` names each new node (unique ids)."""
        ck = [k for k, _ in changes]
        cv = [None if v is None else bytes(v) for _, v in changes]
        prev = None
        for k in ck:
            if k.__class__ is not bytes:
                raise TypeError(f"key must be bytes, not {type(k).__name__}")
            if not k or len(k) > MAX_KEY_SIZE:
                raise ValueError(f"key of {len(k)} bytes: keys are 1-{MAX_KEY_SIZE} bytes")
            if prev is not None and k <= prev:
                raise ValueError("changes must be sorted by key with unique keys")
            prev = k
        if not ck:
            return self._same(), [], []
        b = _Build(new_id)
        if self.root is None:
            res = self._merge_leaf(b, [], [], ck, cv, 0, len(ck), _HEADER + _TRAILER)
            level = 0
            if res is _UNCHANGED:
                return self._same(), [], []
        else:
            level = self.depth - 1
            top = _Touch(self.root, self._expect(self.root, self._load(self.root), level),
                         0, len(ck))
            frontier = [top]
            levels = [frontier]
            for lvl in range(level, 0, -1):  # descend: one batched read per level
                want: list[tuple[_Touch, int, bytes, int, int]] = []
                for t in frontier:
                    seps = t.node.keys
                    j = t.lo
                    while j < t.hi:
                        i = bisect_right(seps, ck[j])
                        e = t.hi if i == len(seps) else bisect_left(ck, seps[i], j, t.hi)
                        want.append((t, i, t.node.kids[i], j, e))  # type: ignore[index]
                        j = e
                nodes = self._load_many([w[2] for w in want])
                frontier = []
                for (t, i, nid, j, e), node in zip(want, nodes, strict=True):
                    child = _Touch(nid, self._expect(nid, node, lvl - 1), j, e)
                    t.kids.append((i, child))
                    frontier.append(child)
                levels.append(frontier)
            levels.reverse()
            res = self._rebuild(b, levels, ck, cv)
            if res is _UNCHANGED:
                return self._same(), [], []
        root, depth = self._finish(b, res, level)
        tree = Tree(self._source, self._cache, root, self.count + b.dcount,
                    self.nbytes + b.dbytes, depth, node_size=self.node_size,
                    blob_threshold=self.blob_threshold)
        return tree, [(nid, raw) for nid, (raw, _) in b.new.items()], b.freed

    def _same(self) -> Tree:
        return Tree(self._source, self._cache, self.root, self.count, self.nbytes, self.depth,
                    node_size=self.node_size, blob_threshold=self.blob_threshold)

    def _new_value(self, b: _Build, key: bytes, v: bytes) -> bytes | BlobRef:
        b.dcount += 1
        b.dbytes += len(key) + len(v) + ENTRY_OVERHEAD
        if len(v) <= self.blob_threshold:
            return v
        nid = b.new_id()
        raw = encode_blob(v)
        node = Node(BLOB, 0, [], v, None, len(raw))
        b.new[nid] = (raw, node)
        self._cache.put(nid, node)
        return BlobRef.to(nid, len(v))

    @staticmethod
    def _drop_value(b: _Build, key: bytes, old: bytes | BlobRef) -> None:
        b.dcount -= 1
        if old.__class__ is bytes:
            b.dbytes -= len(key) + len(old) + ENTRY_OVERHEAD
        else:
            ref: BlobRef = old  # type: ignore[assignment]
            b.dbytes -= len(key) + ref.length + ENTRY_OVERHEAD
            b.freed.append(ref.id)

    def _merge_leaf(self, b: _Build, keys: list[bytes], vals: list[Any], ck: list[bytes],
                    cv: list[bytes | None], lo: int, hi: int, size: int) -> Any:
        """A leaf's entries with changes ``[lo, hi)``: a _Pending, or _UNCHANGED. ``size``:
        the leaf's encoded size (the new one is tracked from it)."""
        changed = False
        if hi - lo <= 32 or hi - lo < len(keys) >> 3:  # few changes: copy and insert
            keys = list(keys)
            vals = list(vals)
            for j in range(lo, hi):
                k = ck[j]
                v = cv[j]
                i = bisect_left(keys, k)
                if i < len(keys) and keys[i] == k:
                    old = vals[i]
                    if v is not None and old.__class__ is bytes and old == v:
                        continue
                    self._drop_value(b, k, old)
                    size -= len(old)
                    if v is None:
                        del keys[i]
                        del vals[i]
                        size -= 6 + len(k)
                    else:
                        new = vals[i] = self._new_value(b, k, v)
                        size += len(new)
                    changed = True
                elif v is not None:
                    keys.insert(i, k)
                    new = self._new_value(b, k, v)
                    vals.insert(i, new)
                    size += 6 + len(k) + len(new)
                    changed = True
            return _Pending(True, keys, vals, size) if changed else _UNCHANGED
        nk: list[bytes] = []
        nv: list[Any] = []
        i = 0
        n = len(keys)
        for j in range(lo, hi):
            k = ck[j]
            v = cv[j]
            e = bisect_left(keys, k, i)
            if e > i:
                nk += keys[i:e]
                nv += vals[i:e]
                i = e
            if i < n and keys[i] == k:
                old = vals[i]
                i += 1
                if v is not None and old.__class__ is bytes and old == v:
                    nk.append(k)
                    nv.append(old)
                    continue
                self._drop_value(b, k, old)
                changed = True
                if v is None:
                    continue
            elif v is None:
                continue
            nk.append(k)
            nv.append(self._new_value(b, k, v))
            changed = True
        nk += keys[i:]
        nv += vals[i:]
        return _Pending(True, nk, nv) if changed else _UNCHANGED  # size measured if needed

    def _rebuild(self, b: _Build, levels: list[list[_Touch]], ck: list[bytes],
                 cv: list[bytes | None]) -> Any:
        """The new content of the touched nodes, bottom up, one level at a time (``levels[0]``
        the touched leaves, ``levels[-1]`` the root): the root's _Pending, or _UNCHANGED.
        The neighbours that small new nodes will be merged with are read in one batch per
        level."""
        res: dict[int, Any] = {}
        for t in levels[0]:
            r = self._merge_leaf(b, t.node.keys, t.node.vals, ck, cv, t.lo, t.hi, t.node.enc)
            if r is not _UNCHANGED:
                b.freed.append(t.nid)
            res[id(t)] = r
        limit = self.node_size >> 2
        for level in range(1, len(levels)):
            work: list[tuple[_Touch, list[bytes | None], list[Any]]] = []
            want: list[bytes] = []
            for t in levels[level]:
                done = [(i, res[id(c)]) for i, c in t.kids]
                if all(r is _UNCHANGED for _, r in done):
                    res[id(t)] = _UNCHANGED
                    continue
                b.freed.append(t.nid)
                seps: list[bytes | None] = [None, *t.node.keys]
                slots: list[Any] = list(t.node.kids)  # type: ignore[arg-type]  # id or _Pending
                for i, r in done:
                    if r is not _UNCHANGED:
                        slots[i] = r
                work.append((t, seps, slots))
                n = len(slots)
                for i, r in done:  # the neighbour _settle will read for a small new node
                    if r is _UNCHANGED or r.empty() or n == 1 or not r.small(limit):
                        continue
                    right = slots[i + 1] if i + 1 < n else None
                    left = slots[i - 1] if i else None
                    if right.__class__ is _Pending or left.__class__ is _Pending:
                        continue
                    nb = right if right is not None else left
                    if nb is not None:
                        want.append(nb)
            if want:
                self._load_many([nid for nid in want if self._cache.get(nid) is None])
            for t, seps, slots in work:
                self._settle(b, seps, slots, level - 1)
                res[id(t)] = self._close(b, seps, slots, level - 1)
        return res[id(levels[-1][0])]

    def _close(self, b: _Build, seps: list[bytes | None], slots: list[Any],
               level: int) -> _Pending:
        """The pending parent of settled children ``slots`` (at ``level``): each pending
        child is encoded, except a lone small one, which stays open so that the merge of
        its parent with a neighbour can merge it too (no internal node of one child)."""
        if len(slots) == 1 and slots[0].__class__ is _Pending \
                and slots[0].small(self.node_size >> 2):
            return _Pending(False, [], slots)
        out_seps: list[bytes] = []
        out_kids: list[bytes] = []
        for sep, slot in zip(seps, slots, strict=True):
            if slot.__class__ is bytes:
                parts = [(sep, slot)]
            else:
                parts = self._emit(b, slot, level, sep)
            for s, nid in parts:
                if out_kids:
                    out_seps.append(s)  # type: ignore[arg-type]
                out_kids.append(nid)
        return _Pending(False, out_seps, out_kids)

    def _settle(self, b: _Build, seps: list[bytes | None], slots: list[Any],
                level: int) -> None:
        """Drop empty pending children, merge small ones with a neighbour (in place)."""
        limit = self.node_size >> 2
        i = 0
        while i < len(slots):  # first the empty ones: nothing may merge with them
            if slots[i].__class__ is _Pending and slots[i].empty():
                del slots[i]
                del seps[i]
                if i == 0 and seps:
                    seps[0] = None
            else:
                i += 1
        i = 0
        while i < len(slots):
            p = slots[i]
            if p.__class__ is bytes:
                i += 1
                continue
            if len(slots) == 1 or not p.small(limit):
                i += 1
                continue
            # merge with a neighbour: a pending one if there is one, else read the right one
            # (the left one at the end); only one read per pending node
            if i + 1 < len(slots) and slots[i + 1].__class__ is _Pending:
                j = i + 1
            elif i > 0 and slots[i - 1].__class__ is _Pending:
                j = i - 1
            elif p.absorbed:
                i += 1
                continue
            else:
                j = i + 1 if i + 1 < len(slots) else i - 1
            q = slots[j]
            if q.__class__ is bytes:
                got = b.new.pop(q, None)  # a node this apply made: never written, not freed
                if got is None:
                    other = self._expect(q, self._load(q), level)
                    b.freed.append(q)
                else:
                    other = got[1]
                q = _Pending(level == 0, list(other.keys),
                             list(other.vals if level == 0 else other.kids),  # type: ignore[arg-type]
                             other.enc)
                p.absorbed = True
            left, right = (p, q) if j > i else (q, p)
            lo = min(i, j)
            mid = seps[lo + 1]
            if left.leaf:
                merged = _Pending(True, left.keys + right.keys, left.vals + right.vals,
                                  left.size() + right.size() - _HEADER - _TRAILER)
            else:
                merged = _Pending(False, [*left.keys, mid, *right.keys],  # type: ignore[list-item]
                                  left.vals + right.vals)
            if not merged.leaf and any(k.__class__ is _Pending for k in merged.vals):
                ms: list[bytes | None] = [None, *merged.keys]
                mk = list(merged.vals)
                self._settle(b, ms, mk, level - 1)
                merged = self._close(b, ms, mk, level - 1)
            merged.absorbed = p.absorbed or q.absorbed
            slots[lo] = merged
            del slots[lo + 1]
            del seps[lo + 1]
            i = lo

    def _emit(self, b: _Build, p: _Pending, level: int,
              sep: bytes | None) -> list[tuple[bytes | None, bytes]]:
        """Encode pending node ``p`` as one or more nodes at ``level``; returns their
        (separator, id), the first with ``sep``."""
        if not p.leaf and any(k.__class__ is _Pending for k in p.vals):
            p = self._close(b, [None, *p.keys], [*p.vals], level - 1)
            if len(p.vals) == 1 and p.vals[0].__class__ is _Pending:  # still lone: encode it
                parts = self._emit(b, p.vals[0], level - 1, None)
                p = _Pending(False, [s for s, _ in parts[1:]],  # type: ignore[misc]
                             [nid for _, nid in parts])
        n = len(p.vals)
        target = self.node_size
        total = p.size()
        cuts = self._cuts(p, n, total) if total > target else [0]
        cuts.append(n)
        out: list[tuple[bytes | None, bytes]] = []
        keys = p.keys
        vals = p.vals
        for a, e in pairwise(cuts):
            if p.leaf:
                ks = keys[a:e]
                vs = vals[a:e]
                raw = encode_leaf(ks, vs)
                node = Node(LEAF, 0, ks, vs, None, len(raw))
                if a:
                    sep = _shortest_sep(keys[a - 1], keys[a])
            else:
                ss = keys[a:e - 1]
                kids = vals[a:e]
                raw = encode_internal(level, ss, kids)
                node = Node(INTERNAL, level, ss, None, kids, len(raw))
                if a:
                    sep = keys[a - 1]
            nid = b.new_id()
            b.new[nid] = (raw, node)
            self._cache.put(nid, node)
            out.append((sep, nid))
        return out

    def _cuts(self, p: _Pending, n: int, total: int) -> list[int]:
        """Where to cut pending node ``p`` (``total`` encoded bytes, over ``node_size``):
        the first entry of each node. Nodes of about equal size, none over ``node_size``
        unless it holds the fewest entries its kind can (leaf 1, internal 2; 3 when the
        last would be left with 1)."""
        target = self.node_size
        fixed = _HEADER + _TRAILER
        least = 1 if p.leaf else 2
        keys = p.keys
        # prefix[i]: encoded bytes of entries [0, i); an internal entry is its child with the
        # separator before it, which moves up to the parent when the entry starts a node
        if p.leaf:
            prefix = list(accumulate(map((6).__add__, map(add, map(len, keys), map(len, p.vals))),
                                     initial=0))
        else:
            first = 1 + len(p.vals[0])
            prefix = [0, *accumulate(map((3).__add__, map(add, map(len, p.vals[1:]),
                                                         map(len, keys))), initial=first)]

        def over(a: int, e: int) -> bool:
            size = fixed + prefix[e] - prefix[a] - (2 + len(keys[a - 1]) if a and not p.leaf else 0)
            return size > target and e - a > least

        # equal shares first (C-level bisects); the greedy walk when a share breaks the bound
        m = -(-total // target)
        whole = prefix[n]
        cuts = [0]
        for c in range(1, m):
            x = whole * c / m
            i = bisect_left(prefix, x, cuts[-1] + 1)
            if i > cuts[-1] + 1 and x - prefix[i - 1] < prefix[i] - x:
                i -= 1
            if i - cuts[-1] < least or n - i < least:
                break
            cuts.append(i)
        else:
            if not any(over(a, e) for a, e in pairwise([*cuts, n])):
                return cuts
        cuts = [0]
        goal = total / m
        acc = fixed
        count = 0
        for i in range(n):
            s = prefix[i + 1] - prefix[i]
            if count >= least and (acc + s > target or acc + s / 2 > goal):
                cuts.append(i)
                acc = fixed
                count = 0
                if not p.leaf:  # the separator before it moves up to the parent
                    s -= 2 + len(keys[i - 1])
            acc += s
            count += 1
        if len(cuts) > 1 and n - cuts[-1] < least:  # the last node needs more
            if cuts[-1] - cuts[-2] > least:
                cuts[-1] -= 1
            else:
                cuts.pop()
        return cuts

    def _finish(self, b: _Build, p: _Pending, level: int) -> tuple[bytes | None, int]:
        """The root id and depth of the tree whose root-level content is ``p``."""
        while not p.leaf and len(p.vals) == 1 and p.vals[0].__class__ is _Pending:
            p = p.vals[0]  # a root with one child is replaced by the child
            level -= 1
        if p.empty():
            return None, 0
        while True:
            parts = self._emit(b, p, level, None)
            if len(parts) == 1:
                break
            p = _Pending(False, [s for s, _ in parts[1:]], [nid for _, nid in parts])  # type: ignore[misc]
            level += 1
        root = parts[0][1]
        while level > 0:
            got = b.new.get(root)
            node = got[1] if got else self._expect(root, self._load(root), level)
            if len(node.kids) != 1:  # type: ignore[arg-type]
                break
            if got:
                del b.new[root]
            else:
                b.freed.append(root)
            root = node.kids[0]  # type: ignore[index]
            level -= 1
        return root, level + 1


# --- verification -----------------------------------------------------------------------------


def check_tree(tree: Tree, *, sizes: bool = True) -> list[str]:
    """Everything wrong with ``tree``: unreadable or misplaced nodes, key order, separators,
    levels, node sizes (``sizes``), blob references, and the tree's count and nbytes.
    An empty list means it is sound. Reads every node (not through the cache)."""
    problems: list[str] = []
    if tree.root is None:
        if tree.count or tree.nbytes:
            problems.append(f"empty tree with count {tree.count}, nbytes {tree.nbytes}")
        return problems
    seen: set[bytes] = set()
    count = 0
    nbytes = 0
    limit = tree.node_size

    def read(ids: list[bytes]) -> list[bytes | None]:
        try:
            return list(tree._source.load_many(ids))
        except CorruptStore:  # which one: read them one by one
            if len(ids) == 1:
                raise
        out: list[bytes | None] = []
        for nid in ids:
            try:
                out.append(tree._source.load_many([nid])[0])
            except CorruptStore as e:
                problems.append(f"node {nid.hex()}: {e}")
                out.append(None)
        return out

    def load(ids: list[bytes]) -> list[Node | None]:
        fresh = []
        for nid in ids:
            if nid in seen:
                problems.append(f"node {nid.hex()} is referenced twice")
            else:
                seen.add(nid)
                fresh.append(nid)
        got: dict[bytes, Node] = {}
        try:
            raws = read(fresh) if fresh else []
        except CorruptStore as e:
            problems.append(f"node {fresh[0].hex()}: {e}")
            raws = [None]
        for nid, raw in zip(fresh, raws, strict=True):
            if raw is None:
                continue
            try:
                got[nid] = decode_node(nid, bytes(raw))
            except CorruptStore as e:
                problems.append(str(e))
        return [got.get(nid) for nid in ids]

    # (id, node, level, lower bound, upper bound)
    stack: list[tuple[bytes, Node | None, int, bytes | None, bytes | None]] = [
        (tree.root, load([tree.root])[0], tree.depth - 1, None, None)]
    while stack:
        nid, node, level, lo, hi = stack.pop()
        if node is None:
            continue
        where = f"node {nid.hex()}"
        want = LEAF if level == 0 else INTERNAL
        if node.kind != want or node.level != level:
            problems.append(f"{where}: type {node.kind} level {node.level}, expected type "
                            f"{want} level {level}")
            continue
        keys = node.keys
        if any(a >= c for a, c in pairwise(keys)):
            problems.append(f"{where}: keys out of order")
        if keys and ((lo is not None and keys[0] < lo) or (hi is not None and keys[-1] >= hi)):
            problems.append(f"{where}: keys outside [{lo!r}, {hi!r})")
        encoded = _HEADER + _TRAILER
        if level == 0:
            if not keys:
                problems.append(f"{where}: empty leaf")
            refs = [v for v in node.vals if v.__class__ is not bytes]
            for k, v in zip(keys, node.vals, strict=True):
                length = v.length if v.__class__ is BlobRef else len(v)
                count += 1
                nbytes += len(k) + length + ENTRY_OVERHEAD
                encoded += 6 + len(k) + len(v)
                if v.__class__ is bytes and len(v) > tree.blob_threshold:
                    problems.append(f"{where}: value of {len(v)} bytes stored inline")
            for ref, blob in zip(refs, load([r.id for r in refs]), strict=True):
                if blob is not None and (blob.kind != BLOB or len(blob.vals) != ref.length):
                    problems.append(f"node {ref.id.hex()}: not a blob of {ref.length} bytes")
            if sizes and encoded > limit and len(keys) > 1:
                problems.append(f"{where}: leaf of {encoded} bytes holds {len(keys)} entries")
        else:
            kids: list[bytes] = node.kids  # type: ignore[assignment]
            if len(kids) < 2:
                problems.append(f"{where}: internal node with {len(kids)} child")
            encoded += sum(1 + len(c) for c in kids) + sum(2 + len(s) for s in keys)
            if sizes and encoded > limit and len(kids) > 3:
                problems.append(f"{where}: internal node of {encoded} bytes, {len(kids)} children")
            bounds = [lo, *keys, hi]
            for i, child in reversed(list(enumerate(load(kids)))):
                stack.append((kids[i], child, level - 1, bounds[i], bounds[i + 1]))
    if count != tree.count or nbytes != tree.nbytes:
        problems.append(f"tree says {tree.count} entries of {tree.nbytes} bytes, its leaves "
                        f"hold {count} of {nbytes}")
    return problems
