"""A flush commits in write transactions of about ``FLUSH_GROUP_BYTES`` of prepared chunks
and pages each (which bounds what it holds at once), and behaves as one flush: a snapshot taken by it holds every write
acknowledged before it, and a flush that fails in a later transaction loses nothing."""

from __future__ import annotations

import random
import sys

import pytest
from block_support import eng, eng_plain  # noqa: F401  (fixtures)

from ebsengine.block import volume as volmod
from ebsengine.errors import StoreFull

CS = 64 * 1024
PS = 4096
CHUNKS = 23  # several groups of 4, the last one short


def _write(dev, model: bytearray, rng: random.Random) -> None:
    """Whole chunks, single pages over stored chunks, partial pages and a hole, over
    ``CHUNKS`` chunks."""
    for idx in range(CHUNKS):
        kind = idx % 4
        if kind == 0:
            data, off = rng.randbytes(CS), idx * CS
        elif kind == 1:
            data, off = rng.randbytes(PS), idx * CS + rng.randrange(16) * PS
        elif kind == 2:
            data, off = rng.randbytes(100), idx * CS + rng.randrange(CS - 100)
        else:
            dev.trim(idx * CS, CS)
            model[idx * CS:(idx + 1) * CS] = bytes(CS)
            continue
        dev.pwrite(data, off)
        model[off:off + len(data)] = data


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Groups of four chunks' bytes; returns the sizes of the groups ``_commit`` took."""
    monkeypatch.setattr(volmod, "FLUSH_GROUP_BYTES", 4 * CS)
    sizes: list[int] = []
    real = volmod.VolumeCache._commit

    def counting(self, items, in_txn):  # type: ignore[no-untyped-def]
        taken = real(self, items, in_txn)
        sizes.append(taken)
        return taken

    monkeypatch.setattr(volmod.VolumeCache, "_commit", counting)
    return sizes


def test_a_flush_commits_in_groups_and_reads_back(eng, small_groups) -> None:
    rng = random.Random(7)
    vol = eng.create_volume(size_gib=1)
    model = bytearray(CHUNKS * CS)
    with eng.open_volume(vol.id) as dev:
        base = rng.randbytes(CHUNKS * CS)
        dev.pwrite(base, 0)
        model[:] = base
        dev.flush()
        assert small_groups == [4] * 5 + [3]
        small_groups.clear()
        _write(dev, model, rng)
        snap = eng.create_snapshot(vol.id)  # the flush of a snapshot, in groups too
        assert sum(small_groups) == CHUNKS and len(small_groups) > 1
        dev.pwrite(rng.randbytes(CS), 0)  # after the snapshot: not in it
        dev.flush()
        assert dev.pread(CS, CS) == model[CS:2 * CS]
    with eng.open_snapshot(snap.id) as ro:
        assert ro.pread(CHUNKS * CS, 0) == model
    report = eng.fsck()
    assert report.ok, report.problems


def test_a_flush_failing_in_a_later_group_loses_nothing(eng, small_groups,
                                                         monkeypatch) -> None:
    rng = random.Random(8)
    vol = eng.create_volume(size_gib=1)
    model = bytearray(CHUNKS * CS)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(rng.randbytes(CHUNKS * CS), 0)
        model[:] = dev.pread(CHUNKS * CS, 0)
        dev.flush()
        _write(dev, model, rng)
        monkeypatch.setattr(volmod, "FLUSH_GROUP_BYTES", CS)  # groups of about 4 entries
        real = volmod.VolumeCache._commit  # the counting one
        calls = []

        def failing(self, items, in_txn):  # type: ignore[no-untyped-def]
            calls.append(len(items))
            if len(calls) == 3:
                raise StoreFull("refused (test)")
            return real(self, items, in_txn)

        monkeypatch.setattr(volmod.VolumeCache, "_commit", failing)
        with pytest.raises(StoreFull):
            eng.create_snapshot(vol.id)
        assert len(calls) == 3 and not eng.list_snapshots(vol.id)
        assert dev.pread(CHUNKS * CS, 0) == model  # two groups stored, the rest still cached
        # newer writes over entries that were being flushed, before the next flush
        for idx in (1, 9, 22):
            off = idx * CS + 3 * PS
            data = rng.randbytes(PS + 10)
            dev.pwrite(data, off)
            model[off:off + len(data)] = data
        monkeypatch.setattr(volmod.VolumeCache, "_commit", real)
        snap = eng.create_snapshot(vol.id)
        assert dev.pread(CHUNKS * CS, 0) == model
    with eng.open_snapshot(snap.id) as ro:
        assert ro.pread(CHUNKS * CS, 0) == model
    report = eng.fsck()
    assert report.ok, report.problems


def test_a_committed_group_gives_its_room_back_and_its_buffers_go(eng, small_groups,
                                                                   monkeypatch) -> None:
    """Once a group has committed, its entries leave ``flushing`` and their bytes leave
    ``flushing_bytes`` (writers waiting for room go on), and nothing of the flush holds
    their buffers any more (the room given back is memory given back)."""
    rng = random.Random(3)
    vol = eng.create_volume(size_gib=1)
    with eng.open_volume(vol.id) as dev:
        cache = dev._src
        bufs = []
        for idx in range(12):  # three groups of four whole chunks
            dev.pwrite(rng.randbytes(CS), idx * CS)
            bufs.append(cache.dirty[idx])
        seen = []
        real = volmod.VolumeCache._commit  # the counting one

        def watching(self, items, in_txn):  # type: ignore[no-untyped-def]
            seen.append((sorted(self.flushing), self.flushing_bytes,
                         [sys.getrefcount(b) for b in bufs[:4]]))
            return real(self, items, in_txn)

        monkeypatch.setattr(volmod.VolumeCache, "_commit", watching)
        want = b"".join(bufs)
        dev.flush()
        assert small_groups == [4, 4, 4]
        assert [s[0] for s in seen] == [list(range(12)), list(range(4, 12)),
                                        list(range(8, 12))]
        assert [s[1] for s in seen] == [12 * CS, 8 * CS, 4 * CS]
        # bufs, the slice, the loop variable and getrefcount's argument: nothing else holds
        # the first group's buffers once it is in (the flush held them all before)
        assert seen[0][2] == [6] * 4, seen
        assert seen[1][2] == seen[2][2] == [4] * 4, seen
        assert dev.pread(12 * CS, 0) == want


def test_a_group_is_bounded_by_the_bytes_it_prepares_not_by_its_entries(
        eng, small_groups) -> None:
    """Single pages over stored chunks prepare one page each: many go in one group (each
    group is a synced commit). Pages merged with a patch frozen below a snapshot prepare
    that patch's pages too, and fill a group sooner."""
    rng = random.Random(11)
    vol = eng.create_volume(size_gib=1)
    n = 40
    model = bytearray(n * CS)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(rng.randbytes(n * CS), 0)
        model[:] = dev.pread(n * CS, 0)
        dev.flush()
        assert small_groups == [4] * 10  # whole chunks: 64 KiB each
        small_groups.clear()
        for idx in range(n):  # one page each: 4 KiB prepared
            off = idx * CS + (idx % 16) * PS
            page = rng.randbytes(PS)
            dev.pwrite(page, off)
            model[off:off + PS] = page
        dev.flush()
        assert small_groups == [n]
        small_groups.clear()
        for idx in range(12):  # patches of 10 pages, then frozen
            for p in range(10):
                off = idx * CS + p * PS
                page = rng.randbytes(PS)
                dev.pwrite(page, off)
                model[off:off + PS] = page
        eng.create_snapshot(vol.id)
        small_groups.clear()
        for idx in range(12):  # a new page over each: merged with the frozen 10
            off = idx * CS + 12 * PS
            page = rng.randbytes(PS)
            dev.pwrite(page, off)
            model[off:off + PS] = page
        dev.flush()
        assert small_groups == [6, 6]  # 11-12 pages (44-48 KiB) each: six pass 4 x 64 KiB
        assert dev.pread(n * CS, 0) == model
    report = eng.fsck()
    assert report.ok, report.problems


def test_a_fold_between_a_flush_s_two_transactions_makes_it_prepare_again(
        eng_plain, monkeypatch) -> None:
    """A flush prepares its patches over the values it read, then writes them in a second
    transaction. A fold committed in between replaces those values (patches become
    chunks): the patches are prepared again over the new values; with no commit in
    between, the values are not read a second time."""
    eng = eng_plain
    rng = random.Random(5)
    n = 6
    vol = eng.create_volume(size_gib=1)
    model = bytearray(n * CS)
    reads: list[int] = []
    real_values = volmod._Source._values

    def values(self, txn, idxs):  # type: ignore[no-untyped-def]
        reads.append(len(idxs))
        return real_values(self, txn, idxs)

    monkeypatch.setattr(volmod._Source, "_values", values)

    def pages(page_no: int) -> None:
        for idx in range(n):
            off = idx * CS + page_no * PS
            data = rng.randbytes(PS)
            dev.pwrite(data, off)
            model[off:off + PS] = data

    with eng.open_volume(vol.id) as dev:
        dev.pwrite(rng.randbytes(n * CS), 0)
        model[:] = dev.pread(n * CS, 0)
        dev.flush()
        pages(1)
        reads.clear()
        dev.flush()  # patches of one layer at the head
        assert reads == [n]  # read once: no commit came between the two transactions
        real_encode = volmod.encode_many
        folded: list[int] = []

        def fold_first(*args, **kwargs):  # type: ignore[no-untyped-def]
            if not folded:  # between the flush's read and write transactions
                folded.append(eng._folder.fold_all())
            return real_encode(*args, **kwargs)

        monkeypatch.setattr(volmod, "encode_many", fold_first)
        pages(2)  # prepared as new layers over those patches, which the fold replaces
        reads.clear()
        dev.flush()
        assert folded == [n]
        assert reads[0] == n and len(reads) > 1  # read again after the fold's commit
        assert dev.pread(n * CS, 0) == model
    report = eng.fsck()
    assert report.ok, report.problems
    with eng.open_volume(vol.id) as dev:
        assert dev.pread(n * CS, 0) == model


def test_flushes_beside_a_folder_that_never_rests_lose_nothing(eng_plain) -> None:
    """Folds commit all the time while single pages are written and flushed: a fold that
    lands between a flush's read and its write transaction must make the flush prepare its
    patches again (the commit counter must not run ahead of what the flush read). A few
    seconds of it; a reviewer's version of this failed within 3 s when it did."""
    import threading
    import time

    eng = eng_plain
    rng = random.Random(1)
    n = 8
    vol = eng.create_volume(size_gib=1)
    model = bytearray(n * CS)
    stop = threading.Event()
    failed: list[BaseException] = []

    def folding() -> None:
        while not stop.is_set():
            try:
                eng._folder.fold_round(min_pages=1, scan=None)
            except BaseException as exc:  # noqa: BLE001
                failed.append(exc)
                return

    with eng.open_volume(vol.id) as dev:
        dev.pwrite(rng.randbytes(n * CS), 0)
        model[:] = dev.pread(n * CS, 0)
        dev.flush()
        folder = threading.Thread(target=folding)
        folder.start()
        try:
            deadline = time.monotonic() + 4
            rounds = 0
            while time.monotonic() < deadline and not failed:
                for idx in range(n):
                    off = idx * CS + rng.randrange(16) * PS
                    page = rng.randbytes(PS)
                    dev.pwrite(page, off)
                    model[off:off + PS] = page
                time.sleep(rng.random() * 0.004)  # let a fold's commit meet the flush's start
                dev.flush()
                rounds += 1
                if rounds % 50 == 0:
                    assert dev.pread(n * CS, 0) == model
        finally:
            stop.set()
            folder.join()
        assert not failed, failed
        assert dev.pread(n * CS, 0) == model
    report = eng.fsck()
    assert report.ok, report.problems[:3]
