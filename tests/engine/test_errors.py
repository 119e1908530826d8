"""DESIGN invariant 7 (refused means untouched): bad input gets a clear ``EbsError`` with
the right class, AWS code and a message saying why, and the store is exactly as it was
(``store_digest`` over every sub-database is unchanged).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ebsengine
from conftest import discard_unflushable, store_digest
from ebsengine import layout as L
from ebsengine.errors import (
    Closed,
    EbsError,
    IncorrectState,
    InvalidBlock,
    InvalidParameter,
    InvalidParameterCombination,
    InvalidVolumeSize,
    MalformedId,
    MissingParameter,
    NotFound,
    OutOfRange,
    ReadOnlyDevice,
    SnapshotNotFound,
    StoreFull,
    UnrelatedSnapshots,
    VolumeInUse,
    VolumeNotFound,
)

CS = L.CHUNK_SIZE
GIB = L.GIB
REPO = Path(__file__).resolve().parents[2]
UNKNOWN_VOL = "vol-0123456789abcdef0"
UNKNOWN_SNAP = "snap-0123456789abcdef0"


@dataclass
class World:
    eng: ebsengine.Engine
    vol: str        # gp3, 2 GiB, data at the start and the end, two tags
    snap: str       # completed snapshot of vol
    pending: str    # a pending direct-API snapshot (1 GiB) with one block
    failed: str     # a snapshot in state "error"
    io1: str        # io1 4 GiB, 200 IOPS
    head: bytes     # vol's first 100 KiB
    tail: bytes     # vol's last 100 KiB


@pytest.fixture
def w(eng: ebsengine.Engine) -> World:
    rnd = random.Random(7)
    vol = eng.create_volume(size_gib=2, volume_type="gp3", tags={"a": "1", "b": "2"}).id
    head, tail = rnd.randbytes(100_000), rnd.randbytes(100_000)
    with eng.open_volume(vol) as dev:
        dev.pwrite(head, 0)
        dev.pwrite(tail, 2 * GIB - len(tail))
    snap = eng.create_snapshot(vol, description="base").id
    pending = eng.start_snapshot(1).id
    eng.put_snapshot_block(pending, 1, rnd.randbytes(L.BLOCK_SIZE))
    failed = eng.start_snapshot(1).id
    eng.fail_snapshot(failed)
    io1 = eng.create_volume(size_gib=4, volume_type="io1", iops=200).id
    return World(eng, vol, snap, pending, failed, io1, head, tail)


def refused(eng: ebsengine.Engine, cls: type[EbsError], code: str | tuple[str, ...],
            words: str | tuple[str, ...], fn: Callable[..., Any], *args: Any,
            **kwargs: Any) -> EbsError:
    """Call ``fn``: it must raise ``cls`` with ``code`` and a message containing each of
    ``words`` (case-insensitive), and leave the store byte-for-byte unchanged."""
    before = store_digest(eng)
    with pytest.raises(cls) as info:
        fn(*args, **kwargs)
    err = info.value
    assert isinstance(err, EbsError)
    codes = (code,) if isinstance(code, str) else code
    assert err.code in codes, (err.code, str(err))
    msg = str(err)
    assert msg and msg == err.message
    for word in (words,) if isinstance(words, str) else words:
        assert word.lower() in msg.lower(), (word, msg)
    assert store_digest(eng) == before, f"refused call changed the store: {msg}"
    return err


IPV = "InvalidParameterValue"
IPC = "InvalidParameterCombination"


# --- volume creation --------------------------------------------------------------------------


@pytest.mark.parametrize("size,vtype", [
    (0, "gp2"), (-1, "gp2"), (-(2**63), "gp3"), (16385, "gp2"), (65537, "gp3"), (3, "io1"),
    (16385, "io1"), (65537, "io2"), (124, "st1"), (16385, "sc1"), (1025, "standard"),
    (2**70, "gp3"),
])
def test_create_volume_size_out_of_range(w: World, size: int, vtype: str) -> None:
    extra = {"iops": 100} if vtype in ("io1", "io2") else {}
    refused(w.eng, InvalidParameter, IPV, ("out of range", vtype), w.eng.create_volume,
            size_gib=size, volume_type=vtype, **extra)


@pytest.mark.parametrize("size", ["8", 8.0, 8.5, True, b"8", [8]])
def test_create_volume_size_not_int(w: World, size: Any) -> None:
    refused(w.eng, InvalidParameter, IPV, "whole number", w.eng.create_volume, size_gib=size)


def test_create_volume_bad_type_and_missing_size(w: World) -> None:
    for vtype in ("gp9", "", "GP2", None, 3):
        refused(w.eng, InvalidParameter, IPV, "volume type", w.eng.create_volume, size_gib=8,
                volume_type=vtype)
    refused(w.eng, MissingParameter, "MissingParameter", "size", w.eng.create_volume)
    refused(w.eng, MissingParameter, "MissingParameter", "encrypted", w.eng.create_volume,
            size_gib=8, kms_key_id="alias/x")


def test_create_volume_iops_and_throughput_rules(w: World) -> None:
    e = w.eng
    refused(e, InvalidParameterCombination, IPC, ("iops", "gp2"), e.create_volume,
            size_gib=8, volume_type="gp2", iops=3000)
    refused(e, InvalidParameterCombination, IPC, ("iops", "st1"), e.create_volume,
            size_gib=500, volume_type="st1", iops=500)
    refused(e, InvalidParameterCombination, IPC, ("throughput", "io1"), e.create_volume,
            size_gib=8, volume_type="io1", iops=400, throughput=200)
    refused(e, InvalidParameterCombination, IPC, "multi-attach", e.create_volume,
            size_gib=8, volume_type="gp3", multi_attach_enabled=True)
    for vtype in ("io1", "io2"):
        refused(e, MissingParameter, "MissingParameter", ("iops", vtype), e.create_volume,
                size_gib=8, volume_type=vtype)
    # IOPS ratio: io1 50/GiB, io2 1000/GiB, gp3 500/GiB
    refused(e, InvalidParameter, IPV, "ratio", e.create_volume, size_gib=10,
            volume_type="io1", iops=501)
    refused(e, InvalidParameter, IPV, "ratio", e.create_volume, size_gib=4,
            volume_type="io2", iops=4001)
    refused(e, InvalidParameter, IPV, "ratio", e.create_volume, size_gib=7,
            volume_type="gp3", iops=3501)
    refused(e, InvalidParameter, IPV, ("iops", "out of range"), e.create_volume,
            size_gib=100, volume_type="io1", iops=99)
    refused(e, InvalidParameter, IPV, ("iops", "out of range"), e.create_volume,
            size_gib=2000, volume_type="io1", iops=64001)
    refused(e, InvalidParameter, IPV, ("iops", "out of range"), e.create_volume,
            size_gib=8, volume_type="gp3", iops=2999)
    refused(e, InvalidParameter, IPV, ("throughput", "out of range"), e.create_volume,
            size_gib=8, volume_type="gp3", throughput=124)
    refused(e, InvalidParameter, IPV, ("throughput", "out of range"), e.create_volume,
            size_gib=1000, volume_type="gp3", iops=16000, throughput=2001)
    refused(e, InvalidParameter, IPV, ("throughput", "too high"), e.create_volume,
            size_gib=8, volume_type="gp3", iops=3000, throughput=751)
    # the limits themselves are accepted
    e.create_volume(size_gib=10, volume_type="io1", iops=500)
    e.create_volume(size_gib=8, volume_type="gp3", iops=3000, throughput=750)


@pytest.mark.parametrize("kwargs", [
    {"volume_type": "gp3", "iops": "3000"},
    {"volume_type": "gp3", "iops": 3000.5},
    {"volume_type": "gp3", "iops": True},
    {"volume_type": "gp3", "throughput": "200"},
    {"volume_type": "gp3", "throughput": 200.0},
    {"snapshot": True, "size_gib": "8"},
    {"snapshot": True, "size_gib": 2.0},
    {"tags": ["a"]},
    {"tags": "k=v"},
    {"tags": {"k": 5}},
    {"tags": {5: "v"}},
    {"snapshot_id": 5},
], ids=["iops-str", "iops-float", "iops-bool", "throughput-str", "throughput-float",
        "size-str-from-snapshot", "size-float-from-snapshot", "tags-list", "tags-str",
        "tag-value-int", "tag-key-int", "snapshot-id-int"])
def test_create_volume_bad_types(w: World, kwargs: dict[str, Any]) -> None:
    kwargs = dict(kwargs)
    if kwargs.pop("snapshot", False):
        kwargs["snapshot_id"] = w.snap
    kwargs.setdefault("size_gib", 8)
    refused(w.eng, EbsError, (IPV, IPC, "MissingParameter"), "", w.eng.create_volume, **kwargs)


def test_create_volume_from_bad_snapshots(w: World) -> None:
    e = w.eng
    refused(e, SnapshotNotFound, "InvalidSnapshot.NotFound", UNKNOWN_SNAP, e.create_volume,
            snapshot_id=UNKNOWN_SNAP)
    refused(e, MalformedId, (IPV, "InvalidSnapshotID.Malformed"), "snap-", e.create_volume,
            snapshot_id="snap-xyz")
    refused(e, MalformedId, (IPV, "InvalidSnapshotID.Malformed"), "snap-", e.create_volume,
            snapshot_id=w.vol)
    refused(e, IncorrectState, "IncorrectState", "pending", e.create_volume,
            snapshot_id=w.pending)
    refused(e, IncorrectState, "IncorrectState", "error", e.create_volume,
            snapshot_id=w.failed)
    refused(e, InvalidParameter, IPV, ("smaller than snapshot", w.snap), e.create_volume,
            size_gib=1, snapshot_id=w.snap)
    assert e.create_volume(snapshot_id=w.snap).size_gib == 2  # sanity: the good case works


# --- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["vol-", "vol-XYZ", "vol-0123G", "vol-" + "a" * 33, "volume-1",
                                 "snap-0123", "", None, 42, "vol-abc ", " vol-abc"])
def test_malformed_volume_ids(w: World, bad: Any) -> None:
    e = w.eng
    for fn, args in ((e.get_volume, ()), (e.delete_volume, ()), (e.open_volume, ()),
                     (e.create_snapshot, ()), (e.modify_volume, ()), (e.usage, ()),
                     (e.attach_volume, ("i-1", "/dev/sdf")), (e.detach_volume, ())):
        if fn == e.usage and not (isinstance(bad, str) and bad.startswith("vol-")):
            continue  # usage() dispatches on the prefix; see test_unknown_resource_prefix
        refused(e, MalformedId, (IPV, "InvalidVolumeID.Malformed"), "invalid id", fn, bad,
                *args)


@pytest.mark.parametrize("bad", ["snap-", "snap-XYZ", "snap-0123G", "snapshot-1", "vol-0123",
                                 "", None, 42])
def test_malformed_snapshot_ids(w: World, bad: Any) -> None:
    e = w.eng
    for fn, args in ((e.get_snapshot, ()), (e.delete_snapshot, ()), (e.open_snapshot, ()),
                     (e.copy_snapshot, ()), (e.list_snapshot_blocks, ()),
                     (e.read_snapshot_block, (0,)), (e.complete_snapshot, ()),
                     (e.fail_snapshot, ()), (e.put_snapshot_block, (0, bytes(L.BLOCK_SIZE)))):
        refused(e, MalformedId, (IPV, "InvalidSnapshotID.Malformed"), "invalid id", fn, bad,
                *args)


def test_unknown_ids(w: World) -> None:
    e = w.eng
    for fn, args in ((e.get_volume, ()), (e.delete_volume, ()), (e.open_volume, ()),
                     (e.create_snapshot, ()), (e.modify_volume, (16,)), (e.usage, ()),
                     (e.attach_volume, ("i-1", "/dev/sdf")), (e.detach_volume, ()),
                     (e.set_tags, ({"x": "y"},)), (e.delete_tags, ({"a": None},)),
                     (e.export, ("/nonexistent/never-written",))):
        err = refused(e, VolumeNotFound, "InvalidVolume.NotFound", UNKNOWN_VOL, fn,
                      UNKNOWN_VOL, *args)
        assert isinstance(err, KeyError) and isinstance(err, NotFound)
    for fn, args in ((e.get_snapshot, ()), (e.delete_snapshot, ()), (e.open_snapshot, ()),
                     (e.copy_snapshot, ()), (e.list_snapshot_blocks, ()),
                     (e.list_changed_blocks, (w.snap,)), (e.read_snapshot_block, (0,)),
                     (e.put_snapshot_block, (0, bytes(L.BLOCK_SIZE))),
                     (e.complete_snapshot, ()), (e.fail_snapshot, ()), (e.usage, ()),
                     (e.set_tags, ({"x": "y"},))):
        refused(e, SnapshotNotFound, "InvalidSnapshot.NotFound", UNKNOWN_SNAP, fn,
                UNKNOWN_SNAP, *args)
    refused(e, SnapshotNotFound, "InvalidSnapshot.NotFound", UNKNOWN_SNAP,
            e.list_changed_blocks, w.snap, UNKNOWN_SNAP)
    refused(e, SnapshotNotFound, "InvalidSnapshot.NotFound", UNKNOWN_SNAP, e.start_snapshot,
            2, parent_snapshot_id=UNKNOWN_SNAP)


def test_unknown_resource_prefix(w: World) -> None:
    for rid in ("i-0123456789abcdef0", "ami-12345678"):
        refused(w.eng, InvalidParameter, IPV, rid, w.eng.set_tags, rid, {"a": "b"})
        refused(w.eng, InvalidParameter, IPV, rid, w.eng.delete_tags, rid, {"a": None})


def test_tags_on_non_str_id(w: World) -> None:
    refused(w.eng, EbsError, (IPV, "InvalidID"), "", w.eng.set_tags, 42, {"a": "b"})


# --- modify / delete / attach -------------------------------------------------------------------


def test_modify_volume_refusals(w: World) -> None:
    e = w.eng
    refused(e, InvalidParameter, IPV, "smaller", e.modify_volume, w.vol, size_gib=1)
    refused(e, InvalidParameter, IPV, "smaller", e.modify_volume, w.io1, size_gib=3)
    refused(e, InvalidParameter, IPV, "whole number", e.modify_volume, w.vol, size_gib="3")
    refused(e, InvalidParameter, IPV, "whole number", e.modify_volume, w.vol, size_gib=2.5)
    refused(e, InvalidParameter, IPV, "out of range", e.modify_volume, w.vol, size_gib=65537)
    refused(e, InvalidParameter, IPV, "out of range", e.modify_volume, w.vol,
            volume_type="standard", size_gib=1025)
    refused(e, InvalidParameter, IPV, "volume type", e.modify_volume, w.vol, volume_type="xx")
    refused(e, InvalidParameterCombination, IPC, "iops", e.modify_volume, w.vol,
            volume_type="gp2", iops=3000)
    refused(e, InvalidParameter, IPV, "out of range", e.modify_volume, w.vol,
            volume_type="st1")  # st1 needs 125 GiB
    refused(e, InvalidParameter, IPV, "ratio", e.modify_volume, w.io1, iops=201)
    with e.open_volume(w.vol) as dev:
        assert dev.size == 2 * GIB
        refused(e, InvalidParameter, IPV, "smaller", e.modify_volume, w.vol, size_gib=1)
        assert dev.size == 2 * GIB
        assert dev.pread(len(w.tail), 2 * GIB - len(w.tail)) == w.tail
    assert e.get_volume(w.vol).size_gib == 2


def test_delete_attached_or_open_volume(w: World) -> None:
    e = w.eng
    e.attach_volume(w.vol, "i-0123456789abcdef0", "/dev/sdf")
    refused(e, VolumeInUse, "VolumeInUse", "attached", e.delete_volume, w.vol)
    refused(e, VolumeInUse, "VolumeInUse", "attached", e.attach_volume, w.vol,
            "i-0fedcba9876543210", "/dev/sdg")
    refused(e, IncorrectState, "InvalidAttachment.NotFound", "i-0fedcba9876543210",
            e.detach_volume, w.vol, "i-0fedcba9876543210")
    e.detach_volume(w.vol)
    refused(e, IncorrectState, "IncorrectState", "available", e.detach_volume, w.vol)
    multi = e.create_volume(size_gib=4, volume_type="io1", iops=200,
                            multi_attach_enabled=True).id
    e.attach_volume(multi, "i-1", "/dev/sdf")
    e.attach_volume(multi, "i-2", "/dev/sdf")  # Multi-Attach: a second instance is fine
    refused(e, VolumeInUse, "VolumeInUse", "i-1", e.attach_volume, multi, "i-1", "/dev/sdg")
    refused(e, VolumeInUse, "VolumeInUse", "attached", e.delete_volume, multi)

    dev = e.open_volume(w.vol)
    dev.pwrite(b"unflushed", 5)  # an open device with pending writes
    err = refused(e, VolumeInUse, "VolumeInUse", "open", e.delete_volume, w.vol)
    assert err.exit_code == 4
    assert dev.pread(9, 5) == b"unflushed"  # the device still works
    dev.close()
    e.delete_volume(w.vol)  # sanity: allowed once closed
    refused(e, VolumeNotFound, "InvalidVolume.NotFound", w.vol, e.delete_volume, w.vol)
    with e.open_snapshot(w.snap) as ro:  # the snapshot outlives its volume
        assert ro.pread(len(w.head), 0) == w.head


# --- device I/O ---------------------------------------------------------------------------------


def test_out_of_range_io_writes_nothing(w: World) -> None:
    e = w.eng
    size = 2 * GIB
    with e.open_volume(w.vol) as dev:
        before = store_digest(e)
        bad_writes = [(b"x" * 10, size - 5), (b"x" * 10, size), (b"x", size),
                      (b"x" * 10, -5), (b"x" * (CS + 1), size - CS), (b"", size + 1)]
        for data, off in bad_writes:
            with pytest.raises(OutOfRange) as info:
                dev.pwrite(data, off)
            assert isinstance(info.value, ValueError) and info.value.code == IPV
            assert "beyond" in str(info.value) or "negative" in str(info.value)
        for off, length in ((size - 1, 2), (size, 1), (-1, 1), (0, -1), (0, size + 1)):
            for op in (dev.trim, dev.write_zeroes):
                with pytest.raises(OutOfRange):
                    op(off, length)
        for length, off in ((10, size - 5), (1, size), (-1, 0), (1, -1)):
            with pytest.raises(OutOfRange):
                dev.pread(length, off)
        with pytest.raises(OutOfRange):
            dev.preadinto(bytearray(10), size - 5)
        with pytest.raises(OutOfRange):
            dev.extents(size - 5, 10)
        dev.seek(size - 2)
        with pytest.raises(OutOfRange):
            dev.write(b"abcd")
        assert dev.tell() == size - 2
        with pytest.raises(OutOfRange):
            dev.seek(-1)
        # Nothing was written: not in the cache, and nothing reaches the store on flush.
        assert dev.pread(len(w.tail), size - len(w.tail)) == w.tail
        assert dev.pread(len(w.head), 0) == w.head
        dev.flush()
        assert store_digest(e) == before
        assert dev.read() == w.tail[-2:]  # the stream position still works


def test_snapshot_device_is_read_only(w: World) -> None:
    e = w.eng
    with e.open_snapshot(w.snap) as ro:
        assert ro.readonly and not ro.writable()
        before = store_digest(e)
        for op, args in ((ro.pwrite, (b"x", 0)), (ro.write, (b"x",)), (ro.trim, (0, CS)),
                         (ro.write_zeroes, (0, CS))):
            with pytest.raises(ReadOnlyDevice) as info:
                op(*args)
            assert isinstance(info.value, PermissionError)
            assert info.value.code == "OperationNotPermitted"
            assert "read-only" in str(info.value)
        ro.flush()
        assert ro.pread(len(w.head), 0) == w.head
        assert store_digest(e) == before


def test_closed_device_refuses(w: World) -> None:
    dev = w.eng.open_volume(w.vol)
    dev.close()
    before = store_digest(w.eng)
    for op, args in ((dev.pwrite, (b"x", 0)), (dev.pread, (1, 0)), (dev.trim, (0, 1))):
        with pytest.raises(Closed):
            op(*args)
    assert store_digest(w.eng) == before


def test_closed_engine_refuses(store_path: str) -> None:
    """Every call on a closed engine says so (Closed), not "LMDB error"/"corrupt store"."""
    eng = ebsengine.Engine(store_path)
    vol = eng.create_volume(size_gib=1).id
    snap = eng.create_snapshot(vol).id
    eng.close()
    for fn, args in ((eng.create_volume, (1,)), (eng.get_volume, (vol,)),
                     (eng.list_volumes, ()), (eng.open_volume, (vol,)),
                     (eng.open_snapshot, (snap,)), (eng.create_snapshot, (vol,)),
                     (eng.delete_volume, (vol,)), (eng.delete_snapshot, (snap,)),
                     (eng.fsck, ())):
        with pytest.raises(Closed) as info:
            fn(*args)
        assert info.value.code == "IncorrectState" and "closed" in str(info.value)
    eng.close()  # still idempotent


def test_device_of_closed_engine_refuses_writes(store_path: str) -> None:
    """A device left open past Engine.close() must not acknowledge a write it can never
    make durable."""
    eng = ebsengine.Engine(store_path)
    vol = eng.create_volume(size_gib=1).id
    dev = eng.open_volume(vol)
    dev.pwrite(b"a" * CS, 0)
    eng.close()  # flushes the first write
    try:
        with pytest.raises(Closed):
            dev.pwrite(b"y" * CS, CS)
        with pytest.raises(Closed):
            dev.pread(1, 0)
    finally:
        try:
            dev.close()
        except EbsError:
            pass
    with ebsengine.Engine(store_path) as again, again.open_volume(vol) as dev2:
        assert dev2.pread(2 * CS, 0) == b"a" * CS + bytes(CS)


# --- snapshots and the direct API -----------------------------------------------------------


def test_snapshot_refusals(w: World) -> None:
    e = w.eng
    refused(e, InvalidParameter, IPV, "255", e.create_snapshot, w.vol, description="d" * 256)
    refused(e, IncorrectState, "IncorrectState", "pending", e.open_snapshot, w.pending)
    refused(e, IncorrectState, "IncorrectState", "pending", e.copy_snapshot, w.pending)
    refused(e, IncorrectState, "IncorrectState", "pending", e.list_snapshot_blocks, w.pending)
    refused(e, IncorrectState, "IncorrectState", "error", e.read_snapshot_block, w.failed, 0)
    refused(e, IncorrectState, "IncorrectState", "not pending", e.complete_snapshot, w.snap)
    refused(e, IncorrectState, "IncorrectState", "not pending", e.fail_snapshot, w.failed)
    refused(e, InvalidBlock, "InvalidParameterValue", "beyond", e.read_snapshot_block, w.snap,
            2 * GIB // L.BLOCK_SIZE)
    refused(e, InvalidBlock, "InvalidParameterValue", "beyond", e.read_snapshot_block, w.snap, -1)
    other = e.create_volume(size_gib=1).id
    other_snap = e.create_snapshot(other).id
    refused(e, UnrelatedSnapshots, "InvalidParameterValue", "not related", e.list_changed_blocks,
            w.snap, other_snap)


@pytest.mark.parametrize("size", [0, -1, 65537, True, "1", 1.0])
def test_start_snapshot_bad_size(w: World, size: Any) -> None:
    refused(w.eng, InvalidVolumeSize, "InvalidParameterValue", "volumesize", w.eng.start_snapshot,
            size)


def test_start_snapshot_smaller_than_parent(w: World) -> None:
    refused(w.eng, InvalidVolumeSize, "InvalidParameterValue", "smaller", w.eng.start_snapshot, 1,
            parent_snapshot_id=w.snap)
    refused(w.eng, IncorrectState, "IncorrectState", "pending", w.eng.start_snapshot, 2,
            parent_snapshot_id=w.pending)


def test_put_snapshot_block_refusals(w: World) -> None:
    e = w.eng
    block = random.Random(3).randbytes(L.BLOCK_SIZE)
    for n in (0, 1, L.BLOCK_SIZE - 1, L.BLOCK_SIZE + 1, L.CHUNK_SIZE):
        refused(e, InvalidBlock, "InvalidParameterValue", str(L.BLOCK_SIZE), e.put_snapshot_block,
                w.pending, 0, block[:n] if n <= L.BLOCK_SIZE else block + b"x")
    for idx in (-1, 2048, 2**40, True, "3", 1.0, None):
        refused(e, InvalidBlock, "InvalidParameterValue", "beyond", e.put_snapshot_block,
                w.pending, idx, block)
    refused(e, IncorrectState, "IncorrectState", "completed", e.put_snapshot_block, w.snap, 0,
            block)
    refused(e, IncorrectState, "IncorrectState", "error", e.put_snapshot_block, w.failed, 0,
            block)
    e.put_snapshot_block(w.pending, 2047, block)  # sanity: the last block is fine
    done = e.complete_snapshot(w.pending)
    assert done.state == "completed"
    refused(e, IncorrectState, "IncorrectState", "completed", e.put_snapshot_block, w.pending,
            0, block)
    assert e.read_snapshot_block(w.pending, 2047) == block


@pytest.mark.parametrize("idx", ["0", 0.0, True, None])
def test_read_snapshot_block_bad_index_type(w: World, idx: Any) -> None:
    refused(w.eng, InvalidBlock, "InvalidParameterValue", "beyond", w.eng.read_snapshot_block,
            w.snap, idx)


# --- tags -------------------------------------------------------------------------------------


def test_tag_refusals(w: World) -> None:
    e = w.eng
    many = {f"k{i}": "v" for i in range(51)}
    refused(e, InvalidParameter, "TagLimitExceeded", "50", e.create_volume, size_gib=1, tags=many)
    refused(e, InvalidParameter, "TagLimitExceeded", "50", e.create_snapshot, w.vol, tags=many)
    refused(e, InvalidParameter, "TagLimitExceeded", "50", e.start_snapshot, 1, tags=many)
    refused(e, InvalidParameter, "TagLimitExceeded", "50", e.copy_snapshot, w.snap, tags=many)
    # vol has 2 tags: 48 more is fine, 49 is one too many
    refused(e, InvalidParameter, "TagLimitExceeded", "50", e.set_tags, w.vol,
            {f"n{i}": "v" for i in range(49)})
    for key in ("aws:name", "AWS:x", "Aws:"):
        refused(e, InvalidParameter, IPV, "aws:", e.create_volume, size_gib=1, tags={key: "v"})
        refused(e, InvalidParameter, IPV, "aws:", e.set_tags, w.vol, {key: "v"})
        refused(e, InvalidParameter, IPV, "aws:", e.set_tags, w.snap, {key: "v"})
    refused(e, InvalidParameter, IPV, "1-128", e.set_tags, w.vol, {"": "v"})
    refused(e, InvalidParameter, IPV, "1-128", e.set_tags, w.vol, {"k" * 129: "v"})
    refused(e, InvalidParameter, IPV, "256", e.set_tags, w.vol, {"k": "v" * 257})
    assert e.get_volume(w.vol).tags == {"a": "1", "b": "2"}
    e.set_tags(w.vol, {f"n{i}": "v" for i in range(48)})  # exactly 50
    assert len(e.get_volume(w.vol).tags) == 50


# --- the LMDB map filling up ------------------------------------------------------------------

MAP_SIZE = 4 * 1024 * 1024
PIECE = 3 * CS + 1000  # unaligned pieces: read-modify-write at both ends


def _fsck_elsewhere(path: str) -> tuple[bool, list[str]]:
    """fsck from another process, read-only: the committed state, whatever this engine
    still holds in its write-back cache."""
    code = ("import json, sys, ebsengine\n"
            f"e = ebsengine.Engine(sys.argv[1], map_size={MAP_SIZE}, readonly=True)\n"
            "r = e.fsck(); e.close(); print(json.dumps([r.ok, r.problems]))\n")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    ok, problems = json.loads(out.stdout)
    return ok, problems


_discard_unflushable = discard_unflushable


def _keep_and_filler(eng: ebsengine.Engine, rnd: random.Random) -> tuple[str, str]:
    """An empty volume to keep writing to, and a 'filler' holding 12 chunks to delete."""
    keep = eng.create_volume(size_gib=1).id
    filler = eng.create_volume(size_gib=1).id
    with eng.open_volume(filler) as dev:
        dev.pwrite(rnd.randbytes(12 * CS), 0)
    return keep, filler


Written = list[tuple[int, bytes]]


def _fill(eng: ebsengine.Engine, dev: ebsengine.Device,
          rnd: random.Random) -> tuple[Written, str, StoreFull, tuple[int, bytes]]:
    """Write + flush unaligned random pieces until the store is full. Returns the flushed
    writes, the digest after the last successful flush, the error and the refused write."""
    flushed: Written = []
    last_digest = store_digest(eng)
    for i in range(200):
        data, off = rnd.randbytes(PIECE), 500 + i * (PIECE + 777)
        dev.pwrite(data, off)
        try:
            dev.flush()
        except StoreFull as exc:
            return flushed, last_digest, exc, (off, data)
        flushed.append((off, data))
        last_digest = store_digest(eng)
    pytest.fail("the store never filled up")


def test_store_full_refuses_and_keeps_everything(store_path: str) -> None:
    rnd = random.Random(11)
    eng = ebsengine.Engine(store_path, map_size=MAP_SIZE)
    try:
        keep = eng.create_volume(size_gib=1).id
        filler = eng.create_volume(size_gib=1).id
        with eng.open_volume(filler) as dev:  # space to free later
            dev.pwrite(rnd.randbytes(12 * CS), 0)
        with eng.open_volume(keep) as dev:
            flushed, last_digest, err, (off, data) = _fill(eng, dev, rnd)
            assert len(flushed) >= 3, "the first writes must fit"
            assert err.code == "InsufficientVolumeCapacity" and err.exit_code == 5
            assert "full" in str(err)
            assert store_digest(eng) == last_digest  # the refused flush left nothing behind
            with pytest.raises(StoreFull):  # a retry is refused the same way
                dev.flush()
            assert store_digest(eng) == last_digest

            # A snapshot (a flush plus a freeze in one transaction) is refused as a whole.
            with pytest.raises(StoreFull):
                eng.create_snapshot(keep)
            assert eng.list_snapshots() == []
            assert store_digest(eng) == last_digest

            # The engine still serves reads: flushed data from the store, the refused write
            # from the write-back cache (acknowledged, just not durable yet).
            for o, want in flushed:
                assert dev.pread(len(want), o) == want
            assert dev.pread(len(data), off) == data
            ok, problems = _fsck_elsewhere(store_path)
            assert ok, problems
            assert store_digest(eng) == last_digest

            # Freeing space lets the retained write through.
            eng.delete_volume(filler)
            dev.flush()
            flushed.append((off, data))
            report = eng.fsck()
            assert report.ok, report.problems
    except BaseException:
        _discard_unflushable(eng)
        raise
    finally:
        eng.close()
    with ebsengine.Engine(store_path, map_size=MAP_SIZE) as again:
        report = again.fsck()
        assert report.ok, report.problems
        with again.open_volume(keep) as dev:
            for o, want in flushed:
                assert dev.pread(len(want), o) == want


def test_freed_space_is_usable_by_the_next_flush(store_path: str) -> None:
    """After a refusal, deleting something makes room for the very next retry: LMDB reuses
    pages freed by commit N only from commit N+2, and a refused (aborted) transaction does
    not advance that clock, so the engine has to."""
    rnd = random.Random(12)
    eng = ebsengine.Engine(store_path, map_size=MAP_SIZE)
    try:
        keep, filler = _keep_and_filler(eng, rnd)
        with eng.open_volume(keep) as dev:
            flushed, _, _, (off, data) = _fill(eng, dev, rnd)
            eng.delete_volume(filler)  # frees 12 chunks; the refused write needs 4
            dev.flush()
            assert eng.fsck().ok
    except BaseException:
        _discard_unflushable(eng)
        raise
    finally:
        eng.close()
    with ebsengine.Engine(store_path, map_size=MAP_SIZE) as again:
        with again.open_volume(keep) as dev:
            for o, want in [*flushed, (off, data)]:
                assert dev.pread(len(want), o) == want


def test_store_full_on_direct_api_block(store_path: str) -> None:
    """put_snapshot_block into a full store: refused, nothing changed, earlier blocks kept."""
    rnd = random.Random(5)
    with ebsengine.Engine(store_path, map_size=MAP_SIZE) as eng:
        snap = eng.start_snapshot(1).id
        kept: dict[int, bytes] = {}
        last_digest = store_digest(eng)
        for idx in range(100):
            block = rnd.randbytes(L.BLOCK_SIZE)
            try:
                eng.put_snapshot_block(snap, idx, block)
            except StoreFull as exc:
                assert exc.code == "InsufficientVolumeCapacity"
                break
            kept[idx] = block
            last_digest = store_digest(eng)
        else:
            pytest.fail("the store never filled up")
        assert len(kept) >= 2
        assert store_digest(eng) == last_digest
        report = eng.fsck()
        assert report.ok, report.problems
        eng.complete_snapshot(snap)
        for idx, block in kept.items():
            assert eng.read_snapshot_block(snap, idx) == block


def test_a_completely_full_store_can_still_free_space(store_path: str) -> None:
    rnd = random.Random(13)
    eng = ebsengine.Engine(store_path, map_size=MAP_SIZE)
    try:
        keep, filler = _keep_and_filler(eng, rnd)
        with eng.open_volume(keep) as dev:
            _fill(eng, dev, rnd)
            _discard_unflushable(eng)  # the client gives the refused write up
            for k in range(5000):  # then small metadata commits take the last pages
                try:
                    eng.service_put("test-fill", f"k{k}", "v" * 1000)
                except StoreFull:
                    break
            else:
                pytest.fail("metadata commits never filled the store")
            digest = store_digest(eng)
            eng.delete_volume(filler)  # must be possible: it is how space is freed
            assert store_digest(eng) != digest
            dev.pwrite(rnd.randbytes(CS), 900 * CS)
            dev.flush()
        report = eng.fsck()
        assert report.ok, report.problems
    except BaseException:
        _discard_unflushable(eng)
        raise
    finally:
        eng.close()
