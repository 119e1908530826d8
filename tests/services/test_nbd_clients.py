"""Interop with real NBD clients: nbdinfo, qemu-img, nbdcopy, qemu-io, fio (libnbd engine).

Every external client runs under ``timeout``; every socket lives in a per-test tmp dir.
The tests skip (with the reason) when a tool is missing; CI turns those skips into failures
via the ``needs_tools`` marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ebsengine.nbd.server import NbdServer

MiB = 1 << 20
pytestmark = pytest.mark.needs_tools


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install qemu-utils libnbd-bin fio)")


def run(*cmd: str, timeout: float = 120, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run an external client under timeout(1) (libnbd and qemu never time out on their own)."""
    proc = subprocess.run(
        ["timeout", "-k", "5", str(timeout), *cmd], capture_output=True, text=True, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def server(engine: Any, tmp_path: Path) -> Iterator[NbdServer]:
    with NbdServer(engine, unix_path=tmp_path / "nbd.sock", tcp=None) as srv:
        yield srv


@pytest.fixture
def vol(engine: Any) -> Any:
    return engine.create_volume(size_gib=1)


def make_image(path: Path, size: int, seed: int = 0) -> None:
    """A raw image with holes, written zeroes, random and text-like data, unaligned edges."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n in [(0, 3 * MiB + 100), (10 * MiB + 513, 777_777), (40 * MiB, 2 * MiB)]:
            f.seek(off)
            f.write(rng.randbytes(n))
        f.seek(20 * MiB)
        f.write(b"the quick brown fox jumps over the lazy dog\n" * 50_000)
        f.seek(30 * MiB)
        f.write(bytes(MiB))  # written zeroes
        f.seek(size - 4097)
        f.write(rng.randbytes(4097))


def test_nbd_nbdinfo_size_flags_list_map(server: NbdServer, engine: Any, vol: Any) -> None:
    need("nbdinfo")
    dev = engine.open_volume(vol.id)
    dev.pwrite(os.urandom(MiB), 5 * MiB)
    dev.pwrite(b"x" * 10, 700 * MiB + 3)
    dev.flush()
    snap = engine.create_snapshot(vol.id)
    uri = server.uri(vol.id)
    assert int(run("nbdinfo", "--size", uri).stdout) == 1 << 30
    assert run("nbdinfo", "--can", "write", uri, check=False).returncode == 0
    assert run("nbdinfo", "--can", "write", server.uri(snap.id), check=False).returncode == 2
    for feature in ("flush", "fua", "trim", "zero", "fast-zero", "multi-conn", "cache", "df"):
        assert run("nbdinfo", "--can", feature, uri, check=False).returncode == 0, feature
    js = json.loads(run("nbdinfo", "--json", uri).stdout)
    export = js["exports"][0]
    assert export["export-size"] == 1 << 30
    assert "base:allocation" in export["contexts"]
    assert export["block_size_minimum"] == 1
    assert export["block_size_maximum"] == 32 * MiB
    listed = run("nbdinfo", "--list", "--json", uri).stdout
    names = {e["export-name"] for e in json.loads(listed)["exports"]}
    assert {vol.id, snap.id} <= names
    # --map against the engine's own extents
    mapped = json.loads(run("nbdinfo", "--map", "--json", uri).stdout)
    got = [(e["length"], e["type"]) for e in mapped]
    want = [(n, f & 3) for n, f in dev.extents(0, dev.size)]
    assert got == want
    assert any(t == 0 for _, t in got) and any(t == 3 for _, t in got)
    dev.close()


def test_nbd_qemu_img_convert_roundtrip(server: NbdServer, vol: Any, tmp_path: Path) -> None:
    need("qemu-img")
    size = 64 * MiB
    src, out = tmp_path / "src.raw", tmp_path / "out.raw"
    make_image(src, size)
    uri = server.uri(vol.id)
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri)
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out))
    assert out.stat().st_size == 1 << 30
    with open(out, "r+b") as f:
        f.truncate(size)
    assert sha256_file(out) == sha256_file(src)
    # compare also checks that the rest of the 1 GiB volume reads as zero
    os.truncate(src, 1 << 30)
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri)


def test_nbd_nbdcopy_both_ways(server: NbdServer, engine: Any, vol: Any, tmp_path: Path) -> None:
    need("nbdcopy")
    src, out = tmp_path / "src.raw", tmp_path / "out.raw"
    make_image(src, 1 << 30, seed=2)
    uri = server.uri(vol.id)
    run("nbdcopy", "--flush", str(src), uri)
    run("nbdcopy", uri, str(out))
    assert sha256_file(out) == sha256_file(src)
    # and from a snapshot (read-only export)
    snap = engine.create_snapshot(vol.id)
    proc = subprocess.run(
        f"timeout 120 nbdcopy '{server.uri(snap.id)}' - | sha256sum", shell=True,
        capture_output=True, text=True, check=True,
    )
    assert proc.stdout.split()[0] == sha256_file(src)


def test_nbd_qemu_io_unaligned_patterns(server: NbdServer, engine: Any, vol: Any) -> None:
    need("qemu-io")
    uri = server.uri(vol.id)
    run("qemu-io", "-f", "raw", uri,
        "-c", "write -P 0xab 1000 3000", "-c", "write -P 0xcd 1048577 4095",
        "-c", "write -P 0xef 104857599 513", "-c", "write -P 0x11 1072693248 1048576",
        "-c", "write -z 4194304 1048576", "-c", "write -z -u 8388608 1048576",
        "-c", "discard 12582912 1048576", "-c", "aio_write -P 0x22 20000001 70000",
        "-c", "aio_flush", "-c", "flush")
    run("qemu-io", "-r", "-f", "raw", uri,
        "-c", "read -P 0xab 1000 3000", "-c", "read -P 0 0 1000", "-c", "read -P 0 4000 96",
        "-c", "read -P 0xcd 1048577 4095", "-c", "read -P 0xef 104857599 513",
        "-c", "read -P 0x11 1072693248 1048576", "-c", "read -P 0 4194304 1048576",
        "-c", "read -P 0 8388608 1048576", "-c", "read -P 0x22 20000001 70000")
    # negative control: a wrong pattern must fail
    assert run("qemu-io", "-r", "-f", "raw", uri, "-c", "read -P 0xcd 1000 10", check=False).returncode != 0
    # a snapshot export refuses writes
    snap = engine.create_snapshot(vol.id)
    bad = run("qemu-io", "-f", "raw", server.uri(snap.id), "-c", "write -P 1 0 512", check=False)
    assert bad.returncode != 0
    run("qemu-io", "-r", "-f", "raw", server.uri(snap.id), "-c", "read -P 0xab 1000 3000")


def test_nbd_tcp_with_qemu_img(engine: Any, vol: Any, tmp_path: Path) -> None:
    need("qemu-img")
    with NbdServer(engine, unix_path=None, tcp=("127.0.0.1", 0)) as srv:
        src = tmp_path / "s.raw"
        make_image(src, 48 * MiB, seed=3)
        run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), srv.uri(vol.id))
        os.truncate(src, 1 << 30)
        run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), srv.uri(vol.id))


def test_nbd_fio_verify(server: NbdServer, vol: Any, tmp_path: Path) -> None:
    need("fio")
    if "nbd" not in run("fio", "--enghelp", check=False).stdout.split():
        pytest.skip("fio was built without the nbd ioengine")
    run("fio", "--name=v", "--ioengine=nbd", f"--uri={server.uri(vol.id)}", "--rw=randwrite",
        "--bs=4k", "--size=32M", "--iodepth=8", "--verify=crc32c", "--do_verify=1",
        "--verify_fatal=1", "--verify_state_save=0", f"--output={tmp_path / 'fio.txt'}",
        cwd=tmp_path)


def test_nbd_encrypted_volume_serves_its_bytes_and_a_disabled_key_refuses_the_export(
        server: NbdServer, engine: Any, tmp_path: Path) -> None:
    """nbdcopy in and out of an encrypted volume; with its KMS key disabled, new exports of
    the volume and of its snapshot are refused (NBD_REP_ERR_POLICY) until it is enabled."""
    need("nbdcopy", "nbdinfo")
    key = engine.kms.create_key("us-east-1", "123456789012")
    vol = engine.create_volume(size_gib=1, encrypted=True, kms_key_id=key.id)
    src, out = tmp_path / "src.raw", tmp_path / "out.raw"
    make_image(src, 64 * MiB, seed=5)
    run("nbdcopy", "--flush", str(src), server.uri(vol.id))
    snap = engine.create_snapshot(vol.id)
    run("nbdcopy", server.uri(snap.id), str(out))
    assert out.read_bytes()[:64 * MiB] == src.read_bytes()
    engine.kms.disable_key(key.id, "us-east-1", "123456789012")
    for rid in (vol.id, snap.id):
        p = run("nbdinfo", "--size", server.uri(rid), check=False)
        assert p.returncode != 0 and "policy" in p.stderr, p.stderr
    engine.kms.enable_key(key.id, "us-east-1", "123456789012")
    assert int(run("nbdinfo", "--size", server.uri(snap.id)).stdout) == 1 << 30
