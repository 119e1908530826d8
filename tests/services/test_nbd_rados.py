"""``ebsengine serve`` on a ``rados://`` store (issue 10), end to end with real NBD clients:
the CLI's server process on the test cluster, its sockets in the store's local work
directory; an image written with nbdcopy reads back byte for byte through qemu-img, a
snapshot taken through the CLI (routed to the server over its control socket) holds it,
and after the server stops the store checks clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_nbd_clients import make_image, need, run, sha256_file

import ebsengine
from serve_support import wait_ready

MiB = 1 << 20
GIB = 1 << 30
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
pytestmark = pytest.mark.needs_ceph


def cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", store, *args],
                          capture_output=True, text=True, timeout=180, env=ENV)


def ok(store: str, *args: str) -> str:
    p = cli(store, *args)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout.strip()


def serve(url: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "ebsengine.cli", "--store", url, "serve",
                             "--http-port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    return proc, wait_ready(proc)


def serving(lines: list[str]) -> bool:
    """Whether ``serve`` said it serves (its output may end before it is reaped)."""
    return bool(lines) and lines[-1].startswith("ebsengine: store")


@pytest.mark.needs_tools
def test_nbd_clients_against_the_cli_server_on_a_rados_store(rados_pools,
                                                             tmp_path: Path) -> None:
    need("nbdcopy", "qemu-img", "nbdinfo")
    workdir = tmp_path / "workdir"
    url = rados_pools.url(workdir=str(workdir))
    vol = ok(url, "create", "--size", "1")  # no server yet: the CLI opens the store itself
    proc, lines = serve(url)
    try:
        assert serving(lines), "".join(lines)
        sock = workdir / "nbd.sock"
        assert sock.exists(), "".join(lines)
        uri = f"nbd+unix:///{vol}?socket={sock}"
        assert int(run("nbdinfo", "--size", uri).stdout) == GIB

        size = 96 * MiB
        src, out = tmp_path / "src.raw", tmp_path / "out.raw"
        make_image(src, size, seed=10)
        run("nbdcopy", "--flush", str(src), uri)
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out))
        assert out.stat().st_size == GIB
        os.truncate(src, GIB)  # the rest of the volume reads as zeroes
        assert sha256_file(out) == sha256_file(src)

        # a snapshot through the CLI while the server owns the store: routed to it
        snap = ok(url, "snapshot", vol, "--description", "over nbd")
        listed = json.loads(ok(url, "--json", "list"))
        assert [v["id"] for v in listed["volumes"]] == [vol]
        assert [s["id"] for s in listed["snapshots"]] == [snap]
        # the snapshot's export, read by another client, is the image
        snap_out = tmp_path / "snap.raw"
        run("nbdcopy", f"nbd+unix:///{snap}?socket={sock}", str(snap_out))
        assert sha256_file(snap_out) == sha256_file(src)
        # writes after the snapshot reach the volume and not the snapshot
        after = tmp_path / "after.raw"
        after.write_bytes(os.urandom(MiB))
        run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(after),
            f"nbd+unix:///{vol}?socket={sock}")
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, "".join(lines) + rest
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    fsck = cli(url, "fsck")
    assert fsck.returncode == 0, (fsck.stdout, fsck.stderr)
    with ebsengine.Engine(url) as eng:
        with eng.open_snapshot(snap) as ro:
            assert ro.pread(size, 0) == src.read_bytes()[:size]
        with eng.open_volume(vol) as dev:
            assert dev.pread(MiB, 0) == after.read_bytes()
            assert dev.pread(size - MiB, MiB) == src.read_bytes()[MiB:size]


#: the volume lease: long enough for a client right after the kill to find it still held
LEASE_S = 10


def test_a_killed_server_is_replaced_and_its_volume_served_once_its_lease_ends(
        rados_pools, tmp_path: Path) -> None:
    """kill -9 of ``serve`` on a rados:// store: a new server starts at once (the dead one's
    local lock went with it, its sockets are replaced), refuses the volume while the dead
    one's lease lasts (``lease`` seconds), then serves it with every write the dead one
    acknowledged as flushed; the store checks clean."""
    import time

    import nbd_client as nc
    workdir = tmp_path / "workdir"
    url = rados_pools.url(workdir=str(workdir), lease=LEASE_S)
    vol = ok(url, "create", "--size", "1")
    proc, lines = serve(url)
    flushed, unflushed = os.urandom(700_000), os.urandom(65536)
    try:
        assert serving(lines), "".join(lines)
        with nc.NbdClient(str(workdir / "nbd.sock")) as c:
            c.go(vol)
            c.pwrite(12345, flushed)
            assert c.cmd(nc.CMD_FLUSH).error == 0
            c.pwrite(5 * MiB, unflushed)  # acknowledged, never flushed: may be lost
            proc.kill()
            proc.wait(60)
            killed = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    proc, lines = serve(url)
    try:
        assert serving(lines), "".join(lines)
        with nc.NbdClient(str(workdir / "nbd.sock")) as early:  # the lease still holds
            early.greet()
            assert early.opt(nc.OPT_GO, early.info_data(vol))[-1].type != nc.REP_ACK
        assert time.monotonic() - killed < LEASE_S, "too slow to see the lease held"
        while True:
            c = nc.NbdClient(str(workdir / "nbd.sock"))
            try:
                c.go(vol)
                break
            except AssertionError:
                c.close()
                assert time.monotonic() - killed <= LEASE_S + 15
                time.sleep(0.5)
        with c:
            assert c.pread(12345, len(flushed)) == flushed
            assert c.pread(5 * MiB, len(unflushed)) in (unflushed, bytes(len(unflushed)))
            c.disc()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    fsck = cli(url, "fsck")
    assert fsck.returncode == 0, (fsck.stdout, fsck.stderr)
