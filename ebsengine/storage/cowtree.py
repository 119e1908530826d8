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
(nodes are immutable, so a cached node is never stale).
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, pairwise
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


class BlobRef:
    """A leaf's reference to a value stored out of line."""

    __slots__ = ("id", "length")

    def __init__(self, id: bytes, length: int) -> None:
        self.id = id
        self.length = length

    def __repr__(self) -> str:
        return f"BlobRef({self.id!r}, {self.length})"


class Node:
    """A decoded node. Leaf: ``keys``/``vals`` (bytes or :class:`BlobRef`), ``kids`` None.
    Internal: ``keys`` are the separators (one fewer than ``kids``), ``vals`` None. Blob:
    ``vals`` is the value (bytes), ``keys`` empty. Shared between threads: never mutated."""

    __slots__ = ("kind", "level", "keys", "vals", "kids", "size")

    def __init__(self, kind: int, level: int, keys: list[bytes], vals: Any,
                 kids: list[bytes] | None, size: int) -> None:
        self.kind = kind
        self.level = level
        self.keys = keys
        self.vals = vals
        self.kids = kids
        self.size = size  # approximate bytes it holds in memory (for the cache)


def _mem_size(encoded: int, entries: int) -> int:
    return 200 + encoded + 90 * entries


def _corrupt(nid: bytes, what: str) -> CorruptStore:
    return CorruptStore(f"tree node {nid.hex()}: {what}")


# --- encoding ---------------------------------------------------------------------------------


def _seal(body: bytes) -> bytes:
    return body + pack("<Q", xxh3_64_intdigest(body))


def _area(v: bytes | BlobRef) -> bytes:
    return v if v.__class__ is bytes else pack("<Q", v.length) + v.id  # type: ignore[union-attr]


def encode_leaf(keys: Sequence[bytes], vals: Sequence[bytes | BlobRef]) -> bytes:
    n = len(keys)
    areas = [_area(v) for v in vals]
    vlens = [len(a) if v.__class__ is bytes else len(a) | _BLOB_FLAG
             for a, v in zip(areas, vals, strict=True)]
    head = pack(f"<BBBI{n}H{n}I", LEAF, FORMAT_VERSION, 0, n, *map(len, keys), *vlens)
    return _seal(b"".join([head, *keys, *areas]))


def encode_internal(level: int, seps: Sequence[bytes], kids: Sequence[bytes]) -> bytes:
    n = len(kids)
    head = pack(f"<BBBI{n}B{n - 1}H", INTERNAL, FORMAT_VERSION, level, n, *map(len, kids),
                *map(len, seps))
    return _seal(b"".join([head, *kids, *seps]))


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
        return Node(BLOB, 0, [], raw[3:end], None, _mem_size(size, 0))
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
                    vals[i] = BlobRef(area[8:], unpack_from("<Q", area)[0])
        return Node(LEAF, 0, keys, vals, None, _mem_size(size, n))
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
        return Node(INTERNAL, level, seps, None, kids, _mem_size(size, n))
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
        self.hits = 0  # promotions and misses are counted; young hits are not (hot path)
        self.misses = 0

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

    __slots__ = ("leaf", "keys", "vals", "absorbed")

    def __init__(self, leaf: bool, keys: list[bytes], vals: list[Any]) -> None:
        self.leaf = leaf
        self.keys = keys
        self.vals = vals
        self.absorbed = False  # merged with a neighbour that had to be read

    def empty(self) -> bool:
        return not self.vals

    def sizes(self) -> list[int]:
        if self.leaf:
            return [6 + len(k) + (len(v) if v.__class__ is bytes else 8 + len(v.id))
                    for k, v in zip(self.keys, self.vals, strict=True)]
        seps = self.keys
        return [1 + len(c) + (2 + len(seps[i - 1]) if i else 0) for i, c in enumerate(self.vals)]

    def size(self) -> int:
        return _HEADER + _TRAILER + sum(self.sizes())

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
        self.new_id = new_id
        self.new: dict[bytes, tuple[bytes, Node]] = {}
        self.freed: list[bytes] = []
        self.dcount = 0
        self.dbytes = 0


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
        nodes = [decode_node(nid, raw) for nid, raw in zip(ids, raws, strict=True)]
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

    def _leaf_for(self, key: bytes) -> Node:
        nid: bytes = self.root  # type: ignore[assignment]
        young = self._cache._young
        node = young.get(nid) or self._load(nid)
        for _ in range(self.depth - 1):
            kids = node.kids
            if kids is None:
                self._expect(nid, node, 1)
            nid = kids[bisect_right(node.keys, key)]  # type: ignore[index]
            node = young.get(nid) or self._load(nid)
        if node.kind != LEAF:
            self._expect(nid, node, 0)
        return node

    # --- reads --------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        if self.root is None:
            return None
        node = self._leaf_for(key)
        keys = node.keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            v = node.vals[i]
            return v if v.__class__ is bytes else self._value(v)
        return None

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
            res = self._merge_leaf(b, [], [], ck, cv, 0, len(ck))
            level = 0
        else:
            level = self.depth - 1
            top = _Touch(self.root, self._expect(self.root, self._load(self.root), level),
                         0, len(ck))
            frontier = [top]
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
            res = self._rewrite(b, top, level, ck, cv)
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
        node = Node(BLOB, 0, [], v, None, _mem_size(len(raw), 0))
        b.new[nid] = (raw, node)
        self._cache.put(nid, node)
        return BlobRef(nid, len(v))

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
                    cv: list[bytes | None], lo: int, hi: int) -> Any:
        """A leaf's entries with changes ``[lo, hi)``: a _Pending, or _UNCHANGED."""
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
                    if v is None:
                        del keys[i]
                        del vals[i]
                    else:
                        vals[i] = self._new_value(b, k, v)
                    changed = True
                elif v is not None:
                    keys.insert(i, k)
                    vals.insert(i, self._new_value(b, k, v))
                    changed = True
            return _Pending(True, keys, vals) if changed else _UNCHANGED
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
        return _Pending(True, nk, nv) if changed else _UNCHANGED

    def _rewrite(self, b: _Build, t: _Touch, level: int, ck: list[bytes],
                 cv: list[bytes | None]) -> Any:
        """The new content of touched node ``t``: a _Pending, or _UNCHANGED."""
        node = t.node
        if level == 0:
            res = self._merge_leaf(b, node.keys, node.vals, ck, cv, t.lo, t.hi)
            if res is not _UNCHANGED:
                b.freed.append(t.nid)
            return res
        done = [(i, self._rewrite(b, c, level - 1, ck, cv)) for i, c in t.kids]
        if all(r is _UNCHANGED for _, r in done):
            return _UNCHANGED
        b.freed.append(t.nid)
        seps: list[bytes | None] = [None, *node.keys]
        slots: list[Any] = list(node.kids)  # type: ignore[arg-type]  # an id or a _Pending
        for i, r in done:
            if r is not _UNCHANGED:
                slots[i] = r
        self._settle(b, seps, slots, level - 1)
        return self._close(b, seps, slots, level - 1)

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
        while i < len(slots):
            p = slots[i]
            if p.__class__ is bytes:
                i += 1
                continue
            if p.empty():
                del slots[i]
                del seps[i]
                if i == 0 and seps:
                    seps[0] = None
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
                other = self._expect(q, self._load(q), level)
                b.freed.append(q)
                q = _Pending(level == 0, list(other.keys),
                             list(other.vals if level == 0 else other.kids))  # type: ignore[arg-type]
                p.absorbed = True
            left, right = (p, q) if j > i else (q, p)
            lo = min(i, j)
            mid = seps[lo + 1]
            if left.leaf:
                merged = _Pending(True, left.keys + right.keys, left.vals + right.vals)
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
                kid = p.vals[0]
                p = _Pending(False, [], [nid for _, nid in self._emit(b, kid, level - 1, None)])
        sizes = p.sizes()
        n = len(sizes)
        target = self.node_size
        fixed = _HEADER + _TRAILER
        total = fixed + sum(sizes)
        cuts = [0]
        if total > target:
            least = 1 if p.leaf else 2
            goal = total / -(-total // target)
            acc = fixed
            count = 0
            for i, s in enumerate(sizes):
                if count >= least and (acc + s > target or acc + s / 2 > goal):
                    cuts.append(i)
                    acc = fixed
                    count = 0
                    if not p.leaf:  # the separator before it moves up to the parent
                        s -= 2 + len(p.keys[i - 1])
                acc += s
                count += 1
            if len(cuts) > 1 and n - cuts[-1] < least:  # the last node needs more
                if cuts[-1] - cuts[-2] > least:
                    cuts[-1] -= 1
                else:
                    cuts.pop()
        cuts.append(n)
        out: list[tuple[bytes | None, bytes]] = []
        keys = p.keys
        vals = p.vals
        for a, e in pairwise(cuts):
            if p.leaf:
                ks = keys[a:e]
                vs = vals[a:e]
                raw = encode_leaf(ks, vs)
                node = Node(LEAF, 0, ks, vs, None, _mem_size(len(raw), e - a))
                if a:
                    sep = _shortest_sep(keys[a - 1], keys[a])
            else:
                ss = keys[a:e - 1]
                kids = vals[a:e]
                raw = encode_internal(level, ss, kids)
                node = Node(INTERNAL, level, ss, None, kids, _mem_size(len(raw), e - a))
                if a:
                    sep = keys[a - 1]
            nid = b.new_id()
            b.new[nid] = (raw, node)
            self._cache.put(nid, node)
            out.append((sep, nid))
        return out

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

    def load(ids: list[bytes]) -> list[Node | None]:
        out: list[Node | None] = []
        for nid in ids:
            if nid in seen:
                problems.append(f"node {nid.hex()} is referenced twice")
                out.append(None)
                continue
            seen.add(nid)
            try:
                out.append(decode_node(nid, tree._source.load_many([nid])[0]))
            except CorruptStore as e:
                problems.append(str(e))
                out.append(None)
        return out

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
                encoded += 6 + len(k) + (len(v) if v.__class__ is bytes else 8 + len(v.id))
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
