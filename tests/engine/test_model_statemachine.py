"""Invariants 1-4 against a plain in-memory model (hypothesis state machine).

Random sequences of write (unaligned, sub-page and 4 KiB-aligned: patches) / trim / resize /
snapshot / delete-snapshot / restore / copy / delete-volume / reopen / fold run against the
engine and against dictionaries of bytes; every volume and snapshot is compared byte for byte. ``EBSENGINE_SLOW=1`` runs many more examples.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import uuid

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

import ebsengine
from ceph_support import Cluster, drop_pools
from ebsengine import layout as L
from ebsengine.errors import EbsError, UnrelatedSnapshots

GIB = L.GIB
CS = L.CHUNK_SIZE
SLOW = os.environ.get("EBSENGINE_SLOW") == "1"
# A few fixed payloads make volumes share chunks (dedup) across the run.
POOL = [bytes([i]) * CS for i in range(1, 4)] + [random.Random(7).randbytes(CS)]


class Sparse:
    """A byte array of ``size`` bytes stored as {chunk index: bytearray}."""

    def __init__(self, size: int, chunks: dict[int, bytearray] | None = None) -> None:
        self.size = size
        self.chunks = {i: bytearray(c) for i, c in (chunks or {}).items()}

    def copy(self) -> Sparse:
        return Sparse(self.size, self.chunks)

    def write(self, off: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            idx, within = divmod(off + pos, CS)
            take = min(CS - within, len(data) - pos)
            buf = self.chunks.setdefault(idx, bytearray(CS))
            buf[within:within + take] = data[pos:pos + take]
            pos += take

    def zero(self, off: int, length: int) -> None:
        self.write(off, bytes(length))

    def nonzero_chunks(self) -> set[int]:
        return {i for i, c in self.chunks.items() if any(c)}

    def read(self, off: int, length: int) -> bytes:
        out = bytearray(length)
        pos = 0
        while pos < length:
            idx, within = divmod(off + pos, CS)
            take = min(CS - within, length - pos)
            c = self.chunks.get(idx)
            if c is not None:
                out[pos:pos + take] = c[within:within + take]
            pos += take
        return bytes(out)


PAGE = L.PAGE_SIZE
# Unaligned, and 4 KiB-aligned (the page path: partial chunks written without reading them).
offsets = st.one_of(st.integers(0, 3 * CS), st.integers(GIB - 2 * CS, GIB - 1),
                    st.integers(0, 3 * CS // PAGE).map(lambda k: k * PAGE))
lengths = st.one_of(st.integers(1, 2 * CS + 17), st.sampled_from([CS, 4096, 512, 1]),
                    st.integers(1, 17).map(lambda k: k * PAGE))


class EngineMachine(RuleBasedStateMachine):
    volumes = Bundle("volumes")
    snapshots = Bundle("snapshots")
    #: whether new volumes are encrypted (the encrypted variant below)
    ENCRYPT = False

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="ebs-sm-")
        self.eng = ebsengine.Engine(self.store_path(), map_size=1 << 32)
        self.vols: dict[str, Sparse] = {}
        self.snaps: dict[str, Sparse] = {}
        self.snap_vol: dict[str, str] = {}
        self.devs: dict[str, ebsengine.Device] = {}
        self._other_key: str | None = None

    def other_key(self) -> str:
        """A customer KMS key besides alias/aws/ebs (made on first use)."""
        if self._other_key is None:
            self._other_key = self.eng.kms.create_key("us-east-1", "123456789012").id
        return self._other_key

    def store_path(self) -> str:
        return os.path.join(self.dir, "s")

    def dev(self, vid: str) -> ebsengine.Device:
        if vid not in self.devs:
            self.devs[vid] = self.eng.open_volume(vid)
        return self.devs[vid]

    def teardown(self) -> None:
        try:
            self.check_everything()
            report = self.eng.fsck()
            assert report.ok, report.problems
            assert report.unverified == [], report.unverified  # every sealed value opened
        finally:
            for d in self.devs.values():
                d.close()
            self.eng.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- rules ------------------------------------------------------------------------------

    @initialize(target=volumes, seed=st.integers(0, 2**32))
    def first_volume(self, seed: int):  # type: ignore[no-untyped-def]
        """Start every run with a written volume, so short runs reach snapshots."""
        v = self.eng.create_volume(size_gib=1, volume_type="gp3", encrypted=self.ENCRYPT)
        self.vols[v.id] = Sparse(GIB)
        data = random.Random(seed).randbytes(3 * CS)
        self.dev(v.id).pwrite(data, CS // 2)
        self.vols[v.id].write(CS // 2, data)
        return multiple(v.id)

    @rule(target=volumes, gib=st.integers(1, 2))
    def create(self, gib: int) -> str:
        v = self.eng.create_volume(size_gib=gib, volume_type="gp3", encrypted=self.ENCRYPT)
        self.vols[v.id] = Sparse(gib * GIB)
        return v.id

    @rule(vid=volumes, off=offsets, length=lengths, seed=st.integers(0, 2**32),
          pooled=st.booleans())
    def write(self, vid: str, off: int, length: int, seed: int, pooled: bool) -> None:
        if vid not in self.vols:
            return
        m = self.vols[vid]
        off = min(off, m.size - 1)
        length = min(length, m.size - off)
        if pooled:
            base = POOL[seed % len(POOL)]
            data = (base * (length // CS + 2))[:length]
        else:
            data = random.Random(seed).randbytes(length)
        self.dev(vid).pwrite(data, off)
        m.write(off, data)

    @rule(vid=volumes, off=offsets, length=lengths, zeroes=st.booleans())
    def trim(self, vid: str, off: int, length: int, zeroes: bool) -> None:
        if vid not in self.vols:
            return
        m = self.vols[vid]
        off = min(off, m.size - 1)
        length = min(length, m.size - off)
        (self.dev(vid).write_zeroes if zeroes else self.dev(vid).trim)(off, length)
        m.zero(off, length)

    @rule(vid=volumes)
    def flush(self, vid: str) -> None:
        if vid in self.vols:
            self.dev(vid).flush()

    @rule(vid=volumes)
    def grow(self, vid: str) -> None:
        if vid not in self.vols:
            return
        m = self.vols[vid]
        self.eng.modify_volume(vid, size_gib=m.size // GIB + 1)
        m.size += GIB
        assert self.dev(vid).size == m.size

    @rule()
    def fold(self) -> None:
        """Merge every patch into whole chunks: nothing anybody reads may change."""
        self.eng.fold()

    @rule(target=snapshots, vid=volumes)
    def snapshot(self, vid: str) -> str:
        if vid not in self.vols:
            return "snap-00000000000000000"
        s = self.eng.create_snapshot(vid)
        self.snaps[s.id] = self.vols[vid].copy()
        self.snap_vol[s.id] = vid
        return s.id

    @rule(sid=consumes(snapshots))
    def delete_snapshot(self, sid: str) -> None:
        if sid not in self.snaps:
            return
        self.eng.delete_snapshot(sid)
        del self.snaps[sid]

    @rule(target=volumes, sid=snapshots, extra=st.integers(0, 1))
    def restore(self, sid: str, extra: int) -> str:
        if sid not in self.snaps:
            return "vol-00000000000000000"
        m = self.snaps[sid]
        v = self.eng.create_volume(snapshot_id=sid, size_gib=m.size // GIB + extra)
        self.vols[v.id] = Sparse(m.size + extra * GIB, m.chunks)
        return v.id

    @rule(target=volumes, sid=snapshots)
    def restore_under_another_key(self, sid: str) -> str:
        """Encrypts a plaintext snapshot, or re-encrypts: a full copy into a new domain."""
        if sid not in self.snaps:
            return "vol-00000000000000000"
        m = self.snaps[sid]
        v = self.eng.create_volume(snapshot_id=sid, encrypted=True,
                                   kms_key_id=self.other_key())
        assert v.encrypted
        self.vols[v.id] = Sparse(m.size, m.chunks)
        return v.id

    @rule(target=snapshots, sid=snapshots)
    def copy_encrypted(self, sid: str) -> str:
        if sid not in self.snaps:
            return "snap-00000000000000000"
        s = self.eng.copy_snapshot(sid, encrypted=True)
        assert s.encrypted
        self.snaps[s.id] = self.snaps[sid].copy()
        self.snap_vol[s.id] = self.snap_vol[sid]
        return s.id

    @rule(target=snapshots, sid=snapshots)
    def copy(self, sid: str) -> str:
        if sid not in self.snaps:
            return "snap-00000000000000000"
        s = self.eng.copy_snapshot(sid)
        self.snaps[s.id] = self.snaps[sid].copy()
        self.snap_vol[s.id] = self.snap_vol[sid]
        return s.id

    @rule(vid=consumes(volumes))
    def delete_volume(self, vid: str) -> None:
        if vid not in self.vols:
            return
        if vid in self.devs:
            self.devs.pop(vid).close()
        self.eng.delete_volume(vid)
        del self.vols[vid]

    @precondition(lambda self: True)
    @rule()
    def reopen(self) -> None:
        for d in self.devs.values():
            d.close()
        self.devs.clear()
        self.eng.close()
        self.eng = ebsengine.Engine(self.store_path(), map_size=1 << 32)

    @rule(a=snapshots, b=snapshots)
    def changed_blocks(self, a: str, b: str) -> None:
        if a not in self.snaps or b not in self.snaps:
            return
        ma, mb = self.snaps[a], self.snaps[b]
        try:
            got = self.eng.list_changed_blocks(a, b)
        except EbsError as exc:
            assert isinstance(exc, UnrelatedSnapshots), exc
            assert self.snap_vol[a] != self.snap_vol[b] or a != b
            return
        idxs = set(ma.chunks) | set(mb.chunks)
        want = sorted({i // L.CHUNKS_PER_BLOCK for i in idxs
                       if ma.read(i * CS, CS) != mb.read(i * CS, CS)})
        assert got == want

    @rule(sid=snapshots, vid=volumes)
    def compare_one(self, sid: str, vid: str) -> None:
        if sid in self.snaps:
            self.compare_snapshot(sid)
        if vid in self.vols:
            self.compare_volume(vid)

    # --- checks -----------------------------------------------------------------------------

    def compare(self, dev: ebsengine.Device, m: Sparse) -> None:
        assert dev.size == m.size
        data_runs: set[int] = set()
        pos = 0
        for length, flags in dev.extents(0, dev.size):
            if flags == 0:
                data_runs.update(range(pos // CS, (pos + length - 1) // CS + 1))
            pos += length
        assert m.nonzero_chunks() <= data_runs | set(m.chunks)
        for idx in sorted(data_runs | set(m.chunks)):
            assert dev.pread(CS, idx * CS) == m.read(idx * CS, CS), f"chunk {idx} differs"
        # Unaligned spot checks across chunk borders, and the very end.
        for off in (CS - 3, 2 * CS - 100, m.size - 10):
            assert dev.pread(10, off) == m.read(off, 10)

    def compare_volume(self, vid: str) -> None:
        self.compare(self.dev(vid), self.vols[vid])

    def compare_snapshot(self, sid: str) -> None:
        with self.eng.open_snapshot(sid) as ro:
            self.compare(ro, self.snaps[sid])
        m = self.snaps[sid]
        want = sorted({i // L.CHUNKS_PER_BLOCK for i in m.nonzero_chunks()})
        assert self.eng.list_snapshot_blocks(sid) == want

    def check_everything(self) -> None:
        for vid in self.vols:
            self.compare_volume(vid)
        for sid in self.snaps:
            self.compare_snapshot(sid)

    @invariant()
    def records_match(self) -> None:
        assert {v.id for v in self.eng.list_volumes()} == set(self.vols)
        assert {s.id for s in self.eng.list_snapshots()} == set(self.snaps)


EngineMachine.TestCase.settings = settings(
    max_examples=400 if SLOW else 100,
    stateful_step_count=60 if SLOW else 30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineModel = EngineMachine.TestCase


class MemoryEngineMachine(EngineMachine):
    """The same model check on the in-memory backend (a named store, so reopen works)."""

    def store_path(self) -> str:
        return f"memory://sm{self.dir}"

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            from ebsengine.storage.memory import forget
            forget(f"sm{self.dir}")


MemoryEngineMachine.TestCase.settings = EngineMachine.TestCase.settings
TestEngineModelMemory = MemoryEngineMachine.TestCase


class EncryptedEngineMachine(EngineMachine):
    """The same model check with every new volume encrypted (sealed chunks and pages,
    domain-keyed dedup, copies into other domains)."""

    ENCRYPT = True


EncryptedEngineMachine.TestCase.settings = EngineMachine.TestCase.settings
TestEngineModelEncrypted = EncryptedEngineMachine.TestCase


class RadosEngineMachine(EngineMachine):
    """The same model check on a ``rados://`` store of the test cluster: fresh pools per
    example (dropped in teardown), and a local work directory in the example's temporary
    directory; reopen opens the same URL again (a new connection, the same pools)."""

    cluster: Cluster | None = None  # set by the test below (a session fixture)

    def store_path(self) -> str:
        assert self.cluster is not None
        if not hasattr(self, "_prefix"):
            self._prefix = f"sm{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return self.cluster.url(self._prefix, workdir=os.path.join(self.dir, "w"))

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            assert self.cluster is not None
            drop_pools(self.cluster.conf, self._prefix)


#: fewer, shorter runs than on a local store (each example makes and drops two pools, and
#: every commit is a round trip to the cluster); EBSENGINE_SLOW=1 runs the full count
RADOS_SETTINGS = settings(
    EngineMachine.TestCase.settings,
    max_examples=400 if SLOW else 25,
    stateful_step_count=60 if SLOW else 30,
)


@pytest.mark.needs_ceph
def test_engine_model_rados(ceph_cluster: Cluster) -> None:
    RadosEngineMachine.cluster = ceph_cluster
    try:
        run_state_machine_as_test(RadosEngineMachine, settings=RADOS_SETTINGS)
    finally:
        RadosEngineMachine.cluster = None
