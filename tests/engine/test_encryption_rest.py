"""Encryption at rest, the lifecycle around the data path (issue 9's remaining items): a
domain record goes with its domain's last lineage; reads refuse a value of another domain
(or a plaintext one) named by a tampered block map; copies under a new data key run in
bounded transactions of their own, all or nothing; a snapshot of a volume whose KMS key is
unusable ends in state ``error`` and changes nothing else."""

from __future__ import annotations

import json
import os

import pytest

import ebsengine
from conftest import store_digest
from ebsengine import layout as L
from ebsengine.engine import domains as domains_mod
from ebsengine.errors import CorruptStore, InvalidVolumeSize, StoreFull
from ebsengine.storage.chunks import ChunkStore

CS = L.CHUNK_SIZE
REGION = "us-east-1"
ACCOUNT = "123456789012"


@pytest.fixture
def eng(store_path: str):
    with ebsengine.Engine(store_path, map_size=1 << 32) as e:
        yield e


def _write(eng: ebsengine.Engine, vid: str, data: bytes, offset: int = 0) -> None:
    with eng.open_volume(vid) as dev:
        dev.pwrite(data, offset)
        dev.flush()


def _read(eng: ebsengine.Engine, rid: str, n: int, offset: int = 0) -> bytes:
    opener = eng.open_snapshot if rid.startswith("snap-") else eng.open_volume
    with opener(rid) as dev:
        return dev.pread(n, offset)


def _lineage_id(eng: ebsengine.Engine, rid: str) -> int:
    with eng._store.read() as txn:
        rec = (eng._records.snap_rec(txn, rid) if rid.startswith("snap-")
               else eng._records.vol_rec(txn, rid))
        return int(rec["lineage"])


def _domain(eng: ebsengine.Engine, rid: str) -> str:
    with eng._store.read() as txn:
        dom = eng._maps.load(txn, _lineage_id(eng, rid)).domain
    assert dom is not None
    return dom


def _lineages(eng: ebsengine.Engine) -> dict[int, dict[str, object]]:
    with eng._store.read() as txn:
        return {L.read_u64(k): json.loads(v)
                for k, v in txn.cursor(db=eng._store.db["lineages"])}


def _clean(eng: ebsengine.Engine) -> dict[str, int]:
    report = eng.fsck()
    assert report.ok, report.problems
    return report.stats


# --- 1. a domain record goes with its domain's last lineage -------------------------------------


def test_the_domain_record_goes_with_the_last_lineage_of_its_domain(eng):
    vol = eng.create_volume(1, encrypted=True)
    data = os.urandom(2 * CS)
    _write(eng, vol.id, data)
    dom = _domain(eng, vol.id)
    snap = eng.create_snapshot(vol.id)
    assert eng.kms.domains() == [dom]
    eng.delete_volume(vol.id)              # the snapshot still uses the domain: it stays
    assert eng.kms.domains() == [dom]
    assert _read(eng, snap.id, 2 * CS) == data
    _clean(eng)
    restored = eng.create_volume(snapshot_id=snap.id)      # same data key, reads through
    assert _domain(eng, restored.id) == dom
    eng.delete_snapshot(snap.id)          # the restored volume pins it: still there
    assert eng.kms.domains() == [dom]
    assert _read(eng, restored.id, 2 * CS) == data
    eng.delete_volume(restored.id)        # the last lineage of the domain: its record goes
    assert eng.kms.domains() == []
    stats = _clean(eng)
    assert stats["lineages"] == 0 and not stats.get("chunks") and not stats["domain_records"]


def test_volume_then_snapshot_deleted_leaves_no_domain_record(eng):
    vol = eng.create_volume(1, encrypted=True)
    _write(eng, vol.id, os.urandom(CS))
    snap = eng.create_snapshot(vol.id)
    other = eng.create_volume(1, encrypted=True)           # another domain: untouched
    eng.delete_snapshot(snap.id)
    eng.delete_volume(vol.id)
    assert eng.kms.domains() == [_domain(eng, other.id)]
    _clean(eng)


def test_a_domain_record_survives_an_aborted_delete(eng):
    vol = eng.create_volume(1, encrypted=True)
    data = os.urandom(CS)
    _write(eng, vol.id, data)
    snap = eng.create_snapshot(vol.id)
    dom = _domain(eng, vol.id)
    with pytest.raises(RuntimeError), eng.transaction() as tx:
        eng.delete_snapshot(snap.id, tx=tx)
        eng.delete_volume(vol.id, tx=tx)
        assert eng.kms.domains(tx) == []  # gone inside the unit that drops the last lineage
        raise RuntimeError("crash before the commit")
    assert eng.kms.domains() == [dom]
    assert _read(eng, vol.id, CS) == data and _read(eng, snap.id, CS) == data
    _clean(eng)


def test_an_import_staged_beside_an_encrypted_volume_keeps_the_domain(eng, tmp_path):
    # the staged lineage is a second root of the volume's domain: dropping it (the end of
    # the import) must not take the domain with it
    vol = eng.create_volume(1, encrypted=True)
    _write(eng, vol.id, os.urandom(CS))
    dom = _domain(eng, vol.id)
    image = os.urandom(3 * CS)
    path = tmp_path / "image.raw"
    path.write_bytes(image)
    eng.import_image(str(path), volume_id=vol.id)
    assert eng.kms.domains() == [dom] and _domain(eng, vol.id) == dom
    assert _read(eng, vol.id, 3 * CS) == image
    _clean(eng)
    eng.delete_volume(vol.id)
    assert eng.kms.domains() == []
    _clean(eng)


def test_fsck_reports_a_domain_record_no_lineage_uses(eng):
    dom, _ = eng.kms.new_domain(None, REGION, ACCOUNT)   # a record and no lineage
    report = eng.fsck()
    assert not report.ok
    assert any(dom in p and "no lineage uses it" in p for p in report.problems)


# --- 2. reads check the domain of what a block map names ----------------------------------------


def _swap_map_values(eng: ebsengine.Engine, a: str, b: str) -> None:
    """Exchange what the block maps of ``a`` and ``b`` hold at chunk 0 (a tampering that
    keeps every reference count right)."""
    db = eng._store.db["maps"]
    with eng._store.write() as txn:
        keys = []
        for rid in (a, b):
            lid = _lineage_id(eng, rid)
            cur = txn.cursor(db=db)
            assert cur.set_range(L.map_key(lid, 0, L.MAX_GEN))
            assert L.parse_map_key(cur.key())[:2] == (lid, 0)
            keys.append(bytes(cur.key()))
        va, vb = (bytes(txn.get(k, db=db)) for k in keys)
        txn.put(keys[0], vb, db=db)
        txn.put(keys[1], va, db=db)


@pytest.mark.parametrize("partial", [False, True], ids=["chunk", "patch"])
@pytest.mark.parametrize("other", ["plaintext", "encrypted"])
def test_a_map_naming_a_value_of_another_domain_fails_the_read(store_path, tmp_path, other,
                                                                partial):
    size = 4096 if partial else CS          # a 4 KiB write makes a patch (sealed pages)
    with ebsengine.Engine(store_path) as e:
        mine = e.create_volume(1, encrypted=True)
        theirs = e.create_volume(1, encrypted=other == "encrypted")
        _write(e, mine.id, os.urandom(size))
        _write(e, theirs.id, os.urandom(size))
        _swap_map_values(e, mine.id, theirs.id)
    with ebsengine.Engine(store_path) as e:
        for rid in (mine.id, theirs.id):  # both keys unlocked: only the check stops it
            with e.open_volume(rid):
                pass
        for rid in (mine.id, theirs.id):
            with pytest.raises(CorruptStore, match="tampered"):
                _read(e, rid, size)
            with pytest.raises(CorruptStore):
                e.export(rid, str(tmp_path / f"{rid}.raw"))
        snap = e.create_snapshot(mine.id)
        with pytest.raises(CorruptStore):
            _read(e, snap.id, size)


def test_reads_of_untampered_lineages_still_work_beside_tampered_ones(eng):
    a = eng.create_volume(1, encrypted=True)
    b = eng.create_volume(1)
    data_a, data_b = os.urandom(2 * CS), os.urandom(2 * CS)
    _write(eng, a.id, data_a)
    _write(eng, b.id, data_b)
    assert _read(eng, a.id, 2 * CS) == data_a and _read(eng, b.id, 2 * CS) == data_b
    _swap_map_values(eng, a.id, b.id)
    eng._ctx.cache.clear()
    with pytest.raises(CorruptStore):
        _read(eng, a.id, CS)
    assert _read(eng, a.id, CS, CS) == data_a[CS:]  # chunk 1 was not touched
    assert _read(eng, b.id, CS, CS) == data_b[CS:]


# --- 3. copies under a new data key: bounded transactions, all or nothing -----------------------


def _plain_snapshot(eng: ebsengine.Engine, chunks: int = 24) -> tuple[str, bytes]:
    vol = eng.create_volume(1)
    data = bytearray(os.urandom(chunks * CS))
    data[CS:2 * CS] = bytes(CS)                          # a hole
    _write(eng, vol.id, bytes(data))
    at = (chunks - 1) * CS + 4096
    _write(eng, vol.id, b"\x01" * 4096, at)              # a patch
    data[at:at + 4096] = b"\x01" * 4096
    snap = eng.create_snapshot(vol.id)
    # the key service in use already (alias/aws/ebs made): its first use is copied in the
    # request's unit, not staged (test_the_key_services_first_use_is_not_staged)
    eng.kms.describe_key("alias/aws/ebs", REGION, ACCOUNT)
    return snap.id, bytes(data)


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(domains_mod, "STAGE_COMMIT_CHUNKS", 4, raising=False)
    monkeypatch.setattr(domains_mod, "STAGE_WINDOW", 3, raising=False)


def _state(eng: ebsengine.Engine) -> tuple[object, ...]:
    return (sorted(v.id for v in eng.list_volumes()),
            sorted(s.id for s in eng.list_snapshots()),
            eng.kms.domains(), sorted(_lineages(eng)),
            sorted(k for batch in eng._chunks.iter_stored() for k, _ in batch))


@pytest.mark.parametrize("how", ["volume", "copy", "rekey"])
def test_a_copy_under_a_new_data_key_commits_in_batches_and_reads_the_same(eng, small_batches,
                                                                          how):
    sid, data = _plain_snapshot(eng)
    if how == "rekey":  # an encrypted snapshot copied under another key
        sid = eng.copy_snapshot(sid, encrypted=True).id
    key = eng.kms.create_key(REGION, ACCOUNT)
    before = eng._store.commit_id()
    if how == "volume":
        out = eng.create_volume(snapshot_id=sid, encrypted=True, kms_key_id=key.id).id
    else:
        out = eng.copy_snapshot(sid, encrypted=True, kms_key_id=key.id).id
    # 23 data chunks, at most 4 a transaction: the writer was let go between batches
    assert eng._store.commit_id() - before >= 23 // 4
    assert _read(eng, out, len(data)) == data
    assert _domain(eng, out) not in (None, *(
        [_domain(eng, sid)] if how == "rekey" else []))
    lins = _lineages(eng)
    assert not any("copier" in lin for lin in lins.values())
    assert lins[_lineage_id(eng, out)]["allocated"] == 23
    _clean(eng)


@pytest.mark.parametrize("failure", [StoreFull("the store is full"), RuntimeError("boom")],
                         ids=["StoreFull", "exception"])
@pytest.mark.parametrize("how", ["volume", "copy"])
def test_a_copy_failing_midway_leaves_the_store_as_it_was(eng, small_batches, monkeypatch, how,
                                                          failure):
    sid, data = _plain_snapshot(eng)
    key = eng.kms.create_key(REGION, ACCOUNT)
    eng.kms.describe_key("alias/aws/ebs", REGION, ACCOUNT)
    before = store_digest(eng)
    real_put = ChunkStore.put
    calls = [0]

    def put(self, txn, fp, data, encoded=None, domain=None):  # type: ignore[no-untyped-def]
        if domain is not None:
            calls[0] += 1
            if calls[0] == 11:  # after two committed batches, inside the third
                raise failure
        return real_put(self, txn, fp, data, encoded, domain)

    monkeypatch.setattr(ChunkStore, "put", put)
    with pytest.raises(type(failure)):
        if how == "volume":
            eng.create_volume(snapshot_id=sid, encrypted=True, kms_key_id=key.id)
        else:
            eng.copy_snapshot(sid, encrypted=True, kms_key_id=key.id)
    assert calls[0] == 11
    assert store_digest(eng) == before      # exactly as it was
    _clean(eng)
    monkeypatch.setattr(ChunkStore, "put", real_put)
    out = eng.copy_snapshot(sid, encrypted=True, kms_key_id=key.id)   # and it works again
    assert _read(eng, out.id, len(data)) == data


def test_a_copy_staged_by_a_crashed_process_is_dropped_at_the_next_open(store_path,
                                                                         small_batches,
                                                                         monkeypatch):
    dead = {"pid": 1 << 22, "start": "0", "boot": "another boot"}
    with ebsengine.Engine(store_path) as e:
        sid, data = _plain_snapshot(e)
        before = _state(e)
        monkeypatch.setattr(domains_mod, "process_token", lambda: dead)
        monkeypatch.setattr(domains_mod.Domains, "drop_staged", lambda self, staged: None)
        real_put = ChunkStore.put
        calls = [0]

        def put(self, txn, fp, data, encoded=None, domain=None):  # type: ignore[no-untyped-def]
            calls[0] += domain is not None
            if calls[0] == 6:
                raise KeyboardInterrupt  # the process dies: no cleanup runs
            return real_put(self, txn, fp, data, encoded, domain)

        monkeypatch.setattr(ChunkStore, "put", put)
        with pytest.raises(KeyboardInterrupt):
            e.create_volume(snapshot_id=sid, encrypted=True)
        monkeypatch.setattr(ChunkStore, "put", real_put)
        staged = [lin for lin in _lineages(e).values() if "copier" in lin]
        assert len(staged) == 1 and 0 < staged[0]["allocated"] < 23  # a batch committed
        assert len(e.kms.domains()) == 1
        stats = _clean(e)                 # fsck accepts a staged copy and counts it
        assert stats["staged_copies"] == 1
    with ebsengine.Engine(store_path) as e:  # reopened: the dead process's copy is dropped
        state = _state(e)
        assert state[:2] == before[:2] and state[3:] == before[3:]
        assert e.kms.domains() == []
        assert "staged_copies" not in _clean(e)
        out = e.create_volume(snapshot_id=sid, encrypted=True)
        assert _read(e, out.id, len(data)) == data


def test_a_copy_in_a_unit_of_work_still_copies_in_that_unit(eng):
    sid, data = _plain_snapshot(eng, chunks=3)
    with eng.transaction() as tx:
        vol = eng.create_volume(snapshot_id=sid, encrypted=True, tx=tx)
    assert _read(eng, vol.id, len(data)) == data
    _clean(eng)


# --- 4. a snapshot of a volume whose key is unusable ---------------------------------------------


@pytest.mark.parametrize("lock", ["disable", "pending"])
@pytest.mark.parametrize("in_unit", [False, True])
def test_a_snapshot_of_a_volume_with_an_unusable_key_ends_in_error(eng, lock, in_unit):
    key = eng.kms.create_key(REGION, ACCOUNT)
    vol = eng.create_volume(1, encrypted=True, kms_key_id=key.id)
    data = os.urandom(CS)
    _write(eng, vol.id, data)
    good = eng.create_snapshot(vol.id)
    lins = _lineages(eng)
    if lock == "disable":
        eng.kms.disable_key(key.id, REGION, ACCOUNT)
    else:
        eng.kms.schedule_key_deletion(key.id, REGION, ACCOUNT, pending_days=7)
    if in_unit:
        with eng.transaction(flush=[vol.id]) as tx:
            snap = eng.create_snapshot(vol.id, description="d", tx=tx)
    else:
        snap = eng.create_snapshot(vol.id, description="d")
    assert snap.state == "error" and snap.encrypted and snap.kms_key_id == key.arn
    assert snap.state_message and ("Disabled" in snap.state_message
                                   or "KMSInvalidState" in snap.state_message)
    assert eng.get_snapshot(snap.id).state == "error"
    assert _lineages(eng) == lins        # nothing of the volume was frozen
    assert eng.get_volume(vol.id).state == "available"
    assert {s.id for s in eng.list_snapshots(vol.id)} == {good.id, snap.id}
    _clean(eng)
    eng.delete_snapshot(snap.id)
    if lock == "disable":
        eng.kms.enable_key(key.id, REGION, ACCOUNT)
    else:
        eng.kms.cancel_key_deletion(key.id, REGION, ACCOUNT)
        eng.kms.enable_key(key.id, REGION, ACCOUNT)
    again = eng.create_snapshot(vol.id)
    assert again.state == "completed" and _read(eng, again.id, CS) == data
    _clean(eng)


def test_a_staged_copy_is_adopted_only_by_a_unit_that_commits_the_same_request(eng):
    sid, data = _plain_snapshot(eng, chunks=6)
    key = eng.kms.create_key(REGION, ACCOUNT)
    eng.kms.describe_key("alias/aws/ebs", REGION, ACCOUNT)
    before = store_digest(eng)
    with pytest.raises(RuntimeError), eng.staged_copy(sid, encrypted=True) as staged:
        assert staged is not None
        with eng.transaction() as tx:
            eng.create_volume(snapshot_id=sid, encrypted=True, tx=tx, staged=staged)
            raise RuntimeError("the unit fails after adopting the copy")
    assert store_digest(eng) == before       # the copy went with the failed request
    with pytest.raises(InvalidVolumeSize):  # the request's own error, nothing staged
        eng.create_volume(0, snapshot_id=sid, encrypted=True)
    assert store_digest(eng) == before
    with eng.staged_copy(sid, encrypted=True) as staged, eng.transaction() as tx:
        vol = eng.create_volume(snapshot_id=sid, encrypted=True, tx=tx, staged=staged)
    assert _read(eng, vol.id, len(data)) == data
    with eng.staged_copy(sid, encrypted=True) as staged, eng.transaction() as tx:
        # another key than the staged copy's: not adopted, the unit copies by itself
        other = eng.create_volume(snapshot_id=sid, encrypted=True, kms_key_id=key.id, tx=tx,
                                  staged=staged)
    assert other.kms_key_id == key.arn and _read(eng, other.id, len(data)) == data
    assert not any("copier" in lin for lin in _lineages(eng).values())
    assert len(eng.kms.domains()) == 2
    _clean(eng)


def test_the_key_services_first_use_is_not_staged(eng, small_batches):
    # staging would make alias/aws/ebs (and the master check value) outside the unit, and a
    # request the unit then refuses would leave them behind: the unit copies by itself
    vol = eng.create_volume(1)
    _write(eng, vol.id, os.urandom(8 * CS))
    sid = eng.create_snapshot(vol.id).id
    before = store_digest(eng)
    with pytest.raises(InvalidVolumeSize):
        eng.create_volume(0, snapshot_id=sid, encrypted=True)
    assert store_digest(eng) == before
    with eng.staged_copy(sid, encrypted=True) as staged:
        assert staged is None
    assert store_digest(eng) == before
    commits = eng._store.commit_id()
    out = eng.create_volume(snapshot_id=sid, encrypted=True)
    assert eng._store.commit_id() - commits == 1
    with eng.staged_copy(sid, encrypted=True) as staged:  # the key exists now
        assert staged is not None
    assert _read(eng, out.id, 8 * CS) == _read(eng, sid, 8 * CS)
