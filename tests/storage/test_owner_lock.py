"""The owner lock between library processes (``ebsengine.storage.owner``): a process with a
device open owns the store; others are refused read-write (named), read-only still reads;
a process merely using the store keeps another from becoming owner; the lock dies with
its process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ebsengine
from ebsengine.errors import StoreOwned
from ebsengine.storage.owner import store_owner

REPO = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent('''
    import sys, ebsengine
    eng = ebsengine.Engine(sys.argv[1])
    if sys.argv[2] != "-":
        dev = eng.open_volume(sys.argv[2])
        dev.pwrite(b"cached", 0)  # acknowledged, in this process's cache only
    print("ready", flush=True)
    sys.stdin.readline()
    eng.close()
''')


def hold(store: Path, vol: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), vol],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    proc.communicate("\n", timeout=60)  # closes its pipes too
    assert proc.returncode == 0


def test_a_process_with_an_open_device_owns_the_store(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ebsengine.Engine(store) as eng:
        vol = eng.create_volume(1).id
    proc = hold(store, vol)
    try:
        owner = store_owner(str(store))
        assert owner is not None and owner.pid == proc.pid and owner.owner
        with pytest.raises(StoreOwned) as info:
            ebsengine.Engine(store)
        assert f"owned by process {proc.pid} (" in str(info.value)
        assert info.value.exit_code == 5
        with ebsengine.Engine(store, readonly=True) as ro:  # committed state only
            assert [v.id for v in ro.list_volumes()] == [vol]
    finally:
        release(proc)
    assert store_owner(str(store)) is None
    with ebsengine.Engine(store) as eng, eng.open_volume(vol) as dev:  # closed: flushed
        assert dev.pread(6, 0) == b"cached"


def test_a_process_using_the_store_keeps_others_from_owning_it(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ebsengine.Engine(store) as eng:
        vol = eng.create_volume(1).id
    proc = hold(store, "-")  # open, no device: a user, not an owner
    try:
        assert store_owner(str(store)) is None
        with ebsengine.Engine(store) as eng:  # users coexist
            assert eng.get_volume(vol).id == vol
            with pytest.raises(StoreOwned) as info:
                eng.open_volume(vol)
            assert f"in use by process {proc.pid} (" in str(info.value)
            assert eng.list_volumes()[0].id == vol  # the engine still works
    finally:
        release(proc)
    with ebsengine.Engine(store) as eng:
        eng.own()
        with eng.open_volume(vol):
            pass


def test_a_killed_owner_leaves_the_store_free(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with ebsengine.Engine(store) as eng:
        vol = eng.create_volume(1).id
    proc = hold(store, vol)
    proc.kill()
    proc.communicate(timeout=60)
    assert store_owner(str(store)) is None
    with ebsengine.Engine(store) as eng, eng.open_volume(vol) as dev:
        assert dev.pread(6, 0) == bytes(6)  # the killed process's cache never reached it
