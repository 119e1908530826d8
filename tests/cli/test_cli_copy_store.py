"""``ebsengine copy-store SRC DST`` run as a user runs it (a subprocess): the copy, its
report and exit codes, a refused destination, and a copy killed with SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import pytest

CS = 64 * 1024


def cli(*args: str, store: str | None = None) -> subprocess.CompletedProcess[str]:
    pre = ["--store", store] if store is not None else []
    return subprocess.run([sys.executable, "-m", "ebsengine.cli", *pre, *args],
                          capture_output=True, text=True, timeout=300)


def make_source(path: str, chunks: int) -> dict[str, bytes]:
    """A store with a volume of ``chunks`` random chunks, a snapshot, 4 KiB writes after it
    and an encrypted volume; what each reads."""
    import ebsengine
    rng = random.Random(3)
    out = {}
    with ebsengine.Engine(path, map_size=1 << 31) as eng:
        v = eng.create_volume(1)
        with eng.open_volume(v.id) as dev:
            dev.pwrite(rng.randbytes(chunks * CS), 0)
            dev.flush()
        s = eng.create_snapshot(v.id)
        with eng.open_volume(v.id) as dev:
            for i in range(8):
                dev.pwrite(rng.randbytes(4096), i * CS + 4096)
            dev.flush()
        e = eng.create_volume(1, encrypted=True)
        with eng.open_volume(e.id) as dev:
            dev.pwrite(rng.randbytes(4 * CS), 0)
            dev.flush()
        for rid in (v.id, s.id, e.id):
            opener = eng.open_snapshot if rid.startswith("snap-") else eng.open_volume
            with opener(rid) as dev:
                out[rid] = dev.pread((chunks + 1) * CS, 0)
    return out


def reads(path: str, want: dict[str, bytes]) -> dict[str, bytes]:
    import ebsengine
    got = {}
    with ebsengine.Engine(path, readonly=True) as eng:
        for rid, data in want.items():
            opener = eng.open_snapshot if rid.startswith("snap-") else eng.open_volume
            with opener(rid) as dev:
                got[rid] = dev.pread(len(data), 0)
    return got


def check_copy(src: str, dst: str, want: dict[str, bytes]) -> dict:
    p = cli("copy-store", src, dst, "--json", "--batch", "50", "--chunk-batch", "10")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["fsck"]["ok"] and report["fsck"]["unverified"] == []
    assert report["chunks"] >= 24 and report["rows"]["pages"] == 8
    assert report["commits"] > report["chunks"] // 10
    assert report["stored_bytes"] > 24 * CS and report["mib_per_s"] > 0
    assert reads(dst, want) == want
    ls = cli("list", "--json", store=dst)
    assert ls.returncode == 0 and len(json.loads(ls.stdout)["volumes"]) == 2
    assert cli("fsck", store=dst).returncode == 0
    return report


def test_copy_store_between_lmdb_stores(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    want = make_source(src, 24)
    check_copy(src, dst, want)
    p = cli("copy-store", src, dst)  # again: the destination is not empty any more
    assert p.returncode == 4
    assert "is not empty" in p.stderr and "nothing was changed" in p.stderr
    assert "Traceback" not in p.stderr
    p = cli("copy-store", str(tmp_path / "missing"), str(tmp_path / "other"))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert not (tmp_path / "other").exists()


def test_copy_store_help_documents_the_command():
    p = cli("copy-store", "--help")
    assert p.returncode == 0
    for words in ("SRC", "DST", "rados://", "unfinished copy", "--batch", "must not"):
        assert words in p.stdout
    assert "copy-store" in cli("--help").stdout


@pytest.mark.needs_ceph
def test_copy_store_lmdb_to_rados_and_back(tmp_path, rados_pools):
    src, back = str(tmp_path / "src"), str(tmp_path / "back")
    rados = rados_pools.url(workdir=str(tmp_path / "wd"))
    want = make_source(src, 24)
    there = check_copy(src, rados, want)
    again = check_copy(rados, back, want)
    assert there["chunks"] == again["chunks"] and there["rows"] == again["rows"]


def test_copy_store_killed_leaves_a_destination_that_refuses_to_open(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_source(src, 300)
    p = subprocess.Popen([sys.executable, "-m", "ebsengine.cli", "copy-store", src, dst,
                          "--progress", "--batch", "1", "--chunk-batch", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stderr is not None
        seen = b""
        while b"copy-store [" not in seen:  # the first progress report: it is copying
            more = os.read(p.stderr.fileno(), 256)
            assert more, f"the copy ended before it reported progress: {seen!r}"
            seen += more
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(60) == -signal.SIGKILL  # killed in the middle, not finished
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()
    for cmd in (("list",), ("fsck",)):
        r = cli(*cmd, store=dst)
        assert r.returncode == 6, r
        assert f"holds an unfinished copy from '{src}'" in r.stderr
        assert "delete it and copy again" in r.stderr
    r = cli("copy-store", src, dst)
    assert r.returncode == 4 and "unfinished copy" in r.stderr
