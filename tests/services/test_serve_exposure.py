"""``ebsengine serve`` exposes NBD only on the Unix socket by default; TCP NBD needs
``--nbd-port`` (with TLS from ``--tls-cert``), and a non-loopback ``--host`` without SigV4
(HTTP) or required TLS (NBD) is refused before anything is opened, unless ``--insecure``."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import nbd_client as nc
from serve_support import start_serve
from tls_support import make_pki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(store: Path, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    return start_serve(store, *args)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.communicate(timeout=60)


def test_tcp_nbd_is_off_by_default(tmp_path: Path) -> None:
    proc, lines = start(tmp_path / "s", "--http-port", "0")
    try:
        text = "".join(lines)
        assert "serving NBD on unix:" in text and "tcp:" not in text, text
        with socket.socket() as s:  # nothing on NBD's usual port
            assert s.connect_ex(("127.0.0.1", 10809)) == errno.ECONNREFUSED
    finally:
        stop(proc)


def test_tcp_nbd_with_tls_from_the_cli(tmp_path: Path, engine: object) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    proc, lines = start(tmp_path / "s", "--http-port", "0", "--nbd-port", str(port),
                        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    try:
        assert f"tcp:127.0.0.1:{port} (TLS require)" in "".join(lines), lines
        with nc.NbdClient(("127.0.0.1", port)) as c:  # plain text is refused
            c.greet()
            assert c.opt(nc.OPT_LIST)[-1].type == nc.ERR_TLS_REQD
    finally:
        stop(proc)


@pytest.mark.parametrize("args, refused", [
    (["--host", "0.0.0.0", "--http-port", "8788"], "the AWS API"),
    (["--host", "0.0.0.0", "--http-port", "0", "--nbd-port", "10809"], "NBD"),
    (["--http-port", "0", "--tls-cert", "x.pem", "--tls-key", "k.pem"], "--nbd-port"),
    (["--http-port", "0", "--nbd-port", "10809", "--tls", "on"], "--tls-cert"),
    (["--http-port", "0", "--nbd-port", "10809", "--tls-cert", "/nonexistent.pem",
      "--tls-key", "/nonexistent.pem"], "no such file"),
])
def test_exposed_or_inconsistent_serving_is_refused(tmp_path: Path, args: list[str],
                                                    refused: str) -> None:
    store = tmp_path / "s"
    r = subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", str(store), "serve",
                        *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert refused in r.stderr, r.stderr
    assert not store.exists()  # nothing was opened or made


def test_insecure_allows_a_non_loopback_host(tmp_path: Path) -> None:
    proc, lines = start(tmp_path / "s", "--host", "0.0.0.0", "--http-port", str(free_port()),
                        "--insecure")
    try:
        assert any("AWS" in line or "http" in line for line in lines), lines
    finally:
        stop(proc)
