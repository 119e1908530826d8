"""Regressions for error paths found in review: refusals that must leave no trace, devices
that must not stay "open" after a failed close, the deletion reserve, deletes racing a
flush, imports that must not mix in a snapshot, and whole-device trims."""

from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

import ebsengine
from conftest import discard_unflushable
from ebsengine import layout as L
from ebsengine.errors import InvalidParameterCombination, StoreFull, VolumeNotFound


@pytest.fixture
def store_path(any_store_path: str) -> str:
    """Every test here runs on each storage backend (LMDB and in-memory)."""
    return any_store_path


CS = L.CHUNK_SIZE


def test_write_refused_by_a_full_store_leaves_no_trace(tmp_path):
    with ebsengine.Engine(tmp_path / "s", map_size=8 << 20, dirty_limit=1 << 20) as eng:
        vol = eng.create_volume(size_gib=1)
        dev = eng.open_volume(vol.id)
        rng = random.Random(1)
        for i in range(1000):
            data = rng.randbytes(CS)
            try:
                dev.pwrite(data, i * CS)
            except StoreFull:
                assert dev.pread(CS, i * CS) == bytes(CS)  # refused: not in the volume
                break
        else:
            pytest.fail("the store never filled")
        discard_unflushable(eng)  # the client gives up its unflushable writes
        dev.close()
        assert eng.fsck().ok


def test_failed_close_still_releases_the_volume(tmp_path):
    with ebsengine.Engine(tmp_path / "s", map_size=8 << 20, dirty_limit=1 << 30) as eng:
        vol = eng.create_volume(size_gib=1)
        dev = eng.open_volume(vol.id)
        dev.pwrite(random.Random(2).randbytes(200 * CS), 0)
        with pytest.raises(StoreFull):
            dev.close()
        assert dev.closed
        eng.delete_volume(vol.id)  # not VolumeInUse: the failed close released it
        assert eng.list_volumes() == []
        assert eng.fsck().ok


@pytest.mark.parametrize("chunks", [116, 119, 124])
def test_one_big_commit_cannot_eat_the_deletion_reserve(tmp_path, chunks):
    with ebsengine.Engine(tmp_path / "s", map_size=8 << 20, dirty_limit=1 << 30) as eng:
        vol = eng.create_volume(size_gib=1)
        try:
            with eng.open_volume(vol.id) as dev:
                dev.pwrite(random.Random(chunks).randbytes(chunks * CS), 0)
        except StoreFull:
            pass  # refused as a whole; the volume is empty
        eng.delete_volume(vol.id)  # always possible
        assert eng.fsck().ok


def test_delete_racing_a_flush_is_not_reported_as_corruption(eng, monkeypatch):
    vol = eng.create_volume(size_gib=1)
    dev = eng.open_volume(vol.id)
    dev.pwrite(b"x" * CS, 0)
    cache = eng._caches[vol.id]
    original = cache._commit
    deleted = []

    def slow_commit(items, in_txn):  # the volume disappears between check and commit
        cache.users -= 1
        eng.delete_volume(vol.id)
        deleted.append(True)
        return original(items, in_txn)

    monkeypatch.setattr(cache, "_commit", slow_commit)
    with pytest.raises(VolumeNotFound):
        cache.flush()
    assert deleted and eng.fsck().ok


def test_import_refuses_a_snapshot_base(eng, tmp_path):
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"S" * CS, 0)
    snap = eng.create_snapshot(vol.id)
    img = tmp_path / "img"
    img.write_bytes(bytes(CS) + b"I" * CS)
    with pytest.raises(InvalidParameterCombination):
        eng.import_image(img, snapshot_id=snap.id)
    clone = eng.create_volume(snapshot_id=snap.id)  # the supported way
    eng.import_image(img, volume_id=clone.id)
    with eng.open_volume(clone.id) as dev:
        assert dev.pread(2 * CS, 0) == bytes(CS) + b"I" * CS


def test_whole_device_trim_costs_what_the_device_holds(eng):
    vol = eng.create_volume(size_gib=16384, volume_type="gp3")  # 16 TiB, nearly empty
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"d" * 3 * CS, 5 * L.GIB)
        dev.flush()
        t = time.process_time()
        dev.trim(0, dev.size)
        dev.flush()
        cpu = time.process_time() - t
        assert dev.pread(3 * CS, 5 * L.GIB) == bytes(3 * CS)
        assert len(eng._caches[vol.id].dirty) == 0
    # 2^28 chunks: touching each would take minutes; what it holds takes milliseconds
    assert cpu < 5, cpu
    assert eng.fsck().ok


def test_partial_trims_count_toward_the_flush_limit(tmp_path):
    with ebsengine.Engine(tmp_path / "s", dirty_limit=8 * CS) as eng:
        vol = eng.create_volume(size_gib=1)
        with eng.open_volume(vol.id) as dev:
            dev.pwrite(b"z" * 64 * CS, 0)
            dev.flush()
            for i in range(64):
                dev.trim(i * CS + 100, 10)  # each dirties a whole chunk
            assert eng._caches[vol.id].dirty_bytes <= 9 * CS
            assert dev.pread(10, 100) == bytes(10)


@pytest.mark.needs_tools
def test_a_full_disk_is_reported_as_full_not_corrupt(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    try:
        rng = random.Random(3)
        with ebsengine.Engine(mnt / "s") as eng:
            vol = eng.create_volume(size_gib=1)
            dev = eng.open_volume(vol.id)
            with pytest.raises(StoreFull):
                for i in range(400):
                    dev.pwrite(rng.randbytes(CS), i * CS)
                    dev.flush()
            discard_unflushable(eng)
            dev.close()
        with ebsengine.Engine(mnt / "s") as eng:
            assert eng.fsck().ok
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
