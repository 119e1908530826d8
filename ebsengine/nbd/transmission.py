"""The transmission phase: read, validate and run requests; send (maybe out-of-order) replies.

Threading protocol (one connection):

* one *reader* thread (the connection's thread) reads request headers and WRITE payloads in
  stream order, validates each request against the negotiated export (the NBD protocol),
  and answers invalid ones at once; the engine never sees an invalid request;
* valid requests that are cheap (READ / WRITE up to ``inline_limit`` bytes without FUA,
  BLOCK_STATUS, CACHE) run on the reader thread itself; slow ones (FLUSH, FUA writes,
  TRIM, WRITE_ZEROES, large READ / WRITE) go to the server's shared :class:`WorkerPool`,
  so replies may overtake each other, as the protocol allows;
* every reply is written whole under ``send_lock``, so chunks of different replies never
  interleave mid-frame. Shared workers never block on a client's socket: a worker writes
  its reply itself only while the socket takes it (``WORKER_SEND_BUDGET`` in all, waiting
  for the wire included), and otherwise puts it, or the rest of a half-sent frame (first),
  on the connection's reply queue, which the connection's own *sender* thread writes out.
  Once anything is queued, every reply (the reader's corked ones too) goes behind it, so a
  half-sent frame is always finished first. A client that stops reading its replies thus
  blocks only its own reader and sender, never a worker that other connections need; the
  bytes of replies queued or being produced for pooled requests are bounded by
  ``MAX_REPLY_BYTES``, and past that the reader stops reading new requests from this client
  (back-pressure on it alone). Input is read in large gulps (one recv() may hold many pipelined
  requests), and replies of requests run on the reader thread are *corked*: collected and
  sent in one write just before the reader would block waiting for input (or once
  ``CORK_LIMIT`` bytes are waiting), so a deep queue costs a few syscalls per batch rather
  than three per request, and a lone request (QD1) is answered at once;
* on DISC, EOF or shutdown the reader stops reading, waits until the in-flight count drops
  to zero and the sender has written every queued reply, flushes the device if this
  connection changed it, and closes the device.

FLUSH needs no ordering against other requests: it must cover the writes *already
answered*, and an answered write is complete in the engine's shared per-volume cache,
which ``dev.flush()`` makes durable for every connection (hence CAN_MULTI_CONN).
"""

from __future__ import annotations

import functools
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable

from ebsengine.block.volume import Extent
from ebsengine.nbd import protocol as p
from ebsengine.nbd.exports import errno_for
from ebsengine.nbd.flusher import Flusher, dirty_estimate
from ebsengine.nbd.handshake import Negotiated

MAX_INFLIGHT_REQUESTS = 64  # queued to the worker pool, per connection
MAX_INFLIGHT_BYTES = 64 * 1024 * 1024  # WRITE payloads queued, per connection
# Replies of pooled requests queued for the sender, or reserved for requests still running
# (a READ reserves its length), per connection; past this the reader reads no new requests.
MAX_REPLY_BYTES = 2 * p.MAX_PAYLOAD
MAX_QUEUED_REPLIES = 1024  # ... and as many entries on the reply queue (small replies)
_REPLY_OVERHEAD = 64  # reserved for a reply without data (headers, an error chunk)
# A worker writes its reply itself when the wire is free, waiting for socket room at most
# this long in all; the unsent rest goes to the connection's sender. (Handing every reply
# to the sender costs a GIL hand-off per reply: half the throughput of pipelined 1 MiB
# READs.) A client that reads nothing costs one worker this much once, then its replies
# queue behind the stuck sender.
WORKER_SEND_BUDGET = 0.02

log = logging.getLogger("ebsengine.nbd")

# READ / WRITE no longer than this run inline on the reader thread (see module docstring).
DEFAULT_INLINE_LIMIT = 256 * 1024
# Structured reads shorter than this skip the extent lookup and go out as one data chunk.
HOLE_SCAN_MIN = 64 * 1024
# Input is read in gulps of up to this many bytes, so one recv() can carry many pipelined
# requests; payloads at least BIG_PAYLOAD long bypass the buffer (no extra copy).
RECV_SIZE = 256 * 1024
BIG_PAYLOAD = 64 * 1024
# Replies of requests run on the reader thread are corked while more requests are already
# buffered, and sent in one write before the reader would block (or past this many bytes).
CORK_LIMIT = 128 * 1024

_KNOWN_FLAGS = {
    p.CMD_READ: p.CMD_FLAG_FUA | p.CMD_FLAG_DF,
    p.CMD_WRITE: p.CMD_FLAG_FUA,
    p.CMD_DISC: p.CMD_FLAG_FUA,
    p.CMD_FLUSH: p.CMD_FLAG_FUA,
    p.CMD_TRIM: p.CMD_FLAG_FUA,
    p.CMD_CACHE: p.CMD_FLAG_FUA,
    p.CMD_WRITE_ZEROES: p.CMD_FLAG_FUA | p.CMD_FLAG_NO_HOLE | p.CMD_FLAG_FAST_ZERO,
    p.CMD_BLOCK_STATUS: p.CMD_FLAG_FUA | p.CMD_FLAG_REQ_ONE,
}
_WRITING = (p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES)
_RANGED = (p.CMD_READ, p.CMD_WRITE, p.CMD_TRIM, p.CMD_CACHE, p.CMD_WRITE_ZEROES, p.CMD_BLOCK_STATUS)


class WorkerPool:
    """A few daemon threads running callables; shared by all connections of one server."""

    def __init__(self, workers: int) -> None:
        self._q: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"nbd-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], None]) -> None:
        self._q.put(fn)

    def _work(self) -> None:
        while True:
            fn = self._q.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:  # a task must never kill the worker
                log.exception("nbd: worker task failed")

    def shutdown(self) -> None:
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join()


class Transmission:
    """Serves one negotiated connection until DISC, EOF, a protocol violation or shutdown."""

    def __init__(
        self,
        sock: p.Stream,
        session: Negotiated,
        pool: WorkerPool | None,
        *,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        flusher: Flusher | None = None,
    ) -> None:
        self.sock = sock
        self.flusher = flusher
        self.session = session
        self.export = session.export
        self.dev = session.export.device
        self.size = session.export.size  # the size this client was told
        self.readonly = session.export.readonly
        self.structured = session.structured
        self.tflags = session.tflags
        self.meta_id = session.meta_context_id
        self.pool = pool
        self.inline_limit = inline_limit
        self.send_lock = threading.Lock()
        lock = threading.RLock()
        self._cv = threading.Condition(lock)  # reader / _finish: room, in-flight count
        self._send_cv = threading.Condition(lock)  # the sender: replies to write
        self._wire_cv = threading.Condition(lock)  # workers: the wire became free
        self._inflight = 0
        self._inflight_bytes = 0
        self._dirty = False
        self._broken = False  # a reply could not be sent: stop serving
        self._in = b""  # buffered input and the read position in it
        self._inpos = 0
        self._out: list[bytes | bytearray | memoryview] = []  # corked replies (send_lock)
        self._outlen = 0
        self._reader_id: int | None = None
        # Replies of pooled requests, written by the sender thread (None: stop); under _cv.
        self._replies: list[list[bytes | bytearray | memoryview] | None] = []
        self._reply_bytes = 0  # queued + reserved reply bytes (see MAX_REPLY_BYTES)
        self._sending = False  # a thread owns the wire for queued replies (under _cv)
        self._sender_owns = False  # ... and it is the sender (a slow client), not a worker
        self._sender: threading.Thread | None = None

    # --- the reader loop ------------------------------------------------------------------

    def run(self) -> None:
        self._reader_id = threading.get_ident()
        if self.pool is not None:
            self._sender = threading.Thread(target=self._send_loop, name="nbd-send", daemon=True)
            self._sender.start()
        try:
            self._loop()
        except p.Disconnect:
            pass
        except OSError as exc:
            log.debug("nbd: connection error: %s", exc)
        finally:
            self._flush_out()
            self._finish()

    def _recv(self, n: int) -> bytes:
        """Exactly ``n`` bytes of input, from the buffer first (Disconnect on EOF)."""
        buf, pos = self._in, self._inpos
        end = pos + n
        if end <= len(buf):
            self._inpos = end
            return buf[pos:end]
        head = buf[pos:]
        self._in, self._inpos = b"", 0
        need = n - len(head)
        if need >= BIG_PAYLOAD:
            self._flush_out()  # we may block: let the client have its replies first
            body = p.recv_exact(self.sock, need)
            return head + body if head else body
        data = head + self._fill(need)
        self._in, self._inpos = data, n
        return data[:n]

    def _fill(self, need: int) -> bytes:
        """At least ``need`` more bytes: whatever is there, flushing corked replies before
        any recv() that would block."""
        sock = self.sock
        chunk: bytes | None = None
        if self._out:
            try:
                chunk = sock.recv(max(need, RECV_SIZE), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                chunk = None
            if chunk is None:
                self._flush_out()
        if chunk is None:
            chunk = sock.recv(max(need, RECV_SIZE))
        if not chunk:
            raise p.Disconnect("peer closed the connection")
        if len(chunk) >= need:
            return chunk
        parts = [chunk]
        got = len(chunk)
        while got < need:
            more = sock.recv(max(need - got, RECV_SIZE))
            if not more:
                raise p.Disconnect("peer closed the connection mid-frame")
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def _drain(self, n: int) -> None:
        """Discard ``n`` bytes of input (a refused WRITE's payload)."""
        avail = len(self._in) - self._inpos
        take = min(avail, n)
        self._inpos += take
        if n > take:
            self._flush_out()
            p.drain(self.sock, n - take)

    def _loop(self) -> None:
        unpack = p.REQUEST.unpack
        recv = self._recv
        while not self._broken:
            magic, flags, cmd, cookie, offset, length = unpack(recv(28))
            if magic != p.REQUEST_MAGIC:
                log.info("nbd: bad request magic %#x; closing (framing lost)", magic)
                return
            if cmd == p.CMD_DISC:
                return  # never answered, whatever its flags; in-flight requests finish
            error, why = self._validate(flags, cmd, offset, length)
            data = b""
            if cmd == p.CMD_WRITE:
                if error:
                    self._drain(length)  # keep the stream in frame
                else:
                    data = recv(length)
            if error:
                log.debug("nbd: refused %s: %s", p.CMD_NAMES.get(cmd, cmd), why)
                self._send_error(cmd, cookie, error, why)
                continue
            if (
                self.pool is not None
                and (
                    cmd in (p.CMD_FLUSH, p.CMD_TRIM, p.CMD_WRITE_ZEROES)
                    or flags & p.CMD_FLAG_FUA
                    or length > self.inline_limit
                )
                and cmd not in (p.CMD_CACHE, p.CMD_BLOCK_STATUS)
            ):
                reserve = _REPLY_OVERHEAD + (length if cmd == p.CMD_READ else 0)
                with self._cv:
                    # Back-pressure: stop reading requests (and their payloads) while this
                    # connection has too much queued or unsent, so one client cannot fill
                    # memory (nor, not reading its replies, hold anything but itself).
                    while not self._broken and (
                        self._inflight >= MAX_INFLIGHT_REQUESTS
                        or self._inflight_bytes >= MAX_INFLIGHT_BYTES
                        or self._reply_bytes >= MAX_REPLY_BYTES
                        or len(self._replies) >= MAX_QUEUED_REPLIES
                    ):
                        self._cv.wait()
                    if self._broken:
                        return
                    self._inflight += 1
                    self._inflight_bytes += len(data)
                    self._reply_bytes += reserve
                self.pool.submit(
                    functools.partial(
                        self._pooled, flags, cmd, cookie, offset, length, data, reserve
                    )
                )
            else:
                if self._replies and (  # corked replies get queued too (see _send_out_locked)
                    self._reply_bytes >= MAX_REPLY_BYTES
                    or len(self._replies) >= MAX_QUEUED_REPLIES
                ):
                    with self._cv:
                        while not self._broken and (
                            self._reply_bytes >= MAX_REPLY_BYTES
                            or len(self._replies) >= MAX_QUEUED_REPLIES
                        ):
                            self._cv.wait()
                self._execute(flags, cmd, cookie, offset, length, data)

    def _pooled(
        self,
        flags: int,
        cmd: int,
        cookie: int,
        offset: int,
        length: int,
        data: bytes,
        reserve: int,
    ) -> None:
        try:
            self._execute(flags, cmd, cookie, offset, length, data)
        finally:
            with self._cv:
                self._inflight -= 1
                self._inflight_bytes -= len(data)
                self._reply_bytes -= reserve  # the reply itself is counted once queued
                self._cv.notify_all()

    def _finish(self) -> None:
        with self._cv:
            while self._inflight:
                self._cv.wait()
            self._replies.append(None)  # the sender writes what is queued, then stops
            self._send_cv.notify()
        if self._sender is not None:
            self._sender.join()
        try:
            if self._dirty:
                self.dev.flush()
        except Exception as exc:  # noqa: BLE001 - nobody left to tell but the log
            log.error("nbd: flush at disconnect of %s failed: %s", self.export.name, exc)
        finally:
            try:
                self.export.close()
            except Exception as exc:  # noqa: BLE001
                log.error("nbd: closing %s failed: %s", self.export.name, exc)

    # --- validation (before the engine sees anything) -------------------------------------

    def _validate(self, flags: int, cmd: int, offset: int, length: int) -> tuple[int, str]:
        """(0, "") for a valid request, else (NBD errno, reason)."""
        known = _KNOWN_FLAGS.get(cmd)
        if known is None:
            return p.NBD_EINVAL, f"unknown command {cmd}"
        if cmd in _WRITING and self.readonly:
            return p.NBD_EPERM, "export is read-only"
        if flags & ~known:
            return p.NBD_EINVAL, f"flags {flags:#x} not valid on {p.CMD_NAMES[cmd]}"
        if flags & p.CMD_FLAG_FUA and not self.tflags & p.TF_SEND_FUA:
            return p.NBD_EINVAL, "FUA was not negotiated"
        if flags & p.CMD_FLAG_DF and not self.structured:
            return p.NBD_EINVAL, "DF needs structured replies"
        if cmd == p.CMD_DISC:
            return 0, ""
        if cmd == p.CMD_FLUSH:
            if offset or length:
                return p.NBD_EINVAL, "FLUSH takes no offset or length"
            return 0, ""
        if cmd in (p.CMD_READ, p.CMD_WRITE) and length > p.MAX_PAYLOAD:
            return p.NBD_EINVAL, f"length {length} exceeds the maximum payload {p.MAX_PAYLOAD}"
        if offset + length > self.size:
            if cmd in (p.CMD_WRITE, p.CMD_WRITE_ZEROES):
                return p.NBD_ENOSPC, "write past the end of the export"
            return p.NBD_EINVAL, "request past the end of the export"
        if cmd == p.CMD_BLOCK_STATUS and self.meta_id is None:
            return p.NBD_EINVAL, "no meta context was negotiated"
        return 0, ""

    # --- execution ------------------------------------------------------------------------

    def _execute(
        self, flags: int, cmd: int, cookie: int, offset: int, length: int, data: bytes
    ) -> None:
        dev = self.dev
        try:
            if cmd == p.CMD_READ:
                self._read(flags, cookie, offset, length)
                return
            if cmd == p.CMD_BLOCK_STATUS:
                self._block_status(flags, cookie, offset, length)
                return
            if cmd == p.CMD_WRITE:
                if length:
                    dev.pwrite(data, offset)
                    self._dirty = True
                    if self.flusher is not None:
                        self.flusher.note(dirty_estimate(offset, length))
            elif cmd == p.CMD_WRITE_ZEROES:
                if length:
                    # NO_HOLE: the engine never stores zeroes (layout.py, I3), so a
                    # zeroed range is always "allocated" as a zero range; reads give 0 either way.
                    # FAST_ZERO: zeroing is a map update here, never slower than writing.
                    dev.write_zeroes(offset, length)
                    self._dirty = True
                    if self.flusher is not None:
                        self.flusher.note(dirty_estimate(offset, length))
            elif cmd == p.CMD_TRIM:
                if length:
                    dev.trim(offset, length)
                    self._dirty = True
                    if self.flusher is not None:
                        self.flusher.note(dirty_estimate(offset, length))
            elif cmd == p.CMD_FLUSH:
                dev.flush()
            # CACHE: a prefetch hint; the range was validated, nothing to do.
            if flags & p.CMD_FLAG_FUA and cmd in _WRITING:
                dev.flush()
        except Exception as exc:  # noqa: BLE001 - every engine failure becomes an errno
            self._engine_error(cmd, cookie, exc)
            return
        self._send([p.simple_reply(cookie)])

    def _engine_error(self, cmd: int, cookie: int, exc: Exception) -> None:
        code = errno_for(exc, write=cmd in (p.CMD_WRITE, p.CMD_WRITE_ZEROES))
        level = logging.ERROR if code == p.NBD_EIO else logging.INFO
        log.log(level, "nbd: %s on %s failed: %r", p.CMD_NAMES.get(cmd, cmd), self.export.name, exc)
        self._send_error(cmd, cookie, code, str(exc))

    def _read(self, flags: int, cookie: int, offset: int, length: int) -> None:
        dev = self.dev
        if not self.structured:
            try:
                data = dev.pread(length, offset) if length else b""
            except Exception as exc:  # noqa: BLE001
                self._engine_error(p.CMD_READ, cookie, exc)
                return
            self._send([p.simple_reply(cookie), data])
            return
        if length == 0:
            self._send([p.chunk_header(cookie, p.CHUNK_NONE, 0, True)])
            return
        try:
            if flags & p.CMD_FLAG_DF or length < HOLE_SCAN_MIN:
                pieces: list[tuple[int, int, bytes | None]] = [
                    (offset, length, dev.pread(length, offset))
                ]
            else:
                pieces = self._read_pieces(offset, length)
        except Exception as exc:  # noqa: BLE001
            self._engine_error(p.CMD_READ, cookie, exc)
            return
        out: list[bytes | bytearray | memoryview] = []
        last = len(pieces) - 1
        for i, (off, n, blob) in enumerate(pieces):
            if blob is None:
                out.append(p.chunk_header(cookie, p.CHUNK_OFFSET_HOLE, 12, i == last))
                out.append(p.OFFSET_HOLE_PAYLOAD.pack(off, n))
            else:
                out.append(p.chunk_header(cookie, p.CHUNK_OFFSET_DATA, 8 + n, i == last))
                out.append(p.U64.pack(off))
                out.append(blob)
        self._send(out)

    def _read_pieces(self, offset: int, length: int) -> list[tuple[int, int, bytes | None]]:
        """Split a read into data pieces (with their bytes) and hole pieces (``None``)."""
        spans: list[list[int]] = []  # [offset, length, is_zero]
        pos = offset
        end = offset + length
        for ext_len, ext_flags in self.dev.extents(offset, length):
            if pos >= end:
                break
            n = min(ext_len, end - pos)
            if n <= 0:
                continue
            zero = 1 if (nbd_state(ext_flags) & p.STATE_ZERO and n >= p.MIN_HOLE_CHUNK) else 0
            if spans and spans[-1][2] == zero:
                spans[-1][1] += n
            else:
                spans.append([pos, n, zero])
            pos += n
        if pos < end:  # the engine covered less than asked: read the rest as data
            if spans and not spans[-1][2]:
                spans[-1][1] += end - pos
            else:
                spans.append([pos, end - pos, 0])
        dev = self.dev
        return [
            (off, n, None if zero else dev.pread(n, off)) for off, n, zero in spans
        ]

    def _block_status(self, flags: int, cookie: int, offset: int, length: int) -> None:
        assert self.meta_id is not None  # validated
        if length == 0:
            self._send([p.chunk_header(cookie, p.CHUNK_NONE, 0, True)])
            return
        try:
            raw = self.dev.extents(offset, length)
        except Exception as exc:  # noqa: BLE001
            self._engine_error(p.CMD_BLOCK_STATUS, cookie, exc)
            return
        extents: list[list[int]] = []
        covered = 0
        for ext_len, ext_flags in raw:
            n = min(ext_len, length - covered)
            if n <= 0:
                break
            f = nbd_state(ext_flags)
            if extents and extents[-1][1] == f:
                extents[-1][0] += n
            else:
                if len(extents) == p.MAX_EXTENTS:
                    break
                extents.append([n, f])
            covered += n
        if not extents:  # the spec allows one safe extent for the whole range
            extents = [[length, 0]]
        if flags & p.CMD_FLAG_REQ_ONE:
            extents = extents[:1]
        payload = p.U32.pack(self.meta_id) + b"".join(p.EXTENT.pack(n, f) for n, f in extents)
        self._send([p.chunk_header(cookie, p.CHUNK_BLOCK_STATUS, len(payload), True), payload])

    # --- replies --------------------------------------------------------------------------

    def _send_error(self, cmd: int, cookie: int, error: int, message: str) -> None:
        if self.structured and cmd in (p.CMD_READ, p.CMD_BLOCK_STATUS):
            self._send([p.error_chunk(cookie, error, message)])
        else:
            self._send([p.simple_reply(cookie, error)])

    def _send(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        """Send one whole reply. The reader thread's replies are corked (see ``_fill``); a
        worker's never block on the socket (see ``_send_queued``)."""
        if threading.get_ident() != self._reader_id:
            self._send_queued(buffers)
            return
        try:
            with self.send_lock:
                self._out.extend(buffers)
                self._outlen += sum(len(b) for b in buffers)
                if self._outlen >= CORK_LIMIT:
                    self._send_out_locked()
        except OSError as exc:
            self._lost(exc)

    def _send_queued(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        """A worker's reply: written at once if the wire is free and the socket takes it
        without blocking, else (or its unsent rest) queued for the sender."""
        with self._cv:
            if self._broken:
                return  # nobody to send to; the queue has been dropped
            if self._sending and not self._sender_owns and not self._replies:
                # Wait a little while another worker has the wire (as workers used to wait
                # for send_lock: a reply sent by the thread that made it is cheaper than a
                # hand-off); once the sender is involved (a slow client), queue at once.
                deadline = time.monotonic() + WORKER_SEND_BUDGET
                while (
                    self._sending and not self._sender_owns and not self._replies
                ) and not self._broken:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wire_cv.wait(left)
                if self._broken:
                    return
            if self._replies or self._sending:  # ...else queue it, behind what is queued
                self._replies.append(buffers)
                self._reply_bytes += sum(len(b) for b in buffers)
                if not self._sending:  # else its owner wakes the sender when done
                    self._send_cv.notify()
                return
            self._sending = True  # the sender waits until we are done
        rest: list[bytes | bytearray | memoryview] = buffers
        lost: OSError | None = None
        if self.send_lock.acquire(blocking=False):  # never wait for the reader's send
            try:
                if self._out:  # corked replies of the reader go first
                    rest = [*self._out, *buffers]
                    self._out = []
                    self._outlen = 0
                rest = _send_briefly(self.sock, rest, WORKER_SEND_BUDGET)
            except OSError as exc:
                lost = exc
            finally:
                self.send_lock.release()
        with self._cv:
            self._sending = False
            if rest and lost is None and not self._broken:
                self._replies.insert(0, rest)  # the rest of a started frame goes next
                self._reply_bytes += sum(len(b) for b in rest)
            if self._replies:
                self._send_cv.notify()
            else:
                self._wire_cv.notify()
        if lost is not None:
            self._lost(lost)

    def _send_loop(self) -> None:
        """The sender thread: write queued replies (all that are waiting, in one go)."""
        while True:
            with self._cv:
                while not self._replies or self._sending:
                    self._send_cv.wait()
                batch, self._replies = self._replies, []
                self._sending = self._sender_owns = True
            stop = batch[-1] is None
            replies = [r for r in batch if r is not None]
            out = [b for r in replies for b in r]
            size = sum(len(b) for b in out)
            if out and not self._broken:
                try:
                    with self.send_lock:
                        if self._out:  # corked replies of the reader go too, after
                            # (the batch may start with the rest of a half-sent frame)
                            out.extend(self._out)
                            self._out = []
                            self._outlen = 0
                        p.send_all(self.sock, out)
                except OSError as exc:
                    self._lost(exc)
            with self._cv:
                self._sending = self._sender_owns = False
                self._reply_bytes -= size
                if self._broken:  # drop whatever came in meanwhile
                    for r in self._replies:
                        if r is None:
                            stop = True
                        else:
                            self._reply_bytes -= sum(len(b) for b in r)
                    self._replies = []
                if not self._replies:
                    self._wire_cv.notify()  # a worker waiting for the wire may write
                self._cv.notify_all()
            if stop:
                return

    def _flush_out(self) -> None:
        if not self._out:
            return
        try:
            with self.send_lock:
                self._send_out_locked()
        except OSError as exc:
            self._lost(exc)

    def _send_out_locked(self) -> None:
        """The reader's corked replies: written now, or queued behind the replies that the
        sender (or a worker) is writing, which may have a frame half-sent."""
        out = self._out
        self._out = []
        self._outlen = 0
        if not out:
            return
        with self._cv:
            busy = bool(self._replies or self._sending)
            if busy and not self._broken:
                self._replies.append(out)
                self._reply_bytes += sum(len(b) for b in out)
                if not self._sending:
                    self._send_cv.notify()
        if not busy:
            p.send_all(self.sock, out)

    def _lost(self, exc: OSError) -> None:
        # The client is gone (or we are shutting down): stop reading more requests.
        with self._cv:
            if not self._broken:
                log.debug("nbd: reply could not be sent: %s", exc)
            self._broken = True
            self._cv.notify_all()  # a reader waiting for room must not wait for ever
            self._send_cv.notify()
            self._wire_cv.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _send_briefly(
    sock: p.Stream, buffers: list[bytes | bytearray | memoryview], budget: float
) -> list[bytes | bytearray | memoryview]:
    """Send what the socket takes within ``budget`` seconds (waiting for room only that
    long in all); return the unsent rest (in order)."""
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    deadline: float | None = None
    poller: select.poll | None = None
    while views:
        try:
            sent = sock.sendmsg(views[:512], (), socket.MSG_DONTWAIT)  # IOV_MAX is 1024
        except BlockingIOError:
            now = time.monotonic()
            if deadline is None:
                deadline = now + budget
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
            if now >= deadline or poller is None:
                break
            poller.poll(max(1, int((deadline - now) * 1000)))
            continue
        p.drop_sent(views, sent)
    return list(views)


def nbd_state(kind: int) -> int:
    """NBD ``base:allocation`` state flags of an engine :class:`Extent`."""
    return (p.STATE_HOLE if kind & Extent.HOLE else 0) | (p.STATE_ZERO if kind & Extent.ZERO else 0)
