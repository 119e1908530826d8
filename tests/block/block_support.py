"""Shared by the block-layer tests: an engine on a small map (the `eng` fixture, imported by
name), and a counter of the calls of a block/context.py decoder (to prove what a read or
write does not decompress)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import ebsengine
from ebsengine.block import context as ctxmod


@pytest.fixture
def eng(store_path: str) -> Iterator[ebsengine.Engine]:
    with ebsengine.Engine(store_path, map_size=1 << 32) as e:
        yield e


class CallCounter:
    """Counts the calls of ``block.context.<name>`` (``decode_chunk``, ``decode_pages``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.n = 0
        real = getattr(ctxmod, name)

        def counting(*args: Any) -> Any:
            self.n += 1
            return real(*args)

        monkeypatch.setattr(ctxmod, name, counting)
