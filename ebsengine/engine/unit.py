"""The unit of work's handle (:class:`Transaction`) and what the engine's concern modules
need to run in one (:class:`Units`). The unit itself is opened by
:meth:`ebsengine.engine.Engine.transaction`; the package docstring describes it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from ..errors import IncorrectState, InvalidParameter
from ..storage.base import Txn


class Transaction:
    """One unit of work of an :class:`Engine` (see :mod:`ebsengine.engine`): made by
    :meth:`Engine.transaction`, passed as ``tx=`` to the engine's record methods.

    ``flushed``: the volumes whose caches were flushed before the unit began (the ones
    :meth:`Engine.create_snapshot` may snapshot in it). ``now``: the unit's time, the start
    time of every snapshot it takes (one point in time, one timestamp).
    """

    def __init__(self, engine: object, txn: Txn, flushed: frozenset[str]) -> None:
        self._engine = engine
        self._txn = txn
        self.flushed = flushed
        self.now = time.time()
        self._thread = threading.get_ident()
        self._open = True
        self._grows = False   # something was added: the commit must leave the deletion reserve
        self._freed = False   # something was deleted: free space may need to be made usable
        self._after: list[Callable[[], None]] = []
        self._releases: list[Callable[[], None]] = []  # claims held until the unit ends

    @property
    def open(self) -> bool:
        """True until the unit has committed or aborted."""
        return self._open

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the unit has committed (not at all if it aborts)."""
        self._after.append(fn)

    def hold(self, release: Callable[[], None] | None) -> None:
        """Keep a claim (a volume's lease: ``VolumeCaches.claim``) until the unit ends,
        committed or not; ``release`` ends it."""
        if release is not None:
            self._releases.append(release)

    def _use(self, engine: object) -> Txn:
        if engine is not self._engine:
            raise InvalidParameter("This unit of work belongs to another engine.")
        if not self._open:
            raise IncorrectState("This unit of work has already ended.")
        if threading.get_ident() != self._thread:
            raise IncorrectState("A unit of work can only be used on the thread that opened it.")
        return self._txn


@dataclass(frozen=True)
class Units:
    """The engine's unit-of-work entry points, handed to the concern modules.

    ``unit(tx, grows=, frees=)``: the caller's unit ``tx``, else one of its own, as
    ``(Transaction, Txn)``; ``reading(tx)``: a read transaction, or the unit's own;
    ``no_unit(what)``: refuse work that needs a write transaction of its own on a thread
    inside a unit; ``clock()``: the time to stamp records with.
    """

    unit: Callable[..., AbstractContextManager[tuple[Transaction, Txn]]]
    reading: Callable[[Transaction | None], AbstractContextManager[Txn]]
    no_unit: Callable[[str], None]
    #: the time records are stamped with (``Engine.use_clock``; the wall clock by default)
    clock: Callable[[], float] = time.time
