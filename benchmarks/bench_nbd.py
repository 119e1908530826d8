#!/usr/bin/env python3
"""NBD benchmarks: our server vs ``nbdkit memory``, interleaved in the same run.

Corpus: the realistic 2 GiB image of ``../shared/bench/gen_image.py`` (holes, written
zeroes, text-like, random; default seed), generated once and cached.
Baseline: ``nbdkit -U SOCK memory 2G`` (the C reference server), run in the same loop.

Per repetition and per server (fresh store / fresh nbdkit each time):

1. ``nbdcopy --flush IMAGE URI``                          (copy in)
2. ``nbdcopy URI null:``                                  (copy out)
3. ``fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth={1,32}``  (after the copy in)
4. ``fio --ioengine=nbd --rw=randread  --bs=4k --iodepth={1,32}``
5. mount pipeline: ``nbdfuse`` -> ``mkfs.ext4`` -> ``mount -o loop`` -> time
   ``cp FILE MNT/ && sync -f MNT`` (FILE: the image's first 512 MiB) -> umount.

For every step it records wall time (or IOPS) and the server process's CPU seconds, and
prints medians, ratios ours/nbdkit and the performance goals (README, "Benchmarks"). Needs nbdcopy, nbdkit, fio
(nbd engine); step 5 needs root + nbdfuse (skipped otherwise).

    python benchmarks/bench_nbd.py --reps 3 --fio-runtime 10 --json results.json
    python benchmarks/bench_nbd.py --variants ours,ours-nobg,nbdkit   # A/B background flush
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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GEN_IMAGE = ROOT.parent / "shared" / "bench" / "gen_image.py"
if not GEN_IMAGE.exists():
    GEN_IMAGE = Path("/work/shared/bench/gen_image.py")
MiB = 1 << 20
GiB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")

# The performance goals: ours/nbdkit must be >= these. The storage-core issue's (README,
# "Benchmarks"), which are DESIGN.md's or stricter (nbdcopy out: 0.5x there, 0.3x in DESIGN.md).
GOALS = {
    "nbdcopy_in_GiBps": 0.5,
    "nbdcopy_out_GiBps": 0.5,
    "randwrite_qd1_iops": 0.5,
    "randwrite_qd32_iops": 0.3,
    "randread_qd1_iops": 0.6,
    "randread_qd32_iops": 0.4,
}


def sh(cmd: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["timeout", "-k", "5", str(timeout), *cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class Server:
    """One server under test: ours (a ``serve()`` process) or nbdkit memory."""

    def __init__(self, kind: str, tmp: Path, size: int) -> None:
        self.kind = kind
        self.tmp = tmp
        self.sock = tmp / "nbd.sock"
        self.size = size
        self.proc: subprocess.Popen[bytes] | None = None
        self.uri = ""

    def start(self) -> None:
        if self.kind == "nbdkit":
            cmd = ["nbdkit", "-f", "-U", str(self.sock), "memory", str(self.size)]
            self.uri = f"nbd+unix:///?socket={self.sock}"
        else:
            store = self.tmp / "store"
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            code = (
                f"import ebsengine; e = ebsengine.Engine({str(store)!r}); "
                f"print(e.create_volume(size_gib={self.size // GiB}).id); e.close()"
            )
            vol = sh([sys.executable, "-c", code], env=env).stdout.strip()
            bg = self.kind != "ours-nobg"
            swi = "sys.setswitchinterval(0.0005); " if self.kind == "ours-swi" else ""
            code = (
                "import sys; from ebsengine.nbd.server import serve; " + swi +
                f"sys.exit(serve({str(store)!r}, {str(self.sock)!r}, background_flush={bg}))"
            )
            cmd = [sys.executable, "-c", code]
            self.uri = f"nbd+unix:///{vol}?socket={self.sock}"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            if subprocess.run(["nbdinfo", "--size", self.uri], capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not come up")

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def timed(server: Server, cmd: list[str], **kw: Any) -> tuple[float, float]:
    c0, t0 = server.cpu(), time.perf_counter()
    sh(cmd, **kw)
    return time.perf_counter() - t0, server.cpu() - c0


def fio(server: Server, rw: str, qd: int, runtime: float, tmp: Path) -> tuple[float, float]:
    out = tmp / "fio.json"
    c0 = server.cpu()
    sh(["fio", "--name=bench", "--ioengine=nbd", f"--uri={server.uri}", f"--rw={rw}", "--bs=4k",
        "--size=1G", f"--iodepth={qd}", f"--runtime={runtime}", "--time_based", "--norandommap",
        "--randrepeat=0", "--output-format=json", f"--output={out}"], cwd=tmp, timeout=runtime + 120)
    cpu = server.cpu() - c0
    job = json.loads(out.read_text())["jobs"][0]
    return job["read"]["iops"] + job["write"]["iops"], cpu


def mount_copy(server: Server, src: Path, tmp: Path) -> tuple[float, float] | None:
    """Seconds (and server CPU) for ``cp src MNT/ && sync -f MNT`` on ext4 via nbdfuse."""
    if os.geteuid() != 0 or not shutil.which("nbdfuse") or not os.path.exists("/dev/fuse"):
        return None
    fuse, mnt = tmp / "fuse", tmp / "mnt"
    fuse.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    img = fuse / "disk.img"
    pidfile = tmp / "nbdfuse.pid"
    pidfile.unlink(missing_ok=True)
    nf = subprocess.Popen(["nbdfuse", "-P", str(pidfile), str(img), server.uri],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mounted = False
    try:
        for _ in range(300):
            if pidfile.exists() and pidfile.stat().st_size:
                break
            time.sleep(0.05)
        sh(["mkfs.ext4", "-q", "-F", str(img)])
        sh(["mount", "-o", "loop", str(img), str(mnt)])
        mounted = True
        c0, t0 = server.cpu(), time.perf_counter()
        sh(["cp", str(src), str(mnt / "copy.bin")])
        sh(["sync", "-f", str(mnt)])
        return time.perf_counter() - t0, server.cpu() - c0
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        for _ in range(5):
            if subprocess.run(["fusermount3", "-u", str(fuse)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        try:
            nf.wait(30)
        except subprocess.TimeoutExpired:
            nf.kill()
            nf.wait()


def ensure_image(path: Path | None, cache: Path) -> Path:
    if path is not None:
        return path
    img = cache / "gen_image_2g.raw"
    if not img.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"generating {img} with {GEN_IMAGE} ...", flush=True)
        sh([sys.executable, str(GEN_IMAGE), str(img) + ".tmp", "--size-mib", "2048"], timeout=900)
        os.rename(str(img) + ".tmp", img)
    return img


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--fio-runtime", type=float, default=10.0)
    ap.add_argument("--image", type=Path, default=None, help="raw image to copy (default: gen_image 2 GiB)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ebsengine-bench")
    ap.add_argument("--variants", default="nbdkit,ours", help="comma list of nbdkit, ours, ours-nobg (no background flush), "
                    "ours-swi (GIL switch interval 0.5 ms)")
    ap.add_argument("--skip", default="", help="comma list of steps to skip: in,out,fio,mount")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    for tool in ("nbdcopy", "nbdkit", "fio", "nbdinfo"):
        if not shutil.which(tool):
            print(f"missing {tool}: apt-get install libnbd-bin nbdkit fio", file=sys.stderr)
            return 2
    image = ensure_image(args.image, args.cache)
    size = os.path.getsize(image)
    vol_size = -(-size // GiB) * GiB
    skip = set(filter(None, args.skip.split(",")))
    variants = args.variants.split(",")
    part = args.cache / "mount_src_512m.bin"
    if "mount" not in skip and not part.exists():
        with open(image, "rb") as f, open(part, "wb") as g:
            g.write(f.read(512 * MiB))
    results: dict[str, dict[str, list[float]]] = {v: {} for v in variants}

    def rec(variant: str, key: str, value: float) -> None:
        results[variant].setdefault(key, []).append(value)

    for rep in range(args.reps):
        for variant in variants:
            with tempfile.TemporaryDirectory(prefix="nbd-bench-") as tmp_s:
                tmp = Path(tmp_s)
                srv = Server(variant, tmp, vol_size)
                srv.start()
                try:
                    if "in" not in skip:
                        wall, cpu = timed(srv, ["nbdcopy", "--flush", str(image), srv.uri])
                        rec(variant, "nbdcopy_in_s", wall)
                        rec(variant, "nbdcopy_in_GiBps", size / GiB / wall)
                        rec(variant, "nbdcopy_in_cpu_s", cpu)
                    if "out" not in skip:
                        wall, cpu = timed(srv, ["nbdcopy", srv.uri, "null:"])
                        rec(variant, "nbdcopy_out_s", wall)
                        rec(variant, "nbdcopy_out_GiBps", size / GiB / wall)
                        rec(variant, "nbdcopy_out_cpu_s", cpu)
                    if "fio" not in skip:
                        for rw in ("randwrite", "randread"):
                            for qd in (1, 32):
                                iops, cpu = fio(srv, rw, qd, args.fio_runtime, tmp)
                                rec(variant, f"{rw}_qd{qd}_iops", iops)
                                rec(variant, f"{rw}_qd{qd}_cpu_us_per_io", cpu / (iops * args.fio_runtime) * 1e6)
                    if "mount" not in skip:
                        r = mount_copy(srv, part, tmp)
                        if r is not None:
                            rec(variant, "mount_cp512M_sync_s", r[0])
                            rec(variant, "mount_cp512M_MiBps", 512 / r[0])
                            rec(variant, "mount_cp512M_cpu_s", r[1])
                finally:
                    srv.stop()
            med = {k: round(statistics.median(v), 3) for k, v in results[variant].items()}
            print(f"medians after rep {rep + 1}/{args.reps}, {variant}: {json.dumps(med)}", flush=True)

    summary: dict[str, Any] = {"image": str(image), "image_bytes": size, "reps": args.reps,
                               "fio_runtime_s": args.fio_runtime, "median": {}, "ratio_vs_nbdkit": {}}
    for v in variants:
        summary["median"][v] = {k: statistics.median(x) for k, x in results[v].items()}
    print("\nmedians:")
    keys = sorted({k for v in variants for k in results[v]})
    print(f"{'metric':34s}" + "".join(f"{v:>14s}" for v in variants))
    for k in keys:
        print(f"{k:34s}" + "".join(
            f"{summary['median'][v].get(k, float('nan')):14.3f}" for v in variants))
    if "nbdkit" in variants:
        print("\nratios vs nbdkit memory (higher is better for rates; goal from the README):")
        for v in variants:
            if v == "nbdkit":
                continue
            summary["ratio_vs_nbdkit"][v] = {}
            for k in keys:
                if not k.endswith(("iops", "GiBps", "MiBps")):
                    continue
                base = summary["median"]["nbdkit"].get(k)
                mine = summary["median"][v].get(k)
                if not base or mine is None:
                    continue
                ratio = mine / base
                summary["ratio_vs_nbdkit"][v][k] = ratio
                goal = GOALS.get(k)
                verdict = "" if goal is None else (f"  goal >= {goal}: " + ("met" if ratio >= goal else "MISSED"))
                print(f"  {v:10s} {k:28s} {ratio:6.2f}x{verdict}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
