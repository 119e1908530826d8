"""NBD wire constants, frame layouts and socket framing helpers (fixed newstyle).

Everything here is big-endian, as on the wire. The values follow NetworkBlockDevice/nbd
``doc/proto.md``. Nothing in this module
knows about volumes: it only packs, unpacks and moves bytes.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable
from typing import Any, Final, Protocol

# --- handshake -----------------------------------------------------------------------------

NBDMAGIC: Final = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT: Final = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC: Final = 0x0003E889045565A9

FLAG_FIXED_NEWSTYLE: Final = 1 << 0
FLAG_NO_ZEROES: Final = 1 << 1
SERVER_HANDSHAKE_FLAGS: Final = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
CLIENT_FLAG_FIXED_NEWSTYLE: Final = 1 << 0
CLIENT_FLAG_NO_ZEROES: Final = 1 << 1
CLIENT_FLAGS_KNOWN: Final = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES

OPT_EXPORT_NAME: Final = 1
OPT_ABORT: Final = 2
OPT_LIST: Final = 3
OPT_PEEK_EXPORT: Final = 4
OPT_STARTTLS: Final = 5
OPT_INFO: Final = 6
OPT_GO: Final = 7
OPT_STRUCTURED_REPLY: Final = 8
OPT_LIST_META_CONTEXT: Final = 9
OPT_SET_META_CONTEXT: Final = 10
OPT_EXTENDED_HEADERS: Final = 11

REP_ACK: Final = 1
REP_SERVER: Final = 2
REP_INFO: Final = 3
REP_META_CONTEXT: Final = 4
REP_FLAG_ERROR: Final = 1 << 31
REP_ERR_UNSUP: Final = REP_FLAG_ERROR | 1
REP_ERR_POLICY: Final = REP_FLAG_ERROR | 2
REP_ERR_INVALID: Final = REP_FLAG_ERROR | 3
REP_ERR_PLATFORM: Final = REP_FLAG_ERROR | 4
REP_ERR_TLS_REQD: Final = REP_FLAG_ERROR | 5
REP_ERR_UNKNOWN: Final = REP_FLAG_ERROR | 6
REP_ERR_SHUTDOWN: Final = REP_FLAG_ERROR | 7
REP_ERR_BLOCK_SIZE_REQD: Final = REP_FLAG_ERROR | 8
REP_ERR_TOO_BIG: Final = REP_FLAG_ERROR | 9

INFO_EXPORT: Final = 0
INFO_NAME: Final = 1
INFO_DESCRIPTION: Final = 2
INFO_BLOCK_SIZE: Final = 3

META_BASE_ALLOCATION: Final = "base:allocation"

# --- transmission flags (u16) --------------------------------------------------------------

TF_HAS_FLAGS: Final = 1 << 0
TF_READ_ONLY: Final = 1 << 1
TF_SEND_FLUSH: Final = 1 << 2
TF_SEND_FUA: Final = 1 << 3
TF_ROTATIONAL: Final = 1 << 4
TF_SEND_TRIM: Final = 1 << 5
TF_SEND_WRITE_ZEROES: Final = 1 << 6
TF_SEND_DF: Final = 1 << 7
TF_CAN_MULTI_CONN: Final = 1 << 8
TF_SEND_RESIZE: Final = 1 << 9
TF_SEND_CACHE: Final = 1 << 10
TF_SEND_FAST_ZERO: Final = 1 << 11

# --- requests ------------------------------------------------------------------------------

REQUEST_MAGIC: Final = 0x25609513
CMD_READ: Final = 0
CMD_WRITE: Final = 1
CMD_DISC: Final = 2
CMD_FLUSH: Final = 3
CMD_TRIM: Final = 4
CMD_CACHE: Final = 5
CMD_WRITE_ZEROES: Final = 6
CMD_BLOCK_STATUS: Final = 7
CMD_RESIZE: Final = 8

CMD_NAMES: Final = {
    CMD_READ: "READ",
    CMD_WRITE: "WRITE",
    CMD_DISC: "DISC",
    CMD_FLUSH: "FLUSH",
    CMD_TRIM: "TRIM",
    CMD_CACHE: "CACHE",
    CMD_WRITE_ZEROES: "WRITE_ZEROES",
    CMD_BLOCK_STATUS: "BLOCK_STATUS",
    CMD_RESIZE: "RESIZE",
}

CMD_FLAG_FUA: Final = 1 << 0
CMD_FLAG_NO_HOLE: Final = 1 << 1
CMD_FLAG_DF: Final = 1 << 2
CMD_FLAG_REQ_ONE: Final = 1 << 3
CMD_FLAG_FAST_ZERO: Final = 1 << 4

# --- replies -------------------------------------------------------------------------------

SIMPLE_REPLY_MAGIC: Final = 0x67446698
STRUCTURED_REPLY_MAGIC: Final = 0x668E33EF
REPLY_FLAG_DONE: Final = 1 << 0

CHUNK_NONE: Final = 0
CHUNK_OFFSET_DATA: Final = 1
CHUNK_OFFSET_HOLE: Final = 2
CHUNK_BLOCK_STATUS: Final = 5  # the stale reference nbd.h says 3; spec, qemu and libnbd use 5
CHUNK_ERROR: Final = 0x8001
CHUNK_ERROR_OFFSET: Final = 0x8002

STATE_HOLE: Final = 1 << 0
STATE_ZERO: Final = 1 << 1

# --- NBD error numbers (the wire values, independent of the host's errno module) -----------

NBD_EPERM: Final = 1
NBD_EIO: Final = 5
NBD_ENOMEM: Final = 12
NBD_EINVAL: Final = 22
NBD_ENOSPC: Final = 28
NBD_EOVERFLOW: Final = 75
NBD_ENOTSUP: Final = 95
NBD_ESHUTDOWN: Final = 108

# host errno -> NBD errno, for OSErrors that escape from the storage layer
HOST_ERRNO_TO_NBD: Final = {
    errno.EPERM: NBD_EPERM,
    errno.EACCES: NBD_EPERM,
    errno.EROFS: NBD_EPERM,
    errno.EINVAL: NBD_EINVAL,
    errno.ENOSPC: NBD_ENOSPC,
    errno.EDQUOT: NBD_ENOSPC,
    errno.EFBIG: NBD_ENOSPC,
    errno.ENOMEM: NBD_ENOMEM,
    errno.EOVERFLOW: NBD_EOVERFLOW,
    errno.EOPNOTSUPP: NBD_ENOTSUP,
    errno.ESHUTDOWN: NBD_ESHUTDOWN,
}

# --- sizes we advertise (INFO_BLOCK_SIZE) ---------------------------------------------------

MIN_BLOCK: Final = 1  # any offset/length works; the engine does read-modify-write
PREFERRED_BLOCK: Final = 4096
MAX_PAYLOAD: Final = 32 * 1024 * 1024
MAX_STRING: Final = 4096  # export names, meta-context queries (spec hard limit)
MAX_OPTION_LEN: Final = 1024 * 1024  # longer option payloads are a DoS: hang up
MAX_EXTENTS: Final = 1 << 20  # per BLOCK_STATUS chunk

# --- frame layouts -------------------------------------------------------------------------

HANDSHAKE = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, tflags (+124 zero bytes unless NO_ZEROES)
INFO_EXPORT_DATA = struct.Struct(">HQH")  # info type, size, tflags
INFO_BLOCK_SIZE_DATA = struct.Struct(">HIII")  # info type, min, preferred, max payload
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
CHUNK_HEADER = struct.Struct(">IHHQI")  # magic, flags, type, cookie, payload length
OFFSET_HOLE_PAYLOAD = struct.Struct(">QI")  # offset, size
U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")
U16 = struct.Struct(">H")
ERROR_PAYLOAD = struct.Struct(">IH")  # error, message length
EXTENT = struct.Struct(">II")  # length, flags

# A hole/zero range shorter than this inside a structured read is sent as data: a chunk
# header costs 32 bytes, and tiny chunks only make the client work harder.
MIN_HOLE_CHUNK: Final = 4096


class Disconnect(Exception):
    """The peer closed the socket, or the stream is no longer in frame: drop the connection."""


class Stream(Protocol):
    """What the handshake and transmission use of a connection: a ``socket.socket``, or the
    TLS stream of ``tls.py`` after STARTTLS (same semantics for these calls)."""

    def recv(self, bufsize: int, flags: int = ..., /) -> bytes: ...
    def recv_into(self, buffer: memoryview, nbytes: int = ..., /) -> int: ...
    def sendall(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def sendmsg(
        self, buffers: Iterable[bytes | bytearray | memoryview], ancdata: Any = ...,
        flags: int = ..., /,
    ) -> int: ...
    def shutdown(self, how: int, /) -> None: ...
    def fileno(self) -> int: ...


def recv_exact(sock: Stream, n: int) -> bytes:
    """Return exactly ``n`` bytes from ``sock``; raise :class:`Disconnect` on EOF."""
    if n == 0:
        return b""
    data = sock.recv(n, socket.MSG_WAITALL)
    if len(data) == n:
        return data
    if not data:
        raise Disconnect("peer closed the connection")
    # MSG_WAITALL may come back short (a signal, a shutdown): collect the rest
    parts = [data]
    got = len(data)
    while got < n:
        more = sock.recv(n - got, socket.MSG_WAITALL)
        if not more:
            raise Disconnect("peer closed the connection mid-frame")
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def drain(sock: Stream, n: int) -> None:
    """Read and discard ``n`` bytes (a refused WRITE's payload) without holding them in memory."""
    buf = bytearray(min(n, 1 << 20))
    view = memoryview(buf)
    while n > 0:
        got = sock.recv_into(view[: min(n, len(buf))])
        if got == 0:
            raise Disconnect("peer closed the connection while a payload was being drained")
        n -= got


def drop_sent(views: list[memoryview], sent: int) -> None:
    """Remove the first ``sent`` bytes from the gather list ``views`` (after a short send)."""
    while sent:
        head = views[0]
        if sent >= len(head):
            sent -= len(head)
            views.pop(0)
        else:
            views[0] = head[sent:]
            sent = 0


def send_all(sock: Stream, buffers: list[bytes | bytearray | memoryview]) -> None:
    """Send every byte of ``buffers`` in order (a gather write, looping over short sends)."""
    if len(buffers) == 1:
        sock.sendall(buffers[0])
        return
    if sum(len(b) for b in buffers) <= 128 * 1024:  # a copy is cheaper than iovec juggling
        sock.sendall(b"".join(buffers))
        return
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        sent = sock.sendmsg(views[:512])  # IOV_MAX is 1024 on Linux
        drop_sent(views, sent)


def option_reply(option: int, reply_type: int, payload: bytes = b"") -> bytes:
    """One option reply frame."""
    return OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, reply_type, len(payload)) + payload


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def chunk_header(cookie: int, chunk_type: int, length: int, done: bool) -> bytes:
    return CHUNK_HEADER.pack(
        STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0, chunk_type, cookie, length
    )


def error_chunk(cookie: int, error: int, message: str = "") -> bytes:
    """A final (DONE) ``ERROR`` chunk carrying ``error`` and an optional message."""
    msg = message.encode("utf-8", "replace")[:1024]
    payload = ERROR_PAYLOAD.pack(error, len(msg)) + msg
    return chunk_header(cookie, CHUNK_ERROR, len(payload), True) + payload
