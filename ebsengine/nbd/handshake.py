"""The fixed-newstyle handshake: greeting, then option haggling until GO / EXPORT_NAME.

Protocol facts: the NBD protocol (``doc/proto.md`` of NetworkBlockDevice/nbd), "Newstyle
negotiation". The rules this module keeps:

* every option's payload is read in full before it is answered, so an unknown or malformed
  option costs an error reply (``ERR_UNSUP`` / ``ERR_INVALID``) and never the framing;
* the connection is dropped only where the spec says so: an unknown client flag, a bad
  option magic, an option payload over ``MAX_OPTION_LEN`` (DoS), a failed EXPORT_NAME,
  ABORT, or EOF;
* INFO and GO answer from the same code, so INFO followed by GO returns the same data;
* ``BLOCK_STATUS`` is later allowed only when the *last* SET_META_CONTEXT selected
  ``base:allocation`` for the very export that GO / EXPORT_NAME opened;
* TLS (proto.md "TLS support"; ``tls.py``): without a :class:`TlsConfig` STARTTLS gets
  ``ERR_POLICY`` (NOTLS). With one, STARTTLS is answered ``ACK`` and the TLS handshake
  follows on the same socket (``self.sock`` becomes the :class:`TlsSocket`); a second
  STARTTLS gets ``ERR_INVALID``. In ``require`` mode (FORCEDTLS) every option other than
  STARTTLS and ABORT is answered ``ERR_TLS_REQD`` until TLS is up, and EXPORT_NAME (which
  cannot be answered with an error) closes the connection.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from ebsengine.nbd import protocol as p
from ebsengine.nbd.exports import (
    EngineLike,
    Export,
    ExportNotFound,
    ExportRefused,
    list_exports,
    open_export,
)
from ebsengine.nbd.tls import TlsConfig, TlsSocket

log = logging.getLogger("ebsengine.nbd")

# the id we hand out for base:allocation (ids are per connection and opaque)
BASE_ALLOCATION_ID = 1


def transmission_flags(readonly: bool, structured: bool) -> int:
    """The tflags we advertise: only what the export really does (proto.md: "Transmission
    flags")."""
    flags = p.TF_HAS_FLAGS | p.TF_SEND_FLUSH | p.TF_CAN_MULTI_CONN | p.TF_SEND_CACHE
    if readonly:
        flags |= p.TF_READ_ONLY
    else:
        flags |= p.TF_SEND_FUA | p.TF_SEND_TRIM | p.TF_SEND_WRITE_ZEROES | p.TF_SEND_FAST_ZERO
    if structured:
        flags |= p.TF_SEND_DF
    return flags


@dataclass
class Negotiated:
    """The outcome of a successful handshake: what the transmission phase needs."""

    export: Export
    structured: bool
    tflags: int
    meta_context_id: int | None  # base:allocation selected for this export, else None


class _OptionError(Exception):
    """Answer the current option with an error reply and keep haggling."""

    def __init__(self, reply_type: int, message: str) -> None:
        super().__init__(message)
        self.reply_type = reply_type
        self.message = message


class Handshake:
    """Runs one connection's handshake. ``run()`` returns :class:`Negotiated` or ``None``;
    afterwards ``sock`` is what the transmission phase uses (a :class:`TlsSocket` after
    STARTTLS)."""

    def __init__(
        self,
        sock: socket.socket,
        engine: EngineLike,
        *,
        default_export: str | None = None,
        stopping: Callable[[], bool] = lambda: False,
        tls: TlsConfig | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.sock: p.Stream = sock
        self.tls = tls
        self.tls_context = tls_context
        self.tls_up = False
        self.engine = engine
        self.default_export = default_export
        self.stopping = stopping
        self.fixed = False
        self.no_zeroes = False
        self.structured = False
        self.meta_export: str | None = None  # export named by the last SET_META_CONTEXT
        self.meta_selected = False

    # --- driver ---------------------------------------------------------------------------

    def run(self) -> Negotiated | None:
        """Greet, haggle, and return the negotiated session (``None``: the client left)."""
        sock = self.sock
        sock.sendall(p.HANDSHAKE.pack(p.NBDMAGIC, p.IHAVEOPT, p.SERVER_HANDSHAKE_FLAGS))
        (cflags,) = p.CLIENT_FLAGS.unpack(p.recv_exact(sock, 4))
        if cflags & ~p.CLIENT_FLAGS_KNOWN:
            log.info("nbd: client sent unknown handshake flags %#x; closing", cflags)
            return None
        self.fixed = bool(cflags & p.CLIENT_FLAG_FIXED_NEWSTYLE)
        self.no_zeroes = bool(cflags & p.CLIENT_FLAG_NO_ZEROES)
        while True:
            sock = self.sock  # the TLS stream once STARTTLS went through
            magic, option, length = p.OPTION_HEADER.unpack(p.recv_exact(sock, 16))
            if magic != p.IHAVEOPT:
                log.info("nbd: bad option magic %#x; closing", magic)
                return None
            if length > p.MAX_OPTION_LEN:
                log.info("nbd: option %d with %d bytes of data; closing", option, length)
                return None
            data = p.recv_exact(sock, length)
            if self.stopping():
                self._reply(option, p.REP_ERR_SHUTDOWN, b"server is shutting down")
                return None
            if (
                self.tls is not None
                and self.tls.required
                and not self.tls_up
                and option not in (p.OPT_STARTTLS, p.OPT_ABORT)
            ):
                if option == p.OPT_EXPORT_NAME:  # cannot be refused with an error: close
                    log.info("nbd: EXPORT_NAME before STARTTLS and TLS is required; closing")
                    return None
                self._reply(option, p.REP_ERR_TLS_REQD, b"TLS is required: send STARTTLS first")
                continue
            try:
                result = self._handle(option, data)
            except _OptionError as err:
                self._reply(option, err.reply_type, err.message.encode())
                continue
            if result is not None:
                return result if isinstance(result, Negotiated) else None

    def _reply(self, option: int, reply_type: int, payload: bytes = b"") -> None:
        self.sock.sendall(p.option_reply(option, reply_type, payload))

    def _handle(self, option: int, data: bytes) -> Negotiated | bool | None:
        """Answer one option. Returns a session (transmission), True (close) or None (next)."""
        if option == p.OPT_EXPORT_NAME:
            return self._export_name(data)
        if option == p.OPT_ABORT:
            try:
                self._reply(option, p.REP_ACK)
            except OSError:
                pass  # the client may close first
            return True
        if option == p.OPT_LIST:
            self._list(option, data)
        elif option == p.OPT_INFO or option == p.OPT_GO:
            return self._info_go(option, data)
        elif option == p.OPT_STRUCTURED_REPLY:
            if data:
                raise _OptionError(p.REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
            self.structured = True
            self._reply(option, p.REP_ACK)
        elif option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            self._meta_context(option, data)
        elif option == p.OPT_STARTTLS:
            self._starttls(option, data)
        else:  # PEEK_EXPORT (withdrawn), EXTENDED_HEADERS (experimental), unknown
            raise _OptionError(p.REP_ERR_UNSUP, f"option {option} is not supported")
        return None

    # --- options --------------------------------------------------------------------------

    def _starttls(self, option: int, data: bytes) -> None:
        if self.tls is None or self.tls_context is None or not self.fixed:
            raise _OptionError(p.REP_ERR_POLICY, "TLS is not offered on this listener")
        if self.tls_up:
            raise _OptionError(p.REP_ERR_INVALID, "TLS is already on")
        if data:
            raise _OptionError(p.REP_ERR_INVALID, "STARTTLS takes no data")
        self._reply(option, p.REP_ACK)
        raw = self.sock
        assert isinstance(raw, socket.socket)
        try:
            self.sock = TlsSocket.accept(raw, self.tls_context)
        except ssl.SSLError as exc:  # an OSError: the caller ends the connection
            log.info("nbd: TLS handshake failed: %s", exc)
            raise
        self.tls_up = True
        log.debug("nbd: TLS up (%s)", self.sock.version)

    def _open(self, name: str) -> Export:
        try:
            return open_export(self.engine, name, self.default_export)
        except ExportNotFound as exc:
            raise _OptionError(p.REP_ERR_UNKNOWN, str(exc)) from exc
        except ExportRefused as exc:
            raise _OptionError(p.REP_ERR_POLICY, str(exc)) from exc

    def _meta_id_for(self, name: str) -> int | None:
        if self.structured and self.meta_selected and self.meta_export == name:
            return BASE_ALLOCATION_ID
        return None

    def _export_name(self, data: bytes) -> Negotiated | bool:
        name = _decode(data)
        if name is None:
            log.info("nbd: EXPORT_NAME with an invalid name; closing")
            return True
        try:
            export = self._open(name)
        except _OptionError as err:  # no way to report it: the spec says close
            log.info("nbd: EXPORT_NAME %r: %s; closing", name, err.message)
            return True
        tflags = transmission_flags(export.readonly, self.structured)
        reply = p.EXPORT_NAME_REPLY.pack(export.size, tflags)
        if not self.no_zeroes:
            reply += bytes(124)
        try:
            self.sock.sendall(reply)
        except BaseException:
            export.close()
            raise
        return Negotiated(export, self.structured, tflags, self._meta_id_for(name))

    def _list(self, option: int, data: bytes) -> None:
        if data:
            raise _OptionError(p.REP_ERR_INVALID, "LIST takes no data")
        try:
            exports = list_exports(self.engine)
        except Exception as exc:  # report, keep haggling
            log.warning("nbd: listing exports failed: %s", exc)
            raise _OptionError(p.REP_ERR_PLATFORM, "cannot list exports") from exc
        frames = []
        for name, desc in exports:
            raw = name.encode()
            frames.append(
                p.option_reply(option, p.REP_SERVER, p.U32.pack(len(raw)) + raw + desc.encode())
            )
        frames.append(p.option_reply(option, p.REP_ACK))
        self.sock.sendall(b"".join(frames))

    def _info_go(self, option: int, data: bytes) -> Negotiated | None:
        if len(data) < 6:
            raise _OptionError(p.REP_ERR_INVALID, "INFO/GO data too short")
        (namelen,) = p.U32.unpack_from(data, 0)
        if namelen > len(data) - 6:
            raise _OptionError(p.REP_ERR_INVALID, "export name length exceeds the option data")
        name = _decode(data[4 : 4 + namelen])
        if name is None:
            raise _OptionError(p.REP_ERR_INVALID, "export name is not valid UTF-8")
        (nreq,) = p.U16.unpack_from(data, 4 + namelen)
        if len(data) != 6 + namelen + 2 * nreq:
            raise _OptionError(p.REP_ERR_INVALID, "information request count mismatch")
        requests = {
            p.U16.unpack_from(data, 6 + namelen + 2 * i)[0] for i in range(nreq)
        }
        export = self._open(name)
        try:
            tflags = transmission_flags(export.readonly, self.structured)
            frames = [
                p.option_reply(
                    option, p.REP_INFO, p.INFO_EXPORT_DATA.pack(p.INFO_EXPORT, export.size, tflags)
                )
            ]
            if p.INFO_NAME in requests:
                frames.append(
                    p.option_reply(option, p.REP_INFO, p.U16.pack(p.INFO_NAME) + name.encode())
                )
            if p.INFO_DESCRIPTION in requests:
                desc = ("read-only snapshot " if export.readonly else "volume ") + (name or "")
                frames.append(
                    p.option_reply(
                        option, p.REP_INFO, p.U16.pack(p.INFO_DESCRIPTION) + desc.encode()
                    )
                )
            # Sent whether asked or not: min 1 means unaligned I/O is fine (we do RMW).
            frames.append(
                p.option_reply(
                    option,
                    p.REP_INFO,
                    p.INFO_BLOCK_SIZE_DATA.pack(
                        p.INFO_BLOCK_SIZE, p.MIN_BLOCK, p.PREFERRED_BLOCK, p.MAX_PAYLOAD
                    ),
                )
            )
            frames.append(p.option_reply(option, p.REP_ACK))
            self.sock.sendall(b"".join(frames))
        except BaseException:
            export.release()
            raise
        if option == p.OPT_INFO:
            export.release()
            return None
        return Negotiated(export, self.structured, tflags, self._meta_id_for(name))

    def _meta_context(self, option: int, data: bytes) -> None:
        setting = option == p.OPT_SET_META_CONTEXT
        if setting and not self.structured:
            raise _OptionError(
                p.REP_ERR_INVALID, "SET_META_CONTEXT needs STRUCTURED_REPLY first"
            )
        if setting:
            # a SET replaces the previous selection, even when it then fails below
            self.meta_export = None
            self.meta_selected = False
        name, queries = _parse_meta(data)
        # the export must exist (its contexts are what we list); do not keep it open
        self._open(name).release()
        if not queries:
            matched = not setting  # LIST with no query lists all; SET selects nothing
        else:
            matched = any(
                q == p.META_BASE_ALLOCATION or (not setting and q == "base:") for q in queries
            )
        frames = []
        if matched:
            ctx_id = BASE_ALLOCATION_ID if setting else 0
            payload = p.U32.pack(ctx_id) + p.META_BASE_ALLOCATION.encode()
            frames.append(p.option_reply(option, p.REP_META_CONTEXT, payload))
        frames.append(p.option_reply(option, p.REP_ACK))
        if setting:
            self.meta_export = name
            self.meta_selected = matched
        self.sock.sendall(b"".join(frames))


def _decode(raw: bytes) -> str | None:
    if len(raw) > p.MAX_STRING or b"\0" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parse_meta(data: bytes) -> tuple[str, list[str]]:
    """Parse ``u32 namelen · name · u32 nq · nq*(u32 len · query)`` (ERR_INVALID if bad)."""
    bad = _OptionError(p.REP_ERR_INVALID, "malformed meta context request")
    if len(data) < 8:
        raise bad
    (namelen,) = p.U32.unpack_from(data, 0)
    if namelen > len(data) - 8:
        raise bad
    name = _decode(data[4 : 4 + namelen])
    if name is None:
        raise bad
    pos = 4 + namelen
    (nq,) = p.U32.unpack_from(data, pos)
    pos += 4
    queries: list[str] = []
    for _ in range(nq):
        if pos + 4 > len(data):
            raise bad
        (qlen,) = p.U32.unpack_from(data, pos)
        pos += 4
        if pos + qlen > len(data):
            raise bad
        q = _decode(data[pos : pos + qlen])
        if q is None:
            raise bad
        queries.append(q)
        pos += qlen
    if pos != len(data):
        raise bad
    return name, queries
