"""What the NBD server serves: export names -> engine devices, and engine errors -> errno.

Export names are engine ids:

* ``vol-...``  a volume, served read-write through ``engine.open_volume``;
* ``snap-...`` a *completed* snapshot, served read-only through ``engine.open_snapshot``
  (straight from the snapshot, no copy).

The empty name ``""`` (the NBD "default export") names nothing unless the server was
given a ``default_export`` id; there is deliberately no implicit default, so that a
client that forgot the name gets an error instead of someone else's disk.

Only this module and the transmission phase touch the engine, and only through the
device interface below (:class:`ebsengine.block.device.Device`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ebsengine import errors
from ebsengine.nbd import protocol as p


class Device(Protocol):
    """The device interface of ``engine.open_volume`` / ``engine.open_snapshot``."""

    @property
    def size(self) -> int: ...

    @property
    def readonly(self) -> bool: ...

    def pread(self, length: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes, offset: int) -> int: ...

    def trim(self, offset: int, length: int) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]: ...

    def close(self) -> None: ...


class EngineLike(Protocol):
    """The part of ``ebsengine.Engine`` the server uses."""

    def open_volume(self, volume_id: str) -> Any: ...

    def open_snapshot(self, snapshot_id: str) -> Any: ...

    def list_volumes(self) -> list[Any]: ...

    def list_snapshots(self, volume_id: str | None = None) -> list[Any]: ...


class ExportNotFound(Exception):
    """The name does not resolve to a servable volume or snapshot (``NBD_REP_ERR_UNKNOWN``)."""


class ExportRefused(Exception):
    """The export exists but may not be served now: its data key is locked (a disabled or
    pending-deletion KMS key) (``NBD_REP_ERR_POLICY``)."""


@dataclass
class Export:
    """One opened export: a device plus the facts the handshake advertises."""

    name: str  # as the client asked for it ("" = the default export)
    ident: str  # the engine id it resolved to
    device: Device
    size: int
    readonly: bool

    def close(self) -> None:
        self.device.close()

    def release(self) -> None:
        """Close without flushing the volume (handshake probes: INFO, META_CONTEXT): a
        probe must neither pay for nor fail on a flush of other clients' writes."""
        release = getattr(self.device, "release", None)
        if release is not None:
            release()
        else:
            self.device.close()


def resolve_name(name: str, default_export: str | None) -> str:
    """The engine id an export name refers to; ``""`` maps to ``default_export`` if set."""
    if name == "":
        if default_export is None:
            raise ExportNotFound(
                "no default export: name a volume (vol-...) or snapshot (snap-...)"
            )
        return default_export
    return name


def open_export(engine: EngineLike, name: str, default_export: str | None = None) -> Export:
    """Open the device behind export ``name``; raises :class:`ExportNotFound`."""
    target = resolve_name(name, default_export)
    try:
        if target.startswith("vol-"):
            dev = engine.open_volume(target)
        elif target.startswith("snap-"):
            dev = engine.open_snapshot(target)
        else:
            raise ExportNotFound(f"{target!r} is neither a volume nor a snapshot id")
    except ExportNotFound:
        raise
    except (errors.NotFound, errors.MalformedId, errors.InvalidParameter) as exc:
        raise ExportNotFound(f"no such export {target!r}: {exc}") from exc
    except errors.IncorrectState as exc:  # e.g. a pending snapshot
        raise ExportNotFound(f"export {target!r} cannot be served now: {exc}") from exc
    except (errors.KmsError, errors.KeyUnavailable, errors.MasterKeyError) as exc:
        raise ExportRefused(f"export {target!r} is encrypted and its key is not usable: "
                            f"{exc}") from exc
    try:
        return Export(
            name=name, ident=target, device=dev, size=int(dev.size), readonly=bool(dev.readonly)
        )
    except BaseException:
        dev.close()
        raise


def list_exports(engine: EngineLike) -> list[tuple[str, str]]:
    """(name, description) for every volume and every completed snapshot."""
    out: list[tuple[str, str]] = []
    for vol in engine.list_volumes():
        out.append((vol.id, f"volume {vol.size_gib} GiB (read-write)"))
    for snap in engine.list_snapshots():
        if snap.state == "completed":
            out.append(
                (snap.id, f"snapshot of {snap.volume_id}, {snap.volume_size_gib} GiB (read-only)")
            )
    return out


# --- the one translation table: engine error -> NBD errno ---------------------------------
# Ordered most specific first; the first isinstance match wins.
ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (errors.ReadOnlyDevice, p.NBD_EPERM),
    (errors.OutOfRange, p.NBD_EINVAL),
    (errors.StoreFull, p.NBD_ENOSPC),
    (errors.Closed, p.NBD_ESHUTDOWN),
    (errors.InvalidParameter, p.NBD_EINVAL),
    (errors.CorruptStore, p.NBD_EIO),
    (errors.EbsError, p.NBD_EIO),
    (PermissionError, p.NBD_EPERM),
    (MemoryError, p.NBD_ENOMEM),
    (ValueError, p.NBD_EINVAL),
)


def errno_for(exc: BaseException, *, write: bool = False) -> int:
    """The NBD error number to report for ``exc`` raised by the engine.

    ``write``: the command was a WRITE/WRITE_ZEROES, for which an out-of-range access is
    ``ENOSPC`` rather than ``EINVAL`` (NBD protocol, proto.md: "Error values").
    """
    if write and isinstance(exc, errors.OutOfRange):
        return p.NBD_ENOSPC
    for cls, code in ERRNO_TABLE:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, OSError) and exc.errno is not None:
        return p.HOST_ERRNO_TO_NBD.get(exc.errno, p.NBD_EIO)
    return p.NBD_EIO
