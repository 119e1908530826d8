"""What the block layer is given by the engine: a storage handle (:class:`BlockContext`), and
the bounded cache of decoded chunks that reads go through (:class:`ChunkCache`).

The block layer never sees the Engine: volumes, snapshot views and the folder hold a
:class:`BlockContext` built by it (the store, the chunk store, the block maps, the worker
pool, the decoded-chunk cache and a closed-check).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import xxhash

from .. import layout as L
from ..errors import Closed, CorruptStore, KeyUnavailable
from ..storage.base import Table, Txn
from ..storage.chunks import ChunkStore
from ..storage.envelope import decode_pages
from ..storage.sealing import Domain, sealed_tag
from ..storage.store import Store
from .maps import BlockMaps

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
ZERO_CHUNK = bytes(L.CHUNK_SIZE)
ZERO_PAGE = bytes(L.PAGE_SIZE)


def _tag(domain: Domain | None) -> bytes | None:
    return domain.tag if domain is not None else None


def check_domain(raw: bytes | memoryview, tag: bytes | None, what: str) -> None:
    """Refuse (CorruptStore) a stored chunk or pages value that is not sealed in the domain
    (tag) of the lineage reading it, or that is sealed when the lineage is plaintext: a
    block map edited to name another domain's value, or a plaintext one, never reads
    back as bytes (``layout.py``, I11). Costs the codec byte and a 16-byte compare; the
    AEAD then binds the value to that domain and to its key."""
    got = sealed_tag(raw)
    if got != tag:
        have = "plaintext" if got is None else f"sealed in dom-{got.hex()}"
        want = "a plaintext lineage" if tag is None else f"a lineage of dom-{tag.hex()}"
        raise CorruptStore(f"{what} is {have} but is read by {want}: the block map was "
                           f"tampered with")


def patch_tag_for(domain: Domain | None) -> int:
    """The tag (digest kind) of the patches a lineage of ``domain`` writes (``layout.py``,
    ``maps``): xxh3-128 in plaintext, keyed BLAKE2b-128 in an encrypted domain."""
    return L.PATCH_TAG if domain is not None else L.PATCH_TAG_XXH


def page_digest(data: bytes | bytearray | memoryview, domain: Domain | None = None,
                tag: int | None = None) -> bytes:
    """The digest a patch value of tag ``tag`` (by default the one ``domain`` writes)
    carries of its pages (see ``layout.py``, ``maps``). ValueError for an xxh3 tag in an
    encrypted domain, or an unknown tag."""
    tag = patch_tag_for(domain) if tag is None else L.DIGEST_OF.get(tag, -1)
    if tag == L.PATCH_TAG_XXH and domain is None:
        return xxhash.xxh3_128_digest(data)
    if tag == L.PATCH_TAG:
        if domain is not None:
            return domain.page_digest(data)
        return hashlib.blake2b(data, digest_size=L.DIGEST_SIZE).digest()
    raise ValueError(f"patch tag {tag:#x} is not valid in "
                     f"{'an encrypted' if domain is not None else 'a plaintext'} lineage")


#: the first byte of the cache key of a patch layer's pages (:func:`_layer_cache_key`): 35
#: or 36 bytes, where chunk keys are ``KEY_SIZE`` (20) bytes
_LAYER_MARK = b"\x00"


def _layer_cache_key(layer: tuple[bytes, int, bytes]) -> bytes:
    """What names the pages of one patch layer ``(pages row, mask, digest)``: the row, the
    mask and the digest of exactly these pages, so equal keys mean equal pages (a rewrite of
    the row changes the digest; a fold, a merge or a release drops the row and discards
    the entry, :meth:`ChunkCache.discard_layers`)."""
    page_key, mask, digest = layer
    return _LAYER_MARK + page_key + mask.to_bytes(2, "big") + digest


class ChunkCache:
    """Decoded chunks by chunk key and the decoded pages of patch layers by what names them
    (:func:`_layer_cache_key`), one LRU, bounded by bytes (decoded + stored form, or domain
    mark).

    A chunk entry is used only if the stored value read in the caller's transaction is the
    very value it was decoded from, so a chunk freed and stored again under the same key (by
    this or another process) is never served stale. :meth:`discard` and
    :meth:`discard_layers` free memory early when a chunk or a patch's pages are freed.
    """

    def __init__(self, limit: int = DEFAULT_CACHE_BYTES) -> None:
        self.limit = limit
        self.bytes = 0
        self._lru: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, txn: Txn, chunks: ChunkStore, key: bytes, tag: bytes | None,
            raw: bytes | None = None, keep: bool = True) -> bytes:
        """Decoded chunk ``key`` for a lineage of domain ``tag`` (None: plaintext; see
        :func:`check_domain`). ``raw``: its stored value, if the caller read it already in
        ``txn`` (see :meth:`BlockContext.prefetch`). With ``keep=False`` a miss is not
        cached (bulk and background readers: they would evict what reads use)."""
        if raw is None:
            raw = chunks.backend.get_many(txn, [key])[0]
        if raw is None:
            raise CorruptStore(f"chunk {key.hex()} is referenced but missing")
        check_domain(raw, tag, f"chunk {key.hex()}")
        hit = self._hit(key, raw)
        if hit is not None:
            return hit
        data = chunks.decode(key, raw)  # outside the lock: other readers go on meanwhile
        self._missed(key, raw, data, keep)
        return data

    def has_layer(self, layer: tuple[bytes, int, bytes]) -> bool:
        """Whether one patch layer's pages are cached (for some domain)."""
        return _layer_cache_key(layer) in self._lru

    def get_pages(self, txn: Txn, chunks: ChunkStore, pages_db: Table, value: bytes,
                  tag: bytes | None, keep: bool = True) -> bytes:
        """The decoded pages (ascending page order, the newest layer's where layers
        overlap) of patch ``value``, from its layers (:meth:`get_layer`); ``keep`` as
        there."""
        layers = L.patch_layers(value)
        if len(layers) == 1:
            return self.get_layer(txn, chunks, pages_db, layers[0], tag, keep)
        got: dict[int, bytes | memoryview] = {}
        for layer in layers:
            view = memoryview(self.get_layer(txn, chunks, pages_db, layer, tag, keep))
            for i, p in enumerate(L.mask_pages(layer[1])):
                got[p] = view[i * L.PAGE_SIZE:(i + 1) * L.PAGE_SIZE]
        return b"".join(got[p] for p in sorted(got))

    def get_layer(self, txn: Txn, chunks: ChunkStore, pages_db: Table,
                  layer: tuple[bytes, int, bytes], tag: bytes | None,
                  keep: bool = True) -> bytes:
        """The decoded pages (ascending page order) of one layer ``(pages row, mask,
        digest)`` of a patch (:func:`layout.patch_layers`), cached by what names them
        (:func:`_layer_cache_key`) with no store read on a hit; a hit also needs the domain
        ``tag`` the pages were checked against (:func:`check_domain`). A read of a page of
        a layered patch decodes only the layer holding it, and the layers below a new one
        stay cached. With ``keep=False`` a miss is not cached (pages about to be replaced,
        whole-chunk reads: flush, fold, copies)."""
        key = _layer_cache_key(layer)
        mark = tag or b""
        hit = self._hit(key, mark)
        if hit is not None:
            return hit
        data = self._decode_layer(txn, chunks, pages_db, layer[0], layer[1], tag)
        self._missed(key, mark, data, keep)
        return data

    @staticmethod
    def _decode_layer(txn: Txn, chunks: ChunkStore, pages_db: Table, page_key: bytes,
                      mask: int, tag: bytes | None) -> bytes:
        raw = txn.get(page_key, db=pages_db)
        if raw is None:
            raise CorruptStore(f"the pages of patch {page_key.hex()} are missing")
        check_domain(raw, tag, f"the pages of patch {page_key.hex()}")
        return decode_pages(raw, mask.bit_count() * L.PAGE_SIZE, page_key, chunks.keys)

    def _hit(self, key: bytes, check: bytes) -> bytes | None:
        """The cached data of ``key`` if it was cached from ``check`` (the stored value, or
        the domain mark of pages), made the most recently used; else None."""
        with self._lock:
            hit = self._lru.get(key)
            if hit is None or hit[0] != check:
                return None
            self._lru.move_to_end(key)
            self.hits += 1
            return hit[1]

    def _missed(self, key: bytes, check: bytes, data: bytes, keep: bool) -> None:
        """Count a miss of ``key``, caching what it decoded (``data``, from ``check``) only
        with ``keep``."""
        if keep:
            self._insert(key, check, data)
        else:
            with self._lock:
                self.misses += 1

    def _insert(self, key: bytes, raw: bytes, data: bytes) -> None:
        with self._lock:
            self.misses += 1
            old = self._lru.pop(key, None)
            if old is not None:
                self.bytes -= len(old[0]) + len(old[1])
            if self.limit > 0:
                self._lru[key] = (raw, data)
                self.bytes += len(raw) + len(data)
                while self.bytes > self.limit and self._lru:
                    _, (r, d) = self._lru.popitem(last=False)
                    self.bytes -= len(r) + len(d)

    def discard_layers(self, value: bytes, first: int = 0) -> None:
        """Forget the pages of layers ``first``, ``first + 1``, ... of patch ``value`` (their
        rows were deleted)."""
        for layer in L.patch_layers(value)[first:]:
            self.discard(_layer_cache_key(layer))

    def discard(self, key: bytes) -> None:
        with self._lock:
            old = self._lru.pop(key, None)
            if old is not None:
                self.bytes -= len(old[0]) + len(old[1])

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()
            self.bytes = 0


@dataclass
class BlockContext:
    """The storage handle of the block layer (built by the engine)."""

    store: Store
    chunks: ChunkStore
    maps: BlockMaps
    pool: Executor
    is_closed: Callable[[], bool]
    cache: ChunkCache = field(default_factory=ChunkCache)
    #: ``time.monotonic()`` of the latest read, write or flush of a volume or snapshot in
    #: this process (the folder waits for quiet)
    last_io: float = 0.0
    #: held by a fold round, and by an export attempt so that no fold replaces a value the
    #: export has resolved (a fold keeps the content, but a resolved patch's pages would go)
    fold_lock: threading.Lock = field(default_factory=threading.Lock)
    #: ``no_unit(what)`` refuses work that needs a write transaction of its own on a thread
    #: inside the engine's unit of work, which holds the store's writer (the engine sets it)
    no_unit: Callable[[str], None] = field(default=lambda what: None)

    def __post_init__(self) -> None:
        self.pages_db = self.store.db["pages"]
        self.maps.on_free = self.cache.discard
        self.maps.on_free_layers = self.cache.discard_layers

    # --- domains ----------------------------------------------------------------------------

    def lineage_domain(self, txn: Txn, lineage: int) -> Domain | None:
        """The domain lineage ``lineage`` is sealed in (None: plaintext), from the keys this
        process holds: KeyUnavailable if its key was never unlocked here."""
        lin = self.maps.peek(txn, lineage)
        if lin is None:
            raise CorruptStore(f"lineage {lineage} is referenced but missing")
        if lin.domain is None:
            return None
        domain = self.chunks.keys.by_id(lin.domain)
        if domain is None:
            raise KeyUnavailable(f"lineage {lineage} is encrypted in {lin.domain}, whose key "
                                 f"is not unlocked here")
        return domain

    # --- decoding map values ----------------------------------------------------------------

    # Every method below takes ``domain``, the domain of the lineage the value was read for
    # (None: a plaintext lineage): a stored value of any other domain is CorruptStore.

    def chunk(self, txn: Txn, key: bytes, domain: Domain | None,
              raws: dict[bytes, bytes] | None = None) -> bytes:
        """Decoded bytes of stored chunk ``key``; ``raws``: stored values already read in
        ``txn`` (:meth:`prefetch`). For flushes, folds, copies and comparisons: a cached
        chunk is used, a miss does not fill the read cache (only reads, :meth:`fill`, do)."""
        return self.cache.get(txn, self.chunks, key, _tag(domain),
                              None if raws is None else raws.get(key), keep=False)

    def patch_pages(self, txn: Txn, value: bytes, domain: Domain | None) -> dict[int, bytes]:
        """``{page number: 4 KiB}`` of a patch value's stored pages (for flushes, folds and
        comparisons: a miss does not fill the read cache)."""
        nums = L.mask_pages(L.parse_patch(value)[0])
        data = self.cache.get_pages(txn, self.chunks, self.pages_db, value, _tag(domain),
                                    keep=False)
        return {p: data[i * L.PAGE_SIZE:(i + 1) * L.PAGE_SIZE] for i, p in enumerate(nums)}

    def content(self, txn: Txn, value: bytes | None, domain: Domain | None,
                raws: dict[bytes, bytes] | None = None) -> bytes:
        """The 64 KiB a ``maps`` value (or None: nothing stored) reads as; ``raws`` and
        the read cache as for :meth:`chunk`."""
        if not value:
            return ZERO_CHUNK
        if not L.is_patch(value):
            return self.chunk(txn, value, domain, raws)
        base = L.parse_patch(value)[3]
        out = bytearray(self.chunk(txn, base, domain, raws) if base is not None
                        else ZERO_CHUNK)
        for p, page in self.patch_pages(txn, value, domain).items():
            out[p * L.PAGE_SIZE:(p + 1) * L.PAGE_SIZE] = page
        return bytes(out)

    def same_content(self, txn: Txn, a: bytes | None, b: bytes | None,
                     domain: Domain | None) -> bool:
        """Whether two ``maps`` values read the same. Chunk keys and tombstones are equal
        exactly when their values are (a chunk is shared only after its bytes compared
        equal, zero chunks are never stored); only a patch makes its content be compared."""
        a, b = a or None, b or None
        if a == b:
            return True
        if not (a is not None and L.is_patch(a)) and not (b is not None and L.is_patch(b)):
            return False
        return self.content(txn, a, domain) == self.content(txn, b, domain)

    def prefetch(self, txn: Txn, values: Iterable[bytes | None]) -> dict[bytes, bytes]:
        """The stored values of the chunks that ``maps`` values read through, read in one
        batch, for :meth:`fill`: only where the chunk backend is remote (RADOS: one
        pipelined batch instead of a round trip per chunk); empty otherwise. The pages of
        patches that the cache lacks are loaded in one batch too (:meth:`prefetch_pages`)."""
        if self.chunks.backend.transactional_puts:
            return {}
        present = [v for v in values if v]
        self.prefetch_pages(txn, present)
        keys: list[bytes] = []
        for value in present:
            key = L.parse_patch(value)[3] if L.is_patch(value) else value
            if key is not None:
                keys.append(key)
        keys = sorted(set(keys))
        if len(keys) < 2:
            return {}
        return {k: v for k, v in zip(keys, self.chunks.backend.get_many(txn, keys),
                                     strict=True) if v is not None}

    def prefetch_pages(self, txn: Txn, values: Iterable[bytes | None]) -> None:
        """Hint the page keys of the patches among ``values`` that the cache lacks to the
        transaction, where its backend can load them in batches (``prefetch`` of a RADOS
        transaction: a few round trips instead of one per patch, or per leaf)."""
        hint = getattr(txn, "prefetch", None)
        if hint is None:
            return
        page_keys = [layer[0] for v in values if v and L.is_patch(v)
                     for layer in L.patch_layers(v) if not self.cache.has_layer(layer)]
        if len(page_keys) > 1:
            hint(sorted(page_keys), db=self.pages_db)

    def fill(self, txn: Txn, value: bytes | None, dst: memoryview, lo: int,
             pages: list[int] | None, domain: Domain | None,
             raws: dict[bytes, bytes] | None = None) -> None:
        """Copy bytes ``[lo, lo + len(dst))`` of what ``value`` reads as into ``dst``; with
        ``pages``, only the parts of ``dst`` inside those 4 KiB pages of the chunk.
        ``raws``: stored values already read in ``txn`` (:meth:`prefetch`)."""
        hi = lo + len(dst)
        spans = [(lo, hi)] if pages is None else [
            (max(lo, p * L.PAGE_SIZE), min(hi, (p + 1) * L.PAGE_SIZE)) for p in pages]
        if not value:
            for a, b in spans:
                dst[a - lo:b - lo] = ZERO_CHUNK[:b - a]
            return
        tag = _tag(domain)
        # The cache saves the decompression of a chunk between reads of parts of it; a read
        # of the whole chunk (a copy, a scan) decodes it once and leaves the cache as it is.
        keep = pages is not None or lo != 0 or hi != L.CHUNK_SIZE
        if not L.is_patch(value):
            data = self.cache.get(txn, self.chunks, value, tag,
                                  raws.get(value) if raws else None, keep=keep)
            for a, b in spans:
                dst[a - lo:b - lo] = data[a:b]
            return
        mask, _, _, base = L.parse_patch(value)
        # A read decodes only the layers holding the pages it reads (the newest layer with
        # a page holds it), each once.
        layers = L.patch_layers(value)
        decoded: dict[int, bytes] = {}
        base_data: bytes | None = None
        for a, b in spans:
            pos = a
            while pos < b:
                p = pos // L.PAGE_SIZE
                end = min(b, (p + 1) * L.PAGE_SIZE)
                if mask >> p & 1:
                    n = len(layers) - 1
                    while n >= 0 and not layers[n][1] >> p & 1:
                        n -= 1
                    if n < 0:
                        raise CorruptStore(f"patch {layers[0][0].hex()} has page {p} in its "
                                           f"mask and in none of its layers")
                    have = decoded.get(n)
                    if have is None:
                        have = decoded[n] = self.cache.get_layer(
                            txn, self.chunks, self.pages_db, layers[n], tag, keep)
                    # page p is the k-th page of its layer, k = the layer's pages below it
                    at = (layers[n][1] & ((1 << p) - 1)).bit_count() * L.PAGE_SIZE \
                        + pos % L.PAGE_SIZE
                    dst[pos - lo:end - lo] = have[at:at + end - pos]
                elif base is not None:
                    if base_data is None:
                        base_data = self.cache.get(txn, self.chunks, base, tag,
                                                   raws.get(base) if raws else None,
                                                   keep=keep)
                    dst[pos - lo:end - lo] = base_data[pos:end]
                else:
                    dst[pos - lo:end - lo] = ZERO_PAGE[:end - pos]
                pos = end

    def page(self, txn: Txn, value: bytes | None, p: int, domain: Domain | None) -> bytes:
        """4 KiB page ``p`` of what ``value`` reads as."""
        out = bytearray(L.PAGE_SIZE)
        self.fill(txn, value, memoryview(out), p * L.PAGE_SIZE, None, domain)
        return bytes(out)

    def check_open(self, what: str) -> None:
        if self.is_closed():
            raise Closed(f"the engine holding {what} is closed")


_libc: ctypes.CDLL | None = None
_trim_lock = threading.Lock()


#: glibc arenas a server keeps (``mallopt(M_ARENA_MAX)``). With one per thread, chunk buffers
#: that request threads allocated and the flushing thread freed stayed in their arenas:
#: ``serve``'s peak during a 2 GiB nbdcopy in was 464-899 MiB over 19 runs (6 over its goal,
#: 640 MiB); with 2, 492-571 MiB over 6 (README, benchmarks/bench_writepath.py memory)
SERVER_ARENAS = 2
_M_ARENA_MAX = -8


def _libc_handle() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = ctypes.CDLL(None)
    return _libc


def limit_arenas(arenas: int = SERVER_ARENAS) -> None:
    """Cap the heap arenas of this process (a long-running server: call it before it starts
    its request threads). Best effort; a no-op off glibc."""
    with _trim_lock:
        mallopt = getattr(_libc_handle(), "mallopt", None)
        if mallopt is not None:
            mallopt(_M_ARENA_MAX, arenas)


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps freed 64 KiB buffers in its arenas
    otherwise: a burst of writes would stay resident). Best effort; a no-op off glibc."""
    with _trim_lock:
        trim = getattr(_libc_handle(), "malloc_trim", None)
        if trim is not None:
            trim(0)
