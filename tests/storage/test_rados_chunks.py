"""RadosChunks beyond the shared contract (tests/storage/test_backend_contract.py runs that):
the grace period of deleted chunks, revival, orphans left by transactions that aborted or
died, and what a crash between writing objects and committing leaves (orphans, never an index
entry naming a missing object); then the same for chunks in packs, with their ranged reads,
pack records, pack removal and compaction, and fsck's R2 check of them. Against a real
cluster (``needs_ceph``)."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ceph_support import ceph_cluster, rados_pools  # noqa: F401
from ebsengine import layout as L
from ebsengine.errors import BackendUnavailable, CorruptStore
from ebsengine.storage import rados_io
from ebsengine.storage.chunks import ChunkStore
from ebsengine.storage.memory import MemoryBackend
from ebsengine.storage.rados_chunks import (
    RadosChunks,
    key_of,
    object_name,
    pack_name,
    pack_of,
    parse_location,
    parse_pack,
)
from ebsengine.storage.store import Store

pytestmark = pytest.mark.needs_ceph


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def rc(rados_pools, clock):
    s = Store(backend=MemoryBackend())
    conn = rados_io.connect(rados_pools.url(timeout=20))
    yield RadosChunks(conn, s, s.backend.open_db(b"chunk_index"), s.backend.open_db(b"chunk_gc"),
                      grace=60, clock=clock)
    conn.close()
    s.close()


def key(tag: str, n: int = 0) -> bytes:
    return L.chunk_key(hashlib.md5(tag.encode()).digest(), n)


def objects(rc) -> set[bytes]:
    """The chunk keys whose bytes are in the data pool: objects alone, and what every pack's
    trailer lists."""
    out = {key_of(n) for n in rc.pool.list_objects("c.")}
    for name in rc.pool.list_objects("p."):
        out |= {k for k, _, _ in parse_pack(rc.pool.read(name, 1 << 23), name)}
    return out


def packs(rc) -> set[str]:
    return set(rc.pool.list_objects("p."))


def named_by_packs(rc) -> set[bytes]:
    """The chunk keys that index or gc entries locate in a pack."""
    with rc.store.read() as txn:
        return {bytes(k) for table, skip in ((rc.index, 0), (rc.gc, 8))
                for k, v in txn.cursor(db=table) if len(v) > skip}


def test_objects_are_named_by_their_key(rc):
    k = key("a")
    with rc.store.write() as txn:
        rc.put_many(txn, [(k, b"A")])
    assert rc.pool.read(object_name(k)) == b"A" and object_name(k) == "c." + k.hex()
    assert key_of(object_name(k)) == k and key_of("c.zz") is None and key_of("other") is None


def test_a_deleted_chunk_is_kept_for_its_grace_then_swept(rc, clock):
    a, b = key("a"), key("b")
    with rc.store.write() as txn:
        rc.put_many(txn, [(a, b"A"), (b, b"B")])
    old_reader = rc.store.read()
    with rc.store.write() as txn:
        rc.delete_many(txn, [a])
        assert rc.pending(txn) == 1
    with rc.store.read() as txn:
        assert rc.has_many(txn, [a, b]) == [False, True]
        assert rc.get_many(txn, [a, b]) == [None, b"B"]
    # a reader that began before the delete committed still reads the chunk
    assert rc.get_many(old_reader, [a]) == [b"A"]
    old_reader.abort()
    assert rc.sweep() == 0  # the grace has not passed
    clock.now += 59
    assert rc.sweep() == 0 and objects(rc) == {a, b}
    clock.now += 2
    assert rc.sweep() == 1
    assert objects(rc) == {b}
    with rc.store.read() as txn:
        assert rc.pending(txn) == 0 and rc.get_many(txn, [b]) == [b"B"]
    assert rc.sweep() == 0


def test_sweep_drains_in_batches(rc, clock):
    keys = [key(f"k{i}") for i in range(30)]
    with rc.store.write() as txn:
        rc.put_many(txn, [(k, b"x") for k in keys])
    with rc.store.write() as txn:
        rc.delete_many(txn, keys)
    clock.now += 61
    assert [rc.sweep(limit=12) for _ in range(4)] == [12, 12, 6, 0]
    assert objects(rc) == set()


def test_a_collision_number_is_not_reused_during_the_grace(rc, clock):
    cs = ChunkStore(rc.store, rc)
    fp = hashlib.md5(b"fp").digest()
    data_a, data_b = b"a" * L.CHUNK_SIZE, b"b" * L.CHUNK_SIZE
    with rc.store.write() as txn:
        ka = cs.put(txn, fp, data_a)
    with rc.store.write() as txn:
        cs.decref(txn, ka)
    with rc.store.write() as txn:  # other bytes, same fingerprint: not the dying number
        kb = cs.put(txn, fp, data_b)
    assert ka == L.chunk_key(fp, 0) and kb == L.chunk_key(fp, 1)
    with rc.store.read() as txn:
        assert rc.collision_keys(txn, fp) == [ka, kb]
        assert cs.get(txn, kb) == data_b
    clock.now += 61
    assert rc.sweep() == 1
    with rc.store.read() as txn:
        assert rc.collision_keys(txn, fp) == [kb]


def test_a_put_revives_a_chunk_waiting_in_gc(rc, clock):
    a = key("a")
    with rc.store.write() as txn:
        rc.put_many(txn, [(a, b"A")])
    with rc.store.write() as txn:
        rc.delete_many(txn, [a])
    with rc.store.write() as txn:
        rc.put_many(txn, [(a, b"A")])
        assert rc.pending(txn) == 0
    clock.now += 3600
    assert rc.sweep() == 0
    with rc.store.read() as txn:
        assert rc.get_many(txn, [a]) == [b"A"]


def test_delete_then_put_in_one_transaction_keeps_the_chunk(rc, clock):
    a = key("a")
    with rc.store.write() as txn:
        rc.put_many(txn, [(a, b"A")])
    with rc.store.write() as txn:
        rc.delete_many(txn, [a])
        rc.put_many(txn, [(a, b"A")])
    clock.now += 3600
    assert rc.sweep() == 0 and rc.sweep_orphans(0) == 0
    with rc.store.read() as txn:
        assert rc.get_many(txn, [a]) == [b"A"]


def test_an_aborted_put_leaves_an_orphan_that_the_orphan_sweep_removes(rc, clock):
    kept, lost, dying = key("kept"), key("lost"), key("dying")
    with rc.store.write() as txn:
        rc.put_many(txn, [(kept, b"K"), (dying, b"D")])
    with rc.store.write() as txn:
        rc.delete_many(txn, [dying])
    with pytest.raises(RuntimeError), rc.store.write() as txn:
        rc.put_many(txn, [(lost, b"L")])
        raise RuntimeError("the metadata commit fails")
    assert objects(rc) == {kept, lost, dying}
    with rc.store.read() as txn:
        assert rc.get_many(txn, [lost]) == [None]
    assert rc.sweep_orphans() == 0  # younger than the grace
    clock.now += 120
    rc.pool.put_many([("not-a-chunk", b"x")])
    assert rc.sweep_orphans() == 1  # only the orphan: not the indexed, not the one in gc
    assert objects(rc) == {kept, dying}
    assert rc.pool.read("not-a-chunk") == b"x"


def test_an_indexed_chunk_without_its_object_is_corruption_naming_it(rc):
    a = key("a")
    with rc.store.write() as txn:
        rc.put_many(txn, [(a, b"A")])
    rc.pool.remove_many([object_name(a)])
    with rc.store.read() as txn, pytest.raises(CorruptStore, match=a.hex()):
        rc.get_many(txn, [a])
    with pytest.raises(CorruptStore, match=a.hex()):
        list(rc.iter_all())


# --- write-behind: puts return before their objects are written; the commit waits ------------

def test_a_transaction_reads_its_puts_in_flight_and_they_are_durable_once_committed(rc):
    items = [(key(f"w{i}"), os.urandom(L.CHUNK_SIZE)) for i in range(200)]
    with rc.store.write() as txn:
        rc.put_many(txn, items[:100])
        rc.put_many(txn, items[100:])
        assert rc.get_many(txn, [k for k, _ in items]) == [v for _, v in items]
    # the commit returned: every object is durable and readable by anyone
    assert rc.pool.read_many([object_name(k) for k, _ in items]) == [v for _, v in items]
    assert rc._unwritten == {} and rc._writer is None


class FailingIoctx:
    """The data pool's ioctx, except that writing one object name fails (as a write the
    cluster did not answer in time does)."""

    def __init__(self, real, poisoned: str, code: int) -> None:
        self.real, self.poisoned, self.code = real, poisoned, code

    def aio_write_full(self, name, data, oncomplete):
        if name != self.poisoned:
            return self.real.aio_write_full(name, data, oncomplete=oncomplete)

        class Done:
            def get_return_value(_self) -> int:
                return -self.code

        done = Done()
        threading.Timer(0.05, oncomplete, (done,)).start()
        return done

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_failed_object_write_fails_the_commit_and_changes_nothing(rc, monkeypatch):
    good, bad, later = key("good"), key("bad"), key("later")
    monkeypatch.setattr(rc.pool, "ioctx", FailingIoctx(rc.pool.ioctx, object_name(bad),
                                                       errno.ETIMEDOUT))
    with pytest.raises(BackendUnavailable, match=object_name(bad)), \
            rc.store.write() as txn:
        rc.put_many(txn, [(good, b"G"), (bad, b"B")])
    with rc.store.read() as txn:  # the commit did not happen: no index entry at all
        assert rc.has_many(txn, [good, bad]) == [False, False]
        assert list(txn.cursor(db=rc.index)) == []
    with rc.store.write() as txn:  # the failure is not carried into the next transaction
        rc.put_many(txn, [(later, b"L")])
    with rc.store.read() as txn:
        assert rc.get_many(txn, [later, good]) == [b"L", None]


# --- a real crash: the writer is killed between writing objects and committing ----------------

WRITER = textwrap.dedent("""
    import hashlib, os, random, signal, sys
    from ebsengine import layout as L
    from ebsengine.storage import rados_io
    from ebsengine.storage.rados_chunks import RadosChunks
    from ebsengine.storage.store import Store

    url, path, mode, seed, pack = sys.argv[1:6]
    s = Store(path)
    conn = rados_io.connect(url)
    rc = RadosChunks(conn, s, s.backend.open_db(b"chunk_index"), s.backend.open_db(b"chunk_gc"),
                     s.backend.open_db(b"packs"), s.backend.open_db(b"pack_gc"),
                     pack_size=int(pack))
    rnd = random.Random(int(seed))

    def key(i):
        return L.chunk_key(hashlib.md5(f"{seed}/{i}".encode()).digest(), 0)

    n = 0
    live = []
    while True:
        with s.write() as txn:
            batch = [(key(n + j), os.urandom(rnd.randrange(1, 9000))) for j in range(8)]
            n += 8
            rc.put_many(txn, batch)
            if mode == "die-before-commit" and n >= 24:
                print("written", *[k.hex() for k, _ in batch], flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "forever" and live and rnd.random() < 0.5:
                rc.delete_many(txn, [live.pop(rnd.randrange(len(live)))])
            live += [k for k, _ in batch]
        print("committed", n, flush=True)
""")


def run_writer(url: str, path: str, mode: str, seed: int,
               pack: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, path, mode, str(seed),
                             str(pack)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


def reopen(url: str, path: str, pack: int = 0):
    s = Store(path)
    conn = rados_io.connect(url)
    return s, conn, RadosChunks(conn, s, s.backend.open_db(b"chunk_index"),
                                s.backend.open_db(b"chunk_gc"), s.backend.open_db(b"packs"),
                                s.backend.open_db(b"pack_gc"), pack_size=pack)


def check_no_dangling(rc) -> set[bytes]:
    """Every indexed chunk's object exists (iter_all reads them all); returns the index."""
    return {k for batch in rc.iter_all(batch=50) for k, _ in batch}


def test_a_writer_killed_before_its_commit_leaves_orphans_only(rados_pools, tmp_path):
    url, path = rados_pools.url(timeout=20), str(tmp_path / "store")
    p = run_writer(url, path, "die-before-commit", 1)
    out, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, err
    written = {bytes.fromhex(h) for h in out.splitlines()[-1].split()[1:]}
    s, conn, rc = reopen(url, path)
    try:
        indexed = check_no_dangling(rc)
        assert len(indexed) == 16 and not indexed & written
        assert objects(rc) == indexed | written  # the dead transaction's objects: orphans
        assert rc.sweep_orphans(grace=3600) == 0
        assert rc.sweep_orphans(grace=0, now=time.time() + 2) == len(written)
        assert objects(rc) == indexed == check_no_dangling(rc)
    finally:
        conn.close()
        s.close()


@pytest.mark.parametrize("pack", [0, 20_000], ids=["alone", "packed"])
def test_writers_killed_at_random_points_never_leave_a_dangling_index_entry(rados_pools,
                                                                            tmp_path, pack):
    url, path = rados_pools.url(timeout=20), str(tmp_path / "store")
    rnd = random.Random(5)
    for seed in range(2, 5):
        p = run_writer(url, path, "forever", seed, pack)
        assert p.stdout is not None
        for _ in range(rnd.randrange(3, 12)):  # let it commit a few transactions
            assert p.stdout.readline().startswith("committed"), p.stderr.read() if p.stderr else ""
        time.sleep(rnd.random() * 0.05)
        p.kill()
        p.communicate(timeout=60)
        s, conn, rc = reopen(url, path, pack)
        try:
            indexed = check_no_dangling(rc)
            with s.read() as txn:
                waiting = {k for k, _ in txn.cursor(db=rc.gc)}
            assert indexed and not indexed & waiting
            assert indexed | waiting <= objects(rc)  # the rest are orphans
            assert rc.check() == []
        finally:
            conn.close()
            s.close()
    s, conn, rc = reopen(url, path, pack)
    try:
        rc.sweep_orphans(grace=0, now=time.time() + 2)
        with s.read() as txn:
            waiting = {k for k, _ in txn.cursor(db=rc.gc)}
        if pack:  # a pack keeps its dead chunks' bytes until compaction: what is named
            assert named_by_packs(rc) == check_no_dangling(rc) | waiting
        else:
            assert objects(rc) == check_no_dangling(rc) | waiting
        assert rc.check() == []
    finally:
        conn.close()
        s.close()


# --- chunks in packs ---------------------------------------------------------------------------

@pytest.fixture
def rp(rados_pools, clock):
    """RadosChunks writing packs of at most 20,000 bytes."""
    s = Store(backend=MemoryBackend())
    conn = rados_io.connect(rados_pools.url(timeout=20))
    b = s.backend
    yield RadosChunks(conn, s, b.open_db(b"chunk_index"), b.open_db(b"chunk_gc"),
                      b.open_db(b"packs"), b.open_db(b"pack_gc"), grace=60, clock=clock,
                      pack_size=20_000)
    conn.close()
    s.close()


class CountingReads:
    """The data pool's ioctx, counting reads (and the bytes asked for)."""

    def __init__(self, real) -> None:
        self.real, self.reads, self.asked = real, 0, 0

    def aio_read(self, name, length, offset, oncomplete):
        self.reads += 1
        self.asked += length
        return self.real.aio_read(name, length, offset, oncomplete=oncomplete)

    def __getattr__(self, name):
        return getattr(self.real, name)


def located(rc, k: bytes):
    with rc.store.read() as txn:
        return parse_location(txn.get(k, db=rc.index))


def test_a_transaction_writes_its_chunks_as_packs_and_reads_neighbours_in_one_read(
        rp, monkeypatch):
    items = [(key(f"k{i}"), os.urandom(3000 + i)) for i in range(12)]
    with rp.store.write() as txn:
        rp.put_many(txn, items[:5])
        rp.put_many(txn, items[5:])
        # its own puts read back before anything is written: the open pack and those in flight
        assert rp.get_many(txn, [k for k, _ in items]) == [v for _, v in items]
    # 12 chunks of ~3 KB: packs of 20,000 bytes hold 7 (the 7th fills it), then 5; no object
    # of its own per chunk
    assert len(packs(rp)) == 2 and not list(rp.pool.list_objects("c."))
    assert objects(rp) == {k for k, _ in items}
    first = located(rp, items[0][0])
    assert first is not None and first[1:] == (0, 3000)
    assert {located(rp, k)[0] for k, _ in items[:7]} == {first[0]}
    counting = CountingReads(rp.pool.ioctx)
    monkeypatch.setattr(rp.pool, "ioctx", counting)
    with rp.store.read() as txn:
        assert rp.get_many(txn, [k for k, _ in items[1:4]]) == [v for _, v in items[1:4]]
        assert counting.reads == 1 and counting.asked == sum(len(v) for _, v in items[1:4])
        assert rp.get_many(txn, [k for k, _ in items]) == [v for _, v in items]
        assert counting.reads == 3  # one per pack
    assert rp.check() == []


def test_a_deleted_packed_chunk_is_readable_for_its_grace_and_its_pack_goes_last(rp, clock):
    a, b = key("a"), key("b")
    with rp.store.write() as txn:
        rp.put_many(txn, [(a, b"A" * 100), (b, b"B" * 100)])
    (pack,) = packs(rp)
    old_reader = rp.store.read()
    with rp.store.write() as txn:
        rp.delete_many(txn, [a])
    with rp.store.read() as txn:
        assert rp.get_many(txn, [a, b]) == [None, b"B" * 100]
    assert rp.get_many(old_reader, [a]) == [b"A" * 100]
    old_reader.abort()
    clock.now += 61
    assert rp.sweep() == 1 and packs(rp) == {pack}  # b still lives in it
    assert rp.check() == []
    with rp.store.write() as txn:
        rp.delete_many(txn, [b])
    clock.now += 61
    assert rp.sweep() == 1 and packs(rp) == {pack}  # no entry names it: queued for a grace
    with rp.store.read() as txn:
        assert list(txn.cursor(db=rp.packs)) == []
        assert [pack_name(bytes(p)) for p, _ in txn.cursor(db=rp.pack_gc)] == [pack]
    assert rp.check() == []
    clock.now += 61
    assert rp.sweep() == 1 and packs(rp) == set()
    with rp.store.read() as txn:
        assert list(txn.cursor(db=rp.pack_gc)) == []
    assert rp.check() == [] and rp.sweep() == 0


def test_a_put_of_a_packed_chunk_waiting_in_gc_names_its_old_place_and_writes_nothing(
        rp, clock):
    a = key("a")
    with rp.store.write() as txn:
        rp.put_many(txn, [(a, b"A" * 50)])
    where = located(rp, a)
    with rp.store.write() as txn:
        rp.delete_many(txn, [a])
    with rp.store.write() as txn:
        rp.put_many(txn, [(a, b"A" * 50)])
        assert rp.pending(txn) == 0
    assert located(rp, a) == where and len(packs(rp)) == 1
    with rp.store.write() as txn:  # delete and put again in one transaction
        rp.delete_many(txn, [a])
        rp.put_many(txn, [(a, b"A" * 50)])
    clock.now += 3600
    assert rp.sweep() == 0 and rp.sweep_orphans(0) == 0
    with rp.store.read() as txn:
        assert rp.get_many(txn, [a]) == [b"A" * 50]
    assert located(rp, a) == where and rp.check() == []


def test_compaction_moves_the_live_chunks_of_a_sparse_pack_and_old_readers_keep_theirs(
        rp, clock):
    keys = [key(f"c{i}") for i in range(6)]
    values = [os.urandom(3000) for _ in keys]
    with rp.store.write() as txn:
        rp.put_many(txn, list(zip(keys, values, strict=True)))
    (old,) = packs(rp)
    assert rp.compact() == 0  # nothing is sparse yet
    with rp.store.write() as txn:
        rp.delete_many(txn, keys[:4])
    clock.now += 61
    assert rp.sweep() == 4 and rp.check() == []
    reader = rp.store.read()
    assert rp.compact() == 2  # the two live chunks
    new = packs(rp) - {old}
    assert len(new) == 1 and {located(rp, k)[0] for k in keys[4:]} == {pack_of(new.pop())}
    with rp.store.read() as txn:
        assert rp.get_many(txn, keys) == [None] * 4 + values[4:]
        assert [bytes(p) for p, _ in txn.cursor(db=rp.pack_gc)] == [pack_of(old)]
    assert rp.get_many(reader, keys[4:]) == values[4:]  # from the old pack
    reader.abort()
    assert rp.check() == [] and rp.compact() == 0
    clock.now += 61
    assert rp.sweep() == 1 and old not in packs(rp)
    with rp.store.read() as txn:
        assert rp.get_many(txn, keys[4:]) == values[4:]
    assert rp.check() == []


def test_an_aborted_transaction_leaves_an_orphan_pack_that_the_orphan_sweep_removes(rp, clock):
    kept, lost = key("kept"), key("lost")
    with rp.store.write() as txn:
        rp.put_many(txn, [(kept, b"K" * 10)])
    with pytest.raises(RuntimeError), rp.store.write() as txn:
        rp.put_many(txn, [(lost, b"L" * 10)])
        rp.before_commit()  # its pack is written, as a commit that then fails writes it
        raise RuntimeError("the metadata commit fails")
    assert len(packs(rp)) == 2 and objects(rp) == {kept, lost}
    assert rp.sweep_orphans() == 0  # younger than the grace
    clock.now += 120
    assert rp.sweep_orphans() == 1 and objects(rp) == {kept}
    with rp.store.read() as txn:
        assert rp.get_many(txn, [kept, lost]) == [b"K" * 10, None]
    assert rp.check() == []


def test_check_reports_pack_records_that_disagree_and_missing_packs(rp):
    a, b = key("a"), key("b")
    with rp.store.write() as txn:
        rp.put_many(txn, [(a, b"A" * 10), (b, b"B" * 10)])
    pid = located(rp, a)[0]
    with rp.store.write() as txn:
        txn.put(pid, txn.get(pid, db=rp.packs)[:4] + bytes(16), db=rp.packs)
    assert any("records count 2, 0 bytes" in p for p in rp.check())
    with rp.store.write() as txn:
        txn.delete(pid, db=rp.packs)
    assert any("which has no record" in p for p in rp.check())
    with rp.store.write() as txn:
        txn.put(pid, bytes([2, 0, 0, 0]) + (20).to_bytes(8, "little") +
                (20).to_bytes(8, "little"), db=rp.packs)
    assert rp.check() == []
    rp.pool.remove_many([pack_name(pid)])
    assert any("is missing" in p for p in rp.check())
    with rp.store.read() as txn, pytest.raises(CorruptStore, match=a.hex()):
        rp.get_many(txn, [a])


def test_compaction_moves_nothing_out_of_a_pack_only_gc_entries_keep_and_does_not_loop(
        rp, clock, monkeypatch):
    keys = [key(f"g{i}") for i in range(5)]
    with rp.store.write() as txn:
        rp.put_many(txn, [(k, os.urandom(3000)) for k in keys])
    with rp.store.write() as txn:
        rp.delete_many(txn, keys[:4])
    clock.now += 61
    with rp.store.write() as txn:
        rp.delete_many(txn, keys[4:])  # its grace has not passed: it keeps the pack
    assert rp.sweep() == 4
    counting = CountingReads(rp.pool.ioctx)
    monkeypatch.setattr(rp.pool, "ioctx", counting)
    assert [rp.compact() for _ in range(3)] == [0, 0, 0]
    assert counting.reads == 1  # read once: then known to hold nothing to move
    clock.now += 61
    assert rp.sweep() == 1 and rp.sweep() == 0  # the last entry, then (a grace on) its pack
    clock.now += 61
    assert rp.sweep() == 1 and packs(rp) == set() and rp.check() == []


def test_a_store_opened_with_pack_0_compacts_its_packs_into_objects_alone(rp, clock):
    keys = [key(f"z{i}") for i in range(6)]
    values = [os.urandom(3000) for _ in keys]
    with rp.store.write() as txn:
        rp.put_many(txn, list(zip(keys, values, strict=True)))
    with rp.store.write() as txn:
        rp.delete_many(txn, keys[:4])
    clock.now += 61
    assert rp.sweep() == 4
    alone = RadosChunks(rp.conn, rp.store, rp.index, rp.gc, rp.packs, rp.pack_gc, grace=60,
                        clock=clock, pack_size=0)
    assert alone.compact() == 2
    assert {key_of(n) for n in rp.pool.list_objects("c.")} == set(keys[4:])
    with rp.store.read() as txn:
        assert alone.get_many(txn, keys) == [None] * 4 + values[4:]
    assert alone.check() == []


class SubmitFails:
    """The data pool's ioctx, except that starting the write of a pack raises."""

    def __init__(self, real) -> None:
        self.real = real

    def aio_write_full(self, name, data, oncomplete):
        if name.startswith("p."):
            raise RuntimeError("could not submit")
        return self.real.aio_write_full(name, data, oncomplete=oncomplete)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_pack_that_could_not_be_written_fails_the_commit_of_every_entry_in_it(
        rp, monkeypatch):
    """A child transaction commits a chunk into the open pack; a second child's put fills
    the pack, whose write fails, and aborts: the parent's commit must fail too (its first
    chunk's entry names that pack)."""
    first, second = key("first"), key("second")
    monkeypatch.setattr(rp.pool, "ioctx", SubmitFails(rp.pool.ioctx))
    with pytest.raises(BackendUnavailable, match="could not be written"), \
            rp.store.write() as txn:
        child = rp.store.backend.begin(parent=txn, write=True)
        rp.put_many(child, [(first, b"1" * 100)])
        child.commit()
        child = rp.store.backend.begin(parent=txn, write=True)
        with pytest.raises(RuntimeError):
            rp.put_many(child, [(second, b"2" * 30_000)])  # fills the pack: sealed, fails
        child.abort()
    with rp.store.read() as txn:
        assert rp.get_many(txn, [first, second]) == [None, None]
        assert list(txn.cursor(db=rp.index)) == []
    monkeypatch.undo()
    with rp.store.write() as txn:  # the next transaction is not poisoned
        rp.put_many(txn, [(first, b"1" * 100)])
    with rp.store.read() as txn:
        assert rp.get_many(txn, [first]) == [b"1" * 100]


def test_ranges_past_an_objects_end_come_back_short_not_as_garbage(rp):
    rp.pool.put_many([("short", b"0123456789")])
    assert rp.pool.read_ranges([("short", 100, 50), ("short", 5, 50), ("short", 0, 3)]) == \
        [b"", b"56789", b"012"]
    assert rp.pool.read_many(["short"], hint=4) == [b"0123456789"]
    rp.pool.put_many([("empty", b"")])
    assert rp.pool.read_many(["empty"]) == [b""]
    with pytest.raises(ValueError):
        rp.pool.read_ranges([("short", 0, 0)])


def test_a_chunk_alone_revived_into_a_pack_leaves_its_old_object_to_the_orphan_sweep(
        rp, clock):
    """A chunk stored alone (pack=0), deleted, then put again by a store writing packs: its
    bytes go into a pack, and the old object alone is an orphan for the sweep."""
    a = key("a")
    alone = RadosChunks(rp.conn, rp.store, rp.index, rp.gc, rp.packs, rp.pack_gc, grace=60,
                        clock=clock, pack_size=0)
    with rp.store.write() as txn:
        alone.put_many(txn, [(a, b"A" * 10)])
    with rp.store.write() as txn:
        rp.delete_many(txn, [a])
    with rp.store.write() as txn:
        rp.put_many(txn, [(a, b"A" * 10)])
    assert located(rp, a) is not None and object_name(a) in set(rp.pool.list_objects("c."))
    clock.now += 120
    assert rp.sweep_orphans() == 1 and not list(rp.pool.list_objects("c."))
    with rp.store.read() as txn:
        assert rp.get_many(txn, [a]) == [b"A" * 10]
    assert rp.check() == []
