"""``fsck`` finds deliberate corruption (issue 2, "Integrity and durability").

Each test builds the same small but varied store (raw and zstd chunks, shared chunks,
snapshots, a tombstone, a restored volume reading through its snapshot, a direct-API
snapshot), checks it is clean, then damages it through raw LMDB and checks that ``fsck``
reports the damage under the invariant of ``layout.py`` it breaks (I1..I8), both on the
engine that was open and on a freshly opened one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lmdb
import pytest

import ebsengine
from conftest import sha_bytes
from ebsengine import codec
from ebsengine import layout as L
from ebsengine.errors import FormatError
from ebsengine.storage.envelope import encode_chunk
from ebsengine.storage.rados_chunks import RadosChunks


@pytest.fixture
def store_path(any_store_path: str) -> str:
    """Every test here runs on each storage backend (LMDB and in-memory)."""
    return any_store_path


CS = L.CHUNK_SIZE


noise = sha_bytes  # deterministic incompressible bytes (conftest)


def text(tag: str, n: int = CS) -> bytes:
    """Compressible deterministic bytes (stored as zstd)."""
    line = f"{tag}: the quick brown fox jumps over the lazy dog\n".encode()
    return (line * (n // len(line) + 1))[:n]


@dataclass
class Store:
    eng: ebsengine.Engine
    path: str
    vol_a: str
    vol_b: str
    restored: str
    s1: str
    s2: str
    direct: str

    @property
    def env(self) -> lmdb.Environment:
        return self.eng._store.env

    @property
    def db(self) -> dict[str, Any]:
        return self.eng._store.db


@pytest.fixture
def st(store_path: str) -> Iterator[Store]:
    eng = ebsengine.Engine(store_path)
    try:
        a = eng.create_volume(size_gib=1).id
        b = eng.create_volume(size_gib=1).id
        with eng.open_volume(a) as dev:
            for i in range(4):
                dev.pwrite(noise(f"a{i}"), i * CS)
            dev.pwrite(text("t4") + text("t5"), 4 * CS)
            dev.pwrite(b"unaligned", 10 * CS + 100)
        s1 = eng.create_snapshot(a).id
        with eng.open_volume(a) as dev:
            dev.pwrite(noise("a1-new"), CS)
            dev.trim(2 * CS, CS)  # a tombstone over s1's data
            dev.pwrite(noise("a20"), 20 * CS)
        s2 = eng.create_snapshot(a).id
        with eng.open_volume(a) as dev:
            dev.pwrite(text("a30"), 30 * CS)
        with eng.open_volume(b) as dev:
            dev.pwrite(noise("a0"), 0)  # shares a chunk with vol A
            dev.pwrite(noise("b9"), 9 * CS)
        restored = eng.create_volume(snapshot_id=s1).id
        with eng.open_volume(restored) as dev:
            dev.pwrite(noise("r7"), 7 * CS)
        direct = eng.start_snapshot(1).id
        eng.put_snapshot_block(direct, 3, noise("d", L.BLOCK_SIZE // 2) + text("d",
                                                                                L.BLOCK_SIZE // 2))
        eng.complete_snapshot(direct)
        report = eng.fsck()
        assert report.ok, report.problems
        st = Store(eng, store_path, a, b, restored, s1, s2, direct)
        yield st
        st.eng.close()  # the test may have reopened it (a RADOS engine left open keeps its
        # background sweeps polling the cluster after its pools are gone)
    finally:
        eng.close()


# --- helpers over raw LMDB --------------------------------------------------------------------


def refcounts(txn: lmdb.Transaction, s: Store) -> dict[bytes, int]:
    return {k: L.read_u64(v) for k, v in txn.cursor(db=s.db["refs"])}


# Raw chunks go through the store's chunk backend, so the same damage is done on every backend
# (LMDB and memory: the ``chunks`` table; RADOS: objects of the data pool and their index).


def chunk_get(txn: lmdb.Transaction, s: Store, k: bytes) -> bytes:
    v = s.eng._chunks.backend.get_many(txn, [k])[0]
    assert v is not None
    return v


def chunk_put(txn: lmdb.Transaction, s: Store, k: bytes, v: bytes) -> None:
    backend = s.eng._chunks.backend
    if isinstance(backend, RadosChunks):
        # a pack never rewrites a stored key's bytes (a put of it is a no-op): damage goes
        # into an object of its own, which the index then names (the pack's record follows)
        backend._put_alone(txn, [(k, v)])
    else:
        backend.put_many(txn, [(k, v)])


def chunk_delete(txn: lmdb.Transaction, s: Store, k: bytes) -> None:
    s.eng._chunks.backend.delete_many(txn, [k])


def a_chunk(txn: lmdb.Transaction, s: Store, *, refs: int | None = None,
            codec_id: int | None = None) -> bytes:
    """Key of a stored chunk with the given reference count and codec."""
    rc = refcounts(txn, s)
    for k in sorted(rc):  # in a clean store, the counted chunks are the stored ones
        if (refs is None or rc[k] == refs) and \
                (codec_id is None or chunk_get(txn, s, k)[0] == codec_id):
            return k
    raise AssertionError(f"no chunk with refs={refs} codec={codec_id}")


def map_entries_of(txn: lmdb.Transaction, s: Store, key: bytes) -> list[bytes]:
    return [k for k, v in txn.cursor(db=s.db["maps"]) if v == key]


def lineage_of(txn: lmdb.Transaction, s: Store, vol: str) -> int:
    return json.loads(txn.get(vol.encode(), db=s.db["volumes"]))["lineage"]


def load_lineage(txn: lmdb.Transaction, s: Store, lid: int) -> dict:
    return json.loads(txn.get(L.lineage_key(lid), db=s.db["lineages"]))


def save_lineage(txn: lmdb.Transaction, s: Store, lid: int, d: dict) -> None:
    txn.put(L.lineage_key(lid), json.dumps(d, sort_keys=True).encode(), db=s.db["lineages"])


# --- corruptions: each changes the store and returns (labels, exact, needle) ------------------
# labels: invariants that must be reported; exact: no other invariant may be reported;
# needle: a string one of the reported problems must contain (the damaged key, ...).

Result = tuple[set[str], bool, str]


def alter_raw_chunk(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s, codec_id=L.CODEC_RAW)
    v = bytearray(chunk_get(txn, s, k))
    v[1 + 1234] ^= 0x40  # same length, one bit of data flipped
    chunk_put(txn, s, k, bytes(v))
    return {"I3"}, True, k.hex()


def alter_zstd_chunk(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s, codec_id=L.CODEC_ZSTD)
    v = bytearray(chunk_get(txn, s, k))
    for i in range(len(v) // 2, len(v)):
        v[i] ^= 0x5A
    chunk_put(txn, s, k, bytes(v))
    return {"I3"}, True, k.hex()


def truncate_chunk(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s, codec_id=L.CODEC_RAW)
    chunk_put(txn, s, k, chunk_get(txn, s, k)[:-100])
    return {"I3"}, True, k.hex()


def unknown_codec(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s)
    chunk_put(txn, s, k, b"\x07" + chunk_get(txn, s, k)[1:])
    return {"I3"}, True, k.hex()


def delete_referenced_chunk(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s, refs=2)
    chunk_delete(txn, s, k)  # its refs entry stays behind
    return {"I2", "I4"}, True, k.hex()


def delete_referenced_chunk_and_refs(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s, refs=1)
    chunk_delete(txn, s, k)
    txn.delete(k, db=s.db["refs"])
    return {"I2"}, True, k.hex()


def refcount_plus_one(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s, refs=1)
    txn.put(k, L.u64(2), db=s.db["refs"])
    return {"I4"}, True, k.hex()


def refcount_minus_one(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s, refs=2)
    txn.put(k, L.u64(1), db=s.db["refs"])
    return {"I4"}, True, k.hex()


def refcount_missing(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s, refs=1)
    txn.delete(k, db=s.db["refs"])
    return {"I4"}, True, k.hex()


def orphan_chunk(txn: lmdb.Transaction, s: Store) -> Result:
    data = noise("orphan")
    k = L.chunk_key(codec.fingerprint(data), 0)
    chunk_put(txn, s, k, encode_chunk(data, 1))
    txn.put(k, L.u64(1), db=s.db["refs"])  # a count, but no map entry behind it
    return {"I4"}, True, k.hex()


def orphan_chunk_without_refs(txn: lmdb.Transaction, s: Store) -> Result:
    data = text("orphan2")
    k = L.chunk_key(codec.fingerprint(data), 0)
    chunk_put(txn, s, k, encode_chunk(data, 1))
    return {"I4"}, True, "orphan"


def stray_refs_entry(txn: lmdb.Transaction, s: Store) -> Result:
    k = L.chunk_key(codec.fingerprint(b"nothing"), 0)
    txn.put(k, L.u64(1), db=s.db["refs"])
    return {"I4"}, True, k.hex()


def stored_zero_chunk(txn: lmdb.Transaction, s: Store) -> Result:
    """Replace a chunk referenced once by a properly keyed, counted, all-zero chunk."""
    old = a_chunk(txn, s, refs=1)
    (mk,) = map_entries_of(txn, s, old)
    chunk_delete(txn, s, old)
    txn.delete(old, db=s.db["refs"])
    zero = L.chunk_key(codec.fingerprint(bytes(CS)), 0)
    chunk_put(txn, s, zero, encode_chunk(bytes(CS), 1))
    txn.put(zero, L.u64(1), db=s.db["refs"])
    txn.put(mk, zero, db=s.db["maps"])
    return {"I3"}, True, "all zeros"


def map_to_missing_chunk(txn: lmdb.Transaction, s: Store) -> Result:
    old = a_chunk(txn, s, refs=2)
    mk = map_entries_of(txn, s, old)[0]
    missing = old[:L.FP_SIZE] + (99).to_bytes(4, "big")
    txn.put(mk, missing, db=s.db["maps"])
    return {"I2", "I4"}, True, missing.hex()


def malformed_map_value(txn: lmdb.Transaction, s: Store) -> Result:
    old = a_chunk(txn, s, refs=2)
    mk = map_entries_of(txn, s, old)[0]
    txn.put(mk, old[:7], db=s.db["maps"])
    lid, idx, gen = L.parse_map_key(mk)
    return {"I2"}, False, f"{lid}/{idx}/{gen}"


def remove_gens_entry(txn: lmdb.Transaction, s: Store) -> Result:
    k = next(iter(txn.cursor(db=s.db["gens"]).iternext(keys=True, values=False)))
    lid, gen, idx = L.parse_gen_key(k)
    txn.delete(k, db=s.db["gens"])
    return {"I5"}, True, f"{lid}/{idx}/{gen}"


def extra_gens_entry(txn: lmdb.Transaction, s: Store) -> Result:
    lid = lineage_of(txn, s, s.vol_a)
    txn.put(L.gen_key(lid, 1, 12345), b"", db=s.db["gens"])
    return {"I5"}, True, f"{lid}/12345/1"


def map_entry_beyond_head(txn: lmdb.Transaction, s: Store) -> Result:
    """An entry (properly indexed and counted) newer than every live point."""
    lid = lineage_of(txn, s, s.vol_b)
    head = load_lineage(txn, s, lid)["head"]
    key = a_chunk(txn, s)
    txn.put(L.map_key(lid, 50, head + 5), key, db=s.db["maps"])
    txn.put(L.gen_key(lid, head + 5, 50), b"", db=s.db["gens"])
    txn.put(key, L.u64(refcounts(txn, s)[key] + 1), db=s.db["refs"])
    return {"I6"}, True, f"{lid}/50/{head + 5}"


def two_entries_in_one_interval(txn: lmdb.Transaction, s: Store) -> Result:
    """vol A's head interval (s2, head] gets a second entry for an index it already has."""
    lid = lineage_of(txn, s, s.vol_a)
    lin = load_lineage(txn, s, lid)
    head = lin["head"]
    assert head - 1 in {int(g) for g in lin["points"]}
    mk = L.map_key(lid, 30, head)  # written after s2
    key = txn.get(mk, db=s.db["maps"])
    assert key
    dup_gen = head + 1  # also make the head look one further on so both sit in one interval
    lin["head"] = dup_gen
    save_lineage(txn, s, lid, lin)
    txn.put(L.map_key(lid, 30, dup_gen), key, db=s.db["maps"])
    txn.put(L.gen_key(lid, dup_gen, 30), b"", db=s.db["gens"])
    txn.put(key, L.u64(refcounts(txn, s)[key] + 1), db=s.db["refs"])
    return {"I6"}, True, f"chunk 30 of lineage {lid} has several entries"


def remove_lineage(txn: lmdb.Transaction, s: Store) -> Result:
    """vol B's lineage record (no snapshot, nothing reads through it) disappears."""
    lid = lineage_of(txn, s, s.vol_b)
    txn.delete(L.lineage_key(lid), db=s.db["lineages"])
    return {"I6", "I7"}, False, s.vol_b


def remove_base_lineage(txn: lmdb.Transaction, s: Store) -> Result:
    """vol A's lineage disappears, though its snapshot s1 is the base of another volume."""
    lid = lineage_of(txn, s, s.vol_a)
    txn.delete(L.lineage_key(lid), db=s.db["lineages"])
    return {"I6", "I7"}, False, s.vol_a


def remove_snapshot_record(txn: lmdb.Transaction, s: Store) -> Result:
    txn.delete(s.s2.encode(), db=s.db["snapshots"])
    return {"I7"}, True, s.s2


def snapshot_wrong_gen(txn: lmdb.Transaction, s: Store) -> Result:
    rec = json.loads(txn.get(s.s1.encode(), db=s.db["snapshots"]))
    rec["gen"] += 1
    txn.put(s.s1.encode(), json.dumps(rec).encode(), db=s.db["snapshots"])
    return {"I7"}, True, s.s1


def volume_owner_mismatch(txn: lmdb.Transaction, s: Store) -> Result:
    lid = lineage_of(txn, s, s.vol_b)
    lin = load_lineage(txn, s, lid)
    lin["owner"] = "vol-00000000000000000"
    save_lineage(txn, s, lid, lin)
    return {"I7"}, True, s.vol_b


def pin_count_off(txn: lmdb.Transaction, s: Store) -> Result:
    lid = lineage_of(txn, s, s.vol_a)
    lin = load_lineage(txn, s, lid)
    assert lin["pins"], "the restored volume pins s1"
    g = next(iter(lin["pins"]))
    lin["pins"][g] += 1
    save_lineage(txn, s, lid, lin)
    return {"I7"}, True, "pins"


def allocated_off_by_one(txn: lmdb.Transaction, s: Store) -> Result:
    lid = lineage_of(txn, s, s.restored)
    lin = load_lineage(txn, s, lid)
    lin["allocated"] += 1
    save_lineage(txn, s, lid, lin)
    return {"I8"}, True, f"lineage {lid}"


def bad_format_version(txn: lmdb.Transaction, s: Store) -> Result:
    txn.put(b"format", str(L.FORMAT_VERSION + 1).encode(), db=s.db["meta"])
    return {"I1"}, True, "format"


def bad_chunk_size(txn: lmdb.Transaction, s: Store) -> Result:
    txn.put(b"chunk_size", b"4096", db=s.db["meta"])
    return {"I1"}, True, "chunk size"


def corrupt_and_check(s: Store, corrupt: Callable[[lmdb.Transaction, Store], Result],
                      reopen: bool = True) -> None:
    with s.env.begin(write=True) as txn:
        labels, exact, needle = corrupt(txn, s)
    for attempt in ("open engine", "reopened engine"):
        if attempt == "reopened engine":
            if not reopen:
                break
            s.eng.close()
            s.eng = ebsengine.Engine(s.path)
        report = s.eng.fsck()
        assert report.ok is False, attempt
        assert report.problems, attempt
        found = {p.split(":", 1)[0] for p in report.problems}
        assert all(f in {f"I{i}" for i in range(1, 9)} for f in found), report.problems
        assert labels <= found, (attempt, report.problems)
        if exact:
            assert found == labels, (attempt, report.problems)
        assert any(p.split(":", 1)[0] in labels and needle in p for p in report.problems), \
            (attempt, needle, report.problems)


CORRUPTIONS = [
    alter_raw_chunk, alter_zstd_chunk, truncate_chunk, unknown_codec,
    delete_referenced_chunk, delete_referenced_chunk_and_refs,
    refcount_plus_one, refcount_minus_one, refcount_missing,
    orphan_chunk, orphan_chunk_without_refs, stray_refs_entry, stored_zero_chunk,
    map_to_missing_chunk, malformed_map_value,
    remove_gens_entry, extra_gens_entry,
    map_entry_beyond_head, two_entries_in_one_interval,
    remove_lineage, remove_snapshot_record, snapshot_wrong_gen, volume_owner_mismatch,
    pin_count_off, allocated_off_by_one, remove_base_lineage,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_fsck_finds(st: Store, corrupt: Callable[[lmdb.Transaction, Store], Result]) -> None:
    corrupt_and_check(st, corrupt)


@pytest.mark.parametrize("corrupt", [bad_format_version, bad_chunk_size],
                         ids=lambda f: f.__name__)
def test_fsck_finds_bad_meta_and_reopen_refuses(
        st: Store, corrupt: Callable[[lmdb.Transaction, Store], Result]) -> None:
    corrupt_and_check(st, corrupt, reopen=False)
    st.eng.close()
    with pytest.raises(FormatError) as exc:
        ebsengine.Engine(st.path)
    assert exc.value.code == "InternalError"
    assert exc.value.exit_code == 6
    assert "4096" in str(exc.value) or str(L.FORMAT_VERSION + 1) in str(exc.value)


def test_clean_store_reports_ok(st: Store) -> None:
    assert st.eng.fsck().ok  # with patches (partial writes) not yet folded
    st.eng.fold()
    report = st.eng.fsck()
    assert report.ok is True
    assert report.stats.get("patches", 0) == 0
    assert report.problems == []
    stats = report.stats
    assert stats["volumes"] == 3
    assert stats["snapshots"] == 3
    # exactly one stored chunk per distinct non-zero 64 KiB chunk anything can read
    distinct = set()
    for rid in (st.vol_a, st.vol_b, st.restored, st.s1, st.s2, st.direct):
        opener = st.eng.open_volume if rid.startswith("vol-") else st.eng.open_snapshot
        with opener(rid) as dev:
            data = dev.pread(32 * CS, 0)  # every fixture write is below 2 MiB
        distinct |= {data[i:i + CS] for i in range(0, len(data), CS)}
    distinct.discard(bytes(CS))
    assert stats["chunks"] == len(distinct) >= 15
    st.eng.close()
    st.eng = ebsengine.Engine(st.path)
    again = st.eng.fsck()
    assert again.ok and again.problems == [] and again.stats == stats


def test_every_problem_is_reported(st: Store) -> None:
    """Several independent corruptions at once: fsck lists all of them, not the first."""
    with st.env.begin(write=True) as txn:
        expected: set[str] = set()
        for corrupt in (alter_raw_chunk, refcount_minus_one, remove_gens_entry,
                        allocated_off_by_one, remove_snapshot_record):
            expected |= corrupt(txn, st)[0]
    report = st.eng.fsck()
    assert not report.ok
    assert {p.split(":", 1)[0] for p in report.problems} == expected == \
        {"I3", "I4", "I5", "I7", "I8"}


# --- damage fsck must report, not crash on --------------------------------------------------


def _empty_chunk_value(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s)
    chunk_put(txn, s, k, b"")
    return {"I3"}, False, k.hex()


def _short_refs_value(txn: lmdb.Transaction, s: Store) -> Result:
    k = a_chunk(txn, s)
    txn.put(k, b"\x01", db=s.db["refs"])
    return {"I4"}, False, k.hex()


def _short_map_key(txn: lmdb.Transaction, s: Store) -> Result:
    txn.put(b"\x00\x01", a_chunk(txn, s), db=s.db["maps"])
    return set(), False, ""


def _garbage_volume_record(txn: lmdb.Transaction, s: Store) -> Result:
    txn.put(s.vol_b.encode(), b"{not json", db=s.db["volumes"])
    return {"I7"}, False, s.vol_b


@pytest.mark.parametrize("corrupt", [_empty_chunk_value, _short_refs_value, _short_map_key,
                                     _garbage_volume_record], ids=lambda f: f.__name__)
def test_fsck_reports_malformed_records(
        st: Store, corrupt: Callable[[lmdb.Transaction, Store], Result]) -> None:
    with st.env.begin(write=True) as txn:
        labels, _, needle = corrupt(txn, st)
    report = st.eng.fsck()
    assert not report.ok
    found = {p.split(":", 1)[0] for p in report.problems}
    assert labels <= found
    assert any(needle in p for p in report.problems)


# --- the format marker guards reopening -------------------------------------------------------


def test_reopen_garbage_format_raises_format_error(st: Store) -> None:
    with st.env.begin(write=True) as txn:
        txn.put(b"format", b"ebs?", db=st.db["meta"])
    st.eng.close()
    with pytest.raises(FormatError):
        ebsengine.Engine(st.path)


def test_reopen_without_format_marker_refuses(st: Store) -> None:
    """A store that holds data but lost its format record is not taken for a new store
    (re-initialising meta would restart lineage numbering over existing lineages)."""
    with st.env.begin(write=True) as txn:
        txn.delete(b"format", db=st.db["meta"])
    with st.env.begin() as txn:
        before = [(k, v) for k, v in txn.cursor(db=st.db["meta"])]
    st.eng.close()
    try:
        eng = ebsengine.Engine(st.path)
    except FormatError as exc:
        assert "format" in str(exc)
    else:
        try:
            eng.create_volume(size_gib=1)
            report = eng.fsck()
        finally:
            eng.close()
        pytest.fail(f"a store without its format marker was reopened as new; fsck now: "
                    f"{report.problems}")
    if st.path.startswith("memory://"):  # reopen the named memory store read-only
        from ebsengine.storage.memory import MemoryBackend
        mem = MemoryBackend(st.path[len("memory://"):], readonly=True)
        with mem.begin() as txn:
            meta = mem.open_db(b"meta", create=False)
            assert [(k, v) for k, v in txn.cursor(db=meta)] == before  # untouched
        return
    if st.path.startswith("rados://"):  # reopen the RADOS store read-only
        from ebsengine.storage.store import open_backend
        be = open_backend(st.path, readonly=True)
        try:
            meta = be.open_db(b"meta", create=False)
            with be.begin() as txn:
                assert [(k, v) for k, v in txn.cursor(db=meta)] == before  # untouched
        finally:
            be.close()
        return
    env = lmdb.open(st.path, max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            assert [(k, v) for k, v in txn.cursor(db=meta)] == before  # untouched
    finally:
        env.close()
