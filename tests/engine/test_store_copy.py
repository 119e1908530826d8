"""``copy_store`` (``engine/storecopy.py`` over ``storage/copy.py``): a whole store copied to
another backend reads identically, holds the same rows and chunks, and passes fsck; a copy
that cannot finish leaves a destination that refuses to open; a refused copy changes
nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ebsengine
from ebsengine import layout as L
from ebsengine.engine import copy_store
from ebsengine.errors import FormatError, IncorrectState, InvalidParameter, StoreLocked, StoreOwned
from ebsengine.storage import copy as copy_mod
from ebsengine.storage.chunks import ChunkStore
from ebsengine.storage.memory import forget
from ebsengine.storage.store import Store

CS = L.CHUNK_SIZE
SPAN = 96 * CS  # every write of populate() falls in the first SPAN bytes


def _write(eng: ebsengine.Engine, vid: str, data: bytes, offset: int) -> None:
    with eng.open_volume(vid) as dev:
        dev.pwrite(data, offset)
        dev.flush()


def populate(path: str) -> None:
    """Volumes and snapshots of every kind the copy must keep: an incremental chain, a
    restored volume reading through its base lineage, an encrypted volume and snapshot,
    patches (4 KiB writes) frozen in snapshots and live at heads, a deleted snapshot."""
    rng = __import__("random").Random(7)
    with ebsengine.Engine(path, map_size=1 << 30) as eng:
        a = eng.create_volume(1, volume_type="gp3", tags={"Name": "a"})
        _write(eng, a.id, rng.randbytes(40 * CS), 0)
        _write(eng, a.id, b"compressible " * 40000, 50 * CS)
        s1 = eng.create_snapshot(a.id, description="first")
        _write(eng, a.id, rng.randbytes(6 * CS), 10 * CS)           # incremental change
        for i in range(12):                                          # patches (4 KiB pages)
            _write(eng, a.id, rng.randbytes(4096), (60 + i) * CS + (i % 16) * 4096)
        eng.create_snapshot(a.id, description="second")              # freezes the patches
        _write(eng, a.id, rng.randbytes(4096), 3 * CS + 8192)        # a patch at the head
        gone = eng.create_snapshot(a.id, description="to delete")
        _write(eng, a.id, rng.randbytes(CS), 80 * CS)
        eng.delete_snapshot(gone.id)
        r = eng.create_volume(snapshot_id=s1.id)                     # base lineage
        _write(eng, r.id, rng.randbytes(4096), 5 * CS)
        _write(eng, r.id, rng.randbytes(2 * CS), 90 * CS)
        eng.create_snapshot(r.id, description="of the restored volume")
        e = eng.create_volume(1, encrypted=True)
        _write(eng, e.id, rng.randbytes(8 * CS), 0)
        _write(eng, e.id, rng.randbytes(4096), 20 * CS + 4096)       # a sealed patch
        es = eng.create_snapshot(e.id)
        eng.create_volume(snapshot_id=es.id)                         # encrypted restore
        eng.service_put("test", "k", {"v": 1})
        with eng._store.read() as txn:
            assert txn.stat(eng._store.db["pages"])["entries"] > 0  # patches not folded yet


def contents(path: str) -> dict[str, str]:
    """Digest of the first SPAN bytes of every volume and snapshot, and their records."""
    out: dict[str, str] = {}
    with ebsengine.Engine(path, readonly=True) as eng:
        for v in eng.list_volumes():
            with eng.open_volume(v.id) as dev:
                out[v.id] = hashlib.sha256(dev.pread(SPAN, 0)).hexdigest()
            out[v.id + "/record"] = repr(v)
        for s in eng.list_snapshots():
            with eng.open_snapshot(s.id) as dev:
                out[s.id] = hashlib.sha256(dev.pread(SPAN, 0)).hexdigest()
            out[s.id + "/record"] = repr(s)
            out[s.id + "/blocks"] = repr(eng.list_snapshot_blocks(s.id))
    return out


def tables(path: str) -> dict[str, dict[bytes, bytes]]:
    """Every row of every table of layout.DBS (``chunks``: the chunk backend's keys and
    stored values, whatever the backend keeps them in)."""
    store = Store(path, readonly=True)
    try:
        out = {name: {k: v for batch in store.scan(store.db[name]) for k, v in batch}
               for name in L.DBS if name != "chunks"}
        out["chunks"] = {k: v for batch in ChunkStore(store).iter_stored() for k, v in batch}
        return out
    finally:
        store.close()


def assert_refuses(path: str, source: str) -> None:
    for readonly in (False, True):
        with pytest.raises(FormatError, match="unfinished copy from") as info:
            Store(path, readonly=readonly).close()
        assert "delete it and copy again" in str(info.value) and source in str(info.value)
    with pytest.raises(FormatError, match="unfinished copy"):
        ebsengine.Engine(path)


@pytest.fixture
def mem_path(request):
    name = f"copy-{os.getpid()}-{request.node.name}"
    yield f"memory://{name}"
    forget(name)


def test_memory_store_copies_to_lmdb_and_reads_identically(mem_path, tmp_path):
    populate(mem_path)
    dst = str(tmp_path / "copy")
    seen: list[tuple[int, int]] = []
    report = copy_store(mem_path, dst, batch=16, chunk_batch=8,
                        progress=lambda d, t: seen.append((d, t)))
    assert report.ok, report.fsck.problems
    assert report.fsck.unverified == []  # the same master key: sealed values were opened
    st = report.stats
    assert st.chunks > 60 and st.rows["pages"] > 0 and st.rows["lineages"] >= 4
    assert st.commits > st.chunks // 8  # bounded batches, not one transaction
    assert seen and seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert tables(dst) == tables(mem_path)
    assert contents(dst) == contents(mem_path)
    with ebsengine.Engine(dst) as eng:  # a normal store: writable, and the chain goes on
        a = next(v for v in eng.list_volumes() if v.tags.get("Name") == "a")
        _write(eng, a.id, b"\x01" * 4096, 0)
        eng.create_snapshot(a.id)
        assert eng.fsck().ok


@pytest.mark.needs_ceph
def test_lmdb_to_rados_to_lmdb_round_trip(tmp_path, rados_pools):
    a = str(tmp_path / "a")
    populate(a)
    rados = rados_pools.url(workdir=str(tmp_path / "wd"))
    back = str(tmp_path / "back")
    to_rados = copy_store(a, rados, batch=64, chunk_batch=16)
    assert to_rados.ok, to_rados.fsck.problems
    to_lmdb = copy_store(rados, back, batch=64, chunk_batch=16)
    assert to_lmdb.ok, to_lmdb.fsck.problems
    assert to_rados.stats.chunks == to_lmdb.stats.chunks > 60
    want = tables(a)
    assert tables(rados) == want  # layout.DBS only: the RADOS-only tables are its own
    assert tables(back) == want
    expected = contents(a)
    assert contents(rados) == expected
    assert contents(back) == expected
    with ebsengine.Engine(rados) as eng:  # opens as a normal RADOS store
        assert eng.fsck().ok
        with eng._store.read() as txn:
            index = txn.stat(eng._store.backend.open_db(b"rados_index", create=False))
        assert index["entries"] == len(want["chunks"])


def test_a_non_empty_destination_is_refused_and_left_as_it_was(mem_path, tmp_path):
    populate(mem_path)
    dst = str(tmp_path / "busy")
    with ebsengine.Engine(dst) as eng:
        eng.create_volume(1)
    before = tables(dst)
    files = {p.name: p.read_bytes() for p in Path(dst).iterdir() if p.name == "data.mdb"}
    with pytest.raises(IncorrectState, match=r"not empty.*nothing was changed"):
        copy_store(mem_path, dst)
    assert tables(dst) == before
    assert {p.name: p.read_bytes() for p in Path(dst).iterdir() if p.name == "data.mdb"} == files
    with pytest.raises(InvalidParameter, match="same store"):
        copy_store(dst, dst + "/")


def test_an_empty_destination_directory_is_fine(mem_path, tmp_path):
    populate(mem_path)
    dst = tmp_path / "empty"
    dst.mkdir()
    assert copy_store(mem_path, str(dst)).ok
    with ebsengine.Engine(str(tmp_path / "fresh")):
        pass  # a store that holds only its format record has data: refused
    with pytest.raises(IncorrectState, match=r"holds data \(meta\)"):
        copy_store(mem_path, str(tmp_path / "fresh"))


DESTINATIONS = ["lmdb", "memory", pytest.param("rados", marks=pytest.mark.needs_ceph)]


@pytest.mark.parametrize("kind", DESTINATIONS)
def test_an_interrupted_copy_leaves_a_destination_that_refuses_to_open(kind, mem_path,
                                                                       tmp_path, request,
                                                                       monkeypatch):
    populate(mem_path)
    if kind == "lmdb":
        dst = str(tmp_path / "half")
    elif kind == "memory":
        dst = f"memory://half-{os.getpid()}"
        request.addfinalizer(lambda: forget(dst[len("memory://"):]))
    else:
        dst = request.getfixturevalue("rados_pools").url(workdir=str(tmp_path / "wd"))
    real, calls = copy_mod.commit, []

    def failing(store):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(5, "injected failure after 5 batches")
        return real(store)

    monkeypatch.setattr(copy_mod, "commit", failing)
    with pytest.raises(OSError, match="injected"):
        copy_store(mem_path, dst, batch=8, chunk_batch=4)
    monkeypatch.setattr(copy_mod, "commit", real)
    assert_refuses(dst, mem_path)
    # a copy into it again is refused too, saying what it is
    with pytest.raises(IncorrectState, match=r"unfinished copy from .*delete it and copy again"):
        copy_store(mem_path, dst)
    # and it cannot be a source either
    with pytest.raises(FormatError, match="unfinished copy"):
        copy_store(dst, str(tmp_path / "third"))


def test_a_source_written_during_the_copy_stops_it(mem_path, tmp_path):
    populate(mem_path)
    dst = str(tmp_path / "moving")
    with ebsengine.Engine(mem_path) as writer:
        vid = writer.list_volumes()[0].id

        def write_once(done: int, total: int) -> None:
            if done > 40 and not getattr(write_once, "fired", False):
                write_once.fired = True  # type: ignore[attr-defined]
                _write(writer, vid, os.urandom(CS), 30 * CS)

        with pytest.raises(StoreLocked, match="changed during the copy"):
            copy_store(mem_path, dst, batch=8, chunk_batch=4, progress=write_once)
    assert_refuses(dst, mem_path)


def test_a_source_owned_by_another_process_is_refused(tmp_path):
    src = str(tmp_path / "served")
    populate(src)
    code = ("import sys, time, ebsengine\n"
            "e = ebsengine.Engine(sys.argv[1]); e.own(); print('owned', flush=True)\n"
            "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, src], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "owned"
        with pytest.raises(StoreOwned, match="is owned by process"):
            copy_store(src, str(tmp_path / "dst"))
        assert not (tmp_path / "dst").exists()  # refused before the destination was touched
    finally:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()
    deadline = time.monotonic() + 10
    while True:  # once it is gone the same copy works
        try:
            assert copy_store(src, str(tmp_path / "dst")).ok
            break
        except StoreOwned:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_copy_needs_no_master_key_and_says_what_its_check_could_not_open(mem_path, tmp_path):
    populate(mem_path)
    dst = str(tmp_path / "nokey")
    report = copy_store(mem_path, dst, master_key=str(tmp_path / "absent.key"))
    assert report.ok, report.fsck.problems  # the structure of sealed values is checked
    assert any("absent.key" in why for why in report.fsck.unverified)
    assert tables(dst) == tables(mem_path)
    assert contents(dst) == contents(mem_path)  # with the right key it all opens
