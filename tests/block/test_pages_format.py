"""fsck finds damage to patches and pages (layout.py I10, I2, I4), and a format-1 store is
migrated on open."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import lmdb
import pytest

import ebsengine
from conftest import sha_bytes, store_digest
from ebsengine import layout as L
from ebsengine.block import folder as foldermod
from ebsengine.errors import FormatError
from ebsengine.storage.envelope import encode_pages

CS = L.CHUNK_SIZE
PS = L.PAGE_SIZE


@pytest.fixture
def patched(store_path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ebsengine.Engine]:
    """A store holding patches: over a base chunk (frozen in a snapshot, and at the head)
    and over nothing."""
    monkeypatch.setattr(foldermod, "QUIET", 3600.0)  # no background folding under the test
    e = ebsengine.Engine(store_path)
    try:
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
        yield e
    finally:
        e.close()


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
    with patched._store.env.begin(write=True) as txn:
        label, needle = corrupt(txn, patched)
    report = patched.fsck()
    assert not report.ok
    assert any(p.startswith(label + ":") and needle in p for p in report.problems), \
        report.problems


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
