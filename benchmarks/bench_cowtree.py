"""Benchmark: the copy-on-write B+tree (storage/cowtree.py) against the memory backend's
committed table (storage/memory.py ``_Version``: a dict plus a sorted key list), in one run.

Run:  python benchmarks/bench_cowtree.py [--entries 500000] [--rounds 3] [--node-size 32768]

Table (not measured): ``--entries`` block-map-shaped entries, keys ``lineage u64 | idx u32 |
~gen u32`` (16 bytes, 64 lineages), values 20-byte chunk keys; loaded into a tree through
``apply`` in batches of 50 000, nodes kept in a dict (the RADOS pool's stand-in: a read is a
dict lookup plus the decode). Then, medians over ``--rounds`` of:

* get, hot: random present keys, every node in the cache. Baseline ``_Version.data.get``.
* get, cold: the same with a cache too small to hold the leaves (about 1 leaf read and
  decoded per get). Baseline: the same dict get (the memory backend never misses).
* seek forward / backward (``set_range`` and its mirror): random probes, half present.
  Baseline: the bisect over ``_Version.keys`` that memory.py's cursor does.
* scan: 20 000 entries in order from a random start through ``items``. Baseline: the key
  list slice and one dict get per entry.
* apply: commits of 1, 64 and 4096 random puts (sorted), timing ``Tree.apply`` against
  ``memory._apply`` (which copies the table: O(table) per commit) on the same table.

Figures: operations per second for both and the ratio cowtree / memory (above 1 = faster).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import struct
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence

from ebsengine.storage import cowtree, memory


class DictSource:
    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}

    def load_many(self, ids: Sequence[bytes]) -> list[bytes]:
        d = self.d
        return [d[i] for i in ids]


def key(lineage: int, idx: int, gen: int) -> bytes:
    return struct.pack(">QII", lineage, idx, 0xFFFFFFFF - gen)


def rate(fn: Callable[[], int], rounds: int) -> float:
    """Operations per second: the median over ``rounds`` of fn()'s count / its CPU time
    (process time: the figures stay comparable on a machine shared with other work)."""
    out = []
    for _ in range(rounds):
        t = time.process_time()
        n = fn()
        out.append(n / max(time.process_time() - t, 1e-9))
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--node-size", type=int, default=cowtree.NODE_SIZE)
    ap.add_argument("--ops", type=int, default=200_000)
    a = ap.parse_args()
    rnd = random.Random(20261202)

    entries = {key(rnd.randrange(64), rnd.randrange(1 << 20), rnd.randrange(8)): rnd.randbytes(20)
               for _ in range(a.entries)}
    items = sorted(entries.items())
    src = DictSource()
    ids = (struct.pack(">Q", i) for i in itertools.count(1))
    t0 = time.perf_counter()
    tree = cowtree.Tree(src, cowtree.NodeCache(1 << 30), node_size=a.node_size)
    for i in range(0, len(items), 50_000):
        tree, nodes, _ = tree.apply(items[i:i + 50_000], ids.__next__)
        src.d.update(nodes)
    load = time.perf_counter() - t0
    ver = memory._Version(dict(items), [k for k, _ in items], tree.nbytes)
    print(f"table: {tree.count} entries, depth {tree.depth}, {len(src.d)} nodes, "
          f"{sum(map(len, src.d.values())) / len(src.d):.0f} B/node avg; loaded in {load:.1f}s "
          f"({tree.count / load:,.0f} entries/s through apply)")

    keys = [k for k, _ in items]
    present = [rnd.choice(keys) for _ in range(a.ops)]
    probes = [k if rnd.random() < 0.5 else key(rnd.randrange(64), rnd.randrange(1 << 20), 3)
              for k in present]
    rows: list[tuple[str, float, float]] = []

    def gets(t: cowtree.Tree, ks: list[bytes]) -> Callable[[], int]:
        def run() -> int:
            get = t.get
            for k in ks:
                get(k)
            return len(ks)
        return run

    def dict_gets(ks: list[bytes]) -> Callable[[], int]:
        def run() -> int:
            get = ver.data.get
            for k in ks:
                get(k)
            return len(ks)
        return run

    hot = cowtree.Tree.from_meta(src, cowtree.NodeCache(1 << 30), tree.to_meta(),
                                 node_size=a.node_size)
    for k in keys[::50]:
        hot.get(k)  # warm every leaf
    assert all(hot.get(k) == entries[k] for k in present[:1000])
    rows.append(("get (hot)", rate(gets(hot, present), a.rounds),
                 rate(dict_gets(present), a.rounds)))

    cold_cache = cowtree.NodeCache(4 << 20)  # the internal nodes fit, the leaves do not
    cold = cowtree.Tree.from_meta(src, cold_cache, tree.to_meta(), node_size=a.node_size)
    few = present[: a.ops // 20]
    rows.append(("get (cold leaves)", rate(gets(cold, few), a.rounds),
                 rate(dict_gets(few), a.rounds)))

    def seeks(forward: bool) -> Callable[[], int]:
        def run() -> int:
            seek = hot.seek
            for k in probes:
                seek(k, forward=forward, strict=False)
            return len(probes)
        return run

    def bisects(forward: bool) -> Callable[[], int]:
        def run() -> int:
            ks = ver.keys
            n = len(ks)
            for k in probes:
                if forward:
                    i = bisect_left(ks, k)
                    _ = ks[i] if i < n else None
                else:
                    i = bisect_right(ks, k) - 1
                    _ = ks[i] if i >= 0 else None
            return len(probes)
        return run

    for p in probes[:2000]:
        i = bisect_left(keys, p)
        assert hot.seek(p, forward=True, strict=False) == (keys[i] if i < len(keys) else None)
    rows.append(("seek forward", rate(seeks(True), a.rounds), rate(bisects(True), a.rounds)))
    rows.append(("seek backward", rate(seeks(False), a.rounds), rate(bisects(False), a.rounds)))

    starts = [rnd.choice(keys) for _ in range(10)]
    scan_n = 20_000

    def scan_tree() -> int:
        n = 0
        for s in starts:
            for _ in zip(range(scan_n), hot.items(s), strict=False):
                n += 1
        return n

    def scan_mem() -> int:
        n = 0
        data = ver.data
        for s in starts:
            i = bisect_left(ver.keys, s)
            for k in ver.keys[i:i + scan_n]:
                _ = (k, data[k])
                n += 1
        return n

    rows.append(("scan (entries)", rate(scan_tree, a.rounds), rate(scan_mem, a.rounds)))

    for batch in (1, 64, 4096):
        commits = max(3, min(200, 20_000 // batch))
        plans = [sorted({rnd.choice(keys): rnd.randbytes(20) for _ in range(batch)}.items())
                 for _ in range(commits)]
        written = [0]

        def tree_apply(plans: list[list[tuple[bytes, bytes]]] = plans,
                       written: list[int] = written) -> int:
            for plan in plans:
                _, nodes, _ = hot.apply(plan, ids.__next__)
                written[0] += len(nodes)
            return len(plans)

        def mem_apply(plans: list[list[tuple[bytes, bytes]]] = plans) -> int:
            for plan in plans:
                ov = memory._Overlay()
                for k, v in plan:
                    ov.set(k, v)
                memory._apply(ver, ov)
            return len(plans)

        rows.append((f"apply {batch} puts (commits)", rate(tree_apply, a.rounds),
                     rate(mem_apply, 1 if batch == 1 and a.entries > 10**6 else a.rounds)))
        print(f"  apply {batch}: {written[0] / (commits * a.rounds):.1f} nodes written per commit")

    print(f"\n{'operation':<28}{'cowtree/s':>14}{'memory/s':>14}{'ratio':>9}")
    for name, t, m in rows:
        print(f"{name:<28}{t:>14,.0f}{m:>14,.0f}{t / m:>9.2f}")


if __name__ == "__main__":
    main()
