"""The store is its owner's: directory 0700, files 0600, the NBD socket 0600 whatever the
umask; a looser store is refused at open (nothing changed) unless the fix option tightens
it; ``memory://`` stores are exempt."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ebsengine import Engine
from ebsengine.cli import main
from ebsengine.errors import InsecureStore
from serve_support import free_port, start_serve


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def snapshot(store: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of the store: its mode and content."""
    out = {".": (mode(store), b"")}
    for p in sorted(store.iterdir()):
        out[p.name] = (mode(p), p.read_bytes())
    return out


def make_store(store: Path) -> str:
    with Engine(store) as eng:
        return eng.create_volume(1, "gp3").id


def test_a_new_store_is_private_whatever_the_umask(tmp_path):
    store = tmp_path / "deep" / "store"
    with umask(0):
        make_store(store)
    assert mode(store) == 0o700
    names = sorted(p.name for p in store.iterdir())
    assert names == ["data.mdb", "lock.mdb", "owner.lock"]
    for name in names:
        assert mode(store / name) == 0o600, name


def test_an_existing_empty_directory_becomes_a_private_store(tmp_path):
    store = tmp_path / "made-by-mkdir"
    store.mkdir()
    store.chmod(0o755)
    make_store(store)
    assert mode(store) == 0o700


@pytest.mark.parametrize("what", [".", "data.mdb", "lock.mdb"])
def test_a_loose_store_is_refused_unchanged_and_the_fix_option_repairs_it(tmp_path, what):
    store = tmp_path / "store"
    vid = make_store(store)
    loose = store / what if what != "." else store
    loose.chmod(0o755 if what == "." else 0o644)
    before = snapshot(store)
    with pytest.raises(InsecureStore, match="has invalid permissions") as exc:
        Engine(store)
    assert str(loose) in str(exc.value) and "--fix-permissions" in str(exc.value)
    assert snapshot(store) == before
    with Engine(store, fix_permissions=True) as eng:
        assert eng.get_volume(vid).id == vid
    assert mode(store) == 0o700
    assert {mode(p) for p in store.iterdir()} == {0o600}
    with Engine(store) as eng:  # repaired for good
        assert eng.get_volume(vid).id == vid


def test_the_cli_refuses_a_loose_store_with_exit_8_and_fixes_it_on_request(tmp_path, capsys):
    store = tmp_path / "store"
    make_store(store)
    store.chmod(0o750)
    before = snapshot(store)
    assert main(["--store", str(store), "list"]) == 8
    err = capsys.readouterr().err
    assert "has invalid permissions" in err and "InsecureStore" in err
    assert snapshot(store) == before
    assert main(["--store", str(store), "--fix-permissions", "list"]) == 0
    assert mode(store) == 0o700


def test_memory_stores_have_no_permissions_to_check():
    with Engine("memory://", fix_permissions=True) as eng:
        eng.create_volume(1, "gp3")


def _serve(store: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    return start_serve(store, "--nbd-port", "0", "--http-port", str(free_port()), *extra,
                       umask=0)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)


def test_serve_under_umask_000_makes_a_private_store_and_socket(tmp_path):
    store = tmp_path / "store"
    proc, lines = _serve(store)
    try:
        sock = store / "nbd.sock"
        assert sock.exists(), "".join(lines)
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        assert mode(sock) == 0o600
        assert mode(store / "control.sock") == 0o600  # the CLI's way in: never a group's
        assert mode(store / "owner.lock") == 0o600
        assert mode(store) == 0o700
        assert mode(store / "data.mdb") == 0o600
        assert mode(store / "lock.mdb") == 0o600
    finally:
        _stop(proc)


def test_serve_socket_group_makes_it_0660_and_that_groups(tmp_path):
    store = tmp_path / "store"
    sock = tmp_path / "shared.sock"
    gid = os.getgid()  # a group the test user is in
    proc, lines = _serve(store, "--nbd-socket", str(sock), "--socket-group", str(gid))
    try:
        assert sock.exists(), "".join(lines)
        assert mode(sock) == 0o660
        assert os.lstat(sock).st_gid == gid
    finally:
        _stop(proc)


def test_serve_refuses_a_loose_store(tmp_path):
    store = tmp_path / "store"
    make_store(store)
    store.chmod(0o755)
    proc = subprocess.run(
        [sys.executable, "-m", "ebsengine.cli", "--store", str(store), "serve",
         "--nbd-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 8, proc.stderr
    assert "has invalid permissions" in proc.stderr
    assert mode(store) == 0o755
    assert not (store / "nbd.sock").exists()
