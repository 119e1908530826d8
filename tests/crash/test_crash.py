"""DESIGN invariant 6 (durable when acknowledged): a writer process is killed with SIGKILL
at random points, many times over one store; after each kill the store reopens with no
repair (fsck clean), every flushed write reads back, later ones are either all there up to
the next commit point or not at all (never garbage), and every snapshot holds exactly its
writes. Readers in other processes work while a writer runs.

The writer and the deterministic write stream live in ``tests/crash/crash_writer.py``.
``EBSENGINE_SLOW=1`` runs many more kills.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import crash_writer as cw
import pytest

import ebsengine

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SLOW = os.environ.get("EBSENGINE_SLOW", "0") not in ("", "0")
ITERATIONS = 150 if SLOW else 25
BUDGET_S = 600.0 if SLOW else 60.0
STARTUP_TIMEOUT_S = 60.0


class Child:
    """A helper process whose stdout is read unbuffered, line by line.

    (A buffered ``readline`` may read ahead past the line it returns, and
    ``Popen.communicate`` reads the pipe's descriptor directly: lines read ahead would be
    lost, and with them the writer's promises.)
    """

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 -- outlives __init__; closed in kill()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "crash_writer.py"), *args],
                                     stdout=subprocess.PIPE, stderr=self.err, bufsize=0,
                                     cwd=REPO, env=env)
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.lines: list[str] = []  # every complete line read so far
        self.stderr: str | None = None  # once it is dead

    def _fill(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        chunk = os.read(self.fd, 65536)
        self.buf += chunk
        return bool(chunk)

    def _split(self) -> None:
        *complete, self.buf = self.buf.split(b"\n")
        self.lines += [line.decode() for line in complete]

    def read_line(self, timeout: float) -> str | None:
        """The next line within ``timeout`` seconds, or None."""
        seen = len(self.lines)
        deadline = time.monotonic() + timeout
        while len(self.lines) == seen:
            if not self._fill(deadline - time.monotonic()):
                return None
            self._split()
        return self.lines[seen]

    def kill(self) -> tuple[list[str], str]:
        """SIGKILL the process; every complete line it printed, and its stderr. (A line cut
        short by the kill was never a promise and is dropped.)"""
        if self.stderr is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=60)
            while self._fill(10.0):
                pass
            self._split()
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self.err.seek(0)
            self.stderr = self.err.read().decode(errors="replace")
            self.err.close()
        return self.lines, self.stderr

    def finish(self, timeout: float) -> tuple[int, list[str], str]:
        """Wait for a process that ends by itself."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        lines, err = self.kill()
        return self.proc.returncode, lines, err


@dataclass
class Tracker:
    """What the writers promised so far, and the durable point found at the last check."""

    replay: cw.Replayer = field(default_factory=cw.Replayer)
    durable: int = -1                     # records <= durable are on the volume
    volume: str | None = None
    snapshots: dict[str, int] = field(default_factory=dict)  # reported, not deleted
    deleted: set[str] = field(default_factory=set)
    restored: dict[str, int] = field(default_factory=dict)  # reported, not deleted
    deleted_vols: set[str] = field(default_factory=set)
    kills: int = 0
    history: list[list[str]] = field(default_factory=list)
    ended_on_snapshot: bool = False       # the last run's last line was "snap"
    restores_seen: set[str] = field(default_factory=set)

    def absorb(self, lines: list[str]) -> int:
        """Take a run's output; returns the last record it reported durable."""
        last = self.durable
        self.ended_on_snapshot = bool(lines) and lines[-1].startswith("snap ")
        for line in lines:
            word, *rest = line.split()
            if word == "ready":
                assert self.volume in (None, rest[0]), "the writer changed volumes"
                self.volume = rest[0]
            elif word == "flushed":
                last = int(rest[0])
            elif word == "snap":
                self.snapshots[rest[0]] = int(rest[1])
                last = int(rest[1])
            elif word == "delsnap":
                self.snapshots.pop(rest[0], None)
                self.deleted.add(rest[0])
            elif word == "restore":
                self.restored[rest[0]] = int(rest[1])
            elif word == "delvol":
                self.restored.pop(rest[0], None)
                self.deleted_vols.add(rest[0])
            else:
                assert word == "done", line
        return last

    def verify(self, path: str, last_reported: int) -> None:
        """Reopen the store and check it against the promises; advance ``durable``."""
        assert last_reported >= self.durable
        with ebsengine.Engine(path) as eng:
            eng.own(wait=cw.OWN_WAIT)  # opening the volume owns the store (see crash_writer)
            report = eng.fsck()
            assert report.ok, report.problems
            all_vols = eng.list_volumes()
            vols = [v for v in all_vols if "rec" not in v.tags]
            assert len(vols) <= 1
            if not vols:  # killed before the volume's creation committed
                assert self.volume is None and last_reported == -1 and not all_vols
                return
            vol = vols[0].id
            assert self.volume in (None, vol)
            with cw.open_volume_waiting(eng, vol) as dev:
                got = dev.pread(cw.REGION, 0)
                # nothing outside the region was ever written
                assert dev.extents(cw.REGION, dev.size - cw.REGION) == \
                    [(dev.size - cw.REGION, 3)]
            # The reported point, or the next commit if it landed before the kill.
            candidates = [last_reported, cw.next_commit(last_reported)]
            matches = [n for n in candidates if got == self.replay.state(n)]
            if not matches:
                want = self.replay.state(last_reported)
                bad = next(k for k in range(cw.REGION) if got[k] != want[k])
                pytest.fail(f"volume after kill {self.kills} matches neither record "
                            f"{candidates[0]} nor {candidates[1]}; first differing byte {bad} "
                            f"(flushed data lost or garbage written)")
            self.durable = max(matches)

            present = {s.id: s for s in eng.list_snapshots()}
            for sid in [sid for sid in self.snapshots if sid not in present]:
                # Only the writer's own deletion after its last reported snapshot, killed
                # before it could say "delsnap", may remove a reported snapshot.
                rec = {k: int(v.description.split()[1]) for k, v in present.items()}
                rec[sid] = self.snapshots[sid]
                victim = sorted(rec, key=rec.__getitem__)[1] \
                    if len(rec) > cw.MAX_LIVE_SNAPSHOTS else None
                assert self.ended_on_snapshot and sid == victim, \
                    f"reported snapshot {sid} (rec {self.snapshots[sid]}) is gone"
                del self.snapshots[sid]
                self.deleted.add(sid)
            for sid in self.deleted:
                assert sid not in present, f"deleted snapshot {sid} is back"
            for sid, snap in present.items():
                assert snap.state == "completed" and snap.volume_id == vol
                n = int(snap.description.split()[1])
                assert n <= self.durable, f"snapshot {sid} of rec {n} beyond the volume"
                assert sid not in self.snapshots or self.snapshots[sid] == n
                with eng.open_snapshot(sid) as ro:
                    assert ro.pread(cw.REGION, 0) == self.replay.state(n), \
                        f"snapshot {sid} (rec {n}) does not hold exactly its writes"
                    assert ro.extents(cw.REGION, ro.size - cw.REGION) == \
                        [(ro.size - cw.REGION, 3)]
            # Volumes restored from snapshots: exactly their snapshot's writes, whatever
            # happened to that snapshot since. The writer deletes older ones only after
            # reporting a newer one, so a reported one may be gone only if another exists.
            # Each run leaves at most one it did not report (killed between the create and
            # the "restore" line); a count bound would not hold, since a run killed before its
            # "delvol"s leaves the older ones for the next (two such runs: four volumes).
            restored = {v.id: int(v.tags["rec"]) for v in all_vols if "rec" in v.tags}
            unreported = set(restored) - set(self.restored)
            assert len(unreported) <= 1, (unreported, self.restored)
            self.restored.update({v: restored[v] for v in unreported})
            for vid, n in self.restored.items():
                if vid not in restored:
                    assert set(restored) - {vid}, f"restored volume {vid} (rec {n}) is gone"
                    self.deleted_vols.add(vid)
            self.restored = {v: n for v, n in self.restored.items() if v in restored}
            for vid in self.deleted_vols:
                assert vid not in restored, f"deleted volume {vid} is back"
            for vid, n in restored.items():
                assert n <= self.durable
                with cw.open_volume_waiting(eng, vid) as dev:
                    assert dev.pread(cw.REGION, 0) == self.replay.state(n), \
                        f"volume {vid} restored from rec {n} does not hold exactly its writes"
            self.restores_seen |= set(restored)
            self.replay.keep_only({int(s.description.split()[1]) for s in present.values()}
                                  | set(restored.values()) | {self.durable})


def run_and_kill(path: str, t: Tracker, rnd: random.Random) -> None:
    start = t.durable + 1
    child = Child(path, "--start", str(start), "--stop", str(start + 100_000))
    try:
        if rnd.random() < 0.2:
            # during interpreter start, Engine open or volume creation
            time.sleep(rnd.uniform(0.0, 0.8))
        else:
            line = child.read_line(STARTUP_TIMEOUT_S)
            assert line and line.startswith("ready"), (line, child.proc.poll())
            time.sleep(rnd.uniform(0.0, 0.4))
    finally:
        lines, err = child.kill()
    assert child.proc.returncode == -signal.SIGKILL, (child.proc.returncode, err)
    t.kills += 1
    t.history.append(lines)
    last = t.absorb(lines)
    try:
        t.verify(path, last)
    except AssertionError as exc:
        runs = "\n".join(f"  run {t.kills - k}: {' | '.join(run[:3])} ... {' | '.join(run[-6:])}"
                         for k, run in enumerate(reversed(t.history[-4:])))
        raise AssertionError(f"{exc}\nafter kill {t.kills}; the last runs printed:\n{runs}") \
            from exc


#: the RADOS lock duration of the rados:// stores here: each kill leaves the dead writer's
#: owner lock (and maybe its metadata writer lock), which the next opener waits out
RADOS_LOCK_S = 2


@pytest.fixture(params=["lmdb", pytest.param("rados", marks=pytest.mark.needs_ceph)])
def crash_store(request, tmp_path: Path) -> str:
    """The store the writers are killed over: an LMDB directory, or a rados:// store on the
    test cluster (fresh pools, dropped after the test; the pools outlive every kill)."""
    if request.param == "lmdb":
        return str(tmp_path / "store")
    pools = request.getfixturevalue("rados_pools")
    return pools.url(workdir=str(tmp_path / "workdir"), lease=RADOS_LOCK_S)


@pytest.mark.slow
def test_sigkill_loses_nothing_flushed(crash_store: str) -> None:
    path = crash_store
    rnd = random.Random(int(os.environ.get("EBSENGINE_CRASH_SEED", "6")))
    t = Tracker()
    began = time.monotonic()
    for _ in range(ITERATIONS):
        if time.monotonic() - began > BUDGET_S:
            break
        run_and_kill(path, t, rnd)
    print(f"{t.kills} kills in {time.monotonic() - began:.0f} s; durable up to record "
          f"{t.durable}, {len(t.snapshots)} live snapshots, {len(t.restores_seen)} restores")
    assert t.kills >= min(ITERATIONS, 8), f"only {t.kills} kills fit the time budget"
    assert t.durable > 5 * cw.SNAP_EVERY, "the writers made too little progress to test"
    assert t.snapshots, "no snapshot was ever reported"
    assert len(t.restores_seen) >= 2, "too few restored volumes to test"


@pytest.mark.slow
def test_readers_in_other_processes_while_writer_runs(crash_store: str) -> None:
    path = crash_store
    t = Tracker()
    writer = Child(path, "--start", "0")
    readers: list[Child] = []
    try:
        # Let the writer take two snapshots first, so the readers have something to read.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while sum(line.startswith("snap ") for line in writer.lines) < 2:
            line = writer.read_line(deadline - time.monotonic())
            assert line, f"writer stalled: {writer.lines[-3:]}, rc={writer.proc.poll()}"
        readers = [Child(path, "--read", "2.5") for _ in range(2)]
        before = len(writer.lines)
        while any(r.proc.poll() is None for r in readers):
            writer.read_line(0.05)  # keep the writer's pipe drained meanwhile
        during = len(writer.lines)
        results = [r.finish(60) for r in readers]
    finally:
        lines, err = writer.kill()
        for r in readers:
            r.kill()
    for rc, out, rerr in results:
        assert rc == 0 and len(out) == 1, (out, rerr)
        word, verified, _, _skipped = out[0].split()
        assert word == "verified" and int(verified) >= 2, out
    assert writer.proc.returncode == -signal.SIGKILL, err
    assert any(x.startswith(("flushed", "snap")) for x in lines[before:during]), \
        "the writer committed nothing while the readers ran"
    t.verify(path, t.absorb(lines))
