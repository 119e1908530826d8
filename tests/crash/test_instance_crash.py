"""RunInstances and TerminateInstances are one unit of work each: a process killed with
SIGKILL anywhere in them, many times over one store, leaves the engine clean (fsck) and the
cloud records consistent (``cloud.check() == []``): every instance has all its volumes and
its interface, and no volume or interface is left over from half a launch or half a
termination. The child is ``tests/crash/instance_writer.py``."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ebsengine
from ebsengine.cloud import Cloud

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SLOW = os.environ.get("EBSENGINE_SLOW", "0") not in ("", "0")
KILLS = 40 if SLOW else 10


#: the RADOS lock duration of the rados:// store here (a killed child's locks last this long)
RADOS_LOCK_S = 2


@pytest.fixture(params=["lmdb", pytest.param("rados", marks=pytest.mark.needs_ceph)])
def crash_store(request, tmp_path: Path) -> str:
    """An LMDB directory, or a rados:// store on the test cluster (its pools outlive every
    kill and are dropped after the test)."""
    if request.param == "lmdb":
        return str(tmp_path / "store")
    pools = request.getfixturevalue("rados_pools")
    return pools.url(workdir=str(tmp_path / "workdir"), lease=RADOS_LOCK_S)


def _consistent(path: str) -> tuple[int, int]:
    """Check the store; returns (instances launched so far, terminations seen)."""
    with ebsengine.Engine(path) as eng:
        report = eng.fsck()
        assert report.ok, report.problems
        cloud = Cloud(eng)
        assert cloud.check() == []
        live = [i for i in cloud.instance_table.all() if i.state != "shutting-down"
                and i.state != "terminated"]
        # all or none: exactly the volumes and interfaces of the live instances exist
        assert sorted(v.id for v in eng.list_volumes()) == \
            sorted(bd["volume_id"] for i in live for bd in i.block_devices)
        assert all(len(i.block_devices) == 3 for i in live)
        assert sorted(e.id for e in cloud.network_interfaces.all()) == \
            sorted(eid for i in live for eid in i.network_interface_ids)
        every = cloud.instance_table.all()
        return len(every), len(every) - len(live)


def test_kill_during_run_and_terminate_leaves_all_or_none(crash_store: str) -> None:
    path = crash_store
    rng = random.Random(8)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launched = terminated = 0
    for _ in range(KILLS):
        child = subprocess.Popen([sys.executable, str(HERE / "instance_writer.py"), path],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                                 env=env)
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == b"ready\n", (line, child.stderr.read() if child.stderr else b"")
        time.sleep(rng.uniform(0.05, 0.6))
        child.kill()
        child.wait(timeout=60)
        child.stdout.close()
        if child.stderr is not None:
            err = child.stderr.read().decode(errors="replace")
            child.stderr.close()
            assert "Traceback" not in err, err
        launched, terminated = _consistent(path)
    assert launched > 0 and terminated > 0  # the kills really landed among both calls
