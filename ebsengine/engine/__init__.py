"""The engine facade: volumes, snapshots and their AWS-style rules over the chunk store.

Every public method that changes records is one unit of work: it validates first, then
changes the store in one LMDB write transaction, so a refused request leaves the store
exactly as it was (DESIGN invariant 7). Services (NBD, the HTTP API, the CLI) call only this
module.

Several changes become one unit of work with :meth:`Engine.transaction`::

    with eng.transaction(flush=[a.id, b.id]) as tx:
        s1 = eng.create_snapshot(a.id, tx=tx)
        s2 = eng.create_snapshot(b.id, tx=tx)
        eng.service_put("app", "pair", [s1.id, s2.id], tx=tx)

Every record method (create/modify/delete/attach/detach volumes, create/copy/start/complete/
fail/delete snapshots, tags, ``service_get/put/items``, ``get_volume``/``get_snapshot``)
takes ``tx=``: given, it runs inside that unit (and sees its uncommitted changes); omitted,
it is a unit of its own. A unit is one LMDB write transaction: it commits when the ``with``
block ends, and an exception (a refused step included) aborts all of it, leaving the store
byte-identical. While it is open it holds the store's write lock, so no other change, flush
included, commits in between: the unit sees and freezes one state.

Snapshots in a unit: a volume's acknowledged writes may still sit in its write-back cache,
and a cache can only commit in a transaction of its own. So the volumes to snapshot are
named up front (``flush=``): their caches are flushed just before the unit begins (the
last time with their flush locks held until the unit's transaction is open: a flush commits
in several transactions when it is large, and none that begins later may commit some of
them before the unit's snapshots freeze), and :meth:`Engine.create_snapshot` with ``tx=``
refuses a volume not named. Each snapshot then
holds every write acknowledged before :meth:`Engine.transaction` was called and is a point
in time of its volume (all writes acknowledged before some instant while the unit opened,
none after); snapshots of several volumes freeze in the one commit, so they hold together
every write whose flush completed before it: crash-consistent with each other.

A unit belongs to the thread that opened it. On that thread, engine calls without ``tx=``
and device flushes (``Device.flush``, or a write that passes the dirty limit) would need a
second write transaction and are refused with IncorrectState (no nesting); reads, and
writes the cache takes, go on.
Bulk transfers (``import_image``, ``export``, ``put_snapshot_block``) are not part of units.
"""

from ..errors import EbsError
from .core import DEFAULT_DIRTY_LIMIT, Engine, default_store_path
from .domains import Staged
from .storecopy import CopyReport, copy_store
from .unit import Transaction

__all__ = ["DEFAULT_DIRTY_LIMIT", "CopyReport", "Engine", "EbsError", "Staged", "Transaction",
           "copy_store", "default_store_path"]
