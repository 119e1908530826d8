"""The content-addressed, reference-counted chunk store (see ``layout.py``: ``chunks``, ``refs``).

:class:`ChunkStore` keeps reference counts in the metadata store (``refs``) and the chunks'
bytes in a :class:`~.base.ChunkBackend` (:class:`KvChunks`: the ``chunks`` table of the
same key-value backend, so chunks commit atomically with the maps that reference them).
Every chunk is encoded and decoded by :mod:`.envelope`, here and nowhere else above.

Operations run inside a write transaction given by the caller, so that chunks, the maps that
reference them and their reference counts change in one commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .. import codec
from .. import layout as L
from ..errors import CorruptStore
from .base import ChunkBackend, Table, Txn
from .envelope import decode_chunk, encode_chunk
from .sealing import Domain, Keyring, sealed_tag
from .store import Store


class KvChunks:
    """:class:`~.base.ChunkBackend` over one table of the store's key-value backend (LMDB
    or memory): puts and deletes are part of the caller's transaction, so the contract's
    ordering holds by atomicity."""

    transactional_puts = True

    def __init__(self, store: Store, table: Table) -> None:
        self.store = store
        self.table = table

    def put_many(self, txn: Txn, items: Sequence[tuple[bytes, bytes]]) -> None:
        db = self.table
        for key, value in items:
            txn.put(key, value, db=db)

    def get_many(self, txn: Txn, keys: Sequence[bytes]) -> list[bytes | None]:
        db = self.table
        return [txn.get(k, db=db) for k in keys]

    def has_many(self, txn: Txn, keys: Sequence[bytes]) -> list[bool]:
        cur = txn.cursor(db=self.table)
        return [cur.set_key(k) for k in keys]

    def delete_many(self, txn: Txn, keys: Sequence[bytes]) -> None:
        db = self.table
        for k in keys:
            txn.delete(k, db=db)

    def collision_keys(self, txn: Txn, fp: bytes) -> list[bytes]:
        cur = txn.cursor(db=self.table)
        out: list[bytes] = []
        if not cur.set_range(fp):
            return out
        key = cur.key()
        while key[:L.FP_SIZE] == fp:  # keys only: a neighbour's value is not copied
            out.append(key)
            if not cur.next():
                break
            key = cur.key()
        return out

    def iter_all(self, batch: int = 256) -> Iterator[list[tuple[bytes, bytes]]]:
        return self.store.scan(self.table, batch=batch)


class ChunkStore:
    """Content-addressed, reference-counted chunks. Methods take the caller's transaction."""

    def __init__(self, store: Store, backend: ChunkBackend | None = None) -> None:
        self.store = store
        self.chunks = store.db["chunks"]
        self.refs = store.db["refs"]
        if backend is None:  # a backend may keep chunk bytes elsewhere (rados://: objects)
            own = getattr(store.backend, "chunk_backend", None)
            backend = own(store) if own is not None else None
        self.backend: ChunkBackend = backend if backend is not None else \
            KvChunks(store, self.chunks)
        self.level = store.zstd_level
        #: the data-key domains this process holds (see :mod:`.sealing`)
        self.keys = Keyring()

    @staticmethod
    def fingerprints(buf: bytes | bytearray | memoryview,
                     domain: Domain | None = None) -> list[bytes | None]:
        """Fingerprint each CHUNK_SIZE piece of ``buf`` (keyed by ``domain`` when given);
        None marks an all-zero chunk.

        Every caller goes through this one method, so a test can replace it to force
        fingerprint collisions (DESIGN invariant 5)."""
        fps = codec.scan_chunks(buf, L.CHUNK_SIZE)
        return fps if domain is None else domain.fingerprints(fps)

    def decode(self, key: bytes, value: bytes | memoryview) -> bytes:
        """The plaintext of stored chunk ``key``'s ``value`` (opened with :attr:`keys`)."""
        return decode_chunk(value, key, self.keys)

    def get(self, txn: Txn, key: bytes) -> bytes:
        value = self.backend.get_many(txn, [key])[0]
        if value is None:
            raise CorruptStore(f"chunk {key.hex()} is referenced but missing")
        return self.decode(key, value)

    def _holds(self, key: bytes, value: bytes | None, data: bytes | memoryview,
               domain: Domain | None) -> bool:
        """Whether stored ``value`` is ``data`` in ``domain``: a chunk of another domain (or
        plaintext, for an encrypted writer) is never shared, whatever its bytes."""
        if value is None or sealed_tag(value) != (domain.tag if domain is not None else None):
            return False
        return self.decode(key, value) == data

    def get_encoded_many(self, txn: Txn, keys: Sequence[bytes]) -> list[bytes]:
        """Stored (encoded) values of ``keys``; decode with :meth:`decode` (e.g. on a pool,
        outside the transaction). CorruptStore if one is missing."""
        values = self.backend.get_many(txn, keys)
        for k, v in zip(keys, values, strict=True):
            if v is None:
                raise CorruptStore(f"chunk {k.hex()} is referenced but missing")
        return values  # type: ignore[return-value]

    def find(self, txn: Txn, fp: bytes, data: bytes | memoryview,
             domain: Domain | None = None) -> bytes | None:
        """Key of the stored chunk holding exactly ``data`` (fingerprint ``fp``) in
        ``domain``, or None.

        Compares bytes, not only fingerprints: a colliding chunk is never returned.
        """
        for key in self.backend.collision_keys(txn, fp):
            if self._holds(key, self.backend.get_many(txn, [key])[0], data, domain):
                return key
        return None

    def maybe_stored(self, txn: Txn, fp: bytes) -> bool:
        """Whether some chunk has fingerprint ``fp`` (no bytes compared: a cheap hint)."""
        return bool(self.backend.collision_keys(txn, fp))

    def put(self, txn: Txn, fp: bytes, data: bytes | memoryview,
            encoded: bytes | None = None, domain: Domain | None = None) -> bytes:
        """Store ``data`` (or find it stored) in ``domain`` and take one reference; returns
        its key. ``encoded`` (if given) must be its encoding in that domain.

        One listing of the chunks with fingerprint ``fp`` both finds an equal stored chunk
        and, for a new one, its free collision number (usually: one lookup, no chunk read)."""
        n = 0
        for key in self.backend.collision_keys(txn, fp):
            if self._holds(key, self.backend.get_many(txn, [key])[0], data, domain):
                self.incref(txn, key)
                return key
            n = max(n, int.from_bytes(key[L.FP_SIZE:], "big") + 1)
        key = L.chunk_key(fp, n)
        if encoded is None or (domain is not None and n != 0):  # sealed for number 0
            encoded = encode_chunk(data, self.level, domain, key)
        self.backend.put_many(txn, [(key, encoded)])
        txn.put(key, L.u64(1), db=self.refs)  # a new chunk has no count yet (I4)
        return key

    def incref(self, txn: Txn, key: bytes, n: int = 1) -> None:
        old = txn.get(key, db=self.refs)
        txn.put(key, L.u64((L.read_u64(old) if old else 0) + n), db=self.refs)

    def decref(self, txn: Txn, key: bytes) -> None:
        """Release one reference; the chunk is freed when none is left (the backend
        removes it only once ``txn`` commits: see :class:`~.base.ChunkBackend`)."""
        old = txn.get(key, db=self.refs)
        if old is None:
            raise CorruptStore(f"releasing chunk {key.hex()} that has no reference count")
        n = L.read_u64(old) - 1
        if n > 0:
            txn.put(key, L.u64(n), db=self.refs)
        else:
            txn.delete(key, db=self.refs)
            self.backend.delete_many(txn, [key])

    def stored_size(self, txn: Txn, key: bytes) -> int:
        value = self.backend.get_many(txn, [key])[0]
        return 0 if value is None else len(value) - 1

    def refcount(self, txn: Txn, key: bytes) -> int:
        old = txn.get(key, db=self.refs)
        return L.read_u64(old) if old else 0

    def iter_stored(self, batch: int = 256) -> Iterator[list[tuple[bytes, bytes]]]:
        """Every stored ``(key, encoded value)``, in key order, in batches each read in a
        fresh read transaction (see :meth:`~.base.ChunkBackend.iter_all`)."""
        return self.backend.iter_all(batch)
