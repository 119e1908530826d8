"""``ebsengine serve``: the NBD server and the AWS-compatible HTTP API on one engine.

Both services share one :class:`~ebsengine.Engine`, so a block written over NBD is the block
GetSnapshotBlock returns and a snapshot taken through the API is point in time for NBD
writers. SIGTERM/SIGINT stop both cleanly: NBD finishes and flushes in-flight writes and
removes its socket file, the API finishes in-flight requests, then the engine flushes and
closes the store.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from types import FrameType

from .engine import Engine


def run_services(eng: Engine, a: argparse.Namespace) -> int:
    from .aws.server import ApiServer
    from .nbd.server import DEFAULT_SOCKET_NAME, NbdServer

    if a.nbd_socket is None:
        unix: str | None = os.path.join(os.path.abspath(eng.path), DEFAULT_SOCKET_NAME)
    elif a.nbd_socket in ("", "none"):
        unix = None
    else:
        unix = os.path.abspath(a.nbd_socket)
    tcp = (a.host, a.nbd_port) if a.nbd_port else None
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    nbd = api = None
    try:
        if unix is not None or tcp is not None:
            nbd = NbdServer(eng, unix, tcp)
            nbd.start()
            for addr in nbd.addresses():
                print(f"ebsengine: serving NBD on {addr}", flush=True)
        if a.http_port:
            api = ApiServer(eng, a.host, a.http_port).start()
            print(f"ebsengine: serving the AWS API on {api.url}", flush=True)
        if nbd is None and api is None:
            print("ebsengine: nothing to serve (NBD and HTTP both disabled)", flush=True)
            return 2
        print(f"ebsengine: store {eng.path}; stop with Ctrl-C or SIGTERM", flush=True)
        while not done.wait(1.0):
            pass
    finally:
        if api is not None:
            api.stop()
        if nbd is not None:
            nbd.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("ebsengine: stopped", flush=True)
    return 0
