"""Helper process for tests/crash/test_crash.py (DESIGN invariant 6): a writer to be killed with
SIGKILL at random points, and a reader that runs beside it.

The write stream is a deterministic function of a global record number ``i`` (see
:func:`record`), so a run can continue where the durable state of an earlier, killed run
ended, and the test can compute what any prefix of the stream leaves on the volume
(:class:`Replayer`).

``STORE`` is a path or store URL (the crash tests also run on ``rados://`` stores).

Writer (``crash_writer.py STORE --start N``): opens ``ebsengine.Engine(STORE)`` with its
background folder merging patches into chunks continuously, uses the
store's volume (creates it if there is none) and applies records ``N, N+1, ...``. After
every ``FLUSH_EVERY`` records it commits; every ``SNAP_EVERY`` records that commit is a
snapshot instead of a flush. Each line it prints is flushed to stdout after the engine
call returned, so a line the parent reads is a promise:

* ``ready <volume id> <start>``: the volume exists;
* ``flushed <i>``: records ``<= i`` are durable;
* ``snap <snapshot id> <i>``: likewise, and the snapshot holds exactly records ``<= i``
  (its description is ``rec <i>``, so unreported snapshots can be checked too);
* ``delsnap <snapshot id>``: that snapshot is deleted;
* ``restore <volume id> <i>``: a volume created from the snapshot of record ``i`` (tagged
  ``rec=<i>``, never written) exists; then ``delvol <volume id>`` for each such volume
  but the two newest, as it is deleted.

Reader (``crash_writer.py STORE --read SECONDS``): opens its own Engine on the store
(read-only: the writer, with a device open, owns the store; see ebsengine.storage.owner) and
for SECONDS reads every completed snapshot it finds in a loop, comparing each with the
replayed stream; a snapshot deleted under it is skipped. Prints ``verified <n> skipped <m>``
and exits 0, or prints ``MISMATCH ...`` and exits 1.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported at run time only after sys.path names this checkout
    from ebsengine import Engine

CHUNK = 64 * 1024
REGION = 4 * 1024 * 1024          # every record falls inside [0, REGION)
VOLUME_GIB = 1
FLUSH_EVERY = 8                   # a commit after records FLUSH_EVERY-1, 2*FLUSH_EVERY-1, ...
SNAP_EVERY = 5 * FLUSH_EVERY      # ... of which every fifth is a snapshot
MAX_LIVE_SNAPSHOTS = 4            # beyond this, the second oldest is deleted
RESTORE_EVERY = 2 * SNAP_EVERY    # then a volume is restored from a snapshot
SEED = 0x5EB5
#: seconds a writer or a check waits for a volume: an LMDB store's owner lock goes with its
#: dead holder, a rados:// store's volume lease only after its duration (the URL's ``lease``)
OWN_WAIT = 60.0


def open_volume_waiting(eng, vid: str, wait: float = OWN_WAIT):  # type: ignore[no-untyped-def]
    """``eng.open_volume(vid)``, waiting while a killed predecessor's lease lasts."""
    import time

    from ebsengine.errors import VolumeInUse
    deadline = time.monotonic() + wait
    while True:
        try:
            return eng.open_volume(vid)
        except VolumeInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
LENGTHS = (1, 7, 511, 512, 4096, 3 * 4096 + 17, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK,
           100_000, 3 * CHUNK)


def record(i: int) -> tuple[str, int, bytes | int]:
    """Record ``i``: ``("write", offset, data)`` or ``("trim", offset, length)``. Unaligned
    and aligned, small and multi-chunk, compressible and not; they overlap, so later
    records overwrite parts of earlier ones."""
    r = random.Random(i * 1_000_003 + SEED)
    if r.random() < 0.08:
        length = r.randrange(1, 3 * CHUNK)
        return "trim", r.randrange(0, REGION - length), length
    length = r.choice(LENGTHS)
    off = r.randrange(0, REGION - length)
    if r.random() < 0.4:
        off -= off % 4096
    if r.random() < 0.3:
        data = (f"record {i} compresses well; ".encode() * (length // 20 + 1))[:length]
    else:
        data = r.randbytes(length)
    return "write", off, data


def is_commit(i: int) -> bool:
    return (i + 1) % FLUSH_EVERY == 0


def is_snapshot(i: int) -> bool:
    return (i + 1) % SNAP_EVERY == 0


def next_commit(i: int) -> int:
    """The first commit point after record ``i``."""
    return ((i + 1) // FLUSH_EVERY + 1) * FLUSH_EVERY - 1


def apply(buf: bytearray, i: int) -> None:
    kind, off, payload = record(i)
    if kind == "write":
        assert isinstance(payload, bytes)
        buf[off:off + len(payload)] = payload
    else:
        assert isinstance(payload, int)
        buf[off:off + payload] = bytes(payload)


class Replayer:
    """Content of ``[0, REGION)`` after records ``0..n`` (``n = -1``: nothing written).

    Keeps a few checkpoints so that asking for a later ``n`` costs only the new records.
    """

    def __init__(self) -> None:
        self._points: dict[int, bytes] = {-1: bytes(REGION)}

    def state(self, n: int) -> bytes:
        if n in self._points:
            return self._points[n]
        start = max(p for p in self._points if p <= n)
        buf = bytearray(self._points[start])
        for i in range(start + 1, n + 1):
            apply(buf, i)
        out = bytes(buf)
        self._points[n] = out
        return out

    def keep_only(self, needed: set[int]) -> None:
        """Forget checkpoints not in ``needed`` (the newest one always stays)."""
        newest = max(self._points)
        self._points = {n: s for n, s in self._points.items()
                        if n in needed or n == newest or n == -1}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_writer(store: str, start: int, stop: int) -> int:
    import ebsengine
    from ebsengine.block import folder

    # Fold patches (the partial writes) all the time, so SIGKILL lands inside folds too.
    folder.QUIET, folder.INTERVAL = 0.0, 0.02
    eng = ebsengine.Engine(store)
    eng.own(wait=OWN_WAIT)
    vols = [v for v in eng.list_volumes() if "rec" not in v.tags]
    vol = vols[0].id if vols else eng.create_volume(size_gib=VOLUME_GIB).id
    say(f"ready {vol} {start}")
    with open_volume_waiting(eng, vol) as dev:
        for i in range(start, stop):
            kind, off, payload = record(i)
            if kind == "write":
                dev.pwrite(payload, off)  # type: ignore[arg-type]
            else:
                dev.trim(off, payload)  # type: ignore[arg-type]
            if is_snapshot(i):
                snap = eng.create_snapshot(vol, description=f"rec {i}")
                say(f"snap {snap.id} {i}")
                live = eng.list_snapshots(vol)
                if len(live) > MAX_LIVE_SNAPSHOTS:
                    victim = sorted(live, key=lambda s: int(s.description.split()[1]))[1]
                    eng.delete_snapshot(victim.id)
                    say(f"delsnap {victim.id}")
                if (i + 1) % RESTORE_EVERY == 0:
                    restore_one(eng, vol)
            elif is_commit(i):
                dev.flush()
                say(f"flushed {i}")
    eng.close()
    say("done")
    return 0


def restore_one(eng: Engine, vol: str) -> None:
    """Restore a volume from a middle snapshot, then delete all restored volumes but the
    two newest (so one lives on while the writer deletes the snapshot it came from)."""
    live = sorted(eng.list_snapshots(vol), key=lambda s: int(s.description.split()[1]))
    src = live[len(live) // 2]
    n = int(src.description.split()[1])
    old = [v.id for v in sorted((v for v in eng.list_volumes() if "rec" in v.tags),
                                key=lambda v: v.create_time)][:-1]
    new = eng.create_volume(snapshot_id=src.id, tags={"rec": str(n)})
    say(f"restore {new.id} {n}")
    for vid in old:
        eng.delete_volume(vid)
        say(f"delvol {vid}")


def run_reader(store: str, seconds: float) -> int:
    import ebsengine
    from ebsengine.errors import IncorrectState, SnapshotNotFound

    replay = Replayer()
    verified = skipped = 0
    deadline = time.monotonic() + seconds
    with ebsengine.Engine(store, readonly=True) as eng:
        while time.monotonic() < deadline:
            for snap in eng.list_snapshots():
                n = int(snap.description.split()[1])
                try:
                    with eng.open_snapshot(snap.id) as ro:
                        got = ro.pread(REGION, 0)
                        tail = ro.pread(CHUNK, ro.size - CHUNK)
                except (SnapshotNotFound, IncorrectState):
                    skipped += 1  # deleted by the writer meanwhile
                    continue
                want = replay.state(n)
                if got != want or tail != bytes(CHUNK):
                    bad = next((k for k in range(REGION) if got[k] != want[k]), None)
                    say(f"MISMATCH {snap.id} rec {n} first differing byte {bad}")
                    return 1
                verified += 1
            replay.keep_only(set())
    say(f"verified {verified} skipped {skipped}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--start", type=int, default=0, help="first record number to write")
    ap.add_argument("--stop", type=int, default=1 << 30, help="stop before this record")
    ap.add_argument("--read", type=float, default=None, metavar="SECONDS",
                    help="be a reader for SECONDS instead of a writer")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if args.read is not None:
        return run_reader(args.store, args.read)
    return run_writer(args.store, args.start, args.stop)


if __name__ == "__main__":
    sys.exit(main())
