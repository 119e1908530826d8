"""NBD server protocol tests with a raw-socket client (no external tools needed).

Runs against the real ``ebsengine.Engine`` when it imports, else against the in-memory
stand-in in ``nbd_client.py`` (set EBSENGINE_NBD_FAKE_ENGINE=1 to force the stand-in).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import nbd_client as nc
from ebsengine.nbd.server import NbdServer
from nbd_client import NbdClient

MiB = 1 << 20


@pytest.fixture
def vol(engine: Any) -> Any:
    return engine.create_volume(size_gib=1)


@pytest.fixture
def server(engine: Any, tmp_path: Path) -> Iterator[NbdServer]:
    srv = NbdServer(engine, unix_path=tmp_path / "nbd.sock", tcp=None)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def connect(server: NbdServer) -> NbdClient:
    return NbdClient(str(server.unix_path))


def opened(server: NbdServer, name: str, **kw: Any) -> NbdClient:
    c = connect(server)
    c.go(name, **kw)
    return c


def store_snapshot(engine: Any, vol_id: str) -> bytes:
    """What a client could observe of a volume (its extents and the bytes of its data extents)
    plus, with the real engine, a digest of every key and value in the store."""
    import hashlib

    raw = b""
    if hasattr(engine, "_store"):
        from conftest import store_digest

        raw = store_digest(engine).encode()
    dev = engine.open_volume(vol_id)
    try:
        ext = dev.extents(0, dev.size)
        h = hashlib.sha256(repr(ext).encode())
        pos = 0
        for n, flags in ext:
            if not flags & 2:
                for o in range(pos, pos + n, 32 * MiB):
                    h.update(dev.pread(min(32 * MiB, pos + n - o), o))
            pos += n
        return raw + h.digest()
    finally:
        dev.close()


# --- handshake ---------------------------------------------------------------------------


def test_nbd_handshake_greeting_and_list(server: NbdServer, engine: Any, vol: Any) -> None:
    snap = engine.create_snapshot(vol.id)
    with connect(server) as c:
        assert c.greet() == 3
        replies = c.opt(nc.OPT_LIST)
        assert replies[-1].type == nc.REP_ACK
        names = set()
        for r in replies[:-1]:
            assert r.type == nc.REP_SERVER
            (n,) = struct.unpack(">I", r.data[:4])
            names.add(r.data[4 : 4 + n].decode())
        assert {vol.id, snap.id} <= names
        # LIST with data is invalid, and haggling continues
        assert c.opt(nc.OPT_LIST, b"x")[-1].type == nc.ERR_INVALID
        assert c.opt(nc.OPT_ABORT)[-1].type == nc.REP_ACK
        assert c.is_closed()


def test_nbd_handshake_info_then_go_same_data(server: NbdServer, vol: Any) -> None:
    with connect(server) as c:
        c.greet()
        assert c.opt(nc.OPT_SR)[-1].type == nc.REP_ACK
        data = c.info_data(vol.id, (nc.INFO_NAME, nc.INFO_BLOCK_SIZE, nc.INFO_DESCRIPTION))
        info = c.opt(nc.OPT_INFO, data)
        go = c.opt(nc.OPT_GO, data)
        assert [(r.type, r.data) for r in info] == [(r.type, r.data) for r in go]
        by_type = {struct.unpack(">H", r.data[:2])[0]: r.data[2:] for r in go if r.type == nc.REP_INFO}
        size, tflags = struct.unpack(">QH", by_type[nc.INFO_EXPORT])
        assert size == 1 << 30
        assert tflags & nc.TF_MULTI_CONN and tflags & nc.TF_FUA and tflags & nc.TF_DF
        assert not tflags & nc.TF_READ_ONLY
        assert struct.unpack(">III", by_type[nc.INFO_BLOCK_SIZE]) == (1, 4096, 32 * MiB)
        assert by_type[nc.INFO_NAME] == vol.id.encode()
        # transmission works right after GO's ACK
        c.pwrite(0, b"hello")
        assert c.pread(0, 5) == b"hello"


def test_nbd_handshake_unknown_options_keep_framing(server: NbdServer, vol: Any) -> None:
    with connect(server) as c:
        c.greet()
        for option, data in [(99, b"junk" * 100), (nc.OPT_PEEK, b""), (11, b""), (0, b"")]:
            assert c.opt(option, data)[-1].type == nc.ERR_UNSUP
        assert c.opt(nc.OPT_STARTTLS)[-1].type & nc.ERR
        # malformed INFO/GO and meta-context requests: ERR_INVALID, haggling goes on
        assert c.opt(nc.OPT_GO, b"\0\0")[-1].type == nc.ERR_INVALID
        assert c.opt(nc.OPT_GO, struct.pack(">I", 100) + b"ab" + b"\0\0")[-1].type == nc.ERR_INVALID
        assert c.opt(nc.OPT_GO, c.info_data(vol.id) + b"x")[-1].type == nc.ERR_INVALID
        assert c.opt(nc.OPT_SR, b"x")[-1].type == nc.ERR_INVALID
        # SET_META_CONTEXT before STRUCTURED_REPLY is invalid
        meta = c.meta_data(vol.id, ["base:allocation"])
        assert c.opt(nc.OPT_SET_META, meta)[-1].type == nc.ERR_INVALID
        assert c.opt(nc.OPT_LIST_META, meta[:-3])[-1].type == nc.ERR_INVALID
        # unknown export
        assert c.opt(nc.OPT_GO, c.info_data("vol-00000000000000000"))[-1].type == nc.ERR_UNKNOWN
        assert c.opt(nc.OPT_INFO, c.info_data("bogus"))[-1].type == nc.ERR_UNKNOWN
        # empty name: no default export
        assert c.opt(nc.OPT_GO, c.info_data(""))[-1].type == nc.ERR_UNKNOWN
        # and after all that, a normal GO still works
        replies = c.opt(nc.OPT_GO, c.info_data(vol.id))
        assert replies[-1].type == nc.REP_ACK
        c.pwrite(4096, b"x" * 100)
        assert c.pread(4096, 100) == b"x" * 100


def test_nbd_handshake_meta_context(server: NbdServer, vol: Any) -> None:
    with connect(server) as c:
        c.greet()
        assert c.opt(nc.OPT_SR)[-1].type == nc.REP_ACK
        lst = c.opt(nc.OPT_LIST_META, c.meta_data(vol.id, []))
        assert [r.type for r in lst] == [nc.REP_META, nc.REP_ACK]
        assert lst[0].data[4:] == b"base:allocation"
        lst = c.opt(nc.OPT_LIST_META, c.meta_data(vol.id, ["base:"]))
        assert [r.type for r in lst] == [nc.REP_META, nc.REP_ACK]
        lst = c.opt(nc.OPT_LIST_META, c.meta_data(vol.id, ["qemu:dirty-bitmap:x", "base:nothing"]))
        assert [r.type for r in lst] == [nc.REP_ACK]
        st = c.opt(nc.OPT_SET_META, c.meta_data(vol.id, ["x:y", "base:allocation"]))
        assert [r.type for r in st] == [nc.REP_META, nc.REP_ACK]
        ctx = struct.unpack(">I", st[0].data[:4])[0]
        assert c.opt(nc.OPT_GO, c.info_data(vol.id))[-1].type == nc.REP_ACK
        r = c.cmd(nc.CMD_STATUS, 0, MiB)
        assert r.error == 0
        assert struct.unpack(">I", r.chunks[0][2][:4])[0] == ctx


def test_nbd_block_status_needs_context_for_this_export(server: NbdServer, engine: Any, vol: Any) -> None:
    other = engine.create_volume(size_gib=1)
    with connect(server) as c:
        c.greet()
        c.opt(nc.OPT_SR)
        c.opt(nc.OPT_SET_META, c.meta_data(other.id, ["base:allocation"]))
        assert c.opt(nc.OPT_GO, c.info_data(vol.id))[-1].type == nc.REP_ACK
        assert c.cmd(nc.CMD_STATUS, 0, 4096).error == nc.EINVAL
        c.pwrite(0, b"still usable")


def test_nbd_export_name_option(server: NbdServer, vol: Any) -> None:
    for no_zeroes in (True, False):
        with connect(server) as c:
            c.greet(3 if no_zeroes else 1)
            c.send_opt(nc.OPT_EXPORT_NAME, vol.id.encode())
            size, tflags = struct.unpack(">QH", c.recv(10))
            assert size == 1 << 30 and tflags & nc.TF_HAS_FLAGS
            if not no_zeroes:
                assert c.recv(124) == bytes(124)
            c.pwrite(0, b"abc")
            assert c.pread(0, 3) == b"abc"
    with connect(server) as c:  # unknown export: the server hangs up
        c.greet()
        c.send_opt(nc.OPT_EXPORT_NAME, b"vol-nonexistent")
        assert c.is_closed()


def test_nbd_handshake_bad_client_flags_closes(server: NbdServer) -> None:
    with connect(server) as c:
        c.greet(flags=0x80)
        assert c.is_closed()


def test_nbd_default_export(engine: Any, tmp_path: Path, vol: Any) -> None:
    with NbdServer(engine, unix_path=tmp_path / "d.sock", tcp=None, default_export=vol.id) as srv:
        with connect(srv) as c:
            c.go("")
            c.pwrite(0, b"default")
        with opened(srv, vol.id) as c:
            assert c.pread(0, 7) == b"default"


# --- transmission --------------------------------------------------------------------------


@pytest.mark.parametrize("structured", [True, False])
def test_nbd_read_write_unaligned(server: NbdServer, vol: Any, structured: bool) -> None:
    rng = random.Random(1)
    model = bytearray(4 * MiB)
    with opened(server, vol.id, structured=structured) as c:
        for _ in range(60):
            off = rng.randrange(0, len(model) - 70000)
            n = rng.choice([1, 7, 511, 513, 1024, 4095, 65537, 70000])
            data = rng.randbytes(n)
            c.pwrite(off, data, flags=rng.choice([0, nc.F_FUA]))
            model[off : off + n] = data
        for _ in range(40):
            off = rng.randrange(0, len(model) - 300000)
            n = rng.choice([1, 3, 4096, 100000, 300000])
            assert c.pread(off, n) == bytes(model[off : off + n])
        assert c.pread(0, len(model)) == bytes(model)


def test_nbd_structured_read_uses_hole_chunks(server: NbdServer, vol: Any) -> None:
    with opened(server, vol.id) as c:
        c.pwrite(MiB, b"\xaa" * 4096)
        r = c.cmd(nc.CMD_READ, 0, 4 * MiB)
        assert r.error == 0
        types = [t for _, t, _ in r.chunks]
        assert nc.CHUNK_HOLE in types and nc.CHUNK_DATA in types
        assert r.chunks[-1][0] & 1 and all(not f & 1 for f, _, _ in r.chunks[:-1])
        expected = bytearray(4 * MiB)
        expected[MiB : MiB + 4096] = b"\xaa" * 4096
        assert r.data == bytes(expected)
        # DF: exactly one data chunk
        r = c.cmd(nc.CMD_READ, 0, 65536 + MiB, flags=nc.F_DF)
        assert [t for _, t, _ in r.chunks] == [nc.CHUNK_DATA]


def test_nbd_block_status_matches_engine(server: NbdServer, engine: Any, vol: Any) -> None:
    with opened(server, vol.id) as c:
        c.pwrite(2 * MiB, os.urandom(MiB))
        r = c.cmd(nc.CMD_STATUS, 0, 8 * MiB)
        assert r.error == 0
        ext = r.extents()
        assert sum(n for n, _ in ext) >= 8 * MiB
        dev = engine.open_volume(vol.id)
        try:
            assert ext == [(n, f & 3) for n, f in dev.extents(0, 8 * MiB)]
        finally:
            dev.close()
        # data region reported as data, the start as a hole
        assert ext[0][1] & 1
        pos = 0
        for n, f in ext:
            if pos <= 2 * MiB < pos + n:
                assert f == 0
            pos += n
        one = c.cmd(nc.CMD_STATUS, 0, 8 * MiB, flags=nc.F_REQ_ONE).extents()
        assert len(one) == 1 and one[0][0] <= 8 * MiB


def test_nbd_trim_zeroes_flush_cache(server: NbdServer, vol: Any) -> None:
    with opened(server, vol.id) as c:
        c.pwrite(0, b"\x55" * (2 * MiB))
        assert c.cmd(nc.CMD_ZEROES, 100, 5000).error == 0
        assert c.cmd(nc.CMD_ZEROES, MiB, MiB, flags=nc.F_NO_HOLE | nc.F_FUA).error == 0
        assert c.cmd(nc.CMD_ZEROES, 4096, 4096, flags=nc.F_FAST_ZERO).error == 0
        data = c.pread(0, 2 * MiB)
        assert data[:100] == b"\x55" * 100 and data[100:8192] == bytes(8092)
        assert data[8192 : MiB] == b"\x55" * (MiB - 8192) and data[MiB:] == bytes(MiB)
        assert c.cmd(nc.CMD_TRIM, 0, c.size).error == 0  # mkfs trims the whole export
        assert c.cmd(nc.CMD_FLUSH).error == 0
        assert c.cmd(nc.CMD_CACHE, 0, c.size).error == 0
        assert c.pread(0, 4096) == bytes(4096)  # trim of a whole chunk reads back as zero here


@pytest.mark.parametrize("structured", [True, False])
def test_nbd_invalid_requests_get_errors_and_connection_survives(
    server: NbdServer, engine: Any, vol: Any, structured: bool
) -> None:
    with opened(server, vol.id, structured=structured) as c:
        c.pwrite(0, b"keep")
        assert c.cmd(nc.CMD_FLUSH).error == 0
        before = store_snapshot(engine, vol.id)
        size = c.size
        cases = [
            (nc.CMD_READ, size - 10, 11, 0, nc.EINVAL),
            (nc.CMD_READ, 2**64 - 512, 1024, 0, nc.EINVAL),
            (nc.CMD_TRIM, size, 1, 0, nc.EINVAL),
            (nc.CMD_CACHE, size - 1, 2, 0, nc.EINVAL),
            (nc.CMD_ZEROES, size - 1, 2, 0, nc.ENOSPC),
            (nc.CMD_READ, 0, 33 * MiB, 0, nc.EINVAL),  # over max payload
            (nc.CMD_READ, 0, 16, 0x40, nc.EINVAL),  # unknown flag
            (nc.CMD_READ, 0, 16, nc.F_NO_HOLE, nc.EINVAL),  # flag on the wrong command
            (nc.CMD_TRIM, 0, 16, nc.F_REQ_ONE, nc.EINVAL),
            (42, 0, 0, 0, nc.EINVAL),  # unknown command
            (8, 0, 0, 0, nc.EINVAL),  # RESIZE (experimental)
            (nc.CMD_FLUSH, 1, 0, 0, nc.EINVAL),
        ]
        if structured:
            cases.append((nc.CMD_STATUS, size, 1, 0, nc.EINVAL))
        else:
            cases.append((nc.CMD_READ, 0, 16, nc.F_DF, nc.EINVAL))
            cases.append((nc.CMD_STATUS, 0, 16, 0, nc.EINVAL))  # no context
        for cmd, off, n, flags, err in cases:
            r = c.cmd(cmd, off, n, flags)
            assert r.error == err, (cmd, off, n, flags, r)
            if structured and cmd == nc.CMD_READ:
                assert r.structured and r.chunks[-1][1] == nc.CHUNK_ERROR
        # writes past the end / oversized: the payload is drained, the stream stays in frame
        r = c.cmd(nc.CMD_WRITE, size - 2, 4, 0, b"ABCD")
        assert r.error == nc.ENOSPC
        big = b"Z" * (33 * MiB)
        r = c.cmd(nc.CMD_WRITE, 0, len(big), 0, big)
        assert r.error == nc.EINVAL
        r = c.cmd(nc.CMD_WRITE, 0, 4, 0x40, b"WXYZ")
        assert r.error == nc.EINVAL
        assert c.pread(0, 4) == b"keep"
        # zero-length requests succeed
        assert c.cmd(nc.CMD_READ, 0, 0).error == 0
        assert c.cmd(nc.CMD_WRITE, size, 0).error == 0
    assert store_snapshot(engine, vol.id) == before


def test_nbd_readonly_snapshot_export(server: NbdServer, engine: Any, vol: Any) -> None:
    with opened(server, vol.id) as c:
        c.pwrite(0, b"before", flags=nc.F_FUA)
    snap = engine.create_snapshot(vol.id)
    with opened(server, vol.id) as c:
        c.pwrite(0, b"after!", flags=nc.F_FUA)
    with opened(server, snap.id) as c:
        assert c.tflags & nc.TF_READ_ONLY
        assert not c.tflags & (nc.TF_TRIM | nc.TF_ZEROES | nc.TF_FUA | nc.TF_FAST_ZERO)
        assert c.pread(0, 6) == b"before"
        assert c.cmd(nc.CMD_WRITE, 0, 5, 0, b"xxxxx").error == nc.EPERM
        assert c.cmd(nc.CMD_TRIM, 0, 4096).error == nc.EPERM
        assert c.cmd(nc.CMD_ZEROES, 0, 4096).error == nc.EPERM
        assert c.cmd(nc.CMD_FLUSH).error == 0
        assert c.pread(0, 6) == b"before"
        assert c.cmd(nc.CMD_STATUS, 0, MiB).error == 0


def test_nbd_pipelining_many_in_flight(server: NbdServer, vol: Any) -> None:
    rng = random.Random(7)
    with opened(server, vol.id) as c:
        blobs = {}
        cookies = {}
        # 64 writes of mixed sizes (some go to the worker pool) without waiting
        for i in range(64):
            n = rng.choice([4096, 512 * 1024, 1 * MiB])
            blobs[i] = rng.randbytes(n)
            cookies[c.request(nc.CMD_WRITE, i * 2 * MiB, n, payload=blobs[i],
                              flags=nc.F_FUA if i % 5 == 0 else 0)] = i
        got = set()
        order = []
        for _ in range(64):
            r = c.reply()
            assert r.error == 0
            got.add(r.cookie)
            order.append(r.cookie)
        assert got == set(cookies)
        # then 64 reads in flight
        rc = {c.request(nc.CMD_READ, i * 2 * MiB, len(blobs[i])): i for i in range(64)}
        for _ in range(64):
            r = c.reply()
            assert r.error == 0 and r.data == blobs[rc[r.cookie]]
        assert c.cmd(nc.CMD_FLUSH).error == 0


def test_nbd_multi_conn_sees_one_volume(server: NbdServer, vol: Any) -> None:
    clients = [opened(server, vol.id) for _ in range(4)]
    try:
        for i, c in enumerate(clients):
            c.pwrite(i * 4096, bytes([i + 1]) * 4096)
        assert clients[0].cmd(nc.CMD_FLUSH).error == 0
        for c in clients:
            for i in range(4):
                assert c.pread(i * 4096, 4096) == bytes([i + 1]) * 4096
    finally:
        for c in clients:
            c.close()


def test_nbd_resize_visible_to_new_connections(server: NbdServer, engine: Any, vol: Any) -> None:
    with opened(server, vol.id) as old:
        assert old.size == 1 << 30
        engine.modify_volume(vol.id, size_gib=2)
        with opened(server, vol.id) as new:
            assert new.size == 2 << 30
            new.pwrite((2 << 30) - 5, b"tail!")
            assert new.pread((2 << 30) - 5, 5) == b"tail!"
        # the old connection keeps the size it was told
        assert old.cmd(nc.CMD_READ, 1 << 30, 1).error == nc.EINVAL


def test_nbd_disc_finishes_in_flight_writes(server: NbdServer, engine: Any, vol: Any) -> None:
    data = os.urandom(4 * MiB)
    with opened(server, vol.id) as c:
        c.request(nc.CMD_WRITE, 0, len(data), payload=data)
        c.disc()
        c.reply()  # the write is answered before the server hangs up
        assert c.is_closed()
    with opened(server, vol.id) as c:
        assert c.pread(0, len(data)) == data


def test_nbd_tcp_listener(engine: Any, vol: Any) -> None:
    with NbdServer(engine, unix_path=None, tcp=("127.0.0.1", 0)) as srv:
        assert srv.tcp_address is not None
        with NbdClient(srv.tcp_address) as c:
            c.go(vol.id)
            c.pwrite(10, b"tcp")
            assert c.pread(10, 3) == b"tcp"


# --- lifecycle -----------------------------------------------------------------------------


def test_nbd_stale_socket_removed_and_cleaned(engine: Any, tmp_path: Path, vol: Any) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # leaves a socket file nobody listens on
    assert path.exists()
    srv = NbdServer(engine, unix_path=path, tcp=None)
    srv.start()
    with opened(srv, vol.id) as c:
        c.pwrite(0, b"x")
    # a second server on a live socket must refuse rather than steal it
    with pytest.raises(OSError):
        NbdServer(engine, unix_path=path, tcp=None).start()
    srv.stop()
    assert not path.exists()
    # a regular file is never deleted
    path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        NbdServer(engine, unix_path=path, tcp=None).start()
    assert path.read_text() == "not a socket"


def test_nbd_stop_flushes_in_flight_and_answers(engine: Any, tmp_path: Path, vol: Any) -> None:
    srv = NbdServer(engine, unix_path=tmp_path / "s.sock", tcp=None)
    srv.start()
    c = opened(srv, vol.id)
    data = os.urandom(8 * MiB)
    cookies = [c.request(nc.CMD_WRITE, i * 8 * MiB, len(data), payload=data) for i in range(4)]
    answered = [c.reply() for _ in cookies]
    assert all(r.error == 0 for r in answered)
    t = threading.Thread(target=srv.stop)
    t.start()
    assert c.is_closed(5)
    t.join(30)
    assert not t.is_alive()
    assert not (tmp_path / "s.sock").exists()
    c.close()
    dev = engine.open_volume(vol.id)
    try:
        assert dev.pread(len(data), 24 * MiB) == data
    finally:
        dev.close()


def test_nbd_handshake_during_shutdown(engine: Any, tmp_path: Path, vol: Any) -> None:
    srv = NbdServer(engine, unix_path=tmp_path / "s.sock", tcp=None)
    srv.start()
    c = connect(srv)
    c.greet()
    srv.stop()
    with pytest.raises((nc.Closed, OSError)):
        c.opt(nc.OPT_GO, c.info_data(vol.id))  # EOF or ERR_SHUTDOWN-then-EOF: never hangs
        c.opt(nc.OPT_GO, c.info_data(vol.id))
    c.close()


# --- robustness ----------------------------------------------------------------------------


def _alive(server: NbdServer, vol_id: str) -> None:
    with opened(server, vol_id) as c:
        c.pwrite(0, b"ok")
        assert c.pread(0, 2) == b"ok"


def test_nbd_truncated_handshakes_and_garbage(server: NbdServer, engine: Any, vol: Any) -> None:
    bystander = opened(server, vol.id)
    bystander.pwrite(MiB, b"bystander")
    assert bystander.cmd(nc.CMD_FLUSH).error == 0
    before = store_snapshot(engine, vol.id)
    assert server.unix_path is not None
    path = str(server.unix_path)
    frames = [
        b"",
        b"\0\0",
        struct.pack(">I", 3) + struct.pack(">QI", nc.IHAVEOPT, 7),  # truncated option header
        struct.pack(">I", 3) + struct.pack(">QII", nc.IHAVEOPT, 7, 50) + b"short",
        struct.pack(">I", 3) + b"GARBAGE!" * 10,
        struct.pack(">I", 3) + struct.pack(">QII", nc.IHAVEOPT, 1, 2**31) + b"x",  # huge option
        os.urandom(200),
    ]
    for frame in frames:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(path)
        s.recv(18)
        s.sendall(frame)
        s.close()
    # a transmission-phase client that sends garbage is hung up on
    with opened(server, vol.id) as c:
        c.send(b"\xde\xad\xbe\xef" * 7)
        assert c.is_closed()
    # a client that vanishes with a half-sent write changes nothing
    with opened(server, vol.id) as c:
        c.send(struct.pack(">IHHQQI", nc.REQUEST_MAGIC, 0, nc.CMD_WRITE, 1, 0, 4096) + b"partial")
    time.sleep(0.2)
    assert bystander.pread(MiB, 9) == b"bystander"
    bystander.close()
    assert store_snapshot(engine, vol.id) == before
    assert nc.wait_for(lambda: server.connection_count == 0)
    _alive(server, vol.id)
    assert engine.fsck().ok


def test_nbd_fuzz_short(server: NbdServer, engine: Any, vol: Any) -> None:
    snap = engine.create_snapshot(vol.id)
    with opened(server, vol.id) as bystander:
        sent = nc.fuzz(str(server.unix_path), vol.id, 3.0, seed=1234)
        assert sent > 50
        # A fuzzing client hangs up without waiting for its replies: the server still runs
        # what it had read of its writes (random data, offset 0 included) until that
        # connection is done. Only then is offset 0 the bystander's alone.
        assert nc.wait_for(lambda: server.connection_count == 1, 20)
        bystander.pwrite(0, b"alive")
        assert bystander.pread(0, 5) == b"alive"
    assert nc.wait_for(lambda: server.connection_count == 0, 20)
    _alive(server, vol.id)
    assert engine.fsck().ok
    # the snapshot was never touched by the fuzzing
    with opened(server, snap.id) as c:
        assert c.pread(0, 4096) == bytes(4096)


def test_nbd_stop_cuts_off_client_that_reads_no_replies(engine: Any, tmp_path: Path, vol: Any) -> None:
    srv = NbdServer(engine, unix_path=tmp_path / "s.sock", tcp=None)
    srv.start()
    c = opened(srv, vol.id)
    for _ in range(200):  # ~200 MiB of replies nobody reads: the server blocks in send
        c.request(nc.CMD_READ, 0, MiB)
    time.sleep(0.5)
    t0 = time.monotonic()
    srv.stop(timeout=2)
    assert time.monotonic() - t0 < 15
    assert srv.connection_count == 0
    c.close()
