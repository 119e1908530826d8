"""The chunk envelope: the one place where a chunk's bytes are encoded for storage and decoded
back (compression today; encryption wraps this same seam).

A stored chunk value is ``codec u8 | payload`` (see ``layout.py``): ``CODEC_ZSTD`` for a zstd
frame, ``CODEC_RAW`` when compression did not save at least 1/16. In an encrypted domain that
encoding is then sealed (:class:`.sealing.Domain`: ``CODEC_SEALED | domain tag | AEAD``), with
the chunk's fingerprint (pages: their page key) as authenticated data; decoding a sealed value
takes the :class:`.sealing.Keyring` of the domains this process holds.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import zstandard

from .. import layout as L
from ..errors import CorruptStore, KeyUnavailable
from .sealing import Domain, Keyring, SealError

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


_ZSTD = bytes((L.CODEC_ZSTD,))
_RAW = RAW_MARK = bytes((L.CODEC_RAW,))  # the codec byte of a value stored uncompressed
_CHUNK_AAD = b"chunk\0"  # what a sealed value is, ahead of its key in its AAD
_PAGES_AAD = b"pages\0"


def _plain(data: bytes | bytearray | memoryview, level: int) -> bytes:
    z = _codecs.compressor(level).compress(data)
    if len(z) < len(data) - len(data) // 16:
        return _ZSTD + z
    return _RAW + data  # one copy (bytes + any buffer)


def encode_chunk(data: bytes | bytearray | memoryview, level: int,
                 domain: Domain | None = None, fp: bytes | None = None) -> bytes:
    """Stored form of one chunk: zstd when it saves at least 1/16, else raw; sealed in
    ``domain`` (with its fingerprint ``fp`` bound in) when given."""
    inner = _plain(data, level)
    return inner if domain is None else _seal(domain, inner, fp)


def _seal(domain: Domain, inner: bytes, fp: bytes | None) -> bytes:
    """Seal a chunk's encoding, bound to its chunk key: ``fp`` is the key (20 bytes) or a
    fingerprint (16 bytes: the key with collision number 0, which nearly every chunk gets;
    :meth:`.chunks.ChunkStore.put` seals again under another number)."""
    if fp is not None and len(fp) == L.FP_SIZE:
        fp = L.chunk_key(fp, 0)
    if fp is None or len(fp) != L.KEY_SIZE:
        raise ValueError("sealing a chunk needs its fingerprint or key")
    return domain.seal(inner, _CHUNK_AAD + fp)


def _open(value: bytes | memoryview, keys: Keyring | None, kind: bytes,
          key: bytes | memoryview) -> bytes:
    """The inner encoding of a sealed ``kind`` value (``b"chunk\0"`` or ``b"pages\0"``)
    stored under ``key``, which is bound in as authenticated data. Every read of an
    encrypted chunk that misses the cache passes here, so the words of an error are built
    only for an error (:func:`_what`)."""
    tag = bytes(value[1:1 + L.DOMAIN_TAG_SIZE])
    domain = keys.get(tag) if keys is not None else None
    if domain is None:
        what = _what(kind, key)
        if keys is not None and keys.exists is not None and not keys.exists(f"dom-{tag.hex()}"):
            raise CorruptStore(f"{what} is sealed in dom-{tag.hex()}, which is no data-key "
                               f"domain of this store: tampered with")
        raise KeyUnavailable(f"{what} is encrypted in data-key domain dom-{tag.hex()}, whose "
                             f"key is not unlocked here")
    try:
        return domain.open(value, kind + key)
    except SealError as exc:
        raise CorruptStore(f"{_what(kind, key)} does not authenticate in domain {domain.id} "
                           f"({exc}): tampered with or moved") from None


def _what(kind: bytes, key: bytes | memoryview) -> str:
    if kind == _CHUNK_AAD:
        return f"chunk {bytes(key).hex()}"
    return f"the pages of patch {bytes(key).hex()}"


def decode_chunk(value: bytes | memoryview, key: bytes | None = None,
                 keys: Keyring | None = None) -> bytes:
    """Uncompressed bytes of a stored chunk value (a sealed one needs its chunk ``key`` and
    the ``keys`` holding its domain: KeyUnavailable otherwise); :class:`CorruptStore` if it
    cannot be decoded."""
    if len(value) and value[0] == L.CODEC_SEALED:
        if key is None:
            raise KeyUnavailable("an encrypted chunk was read without its key")
        value = _open(value, keys, _CHUNK_AAD, key)
    kind = value[0] if len(value) else -1
    if kind == L.CODEC_RAW:
        out = bytes(value[1:])
    elif kind == L.CODEC_ZSTD:
        try:
            out = _codecs.d.decompress(memoryview(value)[1:], max_output_size=L.CHUNK_SIZE)
        except zstandard.ZstdError as exc:
            raise CorruptStore(f"chunk does not decompress: {exc}") from exc
    else:
        raise CorruptStore(f"unknown chunk codec {kind}")
    if len(out) != L.CHUNK_SIZE:
        raise CorruptStore(f"chunk decodes to {len(out)} bytes, not {L.CHUNK_SIZE}")
    return out


def encode_batch(datas: Sequence[bytes | bytearray | memoryview], level: int,
                 threads: int, domain: Domain | None = None,
                 fps: Sequence[bytes] | None = None) -> list[bytes]:
    """Encode many chunks with ``threads`` zstd threads in one call (python-zstandard's
    ``multi_compress_to_buffer``: the GIL is released for the whole batch and this thread's
    compression context is reused). Same stored form as :func:`encode_chunk` (sealed in
    ``domain``, with fingerprints ``fps``, when given)."""
    if domain is not None and (fps is None or len(fps) != len(datas)):
        raise ValueError("sealing chunks needs their fingerprints")
    if len(datas) < 2 * max(1, threads):
        return [encode_chunk(d, level, domain, fps[i] if fps is not None else None)
                for i, d in enumerate(datas)]
    frames = _codecs.compressor(level).multi_compress_to_buffer(list(datas), threads=threads)
    out = []
    for i, d in enumerate(datas):
        z = frames[i]
        n = len(d)
        if len(z) < n - n // 16:
            inner = bytes((L.CODEC_ZSTD,)) + z.tobytes()
        else:
            inner = bytes((L.CODEC_RAW,)) + bytes(d)
        out.append(inner if domain is None else _seal(domain, inner, fps[i]))  # type: ignore[index]
    return out


def encode_many(datas: Sequence[bytes | memoryview], level: int,
                pool: object | None = None, domain: Domain | None = None,
                fps: Sequence[bytes] | None = None) -> list[bytes]:
    """Encode chunks (sealed in ``domain`` with fingerprints ``fps``, when given); in
    parallel when ``pool`` is given (the caller may compress on several cores): then one
    :func:`encode_batch` call with a zstd thread per core, which beats a pool task per chunk
    (no per-task overhead, one reused context)."""
    if pool is None or len(datas) < 4:
        if domain is not None and (fps is None or len(fps) != len(datas)):
            raise ValueError("sealing chunks needs their fingerprints")
        return [encode_chunk(d, level, domain, fps[i] if fps is not None else None)
                for i, d in enumerate(datas)]
    return encode_batch(datas, level, os.cpu_count() or 1, domain, fps)



def encode_pages(data: bytes | bytearray | memoryview, level: int,
                 domain: Domain | None = None, page_key: bytes | None = None) -> bytes:
    """Stored form of a patch's pages (``pages`` values): like a chunk, any length; sealed
    in ``domain`` with the ``page_key`` bound in, when given."""
    inner = _plain(data, level)
    if domain is None:
        return inner
    if page_key is None:
        raise ValueError("sealing pages needs their page key")
    return domain.seal(inner, _PAGES_AAD + page_key)


def encode_pages_many(framed: Sequence[bytes], level: int, domain: Domain | None = None,
                      page_keys: Sequence[bytes] | None = None, threads: int = 1) -> list[bytes]:
    """:func:`encode_pages` of many patches' pages at once, the same stored forms. Each item
    of ``framed`` is ``RAW_MARK + pages`` (the raw stored form, built by the caller in the
    one copy that joins the pages), and is stored as it is when zstd does not save 1/16,
    so incompressible pages are never copied again. One ``multi_compress_to_buffer`` call
    (``threads`` zstd threads; the GIL is released for the whole batch, so the caller may
    digest the same pages on another thread meanwhile)."""
    if domain is not None and (page_keys is None or len(page_keys) != len(framed)):
        raise ValueError("sealing pages needs their page keys")
    datas: list[bytes | bytearray | memoryview] = [memoryview(f)[1:] for f in framed]
    if len(datas) < 8:
        inners = [_plain(d, level) for d in datas]
    else:
        frames = _codecs.compressor(level).multi_compress_to_buffer(datas, threads=threads)
        inners = []
        for i, f in enumerate(framed):
            z = frames[i]
            n = len(f) - 1
            inners.append(_ZSTD + z if len(z) < n - n // 16 else f)  # type: ignore[operator]
    if domain is None:
        return inners
    return [domain.seal(inner, _PAGES_AAD + page_keys[i])  # type: ignore[index]
            for i, inner in enumerate(inners)]


def decode_pages(value: bytes | memoryview, size: int, page_key: bytes | None = None,
                 keys: Keyring | None = None) -> bytes:
    """Uncompressed pages of a ``pages`` value, which must be ``size`` bytes long (a sealed
    one needs its ``page_key`` and the ``keys`` holding its domain)."""
    if len(value) and value[0] == L.CODEC_SEALED:
        if page_key is None:
            raise KeyUnavailable("encrypted pages were read without their page key")
        value = _open(value, keys, _PAGES_AAD, page_key)
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
