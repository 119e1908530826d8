"""Independent computations for key pair tests: fingerprints and key loading by openssl,
ssh-keygen and puttygen (subprocesses), each skipped where the tool is not installed, and
by ``cryptography`` (always)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


def need(tool: str) -> str:
    """The tool's path; skips without it, except in CI (``CI=true`` or
    ``EBSENGINE_REQUIRE_TOOLS=1``), where scripts/setup.sh installs it and a skip would hide
    a missing install step."""
    path = shutil.which(tool)
    if path is None:
        from conftest import REQUIRE_TOOLS

        if REQUIRE_TOOLS:
            pytest.fail(f"{tool} is not installed (CI requires it: scripts/setup.sh --test)")
        pytest.skip(f"{tool} is not installed")
    return path


def run(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(args, input=data, capture_output=True, check=True, timeout=60).stdout


def openssl_created_rsa_fingerprint(pem: str) -> str:
    """AWS's documented command: ``openssl pkcs8 ... -topk8 -nocrypt | openssl sha1 -c``."""
    need("openssl")
    der = run("openssl", "pkcs8", "-inform", "PEM", "-outform", "DER", "-topk8", "-nocrypt",
              data=pem.encode())
    return run("openssl", "sha1", "-c", data=der).decode().split("= ")[-1].strip()


def openssl_imported_rsa_fingerprint(spki_pem: bytes) -> str:
    """``openssl pkey -pubin -outform DER | openssl md5 -c`` (MD5 of the SubjectPublicKeyInfo)."""
    need("openssl")
    der = run("openssl", "pkey", "-pubin", "-outform", "DER", data=spki_pem)
    return run("openssl", "md5", "-c", data=der).decode().split("= ")[-1].strip()


def ssh_keygen_sha256(pub_line: str, tmp: Path) -> str:
    """``ssh-keygen -l -E sha256`` with its unpadded base64 padded again (AWS keeps the ``=``)."""
    need("ssh-keygen")
    f = tmp / "fp.pub"
    f.write_text(pub_line + "\n")
    out = run("ssh-keygen", "-l", "-E", "sha256", "-f", str(f)).decode()
    b64 = out.split()[1].removeprefix("SHA256:")
    return b64 + "=" * (-len(b64) % 4)


def ssh_keygen_public(private_file: Path) -> str:
    """``ssh-keygen -y``: the public key OpenSSH derives from a private key file."""
    need("ssh-keygen")
    private_file.chmod(0o600)
    return " ".join(run("ssh-keygen", "-y", "-f", str(private_file)).decode().split()[:2])


def puttygen_load(ppk: str, tmp: Path) -> str:
    """puttygen loads a .ppk (checking its MAC, which the private key export needs) and
    converts it to an OpenSSH private key; returns the public key ssh-keygen derives from it."""
    need("puttygen")
    src, dst = tmp / "k.ppk", tmp / "k.openssh"
    src.write_text(ppk)
    run("puttygen", str(src), "-O", "private-openssh-new", "-o", str(dst))
    return ssh_keygen_public(dst) if shutil.which("ssh-keygen") else ""


def cryptography_sha256_fingerprint(pub_line: str) -> str:
    blob = base64.b64decode(pub_line.split()[1])
    return base64.b64encode(hashlib.sha256(blob).digest()).decode()


def new_rsa(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def new_ed25519() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def openssh_pub(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, comment: str = "") -> bytes:
    line = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
    return line + (b" " + comment.encode() if comment else b"")


def spki_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)


def spki_der(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)


def rfc4716(pub_line: bytes, tmp: Path) -> bytes:
    """The RFC 4716 block ``ssh-keygen -e`` writes (with its Comment header)."""
    need("ssh-keygen")
    f = tmp / "rfc.pub"
    f.write_bytes(pub_line + b"\n")
    return run("ssh-keygen", "-e", "-f", str(f))
