"""The owner's control socket: other processes' commands run in the serving process.

While a process serves a store it owns it (:mod:`ebsengine.storage.owner`): its write cache
holds acknowledged writes and its devices pin volumes, so another process changing the
store directly would disagree with it. :class:`ControlServer` (a :class:`~ebsengine.serve.
Service`) makes the server the store's owner and listens on ``STORE/control.sock``; the CLI
sends its commands there (:func:`call`) and the server runs them in its own engine, so they
see exactly what it sees.

The protocol is one JSON object per connection each way, each a line: the request is
whatever the caller's ``handler`` understands (the CLI sends ``{"command": ..., "args":
{...}}``), the answer is what the handler returns (the CLI's: ``{"rc": ..., "stdout": ...,
"stderr": ...}``). The socket is mode 0600 in the 0700 store directory whatever the umask,
and a peer whose uid is not the server's is refused (``SO_PEERCRED``): the commands read
and write files as the server's user, so unlike the NBD socket no group is ever granted it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ..storage.store import local_dir

log = logging.getLogger("ebsengine.control")

CONTROL_SOCKET_NAME = "control.sock"
#: the longest request line accepted (bytes)
MAX_REQUEST = 1 << 20
#: seconds a client has to send its request
REQUEST_TIMEOUT = 30.0
#: seconds ``stop()`` waits for commands in flight
STOP_TIMEOUT = 60.0
#: seconds ``start()`` waits for other processes using the store to close it
OWN_WAIT = 2.0

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class _Owner(Protocol):
    path: str

    def own(self, wait: float = 0.0) -> None: ...


def socket_path(store: str) -> str:
    """The control socket of ``store``: in its local directory (see
    :func:`ebsengine.storage.store.local_dir`)."""
    where = local_dir(store)
    if where is None:
        raise ValueError(f"{store!r} has no local directory for a control socket")
    return os.path.join(where, CONTROL_SOCKET_NAME)


class ControlServer:
    """The control socket of the engine serving ``engine.path``; ``handler(request)``
    answers each request (in a thread of its own; the engine is thread-safe)."""

    label = "the control socket"

    def __init__(self, engine: _Owner, handler: Handler, path: str | None = None) -> None:
        self.engine = engine
        self.handler = handler
        self.path = path or socket_path(engine.path)
        self._listener: socket.socket | None = None
        self._accepter: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> ControlServer:
        # first the store: refused (StoreOwned, naming the owner) before anything listens
        self.engine.own(wait=OWN_WAIT)
        try:  # the store is ours alone now: a socket file left there is a dead owner's
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)  # no window in which anybody else may connect
            try:
                s.bind(self.path)
            finally:
                os.umask(old)
            os.chmod(self.path, 0o600)
            s.listen(16)
        except BaseException:
            s.close()
            raise
        self._listener = s
        self._accepter = threading.Thread(target=self._accept, name="ebsengine-control",
                                          daemon=True)
        self._accepter.start()
        return self

    def addresses(self) -> list[str]:
        return [f"unix:{self.path}"]

    def stop(self) -> None:
        """Stop accepting, let the commands in flight finish (up to STOP_TIMEOUT seconds),
        remove the socket file. Idempotent."""
        if self._listener is None or self._stopping.is_set():
            return
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        if self._accepter is not None:
            self._accepter.join()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(STOP_TIMEOUT)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed by stop()
            t = threading.Thread(target=self._serve, args=(conn,), name="ebsengine-control-cmd",
                                 daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                uid = _peer_uid(conn)
                if uid is not None and uid != os.geteuid():
                    log.warning("control: refused a connection of uid %d", uid)
                    return
                conn.settimeout(REQUEST_TIMEOUT)
                line = _read_line(conn)
                if line is None:
                    return
                conn.settimeout(None)
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    answer: dict[str, Any] = {"error": f"bad request: {exc}"}
                else:
                    try:
                        answer = self.handler(request)
                    except Exception as exc:
                        log.exception("control: the command failed")
                        answer = {"error": f"internal error: {type(exc).__name__}: {exc}"}
                conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass  # the client went away: the command ran (or not) all the same
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())


def _peer_uid(conn: socket.socket) -> int | None:
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, opt,
                                                    struct.calcsize("3i")))
    return int(uid)


def _read_line(conn: socket.socket) -> bytes | None:
    buf = bytearray()
    while b"\n" not in buf:
        if len(buf) > MAX_REQUEST:
            return None
        piece = conn.recv(65536)
        if not piece:
            return bytes(buf) if buf else None
        buf += piece
    return bytes(buf.split(b"\n", 1)[0])


def call(store: str, request: dict[str, Any], *,
         connect_timeout: float = 5.0) -> dict[str, Any]:
    """Send ``request`` to the control socket of the process serving ``store`` and return
    its answer (waiting as long as the command runs). OSError when no server answers
    there (no socket, nobody listening, or it closed the connection without an answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(connect_timeout)
        s.connect(socket_path(store))
        s.settimeout(None)
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf:
            piece = s.recv(1 << 16)
            if not piece:
                raise ConnectionError("the server closed the control connection without "
                                      "an answer")
            buf += piece
    answer = json.loads(bytes(buf.split(b"\n", 1)[0]))
    if not isinstance(answer, dict):
        raise ConnectionError("the server's answer is not a JSON object")
    return answer


__all__ = ["CONTROL_SOCKET_NAME", "ControlServer", "call", "socket_path"]
