"""Several front ends on one rados:// store (issue 10): each volume is written by one engine
at a time (its lease), every engine reads every snapshot, and a dead or stalled front end's
volumes are taken over — the stalled one fenced off, so nothing it still sends lands.

Two engines in one process stand in for two front ends here (each with its own RADOS
client and local directory); tests/services/test_frontends_serve.py does it with two
``ebsengine serve`` processes and SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

import ebsengine
from ebsengine import layout as L
from ebsengine.errors import VolumeInUse

pytestmark = pytest.mark.needs_ceph
CS = L.CHUNK_SIZE


@pytest.fixture
def url(rados_pools, tmp_path):
    return lambda name, **kw: rados_pools.url(workdir=str(tmp_path / name), **kw)


def test_a_volume_is_written_by_one_front_end_and_read_by_all(url):
    with ebsengine.Engine(url("a")) as a, ebsengine.Engine(url("b")) as b:
        v = a.create_volume(1).id
        w = b.create_volume(1).id  # each front end creates and serves its own
        da, db = a.open_volume(v), b.open_volume(w)
        with pytest.raises(VolumeInUse, match="another front end"):
            b.open_volume(v)
        with pytest.raises(VolumeInUse):
            b.create_snapshot(v)  # its writes may sit in a's cache: only a may snapshot it
        with pytest.raises(VolumeInUse):
            b.delete_volume(v)
        with pytest.raises(VolumeInUse):
            b.modify_volume(v, size_gib=2)
        with pytest.raises(VolumeInUse):
            a.open_volume(w)
        for i in range(8):  # both write at once, each to its own volume
            da.pwrite(bytes([i]) * CS, i * CS)
            db.pwrite(bytes([100 + i]) * CS, i * CS)
        da.flush()
        db.flush()
        sa = a.create_snapshot(v).id
        sb = b.create_snapshot(w).id
        time.sleep(0.1)  # another front end's commits show within the refresh (50 ms)
        with a.open_snapshot(sb) as snap:  # snapshots are readable from both
            assert snap.pread(CS, 7 * CS) == bytes([107]) * CS
        with b.open_snapshot(sa) as snap:
            assert snap.pread(CS, 3 * CS) == bytes([3]) * CS
        da.close()  # a is done with v: the lease goes back
        with b.open_volume(v) as dv:
            assert dv.pread(CS, 5 * CS) == bytes([5]) * CS
            dv.pwrite(b"b" * CS, 0)
        db.close()
        assert a.fsck().ok


def test_a_snapshot_from_the_other_front_end_takes_and_gives_back_the_lease(url):
    with ebsengine.Engine(url("a")) as a, ebsengine.Engine(url("b")) as b:
        v = a.create_volume(1).id
        with a.open_volume(v) as dev:
            dev.pwrite(b"x" * CS, 0)
        s = b.create_snapshot(v)  # nobody serves v now: b may, and lets it go after
        with a.open_volume(v):
            pass
        with b.open_snapshot(s.id) as snap:
            assert snap.pread(CS, 0) == b"x" * CS


WRITER = textwrap.dedent("""
    import os, sys, time, ebsengine
    url, vid, log = sys.argv[1], sys.argv[2], sys.argv[3]
    eng = ebsengine.Engine(url)
    dev = eng.open_volume(vid)
    n = 1
    with open(log, "a") as acked:
        while True:
            dev.pwrite(n.to_bytes(8, "big") * (65536 // 8), (n % 64) * 65536)
            dev.flush()
            acked.write(f"{n}\\n")  # acknowledged: flushed, durable
            acked.flush()
            print(n, flush=True)
            n += 1
""")


def _start_writer(u: str, vid: str, log: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, u, vid, str(log)],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ))


def _acked(proc: subprocess.Popen[str], at_least: int) -> int:
    assert proc.stdout is not None
    last = -1
    while last < at_least:
        line = proc.stdout.readline()
        assert line, "the writer died"
        last = int(line)
    return last


def _take_over(b: ebsengine.Engine, vid: str, within: float) -> ebsengine.Device:
    deadline = time.monotonic() + within
    while True:
        try:
            return b.open_volume(vid)
        except VolumeInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def test_a_killed_front_ends_volume_is_taken_over_with_every_flushed_write(url, tmp_path):
    lease = 3
    log = tmp_path / "acked"
    with ebsengine.Engine(url("b", lease=lease)) as b:
        vid = b.create_volume(1).id
        a = _start_writer(url("a", lease=lease), vid, log)
        try:
            _acked(a, 40)
            a.kill()  # SIGKILL: no release, its locks stay until they expire
            a.wait()
            last = int(log.read_text().split()[-1])  # the last write it acknowledged
        finally:
            a.kill()
            a.wait()
            assert a.stdout is not None
            a.stdout.close()
        t0 = time.monotonic()
        dev = _take_over(b, vid, within=lease + 10)
        took = time.monotonic() - t0
        assert took <= lease + 5
        with dev:
            for n in range(max(0, last - 63), last + 1):  # the newest write of each slot
                assert dev.pread(8, (n % 64) * CS) == n.to_bytes(8, "big"), n
        assert b.fsck().ok


def test_a_stalled_front_end_is_fenced_when_its_volume_is_taken_over(url, tmp_path):
    lease = 3
    log = tmp_path / "acked"
    with ebsengine.Engine(url("b", lease=lease)) as b:
        vid = b.create_volume(1).id
        a = _start_writer(url("a", lease=lease), vid, log)
        try:
            _acked(a, 10)
            a.send_signal(19)  # SIGSTOP: alive and holding the lease, but not renewing it
            time.sleep(0.5)
            before = log.read_text().split()
            dev = _take_over(b, vid, within=lease + 10)
            with dev:
                dev.pwrite(b"B" * CS, 0)
                dev.flush()
                a.send_signal(18)  # SIGCONT: it goes on writing and flushing
                try:  # its next flush fails (or hangs): it is cut off from the cluster
                    assert a.wait(timeout=20) != 0
                except subprocess.TimeoutExpired:
                    pass
                after = log.read_text().split()
                # it may log one more: a flush that committed before it was stopped; none after
                assert after[:len(before)] == before and len(after) <= len(before) + 1
                assert dev.pread(CS, 0) == b"B" * CS
                last = int(after[-1])
                for n in range(max(1, last - 62), last + 1):  # its earlier writes are there
                    if n % 64:
                        assert dev.pread(8, (n % 64) * CS) == n.to_bytes(8, "big"), n
        finally:
            a.kill()
            a.wait()
            assert a.stdout is not None
            a.stdout.close()
        assert b.fsck().ok


def test_the_default_lease_lets_a_volume_be_taken_over_within_30_seconds():
    from ebsengine.errors import InvalidParameter
    from ebsengine.storage.rados_io import parse_url
    assert parse_url("rados://p").lease <= 30
    assert parse_url("rados://p?lease=5").lease == 5
    with pytest.raises(InvalidParameter):
        parse_url("rados://p?lease=0")


def _mark_importing(eng: ebsengine.Engine, vid: str, host: str) -> None:
    """Make the volume look like a new volume another host is importing into."""
    import json
    with eng._store.write() as txn:
        rec = json.loads(txn.get(vid.encode(), db=eng._store.db["volumes"]))
        rec["state"] = "creating"
        rec["importer"] = {"pid": 1, "start": "1", "boot": "x", "host": host}
        txn.put(vid.encode(), json.dumps(rec).encode(), db=eng._store.db["volumes"])


def test_an_import_on_another_host_is_settled_only_once_its_lease_is_free(url):
    with ebsengine.Engine(url("a")) as a:
        vid = a.create_volume(1).id
        _mark_importing(a, vid, "another-host")
        a._store.backend.lease(vid)  # the importer (another host) holds the lease
        with ebsengine.Engine(url("b")) as b:  # b cannot see that process: it asks the lease
            assert b.get_volume(vid).state == "creating"
            with pytest.raises(VolumeInUse):
                b.delete_volume(vid)
        a._store.backend.release(vid)  # the importer is gone
        with ebsengine.Engine(url("c")) as c:
            assert c.get_volume(vid).state == "error"  # settled, as a crashed import is
            c.delete_volume(vid)
            assert c.fsck().ok


COPIER = textwrap.dedent("""
    import os, sys, ebsengine
    from ebsengine.engine import domains, imports
    from ebsengine.storage.chunks import ChunkStore
    url, sid = sys.argv[1], sys.argv[2]
    other = {"pid": 4242, "start": "1", "boot": "x", "host": "another-host"}
    domains.process_token = lambda: other  # a copier on another host
    domains.STAGE_COMMIT_CHUNKS, domains.STAGE_WINDOW = 2, 2
    real = ChunkStore.put
    n = [0]
    def put(self, *a, **kw):
        n[0] += 1
        if n[0] == 5:  # a batch or two committed: say so, then hang until killed
            print("copying", flush=True)
            sys.stdin.read()
        return real(self, *a, **kw)
    ChunkStore.put = put
    eng = ebsengine.Engine(url)
    eng.kms.describe_key("alias/aws/ebs", "us-east-1", "123456789012")
    eng.create_volume(snapshot_id=sid, encrypted=True)
""")


def _staged(eng: ebsengine.Engine) -> list[int]:
    import json
    with eng._store.read() as txn:
        return [L.read_u64(k) for k, v in txn.cursor(db=eng._store.db["lineages"])
                if "copier" in json.loads(v)]


def _kill_copier_midway(code: str, u: str, sid: str, meanwhile: Callable[[], None] = lambda: None
                        ) -> None:
    """Run a copier script until it has committed part of its staged copy, call
    ``meanwhile``, then SIGKILL it (no cleanup runs, its lease is not given back)."""
    a = subprocess.Popen([sys.executable, "-c", code, u, sid], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert a.stdout is not None and a.stdout.readline() == "copying\n"
        meanwhile()
    finally:
        a.kill()
        a.wait()
        for f in (a.stdin, a.stdout):
            if f is not None:
                f.close()


def test_a_copy_staged_by_a_dead_front_end_on_another_host_goes_once_its_lease_is_free(
        url, tmp_path):
    lease = 2
    with ebsengine.Engine(url("b", lease=lease)) as b:
        vid = b.create_volume(1).id
        with b.open_volume(vid) as dev:
            dev.pwrite(os.urandom(12 * CS), 0)
        sid = b.create_snapshot(vid).id

    def alive() -> None:
        with ebsengine.Engine(url("b", lease=lease)) as b:  # its copier is alive: kept
            assert len(_staged(b)) == 1

    _kill_copier_midway(COPIER, url("a", lease=lease), sid, alive)  # its lease stays on
    time.sleep(lease + 1)
    with ebsengine.Engine(url("b", lease=lease)) as b:  # the lease ran out: dropped
        assert _staged(b) == []
        assert b.kms.domains() == []
        be = b._store.backend
        assert not list(be.conn.meta.list_objects("lease.copy-"))
        report = b.fsck()
        assert report.ok and "staged_copies" not in report.stats


# the same copier, but a process of this host (its real process token)
LOCAL_COPIER = COPIER.replace("domains.process_token = lambda: other", "pass")


def test_a_copy_staged_by_a_dead_process_of_this_host_leaves_no_lease_object(url):
    with ebsengine.Engine(url("b")) as b:
        vid = b.create_volume(1).id
        with b.open_volume(vid) as dev:
            dev.pwrite(os.urandom(12 * CS), 0)
        sid = b.create_snapshot(vid).id
    _kill_copier_midway(LOCAL_COPIER, url("a"), sid)
    with ebsengine.Engine(url("b")) as b:  # its copier is dead (this host can tell)
        assert _staged(b) == []
        be = b._store.backend
        assert not list(be.conn.meta.list_objects("lease.copy-"))
