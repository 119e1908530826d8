"""The copy-on-write B+tree of issue 10 (storage/cowtree.py), against a dict model.

Trees here use tiny nodes (256 bytes) and a low blob threshold so that a few hundred entries
make trees several levels deep, with splits, merges, collapses and blobs on every path."""

from __future__ import annotations

import itertools
import math
import random
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ebsengine.errors import CorruptStore
from ebsengine.storage import cowtree as C
from ebsengine.storage.cowtree import NodeCache, Tree, check_tree

NODE = 256
BLOB = 64


class DictSource:
    """Nodes in a dict; counts batches so tests can see what a call read."""

    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}
        self.calls = 0
        self.loaded = 0

    def load_many(self, ids: Sequence[bytes]) -> list[bytes]:
        self.calls += 1
        self.loaded += len(ids)
        try:
            return [self.d[i] for i in ids]
        except KeyError as e:
            raise CorruptStore(f"node {e.args[0].hex()} is missing") from None


class Ids:
    def __init__(self) -> None:
        self.n = itertools.count(1)
        self.handed: set[bytes] = set()

    def __call__(self) -> bytes:
        nid = next(self.n).to_bytes(6, "big")
        self.handed.add(nid)
        return nid


def empty(src: DictSource | None = None, cache: NodeCache | None = None, **kw: int) -> Tree:
    kw.setdefault("node_size", NODE)
    kw.setdefault("blob_threshold", BLOB)
    return Tree(src or DictSource(), cache or NodeCache(), **kw)


def commit(tree: Tree, changes: list[tuple[bytes, bytes | None]], ids: Ids,
           src: DictSource) -> tuple[Tree, list[tuple[bytes, bytes]], list[bytes]]:
    new, nodes, freed = tree.apply(changes, ids)
    for nid, raw in nodes:
        assert nid not in src.d
        src.d[nid] = raw
    return new, nodes, freed


def build(n: int, seed: int = 0, **kw: int) -> tuple[Tree, dict[bytes, bytes], DictSource, Ids]:
    rnd = random.Random(seed)
    src = DictSource()
    ids = Ids()
    tree = empty(src, **kw)
    model: dict[bytes, bytes] = {}
    for _ in range(4):
        batch = {rnd.randbytes(rnd.randint(1, 12)): rnd.randbytes(rnd.choice([0, 5, 20, 40, 200]))
                 for _ in range(n // 4)}
        tree = commit(tree, sorted(batch.items()), ids, src)[0]
        model.update(batch)
    return tree, model, src, ids


def model_seek(keys: list[bytes], key: bytes | None, forward: bool, strict: bool) -> bytes | None:
    if not keys:
        return None
    if forward:
        if key is None:
            return keys[0]
        i = bisect_right(keys, key) if strict else bisect_left(keys, key)
        return keys[i] if i < len(keys) else None
    if key is None:
        return keys[-1]
    i = (bisect_left(keys, key) if strict else bisect_right(keys, key)) - 1
    return keys[i] if i >= 0 else None


def depth_ok(tree: Tree) -> bool:
    return tree.depth <= (math.log2(tree.count) + 2 if tree.count else 0)


def node_sizes_ok(tree: Tree, src: DictSource) -> None:
    """Every node within the size bound (see the module docstring)."""
    for nid in tree.node_ids():
        raw = src.d[nid]
        node = C.decode_node(nid, raw)
        if node.kind == C.LEAF and len(node.keys) > 1:
            assert len(raw) <= tree.node_size, (len(raw), len(node.keys))
        elif node.kind == C.INTERNAL:
            assert len(node.kids) >= 2
            if len(node.kids) > 3:
                assert len(raw) <= tree.node_size, (len(raw), len(node.kids))


# --- the stateful model test ------------------------------------------------------------------

keys_st = st.one_of(st.binary(min_size=1, max_size=3),  # a small space: collisions, re-puts
                    st.binary(min_size=1, max_size=40),
                    st.builds(lambda n: b"k%05d" % n, st.integers(0, 400)))
values_st = st.one_of(st.binary(max_size=8), st.binary(min_size=30, max_size=80),
                      st.just(b"v" * 300))
changes_st = st.dictionaries(keys_st, st.one_of(st.none(), values_st), max_size=60)


class TreeVersions(RuleBasedStateMachine):
    """Random batches of puts and deletes across many versions; every version ever made
    stays readable and unchanged; accounting of new and freed nodes is exact."""

    @initialize()
    def start(self) -> None:
        self.src = DictSource()
        self.ids = Ids()
        self.cache = NodeCache(4096)  # tiny: nodes fall out and are read again
        self.versions: list[tuple[Tree, dict[bytes, bytes], frozenset[bytes]]] = [
            (empty(self.src, self.cache), {}, frozenset())]

    @rule(first=st.integers(0, 400), n=st.integers(1, 400), size=st.sampled_from([0, 9, 40, 70]),
          delete=st.booleans())
    def bulk(self, first: int, n: int, size: int, delete: bool) -> None:
        """A run of consecutive keys put or deleted: deep trees, whole subtrees emptied."""
        value = None if delete else b"%d" % first + bytes(size)
        self._apply({b"k%05d" % i: value for i in range(first, first + n)}, 0)

    @rule(changes=changes_st, base=st.integers(0, 3))
    def apply(self, changes: dict[bytes, bytes | None], base: int) -> None:
        self._apply(changes, base)

    def _apply(self, changes: dict[bytes, bytes | None], base: int) -> None:
        # mostly the latest version; sometimes an older one (a writer that lost a race)
        tree, model, reach = self.versions[-1 - min(base, len(self.versions) - 1) if base == 3 else -1]
        batch = sorted(changes.items())
        new, nodes, freed = commit(tree, batch, self.ids, self.src)
        want = dict(model)
        for k, v in batch:
            if v is None:
                want.pop(k, None)
            else:
                want[k] = v
        new_ids = [nid for nid, _ in nodes]
        assert len(set(new_ids)) == len(new_ids)
        assert set(new_ids) <= self.ids.handed
        assert not set(new_ids) & reach  # fresh ids only
        now = frozenset(new.node_ids())
        assert set(new_ids) <= now  # every new node is reachable
        assert now <= reach | set(new_ids)
        assert len(freed) == len(set(freed))
        assert set(freed) == reach - now
        assert new.count == len(want)
        assert new.nbytes == sum(len(k) + len(v) + 16 for k, v in want.items())
        if want == model and all(v is None or len(v) <= BLOB for _, v in batch):
            assert (new.root, nodes, freed) == (tree.root, [], [])  # nothing rewritten
        self.versions.append((new, want, now))

    @rule(data=st.data())
    def read_old(self, data: st.DataObject) -> None:
        tree, model, _ = data.draw(st.sampled_from(self.versions))
        assert list(tree.items()) == sorted(model.items())
        probe = data.draw(st.lists(keys_st, max_size=10)) + list(model)[:5]
        for k in probe:
            assert tree.get(k) == model.get(k)

    @precondition(lambda self: len(self.versions) > 1)
    @rule(data=st.data())
    def seek_old(self, data: st.DataObject) -> None:
        tree, model, _ = data.draw(st.sampled_from(self.versions))
        keys = sorted(model)
        probes: list[bytes | None] = [None, *data.draw(st.lists(keys_st, max_size=6)), *keys[:3],
                                      *keys[-3:]]
        for k in probes:
            for forward in (True, False):
                for strict in (True, False):
                    assert tree.seek(k, forward=forward, strict=strict) == \
                        model_seek(keys, k, forward, strict), (k, forward, strict)
        start = data.draw(st.one_of(st.none(), keys_st))
        fwd = data.draw(st.booleans())
        got = list(tree.items(start, fwd))
        if fwd:
            want = [(k, model[k]) for k in keys if start is None or k >= start]
        else:
            want = [(k, model[k]) for k in reversed(keys) if start is None or k <= start]
        assert got == want

    @invariant()
    def latest_sound(self) -> None:
        if not hasattr(self, "versions"):
            return
        tree, _model, _ = self.versions[-1]
        assert check_tree(tree) == []
        node_sizes_ok(tree, self.src)
        assert depth_ok(tree)
        assert Tree.from_meta(self.src, self.cache, tree.to_meta(), node_size=NODE,
                              blob_threshold=BLOB).to_meta() == tree.to_meta()


TreeVersions.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_versions = TreeVersions.TestCase


# --- freed nodes really are dead: delete them at once -----------------------------------------


def test_freed_nodes_can_be_deleted_at_once() -> None:
    rnd = random.Random(7)
    src = DictSource()
    ids = Ids()
    tree = empty(src, NodeCache(2048))
    model: dict[bytes, bytes] = {}
    for step in range(150):
        batch = {b"%04d" % rnd.randrange(600): None if rnd.random() < 0.45 else rnd.randbytes(
            rnd.choice([1, 10, 100])) for _ in range(rnd.randint(1, 40))}
        tree, _, freed = commit(tree, sorted(batch.items()), ids, src)
        for nid in freed:
            del src.d[nid]  # a GC that trusts the freed list
        for k, v in batch.items():
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
        assert set(src.d) == set(tree.node_ids()), step  # nothing leaked, nothing lost
        assert dict(tree.items()) == model
    assert check_tree(tree) == []


# --- shapes -----------------------------------------------------------------------------------


def test_empty_tree() -> None:
    t = empty()
    assert t.get(b"a") is None
    assert t.seek(None, forward=True, strict=False) is None
    assert t.seek(b"a", forward=False, strict=True) is None
    assert list(t.items()) == []
    assert list(t.node_ids()) == []
    assert check_tree(t) == []
    same, nodes, freed = t.apply([(b"a", None)], Ids())
    assert (same.root, nodes, freed) == (None, [], [])


def test_shrink_to_empty_and_back() -> None:
    tree, model, src, ids = build(400)
    assert tree.depth >= 3
    everything = set(tree.node_ids())
    gone, nodes, freed = commit(tree, [(k, None) for k in sorted(model)], ids, src)
    assert (gone.root, gone.depth, gone.count, gone.nbytes) == (None, 0, 0, 0)
    assert nodes == []
    assert set(freed) == everything
    assert check_tree(gone) == []
    back, nodes, freed = commit(gone, sorted(model.items()), ids, src)
    assert freed == []
    assert list(back.items()) == sorted(model.items())
    assert check_tree(back) == [] and back.depth >= 3
    assert list(tree.items()) == sorted(model.items())  # the old version is untouched


def test_deletes_shrink_the_tree() -> None:
    tree, model, src, ids = build(600, seed=3)
    keys = sorted(model)
    deep = tree.depth
    rnd = random.Random(4)
    rnd.shuffle(keys)
    while keys:  # delete in batches down to nothing: merges and root collapses
        batch, keys = keys[:40], keys[40:]
        tree = commit(tree, [(k, None) for k in sorted(batch)], ids, src)[0]
        for k in batch:
            del model[k]
        assert check_tree(tree) == []
        node_sizes_ok(tree, src)
        assert depth_ok(tree)
    assert tree.depth < deep
    assert dict(tree.items()) == model


def test_bulk_load_into_empty_tree_is_balanced() -> None:
    src = DictSource()
    batch = [(b"%08d" % i, b"x" * (i % 30)) for i in range(5000)]
    tree = commit(empty(src), batch, Ids(), src)[0]
    assert tree.count == 5000
    assert check_tree(tree) == []
    node_sizes_ok(tree, src)
    assert depth_ok(tree)
    leaves = [C.decode_node(n, src.d[n]) for n in tree.node_ids()]
    small = [n for n in leaves if n.kind == C.LEAF and len(C.encode_leaf(n.keys, n.vals)) < NODE // 4]
    assert len(small) <= 1


def test_max_size_keys() -> None:
    """511-byte keys that share long prefixes force single-entry leaves and long separators;
    the tree still works and stays within its bounds."""
    src = DictSource()
    ids = Ids()
    keys = [b"p" * 500 + b"%011d" % i for i in range(60)]
    tree = commit(empty(src), [(k, b"v") for k in keys], ids, src)[0]
    assert check_tree(tree) == []
    node_sizes_ok(tree, src)
    assert [k for k, _ in tree.items()] == keys
    tree = commit(tree, [(k, None) for k in keys[::2]], ids, src)[0]
    assert [k for k, _ in tree.items()] == keys[1::2]
    assert check_tree(tree) == []


def test_default_node_size() -> None:
    src = DictSource()
    tree = commit(Tree(src, NodeCache()), [(b"%010d" % i, b"v" * 20) for i in range(20000)],
                  Ids(), src)[0]
    assert tree.depth == 2
    assert check_tree(tree) == []
    assert max(len(src.d[n]) for n in tree.node_ids()) <= C.NODE_SIZE


# --- big values -------------------------------------------------------------------------------


def test_big_values_live_in_blobs() -> None:
    src = DictSource()
    ids = Ids()
    big = bytes(range(256)) * 40
    tree, nodes, _ = commit(empty(src), [(b"a", b"small"), (b"b", big), (b"c", b"y" * (BLOB + 1))],
                            ids, src)
    blobs = [nid for nid, raw in nodes if raw[0] == C.BLOB]
    assert len(blobs) == 2
    assert tree.get(b"b") == big and tree.get(b"c") == b"y" * (BLOB + 1)
    assert set(blobs) <= set(tree.node_ids())
    assert tree.nbytes == 1 + 5 + 1 + len(big) + 1 + BLOB + 1 + 48
    assert dict(tree.items())[b"b"] == big
    # replacing or deleting a big value frees its blob; untouched blobs stay
    t2, nodes2, freed = commit(tree, [(b"b", b"now small"), (b"c", None)], ids, src)
    assert set(blobs) <= set(freed)
    assert t2.get(b"b") == b"now small" and t2.get(b"c") is None
    assert not any(raw[0] == C.BLOB for _, raw in nodes2)
    assert tree.get(b"b") == big  # the old version still reads its blob
    assert check_tree(t2) == [] and check_tree(tree) == []


def test_default_threshold_is_1024() -> None:
    src = DictSource()
    _tree, nodes, _ = commit(Tree(src, NodeCache()), [(b"a", b"x" * 1024), (b"b", b"x" * 1025)],
                            Ids(), src)
    assert sorted(raw[0] for _, raw in nodes) == [C.LEAF, C.BLOB]


# --- cost -------------------------------------------------------------------------------------


def test_apply_rewrites_only_the_touched_paths() -> None:
    tree, model, src, ids = build(2000, seed=5)
    assert tree.depth >= 3
    key = sorted(model)[777]
    src.calls = 0
    _new, nodes, freed = commit(tree, [(key, b"changed")], ids, src)
    # the path: one new node per level (a merge or split adds at most a few)
    assert len(nodes) <= tree.depth + 2
    assert len(freed) <= tree.depth + 2
    # a cold cache: one batched read per level
    cold = Tree.from_meta(src, NodeCache(), tree.to_meta(), node_size=NODE, blob_threshold=BLOB)
    src.calls = src.loaded = 0
    # values of the same sizes: no node shrinks, so no neighbour is read for a merge
    cold.apply([(k, bytes(len(model[k]))) for k in sorted(model)[100:1900:50]], ids)
    assert src.calls <= tree.depth + 2
    assert src.loaded < len(list(tree.node_ids())) // 3


def test_warm_loads_each_level_in_one_batch_then_gets_read_nothing() -> None:
    tree, model, src, _ids = build(2000, seed=7)
    assert tree.depth >= 3
    keys = sorted(model)[::7]  # spread over most of the leaves
    want = {k: model[k] for k in keys}
    cold = Tree.from_meta(src, NodeCache(), tree.to_meta(), node_size=NODE, blob_threshold=BLOB)
    src.calls = 0
    blobs = cold.warm([*reversed(keys), b"\xfe" * 13])  # any order; an absent key is fine
    assert blobs == sum(len(v) > BLOB for v in want.values()) > 0
    assert src.calls == tree.depth + 1  # each internal level, the leaves, the blobs
    src.calls = 0
    assert {k: cold.get(k) for k in keys} == want
    assert src.calls == 0
    assert cold.warm(keys) == 0 and src.calls == 0  # all cached: nothing read


def test_size_of_is_the_value_length_without_loading_a_blob() -> None:
    tree, model, src, _ids = build(600, seed=3)
    cold = Tree.from_meta(src, NodeCache(), tree.to_meta(), node_size=NODE, blob_threshold=BLOB)
    big = [k for k, v in model.items() if len(v) > BLOB]
    assert big
    for k in sorted(model):
        assert cold.size_of(k) == len(model[k])
    assert cold.size_of(b"\xfe" * 13) is None
    leaves_and_up = src.loaded
    src.loaded = 0
    for k in big:
        assert cold.get(k) == model[k]
    assert src.loaded == len(big)  # only now are the blobs read
    assert leaves_and_up <= len(list(tree.node_ids())) - len(big)


def test_noop_changes_write_nothing() -> None:
    tree, model, src, ids = build(300)
    k = sorted(model)[10]
    absent = b"\xfe" * 13  # keys are at most 12 bytes
    for batch in ([(k, model[k])], [(absent, None)], [(k, model[k]), (absent, None)], []):
        same, nodes, freed = commit(tree, batch, ids, src)
        assert (same.root, same.count, nodes, freed) == (tree.root, tree.count, [], [])


def test_bad_changes_are_refused() -> None:
    t = empty()
    with pytest.raises(ValueError):
        t.apply([(b"b", b""), (b"a", b"")], Ids())
    with pytest.raises(ValueError):
        t.apply([(b"a", b""), (b"a", b"")], Ids())
    with pytest.raises(ValueError):
        t.apply([(b"", b"")], Ids())
    with pytest.raises(ValueError):
        t.apply([(b"k" * 512, b"")], Ids())
    with pytest.raises(TypeError):
        t.apply([("a", b"")], Ids())  # type: ignore[list-item]
    many = [(b"%04d" % i, b"v" * 30) for i in range(100)]  # several nodes
    with pytest.raises(ValueError, match="unique"):
        t.apply(many, lambda: b"same")
    with pytest.raises(ValueError, match="1-255"):
        t.apply(many, lambda: b"")
    assert (t.root, t.count) == (None, 0)  # a refused apply changed nothing


# --- concurrency ------------------------------------------------------------------------------


def test_concurrent_readers_share_one_tree_and_cache() -> None:
    tree, model, src, _ = build(1500, seed=9)
    tree = Tree.from_meta(src, NodeCache(8192), tree.to_meta(), node_size=NODE, blob_threshold=BLOB)
    keys = sorted(model)
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(400):
                k = rnd.choice(keys)
                assert tree.get(k) == model[k]
                assert tree.seek(k, forward=True, strict=False) == k
            assert list(tree.items()) == sorted(model.items())
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_cache_is_bounded() -> None:
    tree, model, src, _ = build(1500, seed=2)
    cache = NodeCache(20000)
    t = Tree.from_meta(src, cache, tree.to_meta(), node_size=NODE, blob_threshold=BLOB)
    for k in model:
        assert t.get(k) == model[k]
    held = {**cache._young, **cache._old}
    assert sum(n.size for n in held.values()) <= 20000
    assert len(held) < len(list(t.node_ids()))


# --- corruption -------------------------------------------------------------------------------


def _cold(tree: Tree, src: DictSource) -> Tree:
    return Tree.from_meta(src, NodeCache(), tree.to_meta(), node_size=NODE, blob_threshold=BLOB)


@pytest.mark.parametrize("kind", ["flip", "truncate", "missing", "extend"])
def test_damaged_nodes_raise_corrupt_store(kind: str) -> None:
    tree, _model, src, _ = build(500, seed=1)
    rnd = random.Random(kind)
    for nid in rnd.sample(sorted(tree.node_ids()), 12):
        raw = src.d[nid]
        saved = dict(src.d)
        if kind == "flip":
            i = rnd.randrange(len(raw))
            src.d[nid] = raw[:i] + bytes([raw[i] ^ (1 << rnd.randrange(8))]) + raw[i + 1:]
        elif kind == "truncate":
            src.d[nid] = raw[:rnd.randrange(len(raw))]
        elif kind == "extend":
            src.d[nid] = raw + b"\0"
        else:
            del src.d[nid]
        with pytest.raises(CorruptStore) as e:
            list(_cold(tree, src).items())
        if kind != "missing":
            assert nid.hex() in str(e.value)
        assert check_tree(_cold(tree, src)) != []
        if raw[0] != C.BLOB:  # node_ids() reads every node but the blobs (it names them)
            with pytest.raises(CorruptStore):
                list(_cold(tree, src).node_ids())
        src.d = saved


def test_impossible_fields_with_good_checksum_raise() -> None:
    nid = b"n1"
    leaf = C.encode_leaf([b"a", b"b"], [b"1", b"2"])
    body = bytearray(leaf[:-8])
    body[3] = 200  # an entry count that does not fit
    with pytest.raises(CorruptStore, match=nid.hex()):
        C.decode_node(nid, C._seal(bytes(body)))
    body = bytearray(leaf[:-8])
    body[1] = 9  # another format version
    with pytest.raises(CorruptStore, match="version"):
        C.decode_node(nid, C._seal(bytes(body)))
    body = bytearray(leaf[:-8])
    body[0] = 7
    with pytest.raises(CorruptStore, match="type"):
        C.decode_node(nid, C._seal(bytes(body)))
    with pytest.raises(CorruptStore):
        C.decode_node(nid, C._seal(bytes([C.LEAF, 1, 2]) + leaf[3:-8]))  # a leaf at level 2
    with pytest.raises(CorruptStore):
        C.decode_node(nid, C.encode_internal(0, [], [b"x"]))  # an internal node at level 0
    with pytest.raises(CorruptStore):
        C.decode_node(nid, C.encode_leaf([b""], [b"v"]))  # an empty key
    with pytest.raises(CorruptStore):  # a blob reference too short to hold a length
        C.decode_node(nid, C._seal(C.encode_leaf([b"a"], [b"1234"])[:-8][:9] +
                                   (4 | 0x80000000).to_bytes(4, "little") + b"a1234"))


def test_meta_round_trip_and_damage() -> None:
    tree, _, src, _ = build(200)
    meta = tree.to_meta()
    back = Tree.from_meta(src, NodeCache(), meta)
    assert (back.root, back.count, back.nbytes, back.depth) == \
        (tree.root, tree.count, tree.nbytes, tree.depth)
    e = Tree.from_meta(src, NodeCache(), empty().to_meta())
    assert (e.root, e.depth, e.count) == (None, 0, 0)
    for i in range(len(meta)):
        with pytest.raises(CorruptStore):
            Tree.from_meta(src, NodeCache(), meta[:i] + bytes([meta[i] ^ 0x10]) + meta[i + 1:])
    with pytest.raises(CorruptStore):
        Tree.from_meta(src, NodeCache(), meta[:-1])


# --- check_tree finds planted defects ---------------------------------------------------------


def _leaves(tree: Tree, src: DictSource) -> list[bytes]:
    return [n for n in tree.node_ids() if n in src.d and src.d[n][0] == C.LEAF]


def _plant(src: DictSource, nid: bytes, keys: list[bytes], vals: list[object]) -> None:
    src.d[nid] = C.encode_leaf(keys, vals)  # type: ignore[arg-type]


def test_check_tree_finds_planted_defects() -> None:
    tree, _, src, _ = build(600, seed=11)
    assert check_tree(tree) == []
    leaves = _leaves(tree, src)
    good = dict(src.d)

    def problems() -> list[str]:
        out = check_tree(tree)
        src.d = dict(good)
        return out

    # keys out of order inside a leaf
    lf = C.decode_node(leaves[3], src.d[leaves[3]])
    _plant(src, leaves[3], lf.keys[::-1], lf.vals[::-1])
    assert any("order" in p for p in problems())
    # a key moved into the neighbouring leaf (outside its separators)
    a, b = (C.decode_node(n, src.d[n]) for n in leaves[5:7])
    _plant(src, leaves[6], [a.keys[-1], *b.keys], [a.vals[-1], *b.vals])
    _plant(src, leaves[5], a.keys[:-1], a.vals[:-1])
    assert any("outside" in p for p in problems())
    # a dropped entry: the counts disagree
    c = C.decode_node(leaves[8], src.d[leaves[8]])
    _plant(src, leaves[8], c.keys[1:], c.vals[1:])
    assert any("entries" in p for p in problems())
    # a leaf where an internal node belongs
    internal = next(n for n in tree.node_ids() if src.d[n][0] == C.INTERNAL and n != tree.root)
    src.d[internal] = src.d[leaves[0]]
    assert any("level" in p for p in problems())
    # an internal node at the wrong level
    node = C.decode_node(internal, src.d[internal])
    src.d[internal] = C.encode_internal(node.level + 1, node.keys, node.kids)
    assert any("level" in p for p in problems())
    # separators out of order
    src.d[internal] = C.encode_internal(node.level, node.keys[::-1], node.kids)
    assert problems() != []
    # a missing node, a damaged node
    del src.d[leaves[2]]
    assert any(leaves[2].hex() in p for p in problems())
    src.d[leaves[2]] = src.d[leaves[2]][:-1] + b"\0"
    assert any(leaves[2].hex() in p for p in problems())
    # the tree's own count or nbytes wrong
    bad = Tree(src, NodeCache(), tree.root, tree.count + 1, tree.nbytes, tree.depth,
               node_size=NODE, blob_threshold=BLOB)
    assert any("entries" in p for p in check_tree(bad))
    bad = Tree(src, NodeCache(), tree.root, tree.count, tree.nbytes, tree.depth + 1,
               node_size=NODE, blob_threshold=BLOB)
    assert check_tree(bad) != []
    # an oversized leaf
    d = C.decode_node(leaves[4], src.d[leaves[4]])
    src.d[leaves[4]] = C.encode_leaf(d.keys, [b"q" * 60 for _ in d.keys])
    assert any("bytes" in p for p in problems())
    # a blob of the wrong length, a node referenced twice
    s2 = DictSource()
    ids = Ids()
    t = commit(empty(s2), [(b"a", b"b" * 100), (b"c", b"d")], ids, s2)[0]
    blob = next(n for n in t.node_ids() if s2.d[n][0] == C.BLOB)
    s2.d[blob] = C.encode_blob(b"b" * 99)
    assert any("blob" in p for p in check_tree(t))
    t2, _, _ = commit(empty(s2), [(b"k%03d" % i, b"v" * 30) for i in range(40)], ids, s2)
    root = C.decode_node(t2.root, s2.d[t2.root])  # type: ignore[arg-type]
    kids = list(root.kids)  # type: ignore[arg-type]
    kids[1] = kids[0]
    s2.d[t2.root] = C.encode_internal(root.level, root.keys, kids)  # type: ignore[arg-type]
    assert any("twice" in p for p in check_tree(t2))
