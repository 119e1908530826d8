"""Two ``ebsengine serve`` processes in front of one rados:// store (issue 10), standing in
for two hosts: each serves its own volumes over NBD at the same time, both serve every
snapshot, and when one is killed with SIGKILL the other takes its volume over (after the
lease) with every write the dead one acknowledged as flushed. The engine-level rules are in
tests/engine/test_frontends.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nbd_client as nc
from serve_support import free_port, start_serve

pytestmark = pytest.mark.needs_ceph
CS = 64 * 1024
LEASE = 3


def cli(url: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", url, *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def go_retrying(sock: Path, name: str, within: float) -> nc.NbdClient:
    """Connect and GO to export ``name``, retrying while the server refuses it (the volume
    is leased by the other front end)."""
    deadline = time.monotonic() + within
    while True:
        c = nc.NbdClient(str(sock))
        try:
            c.go(name)
            return c
        except AssertionError:
            c.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_two_front_ends_serve_their_volumes_and_one_takes_over_after_sigkill(rados_pools,
                                                                             tmp_path):
    url_a = rados_pools.url(workdir=str(tmp_path / "a"), lease=LEASE)
    url_b = rados_pools.url(workdir=str(tmp_path / "b"), lease=LEASE)
    a, _ = start_serve(url_a, "--http-port", str(free_port()))
    b, _ = start_serve(url_b, "--http-port", str(free_port()))
    try:
        v = cli(url_a, "create", "--size", "1")  # through a's control socket
        w = cli(url_b, "create", "--size", "1")
        sock_a, sock_b = tmp_path / "a" / "nbd.sock", tmp_path / "b" / "nbd.sock"
        ca = go_retrying(sock_a, v, 10)
        cb = go_retrying(sock_b, w, 10)
        with nc.NbdClient(str(sock_b)) as refused:  # v is a's while a serves it
            refused.greet()
            replies = refused.opt(nc.OPT_GO, refused.info_data(v))
            assert replies[-1].type != nc.REP_ACK
        acked: dict[int, bytes] = {}
        for i in range(32):  # both serve at once
            block = os.urandom(CS)
            ca.pwrite(i * CS, block)
            cb.pwrite(i * CS, bytes([i]) * CS)
            if i % 4 == 3:
                assert ca.cmd(nc.CMD_FLUSH).error == 0
                assert cb.cmd(nc.CMD_FLUSH).error == 0
            acked[i] = block  # (all 32 are flushed: 32 % 4 == 0)
        cb.disc()
        cb.close()
        snap_w = cli(url_b, "snapshot", w).split()[0]
        with go_retrying(sock_a, snap_w, 10) as s:  # a serves b's snapshot
            assert s.pread(31 * CS, CS) == bytes([31]) * CS
        ca.pwrite(40 * CS, b"never flushed" * 100)  # acknowledged, not flushed: may be lost
        a.send_signal(signal.SIGKILL)
        a.wait()
        ca.close()
        t0 = time.monotonic()
        with go_retrying(sock_b, v, LEASE + 20) as c:  # b takes v over once the lease ends
            took = time.monotonic() - t0
            for i, block in acked.items():
                assert c.pread(i * CS, CS) == block, i
            c.pwrite(0, b"b" * CS)
            assert c.cmd(nc.CMD_FLUSH).error == 0
        assert took <= LEASE + 10
        fsck = subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", url_b, "fsck"],
                              capture_output=True, text=True, timeout=300)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
