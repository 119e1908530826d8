"""Export reads in batches with fresh read transactions (defect 9), so it must notice what
changed between a batch's resolution and its reading: a patch rewritten at its map key by
a flush (start over: one consistent, later point in time), and folds, which keep content
but replace values (they wait for the export instead of forcing it to start over)."""

from __future__ import annotations

import hashlib
import os
import threading

import ebsengine

CS, PS = 64 * 1024, 4096


def _volume_with_patch(eng: ebsengine.Engine, dev: ebsengine.Device, idx: int) -> bytearray:
    model = bytearray()
    for i in range(3 * 256):  # three export batches of 256 chunks
        data = os.urandom(CS)
        dev.pwrite(data, i * CS)
        model += data
    dev.flush()
    dev.pwrite(b"A" * PS, idx * CS + 3 * PS)  # a one-page patch at the head
    model[idx * CS + 3 * PS: idx * CS + 4 * PS] = b"A" * PS
    dev.flush()
    return model


def _image(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def test_export_starts_over_when_a_flush_rewrites_a_patch_it_resolved(tmp_path) -> None:
    with ebsengine.Engine(tmp_path / "s") as eng:
        vol = eng.create_volume(size_gib=1)
        idx = 700  # in the third batch
        with eng.open_volume(vol.id) as dev:
            model = _volume_with_patch(eng, dev, idx)
            calls: list[int] = []

            def progress(done: int, total: int) -> None:
                if not calls:  # after the first batch: the patch grows to two pages
                    dev.pwrite(b"B" * PS, idx * CS + 5 * PS)
                    dev.flush()
                    model[idx * CS + 5 * PS: idx * CS + 6 * PS] = b"B" * PS
                calls.append(done)

            out = str(tmp_path / "img")
            eng.export(vol.id, out, progress)  # was CorruptStore: pages of the new patch
        assert _image(out, len(model)) == bytes(model)  # the later point, whole
        assert eng.fsck().ok


def test_export_never_mixes_a_patch_header_with_newer_pages(tmp_path) -> None:
    with ebsengine.Engine(tmp_path / "s") as eng:
        vol = eng.create_volume(size_gib=1)
        idx = 700
        with eng.open_volume(vol.id) as dev:
            model = _volume_with_patch(eng, dev, idx)
            before = bytes(model)
            calls: list[int] = []

            def progress(done: int, total: int) -> None:
                if not calls:  # the same page rewritten: same mask, other bytes
                    dev.pwrite(b"C" * PS, idx * CS + 3 * PS)
                    dev.flush()
                    model[idx * CS + 3 * PS: idx * CS + 4 * PS] = b"C" * PS
                calls.append(done)

            out = str(tmp_path / "img")
            eng.export(vol.id, out, progress)
        assert _image(out, len(model)) in (before, bytes(model))  # one point in time
        assert eng.fsck().ok


def test_a_fold_waits_for_the_export_of_an_idle_snapshot(tmp_path) -> None:
    """Folding replaces values (content kept): during an export it would make the export
    start over (and, folding on, fail after its last attempt); it waits instead."""
    with ebsengine.Engine(tmp_path / "s") as eng:
        vol = eng.create_volume(size_gib=1)
        with eng.open_volume(vol.id) as dev:
            for i in range(1024):  # 4 KiB in each of 1024 chunks: 1024 patches
                dev.pwrite(os.urandom(PS), i * CS)
        snap = eng.create_snapshot(vol.id)  # nobody writes from here on
        with eng.open_snapshot(snap.id) as ro:
            want = hashlib.sha256(ro.pread(1024 * CS, 0)).digest()
        dones: list[int] = []
        folds: list[threading.Thread] = []

        def progress(done: int, total: int) -> None:
            dones.append(done)
            if not folds:  # a fold round during the export (the background folder's work)
                t = threading.Thread(target=eng._folder.fold_all)
                t.start()
                t.join(0.5)  # it waits for the export: do not wait for it here
                folds.append(t)

        out = str(tmp_path / "img")
        eng.export(snap.id, out, progress)
        folds[0].join()
        assert dones == sorted(dones) and len(dones) == 4  # one attempt, never started over
        assert hashlib.sha256(_image(out, 1024 * CS)).digest() == want
        assert eng.fold() >= 0 and eng.fsck().ok
