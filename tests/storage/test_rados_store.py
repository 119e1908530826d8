"""rados:// stores on a real cluster (``storage/rados_kv.py``'s RadosStore, opened from a
store URL): the URL's lock duration reaches both RADOS locks, its default is the issue's
bound (a dead front end keeps the store at most 30 s), and a process killed with SIGKILL
while owning the store keeps others out for no longer than that duration."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ebsengine
from ebsengine.errors import InvalidParameter, StoreOwned
from ebsengine.storage.rados_io import DEFAULT_LOCK, parse_url

REPO = Path(__file__).resolve().parents[2]


def test_the_lock_option_and_its_default() -> None:
    assert parse_url("rados://p").lock == DEFAULT_LOCK
    assert 0 < DEFAULT_LOCK <= 30  # issue 10: taken over within at most 30 s by default
    assert parse_url("rados://p?lock=2.5").lock == 2.5
    for bad in ("0", "-1", "x", "3601", ""):
        with pytest.raises(InvalidParameter):
            parse_url(f"rados://p?lock={bad}")


@pytest.mark.needs_ceph
def test_the_urls_lock_duration_reaches_both_locks(rados_pools, tmp_path) -> None:
    url = rados_pools.url(workdir=str(tmp_path / "w"))
    with ebsengine.Engine(url) as eng:
        b = eng._store.backend
        assert (b.lock_seconds, b.owner_seconds) == (DEFAULT_LOCK, DEFAULT_LOCK)
    with ebsengine.Engine(rados_pools.url(workdir=str(tmp_path / "w"), lock=3)) as eng:
        b = eng._store.backend
        assert (b.lock_seconds, b.owner_seconds) == (3, 3)


OWNER = """
import sys, time, ebsengine
eng = ebsengine.Engine(sys.argv[1])
eng.own()
print("owned", flush=True)
time.sleep(600)
"""


@pytest.mark.needs_ceph
def test_a_killed_owner_keeps_the_store_for_at_most_its_lock_duration(rados_pools,
                                                                       tmp_path) -> None:
    url = rados_pools.url(workdir=str(tmp_path / "w"), lock=3)
    child = subprocess.Popen([sys.executable, "-c", OWNER, url], stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"owned\n"
        with pytest.raises(StoreOwned):
            ebsengine.Engine(url)  # the live owner's lock file in the workdir refuses
        child.kill()
        child.wait(30)
        killed = time.monotonic()
        with ebsengine.Engine(url) as eng:
            with pytest.raises(StoreOwned):
                eng.own()  # dead, but its RADOS lock holds until it expires
            eng.own(wait=10)
            took = time.monotonic() - killed
        assert took <= 3 + 2, f"took over {took:.1f} s after the kill (lock=3)"
    finally:
        child.kill()
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()


def rados_cli(conf: str, pool: str, *args: str) -> str:
    p = subprocess.run(["rados", "-c", conf, "-p", pool, *args], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


@pytest.mark.needs_ceph
def test_an_owner_that_lost_its_lock_changes_nothing_more(rados_pools, tmp_path) -> None:
    """Its RADOS owner lock broken (an operator's ``rados lock break``, or expired during a
    stall) and taken by another front end: the first one's next change is refused, instead
    of going on as if it still owned the store."""
    import json
    url = rados_pools.url(workdir=str(tmp_path / "a"), lock=3)
    a = ebsengine.Engine(url)
    try:
        vol = a.create_volume(size_gib=1)
        a.own()
        meta = f"{rados_pools.prefix}.meta"
        info = json.loads(rados_cli(rados_pools.cluster.conf, meta, "lock", "info",
                                    "store.owner", "owner", "--format", "json"))
        (locker,) = info["lockers"]
        rados_cli(rados_pools.cluster.conf, meta, "lock", "break", "store.owner", "owner",
                  locker["name"], "--lock-cookie", locker["cookie"])
        with ebsengine.Engine(rados_pools.url(workdir=str(tmp_path / "b"), lock=3)) as b:
            b.own(wait=5)
            time.sleep(1.5)  # a's renewer (every lock/3 s) meets b's lock
            with pytest.raises(StoreOwned, match="lost"):
                a.create_volume(size_gib=1)
            with pytest.raises(StoreOwned, match="lost"):
                a.delete_volume(vol.id)
            with pytest.raises(StoreOwned, match="lost"):
                a.own()
            assert [v.id for v in b.list_volumes()] == [vol.id]
    finally:
        a.close()


ATTACH = """
import sys, ebsengine
with ebsengine.Engine(sys.argv[1]) as eng:
    print(len(eng.list_volumes()))
"""


@pytest.mark.needs_ceph
def test_a_refused_own_leaves_this_hosts_lock_as_it_was(rados_pools, tmp_path) -> None:
    """own() refused by another front end's RADOS owner lock: this process does not stay
    the owner on this host either (other local processes can still open the store)."""
    url = rados_pools.url(workdir=str(tmp_path / "here"), lock=3)
    with ebsengine.Engine(rados_pools.url(workdir=str(tmp_path / "there"), lock=3)) as there:
        there.own()
        with ebsengine.Engine(url) as here:
            with pytest.raises(StoreOwned, match="owned by process"):
                here.own()
            p = subprocess.run([sys.executable, "-c", ATTACH, url], capture_output=True,
                               text=True, timeout=120, env={**os.environ,
                                                            "PYTHONPATH": str(REPO)})
            assert p.returncode == 0 and p.stdout == "0\n", p.stderr
