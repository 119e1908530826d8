"""A trim (or write_zeroes) refused because the store is full leaves the volume exactly as
it was: room is made once, before any of its chunks changes."""

from __future__ import annotations

import os

import pytest

import ebsengine
from ebsengine.errors import StoreFull

CS = 64 * 1024


def test_trim_refused_by_a_full_store_changes_nothing(tmp_path) -> None:
    eng = ebsengine.Engine(tmp_path / "s", map_size=2 << 20, dirty_limit=256 << 10)
    try:
        vol = eng.create_volume(size_gib=1)
        dev = eng.open_volume(vol.id)
        i = 0
        with pytest.raises(StoreFull):  # fill the store: a write refuses once its flush is
            while True:
                dev.pwrite(os.urandom(CS), 16 * CS + i * CS)
                i += 1
        before = dev.pread(3 * CS, 16 * CS)
        try:
            dev.trim(16 * CS + 100, 2 * CS)  # chunk 17 whole, chunks 16 and 18 in part
        except StoreFull:
            assert dev.pread(3 * CS, 16 * CS) == before  # chunk 17 used to read as zeros
        else:
            after = dev.pread(3 * CS, 16 * CS)
            assert after == before[:100] + bytes(2 * CS) + before[100 + 2 * CS:]
        dev.release()
    finally:
        try:
            eng.close()
        except StoreFull:
            pass  # the writes it still holds cannot be flushed into a full store
