"""One NBD client that does not read its replies stalls only itself.

The stuck client pipelines 8 READs of the maximum payload (32 MiB, simple replies so every
byte is on the wire) and never reads a reply. Other clients (on other volumes and on the
stuck client's own volume, same server) keep doing WRITE + FLUSH and FUA WRITEs: each must
complete within seconds (before per-connection senders it took 45-92 s, the shared workers
being stuck in send()). After the stuck client goes away everything is clean.

Each test runs over the Unix socket and over TCP with TLS (``tls.py``: the workers' brief
non-blocking sends and the sender's hand-off work on encrypted streams too).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nbd_client as nc
from ebsengine.nbd import protocol as p
from ebsengine.nbd.server import NbdServer
from ebsengine.nbd.tls import TlsConfig
from nbd_client import NbdClient
from tls_support import make_pki

MiB = 1 << 20
BOUND = 5.0  # seconds: generous; the failure mode is tens of seconds (SO_SNDTIMEO is 30)


@dataclass
class Transport:
    """Where the clients connect: the Unix socket, or TCP with TLS (then ``ctx`` is set)."""

    unix: str | None
    tls: TlsConfig | None = None
    ctx: ssl.SSLContext | None = None
    address: str | tuple[str, int] = ""

    def server(self, engine: Any) -> NbdServer:
        if self.tls is None:
            srv = NbdServer(engine, unix_path=self.unix, tcp=None)
        else:
            srv = NbdServer(engine, unix_path=None, tcp=("127.0.0.1", 0), tls=self.tls)
        srv.start()
        self.address = self.unix if self.tls is None else srv.tcp_address  # type: ignore[assignment]
        return srv

    def client(self, timeout: float = 10.0) -> NbdClient:
        return NbdClient(self.address, timeout=timeout, tls=self.ctx)


@pytest.fixture(params=["unix", "tls"])
def transport(request: Any, tmp_path: Path) -> Transport:
    if request.param == "unix":
        return Transport(str(tmp_path / "nbd.sock"))
    pki = make_pki(tmp_path / "pki")
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    return Transport(None, TlsConfig(str(pki.server_cert), str(pki.server_key)), ctx)


def _flush_loop(tr: Transport, vol: str, seconds: float, slot: int, out: dict[str, Any]) -> None:
    """WRITE + FLUSH, then a FUA WRITE, in a loop; records the worst latencies."""
    worst_flush = worst_fua = 0.0
    flushes = 0
    try:
        with tr.client(timeout=60.0) as c:
            c.go(vol)
            assert c.tflags & nc.TF_FUA
            deadline = time.monotonic() + seconds
            i = 0
            while time.monotonic() < deadline or flushes == 0:
                off = (slot * 64 + i % 64) * 4096
                block = struct.pack(">QQ", slot, i) * 256
                c.pwrite(off, block)
                t0 = time.monotonic()
                r = c.cmd(nc.CMD_FLUSH)
                worst_flush = max(worst_flush, time.monotonic() - t0)
                assert r.error == 0, r.error
                flushes += 1
                t0 = time.monotonic()
                c.pwrite(off, block, flags=p.CMD_FLAG_FUA)
                worst_fua = max(worst_fua, time.monotonic() - t0)
                assert c.pread(off, len(block)) == block
                i += 1
            c.disc()
    except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
        out["error"] = exc
    out.update(worst_flush=worst_flush, worst_fua=worst_fua, flushes=flushes)


def _send_quietly(c: NbdClient, data: bytes) -> None:
    try:
        c.send(data)
    except OSError:
        pass  # closed by the test


def _run_others(tr: Transport, vols: list[str], seconds: float) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in vols]
    threads = [
        threading.Thread(target=_flush_loop, args=(tr, v, seconds, i, results[i]))
        for i, v in enumerate(vols)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a client hung"
    for r in results:
        if "error" in r:
            raise r["error"]
    return results


@pytest.mark.parametrize("stuck_load", ["big-reads", "many-flushes"])
def test_a_client_that_reads_no_replies_stalls_only_itself(
    engine: Any, transport: Transport, stuck_load: str
) -> None:
    """big-reads: 8 READs of 32 MiB; many-flushes: 20000 pipelined FLUSHes (small replies:
    the reply queue's length is bounded, not only its bytes)."""
    stuck_vol = engine.create_volume(size_gib=1).id
    other_vols = [engine.create_volume(size_gib=1).id for _ in range(2)]
    with transport.server(engine) as srv:
        vols = [*other_vols, stuck_vol]  # the stuck client's own volume too
        before = _run_others(transport, vols, 1.0)

        stuck = transport.client(timeout=60.0)
        stuck.go(stuck_vol, structured=False)  # simple replies: all the data goes out
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        if stuck_load == "big-reads":
            for k in range(8):
                stuck.request(nc.CMD_READ, k * p.MAX_PAYLOAD, p.MAX_PAYLOAD)
        else:  # the server stops reading them at some point: send from a thread
            flood = b"".join(
                struct.pack(">IHHQQI", nc.REQUEST_MAGIC, 0, nc.CMD_FLUSH, k, 0, 0)
                for k in range(20000)
            )
            threading.Thread(target=_send_quietly, args=(stuck, flood), daemon=True).start()
        time.sleep(1.0)  # let the server start answering (and get stuck sending)
        try:
            during = _run_others(transport, vols, 3.0)
        finally:  # shutdown first: close() alone leaves a send() blocked in the flood thread
            stuck.sock.shutdown(socket.SHUT_RDWR)
            stuck.close()

        for name, res in (("before", before), ("during", during)):
            print(
                f"{name}: worst flush "
                + ", ".join(f"{r['worst_flush'] * 1000:.1f} ms" for r in res)
                + "; worst FUA write "
                + ", ".join(f"{r['worst_fua'] * 1000:.1f} ms" for r in res)
                + "; flushes "
                + ", ".join(str(r["flushes"]) for r in res)
            )
        for r in during:
            assert r["flushes"] > 0
            assert r["worst_flush"] < BOUND, during
            assert r["worst_fua"] < BOUND, during

        # The stuck client is gone: its connection ends, and the server still serves.
        assert nc.wait_for(lambda: srv.connection_count == 0, timeout=30.0)
        with transport.client() as c:
            c.go(stuck_vol, structured=False)
            # what the third client (slot 2) wrote to the stuck client's volume is there
            assert c.pread(2 * 64 * 4096, 8) == struct.pack(">Q", 2)
            assert c.cmd(nc.CMD_FLUSH).error == 0
            c.disc()
        assert nc.wait_for(lambda: srv.connection_count == 0, timeout=30.0)
    assert engine.fsck().ok


def test_replies_never_interleave_when_the_client_reads_slowly(
    engine: Any, transport: Transport
) -> None:
    """Inline replies (corked by the reader) and pooled ones (written by a worker or the
    connection's sender, sometimes half a frame at a time when the socket is full) mix on one
    wire: with a client that lets the socket fill up, every reply still arrives whole."""
    import random

    rng = random.Random(7)
    vol = engine.create_volume(size_gib=1).id
    image = rng.randbytes(8 * MiB)
    with transport.server(engine) as srv:
        with transport.client(timeout=60.0) as c:
            c.go(vol)
            for off in range(0, len(image), MiB):
                c.pwrite(off, image[off : off + MiB])
            # small, so the server's socket fills up (TCP: not so small that a window of a
            # few KiB and delayed ACKs make the transfer crawl)
            rcvbuf = 4096 if transport.tls is None else 65536
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            expect: dict[int, tuple[int, int, int]] = {}  # cookie -> (cmd, offset, length)
            frames = []
            for _ in range(400):
                kind = rng.random()
                if kind < 0.35:
                    off, n = rng.randrange(0, 8 * MiB - 65536, 512), rng.choice([512, 4096, 65536])
                    cmd, flags, payload = nc.CMD_READ, 0, b""
                elif kind < 0.6:
                    n = rng.choice([MiB, 300_000, 300_000, 300_000])
                    off, cmd, flags, payload = rng.randrange(0, 8 * MiB - n, 512), nc.CMD_READ, 0, b""
                elif kind < 0.7:
                    off, n, cmd, flags, payload = 0, 0, nc.CMD_FLUSH, 0, b""
                elif kind < 0.8:
                    off, n, cmd, flags, payload = 0, 8 * MiB, nc.CMD_STATUS, 0, b""
                else:
                    n = 4096
                    off = 16 * MiB + rng.randrange(0, 256) * 4096
                    cmd, flags, payload = nc.CMD_WRITE, rng.choice([0, p.CMD_FLAG_FUA]), rng.randbytes(n)
                cookie = len(frames) + 1
                expect[cookie] = (cmd, off, n)
                frames.append(struct.pack(">IHHQQI", nc.REQUEST_MAGIC, flags, cmd, cookie, off, n) + payload)
            sender = threading.Thread(target=lambda: c.send(b"".join(frames)))
            sender.start()
            time.sleep(0.5)  # let the server's socket fill up: frames go out in pieces
            for i in range(len(frames)):
                if i % 5 == 0:
                    time.sleep(0.03)  # keep reading slowly (past the workers' send budget)
                r = c.reply()
                cmd, off, n = expect.pop(r.cookie)
                assert r.error == 0, (cmd, r.error)
                if cmd == nc.CMD_READ:
                    assert r.data == image[off : off + n]
            sender.join(10)
            assert not expect
            c.disc()
        assert nc.wait_for(lambda: srv.connection_count == 0, timeout=30.0)
    assert engine.fsck().ok
