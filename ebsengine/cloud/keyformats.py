"""SSH key material as EC2 hands it out and takes it in: generation, the private key file
formats of CreateKeyPair, the public key formats ImportKeyPair accepts, and AWS's
fingerprints. The cryptography itself (RSA/Ed25519 generation, PEM/DER/OpenSSH
serialisation) is the ``cryptography`` library's; the PuTTY file format is written here.

================  ==============================================================================
created RSA       ``-----BEGIN RSA PRIVATE KEY-----`` (unencrypted PKCS#1 PEM), 2048 bits;
                  fingerprint: SHA-1 of the DER PKCS#8 private key, colon hex
created Ed25519   ``-----BEGIN OPENSSH PRIVATE KEY-----`` (OpenSSH's own private key format);
                  fingerprint: base64 SHA-256 of the public key blob, ``=`` padding kept
``ppk``           PuTTY private key file (format version :data:`PPK_VERSION`, unencrypted)
imported RSA      1024, 2048 or 4096 bits; fingerprint: MD5 of the DER SubjectPublicKeyInfo,
                  colon hex (neither ``ssh-keygen -l -E md5`` nor moto computes this)
imported Ed25519  the same fingerprint as a created one
================  ==============================================================================

Accepted public key encodings (ImportKeyPair): an OpenSSH line (``ssh-rsa AAAA... comment``),
an RFC 4716 ``---- BEGIN SSH2 PUBLIC KEY ----`` block, a PEM ``PUBLIC KEY`` (or PKCS#1
``RSA PUBLIC KEY``), and DER SubjectPublicKeyInfo, raw or base64 encoded (the "Base64
encoded DER format" of AWS's documentation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ebsengine import errors

KEY_TYPES = ("rsa", "ed25519")
KEY_FORMATS = ("pem", "ppk")
#: RSA key sizes ImportKeyPair takes (AWS's documentation: 1024, 2048 and 4096)
IMPORT_RSA_BITS = (1024, 2048, 4096)
#: the RSA size CreateKeyPair makes
CREATE_RSA_BITS = 2048
#: PuTTY key file format version written (2: read by every PuTTY since 0.52; 3 is 0.75+)
PPK_VERSION = 2

PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class NewKey:
    """A key CreateKeyPair made: the material (returned once, never stored) and what is kept."""

    key_type: str
    material: str
    fingerprint: str
    public_key: str  # OpenSSH one-line form, without comment


# --- SSH wire encoding (RFC 4251 section 5) -------------------------------------------------


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def ssh_mpint(n: int) -> bytes:
    if n == 0:
        return ssh_string(b"")
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big")  # a leading zero byte keeps it positive
    return ssh_string(raw)


def public_blob(key: PublicKey) -> bytes:
    """The SSH public key blob (what an OpenSSH line base64-encodes)."""
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        return ssh_string(b"ssh-rsa") + ssh_mpint(nums.e) + ssh_mpint(nums.n)
    raw = key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return ssh_string(b"ssh-ed25519") + ssh_string(raw)


def openssh_line(key: PublicKey) -> str:
    """``ssh-rsa AAAA...`` / ``ssh-ed25519 AAAA...`` (no comment)."""
    algo = "ssh-rsa" if isinstance(key, rsa.RSAPublicKey) else "ssh-ed25519"
    return f"{algo} {base64.b64encode(public_blob(key)).decode()}"


def key_type_of(key: PublicKey | PrivateKey) -> str:
    return "rsa" if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)) else "ed25519"


# --- fingerprints ---------------------------------------------------------------------------


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


def sha256_fingerprint(key: PublicKey) -> str:
    """Base64 SHA-256 of the public key blob, as OpenSSH prints it but with the ``=`` kept."""
    return base64.b64encode(hashlib.sha256(public_blob(key)).digest()).decode()


def created_fingerprint(key: PrivateKey) -> str:
    """The fingerprint CreateKeyPair reports."""
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        return _colon_hex(hashlib.sha1(der).digest())  # AWS's definition
    return sha256_fingerprint(key.public_key())


def imported_fingerprint(key: PublicKey) -> str:
    """The fingerprint ImportKeyPair reports."""
    if isinstance(key, rsa.RSAPublicKey):
        der = key.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
        return _colon_hex(hashlib.md5(der).digest())  # AWS's definition
    return sha256_fingerprint(key)


# --- PuTTY private key files ----------------------------------------------------------------


def _private_blob(key: PrivateKey) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        nums = key.private_numbers()
        # d, p, q and q^-1 mod p (cryptography's iqmp is exactly that)
        return ssh_mpint(nums.d) + ssh_mpint(nums.p) + ssh_mpint(nums.q) + ssh_mpint(nums.iqmp)
    # Ed25519: the 32-byte private key (the seed) as a string
    seed = key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    return ssh_string(seed)


def ppk_mac(version: int, algorithm: str, encryption: str, comment: str, public: bytes,
            private: bytes, passphrase: bytes = b"") -> str:
    """The ``Private-MAC`` line's hex value: an HMAC over the header fields and both blobs.

    Version 2: HMAC-SHA-1 keyed by SHA-1("putty-private-key-file-mac-key" + passphrase).
    Version 3: HMAC-SHA-256; for an unencrypted file its key is empty (Argon2 derives it
    otherwise, which this module never needs: it writes unencrypted files only).
    """
    data = (ssh_string(algorithm.encode()) + ssh_string(encryption.encode())
            + ssh_string(comment.encode()) + ssh_string(public) + ssh_string(private))
    if version == 2:
        key = hashlib.sha1(b"putty-private-key-file-mac-key" + passphrase).digest()
        return hmac.new(key, data, hashlib.sha1).hexdigest()
    if version == 3:
        if encryption != "none":
            raise ValueError("encrypted PPK v3 files need Argon2")
        return hmac.new(b"", data, hashlib.sha256).hexdigest()
    raise ValueError(f"PPK version {version}")


def _b64_lines(data: bytes) -> list[str]:
    text = base64.b64encode(data).decode()
    return [text[i:i + 64] for i in range(0, len(text), 64)]


def to_ppk(key: PrivateKey, comment: str, version: int = PPK_VERSION) -> str:
    """An unencrypted PuTTY private key file (format 2 or 3), LF line ends."""
    algorithm = "ssh-rsa" if isinstance(key, rsa.RSAPrivateKey) else "ssh-ed25519"
    if "\r" in comment or "\n" in comment:
        raise ValueError("a PPK comment is one line")
    pub = public_blob(key.public_key())
    priv = _private_blob(key)
    pub_lines, priv_lines = _b64_lines(pub), _b64_lines(priv)
    lines = [f"PuTTY-User-Key-File-{version}: {algorithm}", "Encryption: none",
             f"Comment: {comment}", f"Public-Lines: {len(pub_lines)}", *pub_lines,
             f"Private-Lines: {len(priv_lines)}", *priv_lines,
             f"Private-MAC: {ppk_mac(version, algorithm, 'none', comment, pub, priv)}"]
    return "\n".join(lines) + "\n"


# --- CreateKeyPair ----------------------------------------------------------------------------


def generate(key_type: str, key_format: str, comment: str) -> NewKey:
    """A new key pair of ``key_type`` with its private key in ``key_format``."""
    priv: PrivateKey
    if key_type == "rsa":
        priv = rsa.generate_private_key(public_exponent=65537, key_size=CREATE_RSA_BITS)
        pem_format = ser.PrivateFormat.TraditionalOpenSSL  # PKCS#1: BEGIN RSA PRIVATE KEY
    elif key_type == "ed25519":
        priv = ed25519.Ed25519PrivateKey.generate()
        pem_format = ser.PrivateFormat.OpenSSH             # BEGIN OPENSSH PRIVATE KEY
    else:
        raise errors.Ec2Error("InvalidParameterValue", f"Invalid key type: {key_type}")
    if key_format == "pem":
        material = priv.private_bytes(ser.Encoding.PEM, pem_format, ser.NoEncryption()).decode()
    elif key_format == "ppk":
        material = to_ppk(priv, comment)
    else:
        raise errors.Ec2Error("InvalidParameterValue", f"Invalid key format: {key_format}")
    return NewKey(key_type, material, created_fingerprint(priv), openssh_line(priv.public_key()))


# --- ImportKeyPair ----------------------------------------------------------------------------


def _bad(why: str) -> errors.Ec2Error:
    return errors.Ec2Error("InvalidKeyPair.Format", f"Key is not in valid OpenSSH public key "
                                                    f"format ({why})")


_OPENSSH_RE = re.compile(r"^(ssh-rsa|ssh-ed25519)\s+([A-Za-z0-9+/=]+)(?:\s+.*)?$", re.S)
_RFC4716_RE = re.compile(r"^---- BEGIN SSH2 PUBLIC KEY ----\s*$(.*?)^---- END SSH2 PUBLIC KEY ----"
                         r"\s*$", re.M | re.S)


def _from_blob(blob: bytes) -> PublicKey:
    """A public key from its SSH blob (RSA or Ed25519 only)."""
    if len(blob) < 4:
        raise _bad("truncated key blob")
    n = struct.unpack(">I", blob[:4])[0]
    algo = blob[4:4 + n]
    if algo not in (b"ssh-rsa", b"ssh-ed25519"):
        raise _bad(f"unsupported key type {algo.decode('ascii', 'replace')!r}")
    try:
        key = ser.load_ssh_public_key(algo + b" " + base64.b64encode(blob))
    except (ValueError, UnsupportedAlgorithm):
        raise _bad("malformed key blob") from None
    if not isinstance(key, (rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise _bad("unsupported key type")
    if public_blob(key) != blob:  # trailing bytes, non-minimal integers...
        raise _bad("malformed key blob")
    return key


def _rfc4716(body: str) -> PublicKey:
    lines = body.strip().splitlines()
    data: list[str] = []
    continued = False
    for line in lines:
        line = line.strip()
        if continued or (":" in line and not data):  # header (may continue with a backslash)
            continued = line.endswith("\\")
            continue
        data.append(line)
    try:
        blob = base64.b64decode("".join(data), validate=True)
    except (binascii.Error, ValueError):
        raise _bad("bad base64 in the SSH2 public key block") from None
    return _from_blob(blob)


def _der_or_pem(data: bytes) -> PublicKey | None:
    loaders = (ser.load_pem_public_key,) if data.lstrip().startswith(b"-----BEGIN") else \
        (ser.load_der_public_key,)
    for load in loaders:
        try:
            key = load(data)
        except (ValueError, UnsupportedAlgorithm, TypeError):
            return None
        if not isinstance(key, (rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
            raise _bad("unsupported key type")
        return key
    return None


def parse_public_key(material: bytes) -> PublicKey:
    """The public key of ImportKeyPair's ``PublicKeyMaterial`` (already base64-decoded once
    by the protocol layer). Raises ``InvalidKeyPair.Format``."""
    data = bytes(material).strip()
    if not data:
        raise _bad("empty")
    key: PublicKey | None = None
    try:
        text: str | None = data.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        m = _OPENSSH_RE.match(text)
        if m:
            try:
                blob = base64.b64decode(m.group(2), validate=True)
            except (binascii.Error, ValueError):
                raise _bad("bad base64") from None
            key = _from_blob(blob)
            if m.group(1) != ("ssh-rsa" if isinstance(key, rsa.RSAPublicKey) else "ssh-ed25519"):
                raise _bad("key type does not match the key")
        elif (m4716 := _RFC4716_RE.search(text)) is not None:
            key = _rfc4716(m4716.group(1))
        elif text.startswith("-----BEGIN"):
            key = _der_or_pem(data)
        else:  # base64 DER
            try:
                der = base64.b64decode("".join(text.split()), validate=True)
            except (binascii.Error, ValueError):
                der = b""
            key = _der_or_pem(der) if der else None
    if key is None and text is None:
        key = _der_or_pem(data)
    if key is None:
        raise _bad("unrecognised encoding")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size not in IMPORT_RSA_BITS:
        raise errors.Ec2Error("InvalidKeyPair.Format",
                              f"Invalid RSA key length {key.key_size}; supported lengths: "
                              f"{', '.join(map(str, IMPORT_RSA_BITS))}")
    return key
