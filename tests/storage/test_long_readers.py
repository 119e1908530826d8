"""Defect 9 of issue 7: a long export or fsck must not hold one read transaction for its whole
run. On LMDB a live reader keeps every page freed after it began from being reused, so a
busy writer ran into StoreFull long before the store was full.

Each test runs a writer that rewrites a volume many times *while* a long export/fsck is in
the middle of its run (a handshake makes the interleaving deterministic: the reader side
asks for one writer round per batch and waits for it). The rounds rewrite far more bytes
than the store has free, but the live data always fits: it only works if the freed pages
are reused while the export/fsck is running."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

import ebsengine
import ebsengine.check
import ebsengine.engine.transfer
from ebsengine import layout as L
from ebsengine.errors import StoreLocked

MAP_SIZE = 96 << 20
SOURCE_MIB = 32  # the volume exported / most of what fsck reads
REWRITE_MIB = 8  # what one writer round rewrites (all of it freed by the next round)


def noise(tag: str, n: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.blake2b(f"{tag}/{i}".encode(), digest_size=64).digest()
        i += 1
    return bytes(out[:n])


class Writer:
    """A thread that does one rewrite round of its own volume per request."""

    def __init__(self, eng: ebsengine.Engine) -> None:
        self.eng = eng
        self.vol = eng.create_volume(size_gib=1).id
        self.rounds = 0
        self.errors: list[BaseException] = []
        self._want = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self.eng.open_volume(self.vol) as dev:
            while True:
                self._want.acquire()
                if self._stop:
                    return
                try:
                    dev.pwrite(noise(f"round{self.rounds}", REWRITE_MIB << 20), 0)
                    dev.flush()
                    self.rounds += 1
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(exc)
                self._done.release()

    def one_round(self) -> None:
        """Ask for a round and wait until it is committed (or failed)."""
        self._want.release()
        assert self._done.acquire(timeout=60), "writer round did not finish"

    def stop(self) -> None:
        self._stop = True
        self._want.release()
        self._thread.join(30)


@pytest.fixture
def busy(tmp_path):
    with ebsengine.Engine(tmp_path / "store", map_size=MAP_SIZE) as eng:
        src = eng.create_volume(size_gib=1).id
        data = noise("source", SOURCE_MIB << 20)
        with eng.open_volume(src) as dev:
            dev.pwrite(data, 0)
        writer = Writer(eng)
        try:
            yield eng, src, data, writer
        finally:
            writer.stop()


def test_a_long_export_lets_a_concurrent_writer_reuse_freed_space(busy, tmp_path, monkeypatch):
    eng, src, data, writer = busy
    monkeypatch.setattr(ebsengine.engine.transfer, "EXPORT_BATCH", 16)  # 32 batches of 1 MiB

    rounds = 32  # 32 rounds of 8 MiB = 256 MiB rewritten through a 96 MiB store
    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if done < total:  # between two batches of the export: spread the rounds over them
            for _ in range(-(-rounds * (done - (calls[-2] if len(calls) > 1 else 0)) // total)):
                writer.one_round()

    out = tmp_path / "out.img"
    assert eng.export(src, out, progress=progress) == len(data)
    assert not writer.errors, writer.errors
    assert len(calls) == 32  # the export read 32 batches
    assert writer.rounds >= rounds - 1
    assert writer.rounds * REWRITE_MIB > MAP_SIZE >> 20
    with open(out, "rb") as f:
        assert f.read(len(data)) == data
    assert os.path.getsize(out) == L.GIB
    assert eng.fsck().ok


def test_the_export_is_the_point_in_time_it_began_even_if_the_volume_changes(busy, tmp_path,
                                                                             monkeypatch):
    eng, src, data, _writer = busy
    monkeypatch.setattr(ebsengine.engine.transfer, "EXPORT_BATCH", 64)
    changed: list[bool] = []

    def progress(done: int, total: int) -> None:
        if not changed:  # overwrite the exported volume itself in the middle of the export
            with eng.open_volume(src) as dev:
                dev.pwrite(noise("overwrite", SOURCE_MIB << 20), 0)
                dev.flush()
            changed.append(True)

    out = tmp_path / "out.img"
    eng.export(src, out, progress=progress)
    with open(out, "rb") as f:
        got = f.read(len(data))
    # the chunks the first attempt needed were freed: it started over from the new content
    assert got == noise("overwrite", SOURCE_MIB << 20)
    assert eng.fsck().ok


def test_a_long_fsck_lets_a_concurrent_writer_reuse_freed_space(busy, monkeypatch):
    eng, src, _data, writer = busy
    eng.flush_volume(src)
    real = ebsengine.check.decode_chunk
    calls = [0]
    n_source = (SOURCE_MIB << 20) // L.CHUNK_SIZE

    def slow_decode(value, *rest):
        calls[0] += 1
        if calls[0] <= n_source and calls[0] % 16 == 0:
            writer.one_round()  # in the middle of the first pass over the chunks
        return real(value, *rest)

    monkeypatch.setattr(ebsengine.check, "decode_chunk", slow_decode)
    monkeypatch.setattr(ebsengine.check, "CHUNK_BATCH", 8, raising=False)
    report = eng.fsck()
    assert not writer.errors, writer.errors
    assert writer.rounds == n_source // 16
    assert writer.rounds * REWRITE_MIB > MAP_SIZE >> 20
    # the first pass saw commits, so the report comes from a later, quiet pass
    assert report.ok, report.problems
    assert report.stats["chunks"] == (SOURCE_MIB + REWRITE_MIB) * 16
    assert report.stats["volumes"] == 2


def test_fsck_still_reports_corruption_found_in_any_batch(tmp_path):
    with ebsengine.Engine(tmp_path / "s") as eng:
        vol = eng.create_volume(size_gib=1).id
        with eng.open_volume(vol) as dev:
            dev.pwrite(noise("d", 64 * L.CHUNK_SIZE), 0)
        s = eng._store
        with s.read() as txn:
            keys = [k for k, _ in txn.cursor(db=s.db["chunks"])]
        with s.write() as txn:  # break the last chunk: found only in the last batch
            txn.put(keys[-1], bytes([L.CODEC_RAW]) + bytes(L.CHUNK_SIZE), db=s.db["chunks"])
        report = ebsengine.check.check_store(s, eng._chunks, eng._maps, batch=5, chunk_batch=3)
        assert not report.ok
        assert any(keys[-1].hex() in p and "zeros" in p for p in report.problems)
        assert report.stats["chunks"] == 64 and report.stats["map_entries"] == 64


def test_fsck_reruns_a_pass_that_saw_commits_and_refuses_a_store_that_never_settles(
        tmp_path, monkeypatch):
    with ebsengine.Engine(tmp_path / "s") as eng:
        vol = eng.create_volume(size_gib=1).id
        with eng.open_volume(vol) as dev:
            dev.pwrite(noise("d", 4 * L.CHUNK_SIZE), 0)
        backend = eng._store.backend
        real = backend.commit_id
        readings: list[int] = []
        locked_during: list[bool] = []

        def moving_once() -> int:  # another process commits during the first pass only
            readings.append(0)
            locked_during.append(eng._store.write_lock._is_owned())  # type: ignore[attr-defined]
            return real() + (1 if len(readings) == 2 else 0)

        monkeypatch.setattr(backend, "commit_id", moving_once)
        report = eng.fsck()
        assert report.ok and report.stats["chunks"] == 4
        assert len(readings) == 4 and locked_during == [False, False, True, True]

        counter = iter(range(10**6))
        monkeypatch.setattr(backend, "commit_id", lambda: next(counter))  # never settles
        with pytest.raises(StoreLocked, match="kept changing"):
            eng.fsck()
