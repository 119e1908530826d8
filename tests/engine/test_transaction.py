"""The engine's unit of work: several resources and service records commit together or not at
all, and snapshots in one unit are one point in time (library API)."""

from __future__ import annotations

import threading
import time

import pytest

import ebsengine
from conftest import store_digest
from ebsengine import layout as L
from ebsengine.errors import IncorrectState, StoreFull, VolumeInUse, VolumeNotFound


def test_unit_commits_resources_and_records_together(eng: ebsengine.Engine) -> None:
    with eng.transaction() as tx:
        vol = eng.create_volume(size_gib=1, tx=tx)
        eng.service_put("t", vol.id, {"made": 1}, tx=tx)
        assert eng.get_volume(vol.id, tx=tx).id == vol.id          # the unit sees itself
        assert eng.service_get("t", vol.id, tx=tx) == {"made": 1}
        seen: list[BaseException] = []                              # others do not, yet
        t = threading.Thread(target=lambda: _catch(seen, eng.get_volume, vol.id))
        t.start()
        t.join()
        assert isinstance(seen[0], VolumeNotFound)
    assert eng.get_volume(vol.id).size_gib == 1
    assert eng.service_get("t", vol.id) == {"made": 1}
    assert not tx.open


def _catch(out: list[BaseException], fn, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        out.append(exc)


def test_an_exception_stores_nothing(eng: ebsengine.Engine) -> None:
    vol = eng.create_volume(size_gib=1)
    snap = eng.create_snapshot(vol.id)
    eng.service_put("t", "keep", 1)
    before = store_digest(eng)
    with pytest.raises(RuntimeError):
        with eng.transaction(flush=[vol.id]) as tx:
            eng.create_volume(size_gib=2, tx=tx)
            eng.create_snapshot(vol.id, tx=tx)
            eng.copy_snapshot(snap.id, tx=tx)
            eng.start_snapshot(1, tx=tx)
            eng.modify_volume(vol.id, size_gib=5, tx=tx)
            eng.set_tags(vol.id, {"a": "b"}, tx=tx)
            eng.service_put("t", "keep", None, tx=tx)
            eng.delete_snapshot(snap.id, tx=tx)
            raise RuntimeError("the service layer failed")
    assert store_digest(eng) == before
    assert eng.get_volume(vol.id).size_gib == 1
    assert eng.get_snapshot(snap.id).state == "completed"


def test_a_refused_step_leaves_the_store_byte_identical(eng: ebsengine.Engine) -> None:
    a = eng.create_volume(size_gib=1)
    b = eng.create_volume(size_gib=1)
    eng.attach_volume(b.id, "i-0123456789abcdef0", "/dev/sdf")
    before = store_digest(eng)
    with pytest.raises(VolumeInUse):
        with eng.transaction() as tx:
            eng.delete_volume(a.id, tx=tx)
            eng.service_put("aws.volmod", a.id, None, tx=tx)
            eng.delete_volume(b.id, tx=tx)   # attached: refused, and with it the whole unit
    assert store_digest(eng) == before
    assert eng.get_volume(a.id).id == a.id


def test_deletes_in_a_unit_take_effect_after_commit(eng: ebsengine.Engine) -> None:
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"x" * 4096, 0)
    with eng.transaction() as tx:
        eng.delete_volume(vol.id, tx=tx)
        eng.service_put("t", vol.id, None, tx=tx)
    with pytest.raises(VolumeNotFound):
        eng.get_volume(vol.id)
    assert eng.fsck().ok


def test_snapshots_in_one_unit_freeze_one_point_in_time(eng: ebsengine.Engine) -> None:
    """A writer writes n to volume A, flushes, writes n to B, flushes. In any state a crash
    could leave, B's counter is at most A's. Snapshots taken one by one break that (B is
    frozen later, after A moved on); snapshots of one unit cannot."""
    a = eng.create_volume(size_gib=1)
    b = eng.create_volume(size_gib=1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with eng.open_volume(a.id) as da, eng.open_volume(b.id) as db:
                n = 0
                while not stop.is_set():
                    n += 1
                    da.pwrite(n.to_bytes(8, "big"), 0)
                    da.flush()
                    db.pwrite(n.to_bytes(8, "big"), 0)
                    db.flush()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        pairs = []
        for _ in range(25):
            with eng.transaction(flush=[a.id, b.id]) as tx:
                sa = eng.create_snapshot(a.id, tx=tx)
                time.sleep(0.005)  # a slow step: nothing may commit in between
                sb = eng.create_snapshot(b.id, tx=tx)
            pairs.append((sa.id, sb.id))
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    seen_progress = set()
    for sa_id, sb_id in pairs:
        with eng.open_snapshot(sa_id) as ra, eng.open_snapshot(sb_id) as rb:
            na = int.from_bytes(ra.pread(8, 0), "big")
            nb = int.from_bytes(rb.pread(8, 0), "big")
        assert nb <= na <= nb + 1, (na, nb)
        seen_progress.add(na)
    assert len(seen_progress) > 1  # the writer really ran between the units


def test_snapshot_in_a_unit_holds_every_acknowledged_write(eng: ebsengine.Engine) -> None:
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"acknowledged", 100)           # in the cache, not flushed
        with eng.transaction(flush=[vol.id]) as tx:
            snap = eng.create_snapshot(vol.id, tx=tx)
        dev.pwrite(b"after", 100)
    with eng.open_snapshot(snap.id) as ro:
        assert ro.pread(12, 100) == b"acknowledged"


def test_a_flush_in_groups_does_not_split_around_a_units_snapshot(
        eng: ebsengine.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush commits in groups (of ``FLUSH_GROUP_BYTES``). One that another writer begins
    after the unit's own flush must not land some groups before the unit's snapshot and
    the rest after it: the snapshot holds the writes it flushed, or none of them."""
    from ebsengine.block import volume as volmod
    cs = L.CHUNK_SIZE
    monkeypatch.setattr(volmod, "FLUSH_GROUP_BYTES", 2 * cs)
    vol = eng.create_volume(size_gib=1)
    data = bytes(range(256)) * (6 * cs // 256)  # 6 chunks: 3 groups
    first_group = threading.Event()
    real_commit = volmod.VolumeCache._commit
    writer_thread: list[threading.Thread] = []

    def commit(self, items, in_txn):  # type: ignore[no-untyped-def]
        taken = real_commit(self, items, in_txn)
        if threading.current_thread() in writer_thread and not first_group.is_set():
            first_group.set()
            time.sleep(0.3)  # between two groups: the unit tries to freeze meanwhile
        return taken

    monkeypatch.setattr(volmod.VolumeCache, "_commit", commit)
    errors: list[BaseException] = []
    dev = eng.open_volume(vol.id)

    def writer() -> None:
        try:
            dev.pwrite(data, 0)
            dev.flush()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    real_flush_volume = eng.flush_volume

    def flush_volume(volume_id: str) -> None:  # the unit's first flush, then the writer's
        real_flush_volume(volume_id)
        t = threading.Thread(target=writer)
        writer_thread.append(t)
        t.start()
        assert first_group.wait(10)

    monkeypatch.setattr(eng, "flush_volume", flush_volume)
    try:
        with eng.transaction(flush=[vol.id]) as tx:
            snap = eng.create_snapshot(vol.id, tx=tx)
        writer_thread[0].join()
    finally:
        dev.close()
    assert not errors, errors
    with eng.open_snapshot(snap.id) as ro:
        got = ro.pread(len(data), 0)
    held = [got[i * cs:(i + 1) * cs] == data[i * cs:(i + 1) * cs] for i in range(6)]
    assert all(held) or got == bytes(len(data)), f"chunks the snapshot holds: {held}"


def test_a_snapshot_needs_its_volume_flushed_for_the_unit(eng: ebsengine.Engine) -> None:
    vol = eng.create_volume(size_gib=1)
    before = store_digest(eng)
    with pytest.raises(IncorrectState, match="flush"):
        with eng.transaction() as tx:
            eng.create_snapshot(vol.id, tx=tx)
    assert store_digest(eng) == before


def test_misuse_is_refused_not_deadlocked(eng: ebsengine.Engine, store_path: str) -> None:
    vol = eng.create_volume(size_gib=1)
    with eng.transaction() as tx:
        with pytest.raises(IncorrectState, match="already open"):
            with eng.transaction():
                pass
        with pytest.raises(IncorrectState, match="unit of work"):
            eng.create_volume(size_gib=1)              # would need a second transaction
        with pytest.raises(IncorrectState):
            eng.flush_volume(vol.id)
        out: list[BaseException] = []
        t = threading.Thread(target=lambda: _catch(out, eng.get_volume, vol.id, tx=tx))
        t.start()
        t.join()
        assert isinstance(out[0], IncorrectState)      # a unit belongs to its thread
    with pytest.raises(IncorrectState, match="ended"):
        eng.get_volume(vol.id, tx=tx)
    with ebsengine.Engine(store_path + "-other") as other, other.transaction() as otx:
        with pytest.raises(ebsengine.EbsError, match="another engine"):
            eng.get_volume(vol.id, tx=otx)


def test_a_unit_that_grows_a_full_store_is_refused_whole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with ebsengine.Engine(tmp_path / "s", map_size=8 << 20) as e:
        vol = e.create_volume(size_gib=1)
        before = store_digest(e)
        with pytest.raises(StoreFull):
            with e.transaction() as tx:
                for i in range(4000):
                    e.service_put("fill", f"{i:06d}", "x" * 1000, tx=tx)
        assert store_digest(e) == before
        # a unit that only deletes may use the reserve kept for deletions
        with e.transaction() as tx:
            e.delete_volume(vol.id, tx=tx)
        assert e.list_volumes() == []


def test_service_items_limit(eng: ebsengine.Engine) -> None:
    for i in range(5):
        eng.service_put("ns", f"k{i}", i)
    assert [k for k, _ in eng.service_items("ns", limit=2)] == ["k0", "k1"]
    assert len(eng.service_items("ns")) == 5
    assert L.service_key("ns", "k0").startswith(b"ns")


@pytest.mark.parametrize("where", ["lmdb", "memory"])
def test_a_device_flush_on_the_unit_s_thread_is_refused_and_the_unit_goes_on(
        store_path: str, where: str) -> None:
    """A flush needs a write transaction of its own, and the unit holds the store's writer:
    ``Device.flush`` (or a write past the dirty limit) on the unit's thread is refused with
    IncorrectState, instead of hanging (memory://) or failing as a corrupt store (LMDB), and
    the unit and the refused write leave everything as it was meant to be."""
    cs = L.CHUNK_SIZE
    path = store_path if where == "lmdb" else f"memory://unit-flush-{time.monotonic_ns()}"
    with ebsengine.Engine(path, dirty_limit=4 * cs) as eng:
        vol = eng.create_volume(size_gib=1)
        dev = eng.open_volume(vol.id)
        try:
            dev.pwrite(b"a" * cs, 0)
            with eng.transaction(flush=[vol.id]) as tx:
                dev.pwrite(b"b" * cs, cs)  # the cache takes it: no flush needed
                with pytest.raises(IncorrectState, match="unit of work"):
                    dev.flush()
                taken = 2
                with pytest.raises(IncorrectState, match="unit of work"):
                    for taken in range(2, 8):  # until the cache passes its limit: a flush
                        dev.pwrite(bytes([taken]) * cs, taken * cs)
                snap = eng.create_snapshot(vol.id, tx=tx)
            want = b"a" * cs + b"b" * cs + b"".join(bytes([i]) * cs for i in range(2, taken))
            assert 2 < taken < 7 and dev.pread(8 * cs, 0) == want + bytes((8 - taken) * cs)
            dev.flush()  # after the unit: fine
        finally:
            dev.close()
        with eng.open_snapshot(snap.id) as ro:
            assert ro.pread(2 * cs, 0) == b"a" * cs + bytes(cs)  # b came after the unit began
        with eng.open_volume(vol.id) as dev2:
            assert dev2.pread(8 * cs, 0) == want + bytes((8 - taken) * cs)
        report = eng.fsck()
        assert report.ok, report.problems
