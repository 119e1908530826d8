"""DESIGN invariant 6 (durable when acknowledged): a writer process is killed with SIGKILL
at random points, many times over one store; after each kill the store reopens with no
repair (fsck clean), every flushed write reads back, later ones are either all there up to
the next commit point or not at all (never garbage), and every snapshot holds exactly its
writes. Readers in other processes work while a writer runs.

The writer and the deterministic write stream live in ``tests/crash_writer.py``.
``EBSENGINE_SLOW=1`` runs many more kills.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import crash_writer as cw
import ebsengine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SLOW = os.environ.get("EBSENGINE_SLOW", "0") not in ("", "0")
ITERATIONS = 150 if SLOW else 25
BUDGET_S = 600.0 if SLOW else 60.0
STARTUP_TIMEOUT_S = 60.0


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(HERE / "crash_writer.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """One stdout line of ``proc`` within ``timeout`` seconds (None: none came)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    return proc.stdout.readline()


def kill(proc: subprocess.Popen[str]) -> tuple[list[str], str]:
    """SIGKILL ``proc``; every line it printed and its stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    return out.splitlines(), err


@dataclass
class Tracker:
    """What the writers promised so far, and the durable point found at the last check."""

    replay: cw.Replayer = field(default_factory=cw.Replayer)
    durable: int = -1                     # records <= durable are on the volume
    volume: str | None = None
    snapshots: dict[str, int] = field(default_factory=dict)  # reported, not deleted
    deleted: set[str] = field(default_factory=set)
    kills: int = 0
    records: int = 0
    ended_on_snapshot: bool = False       # the last run's last line was "snap"

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
            else:
                assert word == "done", line
        return last

    def verify(self, path: str, last_reported: int) -> None:
        """Reopen the store and check it against the promises; advance ``durable``."""
        assert last_reported >= self.durable
        with ebsengine.Engine(path) as eng:
            report = eng.fsck()
            assert report.ok, report.problems
            vols = eng.list_volumes()
            assert len(vols) <= 1
            if not vols:  # killed before the volume's creation committed
                assert self.volume is None and last_reported == -1
                return
            vol = vols[0].id
            assert self.volume in (None, vol)
            with eng.open_volume(vol) as dev:
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
            self.replay.keep_only({int(s.description.split()[1]) for s in present.values()}
                                  | {self.durable})


def run_and_kill(path: str, t: Tracker, rnd: random.Random) -> None:
    start = t.durable + 1
    proc = spawn(path, "--start", str(start), "--stop", str(start + 100_000))
    try:
        if rnd.random() < 0.2:
            # during interpreter start, Engine open or volume creation
            time.sleep(rnd.uniform(0.0, 0.8))
        else:
            line = read_line(proc, STARTUP_TIMEOUT_S)
            assert line and line.startswith("ready"), (line, proc.poll())
            time.sleep(rnd.uniform(0.0, 0.4))
    finally:
        lines, err = kill(proc)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    t.kills += 1
    last = t.absorb(lines)
    t.records = max(t.records, last)
    t.verify(path, last)


@pytest.mark.slow
def test_sigkill_loses_nothing_flushed(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    rnd = random.Random(int(os.environ.get("EBSENGINE_CRASH_SEED", "6")))
    t = Tracker()
    began = time.monotonic()
    for _ in range(ITERATIONS):
        if time.monotonic() - began > BUDGET_S:
            break
        run_and_kill(path, t, rnd)
    assert t.kills >= min(ITERATIONS, 8), f"only {t.kills} kills fit the time budget"
    assert t.durable > 5 * cw.SNAP_EVERY, "the writers made too little progress to test"
    assert t.snapshots, "no snapshot was ever reported"


@pytest.mark.slow
def test_readers_in_other_processes_while_writer_runs(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    t = Tracker()
    writer = spawn(path, "--start", "0")
    readers: list[subprocess.Popen[str]] = []
    lines: list[str] = []
    before = during = 0
    try:
        # Let the writer take two snapshots first, so the readers have something to read.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while sum(line.startswith("snap") for line in lines) < 2:
            line = read_line(writer, max(0.0, deadline - time.monotonic()))
            assert line, f"writer stalled: {lines[-3:]}, rc={writer.poll()}"
            lines.append(line.strip())
        readers = [spawn(path, "--read", "2.5") for _ in range(2)]
        before = len(lines)
        # keep draining the writer's output while the readers run
        while any(r.poll() is None for r in readers):
            line = read_line(writer, 0.05)
            if line:
                lines.append(line.strip())
        during = len(lines)
        results = [r.communicate(timeout=60) for r in readers]
    finally:
        more, err = kill(writer)
        for r in readers:
            if r.poll() is None:
                r.kill()
                r.communicate()
    for r, (out, rerr) in zip(readers, results):
        assert r.returncode == 0, (out, rerr)
        word, verified, _, skipped = out.split()
        assert word == "verified" and int(verified) >= 2, out
    assert writer.returncode == -signal.SIGKILL, err
    assert any(x.startswith(("flushed", "snap")) for x in lines[before:during]), \
        "the writer committed nothing while the readers ran"
    t.verify(path, t.absorb(lines + more))
