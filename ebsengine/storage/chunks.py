"""The content-addressed, reference-counted chunk store (see ``layout.py``: ``chunks``, ``refs``).

Operations run inside a write transaction given by the caller, so that chunks, the maps that
reference them and their reference counts change in one commit.
"""

from __future__ import annotations

import lmdb

from .. import codec
from .. import layout as L
from ..errors import CorruptStore
from .envelope import decode_chunk, encode_chunk
from .lmdb_env import Store


class ChunkStore:
    """Content-addressed, reference-counted chunks. Methods take the caller's transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.chunks = store.db["chunks"]
        self.refs = store.db["refs"]
        self.level = store.zstd_level

    @staticmethod
    def fingerprints(buf: bytes | bytearray | memoryview) -> list[bytes | None]:
        """Fingerprint each CHUNK_SIZE piece of ``buf``; None marks an all-zero chunk.

        Every caller goes through this one method, so a test can replace it to force
        fingerprint collisions (DESIGN invariant 5)."""
        return codec.scan_chunks(buf, L.CHUNK_SIZE)

    def get(self, txn: lmdb.Transaction, key: bytes) -> bytes:
        value = txn.get(key, db=self.chunks)
        if value is None:
            raise CorruptStore(f"chunk {key.hex()} is referenced but missing")
        return decode_chunk(value)

    def find(self, txn: lmdb.Transaction, fp: bytes, data: bytes | memoryview) -> bytes | None:
        """Key of the stored chunk holding exactly ``data`` (fingerprint ``fp``), or None.

        Compares bytes, not only fingerprints: a colliding chunk is never returned.
        """
        cur = txn.cursor(db=self.chunks)
        if not cur.set_range(fp):
            return None
        while True:
            key = cur.key()  # look at the key first: the neighbour's value is not copied
            if key[:L.FP_SIZE] != fp:
                return None
            if decode_chunk(cur.value()) == data:
                return key
            if not cur.next():
                return None

    def maybe_stored(self, txn: lmdb.Transaction, fp: bytes) -> bool:
        """Whether some chunk has fingerprint ``fp`` (no bytes compared: a cheap hint)."""
        cur = txn.cursor(db=self.chunks)
        return bool(cur.set_range(fp)) and cur.key()[:L.FP_SIZE] == fp

    def put(self, txn: lmdb.Transaction, fp: bytes, data: bytes | memoryview,
            encoded: bytes | None = None) -> bytes:
        """Store ``data`` (or find it stored) and take one reference; returns its key.

        One cursor walk over the chunks with fingerprint ``fp`` both finds an equal stored
        chunk and, for a new one, its free collision number (usually: one lookup)."""
        cur = txn.cursor(db=self.chunks)
        n = 0
        found = cur.set_range(fp)
        while found:
            key = cur.key()
            if key[:L.FP_SIZE] != fp:
                break
            if decode_chunk(cur.value()) == data:
                self.incref(txn, key)
                return key
            n = max(n, int.from_bytes(key[L.FP_SIZE:], "big") + 1)
            found = cur.next()
        key = L.chunk_key(fp, n)
        txn.put(key, encoded if encoded is not None else encode_chunk(data, self.level),
                db=self.chunks)
        txn.put(key, L.u64(1), db=self.refs)  # a new chunk has no count yet (I4)
        return key

    def incref(self, txn: lmdb.Transaction, key: bytes, n: int = 1) -> None:
        old = txn.get(key, db=self.refs)
        txn.put(key, L.u64((L.read_u64(old) if old else 0) + n), db=self.refs)

    def decref(self, txn: lmdb.Transaction, key: bytes) -> None:
        """Release one reference; the chunk is freed when none is left."""
        old = txn.get(key, db=self.refs)
        if old is None:
            raise CorruptStore(f"releasing chunk {key.hex()} that has no reference count")
        n = L.read_u64(old) - 1
        if n > 0:
            txn.put(key, L.u64(n), db=self.refs)
        else:
            txn.delete(key, db=self.refs)
            txn.delete(key, db=self.chunks)

    def stored_size(self, txn: lmdb.Transaction, key: bytes) -> int:
        value = txn.get(key, db=self.chunks)
        return 0 if value is None else len(value) - 1

    def refcount(self, txn: lmdb.Transaction, key: bytes) -> int:
        old = txn.get(key, db=self.refs)
        return L.read_u64(old) if old else 0


