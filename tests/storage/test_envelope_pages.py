"""encode_pages_many: the batch form of encode_pages a flush uses (same stored forms)."""

from __future__ import annotations

import os
import random

import pytest

from ebsengine import layout as L
from ebsengine.errors import CorruptStore
from ebsengine.storage.envelope import RAW_MARK, decode_pages, encode_pages_many
from ebsengine.storage.sealing import Domain, Keyring

PS = L.PAGE_SIZE


def _pages(n: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        k = 1 + i % 3
        if i % 2:
            out.append(os.urandom(k * PS))  # incompressible: stored raw
        else:
            out.append(bytes(rnd.choice(b"ab") for _ in range(64)) * (k * PS // 64))
    return out


@pytest.mark.parametrize("n", [3, 40])  # below and above the batch threshold
def test_batch_stores_what_decodes_back(n: int) -> None:
    datas = _pages(n, n)
    stored = encode_pages_many([RAW_MARK + d for d in datas], L.PAGE_ZSTD_LEVEL)
    assert len(stored) == n
    for i, (d, v) in enumerate(zip(datas, stored, strict=True)):
        assert decode_pages(v, len(d)) == d
        if i % 2:
            assert v == RAW_MARK + d  # not worth compressing: the raw form itself
        else:
            assert v[0] == L.CODEC_ZSTD and len(v) < len(d) // 4


@pytest.mark.parametrize("n", [3, 40])
def test_batch_seals_each_with_its_page_key(n: int) -> None:
    dom = Domain("dom-" + os.urandom(L.DOMAIN_TAG_SIZE).hex(), os.urandom(32))
    keys = Keyring()
    keys.add(dom)
    datas = _pages(n, 7)
    mks = [L.map_key(5, i, 1) for i in range(n)]
    stored = encode_pages_many([RAW_MARK + d for d in datas], L.PAGE_ZSTD_LEVEL, dom, mks)
    for d, v, mk in zip(datas, stored, mks, strict=True):
        assert v[0] == L.CODEC_SEALED
        assert decode_pages(v, len(d), mk, keys) == d
    with pytest.raises(CorruptStore):  # bound to its own page key
        decode_pages(stored[0], len(datas[0]), mks[1], keys)
    with pytest.raises(ValueError):
        encode_pages_many([RAW_MARK + datas[0]], L.PAGE_ZSTD_LEVEL, dom, None)
