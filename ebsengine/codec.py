"""Byte crunching for ebsengine: fingerprints, zero detection, record diffs, zero runs.

This is the only module that imports the compiled C core (``ebsengine._ebscore``, built
by cffi from ``csrc/``).  Every public function here:

* accepts any C-contiguous bytes-like object (``bytes``, ``bytearray``, ``memoryview``,
  ``array.array``, ...) without copying it, reading its raw bytes;
* checks its arguments in Python and raises ``ValueError`` (:class:`InvalidParameter`)
  for a bad value and ``TypeError`` for a wrong type, before any C code runs;
* calls C with the GIL released (cffi's out-of-line API mode wraps each call in
  ``Py_BEGIN_ALLOW_THREADS``), so several threads can scan in parallel;
* has a pure-Python twin (``_py_*``) with identical results.

The pure-Python path is used when the extension is not built, or when the environment
variable ``EBSENGINE_PURE_PYTHON`` is set to anything but ``""`` or ``"0"`` at import.
:data:`HAVE_C` tells which path is in use.  At import the C path is checked against the
pure one on a few fixed inputs, and both against known XXH3 digests; a mismatch raises
``ImportError`` (a miscompiled core must not silently write wrong fingerprints).

Fingerprints are XXH3-128 digests in canonical (big-endian) byte order, exactly
``xxhash.xxh3_128_digest(data)``: :data:`FP_SIZE` (16) bytes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import xxhash

from ebsengine.errors import EbsError, InvalidParameter

__all__ = [
    "FP_SIZE",
    "HAVE_C",
    "BytesLike",
    "fingerprint",
    "scan_chunks",
    "is_zero",
    "diff_records",
    "zero_runs",
]

BytesLike = bytes | bytearray | memoryview
"""What the functions here accept; any C-contiguous buffer-protocol object works."""

_UINT32_MAX = 0xFFFFFFFF

# --- the compiled core -------------------------------------------------------------------

# cffi objects are untyped; this module is the one place where that `Any` is tolerated.
_ffi: Any = None
_lib: Any = None


def _want_pure() -> bool:
    return os.environ.get("EBSENGINE_PURE_PYTHON", "") not in ("", "0")


if not _want_pure():
    try:
        # Loaded by name: the compiled module has no Python source or type information
        # (so its functions are ``Any`` here and nowhere else), and as a C extension it
        # imports nothing of ours, so it stands outside the import-layer check.
        _ebscore = importlib.import_module("ebsengine._ebscore")
    except ModuleNotFoundError as exc:
        # Not built (source checkout without a build): the pure path serves.  A module
        # that exists but fails to load is a broken build and propagates instead.
        if exc.name != "ebsengine._ebscore":
            raise
    else:
        _ffi = _ebscore.ffi
        _lib = _ebscore.lib

HAVE_C: bool = _lib is not None
"""True when the C core is in use, False when the pure-Python path is."""

FP_SIZE: int = int(_lib.ebs_fp_size()) if HAVE_C else 16
"""Bytes in one fingerprint (read from the C core when it is loaded)."""

if FP_SIZE != 16:  # pragma: no cover - would mean a header that disagrees with XXH3-128
    raise ImportError(f"ebsengine._ebscore reports FP_SIZE={FP_SIZE}, expected 16 (XXH3-128)")

# C status -> exception class.  Python checks arguments before calling C, so any error
# status that still comes back means the wrapper and the core disagree.
_ERRORS: dict[int, type[EbsError]] = {}
if HAVE_C:
    _ERRORS = {
        _lib.EBS_EINVAL: InvalidParameter,
        _lib.EBS_EOVERFLOW: InvalidParameter,
        _lib.EBS_ENOSPC: EbsError,
    }
    # Output arrays are fully written by C (or not read); skip cffi's zero-fill.
    _alloc: Any = _ffi.new_allocator(should_clear_after_alloc=False)


def _check(status: int, func: str) -> None:
    """Raise the exception that the C status ``status`` of ``func`` maps to."""
    if status != 0:
        cls = _ERRORS.get(status, EbsError)
        raise cls(f"ebscore: {func} failed with status {status}")


# --- argument checks (shared by both paths) ----------------------------------------------


def _view(name: str, data: BytesLike) -> memoryview:
    """Return a flat unsigned-byte view of ``data`` without copying it.

    Raises TypeError if ``data`` has no buffer interface, ValueError if it is not
    C-contiguous.
    """
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError(
            f"{name} must be a bytes-like object (bytes, bytearray, memoryview), "
            f"not {type(data).__name__}"
        ) from None
    if not mv.c_contiguous:
        raise InvalidParameter(f"{name} must be a C-contiguous buffer (got a strided view)")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def _positive(name: str, value: int) -> int:
    """Return ``value`` as an int if it is a positive integer; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise InvalidParameter(f"{name} must be > 0, got {value}")
    return value


# --- pure Python -------------------------------------------------------------------------

_ZBLOCK = 64 * 1024
_ZEROS = bytes(_ZBLOCK)


def _py_fingerprint(mv: memoryview) -> bytes:
    return xxhash.xxh3_128_digest(mv)


def _py_is_zero(mv: memoryview) -> bool:
    # Compare 64 KiB at a time with a block of zeros: bytes equality is a C memcmp,
    # and a nonzero byte stops the scan at the block that holds it.
    for off in range(0, len(mv), _ZBLOCK):
        piece = mv[off : off + _ZBLOCK].tobytes()
        if piece != (_ZEROS if len(piece) == _ZBLOCK else bytes(len(piece))):
            return False
    return True


def _py_scan_chunks(mv: memoryview, chunk_size: int) -> list[bytes | None]:
    digest = xxhash.xxh3_128_digest
    return [
        None if _py_is_zero(mv[off : off + chunk_size]) else digest(mv[off : off + chunk_size])
        for off in range(0, len(mv), chunk_size)
    ]


def _py_diff_records(a: memoryview, b: memoryview, width: int) -> list[int]:
    # Like the C core: skip ~4 KiB spans that are equal, then compare single records.
    n = len(a) // width
    span = max(1, 4096 // width)
    out: list[int] = []
    for i in range(0, n, span):
        m = min(span, n - i)
        lo, hi = i * width, (i + m) * width
        if a[lo:hi] == b[lo:hi]:
            continue
        for j in range(i, i + m):
            if a[j * width : (j + 1) * width] != b[j * width : (j + 1) * width]:
                out.append(j)
    return out


def _py_zero_runs(mv: memoryview, granule: int) -> list[tuple[int, bool]]:
    runs: list[tuple[int, bool]] = []
    for off in range(0, len(mv), granule):
        piece = mv[off : off + granule]
        zero = _py_is_zero(piece)
        if runs and runs[-1][1] == zero:
            runs[-1] = (runs[-1][0] + len(piece), zero)
        else:
            runs.append((len(piece), zero))
    return runs


# --- C -----------------------------------------------------------------------------------


def _c_fingerprint(mv: memoryview) -> bytes:
    out = _alloc("uint8_t[]", FP_SIZE)
    _check(_lib.ebs_fingerprint(_ffi.from_buffer("uint8_t[]", mv), len(mv), out), "ebs_fingerprint")
    return bytes(_ffi.buffer(out))


def _c_is_zero(mv: memoryview) -> bool:
    return bool(_lib.ebs_is_zero(_ffi.from_buffer("uint8_t[]", mv), len(mv)))


def _c_scan_chunks(mv: memoryview, chunk_size: int) -> list[bytes | None]:
    size = len(mv)
    if size == 0:
        return []
    chunk_size = min(chunk_size, size)  # same chunks; keeps huge ints out of size_t
    n = -(-size // chunk_size)
    fps = _alloc("uint8_t[]", n * FP_SIZE)
    zeros = _alloc("uint8_t[]", n)
    _check(
        _lib.ebs_scan_chunks(_ffi.from_buffer("uint8_t[]", mv), size, chunk_size, fps, zeros),
        "ebs_scan_chunks",
    )
    fp = _ffi.buffer(fps)[:]
    zeros_flags = _ffi.buffer(zeros)[:]
    return [None if z else fp[i * FP_SIZE : (i + 1) * FP_SIZE] for i, z in enumerate(zeros_flags)]


def _c_diff_records(a: memoryview, b: memoryview, width: int) -> list[int]:
    n = len(a) // width
    if n == 0:
        return []
    idx = _alloc("uint32_t[]", n)
    count = _ffi.new("size_t *")
    _check(
        _lib.ebs_diff_records(
            _ffi.from_buffer("uint8_t[]", a), _ffi.from_buffer("uint8_t[]", b), n, width, idx, count
        ),
        "ebs_diff_records",
    )
    return list(_ffi.unpack(idx, count[0]))


def _c_zero_runs_segment(mv: memoryview, granule: int) -> list[tuple[int, bool]]:
    """C zero runs of ``mv`` (at most 4 GiB - 1 bytes, the limit of a uint32 run length)."""
    size = len(mv)
    max_runs = -(-size // granule)
    runs = _alloc("uint32_t[]", 2 * max_runs)
    count = _ffi.new("size_t *")
    _check(
        _lib.ebs_zero_runs(_ffi.from_buffer("uint8_t[]", mv), size, granule, runs, max_runs, count),
        "ebs_zero_runs",
    )
    flat = _ffi.unpack(runs, 2 * count[0])
    return [(flat[k], bool(flat[k + 1])) for k in range(0, len(flat), 2)]


def _c_zero_runs(mv: memoryview, granule: int) -> list[tuple[int, bool]]:
    size = len(mv)
    if size == 0:
        return []
    granule = min(granule, size)
    if size <= _UINT32_MAX:
        return _c_zero_runs_segment(mv, granule)
    # Larger than a uint32 run length: cut at granule boundaries (so every granule is
    # classified as in one pass) and merge the runs that meet at the cuts.
    runs: list[tuple[int, bool]] = []
    if granule <= _UINT32_MAX:
        step = (_UINT32_MAX // granule) * granule
        pieces = (_c_zero_runs_segment(mv[off : off + step], granule)
                  for off in range(0, size, step))
    else:  # granules beyond 4 GiB: one C zero test per granule
        pieces = (
            [(len(mv[off : off + granule]), _c_is_zero(mv[off : off + granule]))]
            for off in range(0, size, granule)
        )
    for piece in pieces:
        for length, zero in piece:
            if runs and runs[-1][1] == zero:
                runs[-1] = (runs[-1][0] + length, zero)
            else:
                runs.append((length, zero))
    return runs


# --- public API --------------------------------------------------------------------------

_fingerprint: Callable[[memoryview], bytes]
_is_zero: Callable[[memoryview], bool]
_scan_chunks: Callable[[memoryview, int], list[bytes | None]]
_diff_records: Callable[[memoryview, memoryview, int], list[int]]
_zero_runs: Callable[[memoryview, int], list[tuple[int, bool]]]

if HAVE_C:
    _fingerprint, _is_zero, _scan_chunks = _c_fingerprint, _c_is_zero, _c_scan_chunks
    _diff_records, _zero_runs = _c_diff_records, _c_zero_runs
else:
    _fingerprint, _is_zero, _scan_chunks = _py_fingerprint, _py_is_zero, _py_scan_chunks
    _diff_records, _zero_runs = _py_diff_records, _py_zero_runs


def fingerprint(data: BytesLike) -> bytes:
    """Return the fingerprint of ``data``: its XXH3-128 digest, canonical (big-endian).

    Args:
        data: any C-contiguous bytes-like object, of any length (0 included).

    Returns:
        :data:`FP_SIZE` (16) bytes, equal to ``xxhash.xxh3_128_digest(data)``.  Unlike
        :func:`scan_chunks`, all-zero data gets its real digest, not ``None``.

    Raises:
        TypeError: ``data`` is not bytes-like.
        ValueError: ``data`` is a non-contiguous view.
    """
    return _fingerprint(_view("data", data))


def is_zero(buf: BytesLike) -> bool:
    """Return True if every byte of ``buf`` is 0 (True for an empty buffer).

    The scan stops at the first nonzero byte.

    Raises:
        TypeError: ``buf`` is not bytes-like.
        ValueError: ``buf`` is a non-contiguous view.
    """
    return _is_zero(_view("buf", buf))


def scan_chunks(buf: BytesLike, chunk_size: int) -> list[bytes | None]:
    """Cut ``buf`` into chunks and fingerprint each one that is not all zero.

    Args:
        buf: C-contiguous bytes-like object.
        chunk_size: chunk length in bytes, > 0.  Chunk ``i`` is
            ``buf[i*chunk_size : (i+1)*chunk_size]``; the last one may be shorter.

    Returns:
        One entry per chunk, ``ceil(len(buf) / chunk_size)`` in all (``[]`` for an
        empty buffer): ``None`` if every byte of the chunk is 0, else its
        :data:`FP_SIZE`-byte fingerprint (as :func:`fingerprint`).

    Raises:
        TypeError: ``buf`` is not bytes-like, or ``chunk_size`` is not an int.
        ValueError: ``chunk_size <= 0``, or ``buf`` is a non-contiguous view.
    """
    mv = _view("buf", buf)
    return _scan_chunks(mv, _positive("chunk_size", chunk_size))


def diff_records(a: BytesLike, b: BytesLike, width: int) -> list[int]:
    """Return the indexes of the fixed-width records in which ``a`` and ``b`` differ.

    Args:
        a, b: C-contiguous bytes-like objects of equal length, each an array of
            ``len(a) // width`` records of ``width`` bytes.
        width: record size in bytes, > 0; must divide ``len(a)``.

    Returns:
        Record indexes ``i`` (ascending) where ``a[i*width:(i+1)*width]`` differs
        from ``b[i*width:(i+1)*width]``; ``[]`` when equal or empty.

    Raises:
        TypeError: ``a``/``b`` not bytes-like, or ``width`` not an int.
        ValueError: ``width <= 0``; lengths differ; the length is not a multiple of
            ``width``; more than 2**32 records (indexes are 32-bit in C);
            a non-contiguous view.
    """
    va, vb = _view("a", a), _view("b", b)
    width = _positive("width", width)
    if len(va) != len(vb):
        raise InvalidParameter(
            f"a and b must have the same length, got {len(va)} and {len(vb)} bytes")
    if len(va) % width:
        raise InvalidParameter(f"length {len(va)} is not a multiple of the record width {width}")
    if len(va) // width > _UINT32_MAX + 1:
        raise InvalidParameter(f"{len(va) // width} records exceed the limit of 2**32")
    return _diff_records(va, vb, width)


def zero_runs(buf: BytesLike, granule: int) -> list[tuple[int, bool]]:
    """Describe ``buf`` as alternating runs of zero and nonzero data.

    ``buf`` is looked at in granules of ``granule`` bytes (say 512 or 4096; the last
    granule may be shorter): a granule is zero if every byte in it is 0.  Neighbouring
    granules of the same kind merge into one run, so neighbouring runs always differ.

    Args:
        buf: C-contiguous bytes-like object.
        granule: granule size in bytes, > 0.

    Returns:
        ``[(length_in_bytes, is_zero), ...]`` in buffer order; the lengths sum to
        ``len(buf)``; ``[]`` for an empty buffer.

    Raises:
        TypeError: ``buf`` not bytes-like, or ``granule`` not an int.
        ValueError: ``granule <= 0``, or ``buf`` is a non-contiguous view.
    """
    mv = _view("buf", buf)
    return _zero_runs(mv, _positive("granule", granule))


# --- startup self-test -------------------------------------------------------------------

# Known XXH3-128 digests (from the xxHash reference implementation).
_KNOWN_FPS = {
    b"": bytes.fromhex("99aa06d3014798d86001c324468d497f"),
    b"abc": bytes.fromhex("06b05ab6733a618578af5f94892f3950"),
}


def _selftest() -> None:
    """Check the active path against known digests, and C against pure Python.

    Cheap (well under a millisecond of work); raises ImportError on any mismatch.
    """
    for data, expect in _KNOWN_FPS.items():
        mv = memoryview(data)
        got = {"python": _py_fingerprint(mv)}
        if HAVE_C:
            got["c"] = _c_fingerprint(mv)
        for path, fp in got.items():
            if fp != expect:
                raise ImportError(
                    f"ebsengine.codec self-test failed: {path} fingerprint of {data!r} is "
                    f"{fp.hex()}, expected {expect.hex()} (broken xxHash build?)"
                )
    if not HAVE_C:
        return
    # Zero chunks, a chunk whose only nonzero byte is its first / last, a short tail.
    buf = bytearray(4 * 1024 + 300)
    buf[1024:2048] = bytes(range(256)) * 4
    buf[2048] = 1
    buf[4095] = 0xFF
    buf[-3:] = b"end"
    other = bytearray(buf)
    other[0] = 7
    other[2049] = 9
    mv, mo = memoryview(bytes(buf)), memoryview(bytes(other))
    checks: list[tuple[str, object, object]] = []
    for size in (1024, 1000, 512, 4396):
        checks.append((f"scan_chunks({size})", _c_scan_chunks(mv, size), _py_scan_chunks(mv, size)))
        checks.append((f"zero_runs({size})", _c_zero_runs(mv, size), _py_zero_runs(mv, size)))
    checks.append(("is_zero", [_c_is_zero(mv[:n]) for n in (0, 1025, 1026)], [True, True, False]))
    for width in (1, 7, 16):
        n = len(mv) // width * width
        checks.append(
            (f"diff_records({width})", _c_diff_records(mv[:n], mo[:n], width),
             _py_diff_records(mv[:n], mo[:n], width))
        )
    for what, c_result, py_result in checks:
        if c_result != py_result:
            raise ImportError(
                f"ebsengine.codec self-test failed: C {what} disagrees with the pure-Python "
                f"reference; the compiled core is broken (set EBSENGINE_PURE_PYTHON=1 to bypass)"
            )


_selftest()
