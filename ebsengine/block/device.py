"""The file-like :class:`Device` handed to users: a volume (read-write) or a snapshot
(read-only), with positional and stream I/O."""

from __future__ import annotations

import io
import os
from collections.abc import Callable

from ..errors import Closed, OutOfRange, ReadOnlyDevice
from .volume import Buf, Extent, SnapshotView, VolumeCache, check_range


class Device(io.RawIOBase):
    """A file-like block device over a volume (read-write) or a snapshot (read-only).

    Thread-safe. ``pread``/``pwrite`` take explicit offsets; ``read``/``write``/``seek``
    use the device's own position. Out-of-range access raises :class:`OutOfRange` and
    changes nothing.
    """

    def __init__(self, src: VolumeCache | SnapshotView, on_close: Callable[[], None]) -> None:
        super().__init__()
        self._src = src
        self._on_close = on_close
        self._pos = 0
        self._finalizing = False
        self.id = src.id

    # --- properties -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Current size in bytes (grows when the volume is modified)."""
        return self._src.size

    @property
    def readonly(self) -> bool:
        return self._src.readonly

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self._src.readonly

    def seekable(self) -> bool:
        return True

    def _live(self) -> None:
        if self.closed:
            raise Closed(f"device {self.id} is closed")

    def _writable(self) -> VolumeCache:
        self._live()
        if self._src.readonly:
            raise ReadOnlyDevice(f"{self.id} is read-only")
        assert isinstance(self._src, VolumeCache)
        return self._src

    # --- positional I/O ---------------------------------------------------------------------

    def preadinto(self, buf: Buf, offset: int) -> int:
        """Fill ``buf`` from ``offset``; returns ``len(buf)``."""
        self._live()
        mv = memoryview(buf).cast("B")
        check_range(offset, len(mv), self._src.size)
        if len(mv):
            self._src.read_into(mv, offset)
        return len(mv)

    def pread(self, length: int, offset: int) -> bytes:
        out = bytearray(length) if length >= 0 else bytearray()
        if length < 0:
            raise OutOfRange(f"negative length {length}")
        self.preadinto(out, offset)
        return bytes(out)

    def pwrite(self, data: Buf, offset: int) -> int:
        """Write ``data`` at ``offset``; acknowledged now, durable after :meth:`flush`."""
        src = self._writable()
        n = memoryview(data).nbytes
        check_range(offset, n, src.size)
        if n:
            src.write(data, offset)
        return n

    def trim(self, offset: int, length: int) -> None:
        """Discard a range: it reads as zeros afterwards and whole chunks free their space."""
        src = self._writable()
        check_range(offset, length, src.size)
        if length:
            src.zero(offset, length)

    def write_zeroes(self, offset: int, length: int) -> None:
        """Make a range read as zeros (stored as holes: zero chunks are never stored)."""
        self.trim(offset, length)

    def flush(self) -> None:
        """Make every acknowledged write of this volume durable (all devices of it)."""
        if self.closed or self._finalizing:
            return
        if not self._src.readonly and not self._src.ctx.is_closed():
            assert isinstance(self._src, VolumeCache)
            self._src.flush()

    def extents(self, offset: int, length: int) -> list[tuple[int, Extent]]:
        """Allocation map of ``[offset, offset+length)`` as contiguous ``(length, flags)``
        runs of :class:`Extent` flags: ``HOLE | ZERO`` = a hole reading as zeros, ``DATA``
        (0) = data. Answered from maps, reads no data."""
        self._live()
        check_range(offset, length, self._src.size)
        if not length:
            return []
        return self._src.extents(offset, length)

    # --- stream I/O -------------------------------------------------------------------------

    def readinto(self, b: Buf) -> int:  # type: ignore[override]
        self._live()
        mv = memoryview(b).cast("B")
        n = max(0, min(len(mv), self._src.size - self._pos))
        if n:
            self.preadinto(mv[:n], self._pos)
            self._pos += n
        return n

    def write(self, b: Buf) -> int:  # type: ignore[override]
        n = self.pwrite(b, self._pos)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._live()
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._src.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OutOfRange(f"negative position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        """Flush, then release the volume. The volume is released even if the flush fails
        (its error is raised): a failed close must not keep the volume "open" forever."""
        if not self.closed:
            try:
                self.flush()
            finally:
                self._finalizing = True  # IOBase.close() flushes again: once is enough
                try:
                    super().close()
                finally:
                    self._on_close()

    def release(self) -> None:
        """Close without flushing: this device's acknowledged writes stay in the volume's
        shared cache (other devices, the next flush or Engine.close() make them durable).
        For short-lived opens that wrote nothing, e.g. a probe that the volume exists."""
        self._finalizing = True
        self.close()

    def __enter__(self) -> Device:
        return self

    def __del__(self) -> None:
        # A device dropped without close() releases its volume but does not flush here: a
        # finalizer may run at any point (inside a lock, inside the executor), so its writes
        # stay in the volume's shared cache until the next flush or Engine.close().
        self._finalizing = True
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a finalizer must never raise
            pass
