"""TLS for NBD over TCP: the server's X.509 settings and a TLS stream the NBD code can share.

The NBD protocol upgrades a connection in the middle of option haggling (``NBD_OPT_STARTTLS``,
proto.md "TLS support"): the server answers ``NBD_REP_ACK`` in plain text, then both sides run
a TLS handshake on the same socket and everything after it is encrypted.

:class:`TlsConfig` holds the server's certificate, key, optional client CA and mode:

* ``on`` -- STARTTLS is offered; a client may also stay in plain text (SELECTIVETLS with no
  TLS-only export);
* ``require`` -- every option but STARTTLS and ABORT is answered ``NBD_REP_ERR_TLS_REQD``
  until TLS is up, and a plain ``NBD_OPT_EXPORT_NAME`` closes the connection (FORCEDTLS).

:class:`TlsSocket` is why this is not ``ssl.SSLSocket``: the transmission phase reads on the
connection's thread while workers and the connection's sender write replies
(``transmission.py``), and a worker sends only what the socket takes without blocking
(``MSG_DONTWAIT``), handing the unsent rest of a frame to the sender. An ``SSLSocket`` offers
neither: OpenSSL forbids using one ``SSL`` object from two threads at once, it refuses
``recv``/``send`` flags and ``sendmsg``, and a non-blocking ``SSL_write`` that hit
``SSL_ERROR_WANT_WRITE`` must be retried with the same bytes. Here the TLS state
(``ssl.SSLObject`` over two ``ssl.MemoryBIO``) is used under one lock, only the raw socket
blocks, and ``sendmsg``/``recv`` keep socket semantics:

* ``sendmsg(buffers, (), MSG_DONTWAIT)`` returns the plaintext bytes that are entirely on the
  wire (encrypted) or raises ``BlockingIOError``. Plaintext is encrypted ``UNIT`` bytes at a
  time; when a unit's ciphertext is only partly sent, the rest of it waits in the stream and
  the unit counts as *not* sent. The next write must start with that same unit (checked), as
  the next write of a half-sent frame does in ``transmission.py``; its ciphertext is then
  finished instead of encrypting the unit twice;
* ``recv(n, flags)`` with ``MSG_DONTWAIT`` (plaintext already decrypted, else what the raw
  socket has without waiting) and ``MSG_WAITALL``; ``b""`` at EOF (close_notify or a plain
  close); a TLS error (a bad record, an alert) raises ``ssl.SSLError``, an ``OSError``.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ebsengine.nbd import protocol as p

log = logging.getLogger("ebsengine.nbd")

TLS_MODES = ("off", "on", "require")
UNIT = 64 * 1024  # plaintext encrypted per step of sendmsg (4 TLS records)
RAW_RECV = 256 * 1024


class TlsConfigError(ValueError):
    """The TLS settings cannot be used (a file is missing or unreadable, a key does not match)."""


@dataclass(frozen=True)
class TlsConfig:
    """The server side of NBD's TLS: X.509 certificate and key (PEM), optional client CA.

    ``verify_client``: a client must present a certificate signed by ``ca`` (else the TLS
    handshake fails and the connection is closed). ``mode``: ``"on"`` or ``"require"``.
    """

    cert: str
    key: str
    ca: str | None = None
    verify_client: bool = False
    mode: str = "require"

    def __post_init__(self) -> None:
        if self.mode not in ("on", "require"):
            raise TlsConfigError(f"TLS mode must be 'on' or 'require', not {self.mode!r}")
        if self.verify_client and not self.ca:
            raise TlsConfigError("client verification needs a CA certificate (--tls-ca)")

    @property
    def required(self) -> bool:
        return self.mode == "require"

    def context(self) -> ssl.SSLContext:
        """A server ``SSLContext`` (TLS 1.2 or later), or :class:`TlsConfigError`."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # proto.md: MUST 1.2, no older by default
        for label, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            if path is not None and not Path(path).is_file():
                raise TlsConfigError(f"TLS {label} file {path}: no such file")
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"cannot load the TLS certificate {self.cert} with key {self.key}: {exc}"
            ) from None
        if self.ca:
            try:
                ctx.load_verify_locations(cafile=self.ca)
            except (OSError, ssl.SSLError) as exc:
                raise TlsConfigError(f"cannot load the TLS CA {self.ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if self.verify_client else ssl.CERT_NONE
        return ctx


class TlsSocket:
    """A server-side TLS stream over a connected socket, shareable by one reader and one
    writer at a time (see the module docstring for the send and receive rules)."""

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext) -> None:
        self.raw = raw
        self.family = raw.family
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._lock = threading.Lock()  # the SSLObject, its BIOs, _wbuf
        self._wlock = threading.Lock()  # one writer of ciphertext to the raw socket at a time
        self._wbuf = bytearray()  # ciphertext not yet on the wire
        self._unsent_unit: bytes | None = None  # plaintext whose ciphertext is partly sent
        self._eof = False

    # --- handshake ------------------------------------------------------------------------

    @classmethod
    def accept(cls, raw: socket.socket, ctx: ssl.SSLContext) -> TlsSocket:
        """Run the server's TLS handshake on ``raw`` (blocking, within the socket's timeout).
        A failed handshake raises ``ssl.SSLError`` (or :class:`~protocol.Disconnect`)."""
        tls = cls(raw, ctx)
        while True:
            try:
                with tls._lock:
                    tls._ssl.do_handshake()
                    tls._collect()
                break
            except ssl.SSLWantReadError:
                with tls._lock:
                    tls._collect()
                tls._flush(nonblock=False)
                data = raw.recv(RAW_RECV)
                if not data:
                    raise p.Disconnect("peer closed the connection in the TLS handshake") from None
                tls._in.write(data)
            except ssl.SSLError:
                with tls._lock:  # send our alert, so the client learns why
                    tls._collect()
                try:
                    tls._flush(nonblock=True)
                except OSError:
                    pass
                raise
        tls._flush(nonblock=False)
        return tls

    @property
    def version(self) -> str | None:
        return self._ssl.version()

    def getpeercert(self) -> dict[str, object] | None:
        cert = self._ssl.getpeercert()
        return dict(cert) if cert else None

    # --- socket surface -------------------------------------------------------------------

    def fileno(self) -> int:
        return self.raw.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.raw.settimeout(timeout)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.raw.setsockopt(level, option, value)

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)

    def close(self) -> None:
        self.raw.close()

    def close_notify(self) -> None:
        """Send TLS close_notify, best effort, without waiting (the client's close ends it)."""
        try:
            with self._lock:
                try:
                    self._ssl.unwrap()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                self._collect()
            if self._wlock.acquire(blocking=False):
                try:
                    self._flush(nonblock=True)
                finally:
                    self._wlock.release()
        except (OSError, ValueError):
            pass

    # --- receiving ------------------------------------------------------------------------

    def recv(self, n: int, flags: int = 0) -> bytes:
        if flags & socket.MSG_WAITALL:
            parts = []
            got = 0
            while got < n:
                data = self._recv_some(n - got, nonblock=False)
                if not data:
                    break
                parts.append(data)
                got += len(data)
            return b"".join(parts)
        return self._recv_some(n, nonblock=bool(flags & socket.MSG_DONTWAIT))

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self._recv_some(nbytes or len(view), nonblock=False)
        view[: len(data)] = data
        return len(data)

    def _recv_some(self, n: int, *, nonblock: bool) -> bytes:
        """Up to ``n`` plaintext bytes (at least one, or b"" at EOF); ``nonblock``: raise
        ``BlockingIOError`` rather than wait for the raw socket."""
        while True:
            failed: ssl.SSLError | None = None
            with self._lock:
                try:
                    data: bytes | None = self._ssl.read(n)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    data = b""  # close_notify, or the peer closed without one
                except ssl.SSLError as exc:  # a bad record: our alert goes out, then raise
                    data, failed = None, exc
                wrote = self._collect()
            if wrote:  # a TLS 1.3 KeyUpdate answer, an alert: never wait for it to go
                self._flush_now()
            if failed is not None:
                raise failed
            if data is not None:
                return data
            if self._eof:
                return b""
            raw = self.raw.recv(RAW_RECV, socket.MSG_DONTWAIT if nonblock else 0)
            with self._lock:
                if raw:
                    self._in.write(raw)
                else:
                    self._in.write_eof()
                    self._eof = True

    # --- sending --------------------------------------------------------------------------

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        views = [memoryview(data).cast("B")]
        while views and len(views[0]):
            p.drop_sent(views, self.sendmsg(views))

    def sendmsg(
        self,
        buffers: Iterable[bytes | bytearray | memoryview],
        ancdata: object = (),
        flags: int = 0,
    ) -> int:
        """Send plaintext; returns how many bytes are wholly on the wire (see module doc)."""
        nonblock = bool(flags & socket.MSG_DONTWAIT)
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        if not self._wlock.acquire(blocking=not nonblock):
            raise BlockingIOError(errno.EAGAIN, "another thread is writing")
        try:
            total = 0
            unit = self._unsent_unit
            if unit is not None:  # finish the half-sent unit's ciphertext first
                if _take(views, len(unit)) != unit:
                    raise RuntimeError("TLS write retried with other data than the unsent unit")
                if not self._flush(nonblock):
                    raise BlockingIOError(errno.EAGAIN, "the TLS stream is full")
                self._unsent_unit = None
                total = len(unit)
            while views:
                chunk = _take(views, UNIT)
                with self._lock:
                    self._ssl.write(chunk)
                    self._collect()
                if not self._flush(nonblock):
                    self._unsent_unit = chunk
                    if total:
                        return total
                    raise BlockingIOError(errno.EAGAIN, "the TLS stream is full")
                total += len(chunk)
            return total
        finally:
            self._wlock.release()

    def _collect(self) -> bool:
        """Move ciphertext from the SSLObject to ``_wbuf`` (call under ``_lock``)."""
        if self._out.pending:
            self._wbuf += self._out.read()
            return True
        return False

    def _flush(self, nonblock: bool) -> bool:
        """Write ``_wbuf`` to the raw socket (call under ``_wlock``, or before any writer
        exists). True once it is empty; False if ``nonblock`` and the socket is full. A
        blocking send that times out (``SO_SNDTIMEO``) raises, like a plain socket's."""
        raw = self.raw
        while True:
            with self._lock:
                if not self._wbuf:
                    return True
                data = bytes(self._wbuf[: 1 << 20])
            try:
                sent = raw.send(data, socket.MSG_DONTWAIT if nonblock else 0)
            except BlockingIOError:
                if nonblock:
                    return False
                raise
            with self._lock:
                del self._wbuf[:sent]

    def _flush_now(self) -> None:
        """Send what the reader produced, without waiting; a writer sends any rest."""
        if self._wlock.acquire(blocking=False):
            try:
                self._flush(nonblock=True)
            finally:
                self._wlock.release()


def _take(views: list[memoryview], n: int) -> bytes:
    """Remove and return up to ``n`` bytes from the front of the gather list ``views``."""
    if views and len(views[0]) >= n:
        head = bytes(views[0][:n])
        p.drop_sent(views, n)
        return head
    parts = []
    got = 0
    while views and got < n:
        v = views[0]
        k = min(n - got, len(v))
        parts.append(v[:k])
        got += k
        p.drop_sent(views, k)
    return b"".join(parts)
