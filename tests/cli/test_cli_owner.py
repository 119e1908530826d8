"""One owner per store (issue 11): the CLI beside a running ``ebsengine serve``.

The server is a real process; the bytes go over NBD without a flush, so only the server's
write cache holds them when the CLI runs. The CLI's commands run in the server (its control
socket): a snapshot holds every write the server acknowledged, a delete of a volume a client
has open is refused as the API refuses it, a resize reaches new connections. Other
processes that would change the store behind the server (a second ``serve``, a library
``Engine``) are refused with a message naming it; once it stops, the CLI works directly.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import ebsengine
import nbd_client as nc
from serve_support import wait_ready

GIB = 1 << 30
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def cli(store: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", str(store), *args],
                          capture_output=True, text=True, timeout=120, env=ENV, cwd=cwd)


def ok(store: Path, *args: str, cwd: Path | None = None) -> str:
    p = cli(store, *args, cwd=cwd)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout.strip()


def start(argv: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)
    lines = wait_ready(proc)
    assert proc.poll() is None, "".join(lines)
    return proc, lines


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


class Server:
    def __init__(self, store: Path) -> None:
        self.store = store
        self.proc, self.lines = start([sys.executable, "-m", "ebsengine.cli", "--store",
                                       str(store), "serve", "--nbd-port", "0",
                                       "--http-port", "0"])
        self.sock = str(store / "nbd.sock")

    def nbd(self, vol: str) -> nc.NbdClient:
        c = nc.NbdClient(self.sock)
        c.go(vol)
        return c


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "store")
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.communicate()


def test_snapshot_through_the_server_holds_every_acknowledged_write(server: Server,
                                                                    tmp_path: Path) -> None:
    vol = ok(server.store, "create", "--size", "1")
    a, b = os.urandom(4096), os.urandom(1 << 20)
    with server.nbd(vol) as c:
        c.pwrite(0, a)  # acknowledged, not flushed: in the server's write cache only
        c.pwrite(5 * (1 << 20) + 512, b)
        snap = ok(server.store, "snapshot", vol, "--description", "live")
        c.pwrite(0, b"after" * 100)  # after the snapshot: not in it
        # the snapshot's bytes: exported (through the server, to a path relative to the
        # CLI's directory) and restored into a new volume read over NBD
        ok(server.store, "export", snap, "snap.img", cwd=tmp_path)
        img = (tmp_path / "snap.img").read_bytes()
        assert len(img) == GIB
        assert img[:4096] == a and img[5 * (1 << 20) + 512:][:len(b)] == b
        assert img.count(0) == GIB - len(a) - len(b) + a.count(0) + b.count(0)
        restored = ok(server.store, "restore", snap)
        with server.nbd(restored) as r:
            assert r.pread(0, 4096) == a
            assert r.pread(5 * (1 << 20) + 512, len(b)) == b
            r.disc()
        assert c.pread(0, 500) == b"after" * 100
        c.disc()
    shown = json.loads(ok(server.store, "--json", "show", snap))
    assert shown["description"] == "live" and shown["volume_id"] == vol


def test_delete_of_an_open_volume_is_refused_and_its_client_keeps_working(
        server: Server) -> None:
    vol = ok(server.store, "create", "--size", "1")
    data = os.urandom(65536)
    with server.nbd(vol) as c:
        c.pwrite(0, data)
        p = cli(server.store, "delete", vol)
        assert p.returncode == 4, (p.stdout, p.stderr)
        assert "[VolumeInUse]" in p.stderr and vol in p.stderr
        c.pwrite(65536, data)  # still the client's
        assert c.cmd(nc.CMD_FLUSH).error == 0
        assert c.pread(0, 2 * 65536) == data + data
        c.disc()
        assert c.is_closed(wait=30)
    listed = json.loads(ok(server.store, "--json", "list", "--volumes"))
    assert [v["id"] for v in listed["volumes"]] == [vol]
    assert ok(server.store, "delete", vol) == f"deleted {vol}"  # closed now: deleted
    assert json.loads(ok(server.store, "--json", "list"))["volumes"] == []
    out = stop(server.proc)
    assert "Traceback" not in out, out


def test_resize_reaches_new_connections_and_the_open_one_keeps_working(server: Server) -> None:
    vol = ok(server.store, "create", "--size", "1")
    with server.nbd(vol) as c:
        assert c.size == GIB
        c.pwrite(GIB - 4096, b"e" * 4096)
        assert ok(server.store, "resize", vol, "--size", "3") == f"{vol} is now 3GiB gp3"
        with server.nbd(vol) as fresh:  # a new connection: the new size
            assert fresh.size == 3 * GIB
            fresh.pwrite(3 * GIB - 4096, b"z" * 4096)
            assert fresh.pread(GIB - 4096, 4096) == b"e" * 4096
            fresh.disc()
        # the open connection keeps its negotiated size (NBD has no resize notice) and works
        assert c.pread(GIB - 4096, 4096) == b"e" * 4096
        c.disc()
    listed = json.loads(ok(server.store, "--json", "list", "--volumes"))
    assert listed["volumes"][0]["size_gib"] == 3


def test_other_processes_are_refused_with_the_owner_named(server: Server,
                                                           tmp_path: Path) -> None:
    pid = server.proc.pid
    vol = ok(server.store, "create", "--size", "1", "--tag", "k=v")
    sock = server.store / "control.sock"
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
    # a second server on the store
    p = subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", str(server.store),
                        "serve", "--nbd-port", "0", "--http-port", "0"],
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert p.returncode == 5, (p.stdout, p.stderr)
    assert f"owned by process {pid} (ebsengine --store {server.store} serve" in p.stderr
    assert "[StoreOwned]" in p.stderr
    assert os.path.exists(server.sock) and sock.exists()  # the server's sockets untouched
    # a library user's Engine in another process: refused; read-only it reads
    code = textwrap.dedent('''
        import sys, ebsengine
        try:
            ebsengine.Engine(sys.argv[1])
        except ebsengine.EbsError as exc:
            print(exc.code, exc)
        with ebsengine.Engine(sys.argv[1], readonly=True) as ro:
            print([v.id for v in ro.list_volumes()])
    ''')
    p = subprocess.run([sys.executable, "-c", code, str(server.store)], capture_output=True,
                       text=True, timeout=60, env=ENV)
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.splitlines()
    assert first.startswith("StoreOwned ") and f"owned by process {pid} (" in first
    assert second == repr([vol])
    ok(server.store, "show", vol)  # the server still serves the store
    stop(server.proc)


def test_an_owner_without_a_control_socket_refuses_changes_but_not_reads(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    vol = ok(store, "create", "--size", "1")
    proc, _ = start([sys.executable, "-c",
                     "import sys; from ebsengine.nbd.server import serve; "
                     "sys.exit(serve(sys.argv[1]))", str(store)])
    try:
        p = cli(store, "create", "--size", "1")
        assert p.returncode == 5, (p.stdout, p.stderr)
        assert f"owned by process {proc.pid} (" in p.stderr
        assert "no control socket answers" in p.stderr
        assert json.loads(ok(store, "--json", "list"))["volumes"][0]["id"] == vol
        assert cli(store, "snapshot", vol).returncode == 5
        assert json.loads(ok(store, "--json", "list"))["snapshots"] == []  # nothing changed
    finally:
        stop(proc)
    ok(store, "snapshot", vol)


def test_after_the_server_stops_the_cli_works_directly(server: Server) -> None:
    vol = ok(server.store, "create", "--size", "1")
    with server.nbd(vol) as c:
        c.pwrite(0, b"q" * 4096)
        c.disc()
        assert c.is_closed(wait=30)
    stop(server.proc)
    assert not (server.store / "control.sock").exists()
    assert (server.store / "owner.lock").read_bytes() == b""  # nobody owns it
    snap = ok(server.store, "snapshot", vol)
    assert ok(server.store, "delete", vol) == f"deleted {vol}"
    with ebsengine.Engine(server.store) as eng:
        assert [s.id for s in eng.list_snapshots()] == [snap]
        with eng.open_snapshot(snap) as dev:
            assert dev.pread(4096, 0) == b"q" * 4096


def test_a_killed_server_leaves_no_owner(tmp_path: Path) -> None:
    store = tmp_path / "store"
    s = Server(store)
    vol = ok(store, "create", "--size", "1")
    s.proc.kill()
    s.proc.communicate()
    assert (store / "control.sock").exists()  # left behind by kill -9: stale, not an owner
    ok(store, "resize", vol, "--size", "2")  # directly: the kernel dropped the lock
    again = Server(store)  # a new server replaces the stale socket
    try:
        assert json.loads(ok(store, "--json", "show", vol))["size_gib"] == 2
        assert json.loads(ok(store, "--json", "create", "--size", "1"))["size_gib"] == 1
    finally:
        stop(again.proc)
