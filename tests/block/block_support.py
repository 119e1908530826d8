"""Shared by the block-layer tests: an engine on a small map (the `eng` fixture, imported by
name), and a counter of the calls of a chunk or pages decoder (to prove what a read or
write does not decompress)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import ebsengine
from ebsengine.block import context as ctxmod
from ebsengine.storage import chunks as chunksmod

#: where each decoder is looked up when the block layer calls it
_HOME = {"decode_chunk": chunksmod, "decode_pages": ctxmod}


@pytest.fixture
def eng(store_path: str) -> Iterator[ebsengine.Engine]:
    with ebsengine.Engine(store_path, map_size=1 << 32) as e:
        yield e


class CallCounter:
    """Counts the calls of the chunk decoder (``decode_chunk``, which every chunk read goes
    through, by ``ChunkStore.decode``) or of the pages decoder (``decode_pages``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.n = 0
        home = _HOME[name]
        real = getattr(home, name)

        def counting(*args: Any) -> Any:
            self.n += 1
            return real(*args)

        monkeypatch.setattr(home, name, counting)
