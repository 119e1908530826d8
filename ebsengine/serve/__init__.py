"""The one serve loop: run services on one engine until SIGTERM/SIGINT, then stop them in order.

Every way of serving goes through :func:`run_services`: ``ebsengine serve`` (NBD and the
AWS-compatible API on one engine, see ``cli.py``), ``ebsengine.nbd.serve()`` (NBD alone) and
``python -m ebsengine.aws.server`` (the API alone). The loop knows no service: anything with
``start()``, ``stop()``, ``addresses()`` and a ``label`` is one (:class:`Service`), so this
module sits below ``ebsengine.nbd`` and ``ebsengine.aws`` and imports neither.

Lifecycle, in order:

1. SIGTERM and SIGINT handlers are installed before anything listens (a signal that arrives
   while a service starts is not lost, and does not raise ``KeyboardInterrupt`` mid-start).
2. The services start in the order given; each announces its addresses on stdout
   (``ebsengine: serving NBD on unix:/.../nbd.sock``), then the store line
   (``ebsengine: store PATH; stop with Ctrl-C or SIGTERM``) says all are up. If one fails to
   start, the ones already started are stopped (in reverse order) and the error propagates.
3. On the first SIGTERM/SIGINT (or when the caller's ``stop`` event is set) the services stop
   in reverse order of starting: each ``stop()`` finishes its in-flight requests (NBD also
   flushes what its connections wrote and removes its socket file). A service whose
   ``stop()`` fails does not keep the others running: they are all stopped, then the first
   error propagates. The signal handlers stay installed until every service has stopped, so a
   second Ctrl-C cannot interrupt a flush; then the previous handlers are restored.
4. ``ebsengine: stopped`` is printed and 0 returned; the caller then closes the engine (which
   flushes and closes the store).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Protocol

from ..block.context import limit_arenas

#: what ``signal.signal`` returns and takes: a handler, SIG_DFL/SIG_IGN, or None
_Handler = Callable[[int, FrameType | None], object] | int | None

EXIT_OK = 0
EXIT_NOTHING_TO_SERVE = 2
#: GIL switch interval while serving (seconds; see run_services)
SWITCH_INTERVAL = 0.0005


class Service(Protocol):
    """A server that runs on threads of its own (``NbdServer``, ``ApiServer``)."""

    #: how the announcement names it: "NBD", "the AWS API"
    label: str

    def start(self) -> object:
        """Listen and serve in background threads; return once listening."""
        ...

    def stop(self) -> None:
        """Stop accepting, finish in-flight work, close the listeners. Idempotent."""
        ...

    def addresses(self) -> list[str]:
        """Where it listens, for people (``unix:PATH``, ``tcp:HOST:PORT``, a URL)."""
        ...


def _print(line: str) -> None:
    print(line, flush=True)


def run_services(
    services: Sequence[Service],
    *,
    store: str | None = None,
    stop: threading.Event | None = None,
    announce: Callable[[str], None] = _print,
) -> int:
    """Start ``services`` in order, serve until SIGTERM/SIGINT or ``stop``, stop them in reverse.

    Args:
        services: the services to run (already constructed on one engine, not started).
        store: the engine's store path, for the ready line; ``None`` leaves it out of it.
        stop: an event that ends the loop when set. Required when not called from the main
            thread (only the main thread can receive signals); from the main thread SIGTERM
            and SIGINT end the loop as well.
        announce: where the lines for people go (default: stdout, flushed).

    Returns:
        0 after a clean shutdown, 2 when ``services`` is empty (nothing was started).

    Raises:
        whatever a service's ``start()`` or ``stop()`` raised (after stopping all the others).
        RuntimeError: called off the main thread without a ``stop`` event.
    """
    if not services:
        announce("ebsengine: nothing to serve (every service is disabled)")
        return EXIT_NOTHING_TO_SERVE
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main and stop is None:
        raise RuntimeError("run_services() off the main thread needs a stop event "
                           "(signals reach only the main thread)")
    done = stop if stop is not None else threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    # Request threads wake from a socket and must take the GIL back; while a background
    # flush or fold runs Python code, CPython's 5 ms default made every 4 KiB request wait
    # for it (fio randread QD1 after randwrite: ~0.8k IOPS; see benchmarks/bench_nbd.py).
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, SWITCH_INTERVAL))
    limit_arenas()  # before the request threads start (block/context.py says why)
    previous: dict[signal.Signals, _Handler] = {}
    if in_main:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    started: list[Service] = []
    try:
        for svc in services:
            svc.start()
            started.append(svc)
            for addr in svc.addresses():
                announce(f"ebsengine: serving {svc.label} on {addr}")
        where = f"store {store}; " if store is not None else ""
        announce(f"ebsengine: {where}stop with Ctrl-C or SIGTERM")
        # a timed wait, so that a signal's handler runs within a second even where a lock
        # wait cannot be interrupted
        while not done.wait(1.0):
            pass
    finally:
        try:
            _stop_all(started)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sys.setswitchinterval(switch)
    announce("ebsengine: stopped")
    return EXIT_OK


def _stop_all(started: list[Service]) -> None:
    """Stop ``started`` in reverse order; every one is stopped even if one fails."""
    first: BaseException | None = None
    for svc in reversed(started):
        try:
            svc.stop()
        except BaseException as exc:  # noqa: BLE001 - the others must stop too; re-raised below
            if first is None:
                first = exc
    if first is not None:
        raise first
