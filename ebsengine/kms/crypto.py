"""Sealing (authenticated encryption) and the master key file.

Cipher: AES-256-GCM from ``cryptography`` (already a dependency of ebsengine: no new code
to trust). GCM is an AEAD: one pass gives secrecy and integrity, and the additional
authenticated data (AAD) binds a ciphertext to what it belongs to (a key id, a domain id,
an EncryptionContext), so a blob moved to another record, or tampered with in any bit, does
not open. AES is what AWS KMS itself uses for symmetric keys (SYMMETRIC_DEFAULT is
AES-256-GCM), and AES-NI makes it cheap.

Nonces: GCM breaks if a (key, nonce) pair ever repeats. Every message here gets a fresh
random 256-bit salt from ``os.urandom``; the salt derives a one-message key with
HKDF-SHA256 from the long-term key, and that key is used with a fixed all-zero 96-bit nonce,
exactly once. A repeat would need two equal 256-bit random salts (~2^-128 after 2^64
messages), and the scheme needs no state: no persisted counter that a restored backup or two
processes could rewind or share. (A random 96-bit nonce directly under the long-term key
would cap a key at ~2^32 messages; a counter would have to be stored and committed before
every use.) Cost: 32 bytes per message and one HKDF, negligible next to a KMS round trip.

Sealed layout: ``salt[32] | ciphertext | tag[16]``, AAD given by the caller.

The master key (32 random bytes) lives in a file outside the store, never in it:
:func:`default_master_key_path` (``$EBSENGINE_MASTER_KEY``, else
``$XDG_CONFIG_HOME/ebsengine/master.key``, i.e. ``~/.config/ebsengine/master.key``),
created on first use with mode 0600 in a directory created 0700. The file is text: a comment
line and the key in base64, so it can be kept in a password manager.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import MasterKeyError

KEY_BYTES = 32
SALT_BYTES = 32
TAG_BYTES = 16
_NONCE = bytes(12)
_INFO = b"ebsengine/seal/v1"
MASTER_HEADER = "# ebsengine master key: it seals every KMS key of the stores that use it.\n" \
                "# Back it up apart from the store; without it their keys cannot be read.\n"


class SealError(Exception):
    """A sealed blob did not open: wrong key, wrong AAD, or tampered with."""


def _message_key(key: bytes, salt: bytes) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_INFO).derive(key)
    return AESGCM(derived)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``salt | AES-256-GCM(HKDF(key, salt), nonce 0, plaintext, aad)``."""
    salt = os.urandom(SALT_BYTES)
    return salt + _message_key(key, salt).encrypt(_NONCE, bytes(plaintext), aad)


def unseal(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output; SealError when it does not authenticate."""
    blob = bytes(blob)
    if len(blob) < SALT_BYTES + TAG_BYTES:
        raise SealError("too short")
    salt, body = blob[:SALT_BYTES], blob[SALT_BYTES:]
    try:
        return _message_key(key, salt).decrypt(_NONCE, body, aad)
    except InvalidTag:
        raise SealError("does not authenticate") from None


# --- the master key file ------------------------------------------------------------------


def default_master_key_path() -> str:
    """``$EBSENGINE_MASTER_KEY``, else ``$XDG_CONFIG_HOME/ebsengine/master.key``
    (``~/.config/ebsengine/master.key``)."""
    env = os.environ.get("EBSENGINE_MASTER_KEY")
    if env:
        return env
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "ebsengine", "master.key")


def _parse(path: str, text: str) -> bytes:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    try:
        if len(lines) != 1:
            raise ValueError
        key = base64.b64decode(lines[0], validate=True)
    except (ValueError, binascii.Error):
        raise MasterKeyError(f"{path} is not an ebsengine master key file") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"{path} is not an ebsengine master key file "
                             f"(its key is {len(key)} bytes, not {KEY_BYTES})")
    return key


class MasterKey:
    """The master key of one path, read (or created, when ``create`` allows) on first use.

    ``load(create=)`` returns the 32 key bytes. Raises MasterKeyError when the file is
    missing and may not be created, unreadable, malformed, or readable by group/others
    (the key would then not be a secret: ``chmod 600`` it).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = os.path.abspath(os.fspath(path)) if path is not None else \
            os.path.abspath(default_master_key_path())
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def load(self, *, create: bool) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = self._read() if self.exists() or not create else self._create()
            return self._key

    def _read(self) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise MasterKeyError(
                f"master key file {self.path} not found: the store's KMS keys are sealed "
                f"under a master key; restore that file (or name it with --master-key / "
                f"EBSENGINE_MASTER_KEY)") from None
        except OSError as exc:
            raise MasterKeyError(f"cannot read master key file {self.path}: "
                                 f"{exc.strerror}") from None
        try:
            mode = os.fstat(fd).st_mode
            if mode & 0o077:
                raise MasterKeyError(f"master key file {self.path} is accessible by group or "
                                     f"others (mode {mode & 0o777:o}); chmod 600 it")
            with os.fdopen(fd, "r", encoding="ascii", errors="replace", closefd=False) as f:
                text = f.read(4096)
        finally:
            os.close(fd)
        return _parse(self.path, text)

    def _create(self) -> bytes:
        """A new random key, written atomically: a 0600 temporary file in the same directory,
        fsynced, then hard-linked to the path (fails if another process made it first: then
        theirs is read)."""
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        key = os.urandom(KEY_BYTES)
        # a random name: a crashed creator's leftover (same pid after a restart) never blocks
        tmp = os.path.join(directory, f".{os.path.basename(self.path)}."
                                      f"{os.getpid()}.{os.urandom(8).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (MASTER_HEADER + base64.b64encode(key).decode() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return self._read()
        finally:
            os.unlink(tmp)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return key
