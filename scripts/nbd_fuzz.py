#!/usr/bin/env python3
"""Long random-frame fuzz of the NBD server (the test suite runs a 3-second version).

Starts an in-process NbdServer on a fresh store in a tmp dir, runs ``--clients`` fuzzing
clients in parallel for ``--seconds`` (random handshake options, random requests with
random flags/offsets/lengths, garbage bytes, half-sent frames), while one well-behaved
client keeps writing and verifying its own region. Afterwards it checks that:

* the server still serves new connections;
* a second volume and a snapshot that nobody fuzzed are byte-identical to before;
* the well-behaved client never saw a wrong byte or an error;
* ``engine.fsck()`` is clean.

Exit status 0 on success, 1 on any violation.

    python scripts/nbd_fuzz.py --seconds 120 --clients 4 --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import nbd_client as nc  # noqa: E402
from ebsengine.nbd.server import NbdServer  # noqa: E402

MiB = 1 << 20


def digest(engine: Any, ident: str) -> str:
    dev = engine.open_snapshot(ident) if ident.startswith("snap-") else engine.open_volume(ident)
    try:
        h = hashlib.sha256(repr(dev.extents(0, dev.size)).encode())
        for off in range(0, dev.size, 32 * MiB):
            h.update(dev.pread(min(32 * MiB, dev.size - off), off))
        return h.hexdigest()
    finally:
        dev.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--fake-engine", action="store_true", help="use the in-memory stand-in")
    args = ap.parse_args(argv)
    print(f"nbd_fuzz: seed={args.seed} seconds={args.seconds} clients={args.clients}")

    with tempfile.TemporaryDirectory(prefix="nbd-fuzz-") as tmp:
        store = Path(tmp) / "store"
        engine = nc.MemEngine(store) if args.fake_engine else nc.make_engine(store)
        failures: list[str] = []
        try:
            target = engine.create_volume(size_gib=1)
            # the honest client's own volume: the fuzzers write, trim and zero anywhere in
            # theirs (a random TRIM can span half the volume), so a shared one proves nothing
            honest_vol = engine.create_volume(size_gib=1)
            bystander = engine.create_volume(size_gib=1)
            dev = engine.open_volume(bystander.id)
            dev.pwrite(os.urandom(3 * MiB), 5 * MiB)
            dev.flush()
            dev.close()
            snap = engine.create_snapshot(bystander.id)
            before = {i: digest(engine, i) for i in (bystander.id, snap.id)}

            with NbdServer(engine, unix_path=Path(tmp) / "nbd.sock", tcp=None) as srv:
                addr = str(srv.unix_path)
                stop = threading.Event()
                counts = [0] * args.clients

                def fuzzer(i: int) -> None:
                    counts[i] = nc.fuzz(addr, target.id, args.seconds, args.seed * 1000 + i)

                def honest() -> None:
                    rng = random.Random(args.seed)
                    model = bytearray(8 * MiB)
                    base = 512 * MiB
                    try:
                        with nc.NbdClient(addr) as c:
                            c.go(honest_vol.id)
                            while not stop.is_set():
                                off = rng.randrange(0, len(model) - 70000)
                                data = rng.randbytes(rng.randrange(1, 70000))
                                c.pwrite(base + off, data)
                                model[off : off + len(data)] = data
                                off = rng.randrange(0, len(model) - 70000)
                                got = c.pread(base + off, 70000)
                                if got != model[off : off + 70000]:
                                    failures.append(f"honest client read wrong data at {off}")
                                    return
                    except Exception as exc:  # noqa: BLE001
                        failures.append(f"honest client failed: {exc!r}")

                threads = [threading.Thread(target=fuzzer, args=(i,)) for i in range(args.clients)]
                h = threading.Thread(target=honest)
                h.start()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                stop.set()
                h.join()
                print(f"nbd_fuzz: {sum(counts)} random frames sent")
                if not nc.wait_for(lambda: srv.connection_count == 0, 60):
                    failures.append(f"{srv.connection_count} connections still open after the fuzz")
                with nc.NbdClient(addr) as c:
                    c.go(target.id)
                    c.pwrite(0, b"still alive")
                    if c.pread(0, 11) != b"still alive":
                        failures.append("server no longer serves correctly")
            after = {i: digest(engine, i) for i in (bystander.id, snap.id)}
            if after != before:
                failures.append("an unfuzzed volume or snapshot changed")
            report = engine.fsck()
            if not report.ok:
                failures.append(f"fsck: {report.problems}")
        finally:
            engine.close()
    for f in failures:
        print("FAIL:", f)
    print("nbd_fuzz:", "OK" if not failures else "FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
