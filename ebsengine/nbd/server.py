"""The NBD server: listeners, one thread per connection, clean shutdown.

Library use (tests, embedding)::

    with NbdServer(engine, unix_path=tmp / "nbd.sock", tcp=None) as srv:
        ...  # nbd+unix:///vol-...?socket=<tmp>/nbd.sock

Command-line use: :func:`serve` (NBD alone) or ``ebsengine serve`` (NBD beside the AWS API);
both run the server in :func:`ebsengine.serve.run_services`, the one serve loop.

Defaults: a Unix socket ``<store>/nbd.sock`` (``serve``), TCP off unless a port is given
(the conventional port is :data:`DEFAULT_TCP_PORT`, bound to 127.0.0.1 only by default).
TLS (``tls=TlsConfig(...)``, see ``tls.py``) applies to TCP connections; the Unix socket is
protected by its file mode and stays plain.
A stale socket file (left by a killed server) is removed on start; a socket file that a
live server still answers on is not touched (``OSError(EADDRINUSE)``). Our own socket
file is removed on stop.

Shutdown (``stop()``, SIGTERM, SIGINT): stop accepting, stop reading new requests on
every connection, let in-flight requests finish and answer, flush every device that a
connection wrote to, close the devices, remove the socket file.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import ssl
import stat
import struct
import threading
import time
from pathlib import Path
from types import TracebackType

from ebsengine.nbd import protocol as p
from ebsengine.nbd.exports import EngineLike, Export
from ebsengine.nbd.flusher import Flusher
from ebsengine.nbd.handshake import Handshake
from ebsengine.nbd.tls import TlsConfig, TlsSocket
from ebsengine.nbd.transmission import DEFAULT_INLINE_LIMIT, Transmission, WorkerPool
from ebsengine.serve.control import OWN_WAIT
from ebsengine.storage.store import local_dir

log = logging.getLogger("ebsengine.nbd")

DEFAULT_TCP_HOST = "127.0.0.1"
DEFAULT_TCP_PORT = 10809
SEND_TIMEOUT = 30  # seconds a reply may wait for a client to read
DEFAULT_SOCKET_NAME = "nbd.sock"  # inside the store directory, for serve()


class NbdServer:
    """Serves the volumes and snapshots of one engine over NBD.

    Args:
        engine: an ``ebsengine.Engine`` (or anything with the same export methods).
        unix_path: Unix socket path to listen on, or ``None`` for none.
        tcp: ``(host, port)`` to listen on (port 0: pick a free one; see ``tcp_address``),
            or ``None`` for none. At least one listener is required.
        default_export: the volume/snapshot id served under the empty export name ``""``;
            ``None`` (default): the empty name is refused.
        workers: threads shared by all connections for slow requests.
        inline_limit: READ/WRITE up to this many bytes run on the connection's own thread.
        handshake_timeout: seconds a client may idle during option haggling.
        background_flush: flush written volumes in the background (see ``flusher.py``)
            so that request threads never pay for the engine's inline flush.
        socket_group: the Unix socket is mode 0600 (its owner's alone) unless this group
            (name or gid) is given: then it is that group's and mode 0660. The members also
            need search access to its directory (the store directory is 0700: put the
            socket elsewhere with ``unix_path``).
        tls: TLS for the TCP listener (X.509 certificate, optional client verification,
            ``on`` or ``require``); ``None``: plain TCP. Its files are loaded by ``start()``
            (a :class:`~ebsengine.nbd.tls.TlsConfigError` there, before anything listens).
    """

    label = "NBD"  # what the serve loop calls it

    def __init__(
        self,
        engine: EngineLike,
        unix_path: str | os.PathLike[str] | None = None,
        tcp: tuple[str, int] | None = None,
        *,
        default_export: str | None = None,
        workers: int = 4,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        handshake_timeout: float | None = 30.0,
        background_flush: bool = True,
        socket_group: str | int | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        if unix_path is None and tcp is None:
            raise ValueError("NbdServer needs a Unix socket path, a TCP address, or both")
        self.engine = engine
        self.unix_path = Path(unix_path) if unix_path is not None else None
        self.tcp = tcp
        self.default_export = default_export
        self.workers = workers
        self.inline_limit = inline_limit
        self.handshake_timeout = handshake_timeout
        self.background_flush = background_flush
        self.socket_group = socket_group
        self.tls = tls
        self._tls_context: ssl.SSLContext | None = None
        self._flushers: dict[str, Flusher] = {}
        self.tcp_address: tuple[str, int] | None = None  # actual bound address
        self._listeners: list[socket.socket] = []
        self._unix_ino: tuple[int, int] | None = None
        self._pool: WorkerPool | None = None
        self._accept_thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._started = False

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the listeners and start serving in background threads; returns once listening."""
        if self._started:
            raise RuntimeError("server already started")
        self._started = True
        try:
            # serving makes this process the store's owner (StoreOwned, naming the owner,
            # when another process owns or uses it): see ebsengine.storage.owner
            own = getattr(self.engine, "own", None)
            if own is not None:
                own(wait=OWN_WAIT)
            if self.tls is not None:
                self._tls_context = self.tls.context()
            if self.unix_path is not None:
                self._listeners.append(self._bind_unix(self.unix_path))
            if self.tcp is not None:
                s = socket.create_server(self.tcp, family=socket.AF_INET, backlog=64)
                self.tcp_address = s.getsockname()[:2]
                self._listeners.append(s)
        except BaseException:
            self._close_listeners()
            self._stopping.set()
            self._stopped.set()
            raise
        self._wake_r, self._wake_w = socket.socketpair()
        self._pool = WorkerPool(self.workers) if self.workers > 0 else None
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="nbd-accept", daemon=True
        )
        self._accept_thread.start()
        log.info("nbd: listening on %s", ", ".join(self.addresses()))

    def addresses(self) -> list[str]:
        """Human-readable listen addresses (``unix:PATH``, ``tcp:HOST:PORT``)."""
        out = []
        if self.unix_path is not None:
            out.append(f"unix:{self.unix_path}")
        if self.tcp_address is not None:
            tls = "" if self.tls is None else f" (TLS {self.tls.mode})"
            out.append(f"tcp:{self.tcp_address[0]}:{self.tcp_address[1]}{tls}")
        return out

    def uri(self, export: str) -> str:
        """An NBD URI for ``export`` (Unix socket preferred)."""
        if self.unix_path is not None:
            return f"nbd+unix:///{export}?socket={self.unix_path}"
        assert self.tcp_address is not None
        scheme = "nbd" if self.tls is None else "nbds"
        return f"{scheme}://{self.tcp_address[0]}:{self.tcp_address[1]}/{export}"

    def serve_forever(self) -> None:
        """Start if needed, then block until :meth:`stop` is called (from another thread)."""
        if not self._started:
            self.start()
        self._stopped.wait()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop accepting, finish and flush in-flight work, close everything. Idempotent."""
        with self._lock:
            if self._stopping.is_set():
                already = True
            else:
                already = False
                self._stopping.set()
        if already:
            self._stopped.wait(timeout)
            return
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        self._close_listeners()
        with self._lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            try:  # the reader sees EOF; in-flight requests still get their replies
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for sock, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():  # stuck sending to a client that reads no replies
                log.warning("nbd: a connection did not finish in %.0f s; cutting it off", timeout)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                thread.join(5.0)
        if self._pool is not None:
            self._pool.shutdown()
        for w in (self._wake_r, self._wake_w):
            if w is not None:
                w.close()
        self._stopped.set()
        log.info("nbd: stopped")

    def __enter__(self) -> NbdServer:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    # --- listeners ------------------------------------------------------------------------

    def _bind_unix(self, path: Path) -> socket.socket:
        _remove_stale_socket(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # the socket is its owner's (0600; 0660 with socket_group) whatever the umask:
            # made under a umask that leaves nobody else a window before the chmod
            old = os.umask(0o177)
            try:
                s.bind(str(path))
            finally:
                os.umask(old)
            if self.socket_group is not None:
                os.chown(path, -1, _group_id(self.socket_group))
                os.chmod(path, 0o660)
            else:
                os.chmod(path, 0o600)
            st = os.stat(path)
            self._unix_ino = (st.st_dev, st.st_ino)
            s.listen(64)
        except BaseException:
            s.close()
            raise
        return s

    def _close_listeners(self) -> None:
        for s in self._listeners:
            s.close()
        self._listeners = []
        if self.unix_path is not None and self._unix_ino is not None:
            try:
                st = os.stat(self.unix_path)
                if (st.st_dev, st.st_ino) == self._unix_ino:  # still ours
                    os.unlink(self.unix_path)
            except FileNotFoundError:
                pass
            self._unix_ino = None

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        for s in self._listeners:
            sel.register(s, selectors.EVENT_READ)
        assert self._wake_r is not None
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r or self._stopping.is_set():
                        return
                    listener = key.fileobj
                    assert isinstance(listener, socket.socket)
                    try:
                        conn, _addr = listener.accept()
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            log.error("nbd: accept failed: %s", exc)
                            self._stopping.wait(0.1)
                        continue
                    self._spawn(conn)
        finally:
            sel.close()

    def _spawn(self, conn: socket.socket) -> None:
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = threading.Thread(
            target=self._serve_connection, args=(conn,), name="nbd-conn", daemon=True
        )
        with self._lock:
            if self._stopping.is_set():
                conn.close()
                return
            self._conns[conn] = t
        t.start()

    # --- one connection -------------------------------------------------------------------

    def _serve_connection(self, conn: socket.socket) -> None:
        sock: p.Stream = conn
        try:
            conn.settimeout(self.handshake_timeout)
            # The timeout above bounds each read; this bounds the whole negotiation, so a
            # client trickling one byte at a time cannot hold a thread for ever.
            watchdog = None
            if self.handshake_timeout is not None:
                watchdog = threading.Timer(self.handshake_timeout, _hang_up, (conn,))
                watchdog.daemon = True
                watchdog.start()
            tcp = conn.family in (socket.AF_INET, socket.AF_INET6)
            handshake = Handshake(
                conn,
                self.engine,
                default_export=self.default_export,
                stopping=self._stopping.is_set,
                tls=self.tls if tcp else None,
                tls_context=self._tls_context if tcp else None,
            )
            try:
                session = handshake.run()
            finally:
                sock = handshake.sock  # the TLS stream after STARTTLS
                if watchdog is not None:
                    watchdog.cancel()
            if session is None:
                return
            conn.settimeout(None)
            # A reply that cannot be sent for SEND_TIMEOUT seconds (a client that stopped
            # reading) fails the connection instead of holding a shared worker for ever.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                            struct.pack("ll", SEND_TIMEOUT, 0))
            if self._stopping.is_set():  # raced with stop(): do not start serving
                session.export.close()
                return
            flusher = self._acquire_flusher(session.export)
            try:
                Transmission(
                    sock, session, self._pool, inline_limit=self.inline_limit, flusher=flusher
                ).run()
            finally:
                if flusher is not None:
                    self._release_flusher(session.export.ident)
        except (p.Disconnect, OSError) as exc:
            log.debug("nbd: connection ended during handshake: %s", exc)
        except Exception:  # one bad connection must not take the server down (logged)
            log.exception("nbd: connection failed")
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            if isinstance(sock, TlsSocket):
                sock.close_notify()
            conn.close()


    def _acquire_flusher(self, export: Export) -> Flusher | None:
        if export.readonly or not self.background_flush:
            return None
        with self._lock:
            flusher = self._flushers.get(export.ident)
            if flusher is None:
                try:
                    dev = self.engine.open_volume(export.ident)
                except Exception as exc:  # noqa: BLE001 - serve without write-back then
                    log.warning("nbd: no background flusher for %s: %s", export.ident, exc)
                    return None
                flusher = Flusher(dev, name=export.ident)
                self._flushers[export.ident] = flusher
            flusher.users += 1
            return flusher

    def _release_flusher(self, ident: str) -> None:
        with self._lock:
            flusher = self._flushers[ident]
            flusher.users -= 1
            if flusher.users:
                return
            del self._flushers[ident]
        flusher.close()


def _hang_up(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _group_id(group: str | int) -> int:
    """The gid of ``group`` (a name, or a number as text or int)."""
    import grp

    if isinstance(group, int) or (group.isascii() and group.isdigit()):
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {group!r}") from None


def _remove_stale_socket(path: Path) -> None:
    """Unlink ``path`` if it is a socket nobody listens on; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            # EAGAIN (a live server's backlog is full), a timeout...: somebody may be there
            raise OSError(errno.EADDRINUSE, f"cannot tell whether a server listens on this "
                          f"socket ({exc}); not removing it", str(path)) from exc
        os.unlink(path)  # stale: refused, nobody listens
        log.info("nbd: removed stale socket %s", path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another server is listening on this socket", str(path))


def serve(
    store_path: str | os.PathLike[str],
    unix_path: str | os.PathLike[str] | None = None,
    tcp_host: str = DEFAULT_TCP_HOST,
    tcp_port: int | None = None,
    *,
    default_export: str | None = None,
    workers: int = 4,
    background_flush: bool = True,
) -> int:
    """Open the store at ``store_path`` and serve it over NBD until SIGTERM or SIGINT.

    Args:
        store_path: the engine's store directory (``ebsengine.Engine(store_path)``).
        unix_path: Unix socket path; ``None`` means ``<store_path>/nbd.sock``; ``""``
            disables the Unix socket.
        tcp_host / tcp_port: TCP listener; ``tcp_port=None`` (default) disables TCP.
            Use :data:`DEFAULT_TCP_PORT` (10809) for the conventional port, 0 for any.
        default_export: id served under the empty export name (default: none).
        workers: worker threads for slow requests.
        background_flush: write back dirty data in the background (``flusher.py``).

    Returns the process exit status (0 after a clean shutdown). On SIGTERM/SIGINT the
    server stops accepting, finishes and flushes in-flight writes, removes its socket
    file, and the engine is closed. Call it from the main thread (signals stop it); the
    loop is :func:`ebsengine.serve.run_services`.
    """
    from ebsengine import Engine  # the facade; imported late so the protocol layer stands alone
    from ebsengine.serve import run_services

    if unix_path is None:
        where = local_dir(str(store_path))
        unix = Path(where) / DEFAULT_SOCKET_NAME if where else None
    elif str(unix_path) == "":
        unix = None
    else:
        unix = Path(unix_path)
    tcp = (tcp_host, tcp_port) if tcp_port is not None else None
    with Engine(store_path) as engine:
        server = NbdServer(
            engine,
            unix,
            tcp,
            default_export=default_export,
            workers=workers,
            background_flush=background_flush,
        )
        return run_services([server], store=str(store_path))
