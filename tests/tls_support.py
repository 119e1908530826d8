"""X.509 material for the NBD TLS tests, made with ``cryptography`` in a tmp dir.

``make_pki(dir)`` writes a CA and, signed by it, a server certificate (SAN ``localhost`` and
``127.0.0.1``) and a client certificate, under the file names both client families read from a
directory: qemu's ``tls-creds-x509,dir=DIR,endpoint=client`` and libnbd's
``nbds://...?tls-certificates=DIR`` (``ca-cert.pem``, ``client-cert.pem``, ``client-key.pem``).
The server's files sit beside them (``server-cert.pem``, ``server-key.pem``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                       ser.NoEncryption()))
    path.chmod(0o600)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
    else:
        b = b.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, name: str = "test") -> Pki:
    """A CA, a server and a client certificate (all EC P-256) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert(f"{name} CA", ca_key, f"{name} CA", ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = _cert("localhost", srv_key, f"{name} CA", ca_key, server=True)
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli_cert = _cert(f"{name} client", cli_key, f"{name} CA", ca_key)
    pem = ser.Encoding.PEM
    pki = Pki(directory, directory / "ca-cert.pem", directory / "server-cert.pem",
              directory / "server-key.pem", directory / "client-cert.pem",
              directory / "client-key.pem")
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.server_cert.write_bytes(srv_cert.public_bytes(pem))
    _write_key(pki.server_key, srv_key)
    pki.client_cert.write_bytes(cli_cert.public_bytes(pem))
    _write_key(pki.client_key, cli_key)
    return pki


def client_dir(pki: Pki, directory: Path, *, with_client_cert: bool = True) -> Path:
    """A directory holding what a client reads: the CA, and (optionally) its certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca-cert.pem").write_bytes(pki.ca.read_bytes())
    if with_client_cert:
        (directory / "client-cert.pem").write_bytes(pki.client_cert.read_bytes())
        (directory / "client-key.pem").write_bytes(pki.client_key.read_bytes())
        (directory / "client-key.pem").chmod(0o600)
    return directory
