"""Import + first snapshot of the 2 GiB benchmark image on stores of several zstd levels,
against ``restic backup`` of the same image, interleaved in one run.

The question it answers: would a fast compression level at ingest (with a background
recompression to the store's level afterwards) bring the import closer to its goal? For each
round, restic first, then one fresh LMDB store per level (``Engine(path, zstd_level=L)``);
each figure is the median over the rounds, reported as seconds, this process's CPU seconds,
the ratio to restic's time in the same rounds, and the stored chunk payload (fsck) against
the level-3 store's.

Usage: ``PYTHONPATH=. python benchmarks/bench_ingest_levels.py [--levels 3,1,-1,-3] [--reps 3]``
(the image and the work directory: ``$EBSENGINE_BENCH_CACHE``, as for bench_engine.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_engine as be

import ebsengine


def import_at(store: Path, image: Path, level: int) -> tuple[float, float, int]:
    """Seconds and CPU seconds of import + first snapshot into a fresh store; stored bytes."""
    shutil.rmtree(store, ignore_errors=True)
    os.sync()
    c0, t0 = time.process_time(), time.perf_counter()
    with ebsengine.Engine(store, zstd_level=level) as eng:
        vol = eng.import_image(image)
        eng.create_snapshot(vol.id)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with ebsengine.Engine(store, readonly=True) as eng:
        report = eng.fsck()
    assert report.ok, report.problems
    return wall, cpu, int(report.stats["stored_bytes"])


def restic_backup(work: Path, image: Path) -> float:
    repo, cache, src = work / "restic" / "repo", work / "restic" / "cache", work / "src"
    shutil.rmtree(work / "restic", ignore_errors=True)
    be.link_source(src, image)
    be.restic("init", repo=repo, cache=cache)
    os.sync()
    t0 = time.perf_counter()
    be.restic("backup", "disk.img", cwd=src, repo=repo, cache=cache)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="3,1,-1,-3", help="zstd levels, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    base, _ = be.ensure_images()
    work = be.CACHE / "levels"
    work.mkdir(parents=True, exist_ok=True)
    restic_s: list[float] = []
    runs: dict[int, list[tuple[float, float, int]]] = {lv: [] for lv in levels}
    for rep in range(args.reps):
        restic_s.append(restic_backup(work, base))
        print(f"round {rep + 1}: restic {restic_s[-1]:.2f} s", flush=True)
        for lv in levels:
            runs[lv].append(import_at(work / f"store{lv}", base, lv))
            wall, cpu, stored = runs[lv][-1]
            print(f"  level {lv:>3}: {wall:.2f} s, cpu {cpu:.2f} s, stored {stored >> 20} MiB",
                  flush=True)
    shutil.rmtree(work, ignore_errors=True)
    r = statistics.median(restic_s)
    ref = float(statistics.median(s for _, _, s in runs[levels[0]]))
    print(f"\nmedians of {args.reps} rounds; restic backup {r:.2f} s "
          f"(load {os.getloadavg()[0]:.1f})")
    print("| level | import + snapshot | CPU | vs restic | stored vs level "
          f"{levels[0]} |\n|---|---|---|---|---|")
    for lv in levels:
        wall = statistics.median(w for w, _, _ in runs[lv])
        cpu = statistics.median(c for _, c, _ in runs[lv])
        size = float(statistics.median(s for _, _, s in runs[lv]))
        print(f"| {lv} | {wall:.2f} s | {cpu:.2f} s | {wall / r:.2f}x | {size / ref:.3f} |")


if __name__ == "__main__":
    main()
