"""The read path's caches (issue 7, reads): decoded patch pages cached by the patch header,
the chain at the head cached across requests, and the serve loop's GIL switch interval.
Each is driven through the library API (or the serve loop) and checked against a model."""

from __future__ import annotations

import sys
import threading

from block_support import CallCounter, eng  # noqa: F401  (eng: a fixture)

from conftest import sha_bytes
from ebsengine import layout as L
from ebsengine import serve as servemod

CS = L.CHUNK_SIZE
PS = L.PAGE_SIZE




def test_patch_pages_are_decoded_once_and_never_served_stale(eng, monkeypatch) -> None:
    vol = eng.create_volume(size_gib=1)
    base = sha_bytes("base", 4 * CS)
    model = bytearray(base)
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(base, 0)
        dev.flush()
        for p in (1, 5, 9):  # aligned pages into a stored chunk: a patch over it
            page = sha_bytes(f"p{p}", PS)
            dev.pwrite(page, CS + p * PS)
            model[CS + p * PS:CS + (p + 1) * PS] = page
        dev.flush()
    eng._ctx.cache.clear()
    dec = CallCounter(monkeypatch, "decode_pages")
    with eng.open_volume(vol.id) as dev:
        for _ in range(3):  # every 4 KiB of the chunk, three times over
            for p in range(L.PAGES_PER_CHUNK):
                off = CS + p * PS
                assert dev.pread(PS, off) == model[off:off + PS]
        assert dec.n == 1  # the patch's pages were decompressed once for 48 reads
        # Rewrite a patched page in the same head interval: the patch at the same map key
        # gets other pages (and another digest); the cached pages must not be served.
        new = sha_bytes("again", PS)
        dev.pwrite(new, CS + 5 * PS)
        model[CS + 5 * PS:CS + 6 * PS] = new
        dev.flush()
        assert dev.pread(CS, CS) == model[CS:2 * CS]
        assert dev.pread(3 * PS, CS + 4 * PS + 7) == model[CS + 4 * PS + 7:CS + 7 * PS + 7]
    assert eng.fold() >= 1
    assert not [k for k in eng._ctx.cache._lru if len(k) == L.PATCH_SIZE]  # freed pages left
    with eng.open_volume(vol.id) as dev:
        assert dev.pread(4 * CS, 0) == model
    report = eng.fsck()
    assert report.ok, report.problems


def test_cached_head_chain_follows_snapshots_and_restores(eng) -> None:
    vol = eng.create_volume(size_gib=1)
    a, b, c = (sha_bytes(s, CS) for s in "abc")
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(a, 0)
        dev.flush()
        assert dev.pread(CS, 0) == a  # the chain at this head is cached now
        s1 = eng.create_snapshot(vol.id)  # moves the head
        dev.pwrite(b[:PS], 0)  # a patch at the new head, over the frozen chunk
        dev.pwrite(b, CS)
        dev.flush()
        assert dev.pread(2 * CS, 0) == b[:PS] + a[PS:] + b
        s2 = eng.create_snapshot(vol.id)
        dev.pwrite(c, 0)
        dev.flush()
        assert dev.pread(2 * CS, 0) == c + b
    with eng.open_snapshot(s1.id) as ro:
        assert ro.pread(2 * CS, 0) == a + bytes(CS)
    with eng.open_snapshot(s2.id) as ro:
        assert ro.pread(2 * CS, 0) == b[:PS] + a[PS:] + b
    restored = eng.create_volume(snapshot_id=s2.id)
    with eng.open_volume(restored.id) as dev:
        assert dev.pread(2 * CS, 0) == b[:PS] + a[PS:] + b
        dev.pwrite(c[:PS], CS)
        dev.flush()
        eng.create_snapshot(restored.id)
        assert dev.pread(2 * CS, 0) == b[:PS] + a[PS:] + c[:PS] + b[PS:]
    eng.delete_snapshot(s1.id)
    with eng.open_snapshot(s2.id) as ro:
        assert ro.pread(2 * CS, 0) == b[:PS] + a[PS:] + b
    report = eng.fsck()
    assert report.ok, report.problems


def test_serve_loop_lowers_the_switch_interval_while_serving() -> None:
    before = sys.getswitchinterval()
    seen: list[float] = []
    stop = threading.Event()

    class Probe:
        label = "probe"

        def start(self) -> None:
            seen.append(sys.getswitchinterval())
            stop.set()

        def stop(self) -> None:
            seen.append(sys.getswitchinterval())

        def addresses(self) -> list[str]:
            return []

    assert servemod.run_services([Probe()], stop=stop, announce=lambda line: None) == 0
    assert seen and all(s <= servemod.SWITCH_INTERVAL for s in seen)
    assert sys.getswitchinterval() == before
