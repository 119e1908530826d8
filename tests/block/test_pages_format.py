"""The digests patches carry (xxh3 in plaintext, keyed BLAKE2b when encrypted), fsck finds
damage to patches and pages (layout.py I10, I2, I4), and stores of older formats open."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import lmdb
import pytest
import xxhash
from block_support import assert_fsck_finds, eng_plain  # noqa: F401  (eng_plain: a fixture)

import ebsengine
from conftest import sha_bytes, store_digest
from ebsengine import layout as L
from ebsengine.errors import FormatError
from ebsengine.storage.envelope import decode_pages, encode_pages

CS = L.CHUNK_SIZE
PS = L.PAGE_SIZE


@pytest.fixture
def patched(eng_plain: ebsengine.Engine) -> ebsengine.Engine:
    """A store holding patches: over a base chunk (frozen in a snapshot, and at the head)
    and over nothing."""
    e = eng_plain
    vol = e.create_volume(size_gib=1)
    with e.open_volume(vol.id) as dev:
        dev.pwrite(sha_bytes("base", CS), 0)
        dev.flush()
        dev.pwrite(sha_bytes("p1", PS), PS)
        e.create_snapshot(vol.id)
        dev.pwrite(sha_bytes("p3", 2 * PS), 3 * PS)
        dev.pwrite(b"tiny", 5 * CS + 7)
    report = e.fsck()
    assert report.ok, report.problems
    assert report.stats["patches"] == 3
    return e


def patch_entries(txn: lmdb.Transaction, e: ebsengine.Engine) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=e._store.db["maps"])
            if L.is_patch(bytes(v))]


def with_base(txn, e):
    return next((k, v) for k, v in patch_entries(txn, e) if L.parse_patch(v)[3] is not None)


def pages_digest_mismatch(txn, e):
    k, v = with_base(txn, e)
    n = L.parse_patch(v)[0].bit_count()
    txn.put(k, encode_pages(bytes(n * PS), 1), db=e._store.db["pages"])
    return "I10", "digest"


def pages_missing(txn, e):
    k, _ = with_base(txn, e)
    txn.delete(k, db=e._store.db["pages"])
    return "I10", "has no pages"


def pages_orphan(txn, e):
    txn.put(L.map_key(99, 1, 1), encode_pages(bytes(PS), 1), db=e._store.db["pages"])
    return "I10", "orphan"


def pages_wrong_length(txn, e):
    k, _ = with_base(txn, e)
    txn.put(k, bytes([L.CODEC_RAW]) + bytes(PS * 5), db=e._store.db["pages"])
    return "I10", "do not decode"


def patch_names_other_pages(txn, e):
    (k1, v1), (k2, _) = patch_entries(txn, e)[:2]
    mask, digest, _, base = L.parse_patch(v1)
    txn.put(k1, L.patch_value(mask, digest, k2, base), db=e._store.db["maps"])
    return "I10", "another entry"


def patch_empty_mask(txn, e):
    k, v = with_base(txn, e)
    _, digest, pk, base = L.parse_patch(v)
    txn.put(k, L.patch_value(0, digest, pk, base), db=e._store.db["maps"])
    return "I10", "mask"


def patch_base_missing(txn, e):
    k, v = with_base(txn, e)
    mask, digest, pk, _ = L.parse_patch(v)
    txn.put(k, L.patch_value(mask, digest, pk, b"\x01" * L.KEY_SIZE), db=e._store.db["maps"])
    return "I2", "missing chunk"


def patch_base_ref_not_counted(txn, e):
    _, v = with_base(txn, e)
    base = L.parse_patch(v)[3]
    n = L.read_u64(txn.get(base, db=e._store.db["refs"]))
    txn.put(base, L.u64(n - 1), db=e._store.db["refs"])
    return "I4", "reference count"


@pytest.mark.parametrize("corrupt", [
    pages_digest_mismatch, pages_missing, pages_orphan, pages_wrong_length,
    patch_names_other_pages, patch_empty_mask, patch_base_missing, patch_base_ref_not_counted,
], ids=lambda f: f.__name__)
def test_fsck_finds_patch_damage(patched: ebsengine.Engine,
                                 corrupt: Callable[[lmdb.Transaction, ebsengine.Engine],
                                                   tuple[str, str]]) -> None:
    assert_fsck_finds(patched, corrupt)


def test_format_1_store_is_migrated_on_open(store_path: str) -> None:
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(size_gib=1)
        with e.open_volume(vol.id) as dev:
            dev.pwrite(sha_bytes("v1", 3 * CS), 0)
        e.create_snapshot(vol.id)
    # Make it a format-1 store as an older ebsengine wrote it: no pages database.
    env = lmdb.open(store_path, max_dbs=32)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"pages", txn=txn), delete=True)
        txn.put(b"format", b"1", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(FormatError, match="migrate"):
        ebsengine.Engine(store_path, readonly=True)  # a read-only open cannot migrate
    with ebsengine.Engine(store_path) as e:
        with e._store.read() as txn:
            assert txn.get(b"format", db=e._store.db["meta"]) == str(L.FORMAT_VERSION).encode()
        assert e.fsck().ok
        with e.open_volume(vol.id) as dev:
            assert dev.pread(3 * CS, 0) == sha_bytes("v1", 3 * CS)
            dev.pwrite(b"page", 7)  # the new path works on the migrated store
        report = e.fsck()
        assert report.ok and report.stats["patches"] == 1
    with ebsengine.Engine(store_path, readonly=True) as e:
        assert e.fsck().ok


def test_unknown_older_format_is_refused_untouched(store_path: str) -> None:
    with ebsengine.Engine(store_path) as e:
        e.create_volume(size_gib=1)
        before = store_digest(e)
    env = lmdb.open(store_path, max_dbs=32)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"0", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(FormatError, match="not supported"):
        ebsengine.Engine(store_path)
    env = lmdb.open(store_path, max_dbs=32)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"2", db=env.open_db(b"meta", txn=txn))
    env.close()
    with ebsengine.Engine(store_path) as e:
        assert store_digest(e) == before
    assert os.path.exists(os.path.join(store_path, "data.mdb"))


def test_format_2_store_opened_read_only_passes_fsck(store_path: str) -> None:
    """Format 2 is readable as format 3 (no migration step): a read-only open reads it and
    fsck finds nothing wrong with it; a read-write open then writes format 3."""
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(size_gib=1)
        with e.open_volume(vol.id) as dev:
            dev.pwrite(sha_bytes("v2", 2 * CS), 0)
            dev.pwrite(b"page", 3 * CS + 7)
    env = lmdb.open(store_path, max_dbs=32)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"2", db=env.open_db(b"meta", txn=txn))
    env.close()
    with ebsengine.Engine(store_path, readonly=True) as e:
        with e.open_volume(vol.id) as dev:
            assert dev.pread(2 * CS, 0) == sha_bytes("v2", 2 * CS)
        report = e.fsck()
        assert report.ok, report.problems
    with ebsengine.Engine(store_path) as e:
        with e._store.read() as txn:
            assert txn.get(b"format", db=e._store.db["meta"]) == str(L.FORMAT_VERSION).encode()
        assert e.fsck().ok


def _patches_of(e: ebsengine.Engine) -> list[tuple[bytes, bytes]]:
    with e._store.read() as txn:
        return patch_entries(txn, e)


def _encrypted_patch(e: ebsengine.Engine) -> tuple[bytes, bytes, bytes]:
    """One page written into a fresh encrypted volume: its patch's map key and value, and
    the page."""
    vol = e.create_volume(size_gib=1, encrypted=True)
    page = sha_bytes("secret page", PS)
    with e.open_volume(vol.id) as dev:
        dev.pwrite(page, 2 * PS)
        dev.flush()
    [(key, value)] = _patches_of(e)
    return key, value, page


def test_plaintext_patches_carry_an_xxh3_digest_of_their_pages(eng_plain: ebsengine.Engine
                                                               ) -> None:
    """Format 5: a partial write in a plaintext lineage stores a patch tagged
    ``PATCH_TAG_XXH`` whose digest is xxh3-128 of its pages (layout.py, ``maps``)."""
    e = eng_plain
    vol = e.create_volume(size_gib=1)
    pages = sha_bytes("x1", PS) + sha_bytes("x3", PS)
    with e.open_volume(vol.id) as dev:
        dev.pwrite(pages[:PS], 1 * PS)
        dev.pwrite(pages[PS:], 3 * PS)
        dev.flush()
    [(_, value)] = _patches_of(e)
    assert L.patch_tag(value) == L.PATCH_TAG_XXH
    mask, digest, _, base = L.parse_patch(value)
    assert (mask, base) == (0b1010, None)
    assert digest == xxhash.xxh3_128_digest(pages)
    assert e.fsck().ok


def test_encrypted_patches_keep_a_keyed_blake2b_digest(eng_plain: ebsengine.Engine) -> None:
    """An unkeyed digest of plaintext pages would fingerprint them beside their ciphertext:
    an encrypted lineage's patches stay tagged ``PATCH_TAG``, keyed with the domain."""
    e = eng_plain
    key, value, page = _encrypted_patch(e)
    assert L.patch_tag(value) == L.PATCH_TAG
    digest = L.parse_patch(value)[1]
    with e._store.read() as txn:
        domain = e._ctx.lineage_domain(txn, L.parse_map_key(key)[0])
    assert domain is not None
    assert digest == domain.page_digest(page)
    assert digest not in (xxhash.xxh3_128_digest(page),
                          hashlib.blake2b(page, digest_size=L.DIGEST_SIZE).digest())
    assert e.fsck().ok


def test_an_xxh3_tag_in_an_encrypted_lineage_is_flagged(eng_plain: ebsengine.Engine) -> None:
    e = eng_plain
    key, value, page = _encrypted_patch(e)
    mask, _, pk, base = L.parse_patch(value)
    forged = L.patch_value(mask, xxhash.xxh3_128_digest(page), pk, base, L.PATCH_TAG_XXH)
    with e._store.env.begin(write=True) as txn:
        txn.put(key, forged, db=e._store.db["maps"])
    report = e.fsck()
    assert not report.ok
    assert any(p.startswith("I10:") and "unkeyed xxh3" in p for p in report.problems), \
        report.problems


def test_an_unknown_patch_tag_is_flagged(patched: ebsengine.Engine) -> None:
    with patched._store.env.begin(write=True) as txn:
        k, v = with_base(txn, patched)
        txn.put(k, b"Q" + v[1:], db=patched._store.db["maps"])
    report = patched.fsck()
    assert not report.ok
    assert any(p.startswith("I10:") and "malformed patch" in p for p in report.problems), \
        report.problems
    with pytest.raises(ValueError, match="unknown patch tag"):
        L.patch_value(1, bytes(16), bytes(16), None, ord("Q"))


def test_format_4_store_with_blake2b_patches_opens_reads_and_passes_fsck(
        patched: ebsengine.Engine, store_path: str) -> None:
    """A format-4 store's plaintext patches carry unkeyed BLAKE2b digests under
    ``PATCH_TAG``: format 5 reads them, fsck checks them as such (and finds a bad one), a
    read-write open writes format 5 without touching them, and new writes carry xxh3."""
    e = patched
    vol_id = e.list_volumes()[0].id
    with e.open_volume(vol_id) as dev:
        before = dev.pread(6 * CS, 0)
    # Make it a format-4 store as the previous ebsengine wrote it.
    with e._store.env.begin(write=True) as txn:
        for k, v in patch_entries(txn, e):
            mask, _, pk, base = L.parse_patch(v)
            data = decode_pages(txn.get(k, db=e._store.db["pages"]), mask.bit_count() * PS)
            old = L.patch_value(mask, hashlib.blake2b(data, digest_size=L.DIGEST_SIZE).digest(),
                                pk, base, L.PATCH_TAG)
            txn.put(k, old, db=e._store.db["maps"])
        txn.put(b"format", b"4", db=e._store.db["meta"])
    e.close()
    with ebsengine.Engine(store_path, readonly=True) as ro:
        old_patches = _patches_of(ro)
        assert {L.patch_tag(v) for _, v in old_patches} == {L.PATCH_TAG}
        with ro.open_volume(vol_id) as dev:
            assert dev.pread(6 * CS, 0) == before
        report = ro.fsck()
        assert report.ok, report.problems
        assert report.stats["patches"] == 3
    with ebsengine.Engine(store_path) as rw:
        with rw._store.read() as txn:
            assert txn.get(b"format", db=rw._store.db["meta"]) == str(L.FORMAT_VERSION).encode()
        assert _patches_of(rw) == old_patches  # no migration step rewrites them
        assert rw.fsck().ok
        with rw.open_volume(vol_id) as dev:
            assert dev.pread(6 * CS, 0) == before
            dev.pwrite(sha_bytes("new", PS), 9 * CS)
            dev.flush()
        tags = [L.patch_tag(v) for _, v in _patches_of(rw)]
        assert sorted(tags) == sorted([L.PATCH_TAG] * 3 + [L.PATCH_TAG_XXH])
        # a BLAKE2b-tagged patch whose pages changed is still caught
        with rw._store.env.begin(write=True) as txn:
            k, v = next((k, v) for k, v in patch_entries(txn, rw)
                        if L.patch_tag(v) == L.PATCH_TAG)
            n = L.parse_patch(v)[0].bit_count()
            txn.put(k, encode_pages(bytes(n * PS), 1), db=rw._store.db["pages"])
        report = rw.fsck()
        assert any(p.startswith("I10:") and "digest" in p for p in report.problems), \
            report.problems
