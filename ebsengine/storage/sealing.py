"""Authenticated encryption of stored values, and the data-key domains of encrypted chunks.

Cipher: AES-256-GCM from ``cryptography`` (already a dependency: no new code to trust). GCM
is an AEAD: one pass gives secrecy and integrity, and the additional authenticated data (AAD)
binds a ciphertext to what it belongs to (a chunk's fingerprint, a domain, a KMS key id), so
a value moved to another place, or tampered with in any bit, does not open. AES is what AWS
KMS itself uses for symmetric keys, and AES-NI makes it cheap (measured here: ~3 us for a
40 KB chunk, ~3 us for the key derivation below; zstd takes ~250 us for the same chunk).

Nonces: GCM breaks if a (key, nonce) pair ever repeats. Every message gets a fresh random
256-bit salt from ``os.urandom``; the salt derives a one-message key with HKDF-SHA256 from
the long-term key, and that key is used with a fixed all-zero 96-bit nonce, exactly once. A
repeat would need two equal 256-bit random salts (~2^-128 after 2^64 messages), and the
scheme needs no state: no persisted counter that a restored backup or two processes could
rewind or share. (A random 96-bit nonce directly under the long-term key would cap a key at
~2^32 messages: 256 TiB of chunks.)

Sealed layout: ``salt[32] | ciphertext | tag[16]``, AAD given by the caller. (Chunk and
pages values derive their one-message key with keyed BLAKE2b instead of HKDF, the same PRF
construction at a third of the cost, since every chunk read pays it: :meth:`Domain.seal`.)

A :class:`Domain` is one data key's world (an encrypted volume lineage and everything that
shares its chunks, see ``layout.py``): it seals chunk and page values, and it keys the
fingerprints that name its chunks, so that equal plaintexts in one domain dedup and nothing
about a plaintext can be learnt, or confirmed, from its name without the key. A domain
fingerprint is AES-256 (one block, under a key derived from the data key) of the chunk's
xxh3-128: a keyed permutation of the public fingerprint, ~0.4 us a chunk, and the fast C
scan keeps doing the hashing. The keyed page digest is BLAKE2b-128 keyed the same way.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import layout as L

KEY_BYTES = 32
SALT_BYTES = 32
TAG_BYTES = 16
SEAL_OVERHEAD = SALT_BYTES + TAG_BYTES
_NONCE = bytes(12)
_INFO = b"ebsengine/seal/v1"
_AAD_HEAD = b"ebsengine/value/v1\0"  # then the domain tag, then the caller's AAD
_HEAD = 1 + L.DOMAIN_TAG_SIZE  # a sealed stored value: codec byte, domain tag,
_BODY = _HEAD + SALT_BYTES  # salt, then ciphertext and GCM tag
_SEALED_MIN = _BODY + TAG_BYTES


class SealError(Exception):
    """A sealed blob did not open: wrong key, wrong AAD, or tampered with."""


def _message_key(key: bytes, salt: bytes) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_INFO).derive(key)
    return AESGCM(derived)


def seal(key: bytes, plaintext: bytes | bytearray | memoryview, aad: bytes) -> bytes:
    """``salt | AES-256-GCM(HKDF(key, salt), nonce 0, plaintext, aad)``."""
    salt = os.urandom(SALT_BYTES)
    return salt + _message_key(key, salt).encrypt(_NONCE, bytes(plaintext), aad)


def unseal(key: bytes, blob: bytes | memoryview, aad: bytes) -> bytes:
    """The plaintext of :func:`seal`'s output; SealError when it does not authenticate."""
    blob = bytes(blob)
    if len(blob) < SEAL_OVERHEAD:
        raise SealError("too short")
    salt, body = blob[:SALT_BYTES], blob[SALT_BYTES:]
    try:
        return _message_key(key, salt).decrypt(_NONCE, body, aad)
    except InvalidTag:
        raise SealError("does not authenticate") from None


def _derive(data_key: bytes, what: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"ebsengine/domain/" + what).derive(data_key)


def domain_tag(domain_id: str) -> bytes:
    """The 16 bytes that name domain ``dom-<32 hex>`` inside sealed values."""
    if not (domain_id.startswith("dom-") and len(domain_id) == 4 + 2 * L.DOMAIN_TAG_SIZE):
        raise ValueError(f"not a data-key domain id: {domain_id!r}")
    return bytes.fromhex(domain_id[4:])


class Domain:
    """One data key's domain: seals and opens its values, keys its fingerprints.

    ``data_key`` is the 32-byte key KMS unwraps for domain ``domain_id``; two keys are derived
    from it (HKDF, distinct labels): one seals values (a one-message key per value, see
    :meth:`_value_key`), one keys fingerprints and page digests."""

    def __init__(self, domain_id: str, data_key: bytes) -> None:
        if len(data_key) != KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        self.id = domain_id
        self.tag = domain_tag(domain_id)
        self._seal_key = _derive(data_key, b"seal")
        self._fp_key = _derive(data_key, b"fingerprint")
        self._fp_cipher = Cipher(algorithms.AES(self._fp_key), modes.ECB())
        # keyed BLAKE2b's first block is the key: hashed once here, copied per message
        self._value_prf = hashlib.blake2b(key=self._seal_key, digest_size=KEY_BYTES,
                                          person=b"ebsengine/value")
        #: the head of every value's AAD: binds a value to its domain
        self._aad_head = _AAD_HEAD + self.tag

    def __repr__(self) -> str:
        return f"Domain({self.id})"

    # --- names ------------------------------------------------------------------------------

    def fingerprints(self, digests: Sequence[bytes | None]) -> list[bytes | None]:
        """Keyed fingerprints of xxh3-128 ``digests`` (None, a zero chunk, stays None)."""
        live = [d for d in digests if d is not None]
        if not live:
            return list(digests)
        enc = self._fp_cipher.encryptor()
        out = enc.update(b"".join(live)) + enc.finalize()
        it = iter(range(0, len(out), L.FP_SIZE))
        return [None if d is None else out[(i := next(it)):i + L.FP_SIZE] for d in digests]

    def page_digest(self, data: bytes | bytearray | memoryview) -> bytes:
        """The keyed digest a patch of this domain carries of its pages."""
        return hashlib.blake2b(data, digest_size=L.DIGEST_SIZE, key=self._fp_key).digest()

    # --- values -----------------------------------------------------------------------------

    def _value_key(self, salt: bytes | memoryview) -> AESGCM:
        """The one-message key of a value: keyed BLAKE2b-256 (a PRF) of its random salt
        under the sealing key. The same construction as :func:`seal`'s HKDF, at a third of
        its cost (~1 us against ~3.5 us): on the read path of every chunk it counts. (From
        a copy of the state after the key block: the same digest, at half the cost again.)"""
        prf = self._value_prf.copy()
        prf.update(salt)
        return AESGCM(prf.digest())

    def seal(self, inner: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        """``CODEC_SEALED | tag | salt | AES-256-GCM(inner)``: the stored form of an encoded
        value (``layout.py``, "Encryption")."""
        salt = os.urandom(SALT_BYTES)
        return b"".join((bytes((L.CODEC_SEALED,)), self.tag, salt,
                         self._value_key(salt).encrypt(_NONCE, inner, self._aad_head + aad)))

    def open(self, value: bytes | memoryview, aad: bytes | memoryview) -> bytes:
        """The inner encoded value of :meth:`seal`'s output; SealError if it does not
        authenticate (tampered, or sealed for another place or domain).

        Every read of an encrypted chunk that misses the cache passes here with the GIL
        held (``cryptography`` keeps it), so it does the least Python it can: views, not
        copies, and one AAD join."""
        if len(value) < _SEALED_MIN or value[0] != L.CODEC_SEALED or \
                value[1:_HEAD] != self.tag:
            raise SealError("not sealed in this domain")
        mv = memoryview(value)
        try:
            return self._value_key(mv[_HEAD:_BODY]).decrypt(_NONCE, mv[_BODY:],
                                                             self._aad_head + aad)
        except InvalidTag:
            raise SealError("does not authenticate") from None


def sealed_tag(value: bytes | memoryview) -> bytes | None:
    """The domain tag of a sealed stored value; None for a plaintext one."""
    if len(value) and value[0] == L.CODEC_SEALED:
        return bytes(value[1:1 + L.DOMAIN_TAG_SIZE])
    return None


class Keyring:
    """The domains whose data keys this process holds, by tag. The engine adds a domain when
    KMS lets it unwrap its data key (at the open of a volume, a snapshot, an export...);
    decoding a value of a domain that is not here fails with KeyUnavailable."""

    def __init__(self, exists: Callable[[str], bool] | None = None) -> None:
        self._domains: dict[bytes, Domain] = {}
        self._lock = threading.Lock()
        #: whether a domain id names a domain of the store at all (set by the engine): a
        #: sealed value naming none was tampered with, and is corrupt rather than locked
        self.exists = exists

    def add(self, domain: Domain) -> Domain:
        with self._lock:
            return self._domains.setdefault(domain.tag, domain)

    def get(self, tag: bytes) -> Domain | None:
        return self._domains.get(tag)

    def by_id(self, domain_id: str) -> Domain | None:
        return self._domains.get(domain_tag(domain_id))

    def drop(self, domain_id: str) -> None:
        with self._lock:
            self._domains.pop(domain_tag(domain_id), None)

    def clear(self) -> None:
        with self._lock:
            self._domains.clear()

    def __len__(self) -> int:
        return len(self._domains)
