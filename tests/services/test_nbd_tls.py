"""NBD over TCP with TLS (NBD_OPT_STARTTLS, X.509), driven by real clients.

nbdinfo, qemu-img and nbdcopy connect over TLS with certificates made in the test
(``tests/tls_support.py``); a client trusting another CA, a client without a certificate when
the server verifies clients, and plain-text clients against ``require`` are refused; ``on``
serves both. The raw client of ``tests/nbd_client.py`` checks the option rules of proto.md's
FORCEDTLS mode and pipelines large requests over TLS (partial TLS writes).
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbd_client as nc
from ebsengine.nbd.server import NbdServer
from ebsengine.nbd.tls import TlsConfig, TlsConfigError
from keys_support import need
from nbd_client import NbdClient
from tls_support import Pki, client_dir, make_pki

MiB = 1 << 20
pytestmark = pytest.mark.needs_tools


def run(*cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["timeout", "-k", "5", str(timeout), *cmd], capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def tls_server(engine: Any, pki: Pki, *, mode: str = "require",
               verify: bool = True) -> NbdServer:
    cfg = TlsConfig(str(pki.server_cert), str(pki.server_key),
                    str(pki.ca) if verify else None, verify, mode)
    return NbdServer(engine, unix_path=None, tcp=("127.0.0.1", 0), tls=cfg)


@pytest.fixture
def server(engine: Any, pki: Pki) -> Iterator[NbdServer]:
    with tls_server(engine, pki) as srv:
        yield srv


def nbds(srv: NbdServer, export: str, certs: Path) -> str:
    assert srv.tcp_address is not None
    host, port = srv.tcp_address
    return f"nbds://{host}:{port}/{export}?tls-certificates={certs}"


def qemu_tls(srv: NbdServer, export: str, certs: Path) -> list[str]:
    """qemu-img arguments naming ``export`` over TLS with the client files in ``certs``."""
    assert srv.tcp_address is not None
    host, port = srv.tcp_address
    return ["--object", f"tls-creds-x509,id=tls0,dir={certs},endpoint=client",
            "--image-opts", f"driver=nbd,host={host},port={port},export={export},tls-creds=tls0"]


def client_ctx(pki: Pki, *, cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def head_sha256(path: Path, n: int = 64 * MiB) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(n)).hexdigest()


# --- real clients ------------------------------------------------------------------------

def test_nbdinfo_over_tls(engine: Any, server: NbdServer, pki: Pki, tmp_path: Path) -> None:
    need("nbdinfo")
    vol = engine.create_volume(size_gib=1)
    certs = client_dir(pki, tmp_path / "client")
    info = json.loads(run("nbdinfo", "--json", nbds(server, vol.id, certs)).stdout)
    export = info["exports"][0]
    assert export["export-size"] == 1 << 30
    assert info["TLS"] is True
    listed = run("nbdinfo", "--list", "--json", nbds(server, "", certs)).stdout
    assert vol.id in {e["export-name"] for e in json.loads(listed)["exports"]}


def test_qemu_img_and_nbdcopy_copy_an_image_in_and_out_over_tls(
    engine: Any, server: NbdServer, pki: Pki, tmp_path: Path
) -> None:
    need("qemu-img")
    need("nbdcopy")
    vol = engine.create_volume(size_gib=1)
    certs = client_dir(pki, tmp_path / "client")
    image = tmp_path / "in.raw"
    with open(image, "wb") as f:  # data, holes, unaligned edges; big enough for many records
        f.truncate(64 * MiB)
        for off, n in ((0, 5 * MiB + 1234), (20 * MiB + 511, 9 * MiB), (64 * MiB - 4097, 4097)):
            f.seek(off)
            f.write(os.urandom(n))
    info = run("qemu-img", "info", "--output=json", *qemu_tls(server, vol.id, certs)).stdout
    assert json.loads(info)["virtual-size"] == 1 << 30
    run("qemu-img", "convert", "-n", "-f", "raw", str(image), "--target-image-opts",
        "--object", f"tls-creds-x509,id=tls0,dir={certs},endpoint=client",
        f"driver=nbd,host=127.0.0.1,port={server.tcp_address[1]},export={vol.id},tls-creds=tls0")
    # what went in over TLS is in the volume: read it back through the engine itself
    dev = engine.open_volume(vol.id)
    try:
        assert hashlib.sha256(dev.pread(64 * MiB, 0)).hexdigest() == sha256(image)
    finally:
        dev.close()
    out = tmp_path / "out.raw"
    run("nbdcopy", "--connections=4", "--requests=16", nbds(server, vol.id, certs), str(out))
    assert out.stat().st_size == 1 << 30
    assert head_sha256(out) == sha256(image)
    back = tmp_path / "back.raw"
    run("qemu-img", "convert", "-O", "raw", "--image-opts",
        "--object", f"tls-creds-x509,id=tls0,dir={certs},endpoint=client",
        f"driver=nbd,host=127.0.0.1,port={server.tcp_address[1]},export={vol.id},tls-creds=tls0",
        str(back))
    assert back.stat().st_size == 1 << 30
    assert head_sha256(back) == head_sha256(out) == sha256(image)
    assert engine.fsck().ok


def test_a_client_trusting_another_ca_is_refused(
    engine: Any, server: NbdServer, pki: Pki, tmp_path: Path
) -> None:
    need("nbdinfo")
    need("qemu-img")
    vol = engine.create_volume(size_gib=1)
    other = make_pki(tmp_path / "other", name="other")
    # the other CA, with a client certificate it signed: neither side trusts the other
    wrong = client_dir(other, tmp_path / "wrong")
    r = run("nbdinfo", nbds(server, vol.id, wrong), check=False)
    assert r.returncode != 0
    assert "certificate" in r.stderr.lower() or "tls" in r.stderr.lower(), r.stderr
    r = run("qemu-img", "info", *qemu_tls(server, vol.id, wrong), check=False)
    assert r.returncode != 0
    # our CA but the other CA's client certificate: the server refuses the client
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "ca-cert.pem").write_bytes(pki.ca.read_bytes())
    (mixed / "client-cert.pem").write_bytes(other.client_cert.read_bytes())
    (mixed / "client-key.pem").write_bytes(other.client_key.read_bytes())
    assert run("nbdinfo", nbds(server, vol.id, mixed), check=False).returncode != 0
    with pytest.raises((ssl.SSLError, nc.Closed, ConnectionError)):
        with NbdClient(server.tcp_address, tls=client_ctx(other)) as c:
            c.go(vol.id)
    # the server is unharmed: the right client still gets in
    good = client_dir(pki, tmp_path / "good")
    assert vol.id in run("nbdinfo", nbds(server, vol.id, good)).stdout


def test_client_certificates_are_verified_when_asked(
    engine: Any, pki: Pki, tmp_path: Path
) -> None:
    need("nbdinfo")
    vol = engine.create_volume(size_gib=1)
    no_cert = client_dir(pki, tmp_path / "anon", with_client_cert=False)
    with tls_server(engine, pki, verify=True) as srv:
        assert run("nbdinfo", nbds(srv, vol.id, no_cert), check=False).returncode != 0
        with pytest.raises((ssl.SSLError, nc.Closed, ConnectionError)):
            with NbdClient(srv.tcp_address, tls=client_ctx(pki, cert=False)) as c:
                c.go(vol.id)
        with NbdClient(srv.tcp_address, tls=client_ctx(pki)) as c:
            c.go(vol.id)
            assert c.pread(0, 4096) == bytes(4096)
            c.disc()
    with tls_server(engine, pki, verify=False) as srv:  # server certificate only
        assert vol.id in run("nbdinfo", nbds(srv, vol.id, no_cert)).stdout


def test_plain_clients_are_refused_when_tls_is_required(
    engine: Any, server: NbdServer, pki: Pki
) -> None:
    need("nbdinfo")
    need("qemu-img")
    vol = engine.create_volume(size_gib=1)
    host, port = server.tcp_address
    r = run("nbdinfo", f"nbd://{host}:{port}/{vol.id}", check=False)
    assert r.returncode != 0  # libnbd reports NBD_REP_ERR_TLS_REQD as ENOTSUP
    assert "not supported" in r.stderr, r.stderr
    r = run("qemu-img", "info", f"nbd://{host}:{port}/{vol.id}", check=False)
    assert r.returncode != 0
    assert "tls" in r.stderr.lower(), r.stderr
    with NbdClient(server.tcp_address) as c:  # FORCEDTLS, option by option
        c.greet()
        for option, data in ((nc.OPT_LIST, b""), (nc.OPT_SR, b""),
                             (nc.OPT_GO, c.info_data(vol.id)),
                             (nc.OPT_INFO, c.info_data(vol.id))):
            reply = c.opt(option, data)[-1]
            assert reply.type == nc.ERR_TLS_REQD, (option, reply)
            assert b"TLS" in reply.data
        assert c.opt(nc.OPT_ABORT)[-1].type == nc.REP_ACK
    with NbdClient(server.tcp_address) as c:  # EXPORT_NAME cannot be refused: closed
        c.greet()
        c.send_opt(nc.OPT_EXPORT_NAME, vol.id.encode())
        assert c.is_closed()
    with NbdClient(server.tcp_address) as c:  # STARTTLS with data, then twice
        c.greet()
        assert c.opt(nc.OPT_STARTTLS, b"x")[-1].type == nc.ERR_INVALID
        c.starttls(client_ctx(pki))
        assert c.opt(nc.OPT_STARTTLS)[-1].type == nc.ERR_INVALID
        assert c.opt(nc.OPT_LIST)[-1].type == nc.REP_ACK  # no TLS_REQD once TLS is up
        replies = c.opt(nc.OPT_GO, c.info_data(vol.id))
        assert replies[-1].type == nc.REP_ACK
        c.pwrite(0, b"x" * 4096)
        assert c.pread(0, 4096) == b"x" * 4096
        c.disc()


def test_tls_on_serves_plain_and_tls_clients(engine: Any, pki: Pki, tmp_path: Path) -> None:
    need("nbdinfo")
    vol = engine.create_volume(size_gib=1)
    with tls_server(engine, pki, mode="on", verify=False) as srv:
        host, port = srv.tcp_address
        assert vol.id in run("nbdinfo", f"nbd://{host}:{port}/{vol.id}").stdout
        certs = client_dir(pki, tmp_path / "c", with_client_cert=False)
        info = json.loads(run("nbdinfo", "--json", nbds(srv, vol.id, certs)).stdout)
        assert info["TLS"] is True


def test_starttls_is_refused_where_tls_is_off(engine: Any, pki: Pki, tmp_path: Path) -> None:
    vol = engine.create_volume(size_gib=1)
    # the Unix socket of a TLS server stays plain: STARTTLS there is a policy error
    cfg = TlsConfig(str(pki.server_cert), str(pki.server_key))
    with NbdServer(engine, unix_path=tmp_path / "s.sock", tcp=("127.0.0.1", 0), tls=cfg):
        with NbdClient(str(tmp_path / "s.sock")) as c:
            c.greet()
            assert c.opt(nc.OPT_STARTTLS)[-1].type == nc.ERR_POLICY
            assert c.opt(nc.OPT_GO, c.info_data(vol.id))[-1].type == nc.REP_ACK


def test_bad_tls_files_are_refused_before_listening(engine: Any, pki: Pki,
                                                    tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other", name="other")
    for cert, key in ((tmp_path / "missing.pem", pki.server_key),
                      (pki.server_cert, other.server_key)):  # key of another certificate
        srv = NbdServer(engine, unix_path=None, tcp=("127.0.0.1", 0),
                        tls=TlsConfig(str(cert), str(key)))
        with pytest.raises(TlsConfigError):
            srv.start()
        assert srv.tcp_address is None
    with pytest.raises(TlsConfigError):
        TlsConfig(str(pki.server_cert), str(pki.server_key), verify_client=True)


def test_pipelined_large_requests_over_tls(engine: Any, server: NbdServer, pki: Pki) -> None:
    """Many 4 MiB WRITEs and READs in flight (the workers' replies are partial TLS writes
    handed to the connection's sender), structured and simple replies, in order of cookies."""
    vol = engine.create_volume(size_gib=1)
    blobs = {k: os.urandom(4 * MiB) for k in range(12)}
    for structured in (True, False):
        with NbdClient(server.tcp_address, timeout=60, tls=client_ctx(pki)) as c:
            c.go(vol.id, structured=structured, meta=structured)
            cookies = {c.request(nc.CMD_WRITE, k * 4 * MiB, 4 * MiB, payload=blob): k
                       for k, blob in blobs.items()}
            for _ in blobs:
                r = c.reply()
                assert r.error == 0 and r.cookie in cookies
            want = {c.request(nc.CMD_READ, k * 4 * MiB, 4 * MiB): blob
                    for k, blob in blobs.items()}
            for _ in want:
                r = c.reply(read_length=4 * MiB)
                assert r.error == 0 and r.data == want[r.cookie]
            assert c.cmd(nc.CMD_FLUSH).error == 0
            c.disc()
    # and read back with the engine, bytes exact
    dev = engine.open_volume(vol.id)
    try:
        for k, blob in blobs.items():
            assert dev.pread(4 * MiB, k * 4 * MiB) == blob
    finally:
        dev.close()
