"""Import defects of issue 7: a failed or crashed import leaves the target as it was (or a
new volume marked), and a block device imports its content (not an empty volume)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import ebsengine
from conftest import sha_bytes
from ebsengine import layout as L
from ebsengine.engine import transfer as transfer_mod
from ebsengine.errors import IncorrectState

CS = L.CHUNK_SIZE
MiB = 1 << 20


def make_image(path: Path, mib: int, tag: str) -> bytes:
    """``mib`` MiB of distinct incompressible chunks with a hole in the middle."""
    data = bytearray()
    for i in range(mib * MiB // CS):
        data += bytes(CS) if mib * 4 <= i < mib * 6 else sha_bytes(f"{tag}{i}")
    path.write_bytes(data)
    return bytes(data)


def volume_bytes(e: ebsengine.Engine, vid: str, n: int) -> bytes:
    with e.open_volume(vid) as dev:
        return dev.pread(n, 0)


def lineage_count(e: ebsengine.Engine) -> int:
    with e._store.read() as txn:
        return int(txn.stat(e._store.db["lineages"])["entries"])


@pytest.fixture
def small_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer_mod, "INGEST_BATCH_BYTES", 1 * MiB)
    monkeypatch.setattr(transfer_mod, "INGEST_COMMIT_BYTES", 1 * MiB)


class Boom(Exception):
    pass


def fail_after(nbytes: int) -> Any:
    def progress(done: int, total: int) -> None:
        if done >= nbytes:
            raise Boom(f"failed at {done}")
    return progress


def test_failed_import_into_a_volume_leaves_it_unchanged(eng: ebsengine.Engine, tmp_path: Path,
                                                         small_commits: None) -> None:
    old = make_image(tmp_path / "old.img", 4, "old")
    vid = eng.import_image(tmp_path / "old.img").id
    snap = eng.create_snapshot(vid).id
    lineages = lineage_count(eng)
    make_image(tmp_path / "new.img", 8, "new")
    with pytest.raises(Boom):  # fails after several commits of the new image
        eng.import_image(tmp_path / "new.img", volume_id=vid, progress=fail_after(6 * MiB))
    assert volume_bytes(eng, vid, len(old)) == old
    assert lineage_count(eng) == lineages  # the partial copy is gone
    assert "staging" not in json.loads(eng._store.env.begin().get(
        vid.encode(), db=eng._store.db["volumes"]))
    report = eng.fsck()
    assert report.ok, report.problems
    # and a successful import replaces the content incrementally (the snapshot is related)
    new = (tmp_path / "new.img").read_bytes()
    eng.import_image(tmp_path / "new.img", volume_id=vid)
    assert volume_bytes(eng, vid, len(new)) == new
    s2 = eng.create_snapshot(vid).id
    changed = eng.list_changed_blocks(snap, s2)
    assert changed and max(changed) < len(new) // L.BLOCK_SIZE
    assert eng.fsck().ok


def test_failed_import_of_a_new_volume_leaves_nothing(eng: ebsengine.Engine, tmp_path: Path,
                                                      small_commits: None) -> None:
    make_image(tmp_path / "a.img", 8, "a")
    with pytest.raises(Boom):
        eng.import_image(tmp_path / "a.img", progress=fail_after(5 * MiB))
    assert eng.list_volumes() == []
    assert lineage_count(eng) == 0
    assert eng.fsck().ok


CHILD = textwrap.dedent('''
    import os, signal, sys
    import ebsengine
    from ebsengine.engine import transfer as transfer_mod
    transfer_mod.INGEST_BATCH_BYTES = 1 << 20
    transfer_mod.INGEST_COMMIT_BYTES = 1 << 20
    store, image, target, kill_at = sys.argv[1:5]
    eng = ebsengine.Engine(store)
    def progress(done, total):
        if done >= int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
    eng.import_image(image, volume_id=target or None, progress=progress)
    sys.exit(3)  # not reached: the import is killed first
''')


def run_killed(store: str, image: Path, target: str | None, kill_at: int) -> None:
    p = subprocess.run([sys.executable, "-c", CHILD, store, str(image), target or "",
                        str(kill_at)], capture_output=True, text=True, timeout=300,
                       check=False)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr)


def test_kill9_during_import_of_a_new_volume_marks_it(store_path: str, tmp_path: Path) -> None:
    make_image(tmp_path / "a.img", 12, "a")
    ebsengine.Engine(store_path).close()
    run_killed(store_path, tmp_path / "a.img", None, 10 * MiB)
    with ebsengine.Engine(store_path, readonly=True) as ro:  # before any recovery
        (vol,) = ro.list_volumes()
        assert vol.state == "creating"  # half-imported data was committed, but marked
        with ro._store.read() as txn:
            rec = json.loads(txn.get(vol.id.encode(), db=ro._store.db["volumes"]))
            assert txn.stat(ro._store.db["maps"])["entries"] > 0
        assert rec["importer"]["pid"] > 0
    with ebsengine.Engine(store_path) as e:  # a read-write open settles the dead import
        (vol,) = e.list_volumes()
        assert vol.state == "error"
        assert e.fsck().ok
        with pytest.raises(IncorrectState):
            e.open_volume(vol.id)
        with pytest.raises(IncorrectState):
            e.create_snapshot(vol.id)
        e.delete_volume(vol.id)
        assert e.list_volumes() == [] and lineage_count(e) == 0
        assert e.fsck().ok


def test_kill9_during_import_into_a_volume_keeps_its_content(store_path: str,
                                                             tmp_path: Path) -> None:
    old = make_image(tmp_path / "old.img", 3, "old")
    make_image(tmp_path / "new.img", 12, "new")
    with ebsengine.Engine(store_path) as e:
        vid = e.import_image(tmp_path / "old.img").id
        lineages = lineage_count(e)
    run_killed(store_path, tmp_path / "new.img", vid, 10 * MiB)
    with ebsengine.Engine(store_path, readonly=True) as ro:
        with ro._store.read() as txn:
            rec = json.loads(txn.get(vid.encode(), db=ro._store.db["volumes"]))
        assert rec.get("staging") is not None  # the crash left a partial copy beside it
        assert ro.fsck().ok  # which fsck accepts as the volume's
    with ebsengine.Engine(store_path) as e:
        assert e.get_volume(vid).state == "available"
        assert volume_bytes(e, vid, len(old)) == old
        assert lineage_count(e) == lineages
        assert e.fsck().ok


needs_loop = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("losetup") is None,
                                reason="needs root and losetup")


def cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", store, *args],
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.needs_tools
@needs_loop
def test_import_from_a_block_device_through_the_cli(store_path: str, tmp_path: Path) -> None:
    data = make_image(tmp_path / "backing.img", 5, "dev")
    dev = subprocess.run(["losetup", "--find", "--show", str(tmp_path / "backing.img")],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        p = cli(store_path, "import", dev, "--json")
        assert p.returncode == 0, p.stderr
        vid = json.loads(p.stdout)["volume"]["id"]
        out = tmp_path / "out.img"
        p = cli(store_path, "export", vid, str(out), "--json")
        assert p.returncode == 0, p.stderr
        got = out.read_bytes()
        assert hashlib.sha256(got[:len(data)]).digest() == hashlib.sha256(data).digest()
        assert got[len(data):] == bytes(len(got) - len(data))
        nonzero = sum(1 for i in range(0, len(data), CS) if data[i:i + CS] != bytes(CS))
        assert json.loads(p.stdout)["data_bytes"] == nonzero * CS > 0
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_import_refuses_what_is_not_a_file_or_block_device(store_path: str,
                                                           tmp_path: Path) -> None:
    p = cli(store_path, "import", "/dev/zero", "--json")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "neither a regular file nor a block device" in p.stderr
    with ebsengine.Engine(store_path) as e:
        assert e.list_volumes() == []


def test_data_range_scan_errors_are_raised(tmp_path: Path) -> None:
    """An error of the hole scan other than "no more data" is not an empty image."""
    (tmp_path / "f").write_bytes(b"x" * CS)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    os.close(fd)  # a closed descriptor: EBADF
    with pytest.raises(OSError):
        list(transfer_mod._data_ranges(fd, CS))
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert list(transfer_mod._data_ranges(fd, CS)) == [(0, CS)]
        assert list(transfer_mod._data_ranges(fd, 4 * CS)) == [(0, CS)]  # data then EOF
    finally:
        os.close(fd)
