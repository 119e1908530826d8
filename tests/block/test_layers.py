"""Layered patches (format 6, layout.py ``maps``): a flush over a patch written since the
last snapshot adds a layer of just its new pages; reads, exports, snapshots, folds and fsck
see the newest layer's pages; the layers are bounded and rewritten as one when they are
not."""

from __future__ import annotations

import os

import lmdb
import pytest
import xxhash
from block_support import assert_fsck_finds, eng_plain  # noqa: F401  (eng_plain: a fixture)

import ebsengine
from ebsengine import layout as L
from ebsengine.block import context as ctxmod
from ebsengine.block import volume as volmod
from ebsengine.block.volume import HOLE
from ebsengine.storage.envelope import encode_pages

CS = L.CHUNK_SIZE
PS = L.PAGE_SIZE


@pytest.fixture
def e(eng_plain: ebsengine.Engine) -> ebsengine.Engine:
    return eng_plain


def patches(e: ebsengine.Engine) -> dict[bytes, bytes]:
    with e._store.read() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor(db=e._store.db["maps"])
                if L.is_patch(bytes(v))}


def pages_rows(e: ebsengine.Engine) -> dict[bytes, bytes]:
    with e._store.read() as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor(db=e._store.db["pages"])}


class Encoded:
    """Records the pages keys and sizes of every pages value a flush encodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[bytes, int]] = []
        real = volmod.encode_pages_many

        def spy(framed, level, domain=None, page_keys=None, threads=1):  # type: ignore[no-untyped-def]
            self.calls += [(k, len(f) - 1) for k, f in zip(page_keys, framed, strict=True)]
            return real(framed, level, domain, page_keys, threads)

        monkeypatch.setattr(volmod, "encode_pages_many", spy)


def layered_volume(e: ebsengine.Engine, flushes: int, *, encrypted: bool = False,
                   base: bool = True) -> tuple[str, bytearray]:
    """A 1 GiB volume whose chunk 0 is stored, then written one page per flush (pages 1, 2,
    ...); returns its id and its expected first chunk."""
    vol = e.create_volume(size_gib=1, encrypted=encrypted).id
    want = bytearray(os.urandom(CS) if base else bytes(CS))
    with e.open_volume(vol) as dev:
        if base:
            dev.pwrite(want, 0)
            dev.flush()
        for n in range(flushes):
            page = os.urandom(PS)
            want[(n + 1) * PS:(n + 2) * PS] = page
            dev.pwrite(page, (n + 1) * PS)
            dev.flush()
    return vol, want


def read0(e: ebsengine.Engine, vol: str) -> bytes:
    with e.open_volume(vol) as dev:
        return dev.pread(CS, 0)


def test_each_flush_adds_a_layer_of_only_its_pages(e: ebsengine.Engine,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Three flushes of one page each over a stored chunk: one patch of three layers, whose
    pages rows hold one page each; the third flush encodes one page, not three, and reads no
    pages stored before it."""
    vol, want = layered_volume(e, 2)
    [(mk, two)] = patches(e).items()
    assert L.patch_tag(two) == L.PATCH_TAG_LAYERS_XXH
    enc = Encoded(monkeypatch)
    gets: list[bytes] = []
    real_decode = volmod.BlockContext.patch_pages

    def no_old_pages(self, txn, value, domain):  # type: ignore[no-untyped-def]
        gets.append(value)
        return real_decode(self, txn, value, domain)

    monkeypatch.setattr(volmod.BlockContext, "patch_pages", no_old_pages)
    page = os.urandom(PS)
    want[3 * PS:4 * PS] = page
    with e.open_volume(vol) as dev:
        dev.pwrite(page, 3 * PS)
        dev.flush()
    assert enc.calls == [(L.layer_key(mk, 2), PS)]
    assert gets == []
    [(mk2, value)] = patches(e).items()
    assert mk2 == mk
    layers = L.patch_layers(value)
    assert [(k, m) for k, m, _ in layers] == [(mk, 0b10), (mk + b"\x01", 0b100),
                                             (mk + b"\x02", 0b1000)]
    assert layers[2][2] == xxhash.xxh3_128_digest(page)
    assert L.parse_patch(value)[0] == 0b1110
    assert L.chunk_of(value) == L.parse_patch(value)[3] is not None
    assert set(pages_rows(e)) == {mk, mk + b"\x01", mk + b"\x02"}
    assert read0(e, vol) == bytes(want)
    report = e.fsck()
    assert report.ok, report.problems


def test_the_newest_layer_wins_where_layers_overlap(e: ebsengine.Engine) -> None:
    vol = e.create_volume(size_gib=1).id
    want = bytearray(CS)
    with e.open_volume(vol) as dev:
        for n, p in enumerate([1, 2, 1, 3, 2, 1]):
            page = os.urandom(PS)
            want[p * PS:(p + 1) * PS] = page
            dev.pwrite(page, p * PS)
            dev.flush()
            assert dev.pread(CS, 0) == bytes(want), n
        # a partial page write reads its page from the newest layer
        want[PS + 100:PS + 200] = b"z" * 100
        dev.pwrite(b"z" * 100, PS + 100)
        dev.flush()
        assert dev.pread(CS, 0) == bytes(want)
        assert dev.pread(PS, PS) == bytes(want[PS:2 * PS])
    [value] = patches(e).values()
    assert len(L.patch_layers(value)) == 7
    assert e.fsck().ok
    with e.open_volume(vol) as dev:  # a fresh read cache
        assert dev.pread(CS, 0) == bytes(want)


def test_a_page_read_decodes_only_the_layer_holding_it(e: ebsengine.Engine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of some pages of a layered patch decodes only the layers that hold them (the
    newest layer with a page holds it), each once, and keeps them: the layers below a new
    layer stay cached, a whole-chunk read uses them (and caches nothing it decodes), and a
    fold forgets them."""
    vol = e.create_volume(size_gib=1).id
    want = bytearray(os.urandom(CS))

    def write(dev: ebsengine.Device, *ps: int) -> None:
        for p in ps:
            want[p * PS:(p + 1) * PS] = page = os.urandom(PS)
            dev.pwrite(page, p * PS)
        dev.flush()

    with e.open_volume(vol) as dev:
        dev.pwrite(want, 0)
        dev.flush()
        for ps in [(1, 2, 3, 5), (2,), (1, 3), (6, 7), (2, 7)]:
            write(dev, *ps)
    [value] = patches(e).values()
    layers = L.patch_layers(value)
    assert [m for _, m, _ in layers] == [0b101110, 0b100, 0b1010, 0b11000000, 0b10000100]
    decoded: list[bytes] = []
    real = ctxmod.decode_pages

    def spy(raw, size, page_key=None, keys=None):  # type: ignore[no-untyped-def]
        decoded.append(page_key)
        return real(raw, size, page_key, keys)

    monkeypatch.setattr(ctxmod, "decode_pages", spy)
    e._ctx.cache.clear()

    def page(dev: ebsengine.Device, p: int, n: int = 1) -> None:
        assert dev.pread(n * PS, p * PS) == bytes(want[p * PS:(p + n) * PS]), p

    with e.open_volume(vol) as dev:
        # one page a read from a cold cache: 5 is the 4th page of layer 0, 3 the 2nd of
        # layer 2, 6 the 1st of layer 3, 7 the 2nd of layer 4; 0 and 4 are the base's
        for p in (5, 3, 6, 7, 0, 4):
            page(dev, p)
        assert decoded == [layers[0][0], layers[2][0], layers[3][0], layers[4][0]]
        page(dev, 0, 8)  # pages 0-7 in one read (1 and 2 from layers 2 and 4): all cached
        for p in range(8):
            page(dev, p)
        dev.pread(PS // 2, 2 * PS + 100)  # part of a page
        assert len(decoded) == 4
        write(dev, 4)  # a sixth layer: the five below it stay cached
        [value] = patches(e).values()
        assert L.layer_masks(value)[-1] == 0b10000 and len(decoded) == 4
        page(dev, 0, 8)
        assert decoded[4:] == [L.patch_layers(value)[5][0]]
        e._ctx.cache.clear()
        # a whole-chunk read decodes every layer holding a page it reads (not layer 1:
        # layer 4 covers its page) and caches none of them
        page(dev, 0, 16)
        page(dev, 0, 16)
        assert len(decoded) == 5 + 2 * 5 and layers[1][0] not in decoded[5:]
        page(dev, 3)
        assert len(decoded) == 5 + 2 * 5 + 1
    e.fold()
    assert not patches(e)
    assert not [k for k in e._ctx.cache._lru if k[:1] == ctxmod._LAYER_MARK]
    assert read0(e, vol) == bytes(want)
    assert e.fsck().ok


def test_cached_layers_are_checked_against_the_reader_s_domain(e: ebsengine.Engine) -> None:
    """A cached layer is served only to a reader of the domain it was checked against: a map
    value naming another lineage's cached layers reads as CorruptStore."""
    for enc in (True, False):
        a = e.create_volume(size_gib=1, encrypted=True).id
        b = e.create_volume(size_gib=1, encrypted=enc).id
        with e.open_volume(a) as dev:
            dev.pwrite(os.urandom(2 * PS), 0)
            dev.flush()
            dev.pwrite(os.urandom(PS), PS)
            dev.flush()
            dev.pread(PS, 0)
            dev.pread(PS, PS)  # both layers of a's patch are cached
        with e.open_volume(b) as dev:
            dev.pwrite(os.urandom(PS), 0)
            dev.flush()
        ps = patches(e)
        [(ka, va)] = [(k, v) for k, v in ps.items() if v[0] in L.LAYERED_TAGS]
        [kb] = [k for k, v in ps.items() if k != ka and v[0] in L.PATCH_TAGS]
        with e._store.env.begin(write=True) as txn:  # b's map now names a's layers
            txn.put(kb, va[:-L.KEY_SIZE] if L.chunk_of(va) else va, db=e._store.db["maps"])
        for off in (0, PS):
            with e.open_volume(b) as dev, pytest.raises(ebsengine.errors.CorruptStore):
                dev.pread(PS, off)
        for vol in (a, b):
            e.delete_volume(vol)


def test_layers_are_bounded_and_rewritten_as_one(e: ebsengine.Engine) -> None:
    """The ninth flush over a patch of ``MAX_LAYERS`` layers merges them into one layer (the
    extra rows go); a chunk wholly covered becomes a chunk again."""
    vol, want = layered_volume(e, L.MAX_LAYERS)
    [value] = patches(e).values()
    assert len(L.patch_layers(value)) == L.MAX_LAYERS
    with e.open_volume(vol) as dev:
        page = os.urandom(PS)
        want[10 * PS:11 * PS] = page
        dev.pwrite(page, 10 * PS)
        dev.flush()
    [(mk, value)] = patches(e).items()
    assert L.patch_tag(value) == L.PATCH_TAG_XXH  # one layer again
    assert L.parse_patch(value)[0] == 0b10111111110
    assert list(pages_rows(e)) == [mk]
    assert read0(e, vol) == bytes(want)
    assert e.fsck().ok
    with e.open_volume(vol) as dev:  # cover the rest, a page per flush
        for p in [0, 9, 11, 12, 13, 14, 15]:
            page = os.urandom(PS)
            want[p * PS:(p + 1) * PS] = page
            dev.pwrite(page, p * PS)
            dev.flush()
    assert patches(e) == {}
    assert pages_rows(e) == {}
    assert read0(e, vol) == bytes(want)
    assert e.fsck().ok


def test_shadowed_pages_are_bounded_by_a_chunk(e: ebsengine.Engine) -> None:
    """Rewriting the same four pages flush after flush: once the layers would hold more than
    a chunk's worth of pages, they are merged (the stored pages stay under 64 KiB)."""
    vol = e.create_volume(size_gib=1).id
    want = bytearray(CS)
    with e.open_volume(vol) as dev:
        for _ in range(6):
            page = os.urandom(4 * PS)
            want[4 * PS:8 * PS] = page
            dev.pwrite(page, 4 * PS)
            dev.flush()
            [value] = patches(e).values()
            assert sum(m.bit_count() for _, m, _ in L.patch_layers(value)) \
                <= L.PAGES_PER_CHUNK
    assert read0(e, vol) == bytes(want)
    assert e.fsck().ok


@pytest.mark.parametrize("how", ["pwrite", "trim"])
def test_zeros_over_a_head_patch_make_a_hole_as_before(e: ebsengine.Engine, how: str) -> None:
    """Zeros written (or a trim) over the only pages of a patch at the head: no layer of
    zeros, the chunk is a hole again, as it was without layers."""
    vol = e.create_volume(size_gib=1).id
    with e.open_volume(vol) as dev:
        dev.pwrite(os.urandom(2 * PS), PS)
        dev.flush()
        if how == "pwrite":
            dev.pwrite(bytes(2 * PS), PS)
        else:
            dev.trim(PS, 2 * PS)
        dev.flush()
        assert dev.extents(0, CS) == [(CS, HOLE)]
        assert dev.pread(CS, 0) == bytes(CS)
    assert patches(e) == {}
    assert pages_rows(e) == {}
    assert e.usage(vol).stored_bytes == 0
    assert e.fsck().ok


def test_a_snapshot_freezes_the_layers_and_the_head_starts_one_layer(
        e: ebsengine.Engine) -> None:
    vol, want = layered_volume(e, 3)
    frozen = bytes(want)
    snap = e.create_snapshot(vol).id
    with e.open_volume(vol) as dev:
        page = os.urandom(PS)
        want[5 * PS:6 * PS] = page
        dev.pwrite(page, 5 * PS)
        dev.flush()
    values = sorted(patches(e).values(), key=len)
    assert [L.patch_tag(v) for v in values] == [L.PATCH_TAG_XXH, L.PATCH_TAG_LAYERS_XXH]
    assert L.parse_patch(values[0])[0] == 0b101110  # the head's: merged with the frozen pages
    with e.open_snapshot(snap) as view:
        assert view.pread(CS, 0) == frozen
    assert read0(e, vol) == bytes(want)
    assert e.fsck().ok
    restored = e.create_volume(snapshot_id=snap).id
    assert read0(e, restored) == frozen
    e.delete_snapshot(snap)  # merged into the head: the frozen layers go with it
    assert len(pages_rows(e)) == 1 + 3  # the head's patch, and the restore's base
    assert read0(e, vol) == bytes(want)
    assert read0(e, restored) == frozen
    assert e.fsck().ok


def test_a_fold_replaces_a_layered_patch_and_its_rows(e: ebsengine.Engine) -> None:
    vol, want = layered_volume(e, 4)
    assert len(pages_rows(e)) == 4
    assert e.fold() == 1
    assert patches(e) == {}
    assert pages_rows(e) == {}
    assert read0(e, vol) == bytes(want)
    assert e.fsck().ok


def test_exports_usage_and_snapshot_diffs_read_through_layers(e: ebsengine.Engine,
                                                             tmp_path) -> None:
    vol, want = layered_volume(e, 3, base=False)
    out = tmp_path / "vol.img"
    e.export(vol, str(out))
    assert out.read_bytes()[:CS] == bytes(want)
    assert e.usage(vol).stored_bytes >= 3 * PS
    a = e.create_snapshot(vol).id
    with e.open_volume(vol) as dev:
        dev.pwrite(bytes(want[PS:2 * PS]), PS)  # the same bytes again: no change
        dev.flush()
    b = e.create_snapshot(vol).id
    assert list(e.list_changed_blocks(a, b)) == []


def test_encrypted_lineages_layer_with_keyed_digests(e: ebsengine.Engine) -> None:
    vol, want = layered_volume(e, 3, encrypted=True)
    [(mk, value)] = patches(e).items()
    assert L.patch_tag(value) == L.PATCH_TAG_LAYERS
    rows = pages_rows(e)
    assert set(rows) == {mk, mk + b"\x01", mk + b"\x02"}
    assert all(v[0] == L.CODEC_SEALED for v in rows.values())
    with e._store.read() as txn:
        domain = e._ctx.lineage_domain(txn, L.parse_map_key(mk)[0])
    assert domain is not None
    assert L.patch_layers(value)[2][2] == domain.page_digest(bytes(want[3 * PS:4 * PS]))
    assert read0(e, vol) == bytes(want)
    report = e.fsck()
    assert report.ok, report.problems
    # a sealed layer moved to another layer's key does not open (its key is in the AAD)
    with e._store.env.begin(write=True) as txn:
        txn.put(mk + b"\x01", rows[mk + b"\x02"], db=e._store.db["pages"])
    report = e.fsck()
    assert any(p.startswith("I10:") for p in report.problems), report.problems


def _layered(e: ebsengine.Engine) -> tuple[bytes, bytes]:
    return next((k, v) for k, v in patches(e).items() if L.patch_tag(v) in L.LAYERED_TAGS)


def layer_row_missing(txn: lmdb.Transaction, e: ebsengine.Engine) -> tuple[str, str]:
    k, _ = _layered(e)
    txn.delete(k + b"\x01", db=e._store.db["pages"])
    return "I10", "has no pages"


def layer_digest_mismatch(txn: lmdb.Transaction, e: ebsengine.Engine) -> tuple[str, str]:
    k, _ = _layered(e)
    txn.put(k + b"\x02", encode_pages(bytes(PS), 1), db=e._store.db["pages"])
    return "I10", "digest"


def layer_row_orphan(txn: lmdb.Transaction, e: ebsengine.Engine) -> tuple[str, str]:
    k, _ = _layered(e)
    txn.put(k + b"\x05", encode_pages(bytes(PS), 1), db=e._store.db["pages"])
    return "I10", "orphan"


def layer_union_wrong(txn: lmdb.Transaction, e: ebsengine.Engine) -> tuple[str, str]:
    k, v = _layered(e)
    txn.put(k, v[:1] + (0b11110).to_bytes(2, "big") + v[3:], db=e._store.db["maps"])
    return "I10", "mask"


def layer_count_wrong(txn: lmdb.Transaction, e: ebsengine.Engine) -> tuple[str, str]:
    k, v = _layered(e)
    txn.put(k, v[:L.LAYERED_SIZE - 1] + bytes([4]) + v[L.LAYERED_SIZE:],
            db=e._store.db["maps"])
    return "I10", "malformed"


@pytest.mark.parametrize("corrupt", [layer_row_missing, layer_digest_mismatch,
                                     layer_row_orphan, layer_union_wrong, layer_count_wrong],
                         ids=lambda f: f.__name__)
def test_fsck_finds_layer_damage(e: ebsengine.Engine, corrupt) -> None:  # type: ignore[no-untyped-def]
    layered_volume(e, 3)
    assert e.fsck().ok
    assert_fsck_finds(e, corrupt)


def test_a_format_5_store_opens_and_its_patches_take_layers(store_path: str) -> None:
    """A format-5 store holds one-layer patches only: it reads as it is, a read-write open
    writes format 6, and a flush over one of its patches lays a layer on it."""
    with ebsengine.Engine(store_path) as e:
        vol, want = layered_volume(e, 1)
        with e._store.env.begin(write=True) as txn:
            txn.put(b"format", b"5", db=e._store.db["meta"])
    with ebsengine.Engine(store_path, readonly=True) as ro:
        assert read0(ro, vol) == bytes(want)
        assert ro.fsck().ok
    with ebsengine.Engine(store_path) as rw:
        with rw._store.read() as txn:
            assert txn.get(b"format", db=rw._store.db["meta"]) == b"6"
        with rw.open_volume(vol) as dev:
            dev.pwrite(b"q" * PS, 7 * PS)
            dev.flush()
        want[7 * PS:8 * PS] = b"q" * PS
        [value] = patches(rw).values()
        assert len(L.patch_layers(value)) == 2
        assert read0(rw, vol) == bytes(want)
        assert rw.fsck().ok


def test_layered_values_are_built_and_read_back_exactly() -> None:
    """``add_layer`` (the flush's way) makes what ``layered_value`` makes of the same
    layers; ``lays_on`` tells a layer laid on a patch from anything else; lengths never
    collide with a chunk key, a one-layer patch or each other."""
    pk, base = os.urandom(16), os.urandom(L.KEY_SIZE)
    for b in (None, base):
        v = L.patch_value(0b1, b"d" * 16, pk, b)
        layers = [(0b1, b"d" * 16)]
        for n in range(2, L.MAX_LAYERS + 1):
            nxt = L.add_layer(v, 1 << n, bytes([n]) * 16, L.PATCH_TAG_LAYERS_XXH)
            layers.append((1 << n, bytes([n]) * 16))
            assert nxt == L.layered_value(L.PATCH_TAG_LAYERS_XXH, layers, pk, b)
            assert L.lays_on(nxt, v) and not L.lays_on(v, nxt) and not L.lays_on(nxt, nxt)
            assert L.is_patch(nxt) and L.chunk_of(nxt) == b
            assert L.parse_patch(nxt) == (sum(m for m, _ in layers), b"", pk, b)
            assert [(m, d) for _, m, d in L.patch_layers(nxt)] == layers
            assert len(nxt) not in (0, L.KEY_SIZE, L.PATCH_SIZE, L.PATCH_SIZE + L.KEY_SIZE)
            v = nxt
        with pytest.raises(ValueError):
            L.add_layer(v, 1, bytes(16), L.PATCH_TAG_LAYERS_XXH)  # past MAX_LAYERS
    other = L.add_layer(L.patch_value(0b1, b"e" * 16, pk, None), 2, bytes(16),
                        L.PATCH_TAG_LAYERS_XXH)
    assert not L.lays_on(other, L.patch_value(0b1, b"d" * 16, pk, None))  # another layer 0
    assert not L.lays_on(other, L.patch_value(0b1, b"e" * 16, pk, base))  # another base
    with pytest.raises(ValueError):
        L.parse_patch(other[:L.LAYERED_SIZE - 1] + bytes([1]) + other[L.LAYERED_SIZE:])
