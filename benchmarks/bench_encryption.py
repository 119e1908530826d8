"""What encryption at rest costs: the same work on a plaintext and an encrypted volume, in the
same run, alternating, and the ratio encrypted/plaintext (goal: at most 1.10, README).

1. ``import``: ``Engine(path)`` + ``import_image(image[, encrypted=True])`` + ``create_snapshot``
   on a fresh store (the master key file is made once, outside the timing).
2. ``nbdcopy in``: ``nbdcopy --flush IMAGE URI`` into a fresh volume served by
   ``ebsengine.nbd.server.serve`` over its Unix socket.
3. ``nbdcopy out``: ``nbdcopy URI null:`` of that volume (a new connection: a fresh server
   process, so no decoded chunk is cached).

With ``--out-only --floor`` a third server is timed too: the plaintext volume served by a
process whose chunk decode also makes the calls an encrypted read makes (the keyed BLAKE2b
message key, ``AESGCM`` and its decrypt of a ciphertext as long as the stored value, to the
nearest 512 bytes), on a fixed key and dummy ciphertexts and with none of the engine's own
sealed-path code. Its ratio over plaintext is the cost of the cipher alone in this process,
the floor any engine code around it could reach.

Usage: ``PYTHONPATH=. python benchmarks/bench_encryption.py [--image FILE] [--size-mib 2048]
[--reps 2] [--out-only [--floor]]``. Without ``--image`` the benchmark image of ``../shared/bench/gen_image.py`` is
generated once into ``$EBSENGINE_BENCH_CACHE`` (default ``/var/tmp/ebsengine-bench``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GEN_IMAGE = ROOT.parent / "shared" / "bench" / "gen_image.py"
GiB = 1024**3
GOAL = 1.10


def sh(cmd: list[str], timeout: float = 900, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout, **kw)


def ensure_image(path: Path | None, size_mib: int) -> Path:
    if path is not None:
        return path
    cache = Path(os.environ.get("EBSENGINE_BENCH_CACHE", "/var/tmp/ebsengine-bench"))
    img = cache / f"gen_image_{size_mib}m.raw"
    if not img.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"generating {img} ...", flush=True)
        sh([sys.executable, str(GEN_IMAGE), str(img) + ".tmp", "--size-mib", str(size_mib)])
        os.rename(str(img) + ".tmp", img)
    return img


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def run_py(code: str) -> str:
    return sh([sys.executable, "-c", code], env=env()).stdout.strip()


def import_once(image: Path, store: Path, encrypted: bool) -> tuple[float, float]:
    """Wall and CPU seconds of import + first snapshot, in a fresh process."""
    code = (
        "import time, resource, ebsengine\n"
        "t0 = time.perf_counter()\n"
        f"e = ebsengine.Engine({str(store)!r})\n"
        f"v = e.import_image({str(image)!r}, encrypted={encrypted})\n"
        "e.create_snapshot(v.id); e.close()\n"
        "r = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(time.perf_counter() - t0, r.ru_utime + r.ru_stime)\n"
    )
    wall, cpu = run_py(code).split()
    return float(wall), float(cpu)


#: a ``serve`` process's preamble for ``--floor``: every chunk decode also pays the cipher
#: calls of a sealed value of its size (see the module doc), then decodes as plaintext
FLOOR = """
import hashlib, os
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
import ebsengine.storage.chunks as _chunks
_plain_decode = _chunks.decode_chunk
_prf = hashlib.blake2b(key=os.urandom(32), digest_size=32, person=b"ebsengine/value")
_salt = os.urandom(32)
_p = _prf.copy(); _p.update(_salt); _key = _p.digest()
_aad = b"ebsengine/value/v1" + bytes(17) + b"chunk" + bytes(21)
_ct = {}  # one dummy ciphertext per 512-byte length class (of the nearest length)
def _decode(value, key=None, keys=None):
    n = max(1, round(len(value) / 512)) * 512
    ct = _ct.get(n)
    if ct is None:
        ct = _ct[n] = AESGCM(_key).encrypt(bytes(12), os.urandom(n), _aad)
    p = _prf.copy(); p.update(_salt)
    AESGCM(p.digest()).decrypt(bytes(12), ct, _aad)
    return _plain_decode(value, key, keys)
_chunks.decode_chunk = _decode
"""


class Served:
    """``serve`` on a store holding one volume (made plaintext or encrypted)."""

    def __init__(self, tmp: Path, size: int, encrypted: bool, preamble: str = "") -> None:
        self.preamble = preamble
        self.store = tmp / "store"
        self.sock = tmp / "nbd.sock"
        code = (f"import ebsengine; e = ebsengine.Engine({str(self.store)!r}); "
                f"print(e.create_volume(size_gib={max(1, -(-size // GiB))}, "
                f"encrypted={encrypted}).id); e.close()")
        self.vol = run_py(code)
        self.uri = f"nbd+unix:///{self.vol}?socket={self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        code = (self.preamble + "\nimport sys; from ebsengine.nbd.server import serve; "
                f"sys.exit(serve({str(self.store)!r}, {str(self.sock)!r}))")
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(400):
            if subprocess.run(["nbdinfo", "--size", self.uri], capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("serve did not come up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(120)
            self.proc = None


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    sh(cmd)
    return time.perf_counter() - t0


def out_only(tmp: Path, image: Path, size: int, reps: int,
             rec: Callable[[str, bool, float], None], floor: bool = False) -> None:
    """``nbdcopy out`` alone, for iterating on the read path: each volume is filled once
    (with ``floor``, the plaintext one is also served with :data:`FLOOR`)."""
    srvs = {}
    for enc in (False, True):
        d = tmp / f"out-{enc}"
        d.mkdir()
        srv = srvs[enc] = Served(d, size, enc)
        srv.start()
        try:
            sh(["nbdcopy", "--flush", str(image), srv.uri])
        finally:
            srv.stop()
    kinds: list[bool | str] = [False, True, "floor"] if floor else [False, True]
    for rep in range(reps):
        for kind in (kinds if rep % 2 == 0 else kinds[::-1]):
            srv = srvs[kind is True]
            srv.preamble = FLOOR if kind == "floor" else ""
            srv.start()
            try:
                took = timed(["nbdcopy", srv.uri, "null:"])
            finally:
                srv.stop()
            if kind == "floor":
                rec("nbdcopy out s, floor", True, took)
            else:
                rec("nbdcopy out s", bool(kind), took)
                if floor and kind is False:  # the floor's row compares with plaintext too
                    rec("nbdcopy out s, floor", False, took)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--no-nbd", action="store_true", help="only the import benchmark")
    ap.add_argument("--floor", action="store_true",
                    help="with --out-only: also time the plaintext volume served with the "
                         "cipher's calls added to each chunk decode (see the module doc)")
    ap.add_argument("--out-only", action="store_true",
                    help="only nbdcopy out: fill one plaintext and one encrypted volume once, "
                         "then copy each out --reps times (a fresh server per copy, "
                         "alternating order)")
    a = ap.parse_args(argv)
    image = ensure_image(a.image, a.size_mib)
    size = image.stat().st_size
    nbd = not a.no_nbd and all(shutil.which(t) for t in ("nbdcopy", "nbdinfo"))
    res: dict[str, dict[bool, list[float]]] = {}

    def rec(key: str, enc: bool, value: float) -> None:
        res.setdefault(key, {False: [], True: []})[enc].append(value)

    with tempfile.TemporaryDirectory(prefix="ebs-bench-enc-", dir="/var/tmp") as td:
        tmp = Path(td)
        os.environ["EBSENGINE_MASTER_KEY"] = str(tmp / "master.key")
        run_py(f"import ebsengine; e = ebsengine.Engine({str(tmp / 'warm')!r}); "
               "e.create_volume(1, encrypted=True); e.close()")  # makes the master key
        if a.out_only:
            if not nbd:
                raise SystemExit("--out-only needs nbdcopy and nbdinfo")
            out_only(tmp, image, size, a.reps, rec, a.floor)
        for rep in range(0 if a.out_only else a.reps):
            for enc in ((False, True) if rep % 2 == 0 else (True, False)):
                d = tmp / f"imp-{rep}-{enc}"
                wall, cpu = import_once(image, d / "store", enc)
                rec("import+snapshot s", enc, wall)
                rec("import+snapshot cpu s", enc, cpu)
                shutil.rmtree(d)
                if not nbd:
                    continue
                d = tmp / f"nbd-{rep}-{enc}"
                d.mkdir()
                srv = Served(d, size, enc)
                srv.start()
                try:
                    rec("nbdcopy in s", enc, timed(["nbdcopy", "--flush", str(image), srv.uri]))
                finally:
                    srv.stop()
                srv.start()
                try:
                    rec("nbdcopy out s", enc, timed(["nbdcopy", srv.uri, "null:"]))
                finally:
                    srv.stop()
                shutil.rmtree(d)
    print(f"image {image} ({size / GiB:.2f} GiB), {a.reps} reps, medians; goal ratio <= {GOAL}")
    print(f"{'':24} {'plaintext':>10} {'encrypted':>10} {'ratio':>7}")
    for key, by in res.items():
        p, e = statistics.median(by[False]), statistics.median(by[True])
        print(f"{key:24} {p:10.2f} {e:10.2f} {e / p:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
