"""scripts/ceph_cluster.sh, the throw-away cluster the RADOS tests and CI run on: it starts
writable, lets a test kill and restart one OSD, prints the client environment, and stops only
its own daemons (``needs_ceph``)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from ceph_support import ceph_cluster, start_private_cluster, stop_cluster  # noqa: F401
from ebsengine.errors import BackendUnavailable
from ebsengine.storage import rados_io

pytestmark = pytest.mark.needs_ceph


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_two_osds_one_killed_and_restarted_then_stopped(ceph_cluster):
    c = start_private_cluster(CEPH_OSDS="2")
    stranger = subprocess.Popen(["sleep", "120"])
    try:
        env = c.script("env").stdout
        assert f"export CEPH_CONF={c.conf}" in env and "EBSENGINE_TEST_RADOS=1" in env
        conf = Path(c.conf).read_text()
        assert "mon allow pool delete = true" in conf and "osd recovery sleep = 0" in conf
        conn = rados_io.connect(c.url("two", timeout=20))
        conn.data.put_many([(f"o{i}", b"x" * 1000) for i in range(50)])
        osd1 = int(Path(f"{c.dir}/run/osd.1.pid").read_text())
        c.script("kill-osd", "1")
        assert not running(osd1) or _wait_gone(osd1)
        # pools are size 2, min_size 1: the surviving OSD takes writes once osd.1 is down
        deadline = time.monotonic() + 60
        while True:
            try:
                conn.data.put_many([("during", b"d")])
                break
            except BackendUnavailable:
                assert time.monotonic() < deadline
        c.script("start-osd", "1")
        assert conn.data.read_many([f"o{i}" for i in range(50)]) == [b"x" * 1000] * 50
        conn.close()
        # a pid file naming a process that is not one of this cluster's daemons is left alone
        Path(f"{c.dir}/run/osd.7.pid").write_text(str(stranger.pid))
        pids = [int(p.read_text()) for p in Path(c.dir, "run").glob("*.pid")
                if p.name != "osd.7.pid"]
        stop_cluster(c)
        assert not os.path.exists(c.dir)
        assert all(_wait_gone(p) for p in pids)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
        stop_cluster(c)


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
