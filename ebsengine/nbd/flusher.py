"""Background write-back for exported volumes.

The engine keeps acknowledged writes in a per-volume dirty cache and, once that cache
passes its limit, makes the *writer* flush it inline (compress + one LMDB commit of up to
the whole limit). Behind an NBD connection that stalls every request on the connection
for the length of the flush, and with several connections all of them queue on the
volume's flush lock. A :class:`Flusher` (one per exported volume, shared by its
connections) flushes in the background instead, as soon as a modest amount of data has
been written, so the cache never reaches the limit and request threads only ever copy
bytes into it. Compression and the commit release the GIL, so this overlaps with
request handling; it is also a bound on how much acknowledged-but-unflushed data a
crash can lose (``interval``).

Flushing early is always allowed: it only makes writes durable sooner.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ebsengine import errors

log = logging.getLogger("ebsengine.nbd")


DEFAULT_THRESHOLD = 64 * 1024 * 1024  # dirty bytes (estimated) that trigger a flush
DEFAULT_INTERVAL = 5.0  # seconds: flush anything pending at least this often


_PAGE = 4096  # the engine caches partial chunks as 4 KiB pages


def dirty_estimate(offset: int, length: int) -> int:
    """Bytes of engine cache a write of ``length`` at ``offset`` dirties: the 4 KiB pages it
    touches (the engine keeps partial chunks as pages, whole chunks as whole buffers)."""
    if length <= 0:
        return 0
    return ((offset + length - 1) // _PAGE - offset // _PAGE + 1) * _PAGE


class Flusher:
    """Flushes one volume in a background thread; owns its own device on the volume."""

    def __init__(
        self,
        device: Any,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        interval: float = DEFAULT_INTERVAL,
        name: str = "",
    ) -> None:
        self.device = device
        self.threshold = threshold
        self.interval = interval
        self.name = name
        self.users = 0  # connections using it (the server's registry counts them)
        self._cv = threading.Condition()
        self._pending = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"nbd-flush-{name}", daemon=True)
        self._thread.start()

    def note(self, nbytes: int) -> None:
        """Record ``nbytes`` newly dirtied; wakes the flusher past the threshold."""
        with self._cv:
            self._pending += nbytes
            if self._pending >= self.threshold:
                self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._stop and self._pending < self.threshold:
                    self._cv.wait(self.interval)
                if self._stop:
                    return
                if self._pending == 0:
                    continue
                self._pending = 0
            try:
                self.device.flush()
            except Exception as exc:  # noqa: BLE001 - the next client FLUSH reports it
                log.error("nbd: background flush of %s failed: %s", self.name, exc)
                if isinstance(exc, errors.Closed):
                    return
                with self._cv:
                    self._cv.wait(1.0)  # do not spin on a persistent failure

    def close(self) -> None:
        """Stop the thread (no final flush: the last connection flushes its own writes)."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join()
        self.device.close()
