"""Cost of the engine's unit of work (issue 7), against the same changes as separate units.

    PYTHONPATH=. python3 benchmarks/bench_units.py [--n 200]

Measures, in one run on one store: a volume plus one service record as two units (two synced
commits) and as one unit; four snapshots of four dirty volumes one by one (each its own
flush+freeze commit) and as one unit (four flushes, then one freeze commit). Prints medians
per operation and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import ebsengine


def _median(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    n = ap.parse_args().n
    with tempfile.TemporaryDirectory() as d, ebsengine.Engine(d) as eng:
        def separate(i: int) -> None:
            v = eng.create_volume(size_gib=1)
            eng.service_put("bench", v.id, {"i": i})

        def unit(i: int) -> None:
            with eng.transaction() as tx:
                v = eng.create_volume(size_gib=1, tx=tx)
                eng.service_put("bench", v.id, {"i": i}, tx=tx)

        a, b = _median(separate, n), _median(unit, n)
        print(f"volume + record: two units {a * 1e3:.2f} ms, one unit {b * 1e3:.2f} ms, ratio {b / a:.2f}")

        vols = [eng.create_volume(size_gib=1).id for _ in range(4)]
        devs = [eng.open_volume(v) for v in vols]

        def dirty(i: int) -> None:
            for dev in devs:
                dev.pwrite(i.to_bytes(8, "big") * 512, (i % 64) * 65536)

        def one_by_one(i: int) -> None:
            dirty(i)
            for v in vols:
                eng.create_snapshot(v)

        def together(i: int) -> None:
            dirty(i)
            with eng.transaction(flush=vols) as tx:
                for v in vols:
                    eng.create_snapshot(v, tx=tx)

        m = max(20, n // 4)
        c, e = _median(one_by_one, m), _median(together, m)
        print(f"4 snapshots of dirty volumes: one by one {c * 1e3:.2f} ms, one unit {e * 1e3:.2f} ms, "
              f"ratio {e / c:.2f}")
        for dev in devs:
            dev.close()


if __name__ == "__main__":
    main()
