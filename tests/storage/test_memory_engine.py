"""The engine runs on the in-memory backend through the library API: ``Engine("memory://")``,
named reopenable stores, and ``Engine(backend=...)``."""

from __future__ import annotations

import hashlib

import pytest

import ebsengine
from ebsengine import layout as L
from ebsengine.errors import InvalidParameterCombination, StoreFull
from ebsengine.storage.lmdb_env import LmdbBackend
from ebsengine.storage.memory import MemoryBackend, forget

CS = L.CHUNK_SIZE


def roundtrip(eng: ebsengine.Engine) -> None:
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"a" * (3 * CS + 5), 100)
        snap = eng.create_snapshot(vol.id)
        dev.pwrite(b"b" * 10, 100)
    with eng.open_snapshot(snap.id) as ro:
        assert ro.pread(4, 100) == b"aaaa"
    with eng.open_volume(vol.id) as dev:
        assert dev.pread(4, 100) == b"bbbb"
    assert eng.list_snapshot_blocks(snap.id) == [0]
    assert eng.fsck().ok


def test_memory_url_is_a_fresh_private_store_each_time(tmp_path):
    with ebsengine.Engine("memory://") as eng:
        roundtrip(eng)
        assert eng.path == "memory://"
    with ebsengine.Engine("memory://") as eng:
        assert eng.list_volumes() == []
    assert not any(tmp_path.iterdir())  # nothing written to disk


def test_named_memory_store_survives_close_and_reopen():
    try:
        with ebsengine.Engine("memory://named-test") as eng:
            vol = eng.create_volume(size_gib=1).id
            with eng.open_volume(vol) as dev:
                dev.pwrite(b"kept", 0)
        with ebsengine.Engine("memory://named-test") as eng:
            with eng.open_volume(vol) as dev:
                assert dev.pread(4, 0) == b"kept"
            assert eng.fsck().ok
    finally:
        forget("named-test")
    with ebsengine.Engine("memory://named-test") as eng:
        assert eng.list_volumes() == []
    forget("named-test")


def test_engine_takes_an_opened_backend(tmp_path):
    with ebsengine.Engine(backend=MemoryBackend()) as eng:
        roundtrip(eng)
    with ebsengine.Engine(backend=LmdbBackend(tmp_path / "lmdb")) as eng:
        roundtrip(eng)
    with ebsengine.Engine(tmp_path / "lmdb") as eng:  # the same store, by path
        assert len(eng.list_volumes()) == 1
    with pytest.raises(InvalidParameterCombination):
        ebsengine.Engine(tmp_path / "x", backend=MemoryBackend())


def test_a_small_memory_store_fills_up_and_refuses_cleanly():
    with ebsengine.Engine(backend=MemoryBackend(map_size=4 << 20)) as eng:
        vol = eng.create_volume(size_gib=1).id
        blob = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(CS // 32))
        with eng.open_volume(vol) as dev:
            with pytest.raises(StoreFull):
                for i in range(100):
                    dev.pwrite(bytes([i]) + blob[1:], i * CS)
                    dev.flush()
            for cache in eng._caches.values():  # give up the writes the store cannot take
                cache.dirty.clear()
                cache.dirty_bytes = 0
        assert eng.fsck().ok
        eng.delete_volume(vol)
        assert eng.fsck().stats.get("chunks", 0) == 0
