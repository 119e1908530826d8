"""The folder: merges patches (partial-chunk writes, see ``layout.py``) into whole chunks.

A fold reads a patch's base and pages, fingerprints and compresses the result outside any
write transaction, then in one transaction re-checks that the entry still holds the same
patch and replaces it *in place* (same map key, same generation) with the chunk key of its
content. Every point in time reads exactly what it read before, so frozen (snapshot) entries
are folded too. Entries with many pages go first: one compression pays for all of them.

The background thread folds when this process has been quiet for a while (no read, write
or flush), and, while it is busy, one round per interval of patches of at least
``BUSY_PAGES`` pages only, so folding
never costs a 64 KiB decompression + compression per random 4 KiB write under load, nor
takes the CPU from readers.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

from .. import layout as L
from ..errors import EbsError, KeyUnavailable
from ..storage.envelope import encode_many
from .context import BlockContext

SCAN = 4096  # patches looked at per round
log = logging.getLogger("ebsengine.folder")
BATCH = 64  # patches folded per write transaction
BUSY_PAGES = 8
QUIET = 5.0  # seconds without I/O before every patch is folded
INTERVAL = 1.0


class Folder:
    def __init__(self, ctx: BlockContext) -> None:
        self.ctx = ctx
        self.lock = ctx.fold_lock  # one fold round at a time in this process (see BlockContext)
        self._resume = b""  # where the next scan of ``pages`` starts
        self._skip: set[bytes] = set()  # patches reading as zeros: no chunk to fold into
        #: patches of domains whose key this process did not hold (when the keyring had
        #: ``_locked_at`` domains): tried again once another key is unlocked
        self._locked: set[bytes] = set()
        self._locked_at = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.folded = 0

    # --- folding ----------------------------------------------------------------------------

    def fold_all(self) -> int:
        """Fold every patch of the store now; returns how many were folded."""
        total = 0
        self._resume = b""
        while True:
            n, more = self.fold_round(min_pages=1, scan=None)
            total += n
            if not n and not more:
                return total

    def fold_round(self, min_pages: int = 1, scan: int | None = SCAN) -> tuple[int, bool]:
        """Fold up to :data:`BATCH` patches with at least ``min_pages`` pages, chosen among
        ``scan`` patches (all with None) from where the last round stopped. Returns (folded,
        whether patches with enough pages are left)."""
        ctx = self.ctx
        with self.lock:
            if len(ctx.chunks.keys) != self._locked_at:
                self._locked.clear()
                self._locked_at = len(ctx.chunks.keys)
            with ctx.store.read() as txn:
                cands: list[tuple[int, bytes, bytes]] = []
                cur = txn.cursor(db=ctx.pages_db)
                found = cur.set_range(self._resume) if self._resume else cur.first()
                if not found and self._resume:
                    found = cur.first()
                seen = 0
                wrapped = False
                while found:
                    mk = cur.key()
                    if len(mk) != L.MAP_KEY_SIZE:  # a later layer's pages: its patch is at mk
                        found = cur.next()
                        continue
                    value = txn.get(mk, db=ctx.maps.maps)
                    if value is not None and L.is_patch(value) and value not in self._skip \
                            and value not in self._locked:
                        n = L.parse_patch(value)[0].bit_count()
                        if n >= min_pages:
                            cands.append((n, mk, value))
                    seen += 1
                    found = cur.next()
                    if scan is not None and seen >= scan:
                        break
                    if not found and self._resume and not wrapped and scan is not None:
                        wrapped, found = True, cur.first()
                self._resume = cur.key() if found else b""
                cands.sort(key=lambda c: -c[0])
                more = len(cands) > BATCH
                work = []
                raws = ctx.prefetch(txn, [value for _, _, value in cands[:BATCH]])
                for _, mk, value in cands[:BATCH]:
                    try:  # a patch of a domain whose key is not unlocked here stays a patch
                        domain = ctx.lineage_domain(txn, L.parse_map_key(mk)[0])
                        data = ctx.content(txn, value, domain, raws)
                        fp = ctx.chunks.fingerprints(data, domain)[0]
                    except KeyUnavailable:
                        if len(self._locked) > 65536:
                            self._locked.clear()
                        self._locked.add(value)
                        continue
                    if fp is None:
                        if len(self._skip) > 65536:
                            self._skip.clear()
                        self._skip.add(value)
                        continue
                    work.append((mk, value, fp, data, ctx.chunks.maybe_stored(txn, fp), domain))
            if not work:
                return 0, more
            encoded: dict[bytes, bytes] = {}
            for domain in {w[5] for w in work}:  # one batch per domain (nearly always one)
                todo = [w for w in work if not w[4] and w[5] is domain]
                encoded.update(zip((w[0] for w in todo), encode_many(
                    [w[3] for w in todo], ctx.chunks.level, ctx.pool, domain,
                    [w[2] for w in todo]), strict=True))
            n = 0
            with ctx.store.write() as txn:
                for mk, value, fp, data, _, domain in work:
                    if txn.get(mk, db=ctx.maps.maps) != value:
                        continue  # rewritten or dropped meanwhile: nothing to do
                    key = ctx.chunks.put(txn, fp, data, encoded.get(mk), domain)
                    ctx.maps.release(txn, mk, value)
                    txn.put(mk, key, db=ctx.maps.maps)
                    n += 1
            self.folded += n
            return n, more

    # --- background thread ------------------------------------------------------------------

    def start(self, quiet: float | None = None, interval: float | None = None) -> None:
        """Fold in a background thread (see the module doc); defaults :data:`QUIET`,
        :data:`INTERVAL`."""
        quiet = QUIET if quiet is None else quiet
        interval = INTERVAL if interval is None else interval
        ref = weakref.ref(self)
        stop = self._stop

        def loop() -> None:
            while not stop.wait(interval):
                me = ref()
                if me is None or me.ctx.is_closed():
                    return
                try:
                    while not stop.is_set():  # look again after every round: I/O comes first
                        busy = time.monotonic() - me.ctx.last_io < quiet
                        n, more = me.fold_round(min_pages=BUSY_PAGES if busy else 1)
                        if busy or not (n and more):
                            break  # under I/O: one round per interval (a few % of a core)
                except EbsError as exc:  # a full store, a store closed under us: later
                    log.debug("folder: %s", exc)
                except Exception:  # never let the folder kill anything
                    log.exception("folder round failed")
                del me

        self._thread = threading.Thread(target=loop, name="ebsengine-folder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
