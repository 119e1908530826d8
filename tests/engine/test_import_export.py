"""Raw image import (the bulk pipeline and the into-a-volume path) and sparse export."""

from __future__ import annotations

import os
import random

import pytest

import ebsengine
from conftest import store_digest
from ebsengine import layout as L
from ebsengine.errors import InvalidParameter, StoreFull

MIB = 1 << 20


def make_image(path, rng: random.Random, size: int) -> bytes:
    """Random extents of data, holes and written zeros; returns the expected content."""
    model = bytearray(size)
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            ln = min(size - pos, rng.choice([4096, 65536, 100_000, 3 * MIB + 5, 17 * MIB]))
            kind = rng.random()
            if kind < 0.5:
                data = rng.randbytes(ln) if kind < 0.3 else (b"text " * (ln // 5 + 1))[:ln]
                f.seek(pos)
                f.write(data)
                model[pos:pos + ln] = data
            elif kind < 0.65:
                f.seek(pos)
                f.write(bytes(ln))
            pos += ln
    return bytes(model)


@pytest.mark.parametrize("size", [40 * MIB + 12345, L.GIB + 3 * MIB])
def test_import_then_export_round_trip(eng, tmp_path, size):
    img = tmp_path / "img.raw"
    model = make_image(img, random.Random(size), size)
    seen = []
    vol = eng.import_image(img, progress=lambda d, t: seen.append((d, t)))
    assert vol.size_gib == -(-size // L.GIB)
    assert seen and seen[-1] == (size, size)
    with eng.open_volume(vol.id) as dev:
        assert dev.pread(size, 0) == model
        assert dev.pread(L.CHUNK_SIZE, dev.size - L.CHUNK_SIZE) == bytes(L.CHUNK_SIZE)
    snap = eng.create_snapshot(vol.id)
    out = tmp_path / "out.raw"
    eng.export(snap.id, out)
    with open(out, "rb") as f:
        assert f.read(size) == model
    assert os.path.getsize(out) == vol.size_gib * L.GIB
    assert eng.fsck().ok


def test_import_into_existing_volume_replaces_its_content(eng, tmp_path):
    img = tmp_path / "img.raw"
    model = make_image(img, random.Random(3), 9 * MIB)
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"old" * 1000, 20 * MIB)
    eng.import_image(img, volume_id=vol.id)
    with eng.open_volume(vol.id) as dev:
        assert dev.pread(len(model), 0) == model
        assert dev.pread(3000, 20 * MIB) == bytes(3000)
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        f.truncate(2 * L.GIB)
    before = store_digest(eng)
    with pytest.raises(InvalidParameter):
        eng.import_image(big, volume_id=vol.id)
    assert store_digest(eng) == before


def test_failed_import_leaves_no_volume_behind(tmp_path):
    img = tmp_path / "img.raw"
    with open(img, "wb") as f:
        f.write(random.Random(1).randbytes(48 * MIB))
    with ebsengine.Engine(tmp_path / "store", map_size=16 * MIB) as eng:
        keep = eng.create_volume(size_gib=1)
        with pytest.raises(StoreFull):
            eng.import_image(img)
        assert [v.id for v in eng.list_volumes()] == [keep.id]
        report = eng.fsck()
        assert report.ok, report.problems
        assert report.stats.get("chunks", 0) == 0
