"""Contract tests for ebsengine.codec: the C core and the pure-Python path.

Every contract test runs against both implementations (fixture ``impl``) and compares
with a naive reference written here, independent of either.  C-vs-pure agreement is
property-tested with hypothesis; set EBSENGINE_SLOW=1 for many more examples.  The
C half skips (with the reason) only when the extension is not built or
EBSENGINE_PURE_PYTHON is set.
"""

from __future__ import annotations

import array
import itertools
import os
import random
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebsengine import codec
from ebsengine.errors import EbsError, InvalidParameter

# When a property fails, hypothesis's pytest plugin imports its patch writer, which pulls
# in libcst, which warns (DeprecationWarning) at import; under the project's
# filterwarnings=error that turns a clear failure report into an INTERNALERROR.  Import
# it once here with that warning silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

SLOW = os.environ.get("EBSENGINE_SLOW", "") not in ("", "0")
EXAMPLES = 2000 if SLOW else 150
prop = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

needs_c = pytest.mark.skipif(
    not codec.HAVE_C,
    reason="C extension ebsengine._ebscore not built or EBSENGINE_PURE_PYTHON set "
    "(build with `pip install -e .` or `python csrc/build_ffi.py`)",
)

# --- naive references --------------------------------------------------------------------


def ref_scan_chunks(buf: bytes, chunk_size: int) -> list[bytes | None]:
    chunks = [buf[i : i + chunk_size] for i in range(0, len(buf), chunk_size)]
    return [None if chunk.count(0) == len(chunk) else xxhash.xxh3_128_digest(chunk) for chunk in chunks]


def ref_diff_records(a: bytes, b: bytes, width: int) -> list[int]:
    return [i for i in range(len(a) // width) if a[i * width : (i + 1) * width] != b[i * width : (i + 1) * width]]


def ref_zero_runs(buf: bytes, granule: int) -> list[tuple[int, bool]]:
    granules = [buf[i : i + granule] for i in range(0, len(buf), granule)]
    kinds = [(len(g), g.count(0) == len(g)) for g in granules]
    return [(sum(n for n, _ in group), zero) for zero, group in itertools.groupby(kinds, key=lambda k: k[1])]


# --- the two implementations -------------------------------------------------------------

_DISPATCH = ["_fingerprint", "_is_zero", "_scan_chunks", "_diff_records", "_zero_runs"]


@pytest.fixture(params=["c", "py"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """The public API of codec, with its dispatch pointed at one implementation."""
    if request.param == "c" and not codec.HAVE_C:
        pytest.skip("C extension ebsengine._ebscore not built or EBSENGINE_PURE_PYTHON set")
    for name in _DISPATCH:
        monkeypatch.setattr(codec, name, getattr(codec, f"_{request.param}{name}"))
    yield SimpleNamespace(
        name=request.param,
        fingerprint=codec.fingerprint,
        is_zero=codec.is_zero,
        scan_chunks=codec.scan_chunks,
        diff_records=codec.diff_records,
        zero_runs=codec.zero_runs,
    )


# --- strategies --------------------------------------------------------------------------

CHUNK_SIZES = st.one_of(st.sampled_from([1, 2, 7, 16, 512, 4096]), st.integers(1, 5000))


@st.composite
def chunked_buffers(draw: st.DrawFn) -> tuple[bytes, int]:
    """A buffer made of chunk-sized pieces of chosen kinds, plus an optional short tail.

    Kinds: all zero, random, zero except the first byte, zero except the last byte,
    zero except one byte in the middle.
    """
    size = draw(CHUNK_SIZES)
    rnd = random.Random(draw(st.integers(0, 2**32)))
    kinds = draw(st.lists(st.sampled_from(["zero", "random", "first", "last", "middle"]), max_size=10))
    tail = draw(st.integers(0, size - 1))
    tail_kind = draw(st.sampled_from(["zero", "random", "first", "last", "middle"]))
    out = bytearray()
    for kind, n in [(k, size) for k in kinds] + [(tail_kind, tail)]:
        piece = bytearray(n)
        if n == 0:
            pass
        elif kind == "random":
            piece = bytearray(rnd.randbytes(n))
        elif kind == "first":
            piece[0] = rnd.randint(1, 255)
        elif kind == "last":
            piece[-1] = rnd.randint(1, 255)
        elif kind == "middle":
            piece[n // 2] = rnd.randint(1, 255)
        out += piece
    return bytes(out), size


@st.composite
def record_pairs(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    """Two equal-length arrays of fixed-width records; b is a with some records changed."""
    width = draw(st.one_of(st.sampled_from([1, 8, 16, 24]), st.integers(1, 300)))
    n = draw(st.integers(0, 600))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    a = bytearray(rnd.randbytes(n * width))
    b = bytearray(a)
    for i in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=20)) if n else []:
        pos = i * width + rnd.randrange(width)  # change one byte of record i
        b[pos] = (b[pos] + rnd.randint(1, 255)) % 256
    return bytes(a), bytes(b), width


# --- contract tests, both implementations --------------------------------------------------


@prop
@given(data=st.binary(max_size=5000))
def test_fingerprint_is_xxh3_128_canonical(data: bytes) -> None:
    expect = xxhash.xxh3_128_digest(data)
    assert codec._py_fingerprint(memoryview(data)) == expect
    if codec.HAVE_C:
        assert codec._c_fingerprint(memoryview(data)) == expect


def test_fingerprint_known_vectors_and_zero_data(impl: SimpleNamespace) -> None:
    assert impl.fingerprint(b"").hex() == "99aa06d3014798d86001c324468d497f"
    assert impl.fingerprint(b"abc").hex() == "06b05ab6733a618578af5f94892f3950"
    # all-zero data has a real fingerprint (only scan_chunks reports it as None)
    assert impl.fingerprint(bytes(4096)) == xxhash.xxh3_128_digest(bytes(4096))
    assert len(impl.fingerprint(b"x" * 100_000)) == codec.FP_SIZE == 16


@pytest.mark.parametrize(
    "buf, size, expect",
    [
        (b"", 4096, []),
        (bytes(10), 4, [None, None, None]),
        (bytes(8) + b"\x01", 4, [None, None, "fp"]),
        (b"\x01" + bytes(7), 4, ["fp", None]),
        (bytes(3) + b"\x01", 4, ["fp"]),
        (bytes(5), 100, [None]),
        (b"abc", 1, ["fp", "fp", "fp"]),
    ],
)
def test_scan_chunks_examples(impl: SimpleNamespace, buf: bytes, size: int, expect: list[str | None]) -> None:
    got = impl.scan_chunks(buf, size)
    assert [None if fp is None else "fp" for fp in got] == expect
    assert got == ref_scan_chunks(buf, size)


@prop
@given(case=chunked_buffers())
def test_scan_chunks_matches_reference(case: tuple[bytes, int]) -> None:
    buf, size = case
    expect = ref_scan_chunks(buf, size)
    assert len(expect) == -(-len(buf) // size)
    assert codec._py_scan_chunks(memoryview(buf), size) == expect
    if codec.HAVE_C:
        assert codec._c_scan_chunks(memoryview(buf), size) == expect


def test_scan_chunks_huge_chunk_size(impl: SimpleNamespace) -> None:
    # bigger than the buffer, even bigger than size_t: one chunk
    assert impl.scan_chunks(b"abc", 2**70) == [xxhash.xxh3_128_digest(b"abc")]
    assert impl.scan_chunks(bytes(3), 2**70) == [None]


@prop
@given(data=chunked_buffers())
def test_is_zero_matches_reference(data: tuple[bytes, int]) -> None:
    buf = data[0]
    expect = buf.count(0) == len(buf)
    assert codec._py_is_zero(memoryview(buf)) is expect
    if codec.HAVE_C:
        assert codec._c_is_zero(memoryview(buf)) is expect


def test_is_zero_every_position(impl: SimpleNamespace) -> None:
    # a single nonzero byte at each position of a buffer that spans the C block sizes,
    # at several alignments
    base = bytearray(200)
    for start in range(9):
        assert impl.is_zero(memoryview(base)[start:])
    for pos in range(200):
        base[pos] = 0x80
        for start in (0, 1, 3, 8):
            assert impl.is_zero(memoryview(base)[start:]) is (pos < start)
        base[pos] = 0


@prop
@given(case=record_pairs())
def test_diff_records_matches_reference(case: tuple[bytes, bytes, int]) -> None:
    a, b, width = case
    expect = ref_diff_records(a, b, width)
    assert codec.diff_records(a, b, width) == expect
    assert codec._py_diff_records(memoryview(a), memoryview(b), width) == expect
    if codec.HAVE_C:
        assert codec._c_diff_records(memoryview(a), memoryview(b), width) == expect


def test_diff_records_examples(impl: SimpleNamespace) -> None:
    assert impl.diff_records(b"", b"", 16) == []
    assert impl.diff_records(b"aabbcc", b"aabbcc", 2) == []
    assert impl.diff_records(b"aabbcc", b"xabbcy", 2) == [0, 2]
    assert impl.diff_records(b"abc", b"abd", 3) == [0]
    a = bytes(16 * 1000)
    b = bytearray(a)
    b[16 * 999 + 15] = 1  # last byte of the last record, past the first 4 KiB span
    b[16 * 300] = 1
    assert impl.diff_records(a, b, 16) == [300, 999]


@prop
@given(case=chunked_buffers(), granule=st.one_of(st.sampled_from([1, 512, 4096]), st.integers(1, 5000)))
def test_zero_runs_matches_reference(case: tuple[bytes, int], granule: int) -> None:
    buf = case[0]
    expect = ref_zero_runs(buf, granule)
    assert sum(n for n, _ in expect) == len(buf)
    assert all(x[1] != y[1] for x, y in itertools.pairwise(expect))
    assert codec._py_zero_runs(memoryview(buf), granule) == expect
    if codec.HAVE_C:
        assert codec._c_zero_runs(memoryview(buf), granule) == expect


def test_zero_runs_examples(impl: SimpleNamespace) -> None:
    assert impl.zero_runs(b"", 512) == []
    assert impl.zero_runs(bytes(4096), 512) == [(4096, True)]
    assert impl.zero_runs(bytes(1000), 512) == [(1000, True)]  # short last granule
    data = bytes(1024) + b"\x01" + bytes(1023) + bytes(2048) + b"x"
    assert impl.zero_runs(data, 512) == [(1024, True), (512, False), (2560, True), (1, False)]
    assert impl.zero_runs(data, 4096) == [(4097, False)]
    assert impl.zero_runs(data, 2**70) == [(4097, False)]


@needs_c
@pytest.mark.parametrize("granule", [1, 3, 7, 100, 1000, 5000])
def test_c_zero_runs_splits_large_buffers(monkeypatch: pytest.MonkeyPatch, granule: int) -> None:
    # Buffers over 4 GiB are cut into segments whose runs are merged; shrink the limit
    # so a small buffer takes that path (granule 5000 > limit takes the per-granule one).
    monkeypatch.setattr(codec, "_UINT32_MAX", 999)
    rnd = random.Random(granule)
    buf = b"".join(bytes(rnd.choice([0, 1, 10, 700])) + b"\x01" * rnd.choice([0, 1, 5]) for _ in range(60))
    assert len(buf) > 2000
    assert codec._c_zero_runs(memoryview(buf), granule) == ref_zero_runs(buf, granule)


# --- accepted inputs and bad arguments ---------------------------------------------------


def test_accepts_bytes_like_without_copy_types(impl: SimpleNamespace) -> None:
    raw = bytes(range(256)) * 4 + bytes(1024)
    forms = [
        raw,
        bytearray(raw),
        memoryview(raw),
        memoryview(b"xx" + raw)[2:],  # contiguous slice with an offset
        memoryview(raw).cast("B", (8, 256)),  # 2-D, C-contiguous
        array.array("I", raw),  # multi-byte items: the raw bytes count
    ]
    for form in forms:
        assert impl.scan_chunks(form, 512) == ref_scan_chunks(raw, 512)
        assert impl.zero_runs(form, 512) == ref_zero_runs(raw, 512)
        assert impl.fingerprint(form) == xxhash.xxh3_128_digest(raw)
        assert impl.diff_records(form, raw, 4) == []
    assert impl.is_zero(array.array("Q", [0, 0]))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f: f.scan_chunks(b"abc", 0), "chunk_size must be > 0"),
        (lambda f: f.scan_chunks(b"abc", -4096), "chunk_size must be > 0"),
        (lambda f: f.zero_runs(b"abc", 0), "granule must be > 0"),
        (lambda f: f.diff_records(b"ab", b"ab", 0), "width must be > 0"),
        (lambda f: f.diff_records(b"abcd", b"abc", 1), "same length"),
        (lambda f: f.diff_records(b"abc", b"abc", 2), "not a multiple"),
        (lambda f: f.scan_chunks(memoryview(bytes(8))[::2], 2), "C-contiguous"),
        (lambda f: f.fingerprint(memoryview(bytes(8))[::2]), "C-contiguous"),
        (lambda f: f.is_zero(memoryview(bytes(8))[::2]), "C-contiguous"),
    ],
)
def test_bad_values_raise_value_error(impl: SimpleNamespace, call: Callable[[SimpleNamespace], object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call(impl)
    assert isinstance(info.value, InvalidParameter)


@pytest.mark.parametrize(
    "call",
    [
        lambda f: f.scan_chunks("text", 4),
        lambda f: f.scan_chunks(b"abc", 4.0),
        lambda f: f.scan_chunks(b"abc", True),
        lambda f: f.fingerprint(None),
        lambda f: f.diff_records(b"ab", [1, 2], 1),
        lambda f: f.zero_runs(b"ab", "512"),
    ],
)
def test_wrong_types_raise_type_error(impl: SimpleNamespace, call: Callable[[SimpleNamespace], object]) -> None:
    with pytest.raises(TypeError):
        call(impl)


# --- the C core directly: statuses and their mapping --------------------------------------


@needs_c
def test_c_status_codes() -> None:
    ffi, lib = codec._ffi, codec._lib
    buf = ffi.from_buffer("uint8_t[]", b"\x01" + bytes(10) + b"\x01")
    fps, zeros = ffi.new("uint8_t[]", 16), ffi.new("uint8_t[]", 1)
    count = ffi.new("size_t *")
    runs = ffi.new("uint32_t[]", 4)
    assert lib.ebs_scan_chunks(buf, 12, 0, fps, zeros) == lib.EBS_EINVAL
    assert lib.ebs_diff_records(buf, buf, 12, 0, ffi.new("uint32_t[]", 1), count) == lib.EBS_EINVAL
    assert lib.ebs_zero_runs(buf, 12, 0, runs, 2, count) == lib.EBS_EINVAL
    # 3 runs (1, zero 10, 1) do not fit in 2: the first two are written, count says so
    assert lib.ebs_zero_runs(buf, 12, 1, runs, 2, count) == lib.EBS_ENOSPC
    assert count[0] == 2 and list(runs[0:4]) == [1, 0, 10, 1]
    assert lib.ebs_zero_runs(buf, 2**32, 1, runs, 2, count) == lib.EBS_EOVERFLOW  # not read
    assert lib.ebs_fp_size() == codec.FP_SIZE


@needs_c
def test_status_mapping() -> None:
    codec._check(codec._lib.EBS_OK, "f")
    with pytest.raises(ValueError, match="ebs_x failed with status -1"):
        codec._check(codec._lib.EBS_EINVAL, "ebs_x")
    with pytest.raises(EbsError):
        codec._check(codec._lib.EBS_ENOSPC, "ebs_x")
    with pytest.raises(EbsError):
        codec._check(-99, "ebs_x")


# --- startup self-test and path selection ---------------------------------------------------


@needs_c
def test_selftest_catches_a_wrong_core(monkeypatch: pytest.MonkeyPatch) -> None:
    codec._selftest()  # passes as built
    monkeypatch.setattr(codec, "_c_scan_chunks", lambda mv, size: codec._py_scan_chunks(mv, size + 1))
    with pytest.raises(ImportError, match="scan_chunks"):
        codec._selftest()


def test_selftest_catches_a_wrong_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_py_fingerprint", lambda mv: bytes(16))
    with pytest.raises(ImportError, match="python fingerprint"):
        codec._selftest()


def _import_in_subprocess(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("EBSENGINE_PURE_PYTHON", None)
    if env_value is not None:
        env["EBSENGINE_PURE_PYTHON"] = env_value
    code = "import ebsengine.codec as c; print(c.HAVE_C, c.FP_SIZE, c.scan_chunks(bytes(3), 2))"
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout


def test_pure_python_switch() -> None:
    assert _import_in_subprocess("1") == "False 16 [None, None]\n"


@needs_c
def test_c_is_default_when_built() -> None:
    assert _import_in_subprocess(None) == "True 16 [None, None]\n"
    assert _import_in_subprocess("0") == "True 16 [None, None]\n"


# --- the GIL is released around C calls ----------------------------------------------------


def _other_thread_ran_during(op: Callable[[], object], attempts: int = 20) -> bool:
    """Return True if another Python thread executed bytecode while ``op()`` ran.

    Deterministic, not a timing test: the switch interval is raised so far that the
    interpreter never takes the GIL away from this thread by itself.  A ticker thread
    waits for the GIL; it can only bump its counter between our two reads if ``op``
    released the GIL.  If ``op`` holds the GIL, the counter cannot move, on any machine.
    """
    ticks = [0]
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0)  # give the GIL back so the main thread can resume

    old = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    thread = threading.Thread(target=ticker, daemon=True)
    try:
        thread.start()
        while ticks[0] == 0:
            time.sleep(0.001)
        for _ in range(attempts):
            before = ticks[0]
            op()
            if ticks[0] != before:
                return True
        return False
    finally:
        stop.set()
        sys.setswitchinterval(old)
        thread.join()


@needs_c
def test_c_calls_release_the_gil() -> None:
    big = bytes(range(1, 256)) * (32 * 1024 * 1024 // 255)  # ~32 MiB, nothing zero
    # Control: an operation known to hold the GIL must not let the ticker run,
    # otherwise this check could not tell the difference.
    assert not _other_thread_ran_during(lambda: big.find(b"\x00needle"), attempts=5)
    assert _other_thread_ran_during(lambda: codec.scan_chunks(big, 4096))
    assert _other_thread_ran_during(lambda: codec.is_zero(bytes(len(big))))
