"""Engine failures reach NBD clients as the right errno, through the one table in exports.py,
and the connection stays usable. Faults are injected with a wrapping device."""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import nbd_client as nc
from ebsengine import errors
from ebsengine.nbd import protocol as p
from ebsengine.nbd.exports import errno_for
from ebsengine.nbd.server import NbdServer
from nbd_client import NbdClient

MiB = 1 << 20
FAULT_AT = 512 * MiB  # every access at or beyond this offset fails


@pytest.mark.parametrize(
    "exc, write, expected",
    [
        (errors.ReadOnlyDevice("ro"), False, p.NBD_EPERM),
        (errors.OutOfRange("r"), False, p.NBD_EINVAL),
        (errors.OutOfRange("r"), True, p.NBD_ENOSPC),
        (errors.StoreFull("full"), True, p.NBD_ENOSPC),
        (errors.Closed("closed"), False, p.NBD_ESHUTDOWN),
        (errors.CorruptStore("bad"), False, p.NBD_EIO),
        (errors.InvalidParameter("x"), False, p.NBD_EINVAL),
        (errors.IncorrectState("x"), False, p.NBD_EIO),
        (OSError(errno.EDQUOT, "quota"), True, p.NBD_ENOSPC),
        (OSError(errno.EIO, "disk"), False, p.NBD_EIO),
        (PermissionError("no"), False, p.NBD_EPERM),
        (RuntimeError("bug"), False, p.NBD_EIO),
    ],
)
def test_nbd_errno_table(exc: BaseException, write: bool, expected: int) -> None:
    assert errno_for(exc, write=write) == expected


class FaultyDevice:
    """Delegates to a real device; fails accesses past FAULT_AT with the configured error."""

    def __init__(self, dev: Any, fault: BaseException) -> None:
        self._dev = dev
        self._fault = fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dev, name)

    def _check(self, offset: int, length: int) -> None:
        if offset + length > FAULT_AT:
            raise self._fault

    def pread(self, length: int, offset: int) -> bytes:
        self._check(offset, length)
        return bytes(self._dev.pread(length, offset))

    def pwrite(self, data: bytes, offset: int) -> int:
        self._check(offset, len(data))
        return int(self._dev.pwrite(data, offset))

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check(offset, length)
        self._dev.write_zeroes(offset, length)

    def trim(self, offset: int, length: int) -> None:
        self._check(offset, length)
        self._dev.trim(offset, length)

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        self._check(offset, length)
        return list(self._dev.extents(offset, length))


class FaultyEngine:
    def __init__(self, engine: Any, fault: BaseException) -> None:
        self._engine = engine
        self.fault = fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def open_volume(self, vid: str) -> FaultyDevice:
        return FaultyDevice(self._engine.open_volume(vid), self.fault)


@pytest.mark.parametrize(
    "fault, read_err, write_err",
    [
        (errors.StoreFull("store is full"), p.NBD_ENOSPC, p.NBD_ENOSPC),
        (errors.CorruptStore("chunk does not decompress"), p.NBD_EIO, p.NBD_EIO),
        (OSError(errno.ENOSPC, "disk full"), p.NBD_ENOSPC, p.NBD_ENOSPC),
    ],
    ids=["StoreFull", "CorruptStore", "ENOSPC"],
)
@pytest.mark.parametrize("structured", [True, False])
def test_nbd_engine_faults_become_errno(
    engine: Any, tmp_path: Path, fault: BaseException, read_err: int, write_err: int,
    structured: bool,
) -> None:
    vol = engine.create_volume(size_gib=1)
    faulty = FaultyEngine(engine, fault)
    with NbdServer(faulty, unix_path=tmp_path / "nbd.sock", tcp=None, background_flush=False) as srv:
        with NbdClient(str(srv.unix_path)) as c:
            c.go(vol.id, structured=structured)
            r = c.cmd(nc.CMD_READ, FAULT_AT, 4096)
            assert r.error == read_err
            if structured:  # an early READ error is a single ERROR chunk
                assert [t for _, t, _ in r.chunks] == [nc.CHUNK_ERROR]
                r = c.cmd(nc.CMD_READ, FAULT_AT - MiB, 2 * MiB)  # hole-scanning path
                assert r.error == read_err
                assert c.cmd(nc.CMD_STATUS, FAULT_AT, 4096).error == read_err
            assert c.cmd(nc.CMD_WRITE, FAULT_AT, 4, payload=b"abcd").error == write_err
            assert c.cmd(nc.CMD_ZEROES, FAULT_AT, 4096).error == write_err
            big = b"q" * MiB  # a large (pooled) write that fails
            assert c.cmd(nc.CMD_WRITE, FAULT_AT, len(big), nc.F_FUA, big).error == write_err
            # the connection is still in frame and usable
            c.pwrite(0, b"fine")
            assert c.pread(0, 4) == b"fine"
            assert c.cmd(nc.CMD_FLUSH).error == 0
    assert engine.fsck().ok
