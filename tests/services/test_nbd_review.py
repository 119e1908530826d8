"""NBD corner cases found in review: DISC is never answered, a failed SET_META_CONTEXT
clears the selection, the whole negotiation has a deadline, the library default opens no
TCP port."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

import nbd_client as nc
from ebsengine.nbd import NbdServer


@pytest.fixture
def served(engine: Any, tmp_path: Path):
    vol = engine.create_volume(size_gib=1)
    with NbdServer(engine, unix_path=tmp_path / "nbd.sock", handshake_timeout=2.0) as srv:
        yield srv, str(tmp_path / "nbd.sock"), vol.id


def test_disc_with_a_bad_flag_is_not_answered(served) -> None:
    _, sock, vol = served
    with nc.NbdClient(sock) as c:
        c.go(vol)
        c.request(nc.CMD_DISC, flags=0x2)
        assert c.is_closed(wait=5.0)  # closed, and no reply came first


def test_failed_set_meta_context_clears_the_selection(served) -> None:
    _, sock, vol = served
    with nc.NbdClient(sock) as c:
        c.greet()
        assert c.opt(nc.OPT_SR)[-1].type == nc.REP_ACK
        c.structured = True
        assert c.opt(nc.OPT_SET_META, c.meta_data(vol, ["base:allocation"]))[-1].type == nc.REP_ACK
        bad = c.opt(nc.OPT_SET_META, c.meta_data("vol-00000000000000000", ["base:allocation"]))
        assert bad[-1].type == nc.ERR_UNKNOWN
        assert c.opt(nc.OPT_GO, c.info_data(vol))[-1].type == nc.REP_ACK
        r = c.cmd(nc.CMD_STATUS, 0, 65536)
        assert r.error == 22  # EINVAL: no context selected any more


def test_negotiation_has_an_overall_deadline(served) -> None:
    """handshake_timeout=2: a client that keeps trickling bytes (each read is quick) is
    still cut off about 2 s after it connected, not whenever it stops."""
    _, sock, _ = served
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.settimeout(10)
    assert len(s.recv(18)) == 18
    start = time.monotonic()
    trickle = (b"\x00\x00\x00\x03" + b"IHAVEOPT" + b"\x00\x00\x00\x63" + b"\x00\x00\x10\x00"
               + bytes(4096))
    closed_at = None
    for byte in trickle:
        try:
            s.sendall(bytes([byte]))
            s.settimeout(0.3)
            if s.recv(1) == b"":
                closed_at = time.monotonic() - start
                break
        except TimeoutError:
            pass
        except OSError:
            closed_at = time.monotonic() - start
            break
        if time.monotonic() - start > 10:
            break
    s.close()
    assert closed_at is not None and closed_at < 4.5, closed_at


def test_library_default_listens_on_no_tcp_port(engine: Any, tmp_path: Path) -> None:
    with NbdServer(engine, unix_path=tmp_path / "a.sock") as a:
        assert a.tcp_address is None
        with NbdServer(engine, unix_path=tmp_path / "b.sock") as b:  # no EADDRINUSE on 10809
            assert b.tcp_address is None


def test_a_client_that_reads_no_replies_cannot_stall_the_others(engine: Any, tmp_path: Path,
                                                                 monkeypatch) -> None:
    import ebsengine.nbd.server as server_mod
    monkeypatch.setattr(server_mod, "SEND_TIMEOUT", 2)
    vol = engine.create_volume(size_gib=1)
    sock = str(tmp_path / "nbd.sock")
    with NbdServer(engine, unix_path=sock, workers=2):
        hog = nc.NbdClient(sock)
        hog.go(vol.id, structured=False)
        for _ in range(8):  # large reads go to the shared workers; their replies pile up
            hog.request(nc.CMD_READ, 0, 32 << 20)
        time.sleep(0.5)
        with nc.NbdClient(sock, timeout=20) as other:
            other.go(vol.id)
            start = time.monotonic()
            other.pwrite(0, b"x" * 4096, flags=1)  # FUA: served by a worker
            assert other.cmd(nc.CMD_FLUSH).error == 0
            assert time.monotonic() - start < 15
        hog.close()
