"""The master key file (and, re-exported from :mod:`ebsengine.storage.sealing`, the sealing
every KMS blob and every encrypted chunk uses: AES-256-GCM under a one-message key derived
from a random 256-bit salt; its docstring says why).

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

from ..errors import MasterKeyError
from ..storage.sealing import KEY_BYTES, SealError, seal, unseal

__all__ = ["KEY_BYTES", "MASTER_HEADER", "MasterKey", "SealError", "default_master_key_path",
           "seal", "unseal"]

MASTER_HEADER = "# ebsengine master key: it seals every KMS key of the stores that use it.\n" \
                "# Back it up apart from the store; without it their keys cannot be read.\n"


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
