"""Encryption at rest through the library: sealed chunks and pages, data-key domains, keys
that lock and unlock data, tampering, fsck with and without keys (``layout.py``,
"Encryption")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ebsengine
from ebsengine import layout as L
from ebsengine.errors import CorruptStore, KmsError, MissingParameter
from ebsengine.storage.chunks import ChunkStore

CS = L.CHUNK_SIZE
REGION = "us-east-1"
ACCOUNT = "123456789012"


@pytest.fixture
def eng(store_path: str):
    with ebsengine.Engine(store_path, map_size=1 << 32) as e:
        yield e


def _store_files(path: str) -> list[Path]:
    return [p for p in Path(path).rglob("*") if p.is_file()]


def _appears(path: str, needle: bytes) -> bool:
    """Whether ``needle`` appears in any file of the store (the raw bytes on disk)."""
    return any(needle in p.read_bytes() for p in _store_files(path))


def _runs(data: bytes, n: int = 64, step: int = 4096) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data) - n, step)]


def _write(eng: ebsengine.Engine, vid: str, data: bytes, offset: int = 0) -> None:
    with eng.open_volume(vid) as dev:
        dev.pwrite(data, offset)
        dev.flush()


def _read(eng: ebsengine.Engine, rid: str, n: int, offset: int = 0) -> bytes:
    opener = eng.open_snapshot if rid.startswith("snap-") else eng.open_volume
    with opener(rid) as dev:
        return dev.pread(n, offset)


def _lineage(eng: ebsengine.Engine, rid: str):
    with eng._store.read() as txn:
        rec = (eng._records.snap_rec(txn, rid) if rid.startswith("snap-")
               else eng._records.vol_rec(txn, rid))
        return eng._maps.load(txn, rec["lineage"])


def test_no_plaintext_of_an_encrypted_volume_reaches_the_store_files(eng, store_path):
    secret = os.urandom(8 * CS)          # incompressible: would be stored as is if plaintext
    control = os.urandom(2 * CS)
    enc = eng.create_volume(1, encrypted=True)
    plain = eng.create_volume(1)
    _write(eng, enc.id, secret)
    _write(eng, enc.id, secret[:4096], 20 * CS + 4096)     # a patch: sealed pages
    _write(eng, plain.id, control)
    snap = eng.create_snapshot(enc.id)
    eng._folder.fold_round(min_pages=1)                     # the folded chunk is sealed too
    eng.close()
    assert any(_appears(store_path, r) for r in _runs(control)), "control must be found"
    for run in _runs(secret):
        assert not _appears(store_path, run)
    with ebsengine.Engine(store_path) as e2:  # and it all reads back after a restart
        assert _read(e2, enc.id, 8 * CS) == secret
        assert _read(e2, snap.id, 4096, 20 * CS + 4096) == secret[:4096]
        assert e2.fsck().ok


def test_volume_records_name_the_key_and_snapshots_keep_the_data_key(eng):
    vol = eng.create_volume(1, encrypted=True)
    assert vol.encrypted and vol.kms_key_id.startswith(f"arn:aws:kms:{REGION}:{ACCOUNT}:key/")
    aws_ebs = eng.kms.describe_key("alias/aws/ebs", REGION, ACCOUNT)
    assert vol.kms_key_id == aws_ebs.arn and aws_ebs.manager == "AWS"
    data = os.urandom(3 * CS)
    _write(eng, vol.id, data)
    snap = eng.create_snapshot(vol.id)
    assert snap.encrypted and snap.kms_key_id == vol.kms_key_id
    restored = eng.create_volume(snapshot_id=snap.id)   # encrypted, same data key, O(1)
    assert restored.encrypted and restored.kms_key_id == vol.kms_key_id
    lin, src = _lineage(eng, restored.id), _lineage(eng, vol.id)
    assert lin.domain == src.domain and lin.base is not None
    assert _read(eng, restored.id, 3 * CS) == data


def test_another_key_or_encrypting_plaintext_copies_under_a_new_data_key(eng):
    mine = eng.kms.create_key(REGION, ACCOUNT, description="mine")
    plain = eng.create_volume(1)
    data = os.urandom(2 * CS) + bytes(CS) + os.urandom(CS)
    _write(eng, plain.id, data)
    psnap = eng.create_snapshot(plain.id)
    enc = eng.create_volume(snapshot_id=psnap.id, encrypted=True, kms_key_id=mine.id)
    assert enc.encrypted and enc.kms_key_id == mine.arn
    lin = _lineage(eng, enc.id)
    assert lin.domain is not None and lin.base is None and lin.allocated == 3
    assert _read(eng, enc.id, 4 * CS) == data
    esnap = eng.create_snapshot(enc.id)
    other = eng.create_volume(snapshot_id=esnap.id, encrypted=True, kms_key_id="alias/aws/ebs")
    assert _lineage(eng, other.id).domain not in (None, lin.domain)
    assert _read(eng, other.id, 4 * CS) == data
    # copies: encrypting a plaintext snapshot is allowed, decrypting never happens
    c1 = eng.copy_snapshot(psnap.id, encrypted=True)
    assert c1.encrypted and c1.kms_key_id == eng.kms.describe_key(
        "alias/aws/ebs", REGION, ACCOUNT).arn
    assert _read(eng, c1.id, 4 * CS) == data
    c2 = eng.copy_snapshot(esnap.id)                     # stays encrypted, same data key
    assert c2.encrypted and c2.kms_key_id == mine.arn
    assert _lineage(eng, c2.id).domain == lin.domain
    with pytest.raises(MissingParameter):
        eng.copy_snapshot(psnap.id, kms_key_id=mine.id)  # KmsKeyId needs Encrypted
    assert eng.fsck().ok


def test_dedup_stays_within_a_domain(eng):
    block = os.urandom(CS)
    a = eng.create_volume(1, encrypted=True)
    b = eng.create_volume(1, encrypted=True)
    before = eng.fsck().stats.get("chunks", 0)
    _write(eng, a.id, block)
    _write(eng, a.id, block, 5 * CS)                     # same domain: stored once
    assert eng.fsck().stats["chunks"] == before + 1
    _write(eng, b.id, block)                             # another domain: stored again
    assert eng.fsck().stats["chunks"] == before + 2
    with eng._store.read() as txn:
        keys = [k for batch in eng._chunks.iter_stored() for k, _ in batch]
        del txn
    assert len({k[:L.FP_SIZE] for k in keys}) == len(keys)  # keyed: unrelated names


def test_a_forced_fingerprint_collision_across_domains_never_mixes_data(eng, monkeypatch):
    fake = bytes.fromhex("c0111de5") * 4

    def colliding(buf, domain=None):
        mv = memoryview(buf).cast("B")
        return [None if not any(mv[i:i + CS]) else fake for i in range(0, len(mv), CS)]

    monkeypatch.setattr(ChunkStore, "fingerprints", staticmethod(colliding))
    same = os.urandom(CS)
    vols = [eng.create_volume(1, encrypted=True), eng.create_volume(1, encrypted=True),
            eng.create_volume(1)]
    for v in vols:
        _write(eng, v.id, same)
    for v in vols:
        assert _read(eng, v.id, CS) == same
    report = eng.fsck()
    assert report.ok, report.problems
    assert report.stats["chunks"] == 3    # one per domain (and the plaintext one)


def _swap_the_two_chunks(eng: ebsengine.Engine) -> None:
    """Exchange the stored values of the store's only two chunks (a tampering)."""
    keys = [k for batch in eng._chunks.iter_stored() for k, _ in batch]
    assert len(keys) == 2
    db = eng._store.db["chunks"]
    with eng._store.write() as txn:
        a, b = (bytes(txn.get(k, db=db)) for k in keys)
        txn.put(keys[0], b, db=db)
        txn.put(keys[1], a, db=db)


def _first_sealed(eng: ebsengine.Engine) -> bytes:
    for batch in eng._chunks.iter_stored():
        for k, v in batch:
            if v[0] == L.CODEC_SEALED:
                return k
    raise AssertionError("no sealed chunk")


@pytest.mark.parametrize("where", [0, 1, 20, 60, -1])
def test_a_tampered_chunk_is_corrupt_never_wrong_bytes(store_path, where):
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(1, encrypted=True)
        _write(e, vol.id, os.urandom(CS))
        key = _first_sealed(e)
        with e._store.write() as txn:
            v = bytearray(txn.get(key, db=e._store.db["chunks"]))
            v[where] ^= 0x01
            txn.put(key, bytes(v), db=e._store.db["chunks"])
    with ebsengine.Engine(store_path) as e:
        with pytest.raises(CorruptStore):
            _read(e, vol.id, CS)
        report = e.fsck()
        assert not report.ok and any(key.hex() in p for p in report.problems)


def test_a_chunk_swapped_for_another_of_its_domain_does_not_open(store_path):
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(1, encrypted=True)
        _write(e, vol.id, os.urandom(2 * CS))
        _swap_the_two_chunks(e)
    with ebsengine.Engine(store_path) as e:
        with pytest.raises(CorruptStore):
            _read(e, vol.id, 2 * CS)


def test_a_tampered_wrapped_data_key_refuses_its_data(store_path):
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(1, encrypted=True)
        data = os.urandom(CS)
        _write(e, vol.id, data)
        dom = _lineage(e, vol.id).domain
        rec = e.service_get("kms.domains", dom)
        assert rec is not None
        wrapped = bytearray(__import__("base64").b64decode(rec["wrapped"]))
        wrapped[-1] ^= 1
        e.service_put("kms.domains", dom,
                      {**rec, "wrapped": __import__("base64").b64encode(bytes(wrapped)).decode()})
    with ebsengine.Engine(store_path) as e:
        with pytest.raises(KmsError):
            e.open_volume(vol.id)
        assert e.fsck().unverified != []  # reported as unverifiable, not read wrong


def test_disabled_or_pending_deletion_key_locks_the_data_until_enabled(eng):
    key = eng.kms.create_key(REGION, ACCOUNT)
    vol = eng.create_volume(1, encrypted=True, kms_key_id=key.arn)
    data = os.urandom(CS)
    _write(eng, vol.id, data)
    snap = eng.create_snapshot(vol.id)
    eng.close()
    with ebsengine.Engine(eng.path) as e:  # a fresh process: no data key held yet
        e.kms.disable_key(key.id, REGION, ACCOUNT)
        for fn in (lambda: e.open_volume(vol.id), lambda: e.open_snapshot(snap.id),
                   lambda: e.read_snapshot_block(snap.id, 0),
                   lambda: e.create_volume(snapshot_id=snap.id),
                   lambda: e.export(snap.id, os.path.join(e.path, "..", "out.img"))):
            with pytest.raises(KmsError) as exc:
                fn()
            assert exc.value.code == "DisabledException"
        assert len(e.list_volumes()) == 1  # the refused restore created nothing
        e.kms.enable_key(key.id, REGION, ACCOUNT)
        assert _read(e, vol.id, CS) == data
        e.kms.schedule_key_deletion(key.id, REGION, ACCOUNT, pending_days=7)
        with pytest.raises(KmsError) as exc:
            e.read_snapshot_block(snap.id, 0)
        assert exc.value.code == "KMSInvalidStateException"
        e.kms.cancel_key_deletion(key.id, REGION, ACCOUNT)
        e.kms.enable_key(key.id, REGION, ACCOUNT)
        assert e.read_snapshot_block(snap.id, 0)[:CS] == data


def test_fsck_verifies_with_keys_and_says_what_it_could_not_without(store_path, tmp_path):
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(1, encrypted=True)
        _write(e, vol.id, os.urandom(3 * CS))
        _write(e, vol.id, os.urandom(4096), 10 * CS)
        with_keys = e.fsck()
        assert with_keys.ok and with_keys.unverified == []
        without = e.fsck(keys=False)
        assert without.ok and without.stats["unverified_values"] == 4
        assert any("not verified" in n for n in without.unverified)


def test_ebs_direct_import_and_export_of_encrypted_data(eng, tmp_path):
    snap = eng.start_snapshot(1, encrypted=True)
    assert snap.encrypted and snap.kms_key_id
    block = os.urandom(L.BLOCK_SIZE)
    eng.put_snapshot_block(snap.id, 3, block)
    eng.complete_snapshot(snap.id)
    assert eng.read_snapshot_block(snap.id, 3) == block
    child = eng.start_snapshot(1, parent_snapshot_id=snap.id, encrypted=True)
    assert _lineage(eng, child.id).domain == _lineage(eng, snap.id).domain
    img = tmp_path / "img"
    img.write_bytes(os.urandom(3 * CS) + bytes(CS) + os.urandom(CS))
    vol = eng.import_image(str(img), encrypted=True)
    assert vol.encrypted
    out = tmp_path / "out"
    eng.export(vol.id, str(out))
    assert out.read_bytes()[:5 * CS] == img.read_bytes()
    eng.import_image(str(img), volume_id=vol.id)  # into an existing encrypted volume
    assert _read(eng, vol.id, 5 * CS) == img.read_bytes()
    report = eng.fsck()
    assert report.ok, report.problems


def test_fsck_counts_the_encrypted_lineages(eng):
    eng.create_volume(1)
    eng.create_volume(1, encrypted=True)
    eng.create_volume(1)
    stats = eng.fsck().stats
    assert stats["lineages"] == 3 and stats["encrypted_lineages"] == 1


def _set_lineage_domain(store_path: str, vid: str, domain: object) -> None:
    import json
    with ebsengine.Engine(store_path) as e:
        with e._store.write() as txn:
            rec = e._records.vol_rec(txn, vid)
            key, db = L.lineage_key(rec["lineage"]), e._store.db["lineages"]
            lin = json.loads(txn.get(key, db=db))
            txn.put(key, json.dumps({**lin, "domain": domain}).encode(), db=db)


@pytest.mark.parametrize("domain", [5, ["dom-x"], "dom-zz"])
def test_fsck_reports_a_malformed_lineage_domain_without_crashing(store_path, domain):
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(1, encrypted=True)
        _write(e, vol.id, os.urandom(CS))
        _write(e, vol.id, os.urandom(4096), 2 * CS)      # and a patch
    _set_lineage_domain(store_path, vol.id, domain)
    with ebsengine.Engine(store_path) as e:
        report = e.fsck()
        assert not report.ok and any("malformed domain" in p for p in report.problems)


def test_fsck_reports_a_lineage_whose_domain_record_is_gone(store_path):
    # an empty encrypted volume: no chunk to betray it, only the lineage names the domain
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(1, encrypted=True)
    _set_lineage_domain(store_path, vol.id, "dom-" + "ab" * 16)
    with ebsengine.Engine(store_path) as e:
        for report in (e.fsck(), e.fsck(keys=False)):
            assert not report.ok and any("no data-key domain" in p for p in report.problems)


def test_patches_skipped_while_locked_fold_once_their_key_is_unlocked(store_path):
    data = os.urandom(4096)
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(1, encrypted=True)
        _write(e, vol.id, data, 4096)                    # a patch: sealed pages
    with ebsengine.Engine(store_path) as e:             # a fresh process: no key held
        assert e.fold() == 0                             # cannot fold what it cannot open
        assert _read(e, vol.id, 4096, 4096) == data     # the open unlocks the data key
        assert e.fold() == 1
        assert _read(e, vol.id, 4096, 4096) == data
        assert e.fsck().ok


def test_chunks_colliding_in_one_domain_are_bound_to_their_collision_numbers(store_path,
                                                                            monkeypatch):
    """Two chunks of one domain sharing a fingerprint (forced) get keys fp|0 and fp|1; each
    is sealed to its whole key, so swapping their values is CorruptStore, not wrong bytes."""
    fake = bytes.fromhex("5eed") * 8

    def colliding(buf, domain=None):
        mv = memoryview(buf).cast("B")
        return [None if not any(mv[i:i + CS]) else fake for i in range(0, len(mv), CS)]

    monkeypatch.setattr(ChunkStore, "fingerprints", staticmethod(colliding))
    a, b = os.urandom(CS), os.urandom(CS)
    with ebsengine.Engine(store_path) as e:
        vol = e.create_volume(1, encrypted=True)
        _write(e, vol.id, a + b)
        assert _read(e, vol.id, 2 * CS) == a + b
        keys = [k for batch in e._chunks.iter_stored() for k, _ in batch]
        assert sorted(k[L.FP_SIZE:] for k in keys) == [bytes(4), (1).to_bytes(4, "big")]
        assert e.fsck().ok
        _swap_the_two_chunks(e)
    with ebsengine.Engine(store_path) as e:
        with pytest.raises(CorruptStore):
            _read(e, vol.id, 2 * CS)
