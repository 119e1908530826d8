"""A whole store on the test Ceph cluster (``rados://``): what is particular to RADOS — the
objects in the pools (packs by default, one object per chunk with ``pack=0``), fsck's R1 and
R2, the sweeps that remove what waited out its grace, orphans of commits that never happened. The engine's behaviour on RADOS is
covered by the suites that run on every backend (``any_store_path`` in tests/conftest.py)."""

from __future__ import annotations

import os
import threading
import time

import pytest

import ebsengine
from ebsengine import layout as L
from ebsengine.errors import StoreLocked
from ebsengine.storage.rados_chunks import OBJECT_PREFIX, PACK_PREFIX, parse_pack
from ebsengine.storage.rados_kv import NODE_PREFIX, ROOT, RadosStore

pytestmark = pytest.mark.needs_ceph
CS = L.CHUNK_SIZE


def objects(pool, prefix: str) -> set[str]:
    return set(pool.list_objects(prefix))


def stored_chunks(pool) -> list[bytes]:
    """The chunk keys the data pool holds bytes of: one per object alone, and every entry
    of every pack's trailer (a key twice means its bytes are stored twice)."""
    out = [bytes.fromhex(n[len(OBJECT_PREFIX):]) for n in objects(pool, OBJECT_PREFIX)]
    for name in objects(pool, PACK_PREFIX):
        out += [k for k, _, _ in parse_pack(pool.read(name, 1 << 23) or b"", name)]
    return out


#: the two layouts of chunk bytes (the URL's ``pack=``): packs of 4 MiB, or one object each
LAYOUTS = pytest.mark.parametrize("pack", [4, 0], ids=["packed", "alone"])


def reachable(be: RadosStore) -> set[str]:
    return {NODE_PREFIX + i.hex() for t in be.trees().values() for i in t.node_ids()}


def backend(eng: ebsengine.Engine) -> RadosStore:
    be = eng._store.backend
    assert isinstance(be, RadosStore)
    return be


@LAYOUTS
def test_data_and_metadata_live_in_their_pools_and_fsck_walks_the_trees(rados_pools,
                                                                          tmp_path, pack):
    url = rados_pools.url(workdir=str(tmp_path / "wd"), pack=pack)
    data = os.urandom(3 * CS)
    with ebsengine.Engine(url) as eng:
        v = eng.create_volume(1).id
        with eng.open_volume(v) as dev:
            dev.pwrite(data, 0)
            dev.pwrite(b"p" * 4096, 10 * CS)  # a patch: its pages are a blob in the tree
        eng.create_snapshot(v)
        be = backend(eng)
        assert len(stored_chunks(be.conn.data)) == 3  # the three chunks, once each
        # packed: the write-back's one transaction wrote one pack (and no object alone)
        assert len(objects(be.conn.data, PACK_PREFIX if pack else OBJECT_PREFIX)) == \
            (1 if pack else 3)
        assert not objects(be.conn.data, OBJECT_PREFIX if pack else PACK_PREFIX)
        assert ROOT in objects(be.conn.meta, "kv.")
        report = eng.fsck()
        assert report.ok, report.problems
        assert report.stats["metadata_nodes"] >= 5
        assert report.stats["chunks"] == 3
    assert not os.listdir(tmp_path / "wd") or \
        set(os.listdir(tmp_path / "wd")) <= {"owner.lock"}  # the workdir holds no data
    with ebsengine.Engine(url, readonly=True) as eng:
        with eng.open_volume(eng.list_volumes()[0].id) as dev:
            assert dev.pread(3 * CS, 0) == data


def batch_sizes(monkeypatch, pool) -> list[int]:
    """The number of objects (or ranges) of each batch read from ``pool`` from now on
    (``read_many`` reads through ``read_ranges``)."""
    sizes: list[int] = []
    real = pool.read_ranges

    def counted(ranges, **kw):
        sizes.append(len(ranges))
        return real(ranges, **kw)

    monkeypatch.setattr(pool, "read_ranges", counted)
    return sizes


@LAYOUTS
def test_a_read_of_several_chunks_fetches_their_objects_in_one_batch(rados_pools, tmp_path,
                                                                      monkeypatch, pack):
    url = rados_pools.url(workdir=str(tmp_path / "wd"), pack=pack)
    data = os.urandom(6 * CS)
    with ebsengine.Engine(url) as eng:
        v = eng.create_volume(1).id
        with eng.open_volume(v) as dev:
            dev.pwrite(data, 0)
            dev.pwrite(b"p" * 4096, 2 * CS)  # a patch over chunk 2: its base is fetched too
            dev.flush()
        want = bytearray(data)
        want[2 * CS:2 * CS + 4096] = b"p" * 4096
        batches = batch_sizes(monkeypatch, backend(eng).conn.data)
        with eng.open_volume(v) as dev:
            assert dev.pread(6 * CS - 1000, 500) == bytes(want[500:6 * CS - 500])
        # alone: six objects, one batch, nothing read twice; packed: the six are neighbours
        # in one pack, read as one range
        assert batches == ([1] if pack else [6])


def test_a_cold_read_loads_the_pages_of_its_patches_in_one_batch(rados_pools, tmp_path,
                                                                   monkeypatch):
    url = rados_pools.url(workdir=str(tmp_path / "wd"))
    data = os.urandom(4 * CS)
    # five random pages a patch (20 KiB): over the pages table's inline limit (blobs)
    pages = [os.urandom(5 * 4096) for _ in range(3)]
    with ebsengine.Engine(url) as eng:
        v = eng.create_volume(1).id
        with eng.open_volume(v) as dev:
            dev.pwrite(data, 0)
            dev.flush()
            for i, page in enumerate(pages):  # three patches, over chunks 0, 1 and 3
                dev.pwrite(page, (i if i < 2 else 3) * CS + 8192)
            dev.flush()
    want = bytearray(data)
    for i, page in enumerate(pages):
        at = (i if i < 2 else 3) * CS + 8192
        want[at:at + len(page)] = page
    with ebsengine.Engine(url, readonly=True) as eng:  # a cold node cache
        batches = batch_sizes(monkeypatch, backend(eng).conn.meta)
        with eng.open_volume(v) as dev:
            before = len(batches)
            assert dev.pread(4 * CS, 0) == bytes(want)
        assert 3 in batches[before:]  # the three patches' pages: one batch


def patched_volume(url: str, n: int, length: int) -> tuple[str, bytearray, int]:
    """A volume of ``n`` random chunks, each then patched with ``length`` random bytes at
    8 KiB into it; returns its id, its content and the number of nodes of ``pages``."""
    want = bytearray(os.urandom(n * CS))
    with ebsengine.Engine(url) as eng:
        v = eng.create_volume(1).id
        with eng.open_volume(v) as dev:
            dev.pwrite(want, 0)
            dev.flush()
            for i in range(n):
                want[i * CS + 8192:i * CS + 8192 + length] = os.urandom(length)
                dev.pwrite(want[i * CS + 8192:i * CS + 8192 + length], i * CS + 8192)
            dev.flush()
        tree = backend(eng).trees()[b"pages"]
        assert tree.count == n
        return v, want, sum(1 for _ in tree.node_ids())


@pytest.mark.parametrize("case", ["under-a-snapshot", "too-many-pages", "layered"])
def test_a_flush_over_patches_loads_their_pages_in_batches(rados_pools, tmp_path,
                                                           monkeypatch, case):
    """Writing into 40 patched chunks whose pages it merges (frozen by a snapshot, or too
    many pages for a layer) reads their 40 pages blobs in one batch (not a round trip
    each); over patches it lays a layer on, it reads none of them; and dropping them reads
    nothing more either: their length is in the leaf."""
    url = rados_pools.url(workdir=str(tmp_path / "wd"))
    n = 40
    v, want, _ = patched_volume(url, n, 20480)  # five random pages: out of line (blobs)
    at, length = (16384, 49152) if case == "too-many-pages" else (32768, 4096)  # 5 + 12 > 16
    with ebsengine.Engine(url) as eng:  # cold caches
        if case == "under-a-snapshot":
            eng.create_snapshot(v)
        with eng.open_volume(v) as dev:
            batches = batch_sizes(monkeypatch, backend(eng).conn.meta)
            for i in range(n):
                want[i * CS + at:i * CS + at + length] = os.urandom(length)
                dev.pwrite(want[i * CS + at:i * CS + at + length], i * CS + at)
            dev.flush()
            monkeypatch.undo()
            assert dev.pread(n * CS, 0) == bytes(want)
        assert eng.fsck().ok
    if case != "layered":
        assert n in batches  # the pages of the 40 patches: one batch
    else:
        assert max(batches) < n, batches
    assert batches.count(1) <= 6, batches  # the root and the paths down: a few single reads


def test_the_pages_of_neighbouring_patches_share_leaves_and_read_together(rados_pools,
                                                                          tmp_path,
                                                                          monkeypatch):
    """Patches of a few pages keep them inline in the ``pages`` tree's large leaves: a cold
    read of 40 patched chunks reads a few metadata objects, not one per patch."""
    url = rados_pools.url(workdir=str(tmp_path / "wd"))
    n = 40
    v, want, nodes = patched_volume(url, n, 4096)
    assert nodes <= 3
    with ebsengine.Engine(url, readonly=True) as eng:  # a cold node cache
        batches = batch_sizes(monkeypatch, backend(eng).conn.meta)
        with eng.open_volume(v) as dev:
            before = sum(batches)
            assert dev.pread(n * CS, 0) == bytes(want)
        assert sum(batches) - before <= 10, batches  # paths and leaves; 40 blobs before


def test_fsck_reports_a_damaged_metadata_node_as_r1_and_does_not_crash(rados_pools, tmp_path):
    url = rados_pools.url(workdir=str(tmp_path / "wd"))
    with ebsengine.Engine(url) as eng:
        v = eng.create_volume(1).id
        with eng.open_volume(v) as dev:
            dev.pwrite(os.urandom(CS), 0)
        be = backend(eng)
        tree = be.trees()[b"maps"]
        name = NODE_PREFIX + next(tree.node_ids()).hex()  # a live node of the block maps
        raw = bytearray(be.conn.meta.read(name) or b"")
        raw[len(raw) // 2] ^= 0x01
        be.conn.meta.put_many([(name, bytes(raw))])
        be._cache.clear()
        report = eng.fsck()
    assert not report.ok
    assert any(p.startswith("R1:") and name[len(NODE_PREFIX):] in p for p in report.problems)


@LAYOUTS
def test_deleted_chunks_and_freed_nodes_go_after_the_grace(rados_pools, tmp_path, pack):
    url = rados_pools.url(workdir=str(tmp_path / "wd"), grace=1, pack=pack)
    with ebsengine.Engine(url) as eng:
        be = backend(eng)
        v = eng.create_volume(1).id
        with eng.open_volume(v) as dev:
            dev.pwrite(os.urandom(4 * CS), 0)
        assert len(stored_chunks(be.conn.data)) == 4
        eng.delete_volume(v)
        # within the grace the objects stay (a reader elsewhere may still read them) ...
        assert len(stored_chunks(be.conn.data)) == 4
        deadline = time.monotonic() + 20
        while objects(be.conn.data, "") and time.monotonic() < deadline:
            time.sleep(0.2)  # ... then the store's own sweeps remove them (a pack: a grace later)
        assert objects(be.conn.data, "") == set()
        while be.pending_free() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert be.pending_free() == 0
        report = eng.fsck()
        assert report.ok, report.problems
        assert objects(be.conn.meta, NODE_PREFIX) == reachable(be)  # nothing unreachable stays


def test_orphan_nodes_of_a_commit_that_never_happened_are_swept(rados_pools, tmp_path):
    url = rados_pools.url(workdir=str(tmp_path / "wd"), grace=0)
    with ebsengine.Engine(url) as eng:
        be = backend(eng)
        eng.create_volume(1)
        orphan = NODE_PREFIX + "ab" * 12
        be.conn.meta.put_many([(orphan, b"left by a writer that died before its root write")])
        time.sleep(1.1)  # RADOS keeps whole seconds of mtime
        be.sweep_orphan_nodes()  # (the store's own sweeper may have been first)
        left = objects(be.conn.meta, NODE_PREFIX)
        assert orphan not in left
        assert reachable(be) <= left  # every node a tree reaches is still there
        assert eng.fsck().ok


def two_front_ends(rados_pools, tmp_path, **opts):
    """Two engines on one store (their own local directories), writer lock of 1 s."""
    opts = {"grace": 0, **opts}

    def url(wd: str) -> str:
        return rados_pools.url(workdir=str(tmp_path / wd), lease=1, **opts)
    return ebsengine.Engine(url("a")), ebsengine.Engine(url("b"))


def until(done, timeout: float = 20.0) -> None:
    """Call ``done`` until it returns true; a sweep refused because its lock was half spent
    (StoreLocked, nothing removed: a slow moment of a loaded machine) is tried again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if done():
                return
        except StoreLocked:
            pass
        assert time.monotonic() < deadline, "not done in time"
        time.sleep(0.1)


def fsck_clean(*engines: ebsengine.Engine) -> None:
    for eng in engines:
        report = eng.fsck()
        assert report.ok, report.problems


def refused_and_clean(outcome: list, monkeypatch, *engines: ebsengine.Engine) -> None:
    """The stalled writer's commit was refused (StoreLocked), and, the test's patches
    undone, every front end's fsck is clean."""
    assert len(outcome) == 1 and isinstance(outcome[0], StoreLocked), outcome
    monkeypatch.undo()
    fsck_clean(*engines)


def no_frees_due(eng: ebsengine.Engine) -> None:
    """Remove the freed nodes that are due now, so that a later commit with no table change
    writes no root (removing them would change the root's version by itself)."""
    be = backend(eng)
    be.collect()
    assert be.pending_free() == 0


@LAYOUTS
def test_a_writer_that_stalled_past_its_lock_cannot_commit_packs_a_sweep_removed(
        rados_pools, tmp_path, pack):
    """Front end a writes chunk objects in a write transaction, then stalls past its writer
    lock and the grace; b's orphan sweep removes them. a's commit must fail rather than
    index objects that are gone (the sweep changes no table: only its fence stops a)."""
    a, b = two_front_ends(rados_pools, tmp_path, pack=pack and 1)
    with a, b:
        data = backend(a).conn.data
        before = objects(data, "")
        items = [(L.chunk_key(os.urandom(16), 0), os.urandom(300_000)) for _ in range(5)]
        no_frees_due(b)
        cm = a._store.write()
        txn = cm.__enter__()
        a._chunks.backend.put_many(txn, items)  # packed: the first 1 MiB goes out at once
        deadline = time.monotonic() + 10
        while not objects(data, "") - before and time.monotonic() < deadline:
            time.sleep(0.05)
        written = objects(data, "") - before
        assert written
        time.sleep(2.2)  # past a's lock (1 s) and the grace (0; RADOS keeps whole seconds)
        until(lambda: b._chunks.backend.sweep_orphans(grace=0) >= 0 and
              not written & objects(data, ""))  # (b's own sweeper may have been first)
        with pytest.raises(StoreLocked, match="not committed"):
            cm.__exit__(None, None, None)
        fsck_clean(a, b)


def test_a_writer_that_stalled_cannot_commit_a_revival_between_a_sweeps_removal_and_commit(
        rados_pools, tmp_path, monkeypatch):
    """A chunk alone is past its grace; front end a, stalled past its lock, has revived it
    (rewritten its object, dropped its gc entry) in an open transaction. b's sweep removes
    the object before its own commit: a's commit landing in between must fail, or the
    index would name a removed object."""
    from ebsengine.storage.rados_chunks import object_name
    a, b = two_front_ends(rados_pools, tmp_path, pack=0, grace=2)
    with a, b:
        rc_a = a._chunks.backend
        k, value = L.chunk_key(os.urandom(16), 0), os.urandom(5000)
        with a._store.write() as txn:
            rc_a.put_many(txn, [(k, value)])
        with a._store.write() as txn:
            rc_a.delete_many(txn, [k])  # into gc, due in 2 s
        revived, commit, done = threading.Event(), threading.Event(), threading.Event()
        outcome: list[BaseException | None] = []

        def stalled_writer() -> None:
            try:
                with a._store.write() as txn:
                    rc_a.put_many(txn, [(k, value)])  # the revival: rewrites the object
                    revived.set()
                    commit.wait(30)  # stalls past its lock; commits when told
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                outcome.append(exc)
            done.set()

        data = backend(b).conn.data
        remove = data.remove_many

        def removing(names, **kw):
            n = remove(names, **kw)
            if object_name(k) in names and not commit.is_set():
                commit.set()  # a's commit lands between b's removal and b's commit
                done.wait(30)
            return n

        monkeypatch.setattr(data, "remove_many", removing)  # (b's own sweeper too)
        writer = threading.Thread(target=stalled_writer)
        writer.start()
        assert revived.wait(30)
        time.sleep(2.5)  # past a's lock (1 s) and k's deadline
        try:  # (b's own sweeper may be the one that removes it)
            until(lambda: b._chunks.backend.sweep() >= 0 and commit.is_set())
        finally:
            commit.set()
            writer.join(30)
        refused_and_clean(outcome, monkeypatch, a, b)


def test_a_writer_that_stalled_before_its_root_write_cannot_publish_swept_nodes(
        rados_pools, tmp_path, monkeypatch):
    a, b = two_front_ends(rados_pools, tmp_path)
    with a, b:
        be = backend(a)
        table = be.open_db(b"scratch")
        entered, go = threading.Event(), threading.Event()
        swap = be.pool.cas_write_version

        def stalled(*args, **kw):
            if threading.current_thread().name == "stalled-writer":
                entered.set()
                go.wait(30)
            return swap(*args, **kw)

        monkeypatch.setattr(be.pool, "cas_write_version", stalled)
        failed: list[BaseException] = []

        def write() -> None:
            try:
                with a._store.write() as txn:
                    for i in range(200):
                        txn.put(b"k%04d" % i, os.urandom(200), db=table)
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                failed.append(exc)

        no_frees_due(b)
        before = objects(be.conn.meta, NODE_PREFIX)
        t = threading.Thread(target=write, name="stalled-writer")
        t.start()
        assert entered.wait(30)  # its nodes are written, its root write waits
        written = objects(be.conn.meta, NODE_PREFIX) - before
        assert written
        time.sleep(2.2)
        until(lambda: backend(b).sweep_orphan_nodes(grace=0) >= 0 and
              not written & objects(be.conn.meta, NODE_PREFIX))
        go.set()
        t.join(30)
        refused_and_clean(failed, monkeypatch, a, b)
        with a._store.read() as txn:
            assert txn.get(b"k0000", db=table) is None


def test_a_deleted_volume_leaves_no_lease_object_behind(rados_pools, tmp_path):
    from ebsengine.storage.rados_kv import LEASE_PREFIX
    url = rados_pools.url(workdir=str(tmp_path / "wd"))
    with ebsengine.Engine(url) as eng:
        be = backend(eng)
        kept, served, idle = (eng.create_volume(1).id for _ in range(3))
        with eng.open_volume(served) as dev:
            dev.pwrite(b"s" * CS, 0)
        eng.create_snapshot(idle)  # leased for the snapshot, then released
        with eng.open_volume(kept) as dev:
            dev.pwrite(b"k" * CS, 0)
        leases = objects(be.conn.meta, LEASE_PREFIX)
        assert {LEASE_PREFIX + v for v in (kept, served, idle)} <= leases
        eng.delete_volume(served)  # the deletion's own claim is the last one
        eng.delete_volume(idle)
        assert objects(be.conn.meta, LEASE_PREFIX) == leases - {LEASE_PREFIX + served,
                                                                LEASE_PREFIX + idle}
        dev = eng.open_volume(kept)  # a volume still open when another front end...
        with pytest.raises(ebsengine.errors.VolumeInUse):
            eng.delete_volume(kept)  # ...may not be deleted: its lease object stays
        dev.close()
        assert LEASE_PREFIX + kept in objects(be.conn.meta, LEASE_PREFIX)
        assert eng.fsck().ok


def test_compaction_gives_back_the_space_of_deleted_chunks_and_snapshots_read_the_same(
        rados_pools, tmp_path):
    """Eight chunks written back together share one pack; trimming six leaves it mostly
    dead, and the store's own background sweep compacts it: the volume and its snapshot read
    the same bytes, fsck is clean, and the data pool holds each live chunk once."""
    url = rados_pools.url(workdir=str(tmp_path / "wd"), grace=1)
    keep = os.urandom(2 * CS)
    with ebsengine.Engine(url) as eng:
        be = backend(eng)
        v = eng.create_volume(1).id
        with eng.open_volume(v) as dev:
            dev.pwrite(keep + os.urandom(6 * CS), 0)
            dev.flush()  # one write-back, one transaction, one pack
            (first,) = objects(be.conn.data, PACK_PREFIX)
            dev.trim(2 * CS, 6 * CS)
            dev.flush()
        snap = eng.create_snapshot(v).id
        deadline = time.monotonic() + 30
        while first in objects(be.conn.data, PACK_PREFIX) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first not in objects(be.conn.data, PACK_PREFIX)
        assert len(stored_chunks(be.conn.data)) == 2  # the six dead went with their pack
        with eng.open_volume(v) as dev:
            assert dev.pread(8 * CS, 0) == keep + bytes(6 * CS)
        with eng.open_snapshot(snap) as ro:
            assert ro.pread(2 * CS, 0) == keep
        report = eng.fsck()
        assert report.ok, report.problems
