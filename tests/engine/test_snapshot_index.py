"""The ``snaps_by_volume`` index (format 2), the engine's cursor paging, and the migration of
a format-1 store (issue 7: "Metadata queries cost what they return")."""

from __future__ import annotations

import json

import lmdb
import pytest

import ebsengine
from ebsengine import layout as L
from ebsengine.errors import FormatError, InvalidParameter


def index(e: ebsengine.Engine) -> set[tuple[str, str]]:
    with e._store.read() as txn:
        keys = list(txn.cursor(db=e._store.db["snaps_by_volume"]).iternext(values=False))
    return {tuple(k.decode().split("\x00")) for k in keys}  # type: ignore[misc]


def test_index_follows_every_snapshot_change(eng: ebsengine.Engine) -> None:
    a = eng.create_volume(size_gib=1).id
    b = eng.create_volume(size_gib=1).id
    sa = [eng.create_snapshot(a).id for _ in range(3)]
    sb = eng.create_snapshot(b).id
    copy = eng.copy_snapshot(sa[0]).id  # a copy keeps its source's volume id
    direct = eng.start_snapshot(1).id    # EBS direct: no volume, not indexed
    failed = eng.start_snapshot(1).id
    eng.fail_snapshot(failed)
    eng.complete_snapshot(direct)
    assert index(eng) == {(a, s) for s in [*sa, copy]} | {(b, sb)}
    assert sorted(s.id for s in eng.list_snapshots(a)) == sorted([*sa, copy])
    assert [s.id for s in eng.list_snapshots(b)] == [sb]
    eng.set_tags(sa[1], {"k": "v"})  # rewriting a record keeps exactly one entry
    eng.delete_snapshot(sa[1])
    eng.delete_snapshot(copy)
    eng.delete_volume(a)  # snapshots outlive their volume, and so do their entries
    assert index(eng) == {(a, sa[0]), (a, sa[2]), (b, sb)}
    assert [s.id for s in eng.list_snapshots(a)] == [sa[0], sa[2]]  # oldest first
    assert eng.list_snapshots("vol-0123456789abcdef0") == []
    assert eng.fsck().ok


def test_cursor_pages_resume_after_the_last_id(eng: ebsengine.Engine) -> None:
    vols = [eng.create_volume(size_gib=1).id for _ in range(3)]
    snaps = [eng.create_snapshot(vols[i % 3]).id for i in range(11)]
    seen: list[str] = []
    after = None
    sizes = []
    while True:
        page, after = eng.page_snapshots(after, 4)
        sizes.append(len(page))
        seen += [s.id for s in page]
        if after is None:
            break
    assert sizes == [4, 4, 3] and seen == sorted(snaps)
    # a page token outlives the deletion of the item it names
    first, nxt = eng.page_snapshots(None, 4)
    eng.delete_snapshot(first[-1].id)
    rest, _ = eng.page_snapshots(nxt, 100)
    assert [s.id for s in rest] == seen[4:]
    # per volume, with a predicate, and exactly full pages report no further page
    mine = sorted(s for s in snaps if s != first[-1].id and
                  eng.get_snapshot(s).volume_id == vols[0])
    page, nxt = eng.page_snapshots(None, len(mine), volume_id=vols[0])
    assert [s.id for s in page] == mine and nxt is None
    page, nxt = eng.page_snapshots(None, 1, volume_id=vols[0], where=lambda s: s.id != mine[0])
    assert [s.id for s in page] == [mine[1]] and nxt == mine[1]
    vpage, vnext = eng.page_volumes(None, 2)
    assert [v.id for v in vpage] == sorted(vols)[:2] and vnext == sorted(vols)[1]
    assert [v.id for v in eng.page_volumes(vnext, 2)[0]] == sorted(vols)[2:]
    with pytest.raises(InvalidParameter):
        eng.page_snapshots(None, 0)


def make_format1_store(path: str) -> dict[str, str]:
    """A store as format 1 wrote it: the same records, no ``snaps_by_volume`` sub-db, and
    ``format`` = 1. Built with today's engine, then taken back to format 1 by hand (the two
    formats differ only in that sub-db)."""
    with ebsengine.Engine(path) as e:
        a = e.create_volume(size_gib=1).id
        with e.open_volume(a) as dev:
            dev.pwrite(b"x" * L.CHUNK_SIZE, 0)
        s1 = e.create_snapshot(a).id
        s2 = e.create_snapshot(a).id
        d = e.start_snapshot(1).id
    env = lmdb.open(path, max_dbs=32, subdir=True)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"snaps_by_volume", txn=txn), delete=True)
        txn.put(b"format", b"1", db=env.open_db(b"meta", txn=txn))
    with env.begin() as txn:
        names = {k for k, _ in txn.cursor()}
    env.close()
    assert b"snaps_by_volume" not in names
    return {"vol": a, "s1": s1, "s2": s2, "direct": d}


def test_format1_store_is_migrated_on_open(store_path: str) -> None:
    ids = make_format1_store(store_path)
    with pytest.raises(FormatError, match="migrated"):
        ebsengine.Engine(store_path, readonly=True)
    with ebsengine.Engine(store_path) as e:
        with e._store.read() as txn:
            assert txn.get(b"format", db=e._store.db["meta"]) == str(L.FORMAT_VERSION).encode()
        assert index(e) == {(ids["vol"], ids["s1"]), (ids["vol"], ids["s2"])}
        assert sorted(s.id for s in e.list_snapshots(ids["vol"])) == sorted([ids["s1"], ids["s2"]])
        assert e.fsck().ok
        s3 = e.create_snapshot(ids["vol"]).id  # and it is kept from now on
        assert (ids["vol"], s3) in index(e)
    with ebsengine.Engine(store_path, readonly=True) as e:  # format 2 now: opens read-only
        assert len(e.list_snapshots(ids["vol"])) == 3


def _corrupt(path: str, fn) -> None:  # type: ignore[no-untyped-def]
    env = lmdb.open(path, max_dbs=32, subdir=True)
    with env.begin(write=True) as txn:
        fn(txn, lambda name: env.open_db(name.encode(), txn=txn))
    env.close()


@pytest.mark.parametrize("damage", ["missing", "stray", "wrong_volume"])
def test_fsck_finds_an_index_that_disagrees_with_the_records(store_path: str, damage: str) -> None:
    with ebsengine.Engine(store_path) as e:
        a = e.create_volume(size_gib=1).id
        s = e.create_snapshot(a).id
        assert e.fsck().ok
    other = "vol-0123456789abcdef0"

    def change(txn: lmdb.Transaction, db) -> None:  # type: ignore[no-untyped-def]
        idx = db("snaps_by_volume")
        if damage in ("missing", "wrong_volume"):
            txn.delete(L.snap_volume_key(a, s), db=idx)
        if damage == "stray":
            txn.put(L.snap_volume_key(other, "snap-0123456789abcdef0"), b"", db=idx)
        if damage == "wrong_volume":
            txn.put(L.snap_volume_key(other, s), b"", db=idx)

    _corrupt(store_path, change)
    with ebsengine.Engine(store_path) as e:
        report = e.fsck()
    assert not report.ok
    assert all(p.startswith("I7: ") for p in report.problems), report.problems
    text = " ".join(report.problems)
    assert "snaps_by_volume" in text
    if damage in ("missing", "wrong_volume"):
        assert f"snapshot {s} of volume {a} is missing" in text
    if damage != "missing":
        assert other in text


def test_index_entry_is_written_with_the_record(eng: ebsengine.Engine) -> None:
    """A snapshot refused half-way (bad description) leaves no index entry behind."""
    a = eng.create_volume(size_gib=1).id
    with pytest.raises(InvalidParameter):
        eng.create_snapshot(a, description="x" * 300)
    assert index(eng) == set()
    with eng._store.read() as txn:
        recs = [json.loads(v) for _, v in txn.cursor(db=eng._store.db["snapshots"])]
    assert recs == []
