"""RadosChunks beyond the shared contract (tests/storage/test_backend_contract.py runs that):
the grace period of deleted chunks, revival, orphans left by transactions that aborted or
died, and what a crash between writing objects and committing leaves (orphans, never an index
entry naming a missing object). Against a real cluster (``needs_ceph``)."""

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
from ebsengine.storage.rados_chunks import RadosChunks, key_of, object_name
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
    return {key_of(n) for n in rc.pool.list_objects("c.")}


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

    url, path, mode, seed = sys.argv[1:5]
    s = Store(path)
    conn = rados_io.connect(url)
    rc = RadosChunks(conn, s, s.backend.open_db(b"chunk_index"), s.backend.open_db(b"chunk_gc"))
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


def run_writer(url: str, path: str, mode: str, seed: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, path, mode, str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


def reopen(url: str, path: str):
    s = Store(path)
    conn = rados_io.connect(url)
    return s, conn, RadosChunks(conn, s, s.backend.open_db(b"chunk_index"),
                                s.backend.open_db(b"chunk_gc"))


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


def test_writers_killed_at_random_points_never_leave_a_dangling_index_entry(rados_pools,
                                                                            tmp_path):
    url, path = rados_pools.url(timeout=20), str(tmp_path / "store")
    rnd = random.Random(5)
    for seed in range(2, 5):
        p = run_writer(url, path, "forever", seed)
        assert p.stdout is not None
        for _ in range(rnd.randrange(3, 12)):  # let it commit a few transactions
            assert p.stdout.readline().startswith("committed"), p.stderr.read() if p.stderr else ""
        time.sleep(rnd.random() * 0.05)
        p.kill()
        p.communicate(timeout=60)
        s, conn, rc = reopen(url, path)
        try:
            indexed = check_no_dangling(rc)
            with s.read() as txn:
                waiting = {k for k, _ in txn.cursor(db=rc.gc)}
            assert indexed and not indexed & waiting
            assert indexed | waiting <= objects(rc)  # the rest are orphans
        finally:
            conn.close()
            s.close()
    s, conn, rc = reopen(url, path)
    try:
        rc.sweep_orphans(grace=0, now=time.time() + 2)
        with s.read() as txn:
            waiting = {k for k, _ in txn.cursor(db=rc.gc)}
        assert objects(rc) == check_no_dangling(rc) | waiting
    finally:
        conn.close()
        s.close()
