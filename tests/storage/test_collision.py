"""DESIGN invariant 5 (no cross-talk): a forced fingerprint collision never lets one volume's
bytes appear in another, and dedup still shares chunks that are truly identical.

``ChunkStore.fingerprints`` is replaced for the whole test (writes, reopen, fsck) by one that
gives every non-zero chunk the same fingerprint, so every stored chunk collides with every
other one and only the byte comparison in ``ChunkStore.find`` keeps them apart.
"""

from __future__ import annotations

import pytest

import ebsengine
from conftest import sha_bytes
from ebsengine import layout as L
from ebsengine.storage.chunks import ChunkStore


@pytest.fixture
def store_path(any_store_path: str) -> str:
    """Every test here runs on each storage backend (LMDB and in-memory)."""
    return any_store_path


CS = L.CHUNK_SIZE
FAKE_FP = bytes.fromhex("c0111de5") * 4  # 16 bytes shared by every non-zero chunk


def _colliding_fingerprints(buf: bytes | bytearray | memoryview,
                            domain: object = None) -> list[bytes | None]:
    """Every non-zero chunk gets FAKE_FP, in every data-key domain too."""
    mv = memoryview(buf).cast("B")
    return [None if not any(mv[i:i + CS]) else FAKE_FP for i in range(0, len(mv), CS)]


@pytest.fixture
def collide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ChunkStore, "fingerprints", staticmethod(_colliding_fingerprints))


pattern = sha_bytes  # deterministic incompressible bytes (conftest)


def stored_keys(eng: ebsengine.Engine) -> list[bytes]:
    """The keys of every stored chunk, from the chunk backend (any backend)."""
    return [k for batch in eng._chunks.backend.iter_all() for k, _ in batch]


def assert_collided(eng: ebsengine.Engine, n: int) -> None:
    """The patch really was in force: ``n`` chunks, all under the one fingerprint, told
    apart only by their collision numbers."""
    keys = stored_keys(eng)
    assert len(keys) == n
    assert all(k[:L.FP_SIZE] == FAKE_FP for k in keys)
    assert sorted(int.from_bytes(k[L.FP_SIZE:], "big") for k in keys) == list(range(n))


def assert_clean(eng: ebsengine.Engine) -> dict[str, int]:
    report = eng.fsck()  # recomputes fingerprints through the patched function
    assert report.ok, report.problems
    return report.stats


def read_all(eng: ebsengine.Engine, vol_or_snap: str, length: int) -> bytes:
    opener = eng.open_volume if vol_or_snap.startswith("vol-") else eng.open_snapshot
    with opener(vol_or_snap) as dev:
        return dev.pread(length, 0)


SPAN = 4 * CS  # the region the tests write


def test_two_volumes_never_read_each_others_bytes(collide: None, store_path: str) -> None:
    a_data = pattern("A", SPAN)
    b_data = pattern("B", SPAN)
    with ebsengine.Engine(store_path) as eng:
        a = eng.create_volume(size_gib=1).id
        b = eng.create_volume(size_gib=1).id
        with eng.open_volume(a) as da, eng.open_volume(b) as db:
            da.pwrite(a_data, 0)
            db.pwrite(b_data, 0)
            assert da.pread(SPAN, 0) == a_data  # from the write-back cache
            assert db.pread(SPAN, 0) == b_data
            da.flush()
            db.flush()
            assert da.pread(SPAN, 0) == a_data  # now from LMDB
            assert db.pread(SPAN, 0) == b_data
        assert_collided(eng, 8)
        snap_a = eng.create_snapshot(a).id
        snap_b = eng.create_snapshot(b).id
        assert_clean(eng)

    with ebsengine.Engine(store_path) as eng:  # reopened, the patch still active
        assert read_all(eng, a, SPAN) == a_data
        assert read_all(eng, b, SPAN) == b_data
        assert read_all(eng, snap_a, SPAN) == a_data
        assert read_all(eng, snap_b, SPAN) == b_data
        ra = eng.create_volume(snapshot_id=snap_a).id
        rb = eng.create_volume(snapshot_id=snap_b).id
        assert read_all(eng, ra, SPAN) == a_data
        assert read_all(eng, rb, SPAN) == b_data
        assert eng.read_snapshot_block(snap_a, 0)[:SPAN] == a_data
        assert eng.read_snapshot_block(snap_b, 0)[:SPAN] == b_data
        assert_collided(eng, 8)
        assert_clean(eng)


def test_partial_overwrites_and_restores_stay_apart(collide: None, store_path: str) -> None:
    """Read-modify-write of colliding chunks, overwrites after a snapshot, restores and
    snapshot deletion: every view keeps exactly its own bytes."""
    base = pattern("base", SPAN)
    with ebsengine.Engine(store_path) as eng:
        a = eng.create_volume(size_gib=1).id
        b = eng.create_volume(size_gib=1).id
        with eng.open_volume(a) as da, eng.open_volume(b) as db:
            da.pwrite(base, 0)
            db.pwrite(base, 0)  # identical bytes: shared, not copied
            da.flush()
            db.flush()
        assert_collided(eng, 4)
        s1 = eng.create_snapshot(a).id

        # Unaligned small writes into colliding chunks: only the touched bytes change.
        model_a = bytearray(base)
        with eng.open_volume(a) as da:
            for k, off in enumerate((5, CS - 3, 2 * CS + 1000, 3 * CS + CS // 2)):
                piece = pattern(f"a-edit-{k}", 777)
                da.pwrite(piece, off)
                model_a[off:off + len(piece)] = piece
            da.flush()
        s2 = eng.create_snapshot(a).id
        model_b = bytearray(base)
        with eng.open_volume(b) as db:
            piece = pattern("b-edit", 3000)
            db.pwrite(piece, CS + 10)
            model_b[CS + 10:CS + 10 + len(piece)] = piece
            db.trim(3 * CS, CS)
            model_b[3 * CS:4 * CS] = bytes(CS)
            db.flush()

        restored = eng.create_volume(snapshot_id=s1).id
        with eng.open_volume(restored) as dr:
            piece = pattern("r-edit", CS)
            dr.pwrite(piece, 2 * CS)  # a whole new chunk colliding with everything
            dr.flush()
        model_r = bytearray(base)
        model_r[2 * CS:3 * CS] = piece

        expect = {a: bytes(model_a), b: bytes(model_b), s1: base, s2: bytes(model_a),
                  restored: bytes(model_r)}
        for rid, want in expect.items():
            assert read_all(eng, rid, SPAN) == want, rid
        assert_clean(eng)

    with ebsengine.Engine(store_path) as eng:
        for rid, want in expect.items():
            assert read_all(eng, rid, SPAN) == want, rid
        eng.delete_snapshot(s1)  # merges into s2; the restored volume pins s1's data
        del expect[s1]
        for rid, want in expect.items():
            assert read_all(eng, rid, SPAN) == want, rid
        eng.delete_volume(b)
        del expect[b]
        for rid, want in expect.items():
            assert read_all(eng, rid, SPAN) == want, rid
        assert_clean(eng)
        assert all(k[:L.FP_SIZE] == FAKE_FP for k in stored_keys(eng))


def test_dedup_still_shares_identical_chunks(collide: None, eng: ebsengine.Engine) -> None:
    x, y, z = pattern("X"), pattern("Y"), pattern("Z")
    a = eng.create_volume(size_gib=1).id
    b = eng.create_volume(size_gib=1).id
    with eng.open_volume(a) as da, eng.open_volume(b) as db:
        da.pwrite(x + y + x, 0)          # X twice inside one volume
        db.pwrite(y + z + x, 5 * CS)     # Y and X again, Z new
        da.flush()
        db.flush()
    stats = assert_clean(eng)
    assert stats["chunks"] == 3
    assert_collided(eng, 3)
    with eng._store.read() as txn:
        refs = sorted(L.read_u64(v) for _, v in txn.cursor(db=eng._store.db["refs"]))
    assert refs == [1, 2, 3]  # Z once, Y twice, X three times
    snap = eng.create_snapshot(a).id
    clone = eng.create_volume(snapshot_id=snap).id
    assert read_all(eng, clone, 3 * CS) == x + y + x
    assert assert_clean(eng)["chunks"] == 3  # snapshot and restore copy nothing
    with eng.open_volume(b) as db:
        assert db.pread(3 * CS, 5 * CS) == y + z + x


def test_direct_api_blocks_collide_safely(collide: None, eng: ebsengine.Engine) -> None:
    """put_snapshot_block fingerprints through the same function: a block colliding with a
    volume's chunks stays its own, and identical chunks are shared."""
    vol = eng.create_volume(size_gib=1).id
    vol_data = pattern("vol", L.BLOCK_SIZE)
    with eng.open_volume(vol) as dev:
        dev.pwrite(vol_data, 0)
        dev.flush()
    block = bytearray(pattern("blk", L.BLOCK_SIZE))
    block[CS:2 * CS] = vol_data[3 * CS:4 * CS]  # one chunk truly equal to the volume's
    block[4 * CS:5 * CS] = bytes(CS)             # one zero chunk: never stored
    snap = eng.start_snapshot(1).id
    eng.put_snapshot_block(snap, 2, bytes(block))
    eng.complete_snapshot(snap)
    assert eng.read_snapshot_block(snap, 2) == bytes(block)
    assert eng.read_snapshot_block(snap, 0) == bytes(L.BLOCK_SIZE)
    with eng.open_volume(vol) as dev:
        assert dev.pread(L.BLOCK_SIZE, 0) == vol_data
    assert assert_clean(eng)["chunks"] == 8 + 6
    assert_collided(eng, 14)
