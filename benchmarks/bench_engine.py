"""Engine benchmarks against restic and a raw file, each baseline measured in the same run.

Run (all of it, < 10 minutes on 2 cores):

    python -m pytest benchmarks/bench_engine.py --benchmark-only -p no:cacheprovider \
        --benchmark-columns=min,median,max,rounds --benchmark-sort=name

At the end the run prints a table of figures and ratios against the performance goals (README, "Benchmarks") and
writes it as JSON to ``$EBSENGINE_BENCH_CACHE/engine_results.json``.

Corpus: the realistic 2 GiB image of ``../shared/bench/gen_image.py`` (default seed) and its
``--mutate`` copy (328 scattered 64 KiB regions = 1%), made once into the cache dir
``$EBSENGINE_BENCH_CACHE`` (default ``/var/tmp/ebsengine-bench``) and reused. The changed
regions are found by comparing the two images in 64 KiB regions (outside any timing).

What is timed (wall; ``extra_info`` adds CPU seconds of this process, or of the restic child):

1. ``import``: ``Engine(path)`` + ``eng.import_image(base)`` + ``eng.create_snapshot`` on a fresh
   store  vs  ``restic backup`` into a fresh repo (``restic init`` untimed; default compression).
   Stored size: ``fsck().stats["stored_bytes"]`` and ``du`` of the store vs ``du`` of the repo.
2. ``incremental``: from a copy of a store holding the imported volume + its first snapshot,
   ``dev.pwrite`` of the changed 64 KiB regions + ``eng.create_snapshot``  vs  ``restic backup``
   of the mutated image (same path, parent snapshot, same restic cache) in a copy of the repo.
   Stored growth: ``eng.usage(snap).stored_bytes`` vs the changed bytes; repo growth for restic.
3. the same change on a 64 GiB volume holding the same data (``incremental[64GiB]``).
4. ``export``: ``eng.export(snap, file)`` (sparse, fsync'd)  vs  ``restic restore`` of the same
   snapshot (restic does not fsync; the restore + fsync of its output is reported too).
   Both outputs' sha256 must equal the image's.
5. ``randwrite``: N random 4 KiB-aligned writes over 1 GiB with ``dev.pwrite`` + ``dev.flush()``
   (a fresh 1 GiB volume, and the first GiB of the imported volume) vs ``os.pwrite`` to a
   1 GiB sparse raw file + ``fsync``.
6. ``delete``: a chain of 10 snapshots of the imported volume (each after a 1% change: the
   image's own mutation, then gen_image's mutate algorithm with seeds 8..15 applied in memory),
   delete the 5th (middle) then the 1st; vs the creation times of the chain's snapshots.

Every round starts from a fresh copy (``benchmark.pedantic(..., setup=...)``); dirty page
cache is synced in the setup, so write-back of the copy is not charged to the timed part.
Rounds: ``EBSENGINE_BENCH_ROUNDS`` (default 3); random writes: ``EBSENGINE_BENCH_RANDWRITES``.

Profiling one engine operation without the harness (see ``python benchmarks/bench_engine.py -h``):

    python benchmarks/bench_engine.py prepare
    py-spy record -r 250 --threads --idle -f raw -o import.txt -- python benchmarks/bench_engine.py run import
    python benchmarks/bench_engine.py summarize import.txt
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ebsengine  # noqa: E402

GEN_IMAGE = ROOT.parent / "shared" / "bench" / "gen_image.py"
if not GEN_IMAGE.exists():
    GEN_IMAGE = Path("/work/shared/bench/gen_image.py")
CACHE = Path(os.environ.get("EBSENGINE_BENCH_CACHE", "/var/tmp/ebsengine-bench"))
ROUNDS = int(os.environ.get("EBSENGINE_BENCH_ROUNDS", "3"))
RANDWRITES = int(os.environ.get("EBSENGINE_BENCH_RANDWRITES", "20000"))
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
REGION = 64 * KiB
IMAGE_SIZE = 2 * GiB
RESTIC_ENV = {"RESTIC_PASSWORD": "x"}

GOALS = {  # the performance goals (README, "Benchmarks") (engine / baseline)
    "import_time": ("<=", 0.2),
    "import_stored": ("<=", 1.05),
    "incremental_time": ("<=", 0.02),
    "incremental_growth_vs_changed": ("<=", 1.1),
    "snapshot_64g_vs_2g": ("<=", 1.2),
    "export_time": ("<=", 0.3),
    "randwrite_imported": (">=", 0.5),  # 4 KiB writes + flush on the imported volume
}


# --- corpus ---------------------------------------------------------------------------------

def _gen(*args: str) -> None:
    subprocess.run([sys.executable, str(GEN_IMAGE), *args], check=True, stdout=subprocess.DEVNULL)


def ensure_images() -> tuple[Path, Path]:
    """base.img (default seed) and mutated.img (its --mutate copy), made once."""
    CACHE.mkdir(parents=True, exist_ok=True)
    base, mut = CACHE / "base.img", CACHE / "mutated.img"
    if not base.exists() or base.stat().st_size != IMAGE_SIZE:
        tmp = CACHE / "base.img.tmp"
        _gen(str(tmp))
        tmp.rename(base)
        mut.unlink(missing_ok=True)
    if not mut.exists() or mut.stat().st_mtime < base.stat().st_mtime:
        tmp = CACHE / "mutated.img.tmp"
        subprocess.run(["cp", "--sparse=always", str(base), str(tmp)], check=True)
        _gen(str(tmp), "--mutate")
        tmp.rename(mut)
    return base, mut


def changed_regions(base: Path, mut: Path) -> list[int]:
    """Indexes of the 64 KiB regions in which the two images differ (cached)."""
    import numpy as np
    cache = CACHE / "regions.json"
    key = [base.stat().st_mtime_ns, mut.stat().st_mtime_ns, REGION]
    if cache.exists():
        got = json.loads(cache.read_text())
        if got.get("key") == key:
            return got["regions"]
    out: list[int] = []
    step = 64 * MiB
    with open(base, "rb") as a, open(mut, "rb") as b:
        pos = 0
        while True:
            x, y = a.read(step), b.read(step)
            if not x:
                break
            xa = np.frombuffer(x, dtype=np.uint64).reshape(-1, REGION // 8)
            ya = np.frombuffer(y, dtype=np.uint64).reshape(-1, REGION // 8)
            diff = np.nonzero((xa != ya).any(axis=1))[0]
            out.extend(int(pos // REGION + i) for i in diff)
            pos += len(x)
    cache.write_text(json.dumps({"key": key, "regions": out}))
    return out


def read_regions(path: Path, regions: list[int]) -> list[tuple[int, bytes]]:
    with open(path, "rb") as f:
        return [(r * REGION, os.pread(f.fileno(), REGION, r * REGION)) for r in regions]


def synthetic_change(seed: int, size: int = IMAGE_SIZE, fraction: float = 0.01) -> list[tuple[int, bytes]]:
    """gen_image.py's mutate algorithm (same rng calls), applied in memory instead of to a file."""
    import numpy as np
    rng = np.random.default_rng(seed)
    n = round(size * fraction / REGION)
    slots = rng.choice(size // REGION, size=n, replace=False)
    return [(int(s) * REGION, rng.bytes(REGION)) for s in np.sort(slots)]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 * MiB)
        mv = memoryview(buf)
        while n := f.readinto(buf):
            h.update(mv[:n])
    return h.hexdigest()


# --- helpers --------------------------------------------------------------------------------

def du_bytes(path: Path) -> int:
    """Allocated bytes under ``path`` (du -s, blocks)."""
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def clone_dir(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    fsync_tree(dst)


def restic(*args: str, cwd: Path | None = None, repo: Path, cache: Path) -> str:
    env = {**os.environ, **RESTIC_ENV, "RESTIC_REPOSITORY": str(repo), "RESTIC_CACHE_DIR": str(cache)}
    proc = subprocess.run(["restic", "-q", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"restic {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def restic_snapshots(repo: Path, cache: Path) -> list[str]:
    snaps = json.loads(restic("snapshots", "--json", repo=repo, cache=cache))
    return [s["id"] for s in sorted(snaps, key=lambda s: s["time"])]


def link_source(src_dir: Path, image: Path) -> None:
    """Point the one backed-up path (src/disk.img) at ``image`` (a hard link, no copy), so
    restic sees the same path in every backup and uses the previous snapshot as parent."""
    src_dir.mkdir(parents=True, exist_ok=True)
    target = src_dir / "disk.img"
    target.unlink(missing_ok=True)
    os.link(image, target)


def write_image_data(dev: Any, image: Path) -> None:
    """Write every data range of ``image`` into ``dev`` (an untimed import into an existing,
    larger volume; zero chunks become holes in the engine either way)."""
    step = 8 * MiB
    with open(image, "rb", buffering=0) as f:
        fd, size, pos = f.fileno(), os.path.getsize(image), 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            for off in range(start, end, step):
                dev.pwrite(os.pread(fd, min(step, end - off), off), off)
            pos = end
    dev.flush()


def apply_change(dev: Any, change: list[tuple[int, bytes]]) -> None:
    for off, data in change:
        dev.pwrite(data, off)


class Rounds:
    """Per-round side measurements (CPU seconds, sub-timings) kept next to the benchmark."""

    def __init__(self) -> None:
        self.data: dict[str, list[float]] = collections.defaultdict(list)

    def add(self, **kw: float) -> None:
        for k, v in kw.items():
            self.data[k].append(v)

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.data.items()}

    def mins(self) -> dict[str, float]:
        return {k: min(v) for k, v in self.data.items()}


def child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(fn: Callable[..., Any], rounds: Rounds, cpu: Callable[[], float] = time.process_time
          ) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        c0, t0 = cpu(), time.perf_counter()
        out = fn(*args)
        rounds.add(wall=time.perf_counter() - t0, cpu=cpu() - c0)
        return out
    return run


def finish(benchmark: Any, results: dict[str, Any], name: str, rounds: Rounds, **extra: Any) -> None:
    med = rounds.medians()
    entry = {"wall_s": med["wall"], "cpu_s": med["cpu"], "rounds": len(rounds.data["wall"]),
             **{k + "_s": v for k, v in med.items() if k not in ("wall", "cpu")},
             **{"min_" + k + "_s": v for k, v in rounds.mins().items()}, **extra}
    results[name] = entry
    benchmark.extra_info.update(entry)


# --- session state --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def images() -> dict[str, Any]:
    base, mut = ensure_images()
    regions = changed_regions(base, mut)
    return {"base": base, "mutated": mut, "regions": regions,
            "change": read_regions(mut, regions), "changed_bytes": len(regions) * REGION}


@pytest.fixture(scope="session")
def work() -> Any:
    d = CACHE / "run"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def results(request: pytest.FixtureRequest) -> Any:
    res: dict[str, Any] = {}
    yield res
    table = summarize_results(res)
    res["summary"] = table
    (CACHE / "engine_results.json").write_text(json.dumps(res, indent=2))
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            _write_table(tr, table)


def _write_table(tr: Any, table: list[dict[str, Any]]) -> None:
    tr.write_line("")
    tr.write_sep("=", "ebsengine vs baselines (medians; ratio = engine / baseline)")
    for line in format_table(table):
        tr.write_line(line)
    tr.write_line(f"(JSON: {CACHE / 'engine_results.json'})")


@pytest.fixture(scope="session")
def templates(images: dict[str, Any], work: Path) -> dict[str, Any]:
    """An engine store holding the image imported into a 2 GiB and a 64 GiB volume, each with
    its first snapshot; a restic repo (+ its cache) holding the first backup of the image."""
    eng_dir = work / "tpl-engine"
    t: dict[str, Any] = {"engine": eng_dir}
    with ebsengine.Engine(eng_dir) as eng:
        v2 = eng.import_image(images["base"])
        s2 = eng.create_snapshot(v2.id)
        v64 = eng.create_volume(size_gib=64)
        with eng.open_volume(v64.id) as dev:
            write_image_data(dev, images["base"])
        s64 = eng.create_snapshot(v64.id)
    t.update(vol2=v2.id, snap2=s2.id, vol64=v64.id, snap64=s64.id)
    src = work / "src"
    link_source(src, images["base"])
    rdir = work / "tpl-restic"
    restic("init", repo=rdir / "repo", cache=rdir / "cache")
    restic("backup", "disk.img", cwd=src, repo=rdir / "repo", cache=rdir / "cache")
    t.update(restic=rdir, src=src, restic_snap=restic_snapshots(rdir / "repo", rdir / "cache")[-1])
    fsync_tree(eng_dir)
    fsync_tree(rdir)
    return t


# --- 1. import + first snapshot vs restic first backup --------------------------------------

def test_import_engine(benchmark: Any, images: dict[str, Any], work: Path, results: dict) -> None:
    benchmark.group = "1-import"
    store = work / "import-store"
    rounds = Rounds()
    snap_box: list[str] = []

    def setup() -> tuple[tuple, dict]:
        shutil.rmtree(store, ignore_errors=True)
        os.sync()
        return (), {}

    def op() -> None:
        with ebsengine.Engine(store) as eng:
            vol = eng.import_image(images["base"])
            t = time.perf_counter()
            snap = eng.create_snapshot(vol.id)
            rounds.add(snapshot=time.perf_counter() - t)
        snap_box.append(snap.id)

    benchmark.pedantic(timed(op, rounds), setup=setup, rounds=ROUNDS, iterations=1)
    with ebsengine.Engine(store) as eng:
        report = eng.fsck()
        usage = eng.usage(snap_box[-1])
    assert report.ok, report.problems
    finish(benchmark, results, "import_engine", rounds,
           stored_bytes_fsck=report.stats["stored_bytes"], stored_bytes_usage=usage.stored_bytes,
           store_du_bytes=du_bytes(store), chunks=report.stats["chunks"])


def test_import_restic(benchmark: Any, images: dict[str, Any], work: Path, results: dict) -> None:
    benchmark.group = "1-import"
    d, src = work / "import-restic", work / "src"
    rounds = Rounds()

    def setup() -> tuple[tuple, dict]:
        shutil.rmtree(d, ignore_errors=True)
        link_source(src, images["base"])
        restic("init", repo=d / "repo", cache=d / "cache")
        os.sync()
        return (), {}

    def op() -> None:
        restic("backup", "disk.img", cwd=src, repo=d / "repo", cache=d / "cache")

    benchmark.pedantic(timed(op, rounds, child_cpu), setup=setup, rounds=ROUNDS, iterations=1)
    finish(benchmark, results, "import_restic", rounds, repo_du_bytes=du_bytes(d / "repo"))


# --- 2 + 3. incremental snapshot after the 1% change ----------------------------------------

@pytest.mark.parametrize("size", ["2GiB", "64GiB"])
def test_incremental_engine(benchmark: Any, size: str, images: dict[str, Any], templates: dict,
                            work: Path, results: dict) -> None:
    benchmark.group = "2-incremental"
    store = work / "inc-store"
    vol = templates["vol2" if size == "2GiB" else "vol64"]
    change = images["change"]
    rounds = Rounds()
    state: dict[str, Any] = {}

    def close() -> None:
        if "eng" in state:
            state.pop("dev").close()
            state.pop("eng").close()

    def setup() -> tuple[tuple, dict]:
        close()
        clone_dir(templates["engine"], store)
        os.sync()
        state["eng"] = eng = ebsengine.Engine(store)
        state["dev"] = dev = eng.open_volume(vol)
        return (eng, dev), {}

    def op(eng: Any, dev: Any) -> None:
        apply_change(dev, change)
        t, c = time.perf_counter(), time.process_time()
        state["snap"] = eng.create_snapshot(vol).id
        rounds.add(snapshot=time.perf_counter() - t, snapshot_cpu=time.process_time() - c)

    # cheap rounds, noisy (one synced LMDB commit each): more of them
    benchmark.pedantic(timed(op, rounds), setup=setup, rounds=4 * ROUNDS, iterations=1)
    eng = state["eng"]
    usage = eng.usage(state["snap"])
    blocks = eng.list_changed_blocks(templates["snap2" if size == "2GiB" else "snap64"], state["snap"])
    close()
    finish(benchmark, results, f"incremental_engine_{size}", rounds,
           stored_growth_bytes=usage.stored_bytes, changed_bytes=images["changed_bytes"],
           store_du_growth_bytes=du_bytes(store) - du_bytes(templates["engine"]),
           changed_512k_blocks=len(blocks))


def test_incremental_restic(benchmark: Any, images: dict[str, Any], templates: dict, work: Path,
                            results: dict) -> None:
    benchmark.group = "2-incremental"
    d = work / "inc-restic"
    rounds = Rounds()

    def setup() -> tuple[tuple, dict]:
        clone_dir(templates["restic"], d)
        link_source(templates["src"], images["mutated"])
        os.sync()
        return (), {}

    def op() -> None:
        restic("backup", "disk.img", cwd=templates["src"], repo=d / "repo", cache=d / "cache")

    benchmark.pedantic(timed(op, rounds, child_cpu), setup=setup, rounds=ROUNDS, iterations=1)
    finish(benchmark, results, "incremental_restic", rounds,
           repo_growth_bytes=du_bytes(d / "repo") - du_bytes(templates["restic"] / "repo"),
           changed_bytes=images["changed_bytes"])


# --- 4. export vs restic restore ------------------------------------------------------------

@pytest.fixture(scope="session")
def base_sha(images: dict[str, Any]) -> str:
    return sha256_file(images["base"])


def test_export_engine(benchmark: Any, templates: dict, work: Path, base_sha: str,
                       results: dict) -> None:
    benchmark.group = "4-export"
    out = work / "export.img"
    rounds = Rounds()

    def setup() -> tuple[tuple, dict]:
        out.unlink(missing_ok=True)
        os.sync()
        return (), {}

    def op() -> None:
        with ebsengine.Engine(templates["engine"]) as eng:
            eng.export(templates["snap2"], out)

    benchmark.pedantic(timed(op, rounds), setup=setup, rounds=ROUNDS, iterations=1)
    assert out.stat().st_size == IMAGE_SIZE
    assert sha256_file(out) == base_sha
    finish(benchmark, results, "export_engine", rounds, sha256_ok=True,
           output_du_bytes=du_bytes(out))
    out.unlink()


def test_export_restic(benchmark: Any, templates: dict, work: Path, base_sha: str,
                       results: dict) -> None:
    benchmark.group = "4-export"
    target = work / "restore"
    r = templates["restic"]
    rounds = Rounds()
    found: list[Path] = []

    def setup() -> tuple[tuple, dict]:
        shutil.rmtree(target, ignore_errors=True)
        os.sync()
        return (), {}

    def op() -> None:
        restic("restore", templates["restic_snap"], "--target", str(target), repo=r / "repo",
               cache=r / "cache")
        found[:] = list(target.rglob("disk.img"))
        t = time.perf_counter()
        fd = os.open(found[0], os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        rounds.add(fsync=time.perf_counter() - t)

    # the benchmark's figure is restore + fsync of the output; restore alone is in extra_info
    benchmark.pedantic(timed(op, rounds, child_cpu), setup=setup, rounds=ROUNDS,
                       iterations=1)
    assert len(found) == 1 and sha256_file(found[0]) == base_sha
    restore_only = [w - f for w, f in zip(rounds.data["wall"], rounds.data["fsync"], strict=True)]
    finish(benchmark, results, "export_restic", rounds, sha256_ok=True,
           restore_without_fsync_s=statistics.median(restore_only),
           min_restore_without_fsync_s=min(restore_only), output_du_bytes=du_bytes(found[0]))
    shutil.rmtree(target, ignore_errors=True)


# --- 5. 4 KiB random writes -----------------------------------------------------------------

def _randwrite_plan(span: int, n: int, seed: int = 5) -> tuple[list[int], list[memoryview]]:
    import random
    rnd = random.Random(seed)
    offs = [rnd.randrange(span // 4096) * 4096 for _ in range(n)]
    pool = rnd.randbytes(4096 * 1024)
    bufs = [memoryview(pool)[i * 4096:(i + 1) * 4096] for i in range(1024)]
    return offs, bufs


@pytest.mark.parametrize("where", ["fresh-volume", "imported-volume"])
def test_randwrite_engine(benchmark: Any, where: str, templates: dict, work: Path,
                          results: dict) -> None:
    benchmark.group = "5-randwrite"
    store = work / "rw-store"
    offs, bufs = _randwrite_plan(GiB, RANDWRITES)
    rounds = Rounds()
    state: dict[str, Any] = {}

    def close() -> None:
        if "eng" in state:
            state.pop("dev").close()
            state.pop("eng").close()

    def setup() -> tuple[tuple, dict]:
        close()
        if where == "fresh-volume":
            shutil.rmtree(store, ignore_errors=True)
            state["eng"] = eng = ebsengine.Engine(store)
            vol = eng.create_volume(size_gib=1).id
        else:  # the first GiB of the imported image: writes land on stored, compressed chunks
            clone_dir(templates["engine"], store)
            state["eng"] = eng = ebsengine.Engine(store)
            vol = templates["vol2"]
        os.sync()
        state["dev"] = dev = eng.open_volume(vol)
        return (dev,), {}

    def op(dev: Any) -> None:
        pw = dev.pwrite
        for i, off in enumerate(offs):
            pw(bufs[i & 1023], off)
        t = time.perf_counter()
        dev.flush()
        rounds.add(final_flush=time.perf_counter() - t)

    benchmark.pedantic(timed(op, rounds), setup=setup, rounds=ROUNDS, iterations=1)
    close()
    med = rounds.medians()
    finish(benchmark, results, f"randwrite_engine_{where}", rounds, writes=RANDWRITES,
           iops=RANDWRITES / med["wall"], best_iops=RANDWRITES / min(rounds.data["wall"]))


def test_randwrite_rawfile(benchmark: Any, work: Path, results: dict) -> None:
    benchmark.group = "5-randwrite"
    path = work / "raw.img"
    offs, bufs = _randwrite_plan(GiB, RANDWRITES)
    rounds = Rounds()
    fds: list[int] = []

    def setup() -> tuple[tuple, dict]:
        for fd in fds:
            os.close(fd)
        fds.clear()
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, GiB)
        fds.append(fd)
        os.sync()
        return (fd,), {}

    def op(fd: int) -> None:
        pw = os.pwrite
        for i, off in enumerate(offs):
            pw(fd, bufs[i & 1023], off)
        os.fsync(fd)

    benchmark.pedantic(timed(op, rounds), setup=setup, rounds=ROUNDS, iterations=1)
    for fd in fds:
        os.close(fd)
    path.unlink()
    med = rounds.medians()
    finish(benchmark, results, "randwrite_rawfile", rounds, writes=RANDWRITES,
           iops=RANDWRITES / med["wall"], best_iops=RANDWRITES / min(rounds.data["wall"]))


# --- 6. snapshot deletion in a chain of 10 --------------------------------------------------

def test_delete_in_chain(benchmark: Any, images: dict[str, Any], templates: dict, work: Path,
                         results: dict) -> None:
    benchmark.group = "6-delete"
    tpl, store = work / "tpl-chain", work / "chain-store"
    clone_dir(templates["engine"], tpl)
    vol = templates["vol2"]
    snaps = [templates["snap2"]]
    creates: list[float] = []
    with ebsengine.Engine(tpl) as eng, eng.open_volume(vol) as dev:
        for k in range(9):
            change = images["change"] if k == 0 else synthetic_change(7 + k)
            t = time.perf_counter()
            apply_change(dev, change)
            snaps.append(eng.create_snapshot(vol).id)
            creates.append(time.perf_counter() - t)
    fsync_tree(tpl)
    rounds = Rounds()
    state: dict[str, Any] = {}

    def setup() -> tuple[tuple, dict]:
        if "eng" in state:
            state.pop("eng").close()
        clone_dir(tpl, store)
        os.sync()
        state["eng"] = eng = ebsengine.Engine(store)
        return (eng,), {}

    def op(eng: Any) -> None:
        t0 = time.perf_counter()
        eng.delete_snapshot(snaps[4])   # the middle one (5th of 10)
        t1 = time.perf_counter()
        eng.delete_snapshot(snaps[0])   # the first, full one
        rounds.add(delete_middle=t1 - t0, delete_first=time.perf_counter() - t1)

    benchmark.pedantic(timed(op, rounds), setup=setup, rounds=ROUNDS, iterations=1)
    eng = state.pop("eng")
    left = [s.id for s in eng.list_snapshots(vol)]
    report = eng.fsck()
    eng.close()
    assert report.ok, report.problems
    assert snaps[4] not in left and snaps[0] not in left and len(left) == 8
    finish(benchmark, results, "delete_chain", rounds,
           create_incremental_median_s=statistics.median(creates),
           create_incremental_min_s=min(creates),
           create_incremental_all_s=creates)


# --- report ---------------------------------------------------------------------------------

def summarize_results(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(what: str, ours: float | None, base: float | None, unit: str, goal_key: str | None,
            note: str = "", mins: tuple[float | None, float | None] = (None, None)) -> None:
        if ours is None or base is None:
            return
        ratio = ours / base if base else float("nan")
        ratio_min = mins[0] / mins[1] if mins[0] is not None and mins[1] else None
        goal = GOALS.get(goal_key) if goal_key else None
        met = None if goal is None else (ratio <= goal[1] if goal[0] == "<=" else ratio >= goal[1])
        rows.append({"what": what, "engine": ours, "baseline": base, "unit": unit,
                     "ratio": ratio, "ratio_of_minima": ratio_min, "goal": None if goal is None else f"{goal[0]} {goal[1]}",
                     "met": met, "note": note})

    g = lambda name, key="wall_s": res.get(name, {}).get(key)  # noqa: E731

    def m(a: str, b: str, key: str = "wall_s", key_b: str | None = None) -> tuple:
        return g(a, "min_" + key), g(b, "min_" + (key_b or key))

    row("import+first snapshot, wall", g("import_engine"), g("import_restic"), "s", "import_time",
        "vs restic backup (fresh repo)", m("import_engine", "import_restic"))
    row("import+first snapshot, CPU", g("import_engine", "cpu_s"), g("import_restic", "cpu_s"),
        "s", None, "", m("import_engine", "import_restic", "cpu_s"))
    row("stored size (fsck stored_bytes)", g("import_engine", "stored_bytes_fsck"),
        g("import_restic", "repo_du_bytes"), "B", "import_stored", "vs du of restic repo")
    row("stored size (du of store dir)", g("import_engine", "store_du_bytes"),
        g("import_restic", "repo_du_bytes"), "B", "import_stored")
    for size in ("2GiB", "64GiB"):
        row(f"incremental pwrite+snapshot ({size}), wall", g(f"incremental_engine_{size}"),
            g("incremental_restic"), "s", "incremental_time" if size == "2GiB" else None,
            "vs restic incremental backup", m(f"incremental_engine_{size}", "incremental_restic"))
    row("incremental (2GiB), CPU", g("incremental_engine_2GiB", "cpu_s"),
        g("incremental_restic", "cpu_s"), "s", None, "",
        m("incremental_engine_2GiB", "incremental_restic", "cpu_s"))
    row("incremental stored growth vs changed bytes", g("incremental_engine_2GiB", "stored_growth_bytes"),
        g("incremental_engine_2GiB", "changed_bytes"), "B", "incremental_growth_vs_changed")
    row("  restic repo growth vs changed bytes", g("incremental_restic", "repo_growth_bytes"),
        g("incremental_restic", "changed_bytes"), "B", None)
    row("64 GiB vs 2 GiB: pwrite+create_snapshot", g("incremental_engine_64GiB"),
        g("incremental_engine_2GiB"), "s", "snapshot_64g_vs_2g", "",
        m("incremental_engine_64GiB", "incremental_engine_2GiB"))
    row("64 GiB vs 2 GiB: create_snapshot only", g("incremental_engine_64GiB", "snapshot_s"),
        g("incremental_engine_2GiB", "snapshot_s"), "s", "snapshot_64g_vs_2g", "",
        m("incremental_engine_64GiB", "incremental_engine_2GiB", "snapshot_s"))
    row("64 GiB vs 2 GiB: create_snapshot CPU", g("incremental_engine_64GiB", "snapshot_cpu_s"),
        g("incremental_engine_2GiB", "snapshot_cpu_s"), "s", "snapshot_64g_vs_2g", "",
        m("incremental_engine_64GiB", "incremental_engine_2GiB", "snapshot_cpu_s"))
    row("export snapshot vs restic restore", g("export_engine"),
        g("export_restic", "restore_without_fsync_s"), "s", "export_time",
        "vs restic restore (restic does not fsync)",
        m("export_engine", "export_restic", "wall_s", "restore_without_fsync_s"))
    row("export snapshot vs restore+fsync", g("export_engine"), g("export_restic"), "s",
        "export_time", "", m("export_engine", "export_restic"))
    row("export, CPU", g("export_engine", "cpu_s"), g("export_restic", "cpu_s"), "s", None, "",
        m("export_engine", "export_restic", "cpu_s"))
    for where in ("fresh-volume", "imported-volume"):
        best = (res.get(f"randwrite_engine_{where}", {}).get("best_iops"),
                res.get("randwrite_rawfile", {}).get("best_iops"))
        row(f"4 KiB randwrite IOPS ({where})", g(f"randwrite_engine_{where}", "iops"),
            g("randwrite_rawfile", "iops"), "IOPS", "randwrite_imported" if "imported" in where else None,
            "vs os.pwrite+fsync on a raw file", best)
    row("delete middle snapshot vs create", g("delete_chain", "delete_middle_s"),
        g("delete_chain", "create_incremental_median_s"), "s", None, "",
        (g("delete_chain", "min_delete_middle_s"), g("delete_chain", "create_incremental_min_s")))
    row("delete first (full) snapshot vs create", g("delete_chain", "delete_first_s"),
        g("delete_chain", "create_incremental_median_s"), "s", None, "",
        (g("delete_chain", "min_delete_first_s"), g("delete_chain", "create_incremental_min_s")))
    return rows


def _fmt(v: float, unit: str) -> str:
    if unit == "B":
        return f"{v / MiB:.1f} MiB"
    if unit == "IOPS":
        return f"{v:,.0f}"
    return f"{v:.4f} s" if v < 1 else f"{v:.3f} s"


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [f"{'figure (medians)':44} {'engine':>12} {'baseline':>12} {'ratio':>7} {'(minima)':>8}"
           f" {'goal':>8}  met"]
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        rmin = "" if r["ratio_of_minima"] is None else f"{r['ratio_of_minima']:.3f}"
        out.append(f"{r['what']:44} {_fmt(r['engine'], r['unit']):>12} "
                   f"{_fmt(r['baseline'], r['unit']):>12} {r['ratio']:7.3f} {rmin:>8}"
                   f" {r['goal'] or '':>8}  {met}")
    return out


# --- profiling driver (no pytest): prepare state, then run one engine operation ---------------

PROFILE = CACHE / "profile"


def _cli() -> None:
    ap = argparse.ArgumentParser(description="Run one engine operation alone, for py-spy.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="make images and a template store under CACHE/profile")
    r = sub.add_parser("run", help="run OP REPEAT times on fresh copies (copies made first)")
    r.add_argument("op", choices=["import", "incremental", "export"])
    r.add_argument("--repeat", type=int, default=1)
    s = sub.add_parser("summarize", help="self/total shares from a py-spy raw (collapsed) file")
    s.add_argument("raw")
    s.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    if a.cmd == "prepare":
        base, mut = ensure_images()
        changed_regions(base, mut)
        tpl = PROFILE / "tpl"
        shutil.rmtree(tpl, ignore_errors=True)
        with ebsengine.Engine(tpl) as eng:
            vol = eng.import_image(base)
            snap = eng.create_snapshot(vol.id)
        (PROFILE / "ids.json").write_text(json.dumps({"vol": vol.id, "snap": snap.id}))
        fsync_tree(tpl)
        return
    if a.cmd == "summarize":
        summarize_raw(a.raw, a.top)
        return
    base, mut = ensure_images()
    ids = json.loads((PROFILE / "ids.json").read_text())
    stores = []
    change = read_regions(mut, changed_regions(base, mut))
    for i in range(a.repeat):  # untimed preparation, before any engine work
        d = PROFILE / f"run{i}"
        shutil.rmtree(d, ignore_errors=True)
        if a.op == "incremental":
            clone_dir(PROFILE / "tpl", d)
        stores.append(d)
    os.sync()
    time.sleep(0.5)
    walls = []
    for d in stores:
        if a.op == "incremental":  # only pwrite + create_snapshot inside _profiled_op
            with ebsengine.Engine(d) as eng, eng.open_volume(ids["vol"]) as dev:
                walls.append(_profiled_op(a.op, d, ids, base, change, eng, dev))
        else:
            walls.append(_profiled_op(a.op, d, ids, base, change))
    print(f"{a.op}: wall per run {[round(w, 3) for w in walls]}")
    for d in stores:
        shutil.rmtree(d, ignore_errors=True)
    (PROFILE / "export.img").unlink(missing_ok=True)


def _profiled_op(op: str, d: Path, ids: dict, base: Path, change: list, eng: Any = None,
                 dev: Any = None) -> float:
    t = time.perf_counter()
    if op == "import":
        with ebsengine.Engine(d) as eng:
            vol = eng.import_image(base)
            eng.create_snapshot(vol.id)
    elif op == "incremental":
        apply_change(dev, change)
        eng.create_snapshot(ids["vol"])
    else:
        with ebsengine.Engine(PROFILE / "tpl") as eng:
            eng.export(ids["snap"], PROFILE / "export.img")
    return time.perf_counter() - t


def summarize_raw(path: str, top: int) -> None:
    """Shares per function from ``py-spy record --threads --idle -f raw`` output.

    Main thread: only samples inside ``_profiled_op`` (the untimed preparation is left out);
    percentages are of those samples, i.e. of the operation's wall time. Worker threads
    (the engine's zstd pool): samples not waiting for work, as a percentage of the same
    base (so 50% = half a core busy for the whole operation).
    """
    main_self: collections.Counter[str] = collections.Counter()
    main_incl: collections.Counter[str] = collections.Counter()
    work_self: collections.Counter[str] = collections.Counter()
    n_main = n_work = 0

    def short(f: str) -> str:
        if " (" not in f:
            return f
        name, loc = f.split(" (", 1)
        return f"{name} ({loc.rstrip(')').rsplit('/', 1)[-1]})"

    with open(path) as fh:
        lines = fh.readlines()
    for line in lines:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        frames = stack.split(";")
        cnt = int(n)
        if any("_profiled_op" in f for f in frames):
            n_main += cnt
            main_self[short(frames[-1])] += cnt
            for name in {short(f).split(" (")[0] + " (" + short(f).split(" (")[1].split(":")[0]
                         if " (" in f else f for f in frames}:
                main_incl[name] += cnt
        elif any(f.startswith("_worker (") for f in frames):
            leaf = frames[-1]
            if "threading.py" in leaf or "queue.py" in leaf or leaf.startswith("_worker ("):
                continue  # an idle pool thread waiting for work
            n_work += cnt
            work_self[short(leaf)] += cnt
    if not n_main:
        print("no samples inside _profiled_op")
        return
    print(f"{n_main} main-thread samples in the operation; worker samples {n_work} "
          f"({n_work / n_main * 100:.0f}% of a core on average)")
    print("-- main thread, self (line) --")
    for name, c in main_self.most_common(top):
        print(f"{c / n_main * 100:6.1f}%  {name}")
    print("-- main thread, inclusive (function) --")
    for name, c in main_incl.most_common(top):
        print(f"{c / n_main * 100:6.1f}%  {name}")
    print("-- worker threads, self (line), % of main samples --")
    for name, c in work_self.most_common(top):
        print(f"{c / n_main * 100:6.1f}%  {name}")


if __name__ == "__main__":
    _cli()
