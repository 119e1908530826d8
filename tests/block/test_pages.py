"""The 4 KiB write path (issue 7): page sets in the cache, patches in the store, the folder,
the decoded-chunk cache, restore depth and the dirty bound, through the library API."""

from __future__ import annotations

import random
import threading
import time

from block_support import CallCounter, eng  # noqa: F401  (eng: a fixture)

import ebsengine
from conftest import sha_bytes
from ebsengine import layout as L
from ebsengine.block import folder as foldermod

CS = L.CHUNK_SIZE
PS = L.PAGE_SIZE
BS = L.BLOCK_SIZE




def stats(e: ebsengine.Engine) -> dict[str, int]:
    report = e.fsck()
    assert report.ok, report.problems
    return report.stats


def test_aligned_page_write_reads_and_decompresses_nothing(eng, monkeypatch) -> None:
    vol = eng.create_volume(size_gib=1)
    image = bytearray(sha_bytes("img", 16 * CS))
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(image, 0)
    eng._ctx.cache.clear()
    dec = CallCounter(monkeypatch, "decode_chunk")
    rng = random.Random(1)
    with eng.open_volume(vol.id) as dev:
        for _ in range(200):
            off = rng.randrange(16 * CS // PS) * PS
            n = PS * rng.choice((1, 2, 3))
            n = min(n, 16 * CS - off)
            data = rng.randbytes(n)
            dev.pwrite(data, off)
            image[off:off + n] = data
            if rng.random() < 0.1:
                dev.flush()
        dev.flush()
        assert dec.n == 0  # neither the writes nor their flushes decompressed a chunk
        assert dev.pread(16 * CS, 0) == image
    st = stats(eng)
    assert st["patches"] > 0


def test_sub_page_write_reads_one_page_once(eng, monkeypatch) -> None:
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(sha_bytes("c", CS), 0)
    eng._ctx.cache.clear()
    dec = CallCounter(monkeypatch, "decode_chunk")
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"x" * 100, 5000)  # needs its base page: one decode of the chunk
        dev.pwrite(b"y" * 100, 5200)  # same page, now cached: nothing more
        dev.flush()
        assert dec.n == 1
        want = bytearray(sha_bytes("c", CS))
        want[5000:5100] = b"x" * 100
        want[5200:5300] = b"y" * 100
        assert dev.pread(CS, 0) == want


def test_unaligned_writes_across_chunk_borders(eng) -> None:
    """Sub-page, page-aligned and unaligned writes straddling chunk borders, with flushes,
    snapshots and folds in between, against a bytearray."""
    size = 8 * CS
    vol = eng.create_volume(size_gib=1)
    model = bytearray(size)
    snaps: list[tuple[str, bytes]] = []
    rng = random.Random(7)
    with eng.open_volume(vol.id) as dev:
        for step in range(300):
            kind = rng.random()
            if kind < 0.3:
                off = rng.randrange(1, 8) * CS - rng.randrange(1, 3 * PS)
                n = rng.randrange(1, 4 * PS)
            elif kind < 0.6:
                off = rng.randrange(size // PS) * PS
                n = rng.randrange(1, 20) * PS
            else:
                off = rng.randrange(size)
                n = rng.randrange(1, 3 * PS)
            n = min(n, size - off)
            if rng.random() < 0.1:
                dev.trim(off, n)
                model[off:off + n] = bytes(n)
            else:
                data = rng.randbytes(n) if rng.random() < 0.7 else bytes([step % 251 + 1]) * n
                dev.pwrite(data, off)
                model[off:off + n] = data
            r = rng.random()
            if r < 0.08:
                dev.flush()
            elif r < 0.12:
                snaps.append((eng.create_snapshot(vol.id).id, bytes(model)))
            elif r < 0.14:
                eng.fold()
            if step % 50 == 0:
                assert dev.pread(size, 0) == model
        assert dev.pread(size, 0) == model
    for sid, want in snaps:
        with eng.open_snapshot(sid) as ro:
            assert ro.pread(size, 0) == want
    stats(eng)
    eng.fold()
    assert stats(eng).get("patches", 0) == 0
    with eng.open_volume(vol.id) as dev:
        assert dev.pread(size, 0) == model
    for sid, want in snaps:
        with eng.open_snapshot(sid) as ro:
            assert ro.pread(size, 0) == want


def test_snapshot_freezes_patch_and_delete_frees_it(eng) -> None:
    vol = eng.create_volume(size_gib=1)
    base = sha_bytes("base", CS)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(base, 0)
        dev.flush()
        dev.pwrite(b"A" * PS, PS)
        s1 = eng.create_snapshot(vol.id)  # freezes a patch over the base chunk
        dev.pwrite(b"B" * PS, 3 * PS)  # a new head patch: union of s1's pages and this one
        s2 = eng.create_snapshot(vol.id)
        dev.pwrite(b"C" * 10, 3 * PS + 5)
        dev.flush()
    v1 = bytearray(base)
    v1[PS:2 * PS] = b"A" * PS
    v2 = bytearray(v1)
    v2[3 * PS:4 * PS] = b"B" * PS
    v3 = bytearray(v2)
    v3[3 * PS + 5:3 * PS + 15] = b"C" * 10
    assert stats(eng)["patches"] == 3
    assert stats(eng)["chunks"] == 1  # only the base: pages are not chunks
    assert eng.list_changed_blocks(s1.id, s2.id) == [0]
    for sid, want in ((s1.id, v1), (s2.id, v2)):
        with eng.open_snapshot(sid) as ro:
            assert ro.pread(CS, 0) == want
    eng.delete_snapshot(s1.id)
    assert stats(eng)["patches"] == 2
    with eng.open_snapshot(s2.id) as ro:
        assert ro.pread(CS, 0) == v2
    eng.delete_snapshot(s2.id)
    assert stats(eng)["patches"] == 1
    restored = eng.create_volume(snapshot_id=eng.create_snapshot(vol.id).id)
    with eng.open_volume(restored.id) as dev:
        assert dev.pread(CS, 0) == v3
    eng.delete_volume(vol.id)
    eng.fold()
    st = stats(eng)
    assert st.get("patches", 0) == 0 and st["chunks"] == 1  # v3 only: the base was freed
    with eng.open_volume(restored.id) as dev:
        assert dev.pread(CS, 0) == v3


def test_rewriting_same_bytes_is_not_a_changed_block(eng) -> None:
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(sha_bytes("x", 2 * CS), 0)
        a = eng.create_snapshot(vol.id)
        dev.pwrite(sha_bytes("x", 2 * CS)[PS:2 * PS], PS)  # same bytes as a patch
        dev.pwrite(b"new", 9 * BS + 10)
        b = eng.create_snapshot(vol.id)
    assert eng.list_changed_blocks(a.id, b.id) == [9]


def test_background_folder_folds_when_quiet(store_path, monkeypatch) -> None:
    monkeypatch.setattr(foldermod, "QUIET", 0.2)
    monkeypatch.setattr(foldermod, "INTERVAL", 0.1)
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(size_gib=1)
        with e.open_volume(vol.id) as dev:
            for i in range(40):
                dev.pwrite(sha_bytes(f"p{i}", PS), i * CS + (i % 16) * PS)
            dev.flush()
            want = dev.pread(40 * CS, 0)
        deadline = time.monotonic() + 30
        while e._folder.folded < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        st = stats(e)
        assert st.get("patches", 0) == 0 and st["chunks"] == 40
        with e.open_volume(vol.id) as dev:
            assert dev.pread(40 * CS, 0) == want


def test_fold_racing_writes_keeps_every_byte(eng) -> None:
    """The folder replaces an entry only if it is unchanged; writers keep going."""
    vol = eng.create_volume(size_gib=1)
    size = 32 * CS
    model = bytearray(size)
    stop = threading.Event()
    errors: list[BaseException] = []

    def folding() -> None:
        try:
            while not stop.is_set():
                eng._folder.fold_all()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=folding)
    t.start()
    rng = random.Random(3)
    try:
        with eng.open_volume(vol.id) as dev:
            for step in range(400):
                off = rng.randrange(size // PS) * PS
                data = rng.randbytes(PS)
                dev.pwrite(data, off)
                model[off:off + PS] = data
                if step % 10 == 0:
                    dev.flush()
            dev.flush()
    finally:
        stop.set()
        t.join()
    assert not errors
    with eng.open_volume(vol.id) as dev:
        assert dev.pread(size, 0) == model
    stats(eng)


def test_decoded_chunk_cache_bounded_and_used(eng) -> None:
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"".join(sha_bytes(f"k{i}", CS) for i in range(8)), 0)
    cache = eng._ctx.cache
    cache.clear()
    cache.limit = 4 * 2 * CS  # room for about 4 incompressible chunks (stored + decoded)
    with eng.open_volume(vol.id) as dev:
        for _ in range(5):
            assert dev.pread(PS, 3 * CS + PS) == sha_bytes("k3", CS)[PS:2 * PS]
        assert cache.misses == 1 and cache.hits == 4
        dev.pread(8 * CS, 0)
        assert cache.bytes <= cache.limit
        dev.trim(0, 8 * CS)
        dev.flush()
    assert cache.bytes == 0  # freed chunks leave the cache


def test_only_reads_of_parts_of_a_chunk_fill_the_read_cache(eng, monkeypatch) -> None:
    """The cache saves decompressions between reads of parts of one chunk; a read of whole
    chunks (a copy, a scan) decodes each once and evicts nothing."""
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"".join(sha_bytes(f"w{i}", CS) for i in range(8)), 0)
        dev.flush()
        cache = eng._ctx.cache
        cache.clear()
        decodes = CallCounter(monkeypatch, "decode_chunk")
        whole = b"".join(sha_bytes(f"w{i}", CS) for i in range(8))
        assert dev.pread(8 * CS, 0) == whole
        assert decodes.n == 8 and cache.bytes == 0
        for p in range(16):  # a chunk read page by page: decoded once
            assert dev.pread(PS, 2 * CS + p * PS) == sha_bytes("w2", CS)[p * PS:(p + 1) * PS]
        assert decodes.n == 9 and cache.bytes > 0
        assert dev.pread(8 * CS, 0) == whole  # the cached chunk is used, the others decoded
        assert decodes.n == 16


def test_folding_and_exports_leave_the_read_cache_to_reads(eng, tmp_path) -> None:
    """The folder, an export and a snapshot comparison decode chunks too: they use cached
    ones but do not cache what they decode, so a hot set of reads stays cached through a
    fold of many patches."""
    vol = eng.create_volume(size_gib=1)
    hot, cold = range(4), range(4, 24)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"".join(sha_bytes(f"c{i}", CS) for i in range(24)), 0)
        dev.flush()
        for i in cold:  # one page over each cold chunk: 20 patches, each on a stored base
            dev.pwrite(sha_bytes(f"p{i}", PS), i * CS + 5 * PS)
        dev.flush()
    cache = eng._ctx.cache
    cache.clear()
    cache.limit = 6 * 2 * CS  # the hot set (4 chunks) and a little more
    with eng.open_volume(vol.id) as dev:
        for i in hot:
            assert dev.pread(PS, i * CS) == sha_bytes(f"c{i}", CS)[:PS]
        hot_bytes = cache.bytes
        assert eng.fold() == len(cold)  # decodes 20 bases the cache has not got
        snap = eng.create_snapshot(vol.id)
        eng.export(snap.id, tmp_path / "img")
        assert cache.bytes == hot_bytes
        hits = cache.hits
        for i in hot:
            assert dev.pread(PS, i * CS + PS) == sha_bytes(f"c{i}", CS)[PS:2 * PS]
        assert cache.hits == hits + len(hot)
        for i in cold:
            want = bytearray(sha_bytes(f"c{i}", CS))
            want[5 * PS:6 * PS] = sha_bytes(f"p{i}", PS)
            assert dev.pread(CS, i * CS) == want


def test_reads_through_a_deep_restore_chain(eng) -> None:
    """Eight levels of restores, each changing pages and chunks; every level reads right,
    before and after folding (locations cached per volume stay valid)."""
    vol = eng.create_volume(size_gib=1)
    model = bytearray(16 * CS)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(sha_bytes("root", 16 * CS), 0)
    model[:] = sha_bytes("root", 16 * CS)
    levels: list[tuple[str, bytes]] = []
    vid = vol.id
    for depth in range(8):
        with eng.open_volume(vid) as dev:
            dev.pwrite(sha_bytes(f"d{depth}", PS), depth * CS + depth * PS)
            model[depth * CS + depth * PS:depth * CS + (depth + 1) * PS] = sha_bytes(
                f"d{depth}", PS)
            dev.pwrite(sha_bytes(f"c{depth}", CS), (8 + depth) * CS)
            model[(8 + depth) * CS:(9 + depth) * CS] = sha_bytes(f"c{depth}", CS)
        snap = eng.create_snapshot(vid)
        levels.append((snap.id, bytes(model)))
        vid = eng.create_volume(snapshot_id=snap.id).id
    deep = eng.open_volume(vid)
    try:
        for _ in range(2):
            assert deep.pread(16 * CS, 0) == model
            assert deep._src._where  # resolved locations are cached
            eng.fold()
        for sid, want in levels:
            with eng.open_snapshot(sid) as ro:
                assert ro.pread(16 * CS, 0) == want
        deep.pwrite(b"z" * PS, 0)
        model[:PS] = b"z" * PS
        assert deep.pread(16 * CS, 0) == model
    finally:
        deep.close()
    stats(eng)


def test_dirty_and_flushing_stay_under_the_limit(store_path) -> None:
    limit = 2 * 1024 * 1024
    with ebsengine.Engine(store_path, dirty_limit=limit) as e:
        vol = e.create_volume(size_gib=1)
        peak = 0
        stop = threading.Event()
        dev = e.open_volume(vol.id)
        cache = dev._src

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, cache.dirty_bytes + cache.flushing_bytes)
                time.sleep(0.0005)

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(300):
                dev.pwrite(rng.randbytes(CS), rng.randrange(4096) * CS)

        w = threading.Thread(target=watch)
        w.start()
        ts = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stop.set()
        w.join()
        dev.close()
        assert 0 < peak <= limit + 3 * CS  # at most one write per writer beyond the bound
        stats(e)


def test_export_and_usage_read_through_patches(eng, tmp_path) -> None:
    vol = eng.create_volume(size_gib=1)
    model = bytearray(sha_bytes("e", 4 * CS)) + bytes(3 * CS)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(model[:4 * CS], 0)
        dev.flush()
        for off, data in ((PS, b"q" * PS), (CS + 17, b"r" * 300), (6 * CS, b"s" * PS)):
            dev.pwrite(data, off)
            model[off:off + len(data)] = data
    snap = eng.create_snapshot(vol.id)
    assert stats(eng)["patches"] == 3
    out = tmp_path / "out.img"
    assert eng.export(snap.id, out) == 5 * CS
    with open(out, "rb") as f:
        assert f.read(7 * CS) == bytes(model)
    u = eng.usage(snap.id)
    assert u.written_bytes == 5 * CS
    # chunks 2, 3 and three page records: a patch costs its pages (its base was counted
    # where it was written)
    assert 2 * CS < u.stored_bytes <= 2 * CS + 4 * PS
