"""The contract every storage backend keeps (``ebsengine/storage/base.py``), run against each
backend: the key-value backends (``BACKENDS``); chunk backends over each of them and RADOS
chunks (``CHUNK_BACKENDS``: one object per chunk, or packs, on a Ceph cluster, metadata in memory; marked
``needs_ceph``).

Part 1 is the key-value backend (tables, transactions, cursors); part 2 the chunk backend
(batch operations, ordering against the metadata commit, streaming iteration); part 3 the
Store over them (space reserve, StoreFull, batched scans)."""

from __future__ import annotations

import hashlib
import random
import threading
import time

import pytest

from ceph_support import ceph_cluster, rados_pools  # noqa: F401 - fixtures
from ebsengine import layout as L
from ebsengine.errors import StoreFull
from ebsengine.storage.base import MAX_KEY_SIZE, KvBackend
from ebsengine.storage.chunks import ChunkStore, KvChunks
from ebsengine.storage.lmdb_env import LmdbBackend
from ebsengine.storage.memory import MemoryBackend
from ebsengine.storage.rados_kv import DictPool, RadosKv
from ebsengine.storage.store import Store

#: "radoskv" is the metadata backend of rados:// stores over an in-process pool (DictPool:
#: RADOS's object versions, conditional writes and locks); the same backend over a real
#: cluster runs in tests/storage/test_rados_store.py.
BACKENDS = ["lmdb", "memory", "radoskv"]
#: chunk backends: KvChunks over each key-value backend, and RadosChunks (objects on the test
#: Ceph cluster, metadata in memory)
CHUNK_BACKENDS = [*BACKENDS, pytest.param("rados", marks=pytest.mark.needs_ceph),
                  pytest.param("rados-packs", marks=pytest.mark.needs_ceph)]


def make_backend(kind: str, tmp_path, map_size: int = 1 << 30) -> KvBackend:
    if kind == "lmdb":
        return LmdbBackend(tmp_path / "kv", map_size=map_size)
    if kind == "radoskv":
        return RadosKv(DictPool(), path="rados://contract", map_size=map_size)
    return MemoryBackend(map_size=map_size)


@pytest.fixture(params=BACKENDS)
def kv(request, tmp_path):
    be = make_backend(request.param, tmp_path)
    yield be
    be.close()


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = Store(backend=make_backend(request.param, tmp_path))
    yield s
    s.close()


def content(be: KvBackend, db) -> list[tuple[bytes, bytes]]:
    with be.begin() as txn:
        return list(txn.cursor(db=db))


# --- part 1: key-value backend ------------------------------------------------------------


def test_put_get_delete_and_their_results(kv):
    t = kv.open_db(b"t")
    with kv.begin(write=True) as txn:
        assert txn.put(b"a", b"1", db=t) is True
        assert txn.put(b"a", b"2", db=t, overwrite=False) is False
        assert txn.get(b"a", db=t) == b"1"
        assert txn.get(b"zz", b"dflt", db=t) == b"dflt"
        assert txn.get(b"zz", db=t) is None
        assert txn.delete(b"zz", db=t) is False
        txn.put(b"b", b"", db=t)
    with kv.begin() as txn:
        assert txn.get(b"a", db=t) == b"1"
        assert txn.get(b"b", db=t) == b""  # an empty value is a value, not a missing key
        assert txn.stat(t)["entries"] == 2
    with kv.begin(write=True) as txn:
        assert txn.delete(b"a", db=t) is True
        assert txn.get(b"a", db=t) is None
    assert content(kv, t) == [(b"b", b"")]


def test_tables_are_separate_and_default_table_of_begin(kv):
    t, u = kv.open_db(b"t"), kv.open_db(b"u")
    with kv.begin(write=True) as txn:
        txn.put(b"k", b"in t", db=t)
        txn.put(b"k", b"in u", db=u)
    with kv.begin(db=u) as txn:
        assert txn.get(b"k") == b"in u"
        assert txn.get(b"k", db=t) == b"in t"


def test_values_are_copied_when_put(kv):
    t = kv.open_db(b"t")
    buf = bytearray(b"before")
    with kv.begin(write=True) as txn:
        txn.put(b"k", buf, db=t)
        txn.put(b"m", memoryview(buf)[1:3], db=t)
        buf[:] = b"AFTER!"
    with kv.begin() as txn:
        assert txn.get(b"k", db=t) == b"before"
        assert txn.get(b"m", db=t) == b"ef"


@pytest.mark.parametrize("key", [b"", b"x" * (MAX_KEY_SIZE + 1)], ids=["empty", "oversized"])
def test_empty_and_oversized_keys_are_refused_and_change_nothing(kv, key):
    t = kv.open_db(b"t")
    with kv.begin(write=True) as txn:
        txn.put(b"keep", b"1", db=t)
    txn = kv.begin(write=True)
    try:
        with pytest.raises(kv.errors):
            txn.put(key, b"v", db=t)
        if key:
            assert txn.get(key, db=t) is None  # no such key can exist
        else:
            with pytest.raises(kv.errors):
                txn.get(key, db=t)
    finally:
        txn.abort()
    assert content(kv, t) == [(b"keep", b"1")]
    with kv.begin(write=True) as txn:  # the longest allowed key works
        txn.put(b"y" * MAX_KEY_SIZE, b"ok", db=t)
    with kv.begin() as txn:
        assert txn.get(b"y" * MAX_KEY_SIZE, db=t) == b"ok"


def test_large_values_round_trip(kv):
    t = kv.open_db(b"t")
    big = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)  # 8 MiB
    with kv.begin(write=True) as txn:
        txn.put(b"big", big, db=t)
        txn.put(b"small", b"s", db=t)
    with kv.begin() as txn:
        assert txn.get(b"big", db=t) == big
    with kv.begin(write=True) as txn:
        txn.put(b"big", big[:100], db=t)
    with kv.begin() as txn:
        assert txn.get(b"big", db=t) == big[:100]


def test_read_transaction_cannot_write(kv):
    t = kv.open_db(b"t")
    with kv.begin() as txn, pytest.raises(kv.errors):
        txn.put(b"a", b"1", db=t)


def test_cursor_order_is_unsigned_byte_order_both_ways(kv):
    t = kv.open_db(b"t")
    rnd = random.Random(7)
    keys = {bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 6))) for _ in range(500)}
    keys |= {b"\x00", b"\xff", b"\x00\x00", b"\x7f", b"\x80"}
    with kv.begin(write=True) as txn:
        for k in keys:
            txn.put(k, k[::-1], db=t)
    want = sorted(keys)
    with kv.begin() as txn:
        assert [k for k, _ in txn.cursor(db=t)] == want
        assert all(v == k[::-1] for k, v in txn.cursor(db=t))
        assert list(txn.cursor(db=t).iternext(keys=True, values=False)) == want
        assert list(txn.cursor(db=t).iternext(keys=False, values=True)) == [k[::-1] for k in want]
        assert list(txn.cursor(db=t).iterprev(values=False)) == want[::-1]
        cur = txn.cursor(db=t)
        for probe in [b"\x00", b"\x01", b"\x80\x00", b"\xfe\xff", bytes([rnd.randrange(256)])]:
            expect = [k for k in want if k >= probe]
            assert cur.set_range(probe) == bool(expect)
            if expect:
                assert cur.key() == expect[0] and cur.value() == expect[0][::-1]
                assert [k for k, _ in cur] == expect  # iteration starts at the current item


def test_cursor_positions_like_py_lmdb(kv):
    t = kv.open_db(b"t")
    with kv.begin(write=True) as txn:
        for k in (b"a", b"b", b"c"):
            txn.put(k, k.upper(), db=t)
    with kv.begin() as txn:
        cur = txn.cursor(db=t)
        assert cur.key() == b"" and cur.value() == b""  # unpositioned
        assert cur.next() and cur.key() == b"a"  # first next() = first
        assert cur.item() == (b"a", b"A")
        assert txn.cursor(db=t).prev() and txn.cursor(db=t).last()
        cur = txn.cursor(db=t)
        assert cur.last() and cur.key() == b"c"
        assert cur.prev() and cur.key() == b"b"
        assert cur.first() and cur.key() == b"a"
        assert cur.set_key(b"b") and cur.value() == b"B"
        assert not cur.set_key(b"bb") and cur.key() == b""
        assert not cur.next()  # after a failed move
        assert [k for k, _ in cur] == [b"a", b"b", b"c"]  # iterating starts over
        assert not cur.set_range(b"d") and cur.key() == b""
        assert cur.last() and not cur.next() and cur.key() == b""
        assert list(cur.iterprev(values=False)) == [b"c", b"b", b"a"]
        assert cur.set_range(b"") and cur.key() == b"a"


def test_cursor_delete_moves_to_the_next_item(kv):
    t = kv.open_db(b"t")
    with kv.begin(write=True) as txn:
        for k in (b"p1", b"p2", b"p3", b"q1"):
            txn.put(k, b"", db=t)
    with kv.begin(write=True) as txn:
        cur = txn.cursor(db=t)
        assert cur.set_range(b"p")
        while cur.key().startswith(b"p"):  # the engine's prefix-delete idiom
            assert cur.delete()
        assert cur.key() == b"q1"
        assert cur.delete() and cur.key() == b""  # deleted the last: unpositioned
        assert not cur.delete()
    assert content(kv, t) == []


def test_write_transaction_sees_and_orders_its_own_changes(kv):
    t = kv.open_db(b"t")
    with kv.begin(write=True) as txn:
        for k in (b"b", b"d", b"f"):
            txn.put(k, b"old", db=t)
    with kv.begin(write=True) as txn:
        txn.put(b"a", b"new", db=t)
        txn.put(b"e", b"new", db=t)
        txn.put(b"d", b"changed", db=t)
        txn.delete(b"f", db=t)
        assert list(txn.cursor(db=t)) == [(b"a", b"new"), (b"b", b"old"), (b"d", b"changed"),
                                          (b"e", b"new")]
        assert list(txn.cursor(db=t).iterprev(values=False)) == [b"e", b"d", b"b", b"a"]
        cur = txn.cursor(db=t)
        assert cur.set_range(b"c") and cur.key() == b"d"
        seen = []
        for k, _ in cur:  # changes made while iterating show as LMDB shows them
            seen.append(k)
            if k == b"d":
                txn.put(b"dd", b"ins", db=t)
        assert seen == [b"d", b"dd", b"e"]
        assert txn.stat(t)["entries"] == 5


def test_uncommitted_writes_are_invisible_and_readers_keep_their_snapshot(kv):
    t = kv.open_db(b"t")
    with kv.begin(write=True) as txn:
        txn.put(b"a", b"v1", db=t)
    reader = kv.begin()
    w = kv.begin(write=True)
    w.put(b"a", b"v2", db=t)
    w.put(b"b", b"new", db=t)
    other = kv.begin()
    assert other.get(b"a", db=t) == b"v1" and other.get(b"b", db=t) is None
    other.abort()
    w.commit()
    # the old reader still sees its snapshot, in gets and in cursors
    assert reader.get(b"a", db=t) == b"v1" and reader.get(b"b", db=t) is None
    assert list(reader.cursor(db=t)) == [(b"a", b"v1")]
    reader.abort()
    with kv.begin() as fresh:
        assert list(fresh.cursor(db=t)) == [(b"a", b"v2"), (b"b", b"new")]


def test_abort_and_exceptions_discard_everything(kv):
    t, u = kv.open_db(b"t"), kv.open_db(b"u")
    with kv.begin(write=True) as txn:
        txn.put(b"keep", b"1", db=t)
    before = kv.commit_id()
    txn = kv.begin(write=True)
    txn.put(b"x", b"1", db=t)
    txn.put(b"y", b"1", db=u)
    txn.delete(b"keep", db=t)
    txn.abort()
    with pytest.raises(RuntimeError), kv.begin(write=True) as txn:
        txn.put(b"z", b"1", db=t)
        raise RuntimeError("boom")
    assert content(kv, t) == [(b"keep", b"1")] and content(kv, u) == []
    assert kv.commit_id() == before  # aborts commit nothing
    with kv.begin(write=True) as txn:
        txn.put(b"n", b"1", db=t)
    assert kv.commit_id() != before


def test_a_transaction_begun_after_commit_id_sees_that_commit(kv):
    """commit_id() never runs ahead of readers (the flush's "no commit since its read",
    fsck's and the store copy's "one point in time" rely on it): under a writer committing
    one counter value per commit, a read transaction begun after a reading sees at least
    the counter of that commit. On LMDB, ``env.info()``'s txnid failed this about one
    reading in three."""
    t = kv.open_db(b"t")
    with kv.begin(write=True) as txn:
        txn.put(b"n", b"0", db=t)
    first = kv.commit_id()  # the commit of counter 0; counter v is its v-th successor
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            with kv.begin(write=True) as txn:
                txn.put(b"n", str(n).encode(), db=t)

    th = threading.Thread(target=writer)
    th.start()
    behind, total = [], 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and len(behind) < 3:
            cid = kv.commit_id()
            with kv.begin() as txn:
                n = int(txn.get(b"n", db=t))
            total += 1
            if first + n < cid:  # (commit ids grow by one per commit on every backend)
                behind.append((cid, first + n))
    finally:
        stop.set()
        th.join()
    assert total > 100 and not behind, f"{len(behind)}/{total} readers were behind: {behind}"


def test_one_writer_at_a_time(kv):
    t = kv.open_db(b"t")
    first = kv.begin(write=True)
    first.put(b"a", b"first", db=t)
    order: list[str] = []

    def second() -> None:
        with kv.begin(write=True) as txn:
            order.append("second begun")
            assert txn.get(b"a", db=t) == b"first"  # begun only after the first committed
            txn.put(b"a", b"second", db=t)

    th = threading.Thread(target=second)
    th.start()
    time.sleep(0.2)
    order.append("first commits")
    first.commit()
    th.join(5)
    assert order == ["first commits", "second begun"]
    with kv.begin() as txn:
        assert txn.get(b"a", db=t) == b"second"


def test_nested_transactions(kv):
    t = kv.open_db(b"t")
    with kv.begin(write=True) as parent:
        parent.put(b"p", b"1", db=t)
        ok = kv.begin(write=True, parent=parent)
        assert ok.get(b"p", db=t) == b"1"  # a child sees its parent's changes
        ok.put(b"c1", b"1", db=t)
        ok.delete(b"p", db=t)
        ok.commit()
        assert parent.get(b"c1", db=t) == b"1" and parent.get(b"p", db=t) is None
        bad = kv.begin(write=True, parent=parent)
        bad.put(b"c2", b"1", db=t)
        bad.delete(b"c1", db=t)
        assert [k for k, _ in bad.cursor(db=t)] == [b"c2"]
        bad.abort()  # undoes only itself
        assert [k for k, _ in parent.cursor(db=t)] == [b"c1"]
        with kv.begin() as outside:  # nothing is visible before the parent commits
            assert outside.get(b"c1", db=t) is None
    assert content(kv, t) == [(b"c1", b"1")]
    parent = kv.begin(write=True)
    child = kv.begin(write=True, parent=parent)
    child.put(b"gone", b"1", db=t)
    child.commit()
    parent.abort()  # a committed child is undone with its parent
    assert content(kv, t) == [(b"c1", b"1")]


# --- part 2: chunk backend ----------------------------------------------------------------


def chunk_key(tag: str, n: int = 0) -> bytes:
    return L.chunk_key(hashlib.md5(tag.encode()).digest(), n)


@pytest.fixture(params=CHUNK_BACKENDS)
def chunks(request, tmp_path):
    """A chunk backend and (as its ``.store``) the metadata store it runs with."""
    if not request.param.startswith("rados"):
        s = Store(backend=make_backend(request.param, tmp_path))
        yield KvChunks(s, s.db["chunks"])
        s.close()
        return
    from ebsengine.storage import rados_io
    from ebsengine.storage.rados_chunks import RadosChunks
    pools = request.getfixturevalue("rados_pools")
    s = Store(backend=MemoryBackend())
    conn = rados_io.connect(pools.url(timeout=20))
    b = s.backend
    if request.param == "rados":  # one object per chunk
        yield RadosChunks(conn, s, b.open_db(b"chunk_index"), b.open_db(b"chunk_gc"))
    else:  # small packs, so that a test's chunks fill several
        yield RadosChunks(conn, s, b.open_db(b"chunk_index"), b.open_db(b"chunk_gc"),
                          b.open_db(b"packs"), b.open_db(b"pack_gc"), pack_size=100_000)
    conn.close()
    s.close()


def sweep_all(chunks) -> None:
    """Let a backend that keeps deleted chunks for a grace period remove them now."""
    if hasattr(chunks, "sweep"):
        while chunks.sweep(now=time.time() + 10 * chunks.grace):
            pass


def test_chunk_batch_operations(chunks):
    store = chunks.store
    keys = [chunk_key(f"c{i}") for i in range(50)]
    with store.write() as txn:
        chunks.put_many(txn, [(k, b"v" + k) for k in keys[:40]])
    with store.read() as txn:
        assert chunks.get_many(txn, keys) == [b"v" + k for k in keys[:40]] + [None] * 10
        assert chunks.has_many(txn, keys) == [True] * 40 + [False] * 10
    with store.write() as txn:
        chunks.delete_many(txn, keys[:10])
    with store.read() as txn:
        assert chunks.has_many(txn, keys) == [False] * 10 + [True] * 30 + [False] * 10


def test_chunk_reads_see_own_writes_and_deletes_wait_for_the_commit(chunks):
    store = chunks.store
    a, b = chunk_key("a"), chunk_key("b")
    with store.write() as txn:
        chunks.put_many(txn, [(a, b"A")])
    with store.write() as txn:
        chunks.put_many(txn, [(b, b"B")])
        chunks.delete_many(txn, [a])
        assert chunks.get_many(txn, [a, b]) == [None, b"B"]  # read your writes
        with store.read() as other:  # the delete is not visible before the commit
            assert chunks.get_many(other, [a, b]) == [b"A", None]
    with store.write() as txn:  # a put of a key deleted in the same transaction wins
        chunks.delete_many(txn, [b])
        chunks.put_many(txn, [(b, b"B")])
    with store.read() as txn:
        assert chunks.get_many(txn, [a, b]) == [None, b"B"]


def test_an_aborted_transaction_keeps_its_deletes_undone(chunks):
    store = chunks.store
    a, n = chunk_key("a"), chunk_key("new")
    with store.write() as txn:
        chunks.put_many(txn, [(a, b"A")])
    with pytest.raises(RuntimeError), store.write() as txn:
        chunks.delete_many(txn, [a])
        chunks.put_many(txn, [(n, b"N")])
        raise RuntimeError("the metadata commit fails")
    with store.read() as txn:
        assert chunks.get_many(txn, [a]) == [b"A"]  # a delete never outruns its commit
        if chunks.transactional_puts:
            assert chunks.get_many(txn, [n]) == [None]


def test_collision_keys_lists_one_fingerprint_in_order(chunks):
    store = chunks.store
    fp = hashlib.md5(b"fp").digest()
    nxt = bytes(fp[:-1]) + bytes([fp[-1] + 1])
    with store.write() as txn:
        chunks.put_many(txn, [(L.chunk_key(fp, n), b"x") for n in (3, 0, 1)])
        chunks.put_many(txn, [(L.chunk_key(nxt, 0), b"y")])
        assert chunks.collision_keys(txn, fp) == [L.chunk_key(fp, n) for n in (0, 1, 3)]
    with store.read() as txn:
        assert chunks.collision_keys(txn, fp) == [L.chunk_key(fp, n) for n in (0, 1, 3)]
        assert chunks.collision_keys(txn, hashlib.md5(b"none").digest()) == []


def test_iter_all_streams_every_chunk_in_bounded_batches(chunks):
    store = chunks.store
    keys = sorted(chunk_key(f"c{i}") for i in range(1000))
    with store.write() as txn:
        chunks.put_many(txn, [(k, k[:4]) for k in keys])
    batches = list(chunks.iter_all(batch=64))
    assert all(1 <= len(b) <= 64 for b in batches)
    assert [kv for b in batches for kv in b] == [(k, k[:4]) for k in keys]


def test_iter_all_reads_each_batch_in_a_fresh_transaction(chunks):
    store = chunks.store
    keys = sorted(chunk_key(f"c{i}") for i in range(200))
    with store.write() as txn:
        chunks.put_many(txn, [(k, b"v") for k in keys[:100]])
    it = chunks.iter_all(batch=10)
    first = next(it)
    assert [k for k, _ in first] == keys[:10]
    # a commit between batches is seen by the later ones (no snapshot is held meanwhile)
    with store.write() as txn:
        chunks.put_many(txn, [(k, b"late") for k in keys[100:]])
        chunks.delete_many(txn, keys[10:20])
    rest = [kv for b in it for kv in b]
    assert [k for k, _ in rest] == keys[20:]
    assert dict(rest)[keys[-1]] == b"late"


def test_chunk_store_dedups_counts_and_frees_over_the_backend(chunks):
    store = chunks.store
    cs = ChunkStore(store, chunks)
    data = hashlib.sha256(b"d").digest() * (L.CHUNK_SIZE // 32)
    fp = cs.fingerprints(data)[0]
    with store.write() as txn:
        k1 = cs.put(txn, fp, data)
        k2 = cs.put(txn, fp, data)
    assert k1 == k2 and k1[:L.FP_SIZE] == fp
    with store.read() as txn:
        assert cs.refcount(txn, k1) == 2 and cs.get(txn, k1) == data
        assert cs.get_encoded_many(txn, [k1])[0][0] in (L.CODEC_RAW, L.CODEC_ZSTD)
    with store.write() as txn:
        cs.decref(txn, k1)
        cs.decref(txn, k1)
    with store.read() as txn:
        assert cs.refcount(txn, k1) == 0 and chunks.get_many(txn, [k1]) == [None]
    assert list(cs.iter_stored()) == []
    sweep_all(chunks)  # a chunk kept for a grace period still holds its number until then
    with store.read() as txn:
        assert not cs.maybe_stored(txn, fp)


# --- part 3: the Store over a backend -----------------------------------------------------


def test_store_scan_batches_are_ordered_complete_and_bounded(store):
    t = store.db["service"]
    keys = [f"k{i:05d}".encode() for i in range(2500)]
    with store.write() as txn:
        for k in keys:
            txn.put(k, k, db=t)
    batches = list(store.scan(t, batch=100))
    assert len(batches) == 25 and all(len(b) == 100 for b in batches)
    assert [k for b in batches for k, _ in b] == keys
    assert [k for b in store.scan(t, start=b"k02450", batch=7) for k, _ in b] == keys[2450:]
    assert list(store.scan(store.db["blocksums"])) == []


@pytest.mark.parametrize("kind", BACKENDS)
def test_store_full_refuses_whole_commits_and_deletions_free_space(kind, tmp_path):
    s = Store(backend=make_backend(kind, tmp_path, map_size=8 << 20))
    t = s.db["service"]
    blob = hashlib.sha256(b"x").digest() * (256 * 1024 // 32)  # 256 KiB, incompressible-ish
    n = 0
    with pytest.raises(StoreFull):
        for n in range(100):
            with s.write() as txn:
                txn.put(f"k{n:03d}".encode(), blob, db=t)
    assert 5 < n < 40
    snapshot = content(s.env, t)
    # a refused transaction leaves nothing behind
    with pytest.raises(StoreFull), s.write() as txn:
        txn.put(b"a-new-key", b"small", db=t)
        txn.put(b"zz-big", blob, db=t)
    assert content(s.env, t) == snapshot
    with s.write(freeing=True) as txn:  # deletions are allowed into the reserve
        for k, _ in snapshot:
            txn.delete(k, db=t)
    s.after_free()
    for i in range(n - 2):  # the freed space is usable again
        with s.write() as txn:
            txn.put(f"again{i:03d}".encode(), blob, db=t)
    s.close()


def test_lmdb_map_full_error_becomes_store_full_and_changes_nothing(tmp_path):
    s = Store(tmp_path / "s", map_size=2 << 20)
    t = s.db["service"]
    s.reserve = 0  # let LMDB itself hit MDB_MAP_FULL, not the reserve check
    before = content(s.env, t)
    with pytest.raises(StoreFull, match="LMDB map size"), s.write() as txn:
        for i in range(64):
            txn.put(f"k{i}".encode(), bytes(64 * 1024), db=t)
    assert content(s.env, t) == before
    with s.write() as txn:  # and the store still works
        txn.put(b"small", b"1", db=t)
    s.close()
