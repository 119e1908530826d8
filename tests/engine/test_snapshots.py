"""Snapshot semantics through the library API: point in time, incremental, delete keeps the
rest (DESIGN invariants 2-4 and 8), block listings in the EBS API's 512 KiB unit."""

from __future__ import annotations

import random

import pytest

import ebsengine
from ebsengine import layout as L
from ebsengine.errors import IncorrectState, InvalidParameter, SnapshotNotFound, UnrelatedSnapshots


@pytest.fixture
def store_path(any_store_path: str) -> str:
    """Every test here runs on each storage backend (LMDB and in-memory)."""
    return any_store_path


CS = L.CHUNK_SIZE
BS = L.BLOCK_SIZE


def build_chain(eng, n: int, seed: int = 1):
    """A volume with ``n`` snapshots, each after scattered random changes; returns the
    volume id, the snapshot ids and the expected bytes of every snapshot's first 8 MiB."""
    rng = random.Random(seed)
    vol = eng.create_volume(size_gib=1, volume_type="gp3")
    model = bytearray(8 << 20)
    snaps, images = [], []
    with eng.open_volume(vol.id) as dev:
        for _ in range(n):
            for _ in range(6):
                off = rng.randrange(0, len(model) - 200_000)
                ln = rng.choice([1, 511, 4096, CS, 3 * CS + 7, 150_000])
                data = rng.randbytes(ln) if rng.random() < 0.8 else bytes(ln)
                dev.pwrite(data, off)
                model[off:off + ln] = data
            snaps.append(eng.create_snapshot(vol.id).id)
            images.append(bytes(model))
    return vol.id, snaps, images


def read_snap(eng, sid: str, n: int) -> bytes:
    with eng.open_snapshot(sid) as ro:
        return ro.pread(n, 0)


@pytest.mark.parametrize("victim", [0, 2, 4], ids=["first", "middle", "last"])
def test_delete_any_snapshot_keeps_every_other_byte(eng, victim):
    vid, snaps, images = build_chain(eng, 5)
    restored = eng.create_volume(snapshot_id=snaps[3])
    eng.delete_snapshot(snaps[victim])
    for i, sid in enumerate(snaps):
        if i == victim:
            with pytest.raises(SnapshotNotFound):
                eng.open_snapshot(sid)
            continue
        assert read_snap(eng, sid, len(images[i])) == images[i]
    with eng.open_volume(vid) as dev:
        assert dev.pread(len(images[-1]), 0) == images[-1]
    with eng.open_volume(restored.id) as dev:
        assert dev.pread(len(images[3]), 0) == images[3]
    assert eng.fsck().ok


def test_delete_all_snapshots_and_volumes_frees_everything(eng):
    vid, snaps, _ = build_chain(eng, 4)
    clone = eng.create_volume(snapshot_id=snaps[1], size_gib=2)
    for sid in reversed(snaps):
        eng.delete_snapshot(sid)
        assert eng.fsck().ok
    eng.delete_volume(vid)
    eng.delete_volume(clone.id)
    report = eng.fsck()
    assert report.ok, report.problems
    assert report.stats.get("chunks", 0) == 0 and report.stats.get("map_entries", 0) == 0


def test_snapshot_is_point_in_time_and_unchanged_by_later_writes(eng):
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"a" * 10_000, 1000)   # acknowledged, not flushed: still in the snapshot
        snap = eng.create_snapshot(vol.id)
        dev.pwrite(b"b" * 10_000, 1000)
        dev.trim(0, CS * 4)
        assert dev.pread(10, 1000) == bytes(10)
    assert read_snap(eng, snap.id, 11_000)[1000:11_000] == b"a" * 10_000


def test_incremental_snapshot_records_only_changes(eng):
    vol = eng.create_volume(size_gib=1)
    rng = random.Random(3)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(rng.randbytes(32 * CS), 0)
        full = eng.create_snapshot(vol.id)
        dev.pwrite(rng.randbytes(CS), 5 * CS)
        dev.pwrite(rng.randbytes(10), 20 * CS + 3)
        inc = eng.create_snapshot(vol.id)
    u_full, u_inc = eng.usage(full.id), eng.usage(inc.id)
    assert u_full.stored_bytes >= 32 * CS           # random data is stored raw
    # the changed chunk, and the one 4 KiB page the 10-byte write touched (a patch)
    assert CS + 4096 <= u_inc.stored_bytes < CS + 2 * 4096
    assert u_inc.written_bytes == 32 * CS
    assert inc.parent_id == full.id
    assert eng.get_snapshot(inc.id).full_size_bytes == 32 * CS
    assert eng.list_changed_blocks(full.id, inc.id) == [5 * CS // BS, 20 * CS // BS]
    assert eng.list_changed_blocks(None, inc.id) == eng.list_snapshot_blocks(inc.id)
    assert eng.list_snapshot_blocks(inc.id) == list(range(32 * CS // BS))
    assert eng.list_snapshot_blocks(inc.id, start_block=2) == [2, 3]


def test_same_bytes_stored_once_and_zeros_not_at_all(eng):
    data = random.Random(5).randbytes(CS) * 4
    a = eng.create_volume(size_gib=1)
    b = eng.create_volume(size_gib=1)
    for vid in (a.id, b.id):
        with eng.open_volume(vid) as dev:
            dev.pwrite(data, CS * 10)
            dev.pwrite(bytes(CS * 8), CS * 100)
    stats = eng.fsck().stats
    assert stats["chunks"] == 1
    with eng.open_volume(a.id) as dev:
        assert dev.extents(CS * 100, CS * 8) == [(CS * 8, 3)]


def test_restore_is_lazy_larger_and_independent(eng):
    _, snaps, images = build_chain(eng, 2)
    chunks_before = eng.fsck().stats["chunks"]
    clone = eng.create_volume(snapshot_id=snaps[0], size_gib=3, volume_type="gp3")
    assert eng.fsck().stats["chunks"] == chunks_before   # O(1): nothing copied
    with eng.open_volume(clone.id) as dev:
        assert dev.size == 3 * L.GIB
        assert dev.pread(len(images[0]), 0) == images[0]
        dev.pwrite(b"z" * 100, 0)
        dev.pwrite(b"end", 3 * L.GIB - 3)
    assert read_snap(eng, snaps[0], len(images[0])) == images[0]
    with pytest.raises(InvalidParameter):
        eng.create_volume(snapshot_id=snaps[0], size_gib=0)
    s_clone = eng.create_snapshot(clone.id)
    assert s_clone.parent_id == snaps[0]
    assert eng.list_changed_blocks(snaps[0], s_clone.id) == [0, 3 * L.GIB // BS - 1]
    with pytest.raises(InvalidParameter) as exc:
        eng.list_changed_blocks(snaps[1], s_clone.id)
    assert isinstance(exc.value, UnrelatedSnapshots)


def test_direct_api_snapshot_roundtrip(eng):
    rng = random.Random(9)
    blocks = {0: rng.randbytes(BS), 7: rng.randbytes(BS), 2047: b"q" * BS}
    s = eng.start_snapshot(1, description="direct")
    assert s.state == "pending"
    with pytest.raises(IncorrectState):
        eng.open_snapshot(s.id)
    for i, data in blocks.items():
        eng.put_snapshot_block(s.id, i, data)
    with pytest.raises(InvalidParameter):
        eng.put_snapshot_block(s.id, 2048, bytes(BS))
    done = eng.complete_snapshot(s.id)
    assert done.state == "completed" and done.full_size_bytes == 3 * BS
    assert eng.list_snapshot_blocks(s.id) == [0, 7, 2047]
    for i, data in blocks.items():
        assert eng.read_snapshot_block(s.id, i) == data
    child = eng.start_snapshot(2, parent_snapshot_id=s.id)
    eng.put_snapshot_block(child.id, 7, bytes(BS))
    eng.put_snapshot_block(child.id, 3000, blocks[0])
    eng.complete_snapshot(child.id)
    assert eng.list_snapshot_blocks(child.id) == [0, 2047, 3000]
    assert eng.list_changed_blocks(s.id, child.id) == [7, 3000]
    vol = eng.create_volume(snapshot_id=child.id)
    with eng.open_volume(vol.id) as dev:
        assert dev.pread(BS, 3000 * BS) == blocks[0]
        assert dev.pread(BS, 7 * BS) == bytes(BS)
    eng.delete_snapshot(s.id)
    assert eng.read_snapshot_block(child.id, 2047) == blocks[2047]
    assert eng.fsck().ok


def test_copy_snapshot_shares_data(eng):
    vid, snaps, images = build_chain(eng, 1)
    before = eng.fsck().stats["chunks"]
    cp = eng.copy_snapshot(snaps[0], description="copy")
    eng.delete_snapshot(snaps[0])
    eng.delete_volume(vid)
    assert read_snap(eng, cp.id, len(images[0])) == images[0]
    assert eng.fsck().stats["chunks"] <= before


def test_engine_reopen_keeps_everything(store_path):
    with ebsengine.Engine(store_path) as eng:
        vid, snaps, images = build_chain(eng, 3)
    with ebsengine.Engine(store_path) as eng:
        for sid, img in zip(snaps, images, strict=True):
            assert read_snap(eng, sid, len(img)) == img
        with eng.open_volume(vid) as dev:
            assert dev.pread(len(images[-1]), 0) == images[-1]
        assert eng.fsck().ok


def test_concurrent_block_puts_share_commits_and_fail_alone(eng):
    """Group commit: parallel puts all land; a refused put (bad index) fails only itself and
    leaves no trace; checksums ride along until completion."""
    import threading

    snap = eng.start_snapshot(1)
    rng = random.Random(4)
    blocks = {i: rng.randbytes(BS) for i in range(0, 64, 2)}
    errors: list[Exception] = []

    def put(items):
        for i, data in items:
            try:
                eng.put_snapshot_block(snap.id, i, data, checksum=f"sum-{i}")
            except Exception as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)

    work = [*blocks.items(), (5000, bytes(BS))]
    threads = [threading.Thread(target=put, args=(work[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], InvalidParameter)
    assert eng.snapshot_block_checksums(snap.id) == {i: f"sum-{i}" for i in blocks}
    eng.complete_snapshot(snap.id)
    assert eng.snapshot_block_checksums(snap.id) == {}
    assert eng.list_snapshot_blocks(snap.id) == sorted(blocks)
    for i, data in blocks.items():
        assert eng.read_snapshot_block(snap.id, i) == data
    assert eng.fsck().ok
