"""Shared by the block-layer tests: an engine on a small map (the `eng` fixture, imported by
name), one with no background folding (`eng_plain`), and a counter of the calls of a chunk or
pages decoder (to prove what a read or
write does not decompress)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import ebsengine
from ebsengine.block import context as ctxmod
from ebsengine.block import folder as foldermod
from ebsengine.storage import chunks as chunksmod

#: where each decoder is looked up when the block layer calls it
_HOME = {"decode_chunk": chunksmod, "decode_pages": ctxmod}


@pytest.fixture
def eng(store_path: str) -> Iterator[ebsengine.Engine]:
    with ebsengine.Engine(store_path, map_size=1 << 32) as e:
        yield e


@pytest.fixture
def eng_plain(store_path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ebsengine.Engine]:
    """An empty store, with no background folding under the test."""
    monkeypatch.setattr(foldermod, "QUIET", 3600.0)
    with ebsengine.Engine(store_path) as e:
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


def assert_fsck_finds(e: ebsengine.Engine, corrupt: Callable[[Any, ebsengine.Engine],
                                                              tuple[str, str]]) -> None:
    """Damage ``e``'s LMDB store with ``corrupt(txn, e)`` (which returns the invariant's
    label and a word of the problem expected), then check that fsck reports it."""
    with e._store.env.begin(write=True) as txn:
        label, needle = corrupt(txn, e)
    report = e.fsck()
    assert not report.ok
    assert any(p.startswith(label + ":") and needle in p for p in report.problems), \
        report.problems
