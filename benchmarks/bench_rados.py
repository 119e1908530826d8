#!/usr/bin/env python3
"""ebsengine on Ceph RADOS against ebsengine on LMDB and Ceph's own RBD, on one cluster this
benchmark starts itself, in the same run, rounds interleaved (the order of the three rotates).

Cluster: ``scripts/ceph_cluster.sh`` with one OSD (pools of size 1), BlueStore on a sparse
file by default (``--store memstore`` for RAM); no manager (Debian ships none in ceph-osd),
so stored bytes are read from the OSD's own counters, not ``ceph df``.

Per round and per backend (``rados``: ``Engine('rados://PREFIX?conf=...')`` on fresh pools;
``lmdb``: a fresh local store; ``rbd``: a fresh RBD pool):

1. import + first snapshot of the image. ebsengine: a fresh process doing ``Engine(store)``,
   ``import_image``, ``create_snapshot``, ``close``. RBD: ``rbd import`` then a fresh process
   creating the snapshot through librbd (``python3-rbd``), which also times ``create_snap``
   alone (``rbd snap create``'s own process wall is recorded too).
2. incremental snapshot after the 1% change: the regions of ``gen_image.py --mutate``
   (328 x 64 KiB of fresh random data for 2 GiB; the same rng calls, made in memory and
   kept in one file) written with the library's own call in a fresh process --
   ebsengine ``Device.pwrite``, RBD ``rbd.Image.write`` (librbd, its cache on, as rbd-nbd and
   qemu would use it) -- then the snapshot; writes + snapshot and the snapshot alone timed.
3. ``nbdcopy --flush IMAGE URI`` into a fresh volume / image over NBD: ebsengine's
   ``serve`` (``ebsengine.nbd.server.serve`` on the store URL); RBD: ``qemu-nbd`` on
   ``rbd:POOL/IMAGE:conf=...`` (qemu-block-extra's rbd driver: rbd-nbd needs the kernel's
   /dev/nbd*, which this machine does not have).
4. ``fio --ioengine=nbd`` 4 KiB random writes, QD1 and QD32, on that volume (same server).
5. ``nbdcopy URI null:`` from a fresh server process (no warm cache).
6. stored bytes: the OSD's BlueStore ``bluestore_allocated`` growth over the import
   (object data) plus the omap keys and values of the pools, counted (the BlueFS DB growth is
   shown too, but it also holds the WAL of deferred small writes), ebsengine's fsck
   ``stored_bytes`` (chunk payload, first round) and ``du`` for LMDB, ``rbd du`` for RBD.

Medians over rounds, ratios rados/rbd and rados/lmdb, the goals of issue 10 (>= 0.5x RBD's
throughput on import and copy, snapshot creation within 2x of RBD's, stored bytes below
RBD's) and the load average before and after.

    python benchmarks/bench_rados.py --reps 2 --fio-runtime 5          # the 2 GiB image
    python benchmarks/bench_rados.py --quick                           # 512 MiB, 1 round
    python benchmarks/bench_rados.py --profile /var/tmp/rados-prof     # + py-spy of RADOS side
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
CLUSTER = ROOT / "scripts" / "ceph_cluster.sh"
SYS_PY = "/usr/bin/python3"  # Debian's python: python3-rbd is built for it
MiB = 1 << 20
GiB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")
BACKENDS = ("rados", "lmdb", "rbd")
#: more backends --backends may name: rados-alone is the RADOS store with one object per
#: chunk (``pack=0``), the layout before packs, for a same-run comparison
EXTRA_BACKENDS = {"rados-alone": "&pack=0"}
# (metric, direction, goal) for rados/rbd: throughput >= 0.5x, i.e. time <= 2x
GOALS = {"import+snap_s": 2.0, "nbdcopy_in_s": 2.0, "nbdcopy_out_s": 2.0,
         "snap_first_s": 2.0, "snap_incr_s": 2.0, "stored_bytes": 1.0}


def sh(cmd: list[str], timeout: float = 1200, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    return proc


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ensure_image(path: Path | None, size_mib: int) -> Path:
    if path is not None:
        return path
    cache = Path(os.environ.get("EBSENGINE_BENCH_CACHE", "/var/tmp/ebsengine-bench"))
    img = cache / f"gen_image_{size_mib}m.raw"
    if not img.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"generating {img} with {GEN_IMAGE} ...", flush=True)
        sh([sys.executable, str(GEN_IMAGE), str(img) + ".tmp", "--size-mib", str(size_mib)])
        os.rename(str(img) + ".tmp", img)
    return img


def make_change(size: int, out: Path, fraction: float = 0.01, region: int = 64 << 10,
                seed: int = 7) -> tuple[Path, int]:
    """gen_image.py's --mutate regions (same rng calls) as OFFSETS.json + DATA.bin."""
    import numpy as np
    rng = np.random.default_rng(seed)
    n = round(size * fraction / region)
    slots = rng.choice(size // region, size=n, replace=False)
    offsets = []
    with open(out.with_suffix(".bin"), "wb") as f:
        for s in np.sort(slots):
            offsets.append(int(s) * region)
            f.write(rng.bytes(region))
    out.with_suffix(".json").write_text(json.dumps({"region": region, "offsets": offsets}))
    return out, n * region


def free_port() -> int:
    used = set()
    for line in sh(["ss", "-Htan"]).stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and ":" in parts[3]:
            try:
                used.add(int(parts[3].rsplit(":", 1)[1]))
            except ValueError:
                pass
    for port in range(52000, 64000, 250):
        if not any(p in used for p in range(port, port + 202)):
            return port
    raise RuntimeError("no free port range for the test cluster")


class Cluster:
    def __init__(self, store: str, osd_mb: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cephb-", dir="/tmp"))
        self.dir.rmdir()  # the script makes it (and refuses an existing cluster)
        self.env = dict(os.environ, CEPH_DIR=str(self.dir), CEPH_MON_PORT=str(free_port()),
                        CEPH_OSDS="1", CEPH_STORE=store, CEPH_OSD_MB=str(osd_mb),
                        CEPH_STOP_SIGNAL="KILL")
        self.conf = str(self.dir / "ceph.conf")
        self.store = store

    def start(self) -> None:
        sh(["bash", str(CLUSTER), "start"], env=self.env, timeout=300)

    def stop(self) -> None:
        subprocess.run(["bash", str(CLUSTER), "stop"], env=self.env, capture_output=True, timeout=120)

    def ceph(self, *args: str) -> str:
        return sh(["ceph", "-c", self.conf, *args], timeout=120).stdout

    def pool_create(self, name: str) -> None:
        self.ceph("osd", "pool", "create", name, "8", "8")

    def pool_rm(self, name: str) -> None:
        self.ceph("osd", "pool", "rm", name, name, "--yes-i-really-really-mean-it")

    def osd_pid(self) -> int:
        return int((self.dir / "run" / "osd.0.pid").read_text())

    def counters(self) -> dict[str, int]:
        """Bytes BlueStore has allocated to object data and BlueFS (RocksDB: omap) uses."""
        if self.store != "bluestore":
            return {}
        d = json.loads(self.ceph("daemon", "osd.0", "perf", "dump"))
        return {"data": d["bluestore"]["bluestore_allocated"],
                "db": d["bluefs"]["db_used_bytes"] + d["bluefs"].get("slow_used_bytes", 0)}

    def settle(self, limit: float = 60) -> None:
        """Wait (bounded) until a removed pool's objects are gone: allocation stops changing."""
        if self.store != "bluestore":
            time.sleep(1)
            return
        t0, last = time.monotonic(), self.counters()["data"]
        while time.monotonic() - t0 < limit:
            time.sleep(1.0)
            now = self.counters()["data"]
            if now == last:
                return
            last = now


def run_code(py: str, code: str, timeout: float = 1200) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    out = sh([py, "-c", code], env=env(), timeout=timeout).stdout
    wall = time.perf_counter() - t0
    return json.loads(out.strip().splitlines()[-1]), wall


EBS_IMPORT = """
import json, time, ebsengine
t0 = time.perf_counter()
e = ebsengine.Engine({store!r})
v = e.import_image({image!r})
t1 = time.perf_counter()
s = e.create_snapshot(v.id)
t2 = time.perf_counter()
e.close()
print(json.dumps({{"vol": v.id, "snap": s.id, "import_s": t1 - t0, "snap_s": t2 - t1}}))
"""

EBS_INCR = """
import json, time, ebsengine
meta = json.load(open({change!r} + ".json")); data = open({change!r} + ".bin", "rb").read()
R = meta["region"]
e = ebsengine.Engine({store!r})
dev = e.open_volume({vol!r})
t0 = time.perf_counter()
for i, off in enumerate(meta["offsets"]):
    dev.pwrite(data[i * R:(i + 1) * R], off)
t1 = time.perf_counter()
s = e.create_snapshot({vol!r})
t2 = time.perf_counter()
grow = e.usage(s.id).stored_bytes
dev.close(); e.close()
print(json.dumps({{"write_s": t1 - t0, "snap_s": t2 - t1, "growth": grow}}))
"""

EBS_FSCK = """
import json, ebsengine
e = ebsengine.Engine({store!r})
r = e.fsck()
print(json.dumps({{"ok": r.ok, "stored_bytes": r.stats["stored_bytes"]}}))
e.close()
"""

EBS_CREATE = """
import json, ebsengine
e = ebsengine.Engine({store!r}); print(json.dumps({{"vol": e.create_volume(size_gib={gib}).id}})); e.close()
"""

RBD_SNAP = """
import json, time, rados, rbd
t0 = time.perf_counter()
c = rados.Rados(conffile={conf!r}); c.connect(); io = c.open_ioctx({pool!r})
img = rbd.Image(io, {name!r})
t1 = time.perf_counter()
img.create_snap({snap!r})
t2 = time.perf_counter()
img.close(); io.close(); c.shutdown()
print(json.dumps({{"snap_s": t2 - t1, "connect_s": t1 - t0}}))
"""

RBD_INCR = """
import json, time, rados, rbd
meta = json.load(open({change!r} + ".json")); data = open({change!r} + ".bin", "rb").read()
R = meta["region"]
c = rados.Rados(conffile={conf!r}); c.connect(); io = c.open_ioctx({pool!r})
img = rbd.Image(io, {name!r})
t0 = time.perf_counter()
for i, off in enumerate(meta["offsets"]):
    img.write(data[i * R:(i + 1) * R], off)
t1 = time.perf_counter()
img.create_snap({snap!r})
t2 = time.perf_counter()
img.close(); io.close(); c.shutdown()
print(json.dumps({{"write_s": t1 - t0, "snap_s": t2 - t1}}))
"""


POOL_BYTES = """
import json, rados
c = rados.Rados(conffile={conf!r}); c.connect()
out = {{}}
for pool in {pools!r}:
    io = c.open_ioctx(pool)
    n = data = omap = 0
    for obj in io.list_objects():
        n += 1
        data += io.stat(obj.key)[0]
        with rados.ReadOpCtx() as op:
            it, _ = io.get_omap_vals(op, "", "", 1 << 30)
            io.operate_read_op(op, obj.key)
            omap += sum(len(k) + len(v or b"") for k, v in it)
    out[pool] = {{"objects": n, "data": data, "omap": omap}}
    io.close()
c.shutdown()
print(json.dumps(out))
"""


class NbdServer:
    """ebsengine ``serve`` on a store, or ``qemu-nbd`` on an RBD image."""

    def __init__(self, cmd: list[str], uri: str, profile: Path | None = None) -> None:
        self.cmd, self.uri, self.profile = cmd, uri, profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.spy: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NbdServer:
        self.proc = subprocess.Popen(self.cmd, env=env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(600):
            if subprocess.run(["nbdinfo", "--size", self.uri], capture_output=True).returncode == 0:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd} exited {self.proc.returncode}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{self.cmd} did not come up")
        if self.profile is not None:
            self.spy = subprocess.Popen(["py-spy", "record", "-r", "50", "-f", "raw", "-o",
                                         str(self.profile), "--pid", str(self.proc.pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        return self

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def __exit__(self, *exc: object) -> None:
        if self.spy is not None:
            self.spy.send_signal(2)
            try:
                self.spy.wait(60)
            except subprocess.TimeoutExpired:
                self.spy.kill()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def fio(uri: str, qd: int, runtime: float, tmp: Path) -> float:
    out = tmp / "fio.json"
    sh(["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k",
        "--size=1G", f"--iodepth={qd}", f"--runtime={runtime}", "--time_based", "--norandommap",
        "--randrepeat=0", "--output-format=json", f"--output={out}"], cwd=tmp, timeout=runtime + 180)
    return float(json.loads(out.read_text())["jobs"][0]["write"]["iops"])


def qemu_has_rbd() -> bool:
    """Whether qemu lists the rbd block driver (a module of its own package on Debian)."""
    out = subprocess.run(["qemu-img", "--help"], capture_output=True, text=True).stdout
    return "rbd" in out.partition("Supported formats:")[2].split()


def du_bytes(path: Path) -> int:
    return int(sh(["du", "-s", "-B1", str(path)]).stdout.split()[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--size-mib", type=int, default=None, help="generated image size (2048; --quick 512)")
    ap.add_argument("--reps", type=int, default=None, help="rounds (default 2; --quick 1)")
    ap.add_argument("--fio-runtime", type=float, default=None, help="seconds per fio run (5; --quick 3)")
    ap.add_argument("--store", choices=("bluestore", "memstore"), default="bluestore")
    ap.add_argument("--osd-mb", type=int, default=16384)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--skip", default="", help="comma list of: incr, nbd, fio, fsck")
    ap.add_argument("--quick", action="store_true", help="512 MiB image, 1 round, 3 s fio")
    ap.add_argument("--profile", type=Path, default=None,
                    help="after the rounds, one unrecorded rados round under py-spy (raw stacks here)")
    ap.add_argument("--verbose", "-v", action="store_true", help="print each figure as measured")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    size_mib = a.size_mib or (512 if a.quick else 2048)
    reps = a.reps or (1 if a.quick else 2)
    fio_rt = a.fio_runtime or (3.0 if a.quick else 5.0)
    backends = a.backends.split(",")
    unknown = set(backends) - set(BACKENDS) - set(EXTRA_BACKENDS)
    if unknown:
        print(f"unknown backend(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    skip = set(filter(None, a.skip.split(",")))
    for tool in ("rbd", "qemu-nbd", "nbdcopy", "nbdinfo", "fio"):
        if not shutil.which(tool):
            print(f"missing {tool}: bash scripts/setup.sh --bench", file=sys.stderr)
            return 2
    if "rbd" in backends and "nbd" not in skip and not qemu_has_rbd():
        print("qemu-nbd has no rbd driver (apt package qemu-block-extra): "
              "bash scripts/setup.sh --bench", file=sys.stderr)
        return 2
    if a.profile is not None and not shutil.which("py-spy"):
        print("missing py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    image = ensure_image(a.image, size_mib)
    size = image.stat().st_size
    gib = max(1, -(-size // GiB))
    load0 = loadavg()
    print(f"image {image} ({size / MiB:.0f} MiB); {reps} round(s); cluster: 1 OSD, {a.store}"
          f"{' on a sparse file' if a.store == 'bluestore' else ' (RAM)'}, pools of size 1; "
          f"load average {load0}", flush=True)
    res: dict[str, dict[str, list[float]]] = {b: {} for b in backends}
    notes: list[str] = []

    def rec(b: str, key: str, value: float) -> None:
        res[b].setdefault(key, []).append(value)
        if a.verbose:
            print(f"  {b:6s} {key:28s} {value:14.3f}  (load {loadavg()})", flush=True)

    cl = Cluster(a.store, a.osd_mb)
    work = Path(tempfile.mkdtemp(prefix="ebs-bench-rados-", dir="/var/tmp"))
    try:
        t0 = time.perf_counter()
        cl.start()
        print(f"cluster up in {time.perf_counter() - t0:.1f} s ({cl.dir})", flush=True)
        change, changed = make_change(size, work / "change")
        change_s = str(change.with_suffix(""))
        total = reps + (1 if a.profile is not None else 0)
        for rep in range(total):
            profiling = rep == reps
            order = ["rados"] if profiling else [backends[(i + rep) % len(backends)]
                                                 for i in range(len(backends))]
            for b in order:
                one_round(a, cl, b, rep, image, size, gib, change_s, changed, work, fio_rt, skip,
                          (lambda k, v, b=b: None) if profiling else (lambda k, v, b=b: rec(b, k, v)),
                          a.profile if profiling else None, notes)
            if not profiling:
                meds = {b: {k: round(statistics.median(v), 3) for k, v in res[b].items()} for b in order}
                print(f"after round {rep + 1}/{reps} (load {loadavg()}): {json.dumps(meds)}", flush=True)
    finally:
        cl.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(a, res, backends, image, size, reps, fio_rt, load0, notes, argv)
    return 0


def one_round(a: argparse.Namespace, cl: Cluster, b: str, rep: int, image: Path, size: int,
              gib: int, change: str, changed: int, work: Path, fio_rt: float, skip: set[str],
              rec: Any, profile: Path | None, notes: list[str]) -> None:
    tag = f"r{rep}{b}"
    tmp = work / tag
    tmp.mkdir()
    pools: list[str] = []
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)

    def store_for(suffix: str) -> str:
        if b.startswith("rados"):
            prefix = f"{tag}{suffix}".replace("-", "")
            for p in (f"{prefix}.meta", f"{prefix}.data"):
                cl.pool_create(p)
                pools.append(p)
            return (f"rados://{prefix}?conf={cl.conf}&workdir={tmp / ('wd' + suffix)}"
                    f"{EXTRA_BACKENDS.get(b, '')}")
        return str(tmp / f"lmdb{suffix}")

    try:
        cl.settle()
        if b == "rbd":
            pool = f"{tag}rbd"
            cl.pool_create(pool)
            pools.append(pool)
            sh(["rbd", "-c", cl.conf, "pool", "init", pool])
        else:
            store = store_for("a")
        # 1. import + first snapshot
        before, osd0 = cl.counters(), cpu_seconds(cl.osd_pid())
        if b == "rbd":
            t0 = time.perf_counter()
            sh(["rbd", "-c", cl.conf, "import", str(image), f"{pool}/img"])
            t_imp = time.perf_counter() - t0
            got, w_snap = run_code(SYS_PY, RBD_SNAP.format(conf=cl.conf, pool=pool, name="img", snap="s1"))
            rec("import+snap_s", t_imp + w_snap)
            rec("import_s", t_imp)
            rec("snap_first_s", got["snap_s"])
            t0 = time.perf_counter()
            sh(["rbd", "-c", cl.conf, "snap", "create", f"{pool}/img@s1cli"])
            rec("snap_cli_process_s", time.perf_counter() - t0)
            sh(["rbd", "-c", cl.conf, "snap", "rm", f"{pool}/img@s1cli"])
        else:
            code = EBS_IMPORT.format(store=store, image=str(image))
            if profile is not None:
                (tmp / "imp.py").write_text(code)
                sh(["py-spy", "record", "-r", "50", "-f", "raw", "-o", str(profile / "import.txt"),
                    "--subprocesses", "--", sys.executable, str(tmp / "imp.py")], env=env())
                got = {}
                vol = None
            else:
                got, wall = run_code(sys.executable, code)
                vol = got["vol"]
                rec("import+snap_s", wall)
                rec("import_s", got["import_s"])
                rec("snap_first_s", got["snap_s"])
        rec("import_osd_cpu_s", cpu_seconds(cl.osd_pid()) - osd0)
        after = cl.counters() if b != "lmdb" and profile is None else {}
        if after:
            rec("stored_osd_data_bytes", after["data"] - before["data"])
            rec("stored_osd_db_bytes", after["db"] - before["db"])
            # object data as BlueStore allocated it, plus the omap bytes counted key by key
            # (BlueStore's DB growth also holds the WAL of deferred small writes: not data)
            got_p, _ = run_code(sys.executable, POOL_BYTES.format(conf=cl.conf, pools=pools))
            omap = sum(p["omap"] for p in got_p.values())
            rec("stored_omap_bytes", omap)
            rec("stored_logical_objects", sum(p["objects"] for p in got_p.values()))
            rec("stored_bytes", after["data"] - before["data"] + omap)
        if b == "lmdb":
            rec("stored_bytes", du_bytes(tmp / "lmdba"))
        if b == "rbd":
            du = json.loads(sh(["rbd", "-c", cl.conf, "du", "--format", "json", f"{pool}/img"]).stdout)
            rec("rbd_du_used_bytes", sum(i.get("used_size", 0) for i in du.get("images", [])))
        elif rep == 0 and "fsck" not in skip and profile is None:
            t0 = time.perf_counter()
            got_f, _ = run_code(sys.executable, EBS_FSCK.format(store=store))
            rec("fsck_chunk_payload_bytes", got_f["stored_bytes"])
            rec("fsck_s", time.perf_counter() - t0)
            if not got_f["ok"]:
                notes.append(f"fsck of {b} store NOT clean")
        # 2. incremental snapshot after the 1% change
        if "incr" not in skip and profile is None:
            before = cl.counters()
            if b == "rbd":
                got, _ = run_code(SYS_PY, RBD_INCR.format(change=change, conf=cl.conf, pool=pool,
                                                          name="img", snap="s2"))
            else:
                got, _ = run_code(sys.executable, EBS_INCR.format(change=change, store=store, vol=vol))
                rec("incr_growth_bytes", got["growth"])
            rec("incr_write+snap_s", got["write_s"] + got["snap_s"])
            rec("snap_incr_s", got["snap_s"])
            after = cl.counters() if b != "lmdb" else {}
            if after:
                rec("incr_osd_data_growth_bytes", after["data"] - before["data"])
        # 3-5. NBD: copy in, fio, copy out
        if "nbd" in skip:
            return
        sock = tmp / "nbd.sock"
        if b == "rbd":
            sh(["rbd", "-c", cl.conf, "create", "--size", f"{gib}G", f"{pool}/nbd"])
            cmd = ["qemu-nbd", "-t", "-f", "raw", "-k", str(sock), "-e", "8", "--cache=writeback",
                   "--discard=unmap", f"rbd:{pool}/nbd:conf={cl.conf}"]
            uri = f"nbd+unix:///?socket={sock}"
        else:
            store2 = store_for("b") if b.startswith("rados") else str(tmp / "lmdbb")
            got, _ = run_code(sys.executable, EBS_CREATE.format(store=store2, gib=gib))
            cmd = [sys.executable, "-c", "import sys; from ebsengine.nbd.server import serve; "
                   f"sys.exit(serve({store2!r}, {str(sock)!r}))"]
            uri = f"nbd+unix:///{got['vol']}?socket={sock}"
        spy_in = profile / "serve_in.txt" if profile is not None and b == "rados" else None
        with NbdServer(cmd, uri, spy_in) as srv:
            c0, osd0, t0 = srv.cpu(), cpu_seconds(cl.osd_pid()), time.perf_counter()
            sh(["nbdcopy", "--flush", str(image), uri])
            rec("nbdcopy_in_s", time.perf_counter() - t0)
            rec("nbdcopy_in_server_cpu_s", srv.cpu() - c0)
            rec("nbdcopy_in_osd_cpu_s", cpu_seconds(cl.osd_pid()) - osd0)
            if "fio" not in skip and profile is None:
                for qd in (1, 32):
                    rec(f"randwrite_qd{qd}_iops", fio(uri, qd, fio_rt, tmp))
        with NbdServer(cmd, uri) as srv:
            c0, osd0, t0 = srv.cpu(), cpu_seconds(cl.osd_pid()), time.perf_counter()
            sh(["nbdcopy", uri, "null:"])
            rec("nbdcopy_out_s", time.perf_counter() - t0)
            rec("nbdcopy_out_server_cpu_s", srv.cpu() - c0)
            rec("nbdcopy_out_osd_cpu_s", cpu_seconds(cl.osd_pid()) - osd0)
    finally:
        for p in pools:
            try:
                cl.pool_rm(p)
            except RuntimeError as exc:
                notes.append(f"pool rm {p}: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)


def report(a: argparse.Namespace, res: dict[str, dict[str, list[float]]], backends: list[str],
           image: Path, size: int, reps: int, fio_rt: float, load0: str, notes: list[str],
           argv: list[str] | None) -> None:
    med = {b: {k: statistics.median(v) for k, v in res[b].items()} for b in backends}
    keys = sorted({k for b in backends for k in res[b]})
    print(f"\nmedians of {reps} round(s); image {size / MiB:.0f} MiB; fio {fio_rt:g} s; "
          f"OSD {a.store}; load average {load0} before, {loadavg()} after")
    hdr = f"{'metric':28s}" + "".join(f"{b:>14s}" for b in backends)
    both = "rados" in backends
    if both and "rbd" in backends:
        hdr += f"{'rados/rbd':>11s}"
    if both and "lmdb" in backends:
        hdr += f"{'rados/lmdb':>11s}"
    print(hdr)
    for k in keys:
        row = f"{k:28s}"
        for b in backends:
            v = med[b].get(k)
            row += f"{'-':>14s}" if v is None else (f"{v / MiB:13.1f}M" if k.endswith("bytes")
                                                   else f"{v:14.3f}")
        for base in ("rbd", "lmdb"):
            if both and base in backends:
                x, y = med["rados"].get(k), med[base].get(k)
                row += f"{x / y:11.2f}" if x is not None and y else f"{'-':>11s}"
        print(row)
    if both and "rbd" in backends:
        print("\ngoals (issue 10), rados vs rbd:")
        for k, limit in GOALS.items():
            x, y = med["rados"].get(k), med["rbd"].get(k)
            if x is None or not y:
                continue
            r = x / y
            what = "time ratio" if k.endswith("_s") else "size ratio"
            print(f"  {k:22s} {what} {r:6.2f} (goal <= {limit:g}{' ie >= 0.5x throughput' if limit == 2.0 and k != 'snap_first_s' and k != 'snap_incr_s' else ''}): "
                  + ("met" if r <= limit else "MISSED"))
    print("  (snap_incr_s: ebsengine's snapshot also commits the writes it has cached since the"
          " previous one;\n   librbd sent them to the OSD during the writes: incr_write+snap_s"
          " is the like-for-like figure)")
    for n in notes:
        print("note:", n)
    print("\nreproduce: PYTHONPATH=. python benchmarks/bench_rados.py "
          + " ".join(sys.argv[1:] if argv is None else argv))
    if a.json:
        a.json.write_text(json.dumps({"median": med, "raw": res, "load_before": load0,
                                      "load_after": loadavg(), "notes": notes}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
