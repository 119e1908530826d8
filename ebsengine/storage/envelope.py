"""The chunk envelope: the one place where a chunk's bytes are encoded for storage and decoded
back (compression today; encryption wraps this same seam).

A stored chunk value is ``codec u8 | payload`` (see ``layout.py``): ``CODEC_ZSTD`` for a zstd
frame, ``CODEC_RAW`` when compression did not save at least 1/16.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import zstandard

from .. import layout as L
from ..errors import CorruptStore

DEFAULT_ZSTD_LEVEL = 3  # 64 KiB chunks alone: level 1 stores 1.078x restic, level 3 1.043x


class _Codecs(threading.local):
    """Per-thread zstd objects (they are not thread-safe)."""

    def __init__(self) -> None:
        self.level = DEFAULT_ZSTD_LEVEL
        self.c: zstandard.ZstdCompressor | None = None
        self.d = zstandard.ZstdDecompressor()

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        if self.c is None or self.level != level:
            self.c = zstandard.ZstdCompressor(level=level, write_content_size=True,
                                              write_checksum=False)
            self.level = level
        return self.c


_codecs = _Codecs()


def encode_chunk(data: bytes | bytearray | memoryview, level: int) -> bytes:
    """Stored form of one chunk: zstd when it saves at least 1/16, else raw."""
    z = _codecs.compressor(level).compress(data)
    if len(z) < len(data) - len(data) // 16:
        return bytes((L.CODEC_ZSTD,)) + z
    return bytes((L.CODEC_RAW,)) + bytes(data)


def decode_chunk(value: bytes | memoryview) -> bytes:
    """Uncompressed bytes of a stored chunk value; :class:`CorruptStore` if it cannot be."""
    kind = value[0]
    if kind == L.CODEC_RAW:
        out = bytes(value[1:])
    elif kind == L.CODEC_ZSTD:
        try:
            out = _codecs.d.decompress(bytes(value[1:]), max_output_size=L.CHUNK_SIZE)
        except zstandard.ZstdError as exc:
            raise CorruptStore(f"chunk does not decompress: {exc}") from exc
    else:
        raise CorruptStore(f"unknown chunk codec {kind}")
    if len(out) != L.CHUNK_SIZE:
        raise CorruptStore(f"chunk decodes to {len(out)} bytes, not {L.CHUNK_SIZE}")
    return out


def encode_batch(datas: Sequence[bytes | bytearray | memoryview], level: int,
                 threads: int) -> list[bytes]:
    """Encode many chunks with ``threads`` zstd threads in one call (python-zstandard's
    ``multi_compress_to_buffer``: the GIL is released for the whole batch and this thread's
    compression context is reused). Same stored form as :func:`encode_chunk`."""
    if len(datas) < 2 * max(1, threads):
        return [encode_chunk(d, level) for d in datas]
    frames = _codecs.compressor(level).multi_compress_to_buffer(list(datas), threads=threads)
    out = []
    for i, d in enumerate(datas):
        z = frames[i]
        n = len(d)
        if len(z) < n - n // 16:
            out.append(bytes((L.CODEC_ZSTD,)) + z.tobytes())
        else:
            out.append(bytes((L.CODEC_RAW,)) + bytes(d))
    return out


def encode_many(datas: Sequence[bytes | memoryview], level: int,
                pool: object | None = None) -> list[bytes]:
    """Encode chunks; in parallel when ``pool`` is given (the caller may compress on
    several cores): then one :func:`encode_batch` call with a zstd thread per core, which
    beats a pool task per chunk (no per-task overhead, one reused context)."""
    if pool is None or len(datas) < 4:
        return [encode_chunk(d, level) for d in datas]
    return encode_batch(datas, level, os.cpu_count() or 1)



def encode_pages(data: bytes | bytearray | memoryview, level: int) -> bytes:
    """Stored form of a patch's pages (``pages`` values): like a chunk, any length."""
    return encode_chunk(data, level)


def decode_pages(value: bytes | memoryview, size: int) -> bytes:
    """Uncompressed pages of a ``pages`` value, which must be ``size`` bytes long."""
    kind = value[0] if len(value) else -1
    if kind == L.CODEC_RAW:
        out = bytes(value[1:])
    elif kind == L.CODEC_ZSTD:
        try:
            out = _codecs.d.decompress(bytes(value[1:]), max_output_size=max(size, 1))
        except zstandard.ZstdError as exc:
            raise CorruptStore(f"pages do not decompress: {exc}") from exc
    else:
        raise CorruptStore(f"unknown pages codec {kind}")
    if len(out) != size:
        raise CorruptStore(f"pages decode to {len(out)} bytes, not {size}")
    return out
