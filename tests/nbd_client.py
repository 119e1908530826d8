"""Test helpers for the NBD server: a raw-socket NBD client, and an in-memory engine stand-in.

``NbdClient`` speaks the wire protocol byte by byte so tests can send what real clients
(libnbd, qemu) refuse to send: out-of-range and oversized requests, bad flags, unknown
commands and options, truncated frames and garbage.

``MemEngine`` implements just the part of the engine's API (README, library section) the server uses
(devices with pread/pwrite/trim/write_zeroes/flush/extents, volumes, snapshots); tests use it
only while the real ``ebsengine.Engine`` cannot be imported.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_PEEK, OPT_STARTTLS = 1, 2, 3, 4, 5
OPT_INFO, OPT_GO, OPT_SR, OPT_LIST_META, OPT_SET_META = 6, 7, 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 1 << 31
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_UNKNOWN, ERR_SHUTDOWN = ERR | 1, ERR | 2, ERR | 3, ERR | 6, ERR | 7
ERR_TLS_REQD = ERR | 5
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_ZEROES, CMD_STATUS = range(8)
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO = 1, 2, 4, 8, 16
TF_HAS_FLAGS, TF_READ_ONLY, TF_FLUSH, TF_FUA = 1, 2, 4, 8
TF_TRIM, TF_ZEROES, TF_DF, TF_MULTI_CONN, TF_CACHE, TF_FAST_ZERO = 32, 64, 128, 256, 1024, 2048
CHUNK_NONE, CHUNK_DATA, CHUNK_HOLE, CHUNK_STATUS, CHUNK_ERROR = 0, 1, 2, 5, 0x8001
EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 22, 28, 75, 95, 108


class Closed(Exception):
    """The server closed the connection."""


@dataclass
class OptReply:
    option: int
    type: int
    data: bytes


@dataclass
class Reply:
    cookie: int
    error: int = 0
    data: bytes = b""  # simple READ data, or reassembled structured READ data
    chunks: list[tuple[int, int, bytes]] = field(default_factory=list)  # (flags, type, payload)
    structured: bool = False

    def extents(self) -> list[tuple[int, int]]:
        for _flags, ctype, payload in self.chunks:
            if ctype == CHUNK_STATUS:
                body = payload[4:]
                return [struct.unpack_from(">II", body, i) for i in range(0, len(body), 8)]
        return []


class NbdClient:
    """A deliberately permissive NBD client over a raw socket."""

    def __init__(self, address: str | tuple[str, int], timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        """``tls``: ``go()`` sends STARTTLS first and continues over TLS with this context."""
        self.tls = tls
        if isinstance(address, tuple):
            self.sock = socket.create_connection(address, timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(address)
        self.structured = False
        self.size = 0
        self.tflags = 0
        self.meta_id: int | None = None
        self._cookies = itertools.count(1)

    # --- bytes ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                got = self.sock.recv(n - len(buf))
            except ConnectionResetError as exc:
                raise Closed("reset") from exc
            if not got:
                raise Closed(f"EOF after {len(buf)} of {n} bytes")
            buf += got
        return bytes(buf)

    def is_closed(self, wait: float = 2.0) -> bool:
        """True if the server closed the connection (EOF within ``wait`` seconds)."""
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- handshake ------------------------------------------------------------------------

    def greet(self, flags: int = 3) -> int:
        magic, opt, hflags = struct.unpack(">QQH", self.recv(18))
        assert (magic, opt) == (NBDMAGIC, IHAVEOPT)
        self.send(struct.pack(">I", flags))
        return hflags

    def send_opt(self, option: int, data: bytes = b"") -> None:
        self.send(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)

    def read_opt_reply(self) -> OptReply:
        magic, option, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == OPT_REPLY_MAGIC, hex(magic)
        return OptReply(option, rtype, self.recv(length))

    def starttls(self, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        """STARTTLS (asserts ACK), then the TLS handshake: the rest goes over TLS."""
        replies = self.opt(OPT_STARTTLS)
        assert replies[-1].type == REP_ACK, replies
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def opt(self, option: int, data: bytes = b"") -> list[OptReply]:
        """Send an option and collect its replies up to the final ACK or error."""
        self.send_opt(option, data)
        out = []
        while True:
            r = self.read_opt_reply()
            assert r.option == option
            out.append(r)
            if r.type == REP_ACK or r.type & ERR:
                return out

    @staticmethod
    def info_data(name: str, infos: tuple[int, ...] = (INFO_BLOCK_SIZE,)) -> bytes:
        raw = name.encode()
        return struct.pack(">I", len(raw)) + raw + struct.pack(">H", len(infos)) + b"".join(
            struct.pack(">H", i) for i in infos
        )

    @staticmethod
    def meta_data(name: str, queries: list[str]) -> bytes:
        raw = name.encode()
        out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
        for q in queries:
            out += struct.pack(">I", len(q)) + q.encode()
        return out

    def go(self, name: str, structured: bool = True, meta: bool = True, flags: int = 3) -> list[OptReply]:
        """Full handshake up to transmission (STARTTLS first with ``tls``); asserts success."""
        self.greet(flags)
        if self.tls is not None:
            self.starttls(self.tls)
        if structured:
            assert self.opt(OPT_SR)[-1].type == REP_ACK
            self.structured = True
            if meta:
                replies = self.opt(OPT_SET_META, self.meta_data(name, ["base:allocation"]))
                assert replies[-1].type == REP_ACK, replies
                for r in replies:
                    if r.type == REP_META:
                        self.meta_id = struct.unpack(">I", r.data[:4])[0]
        replies = self.opt(OPT_GO, self.info_data(name))
        assert replies[-1].type == REP_ACK, replies
        for r in replies:
            if r.type == REP_INFO and struct.unpack(">H", r.data[:2])[0] == INFO_EXPORT:
                _, self.size, self.tflags = struct.unpack(">HQH", r.data)
        return replies

    # --- transmission ---------------------------------------------------------------------

    def request(self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0,
                payload: bytes = b"", cookie: int | None = None) -> int:
        if cookie is None:
            cookie = next(self._cookies)
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, length) + payload)
        return cookie

    def reply(self, read_length: int | None = None) -> Reply:
        """Read one complete reply. ``read_length``: data length of a simple READ reply."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE_MAGIC:
            error, cookie = struct.unpack(">IQ", self.recv(12))
            data = self.recv(read_length) if (read_length and not error) else b""
            return Reply(cookie, error, data)
        assert magic == STRUCTURED_MAGIC, hex(magic)
        rep: Reply | None = None
        pieces: dict[int, bytes] = {}
        while True:
            if rep is not None:
                m = struct.unpack(">I", self.recv(4))[0]
                assert m == STRUCTURED_MAGIC, hex(m)
            flags, ctype, cookie, length = struct.unpack(">HHQI", self.recv(16))
            payload = self.recv(length)
            if rep is None:
                rep = Reply(cookie, structured=True)
            assert cookie == rep.cookie, "chunks of one reply interleaved with another"
            rep.chunks.append((flags, ctype, payload))
            if ctype == CHUNK_DATA:
                pieces[struct.unpack(">Q", payload[:8])[0]] = payload[8:]
            elif ctype == CHUNK_HOLE:
                off, size = struct.unpack(">QI", payload)
                pieces[off] = bytes(size)
            elif ctype & 0x8000:
                rep.error = struct.unpack(">I", payload[:4])[0]
            if flags & 1:
                break
        if pieces:
            rep.data = b"".join(pieces[k] for k in sorted(pieces))
        return rep

    def cmd(self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0,
            payload: bytes = b"") -> Reply:
        cookie = self.request(cmd, offset, length, flags, payload)
        r = self.reply(length if cmd == CMD_READ else None)
        assert r.cookie == cookie
        return r

    def pread(self, offset: int, length: int, flags: int = 0) -> bytes:
        r = self.cmd(CMD_READ, offset, length, flags)
        assert r.error == 0, r.error
        assert len(r.data) == length
        return r.data

    def pwrite(self, offset: int, data: bytes, flags: int = 0) -> None:
        r = self.cmd(CMD_WRITE, offset, len(data), flags, data)
        assert r.error == 0, r.error

    def disc(self) -> None:
        self.request(CMD_DISC)


def wait_for(pred: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False


# --- random-frame fuzzing (tests/services/test_nbd_protocol.py, scripts/nbd_fuzz.py) -----------

def _random_frame(rng: random.Random, size: int) -> bytes:
    kind = rng.random()
    if kind < 0.5:  # a plausible request with random fields
        cmd = rng.choice([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, rng.randrange(65536)])
        flags = rng.choice([0, 0, 1, 2, 4, 8, 16, rng.randrange(65536)])
        offset = rng.choice([0, rng.randrange(size), size - 1, size, rng.randrange(2**64)])
        length = rng.choice([0, 1, 512, 4096, rng.randrange(1 << 20), rng.randrange(2**32)])
        frame = struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, rng.randrange(2**64), offset, length)
        if cmd == CMD_WRITE and length < (1 << 20):
            frame += rng.randbytes(length)
        return frame
    if kind < 0.8:
        return rng.randbytes(rng.randrange(1, 64))
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 0, 512)


def fuzz(address: str | tuple[str, int], vol_id: str, seconds: float, seed: int) -> int:
    """Random frames on fresh connections (handshake and transmission). Returns frames sent."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        c = NbdClient(address)
        try:
            if rng.random() < 0.3:  # handshake-phase fuzz
                c.greet(rng.choice([0, 1, 3, rng.randrange(2**32)]))
                for _ in range(rng.randrange(1, 6)):
                    opt = rng.choice([1, 2, 3, 6, 7, 8, 9, 10, rng.randrange(2**32)])
                    data = rng.randbytes(rng.randrange(0, 40))
                    c.send(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)
                    sent += 1
            else:
                c.go(vol_id, structured=rng.random() < 0.7)
                for _ in range(rng.randrange(1, 20)):
                    c.send(_random_frame(rng, c.size))
                    sent += 1
        except (Closed, OSError, AssertionError):
            pass
        finally:
            c.close()
    return sent


# --- an in-memory stand-in for ebsengine.Engine (used only while the real one is missing) --

GiB = 1 << 30
CHUNK = 64 * 1024


class _Data:
    """Sparse bytes: chunk index -> bytearray (absent = hole), shared by copies on write."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.chunks: dict[int, bytes | bytearray] = {}
        self.lock = threading.RLock()

    def copy(self) -> _Data:
        d = _Data(self.size)
        d.chunks = {k: bytes(v) for k, v in self.chunks.items()}
        return d


class MemDevice:
    def __init__(self, ident: str, data: _Data, readonly: bool) -> None:
        self.id = ident
        self._d = data
        self.readonly = readonly
        self.closed = False

    @property
    def size(self) -> int:
        return self._d.size

    def _check(self, offset: int, length: int) -> None:
        from ebsengine import errors

        if self.closed:
            raise errors.Closed("closed")
        if offset < 0 or length < 0 or offset + length > self._d.size:
            raise errors.OutOfRange(f"{offset}+{length} > {self._d.size}")

    def _ro(self) -> None:
        from ebsengine import errors

        if self.readonly:
            raise errors.ReadOnlyDevice("read-only")

    def pread(self, length: int, offset: int) -> bytes:
        self._check(offset, length)
        out = bytearray(length)
        with self._d.lock:
            pos = offset
            while pos < offset + length:
                ci, co = divmod(pos, CHUNK)
                n = min(CHUNK - co, offset + length - pos)
                c = self._d.chunks.get(ci)
                if c is not None:
                    out[pos - offset : pos - offset + n] = c[co : co + n]
                pos += n
        return bytes(out)

    def preadinto(self, buf: Any, offset: int) -> int:
        data = self.pread(len(buf), offset)
        buf[: len(data)] = data
        return len(data)

    def pwrite(self, data: bytes, offset: int) -> int:
        self._ro()
        self._check(offset, len(data))
        with self._d.lock:
            pos = offset
            mv = memoryview(data)
            while pos < offset + len(data):
                ci, co = divmod(pos, CHUNK)
                n = min(CHUNK - co, offset + len(data) - pos)
                c = self._d.chunks.get(ci)
                if not isinstance(c, bytearray):
                    c = bytearray(c) if c is not None else bytearray(CHUNK)
                    self._d.chunks[ci] = c
                c[co : co + n] = mv[pos - offset : pos - offset + n]
                pos += n
        return len(data)

    def _clear(self, offset: int, length: int, hole: bool) -> None:
        with self._d.lock:
            pos = offset
            while pos < offset + length:
                ci, co = divmod(pos, CHUNK)
                n = min(CHUNK - co, offset + length - pos)
                if n == CHUNK and hole:
                    self._d.chunks.pop(ci, None)
                elif ci in self._d.chunks:
                    c = bytearray(self._d.chunks[ci])
                    c[co : co + n] = bytes(n)
                    self._d.chunks[ci] = c
                pos += n

    def trim(self, offset: int, length: int) -> None:
        self._ro()
        self._check(offset, length)
        self._clear(offset, length, True)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._ro()
        self._check(offset, length)
        self._clear(offset, length, True)

    def flush(self) -> None:
        pass

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        self._check(offset, length)
        out: list[list[int]] = []
        pos = offset
        with self._d.lock:
            while pos < offset + length:
                ci, co = divmod(pos, CHUNK)
                n = min(CHUNK - co, offset + length - pos)
                c = self._d.chunks.get(ci)
                f = 3 if c is None else (2 if not any(c) else 0)
                if out and out[-1][1] == f:
                    out[-1][0] += n
                else:
                    out.append([n, f])
                pos += n
        return [(a, b) for a, b in out]

    def close(self) -> None:
        self.closed = True


@dataclass
class MemVolume:
    id: str
    size_gib: int
    snapshot_id: str | None = None
    state: str = "available"

    @property
    def size_bytes(self) -> int:
        return self.size_gib * GiB


@dataclass
class MemSnapshot:
    id: str
    volume_id: str
    volume_size_gib: int
    state: str = "completed"


@dataclass
class MemFsck:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


class MemEngine:
    """The subset of the Engine contract the NBD layer and its tests use."""

    def __init__(self, path: Any = None) -> None:
        self._vols: dict[str, tuple[MemVolume, _Data]] = {}
        self._snaps: dict[str, tuple[MemSnapshot, _Data]] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> MemEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    @staticmethod
    def _new_id(prefix: str) -> str:
        return f"{prefix}-{os.urandom(9).hex()[:17]}"

    def create_volume(self, size_gib: int | None = None, volume_type: str = "gp2", *,
                      snapshot_id: str | None = None, **_: Any) -> MemVolume:
        from ebsengine import errors

        with self._lock:
            if snapshot_id is not None:
                if snapshot_id not in self._snaps:
                    raise errors.SnapshotNotFound(snapshot_id)
                snap, sdata = self._snaps[snapshot_id]
                data = sdata.copy()
                size_gib = max(size_gib or 0, snap.volume_size_gib)
                data.size = size_gib * GiB
            else:
                assert size_gib
                data = _Data(size_gib * GiB)
            vol = MemVolume(self._new_id("vol"), size_gib, snapshot_id)
            self._vols[vol.id] = (vol, data)
            return vol

    def get_volume(self, vid: str) -> MemVolume:
        from ebsengine import errors

        try:
            return self._vols[vid][0]
        except KeyError:
            raise errors.VolumeNotFound(vid) from None

    def list_volumes(self) -> list[MemVolume]:
        return [v for v, _ in self._vols.values()]

    def modify_volume(self, vid: str, size_gib: int | None = None, **_: Any) -> MemVolume:
        vol = self.get_volume(vid)
        if size_gib is not None:
            vol.size_gib = size_gib
            self._vols[vid][1].size = size_gib * GiB
        return vol

    def create_snapshot(self, volume_id: str, description: str = "", tags: Any = None) -> MemSnapshot:
        vol = self.get_volume(volume_id)
        data = self._vols[volume_id][1]
        with data.lock:
            snap = MemSnapshot(self._new_id("snap"), volume_id, vol.size_gib)
            self._snaps[snap.id] = (snap, data.copy())
        return snap

    def get_snapshot(self, sid: str) -> MemSnapshot:
        from ebsengine import errors

        try:
            return self._snaps[sid][0]
        except KeyError:
            raise errors.SnapshotNotFound(sid) from None

    def list_snapshots(self, volume_id: str | None = None) -> list[MemSnapshot]:
        return [s for s, _ in self._snaps.values() if volume_id in (None, s.volume_id)]

    def open_volume(self, vid: str) -> MemDevice:
        self.get_volume(vid)
        return MemDevice(vid, self._vols[vid][1], False)

    def open_snapshot(self, sid: str) -> MemDevice:
        self.get_snapshot(sid)
        return MemDevice(sid, self._snaps[sid][1], True)

    def fsck(self) -> MemFsck:
        return MemFsck()


# --- fixtures shared by the tests/services/test_nbd_*.py modules (imported there by name) -----------

def real_engine_class() -> Any:
    """``ebsengine.Engine`` if it imports, else ``None``."""
    try:
        import ebsengine

        return ebsengine.Engine  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return None


def make_engine(path: Any) -> Any:
    cls = real_engine_class()
    if cls is None or os.environ.get("EBSENGINE_NBD_FAKE_ENGINE"):
        return MemEngine(path)
    return cls(path)
