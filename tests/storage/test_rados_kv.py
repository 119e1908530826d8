"""The metadata backend of rados:// stores (``storage/rados_kv.py``) over an in-process pool
with RADOS's semantics (:class:`DictPool`): what the shared contract suite cannot see —
several processes on one pool, the writer lock, lost locks, crashes between the node writes
and the root write, and when freed nodes may go. The same backend over a real cluster runs
in ``test_rados_store.py``."""

from __future__ import annotations

import threading
import time

import pytest

from ebsengine.errors import CorruptStore, FormatError, StoreLocked
from ebsengine.storage import cowtree
from ebsengine.storage.rados_kv import NODE_PREFIX, ROOT, DictPool, RadosKv, node_name


def kv_on(pool: DictPool, **kw) -> RadosKv:
    kw.setdefault("refresh", 0.0)
    return RadosKv(pool, path="rados://t", **kw)


def items(kv: RadosKv, db) -> list[tuple[bytes, bytes]]:
    with kv.begin(db=db) as txn:
        return list(txn.cursor())


def live(kv: RadosKv) -> set[str]:
    """The nodes the committed trees reach."""
    return {node_name(i) for tree in kv.trees().values() for i in tree.node_ids()}


def nodes(pool: DictPool) -> set[str]:
    return {n for n in pool.objects if n.startswith(NODE_PREFIX)}


def test_a_second_process_reads_the_first_ones_commits_and_extends_them():
    pool = DictPool()
    a, b = kv_on(pool), kv_on(pool)
    ta = a.open_db(b"t")
    with a.begin(write=True, db=ta) as txn:
        txn.put(b"k1", b"from a")
    tb = b.open_db(b"t")
    assert items(b, tb) == [(b"k1", b"from a")]
    with b.begin(write=True, db=tb) as txn:
        txn.put(b"k2", b"from b")
    assert items(a, ta) == [(b"k1", b"from a"), (b"k2", b"from b")]
    # a third opener sees the same durable state from the pool alone
    c = kv_on(pool)
    assert items(c, c.open_db(b"t")) == [(b"k1", b"from a"), (b"k2", b"from b")]


def test_a_reader_may_lag_by_the_refresh_interval_but_keeps_its_snapshot():
    pool = DictPool()
    a, b = kv_on(pool), kv_on(pool, refresh=3600.0)
    ta = a.open_db(b"t")
    tb = b.open_db(b"t")
    with a.begin(write=True, db=ta) as txn:
        txn.put(b"k", b"1")
    assert items(b, tb) == []  # b read the root less than an hour ago
    with b.begin(write=True, db=tb) as txn:  # a writer always reads the newest root
        assert txn.get(b"k") == b"1"


def test_one_writer_across_processes():
    pool = DictPool()
    a, b = kv_on(pool), kv_on(pool, lock_wait=0.3)
    ta = a.open_db(b"t")
    b.open_db(b"t")
    txn = a.begin(write=True, db=ta)
    txn.put(b"k", b"a")
    t0 = time.monotonic()
    with pytest.raises(StoreLocked):
        b.begin(write=True)
    assert time.monotonic() - t0 >= 0.3
    txn.commit()
    got: list[bytes | None] = []

    def other() -> None:
        with b.begin(write=True, db=b.open_db(b"t")) as t2:
            got.append(t2.get(b"k"))
    th = threading.Thread(target=other)
    th.start()
    th.join(5)
    assert got == [b"a"]


def test_a_dead_writers_lock_expires():
    pool = DictPool()
    a = kv_on(pool, lock_seconds=0.2)
    a.open_db(b"t")
    dead = a.begin(write=True)  # "dies" holding the lock: never commits, never unlocks
    b = kv_on(pool, lock_wait=5.0)
    t0 = time.monotonic()
    with b.begin(write=True, db=b.open_db(b"t")) as txn:
        txn.put(b"k", b"b")
    assert 0.1 < time.monotonic() - t0 < 5.0
    del dead


def test_a_writer_whose_lock_expired_cannot_overwrite_the_next_writers_commit():
    pool = DictPool()
    a = kv_on(pool, lock_seconds=0.1)
    ta = a.open_db(b"t")
    slow = a.begin(write=True, db=ta)
    slow.put(b"k", b"stale")
    time.sleep(0.2)  # a stalls past its lock; b takes over and commits
    b = kv_on(pool)
    with b.begin(write=True, db=b.open_db(b"t")) as txn:
        txn.put(b"k", b"b")
    with pytest.raises(StoreLocked, match="not committed"):
        slow.commit()
    assert items(b, b.open_db(b"t")) == [(b"k", b"b")]


def stalled_writer(pool: DictPool) -> tuple[RadosKv, object, object]:
    """Process a (lock of 0.1 s) committed k=first, then began a write transaction putting
    k=stale and stalled past its lock: (a, its table, the open transaction)."""
    a = kv_on(pool, lock_seconds=0.1)
    ta = a.open_db(b"t")
    with a.begin(write=True, db=ta) as txn:
        txn.put(b"k", b"first")
    slow = a.begin(write=True, db=ta)
    slow.put(b"k", b"stale")
    time.sleep(0.2)
    return a, ta, slow


def test_a_fence_stops_a_writer_whose_lock_expired_even_if_nothing_else_commits():
    """A sweep that removes orphans changes no table: without the fence its commit would
    leave the root's version as it was, and the stalled writer's swap would still succeed
    (naming objects the sweep removed meanwhile)."""
    pool = DictPool()
    a, ta, slow = stalled_writer(pool)  # b takes the lock, fences, changes no table
    b = kv_on(pool)
    with b.begin(write=True):
        b.fence_writers()
    with pytest.raises(StoreLocked, match="not committed"):
        slow.commit()
    assert items(b, b.open_db(b"t")) == [(b"k", b"first")]
    with a.begin(write=True, db=ta) as txn:  # a's next transaction commits as usual
        txn.put(b"k", b"next")
    assert items(b, b.open_db(b"t")) == [(b"k", b"next")]


def test_a_fence_refuses_a_writer_that_lost_its_own_lock():
    pool = DictPool()
    a = kv_on(pool, lock_seconds=0.1)
    ta = a.open_db(b"t")
    slow = a.begin(write=True, db=ta)
    time.sleep(0.2)
    b = kv_on(pool)
    with b.begin(write=True, db=b.open_db(b"t")) as txn:
        txn.put(b"k", b"b")
    with pytest.raises(StoreLocked, match="nothing was removed"):
        a.fence_writers()  # (inside slow): a must not go on to remove anything
    slow.abort()
    with pytest.raises(RuntimeError):
        a.fence_writers()  # outside a write transaction
    assert items(a, ta) == [(b"k", b"b")]


class ListedPool(DictPool):
    """DictPool with a listing and stats, so that sweep_orphan_nodes runs over it (nothing
    is old enough to remove)."""

    def list_objects(self, prefix: str = "") -> list[str]:
        with self._mu:
            return [n for n in self.objects if n.startswith(prefix)]

    def stat_many(self, names):
        return [None for _ in names]


@pytest.mark.parametrize("call", ["check_structure", "sweep_orphan_nodes"])
def test_another_thread_of_a_fenced_writer_does_not_let_it_adopt_the_fence(call):
    """fsck's tree walk or the janitor's listing, in the stalled writer's own process, reads
    the root while the writer's transaction is open: it must not hand the writer the
    fenced version (the same commit number), or the stale swap would succeed."""
    pool = ListedPool()
    a, _, slow = stalled_writer(pool)
    b = kv_on(pool)
    with b.begin(write=True):
        b.fence_writers()
    other = threading.Thread(target=getattr(a, call))
    other.start()
    other.join()
    with pytest.raises(StoreLocked, match="not committed"):
        slow.commit()
    assert items(b, b.open_db(b"t")) == [(b"k", b"first")]


class HeldReadPool(DictPool):
    """Holds the root read of the thread named "late" until ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.read, self.go = threading.Event(), threading.Event()

    def read_versioned(self, name):
        got = super().read_versioned(name)
        if threading.current_thread().name == "late":
            self.read.set()
            self.go.wait(10)
        return got


@pytest.mark.parametrize("call", ["refresh", "_snapshot"])
def test_a_slow_root_read_does_not_undo_what_the_writer_read_under_its_lock(call):
    """A read of the root from before another process's fence that returns after this
    process's writer took the lock and read the fenced root must not put the older
    version back: the writer's lock is valid and its commit must go through."""
    pool = HeldReadPool()
    p, other = kv_on(pool), kv_on(pool)
    tp = p.open_db(b"t")
    late = threading.Thread(target=getattr(p, call), name="late")
    late.start()
    assert pool.read.wait(10)
    with other.begin(write=True):
        other.fence_writers()
    w = p.begin(write=True, db=tp)
    w.put(b"k", b"v")
    pool.go.set()
    late.join()
    w.commit()
    assert items(other, other.open_db(b"t")) == [(b"k", b"v")]


class WrongVersionPool(DictPool):
    """Reports one swap's new version wrong (too high), as an ioctx shared with other
    threads' calls once did."""

    wrong_next = False

    def cas_write_version(self, name, expected_version, data, **kw):
        got = super().cas_write_version(name, expected_version, data, **kw)
        if got is not None and self.wrong_next:
            self.wrong_next = False
            return got + 1000
        return got


def test_a_wrong_root_version_does_not_stick():
    """The next writer's own read under the lock replaces whatever version was known: one
    wrong report costs at most one commit, not every commit after it."""
    pool = WrongVersionPool()
    kv = kv_on(pool)
    t = kv.open_db(b"t")
    pool.wrong_next = True
    with kv.begin(write=True, db=t) as txn:
        txn.put(b"k", b"0")
    for i in range(1, 4):
        with kv.begin(write=True, db=t) as txn:
            txn.put(b"k", b"%d" % i)
    assert items(kv, t) == [(b"k", b"3")]


def test_a_fence_is_refused_once_the_lock_is_half_spent():
    """A removal cannot be fenced itself: a sweeper whose transaction held the lock for
    over half its duration could lose it before removing, so it removes nothing."""
    pool = DictPool()
    a = kv_on(pool, lock_seconds=0.2)
    with a.begin(write=True):
        a.fence_writers()  # fresh lock: fine
        time.sleep(0.15)
        with pytest.raises(StoreLocked, match="nothing was removed"):
            a.fence_writers()


def test_a_crash_before_the_root_write_leaves_the_last_commit_and_only_orphans():
    pool = DictPool()
    a = kv_on(pool)
    ta = a.open_db(b"t")
    with a.begin(write=True, db=ta) as txn:
        for i in range(50):
            txn.put(b"k%03d" % i, b"v" * 100)
    before = dict(pool.objects)
    txn = a.begin(write=True, db=ta)
    for i in range(50):
        txn.put(b"k%03d" % i, b"w" * 100)
    pool.fail_after = 1  # the node writes land, the root write fails
    with pytest.raises(OSError):
        txn.commit()
    pool.fail_after = None
    assert pool.objects[ROOT] == before[ROOT]
    b = kv_on(pool)
    assert items(b, b.open_db(b"t")) == [(b"k%03d" % i, b"v" * 100) for i in range(50)]
    assert nodes(pool) > {n for n in before if n.startswith(NODE_PREFIX)}  # orphans only


def test_freed_nodes_wait_for_the_grace_and_for_this_processes_readers():
    pool = DictPool()
    a = kv_on(pool, grace=0.3)
    ta = a.open_db(b"t")
    with a.begin(write=True, db=ta) as txn:
        txn.put(b"k", b"1")
    reader = a.begin(db=ta)
    live_then = nodes(pool)
    with a.begin(write=True, db=ta) as txn:
        txn.put(b"k", b"2")
    assert a.pending_free() > 0
    time.sleep(0.35)
    assert a.collect() == 0  # past the grace, but an open reader can still see them
    assert reader.get(b"k") == b"1"
    reader.abort()
    assert live_then <= nodes(pool)
    assert a.collect() > 0
    assert live_then - nodes(pool)  # the first version's nodes are gone now
    assert a.pending_free() == 0
    assert pool.omap_get(ROOT, prefix="f") == []
    assert items(a, ta) == [(b"k", b"2")]


def test_freed_nodes_are_not_removed_within_the_grace():
    pool = DictPool()
    a = kv_on(pool, grace=3600.0)
    ta = a.open_db(b"t")
    with a.begin(write=True, db=ta) as txn:
        txn.put(b"k", b"1")
    old = nodes(pool)
    with a.begin(write=True, db=ta) as txn:
        txn.put(b"k", b"2")
    assert a.collect() == 0
    assert old <= nodes(pool)  # a reader in another process may still use them
    # another process learns of the pending records from the pool and honours them too
    b = kv_on(pool, grace=3600.0)
    b.open_db(b"t")
    assert b.collect() == 0 and old <= nodes(pool)
    c = kv_on(pool, grace=0.0)
    c.open_db(b"t")
    assert c.collect() > 0
    assert nodes(pool) == live(c) and old - live(c) and not (old - live(c)) & nodes(pool)


def test_a_damaged_root_is_corruption_and_a_foreign_object_is_refused():
    pool = DictPool()
    kv_on(pool).open_db(b"t")
    data, version = pool.objects[ROOT]
    pool.objects[ROOT] = (data[:-1] + bytes([data[-1] ^ 1]), version + 1)
    with pytest.raises(CorruptStore):
        kv_on(pool)
    pool2 = DictPool()
    pool2.objects[ROOT] = (b"not a root" + bytes(30), 1)
    with pytest.raises((FormatError, CorruptStore)):
        kv_on(pool2)


def test_a_missing_node_is_corruption_not_an_empty_table():
    pool = DictPool()
    a = kv_on(pool)
    ta = a.open_db(b"t")
    with a.begin(write=True, db=ta) as txn:
        txn.put(b"k", b"v")
    for n in nodes(pool):
        del pool.objects[n]
    b = kv_on(pool)
    with pytest.raises(CorruptStore, match="missing"):
        items(b, b.open_db(b"t"))


class CountingPool(DictPool):
    def __init__(self) -> None:
        super().__init__()
        self.read: list[str] = []

    def read_many(self, names):
        self.read.extend(names)
        return super().read_many(names)


def test_keys_deletes_and_byte_counts_read_no_out_of_line_value():
    """A cursor walking keys, a delete and the size check of a commit need only the leaves:
    the values stored apart (blobs: the folder's scan of ``pages``, a flush dropping old
    pages) are read when a value is asked for, and only then."""
    pool = CountingPool()
    kv = kv_on(pool)
    t = kv.open_db(b"t")
    big = {f"k{i:03}".encode(): bytes([i]) * 3000 for i in range(60)}
    with kv.begin(write=True, db=t) as txn:
        for k, v in big.items():
            txn.put(k, v)
    cold = kv_on(pool)
    t = cold.open_db(b"t")
    blobs = {node_name(i) for tree in cold.trees().values() for i in tree.node_ids()}
    pool.read.clear()
    with cold.begin(db=t) as txn:
        cur = txn.cursor()
        keys = []
        found = cur.first()
        while found:
            keys.append(cur.key())
            found = cur.next()
        assert keys == sorted(big)
        assert cur.set_key(b"k007") and not cur.set_key(b"nope")
    with cold.begin(write=True, db=t) as txn:
        assert txn.delete(b"k010") and not txn.delete(b"k010")

    def is_blob(name: str) -> bool:
        return name in blobs and pool.objects[name][0][0] == cowtree.BLOB

    assert [n for n in pool.read if is_blob(n)] == []
    with cold.begin(db=t) as txn:
        assert txn.get(b"k007") == big[b"k007"] and txn.get(b"k010") is None
    assert any(is_blob(n) for n in pool.read)  # the one value asked for
