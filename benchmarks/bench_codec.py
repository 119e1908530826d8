"""Benchmark: scan_chunks over 64 MiB, C core vs the pure-Python path, in one run.

Run:  python -m pytest benchmarks/bench_codec.py --benchmark-only

Corpus (built in memory from a fixed seed, so every run scans the same bytes): 64 MiB
cut into 4 KiB chunks, each chunk one of

* zero        -- all zero bytes (the zero scan must read all of it),
* random      -- ``random.Random(seed).randbytes`` (incompressible, hashed at once),
* text-like   -- words from a small vocabulary with spaces and newlines,
* sparse      -- zero except one byte at the end (worst case: scan all, then hash),

in proportions 3:3:3:1, shuffled.  Baseline: the pure-Python path
(``EBSENGINE_PURE_PYTHON=1`` behaviour), which itself hashes through the ``xxhash``
package's C code, so the ratio measures the per-chunk overhead and zero scan that the C
core saves, not C versus Python hashing.

pytest-benchmark reports wall time per round; ``extra_info`` adds CPU time (process
time) per round and throughput.  The C/pure ratio is the ratio of the two means.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ebsengine import codec

MiB = 1024 * 1024
TOTAL = 64 * MiB
CHUNK = 4096
SEED = 20261127

_WORDS = (
    b"the volume snapshot block chunk store lmdb write read flush commit zero map "
    b"device engine extent sector offset length fingerprint"
).split()


def _corpus() -> bytes:
    rnd = random.Random(SEED)
    kinds = ["zero"] * 3 + ["random"] * 3 + ["text"] * 3 + ["sparse"]
    n = TOTAL // CHUNK
    plan = [kinds[i % len(kinds)] for i in range(n)]
    rnd.shuffle(plan)
    # Build a pool of distinct text and random chunks once; reuse them with a counter
    # stamped in so no two nonzero chunks are identical.
    text_pool = bytearray()
    while len(text_pool) < 64 * CHUNK:
        line = b" ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(4, 14)))
        text_pool += line + b"\n"
    random_pool = rnd.randbytes(64 * CHUNK)
    out = bytearray(TOTAL)
    for i, kind in enumerate(plan):
        off = i * CHUNK
        j = (i % 64) * CHUNK
        if kind == "random":
            out[off : off + CHUNK] = random_pool[j : j + CHUNK]
        elif kind == "text":
            out[off : off + CHUNK] = text_pool[j : j + CHUNK]
        if kind in ("random", "text"):
            out[off : off + 4] = i.to_bytes(4, "little")
        elif kind == "sparse":  # zero but for a stamp in its last 5 bytes
            out[off + CHUNK - 5 : off + CHUNK - 1] = i.to_bytes(4, "little")
            out[off + CHUNK - 1] = 1
    return bytes(out)


@pytest.fixture(scope="module")
def corpus() -> bytes:
    return _corpus()


def _run(benchmark: BenchmarkFixture, scan: Callable[[memoryview, int], list[bytes | None]], data: bytes) -> None:
    mv = memoryview(data)
    cpu: list[float] = []
    wall: list[float] = []

    def once() -> list[bytes | None]:
        t, w = time.process_time(), time.perf_counter()
        result = scan(mv, CHUNK)
        cpu.append(time.process_time() - t)
        wall.append(time.perf_counter() - w)
        return result

    result = benchmark.pedantic(once, rounds=5, iterations=1, warmup_rounds=1)  # type: ignore[no-untyped-call]
    assert len(result) == TOTAL // CHUNK
    benchmark.extra_info["corpus"] = "64 MiB, 4 KiB chunks, zero:random:text:sparse = 3:3:3:1"
    benchmark.extra_info["cpu_s_per_round"] = round(sum(cpu) / len(cpu), 6)
    benchmark.extra_info["MiB_per_s"] = round(TOTAL / MiB / (sum(wall) / len(wall)), 1)


@pytest.mark.skipif(not codec.HAVE_C, reason="C extension not built or EBSENGINE_PURE_PYTHON set")
def test_scan_chunks_c(benchmark: BenchmarkFixture, corpus: bytes) -> None:
    benchmark.group = "scan_chunks 64 MiB"
    _run(benchmark, codec._c_scan_chunks, corpus)


def test_scan_chunks_pure_python(benchmark: BenchmarkFixture, corpus: bytes) -> None:
    benchmark.group = "scan_chunks 64 MiB"
    _run(benchmark, codec._py_scan_chunks, corpus)


@pytest.mark.skipif(not codec.HAVE_C, reason="C extension not built or EBSENGINE_PURE_PYTHON set")
def test_zero_runs_512_c(benchmark: BenchmarkFixture, corpus: bytes) -> None:
    benchmark.group = "zero_runs 64 MiB, 512-byte granules"
    benchmark.pedantic(codec._c_zero_runs, args=(memoryview(corpus), 512), rounds=5, warmup_rounds=1)  # type: ignore[no-untyped-call]


def test_zero_runs_512_pure_python(benchmark: BenchmarkFixture, corpus: bytes) -> None:
    benchmark.group = "zero_runs 64 MiB, 512-byte granules"
    benchmark.pedantic(codec._py_zero_runs, args=(memoryview(corpus), 512), rounds=3, warmup_rounds=0)  # type: ignore[no-untyped-call]
