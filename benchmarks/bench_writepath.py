#!/usr/bin/env python3
"""Write-path figures of issue 7 that bench_engine.py / bench_nbd.py do not measure, each
comparing ebsengine trees in the same run (``--trees /work/main,.``: before and after).

    python benchmarks/bench_writepath.py depth  --trees /work/main,.
    python benchmarks/bench_writepath.py memory --trees /work/main,. --image IMG
    python benchmarks/bench_writepath.py library --trees /work/main,. --reps 5
    python benchmarks/bench_writepath.py flushes --trees /work/main,. --reps 3
    python benchmarks/bench_writepath.py reads --trees /work/main,. --reps 2
    python benchmarks/bench_writepath.py fresh --trees /work/main,. --reps 3 [--rados CONF]

* ``depth``: random 4 KiB reads (cached chunks, so resolution is what is timed) of a volume
  restored 8 levels deep vs 1 level deep; prints us/read and the ratio (goal <= 1.2x).
* ``memory``: ``serve`` (default dirty limit, 256 MiB) receives ``nbdcopy --flush IMG``
  into a 2 GiB volume; prints RssAnon idle, peak during the copy and 8 s after (goal: peak
  <= 2x the dirty limit + 128 MiB; after within 64 MiB of idle), the copy's time and the
  server's CPU. ``--reps N`` runs N rounds over the trees, interleaved, and prints medians.
  ``--randwrite S`` then runs ``fio`` 4 KiB random writes at QD32 for S seconds over the
  copied image and prints the peak during them, RssAnon every 8 s after them for ``--tail``
  seconds (default 8), and fio's IOPS (the issue's principle that memory follows the dirty
  limit, for the write path's page sets).
* ``out``: one ``serve`` per tree holding the image, then ``--reps`` interleaved rounds of
  ``nbdcopy URI null:``; prints the copy's time and the server's CPU, and their medians.
* ``library``: the issue's library random-write figure as an A/B. Each tree imports the
  image once into its own template store (a tree may write a newer format than the other
  reads); each round copies every template, syncs, and times 20,000 random 4 KiB
  ``dev.pwrite`` over the first GiB of the imported volume plus the final ``dev.flush()``
  (the plan of ``bench_engine.py``'s ``test_randwrite_engine``), interleaved (the order
  rotated each round) with the baseline, ``os.pwrite`` of the same plan to a 1 GiB sparse
  raw file + ``fsync``. Prints each round, then medians and their ratio to the baseline's
  (goal >= 0.5x).
* ``flushes``: what a flush of page writes costs as patches accumulate between folds. Over
  8,192 stored chunks, 6 rounds of one new 4 KiB page per chunk (at a new place each round)
  then ``dev.flush()``, with no fold in between; prints us per patch (wall/CPU) of each
  round's flush, per run and as medians over ``--reps`` runs, trees interleaved; then
  20,000 random 4 KiB reads of pages the rounds wrote (a cold read cache: each lies in one
  layer of its patch), as us per read.

* ``reads``: random reads around random writes over NBD. ``serve`` receives ``nbdcopy --flush
  IMG`` into a 2 GiB volume, then ``fio`` 4 KiB random writes at QD32 for 10 s, random reads
  at QD1 and at QD32 for 10 s each right after them (while the last write-back flush and
  the folder run), and both again after 30 s of quiet; prints the IOPS of each, per round,
  trees interleaved (``--reps``).

* ``fresh``: the ``library`` plan on a fresh 1 GiB volume (no import under it), each run on
  a new store: an LMDB directory, or with ``--rados CONF`` a RADOS store on new pools of
  the cluster ``CONF`` names (``rados://ebswpN?conf=CONF``; the pools are deleted after);
  prints the writes + flush and the flush alone, per round and as medians, trees
  interleaved.

Each tree runs in its own child process with ``PYTHONPATH`` set to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench_nbd import cpu_seconds  # (this directory is the script's: sys.path[0])

DEPTH = r'''
import os, random, shutil, sys, time
import ebsengine
d = sys.argv[1]
eng = ebsengine.Engine(d)
CS = 65536
v = eng.create_volume(size_gib=1)
with eng.open_volume(v.id) as dev:
    dev.pwrite(random.Random(1).randbytes(256 * CS), 0)
vols = {0: v.id}
vid = v.id
for depth in range(1, 9):
    s = eng.create_snapshot(vid)
    vid = eng.create_volume(snapshot_id=s.id).id
    with eng.open_volume(vid) as dev:
        dev.pwrite(random.Random(depth).randbytes(CS), (300 + depth) * CS)
    vols[depth] = vid
res = {}
for rep in range(3):
    for depth in (1, 8):
        dev = eng.open_volume(vols[depth]); buf = bytearray(4096)
        rnd = random.Random(5)
        for _ in range(2000): dev.preadinto(buf, rnd.randrange(256 * 16) * 4096)  # warm
        t0 = time.perf_counter()
        for _ in range(20000): dev.preadinto(buf, rnd.randrange(256 * 16) * 4096)
        res.setdefault(depth, []).append((time.perf_counter() - t0) / 20000 * 1e6)
        dev.close()
eng.close()
m = {k: sorted(x)[1] for k, x in res.items()}
print("us/read depth 1 %.1f, depth 8 %.1f: ratio %.2fx" % (m[1], m[8], m[8] / m[1]))
'''


LIB_IMPORT = r'''
import sys
import ebsengine
with ebsengine.Engine(sys.argv[1]) as eng:
    vol = eng.import_image(sys.argv[2])
    eng.create_snapshot(vol.id)
    print(vol.id)
'''

#: ``bench_engine._randwrite_plan(1 GiB, 20,000)``: offsets, then 1,024 random 4 KiB buffers
LIB_PLAN = r'''
import os, random, resource, sys, time
rnd = random.Random(5)
offs = [rnd.randrange((1 << 30) // 4096) * 4096 for _ in range(20000)]
pool = rnd.randbytes(4096 * 1024)
bufs = [memoryview(pool)[i * 4096:(i + 1) * 4096] for i in range(1024)]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
'''

LIB_RUN = LIB_PLAN + r'''
import ebsengine
eng = ebsengine.Engine(sys.argv[1])
dev = eng.open_volume(sys.argv[2])
c0, t0 = cpu(), time.perf_counter()
for i, off in enumerate(offs):
    dev.pwrite(bufs[i & 1023], off)
t1 = time.perf_counter()
dev.flush()
t2 = time.perf_counter()
print(t2 - t0, t2 - t1, cpu() - c0)
dev.close()
eng.close()
'''

LIB_RAW = LIB_PLAN + r'''
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
os.ftruncate(fd, 1 << 30)
c0, t0 = cpu(), time.perf_counter()
for i, off in enumerate(offs):
    os.pwrite(fd, bufs[i & 1023], off)
t1 = time.perf_counter()
os.fsync(fd)
t2 = time.perf_counter()
print(t2 - t0, t2 - t1, cpu() - c0)
os.close(fd)
'''


FRESH_RUN = LIB_PLAN + r'''
import ebsengine
eng = ebsengine.Engine(sys.argv[1])
dev = eng.open_volume(eng.create_volume(size_gib=1).id)
t0 = time.perf_counter()
for i, off in enumerate(offs):
    dev.pwrite(bufs[i & 1023], off)
t1 = time.perf_counter()
dev.flush()
t2 = time.perf_counter()
print(t2 - t0, t2 - t1)
dev.close()
eng.close()
'''


FLUSHES = r'''
import os, sys, time
import ebsengine
from ebsengine.block import folder
folder.QUIET = 3600.0  # no fold between the rounds: what the flushes themselves cost
CS, PS, N, ROUNDS, READS = 65536, 4096, *(int(a) for a in sys.argv[2:5])
with ebsengine.Engine(sys.argv[1]) as e:
    vol = e.create_volume(size_gib=2).id
    with e.open_volume(vol) as dev:
        blob = os.urandom(64 * CS)
        for i in range(0, N, 64):
            dev.pwrite(blob, i * CS)
        dev.flush()
        pages = [os.urandom(PS) for _ in range(256)]
        out = []
        for r in range(ROUNDS):
            for i in range(N):  # one new page per chunk per round, at a new place
                dev.pwrite(pages[(i + r) % 256], i * CS + ((i * 7 + r * 3) % 16) * PS)
            t, c = time.perf_counter(), time.process_time()
            dev.flush()
            out.append(f"{time.perf_counter() - t:.4f},{time.process_time() - c:.4f}")
        import random
        rnd, buf = random.Random(7), bytearray(PS)
        plan = [(i, (i * 7 + rnd.randrange(ROUNDS) * 3) % 16)
                for i in (rnd.randrange(N) for _ in range(READS))]
        t = time.perf_counter()
        for i, p in plan:  # a page some round wrote: it lies in one of the patch's layers
            dev.preadinto(buf, i * CS + p * PS)
        out.append(f"{time.perf_counter() - t:.4f},0")
print(" ".join(out))
'''


FLUSH_READS = 20000  # random reads after the rounds of FLUSHES


def flushes(trees: list[str], tmp: str, reps: int, chunks: int = 8192, rounds: int = 6) -> None:
    """The ``flushes`` figure (see the module's docstring)."""
    got: dict[str, list[list[tuple[float, float]]]] = {}
    for rep in range(reps):
        for tree in trees[rep % len(trees):] + trees[:rep % len(trees)]:  # rotated
            d = os.path.join(tmp, "flushes")
            shutil.rmtree(d, ignore_errors=True)
            out = subprocess.run([sys.executable, "-c", FLUSHES, d, str(chunks), str(rounds),
                                  str(FLUSH_READS)],
                                 env=dict(os.environ, PYTHONPATH=tree), capture_output=True,
                                 text=True, check=True, cwd=tmp).stdout.split()
            runs = [(float(w), float(c)) for w, c in (x.split(",") for x in out)]
            got.setdefault(tree, []).append(runs)
            print(f"{tree}: us per patch (wall/CPU) by round: " + " ".join(
                f"{w * 1e6 / chunks:.0f}/{c * 1e6 / chunks:.0f}" for w, c in runs[:rounds])
                + f"; then us per random read of a written page: "
                f"{runs[rounds][0] * 1e6 / FLUSH_READS:.1f}", flush=True)
    print(f"medians of {reps} runs, us per patch by round ({chunks:,} patches a flush), "
          f"us per read:")
    for tree, runs_ in got.items():
        print(f"  {tree}: " + " ".join(
            f"{statistics.median(r[n][0] for r in runs_) * 1e6 / chunks:.0f}"
            for n in range(rounds)) + f"; reads "
            f"{statistics.median(r[rounds][0] for r in runs_) * 1e6 / FLUSH_READS:.1f}")


def library(trees: list[str], tmp: str, image: str, reps: int) -> None:
    """The ``library`` figure (see the module's docstring)."""
    def child(tree: str | None, code: str, *argv: str) -> str:
        env = dict(os.environ, PYTHONPATH=tree) if tree else dict(os.environ)
        return subprocess.run([sys.executable, "-c", code, *argv], env=env, check=True,
                              capture_output=True, text=True, cwd=tmp).stdout.strip()

    templates = {}
    for n, tree in enumerate(trees):
        tpl = os.path.join(tmp, f"tpl{n}")
        templates[tree] = (tpl, child(tree, LIB_IMPORT, tpl, image).splitlines()[-1])
    got: dict[str, list[tuple[float, float, float]]] = {}
    names = [*trees, "raw"]
    for rep in range(reps):
        # rotated each round, so no tree always runs in the same place: rounds here are
        # bimodal for the same code (README, "Patch digests"), and order must not add to it
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            work = os.path.join(tmp, "work")
            shutil.rmtree(work, ignore_errors=True)
            if name == "raw":
                os.sync()
                out = child(None, LIB_RAW, os.path.join(tmp, "raw.img"))
            else:
                shutil.copytree(templates[name][0], work)
                os.sync()
                out = child(name, LIB_RUN, work, templates[name][1])
            wall, flush, cpu = (float(x) for x in out.split())
            got.setdefault(name, []).append((wall, flush, cpu))
            print(f"{name}: {wall:.3f} s (final flush/fsync {flush:.3f} s), CPU {cpu:.2f} s",
                  flush=True)
        shutil.rmtree(os.path.join(tmp, "work"), ignore_errors=True)
    raw = statistics.median(r[0] for r in got["raw"])
    print(f"medians of {reps} rounds (20,000 writes):")
    for name, runs in got.items():
        wall = statistics.median(r[0] for r in runs)
        print(f"  {name}: {wall:.3f} s = {20000 / wall:,.0f} IOPS, final flush "
              f"{statistics.median(r[1] for r in runs):.3f} s, CPU "
              f"{statistics.median(r[2] for r in runs):.2f} s: {raw / wall:.2f}x the raw file")


def fresh(trees: list[str], tmp: str, reps: int, rados: str | None) -> None:
    """The ``fresh`` figure (see the module's docstring)."""
    got: dict[str, list[tuple[float, float]]] = {}
    for rep in range(reps):
        for n, tree in enumerate(trees[rep % len(trees):] + trees[:rep % len(trees)]):
            d = os.path.join(tmp, "fresh")
            shutil.rmtree(d, ignore_errors=True)
            prefix = f"ebswp{os.getpid()}r{rep}t{n}"
            store = d if rados is None else (
                f"rados://{prefix}?conf={rados}&workdir={os.path.join(tmp, 'fresh-w')}")
            try:
                out = subprocess.run([sys.executable, "-c", FRESH_RUN, store],
                                     env=dict(os.environ, PYTHONPATH=tree), capture_output=True,
                                     text=True, check=True, cwd=tmp).stdout.split()
            finally:
                if rados is not None:
                    for pool in (f"{prefix}.meta", f"{prefix}.data"):
                        subprocess.run(["ceph", "-c", rados, "osd", "pool", "rm", pool, pool,
                                        "--yes-i-really-really-mean-it"],
                                       capture_output=True, check=False)
            wall, flush = float(out[-2]), float(out[-1])
            got.setdefault(tree, []).append((wall, flush))
            print(f"{tree}: {wall:.3f} s (final flush {flush:.3f} s)", flush=True)
    print(f"medians of {reps} rounds (20,000 writes on a fresh volume"
          f"{', RADOS' if rados else ', LMDB'}):")
    for tree, runs in got.items():
        wall = statistics.median(r[0] for r in runs)
        print(f"  {tree}: {wall:.3f} s = {20000 / wall:,.0f} IOPS, final flush "
              f"{statistics.median(r[1] for r in runs):.3f} s")


def depth(tree: str, tmp: str) -> None:
    d = os.path.join(tmp, "depth")
    shutil.rmtree(d, ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", DEPTH, d], env=dict(os.environ, PYTHONPATH=tree),
                         capture_output=True, text=True, check=True, cwd=tmp).stdout.strip()
    print(f"{tree}: {out}")
    shutil.rmtree(d, ignore_errors=True)


def start_server(tree: str, tmp: str, name: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """``serve`` of ``tree``'s code on a fresh store in ``tmp/name`` holding one 2 GiB volume:
    (process, volume id, socket path)."""
    d = os.path.join(tmp, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    env = dict(os.environ, PYTHONPATH=tree)
    store, sock = d + "/store", d + "/sock"
    # cwd: ``python -c`` puts the working directory first on sys.path, before PYTHONPATH
    # (run from a checkout, every "tree" would otherwise run that checkout's code)
    vol, where = subprocess.run(
        [sys.executable, "-c", (f"import ebsengine; e = ebsengine.Engine({store!r}); "
                               f"print(e.create_volume(size_gib=2).id, ebsengine.__file__); "
                               "e.close()")],
        env=env, capture_output=True, text=True, check=True, cwd=tmp).stdout.split()
    if not os.path.abspath(where).startswith(os.path.join(tree, "")):
        raise SystemExit(f"{tree}: the child imported ebsengine from {where}")
    p = subprocess.Popen([sys.executable, "-c", ("import sys; from ebsengine.nbd.server import "
                          f"serve; sys.exit(serve({store!r}, {sock!r}))")],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    while not os.path.exists(sock):
        time.sleep(0.05)
    return p, vol, sock


def copy_out(trees: list[str], tmp: str, image: str, reps: int) -> None:
    """One ``serve`` per tree holding the image (copied in first), then ``reps`` rounds of
    ``nbdcopy URI null:`` over the trees, interleaved; prints each copy's time and the
    server's CPU, and the medians."""
    servers = []
    try:
        for n, tree in enumerate(trees):
            p, vol, sock = start_server(tree, tmp, f"out{n}")
            servers.append((tree, p, f"nbd+unix:///{vol}?socket={sock}"))
            subprocess.run(["nbdcopy", "--flush", image, servers[-1][2]], check=True)
        time.sleep(6)  # the write-back and the heap trim after the copy in
        got: dict[str, list[tuple[float, float]]] = {}
        for _ in range(reps):
            for tree, p, uri in servers:
                t0, c0 = time.time(), cpu_seconds(p.pid)
                subprocess.run(["nbdcopy", uri, "null:"], check=True)
                took, cpu = time.time() - t0, cpu_seconds(p.pid) - c0
                got.setdefault(tree, []).append((took, cpu))
                print(f"{tree}: copy out {took:.2f} s, server CPU {cpu:.2f} s", flush=True)
        print(f"medians of {reps} rounds:")
        for tree, runs in got.items():
            print(f"  {tree}: copy out {statistics.median(r[0] for r in runs):.2f} s, server "
                  f"CPU {statistics.median(r[1] for r in runs):.2f} s")
    finally:
        for _, p, _ in servers:
            p.terminate()
            p.wait()


def memory(tree: str, tmp: str, image: str, randwrite: float = 0.0,
           tail: float = 8.0) -> tuple[float, float, int, int, float]:
    """Copy time, server CPU seconds and peak RssAnon (MiB) of one copy in, and the peak
    during ``randwrite`` seconds of fio random writes after it and their IOPS (0 if none).
    After the random writes RssAnon is sampled every 8 s for ``tail`` seconds (the folder
    starts merging their patches after 5 quiet seconds)."""
    p, vol, sock = start_server(tree, tmp, "mem")

    def anon() -> int:
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon"):
                    return int(line.split()[1]) // 1024
        return 0

    try:
        time.sleep(1)
        idle = anon()
        peak = [idle]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], anon())
                time.sleep(0.05)

        t = threading.Thread(target=watch)
        t.start()
        t0, c0 = time.time(), cpu_seconds(p.pid)
        subprocess.run(["nbdcopy", "--flush", image, f"nbd+unix:///{vol}?socket={sock}"],
                       check=True)
        took, cpu = time.time() - t0, cpu_seconds(p.pid) - c0
        time.sleep(8)
        print(f"{tree}: RssAnon idle {idle} MiB, peak {peak[0]} MiB, 8 s after {anon()} MiB "
              f"(copy {took:.2f} s, server CPU {cpu:.2f} s)", flush=True)
        copy_peak, rw_peak, iops = peak[0], 0, 0.0
        if randwrite > 0:
            before = anon()
            peak[0] = before
            iops = fio_iops(f"nbd+unix:///{vol}?socket={sock}", "randwrite", 32, randwrite,
                            randommap=True)
            after = []
            for _ in range(max(1, round(tail / 8))):
                time.sleep(8)
                after.append(anon())
            rw_peak = peak[0]
            series = ", ".join(f"{8 * (i + 1)} s {a}" for i, a in enumerate(after))
            print(f"{tree}: randwrite QD32 {randwrite:g} s: RssAnon before {before} MiB, peak "
                  f"{rw_peak} MiB, after: {series} MiB ({iops:,.0f} IOPS)", flush=True)
        stop.set()
        t.join()
        return took, cpu, copy_peak, rw_peak, iops
    finally:
        p.terminate()
        p.wait()


def fio_iops(uri: str, rw: str, qd: int, runtime: float, randommap: bool = False) -> float:
    """IOPS of ``fio`` 4 KiB ``rw`` at depth ``qd`` over the first GiB of ``uri`` (with
    ``randommap``, fio's default: no offset twice until every block was done once)."""
    out = subprocess.run(
        ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", "--bs=4k",
         "--size=1G", f"--iodepth={qd}", f"--runtime={runtime}", "--time_based",
         *([] if randommap else ["--norandommap"]), "--output-format=json"],
        check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]  # the nbd engine may print a line first
    return float(job["read" if "read" in rw else "write"]["iops"])


def reads(trees: list[str], tmp: str, image: str, reps: int) -> None:
    """The ``reads`` figure (see the module's docstring)."""
    steps = ["randwrite QD32", "randread QD1", "randread QD32", "30 s later: randread QD1",
             "randread QD32"]
    for rep in range(reps):
        for tree in trees[rep % len(trees):] + trees[:rep % len(trees)]:  # rotated
            p, vol, sock = start_server(tree, tmp, "reads")
            uri = f"nbd+unix:///{vol}?socket={sock}"
            try:
                subprocess.run(["nbdcopy", "--flush", image, uri], check=True)
                time.sleep(6)  # the write-back and the heap trim after the copy in
                got = [fio_iops(uri, "randwrite", 32, 10), fio_iops(uri, "randread", 1, 10),
                       fio_iops(uri, "randread", 32, 10)]
                time.sleep(30)
                got += [fio_iops(uri, "randread", 1, 10), fio_iops(uri, "randread", 32, 10)]
            finally:
                p.terminate()
                p.wait()
            print(f"{tree}: " + ", ".join(f"{s} {g:,.0f}" for s, g in zip(steps, got,
                                                                          strict=True))
                  + " IOPS", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["depth", "memory", "out", "library", "flushes", "reads",
                                     "fresh"])
    ap.add_argument("--trees", default=".", help="comma list of ebsengine checkouts")
    ap.add_argument("--image", default="/var/tmp/ebsengine-bench/base.img")
    ap.add_argument("--reps", type=int, default=1, help="rounds over the trees (interleaved)")
    ap.add_argument("--randwrite", type=float, default=0.0, metavar="S",
                    help="memory: then S seconds of fio 4 KiB random writes at QD32")
    ap.add_argument("--tail", type=float, default=8.0, metavar="S",
                    help="memory: seconds RssAnon is sampled (every 8 s) after the random writes")
    ap.add_argument("--rados", default=None, metavar="CONF",
                    help="fresh: on RADOS stores of the cluster this ceph.conf names")
    args = ap.parse_args()
    runs: dict[str, list[tuple[float, float, int, int, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ebs-wp-", dir="/var/tmp") as tmp:
        if args.what == "fresh":
            fresh([os.path.abspath(t) for t in args.trees.split(",")], tmp, args.reps,
                  args.rados)
            return 0
        if args.what == "flushes":
            flushes([os.path.abspath(t) for t in args.trees.split(",")], tmp, args.reps)
            return 0
        if args.what in ("out", "library", "reads"):
            run = {"out": copy_out, "library": library, "reads": reads}[args.what]
            run([os.path.abspath(t) for t in args.trees.split(",")], tmp, args.image, args.reps)
            return 0
        trees = [os.path.abspath(t) for t in args.trees.split(",")]
        for rep in range(args.reps):
            for tree in trees[rep % len(trees):] + trees[:rep % len(trees)]:  # rotated
                if args.what == "depth":
                    depth(tree, tmp)
                else:
                    runs.setdefault(tree, []).append(memory(tree, tmp, args.image, args.randwrite,
                                                                    args.tail))
    if args.reps > 1 and runs:
        print(f"medians of {args.reps} rounds:")
        for tree, got in runs.items():
            print(f"  {tree}: copy {statistics.median(r[0] for r in got):.2f} s, server CPU "
                  f"{statistics.median(r[1] for r in got):.2f} s, peak RssAnon "
                  f"{statistics.median(r[2] for r in got):.0f} MiB (max {max(r[2] for r in got)})"
                  + (f", randwrite peak {statistics.median(r[3] for r in got):.0f} MiB (max "
                     f"{max(r[3] for r in got)}), "
                     f"{statistics.median(r[4] for r in got):,.0f} IOPS"
                     if args.randwrite > 0 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
