"""The ``ebsengine`` command line on a ``rados://`` store (issue 10): create, list, snapshot,
show and fsck by the store URL, with the CLI opening the store itself, and beside a running
``ebsengine serve`` on it, where the mutating commands go to the server over the control
socket in the store's local work directory (a snapshot then holds writes only the server's
cache has). Another front end (another work directory: another host, as far as the local
lock file can tell) opens the same store beside it; volume leases keep them apart
(tests/engine/test_frontends.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import ebsengine
import nbd_client as nc
from ebsengine.errors import StoreOwned
from serve_support import wait_ready

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
GIB = 1 << 30
pytestmark = pytest.mark.needs_ceph


def cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", store, *args],
                          capture_output=True, text=True, timeout=180, env=ENV)


def ok(store: str, *args: str) -> str:
    p = cli(store, *args)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout.strip()


def js(store: str, *args: str) -> dict:
    return json.loads(ok(store, "--json", *args))


def test_cli_on_a_rados_store_directly_and_through_its_server(rados_pools,
                                                              tmp_path: Path) -> None:
    workdir = tmp_path / "workdir"
    url = rados_pools.url(workdir=str(workdir))
    # --- no server: the CLI opens the store itself
    first = js(url, "create", "--size", "1", "--tag", "k=v")["id"]
    s1 = js(url, "snapshot", first, "--description", "empty")["id"]
    listed = js(url, "list")
    assert [v["id"] for v in listed["volumes"]] == [first]
    assert [s["id"] for s in listed["snapshots"]] == [s1]
    assert js(url, "show", s1)["description"] == "empty"
    assert js(url, "fsck")["ok"] is True

    # --- beside a server: the changes go through it
    proc = subprocess.Popen([sys.executable, "-m", "ebsengine.cli", "--store", url, "serve",
                             "--http-port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        lines = wait_ready(proc)
        assert proc.poll() is None, "".join(lines)
        assert (workdir / "control.sock").exists() and (workdir / "nbd.sock").exists()
        vol = js(url, "create", "--size", "1")["id"]
        data = os.urandom(300_000)
        with nc.NbdClient(str(workdir / "nbd.sock")) as c:
            c.go(vol)
            c.pwrite(4096, data)  # acknowledged, not flushed: only the server's cache has it
            snap = js(url, "snapshot", vol, "--description", "live")["id"]
            c.disc()
        listed = js(url, "list")
        assert sorted(v["id"] for v in listed["volumes"]) == sorted([first, vol])
        assert sorted(s["id"] for s in listed["snapshots"]) == sorted([s1, snap])
        assert js(url, "fsck")["ok"] is True  # reads beside the server
        # a library Engine on this host would change the store behind the server: refused
        with pytest.raises(StoreOwned):
            ebsengine.Engine(url)
        # another front end (another work directory) uses the store beside the server
        with ebsengine.Engine(rados_pools.url(workdir=str(tmp_path / "elsewhere"))) as other:
            assert vol in {v.id for v in other.list_volumes()}
            assert other.fsck().ok
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # --- stopped: the CLI works directly again, and the snapshot holds the cached write
    assert js(url, "fsck")["ok"] is True
    out = tmp_path / "snap.img"
    ok(url, "export", snap, str(out))
    img = out.read_bytes()
    assert len(img) == GIB and img[4096:4096 + len(data)] == data
    assert img.count(0) == GIB - len(data) + data.count(0)
    assert ok(url, "delete", first) == f"deleted {first}"
    assert [v["id"] for v in js(url, "list")["volumes"]] == [vol]
