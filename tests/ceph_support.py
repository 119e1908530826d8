"""A Ceph cluster for the tests of the RADOS backend (mark them ``needs_ceph``).

``ceph_cluster`` (session): the cluster named by the environment if ``EBSENGINE_TEST_RADOS=1``
and ``CEPH_CONF`` are set (``.ci/run`` starts one and exports them: ``scripts/ceph_cluster.sh
env``); otherwise, where Ceph is installed, a private cluster started for the session with
``scripts/ceph_cluster.sh`` in a short directory under /tmp and stopped after; otherwise the
test skips, saying why (in CI a skipped ``needs_ceph`` test fails: tests/conftest.py).

``rados_pools`` (function): a fresh, unique pool prefix for one test, and its pools removed
after it (whatever the test created under that prefix).

Use them from a test module with ``from ceph_support import ceph_cluster, rados_pools``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ceph_cluster.sh"
_counter = itertools.count()


@dataclass
class Cluster:
    conf: str
    dir: str | None  # the cluster's directory when this session started it (kill-osd etc.)
    port: int | None = None

    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run scripts/ceph_cluster.sh on this cluster (only one this session started)."""
        if self.dir is None:
            pytest.skip("the cluster was started outside the tests; they do not control it")
        env = dict(os.environ, CEPH_DIR=self.dir)
        if self.port is not None:
            env["CEPH_MON_PORT"] = str(self.port)
        return subprocess.run([str(SCRIPT), *args], env=env, check=check, text=True,
                              capture_output=True, timeout=120)

    def url(self, prefix: str, **opts: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"conf": self.conf, **opts}.items())
        return f"rados://{prefix}?{query}"


def rados_missing() -> str | None:
    """Why the librados binding cannot be imported (None: it can)."""
    try:
        import rados  # noqa: F401
    except ImportError as exc:
        return f"the librados Python binding does not load ({exc}): bash scripts/setup.sh --test"
    return None


def free_port_range(width: int = 201) -> int:
    """A base port whose whole range [base, base+width) was free a moment ago."""
    for _ in range(50):
        base = random.randrange(20000, 60000 - width)
        socks = []
        try:
            for p in (base, base + 1, base + width // 2, base + width - 1):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range for a test cluster")


def start_private_cluster(**env: str) -> Cluster:
    """A new cluster in its own short /tmp directory (stop it with :func:`stop_cluster`)."""
    d = tempfile.mkdtemp(prefix="ceph-", dir="/tmp")
    port = free_port_range()
    proc = subprocess.run([str(SCRIPT), "start"], text=True, capture_output=True, timeout=180,
                          env=dict(os.environ, CEPH_DIR=d, CEPH_MON_PORT=str(port),
                                   CEPH_MGR="0", **env))
    if proc.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        raise RuntimeError(f"scripts/ceph_cluster.sh start failed:\n{proc.stderr}")
    return Cluster(conf=f"{d}/ceph.conf", dir=d, port=port)


def stop_cluster(c: Cluster) -> None:
    if c.dir is not None:
        subprocess.run([str(SCRIPT), "stop"], text=True, capture_output=True, timeout=120,
                       env=dict(os.environ, CEPH_DIR=c.dir, CEPH_STOP_SIGNAL="KILL"))


@pytest.fixture(scope="session")
def ceph_cluster() -> Iterator[Cluster]:
    why = rados_missing()
    if why:
        pytest.skip(why)
    conf = os.environ.get("CEPH_CONF")
    if os.environ.get("EBSENGINE_TEST_RADOS") == "1" and conf:
        if not os.path.exists(conf):
            pytest.skip(f"EBSENGINE_TEST_RADOS=1 but CEPH_CONF={conf} does not exist")
        yield Cluster(conf=conf, dir=os.environ.get("EBSENGINE_CEPH_DIR"))
        return
    if shutil.which("ceph-mon") is None or shutil.which("ceph-osd") is None:
        pytest.skip("no Ceph cluster: set EBSENGINE_TEST_RADOS=1 and CEPH_CONF "
                    "(scripts/ceph_cluster.sh start; eval \"$(scripts/ceph_cluster.sh env)\"), "
                    "or install ceph-mon and ceph-osd (bash scripts/setup.sh --test)")
    c = start_private_cluster()
    try:
        yield c
    finally:
        stop_cluster(c)


@dataclass
class Pools:
    """A test's own pool prefix on the session's cluster."""

    cluster: Cluster
    prefix: str

    def url(self, **opts: object) -> str:
        return self.cluster.url(self.prefix, **opts)


def drop_pools(conf: str, prefix: str) -> None:
    """Delete every pool named ``prefix.*`` (or exactly ``prefix``)."""
    import rados
    r = rados.Rados(conffile=conf, rados_id="admin")
    for opt in ("rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout"):
        r.conf_set(opt, "30")
    r.connect()
    try:
        for name in r.list_pools():
            if name == prefix or name.startswith(prefix + "."):
                r.delete_pool(name)
    finally:
        r.shutdown()


@pytest.fixture
def rados_pools(ceph_cluster: Cluster) -> Iterator[Pools]:
    prefix = f"t{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
    try:
        yield Pools(ceph_cluster, prefix)
    finally:
        drop_pools(ceph_cluster.conf, prefix)


def private_cluster(**env: str) -> Iterator[Cluster]:
    """A fixture body: a cluster of the test's own (``start_private_cluster(**env)``), its
    daemons resumed (should the test have frozen them) and stopped after."""
    why = rados_missing()
    if why:
        pytest.skip(why)
    if shutil.which("ceph-mon") is None or shutil.which("ceph-osd") is None:
        pytest.skip("ceph-mon and ceph-osd are not installed (bash scripts/setup.sh --test)")
    c = start_private_cluster(**env)
    try:
        yield c
    finally:
        resume(c)
        stop_cluster(c)


def daemon_pids(c: Cluster) -> list[int]:
    """The pids of the daemons of a cluster this session started (from its pid files)."""
    if c.dir is None:
        pytest.skip("the cluster was started outside the tests; they do not control it")
    out = []
    for f in sorted(Path(c.dir, "run").glob("*.pid")):
        try:
            pid = int(f.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, OSError):
            continue
        out.append(pid)
    return out


def freeze(c: Cluster) -> list[int]:
    """SIGSTOP every daemon of the cluster: it answers nothing, as a cluster that is down,
    but keeps its data (memstore would lose it on a restart); :func:`resume` thaws it."""
    pids = daemon_pids(c)
    assert pids, f"no running daemons in {c.dir}"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def resume(c: Cluster, *, repeer: bool = False) -> None:
    """SIGCONT every daemon of a frozen cluster. ``repeer``: then mark its OSDs down once, so
    each starts a new interval and re-peers. A PG whose primary was frozen past its read
    lease comes back "laggy" and, when no replica acks a lease renewal (always so with one
    OSD), parks every op on it in ``waiting for readable`` until the next interval change:
    a Ceph limitation (ceph/ceph-container#1682, ceph/ceph#71663), not the engine's, which a
    restarted cluster does not have. The OSDs rejoin by themselves ("wrongly marked me
    down") within a few seconds."""
    if c.dir is None or not os.path.isdir(c.dir):
        return
    for pid in daemon_pids(c):
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass
    if repeer:
        osds = sorted(f.name[len("osd."):-len(".pid")]
                      for f in Path(c.dir, "run").glob("osd.*.pid"))
        ceph = ["ceph", "-c", c.conf, "--connect-timeout", "30"]
        subprocess.run([*ceph, "osd", "down", *osds], capture_output=True, text=True,
                       timeout=60, check=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # until every OSD has rejoined
            out = subprocess.run([*ceph, "osd", "dump", "-f", "json"], capture_output=True,
                                 text=True, timeout=60)
            if out.returncode == 0 and \
                    sum(o["up"] for o in json.loads(out.stdout)["osds"]) == len(osds):
                return
            time.sleep(0.25)
        raise RuntimeError(f"the OSDs of {c.dir} did not come back up after a re-peer")
