"""What a store copy (``ebsengine copy-store``, ``engine/storecopy.py``) moves per second, in
MiB of stored data (keys and values as stored: compressed, sealed), in one run:

1. ``lmdb -> lmdb``: the baseline (the same code, both ends local);
2. ``lmdb -> rados``: onto the cluster (objects for chunks, copy-on-write B-trees for rows);
3. ``rados -> lmdb``: back.

Each copy includes the destination's fsck (reported separately: ``copy s`` is the copy alone).
The source: one volume with ``--size-mib`` of data (half random, half compressible), a
snapshot, 4 KiB writes after it, and an encrypted volume of a tenth of that.

Usage: ``PYTHONPATH=. python benchmarks/bench_store_copy.py [--size-mib 256] [--reps 2]``.
The cluster is ``$CEPH_CONF`` when set, else a private one started with
``scripts/ceph_cluster.sh`` (memstore) and stopped after.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "ceph_cluster.sh"
CS = 64 * 1024


def make_source(path: str, size_mib: int) -> None:
    import ebsengine
    rng = random.Random(1)
    text = b"".join(f"line {i} of a log file, somewhat compressible\n".encode()
                    for i in range(2000))
    with ebsengine.Engine(path, map_size=1 << 36) as eng:
        v = eng.create_volume(max(1, size_mib // 1024 + 1))
        step = 8 * 1024 * 1024
        with eng.open_volume(v.id) as dev:
            for off in range(0, size_mib << 20, step):
                if (off // step) % 2:
                    dev.pwrite((text * (step // len(text) + 1))[:step - 64]
                               + rng.randbytes(64), off)
                else:
                    dev.pwrite(rng.randbytes(step), off)
            dev.flush()
        eng.create_snapshot(v.id)
        with eng.open_volume(v.id) as dev:
            for _ in range(256):
                dev.pwrite(rng.randbytes(4096), rng.randrange(size_mib * 16) * CS)
            dev.flush()
        e = eng.create_volume(1, encrypted=True)
        with eng.open_volume(e.id) as dev:
            dev.pwrite(rng.randbytes(max(CS, (size_mib << 20) // 10)), 0)
            dev.flush()


def cluster(tmp: str) -> tuple[str, str | None]:
    conf = os.environ.get("CEPH_CONF")
    if conf:
        return conf, None
    d = os.path.join("/tmp", f"cb-{uuid.uuid4().hex[:6]}")
    env = dict(os.environ, CEPH_DIR=d, CEPH_MON_PORT=str(random.randrange(30000, 50000)),
               CEPH_OSD_MB="3072")
    subprocess.run([str(SCRIPT), "start"], env=env, check=True, capture_output=True,
                   timeout=300)
    return os.path.join(d, "ceph.conf"), d


def stop(d: str | None) -> None:
    if d is not None:
        subprocess.run([str(SCRIPT), "stop"], env=dict(os.environ, CEPH_DIR=d,
                       CEPH_STOP_SIGNAL="KILL"), capture_output=True, timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    from ebsengine.engine import copy_store

    tmp = tempfile.mkdtemp(prefix="bench-copy-", dir="/var/tmp")
    os.environ.setdefault("EBSENGINE_MASTER_KEY", os.path.join(tmp, "master.key"))
    conf, own = cluster(tmp)
    src = os.path.join(tmp, "src")
    t = time.monotonic()
    make_source(src, a.size_mib)
    print(f"source: {a.size_mib} MiB written in {time.monotonic() - t:.1f} s")
    results: dict[str, list[tuple[float, float, float]]] = {}
    stored = 0
    try:
        for rep in range(a.reps):
            prefix = f"bc{os.getpid()}r{rep}"
            rados = f"rados://{prefix}?conf={conf}&workdir={tmp}/wd{rep}"
            legs = [("lmdb -> lmdb", src, os.path.join(tmp, f"l{rep}")),
                    ("lmdb -> rados", src, rados),
                    ("rados -> lmdb", rados, os.path.join(tmp, f"b{rep}"))]
            for name, s, d in legs:
                t = time.monotonic()
                r = copy_store(s, d, map_size=1 << 36)
                total = time.monotonic() - t
                assert r.ok, r.fsck.problems
                stored = r.stats.stored_bytes
                results.setdefault(name, []).append(
                    (r.stats.stored_bytes / 2**20 / r.stats.seconds, r.stats.seconds, total))
            for d in (os.path.join(tmp, f"l{rep}"), os.path.join(tmp, f"b{rep}")):
                shutil.rmtree(d, ignore_errors=True)
            subprocess.run(["ceph", "-c", conf, "osd", "pool", "rm", f"{prefix}.meta",
                            f"{prefix}.meta", "--yes-i-really-really-mean-it"],
                           capture_output=True, timeout=60)
            subprocess.run(["ceph", "-c", conf, "osd", "pool", "rm", f"{prefix}.data",
                            f"{prefix}.data", "--yes-i-really-really-mean-it"],
                           capture_output=True, timeout=60)
        print(f"stored data copied per leg: {stored / 2**20:.1f} MiB "
              f"(median of {a.reps} runs below)")
        base = statistics.median(x[0] for x in results["lmdb -> lmdb"])
        print(f"{'leg':15} {'MiB/s':>8} {'copy s':>8} {'+fsck s':>8} {'vs lmdb':>8}")
        for name, xs in results.items():
            rate = statistics.median(x[0] for x in xs)
            print(f"{name:15} {rate:8.1f} {statistics.median(x[1] for x in xs):8.2f} "
                  f"{statistics.median(x[2] for x in xs):8.2f} {rate / base:8.2f}")
    finally:
        stop(own)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
