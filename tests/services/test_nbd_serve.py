"""``serve()`` as a process (SIGTERM/SIGINT, stale socket, durability at shutdown), and
point-in-time snapshots taken while NBD clients keep writing on several connections."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import nbd_client as nc
from ebsengine.nbd.server import NbdServer
from nbd_client import NbdClient

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

needs_engine = pytest.mark.skipif(
    nc.real_engine_class() is None, reason="needs the real ebsengine.Engine (separate process)"
)


def start_serve(store: Path, sock: Path, *extra: str) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from ebsengine.nbd.server import serve; "
        f"sys.exit(serve({str(store)!r}, {str(sock)!r}{''.join(', ' + e for e in extra)}))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            try:
                s.connect(str(sock))
                return len(s.recv(18)) == 18
            except OSError:
                return False

    if not nc.wait_for(ready, 30, 0.05):
        proc.kill()
        proc.wait()
        raise AssertionError("serve() did not come up")
    return proc


@needs_engine
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_nbd_serve_signal_flushes_and_removes_socket(tmp_path: Path, sig: int) -> None:
    store = tmp_path / "store"
    eng = nc.make_engine(store)
    vol = eng.create_volume(size_gib=1)
    eng.close()
    sock = tmp_path / "nbd.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))  # a stale socket file from a "killed" server
    stale.close()
    proc = start_serve(store, sock)
    try:
        data = os.urandom(3 * MiB + 17)
        with NbdClient(str(sock)) as c:
            c.go(vol.id)
            c.pwrite(12345, data)  # answered, never flushed by the client
            idle = NbdClient(str(sock))
            idle.greet()  # another client still haggling
            proc.send_signal(sig)
            assert proc.wait(60) == 0
            idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not sock.exists()
    eng = nc.make_engine(store)
    try:
        dev = eng.open_volume(vol.id)
        assert dev.pread(len(data), 12345) == data
        dev.close()
        assert eng.fsck().ok
    finally:
        eng.close()


@needs_engine
def test_nbd_serve_default_socket_in_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    nc.make_engine(store).close()
    code = f"from ebsengine.nbd.server import serve; import sys; sys.exit(serve({str(store)!r}))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert nc.wait_for(lambda: (store / "nbd.sock").exists(), 30)
        time.sleep(0.2)
        proc.terminate()
        assert proc.wait(30) == 0
        assert not (store / "nbd.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_nbd_snapshot_point_in_time_under_multi_conn_writes(engine: Any, tmp_path: Path) -> None:
    """DESIGN invariant 2 through NBD: each writer bumps a counter in its own block; the
    snapshot holds, per writer, a value between the last one acknowledged before
    create_snapshot was called and the last one sent before it returned."""
    vol = engine.create_volume(size_gib=1)
    writers = 4
    stop = threading.Event()
    acked = [0] * writers
    sent = [0] * writers
    errors: list[BaseException] = []

    with NbdServer(engine, unix_path=tmp_path / "nbd.sock", tcp=None) as srv:

        def writer(i: int) -> None:
            try:
                with NbdClient(str(srv.unix_path)) as c:
                    c.go(vol.id)
                    n = 0
                    while not stop.is_set():
                        n += 1
                        sent[i] = n
                        block = struct.pack(">Q", n) * 512
                        c.pwrite(i * MiB + 7, block)  # unaligned on purpose
                        acked[i] = n
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        results = []
        for _ in range(3):
            time.sleep(0.3)
            before = list(acked)
            snap = engine.create_snapshot(vol.id)
            after = list(sent)
            results.append((snap, before, after))
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        for snap, before, after in results:
            with NbdClient(str(srv.unix_path)) as c:
                c.go(snap.id)
                for i in range(writers):
                    raw = c.pread(i * MiB + 7, 4096)
                    vals = set(struct.unpack(">512Q", raw))
                    assert len(vals) == 1, "a torn write in the snapshot"
                    (v,) = vals
                    assert before[i] <= v <= after[i], (i, before[i], v, after[i])
    assert engine.fsck().ok


@needs_engine
def test_nbd_flush_on_one_connection_covers_all_then_kill9(tmp_path: Path) -> None:
    """Multi-conn durability: writes answered on A and C, FLUSH on B, FUA on D, then SIGKILL.
    After reopening, all of them are there and fsck is clean (DESIGN invariant 6)."""
    store = tmp_path / "store"
    eng = nc.make_engine(store)
    vol = eng.create_volume(size_gib=1)
    eng.close()
    sock = tmp_path / "nbd.sock"
    proc = start_serve(store, sock)
    a_data, c_data, d_data = os.urandom(MiB + 3), os.urandom(4096), os.urandom(70000)
    try:
        clients = [NbdClient(str(sock)) for _ in range(4)]
        for c in clients:
            c.go(vol.id)
        a, b, c3, d = clients
        a.pwrite(5, a_data)
        c3.pwrite(64 * MiB + 1, c_data)
        assert b.cmd(nc.CMD_FLUSH).error == 0
        d.pwrite(100 * MiB + 7, d_data, flags=nc.F_FUA)
        proc.kill()  # no clean shutdown: only what FLUSH/FUA made durable survives
        proc.wait(30)
        for cl in clients:
            cl.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    eng = nc.make_engine(store)
    try:
        assert eng.fsck().ok
        dev = eng.open_volume(vol.id)
        assert dev.pread(len(a_data), 5) == a_data
        assert dev.pread(len(c_data), 64 * MiB + 1) == c_data
        assert dev.pread(len(d_data), 100 * MiB + 7) == d_data
        dev.close()
    finally:
        eng.close()
