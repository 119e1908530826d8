"""The kernel mount pipeline over our NBD server: nbdfuse -> loop -> ext4 (as root, no /dev/nbd needed),
on a local store and on a rados:// store of the test cluster.

Needs root, /dev/fuse, loop devices, nbdfuse, fusermount3, mkfs.ext4, e2fsck. Cleanup always
runs in the recipe's order: leave the fs -> umount (lazy as a fallback) -> detach loops ->
fusermount3 -u (retry, then -uz) -> wait for nbdfuse (kill it by pid if it hangs) -> stop the
server -> rm -rf --one-file-system.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import nbd_client as nc
from ebsengine.nbd.server import NbdServer

MiB = 1 << 20
pytestmark = pytest.mark.needs_tools
TOOLS = ("nbdfuse", "fusermount3", "mkfs.ext4", "e2fsck", "debugfs", "mount", "umount",
         "losetup", "findmnt", "fsfreeze")


def preflight() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"mount pipeline needs {', '.join(missing)} (apt-get install libnbd-bin fuse3 e2fsprogs util-linux)")
    if os.geteuid() != 0:
        pytest.skip("mount pipeline needs root (loop mounts)")
    if not os.path.exists("/dev/fuse") or not os.path.exists("/dev/loop-control"):
        pytest.skip("mount pipeline needs /dev/fuse and /dev/loop-control")


def sh(*cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["timeout", "-k", "5", str(timeout), *cmd], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def is_mounted(path: Path) -> bool:
    # `mountpoint` fails on a dead FUSE mount (ENOTCONN); findmnt does not
    return subprocess.run(["findmnt", "-n", "-M", str(path)], capture_output=True).returncode == 0


def abort_fuse(fuse: Path) -> None:
    """Last resort for a hung server (fuse's connections/N/abort): abort the FUSE connection, which
    fails the blocked I/O so that umount and fusermount3 can proceed."""
    minor = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(fuse):
                minor = fields[2].split(":")[1]
    if minor is None:
        return
    conn = Path("/sys/fs/fuse/connections")
    if not (conn / minor).exists():
        subprocess.run(["mount", "-t", "fusectl", "none", str(conn)], capture_output=True)
    try:
        (conn / minor / "abort").write_text("1")
    except OSError:
        pass


def run_or_abort(cmd: list[str], fuse: Path, timeout: float = 60) -> int:
    """Run ``cmd``; if it hangs (I/O stuck behind FUSE), abort the FUSE connection."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        abort_fuse(fuse)
        proc.kill()
        return proc.wait(30)


class Pipeline:
    """nbdfuse exposures and loop mounts under one tmp dir, torn down in the safe order."""

    def __init__(self, tmp: Path, server: NbdServer) -> None:
        self.tmp = tmp
        self.server = server
        self.fuse = tmp / "fuse"
        self.mnt = tmp / "mnt"
        self.img = self.fuse / "disk.img"
        self.fuse.mkdir()
        self.mnt.mkdir()
        self.nbdfuse: subprocess.Popen[bytes] | None = None

    def expose(self, export: str, readonly: bool = False) -> None:
        pidfile = self.tmp / "nbdfuse.pid"
        pidfile.unlink(missing_ok=True)
        cmd = ["nbdfuse", "-P", str(pidfile)] + (["-r"] if readonly else [])
        cmd += [str(self.img), self.server.uri(export)]
        with open(self.tmp / "nbdfuse.log", "ab") as log:
            self.nbdfuse = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        ok = nc.wait_for(lambda: pidfile.exists() and pidfile.stat().st_size > 0, 15)
        if not ok:
            raise AssertionError(
                f"nbdfuse did not come up ({self.nbdfuse.poll()}): "
                + (self.tmp / "nbdfuse.log").read_text()
            )
        assert nc.wait_for(self.img.exists, 5)

    def unexpose(self) -> None:
        if self.nbdfuse is None:
            return
        if is_mounted(self.fuse):
            for _ in range(5):
                if run_or_abort(["fusermount3", "-u", str(self.fuse)], self.fuse) == 0:
                    break
                time.sleep(0.2)
            else:
                run_or_abort(["fusermount3", "-uz", str(self.fuse)], self.fuse)
        try:
            rc = self.nbdfuse.wait(15)
        except subprocess.TimeoutExpired:
            self.nbdfuse.kill()
            rc = self.nbdfuse.wait(5)
        self.nbdfuse = None
        assert rc == 0, f"nbdfuse exited {rc}"

    def mount(self, options: str) -> None:
        sh("mount", "-t", "ext4", "-o", options, str(self.img), str(self.mnt))
        assert is_mounted(self.mnt), "mount reported success but nothing is mounted"

    def umount(self) -> None:
        os.chdir(self.tmp)  # never hold the mountpoint busy
        if is_mounted(self.mnt) and run_or_abort(["umount", str(self.mnt)], self.fuse) != 0:
            run_or_abort(["umount", "-l", str(self.mnt)], self.fuse)
        out = subprocess.run(["losetup", "-n", "-O", "NAME", "-j", str(self.img)],
                             capture_output=True, text=True).stdout.split()
        for loop in out:
            subprocess.run(["losetup", "-d", loop], capture_output=True)

    def cleanup(self) -> None:
        try:
            self.umount()
        finally:
            try:
                self.unexpose()
            except AssertionError:
                pass


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel.startswith("lost+found"):
                continue
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def write_tree(root: Path) -> None:
    (root / "hello.txt").write_text("hello-nbd\n")
    (root / "rand.bin").write_bytes(os.urandom(20 * MiB))
    (root / "odd.bin").write_bytes(os.urandom(123_457))
    d = root / "d"
    d.mkdir()
    for i in range(100):
        (d / f"f{i}").write_text(f"{i}\n" * (i + 1))
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "text.txt").write_bytes(b"the quick brown fox\n" * 20000)


@pytest.fixture(params=["local", pytest.param("rados", marks=pytest.mark.needs_ceph)])
def engine(request: Any, tmp_path: Path) -> Iterator[Any]:
    """The served engine: tests/conftest.py's (an LMDB store, or the protocol layer's
    stand-in), or a real one on a rados:// store of the test cluster (issue 10)."""
    if request.param == "local":
        e = nc.make_engine(tmp_path / "store")
    else:
        if nc.real_engine_class() is None or os.environ.get("EBSENGINE_NBD_FAKE_ENGINE"):
            pytest.skip("a rados:// store needs the real engine")
        pools = request.getfixturevalue("rados_pools")
        import ebsengine
        e = ebsengine.Engine(pools.url(workdir=str(tmp_path / "rados-workdir")))
    try:
        yield e
    finally:
        e.close()


@pytest.fixture
def pipeline(engine: Any, tmp_path: Path) -> Iterator[Pipeline]:
    preflight()
    work = tmp_path / "work"
    work.mkdir()
    cwd = os.getcwd()
    with NbdServer(engine, unix_path=work / "nbd.sock", tcp=None) as srv:
        pl = Pipeline(work, srv)
        try:
            yield pl
        finally:
            pl.cleanup()
            os.chdir(cwd)


@pytest.mark.parametrize("freeze", [True, False], ids=["fsfreeze", "sync-only"])
def test_nbd_mount_pipeline_snapshot_restore(pipeline: Pipeline, engine: Any, freeze: bool) -> None:
    """mkfs -> mount -> write -> sync -f -> snapshot while mounted -> restore -> fsck + compare.

    ``fsfreeze``: freezing checkpoints the journal and clears needs_recovery, so the restored
    image is clean as is and mounts ``ro``. ``sync-only``: the snapshot is crash-consistent;
    the restored (writable) volume passes ``e2fsck -fn``, and its first rw mount replays the
    journal, as a real instance booting from the restored volume would.
    """
    vol = engine.create_volume(size_gib=1)
    pl = pipeline
    pl.expose(vol.id)
    sh("mkfs.ext4", "-q", "-F", str(pl.img))
    pl.mount("loop")
    write_tree(pl.mnt)
    want = tree_digest(pl.mnt)
    sh("sync", "-f", str(pl.mnt))  # syncfs: an NBD failure shows up as EIO here
    if freeze:
        sh("fsfreeze", "-f", str(pl.mnt))
    try:
        snap = engine.create_snapshot(vol.id)
    finally:
        if freeze:
            sh("fsfreeze", "-u", str(pl.mnt))
    # writes after the snapshot must not show up in it (point in time)
    (pl.mnt / "after.txt").write_text("after the snapshot\n")
    (pl.mnt / "hello.txt").write_text("changed\n")
    sh("sync", "-f", str(pl.mnt))
    pl.umount()
    pl.unexpose()

    restored = engine.create_volume(snapshot_id=snap.id)
    pl.expose(restored.id, readonly=freeze)
    fsck = sh("e2fsck", "-fn", str(pl.img), check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert sh("debugfs", "-R", "cat /hello.txt", str(pl.img)).stdout == "hello-nbd\n"
    pl.mount("loop,ro" if freeze else "loop")
    assert tree_digest(pl.mnt) == want
    assert not (pl.mnt / "after.txt").exists()
    pl.umount()
    if not freeze:  # after the journal replay the image is clean as well
        fsck = sh("e2fsck", "-fn", str(pl.img), check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    pl.unexpose()
    assert engine.fsck().ok


def test_nbd_mount_crash_consistent_snapshot_readonly(pipeline: Pipeline, engine: Any) -> None:
    """A snapshot taken mid-use (no freeze) is served read-only and mounts with ro,noload."""
    vol = engine.create_volume(size_gib=1)
    pl = pipeline
    pl.expose(vol.id)
    sh("mkfs.ext4", "-q", "-F", str(pl.img))
    pl.mount("loop")
    write_tree(pl.mnt)
    want = tree_digest(pl.mnt)
    sh("sync", "-f", str(pl.mnt))
    snap = engine.create_snapshot(vol.id)  # crash-consistent: the journal may need replay
    (pl.mnt / "later.bin").write_bytes(os.urandom(MiB))
    pl.umount()
    pl.unexpose()

    pl.expose(snap.id)  # nbdfuse adds -r by itself for a read-only export
    assert not os.access(pl.img, os.W_OK) or sh("nbdinfo", "--can", "write",
                                                pl.server.uri(snap.id), check=False).returncode == 2
    pl.mount("loop,ro,noload")
    assert tree_digest(pl.mnt) == want
    pl.umount()
    pl.unexpose()
    # the live volume still has everything, including the post-snapshot file
    pl.expose(vol.id, readonly=True)
    fsck = sh("e2fsck", "-fn", str(pl.img), check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    pl.mount("loop,ro")
    assert (pl.mnt / "later.bin").stat().st_size == MiB
    pl.umount()
    pl.unexpose()
    assert engine.fsck().ok
