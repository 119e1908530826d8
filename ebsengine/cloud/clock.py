"""The one clock every time-driven rule reads, and the scheduler that runs what falls due.

Two clocks, both plain callables returning epoch seconds (``Cloud(engine, clock=...)``
and ``AwsApp(clock=...)`` take either, and share the one object):

* :class:`WallClock` -- ``time.time()``. ``ebsengine serve`` runs due work from a
  background thread (:class:`SchedulerThread`).
* :class:`SimulatedClock` -- moves only when told: :meth:`~SimulatedClock.advance` /
  :meth:`~SimulatedClock.set`. Before either returns, everything that became due up to the
  new time runs, in time order, with the clock standing at each run's own time. Its
  position is kept in the engine's service space (``clock.sim``/``now``), written in the
  unit of work of each run and at the end of each move, so it survives a restart (a stored
  position wins over the start a new ``SimulatedClock`` is given).

:class:`Scheduler` merges the *sources* of timed work (the lifecycle policies of
:mod:`.dlm`; others can register): a source tells its next due time and runs what is due
at a time. ``Scheduler.run_due(until)`` is the one loop both clocks use.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ebsengine.engine import Engine, Transaction

NS_CLOCK = "clock.sim"
#: how long the background thread sleeps at most between looks (seconds)
WAKE_SECONDS = 5.0


def parse_instant(text: str | float | int) -> float:
    """Epoch seconds from ISO 8601 (``2025-01-01T00:00:00Z``; no zone means UTC) or a number.
    ValueError when it is neither."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


def format_instant(t: float) -> str:
    """``2025-01-01T00:00:00.000Z``."""
    d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


class Source(Protocol):
    """Timed work the scheduler runs (``Lifecycle`` of :mod:`.dlm`)."""

    def next_due(self) -> float | None:
        """The earliest time something is due (it may be in the past), or None."""
        ...

    def run(self, at: float) -> None:
        """Run everything due at or before ``at``; afterwards ``next_due()`` is later."""
        ...


class WallClock:
    """``time.time()``; what runs is run by :class:`SchedulerThread` (or ``run_due``)."""

    simulated = False

    def __call__(self) -> float:
        return time.time()

    def persist(self, tx: Transaction) -> None:
        return None


class SimulatedClock:
    """A clock that only moves when told (``advance(seconds)``, ``set(when)``), running
    what falls due on the way. ``start``: ISO 8601 or epoch seconds (default: now), used
    only when the store holds no position yet."""

    simulated = True

    def __init__(self, start: str | float | None = None, *, engine: Engine | None = None) -> None:
        self._now = time.time() if start is None else parse_instant(start)
        self._lock = threading.RLock()
        self._engine: Engine | None = None
        self._schedulers: list[Scheduler] = []
        if engine is not None:
            self.bind(engine)

    def __call__(self) -> float:
        return self._now

    def bind(self, engine: Engine, scheduler: Scheduler | None = None) -> None:
        """Keep the position in ``engine`` (load it if stored) and drive ``scheduler``."""
        if self._engine is not engine:
            self._engine = engine
            stored = engine.service_get(NS_CLOCK, "now")
            if stored is not None:
                self._now = float(stored)
        if scheduler is not None and scheduler not in self._schedulers:
            self._schedulers.append(scheduler)

    def persist(self, tx: Transaction) -> None:
        """Write the position in ``tx`` (a run's unit: the run and the time commit together)."""
        if self._engine is not None:
            self._engine.service_put(NS_CLOCK, "now", self._now, tx=tx)

    def advance(self, seconds: float) -> float:
        """Move forward ``seconds`` (>= 0), running what falls due; the new time."""
        try:
            seconds = float(seconds)
        except OverflowError:  # an int too large for a float
            raise ValueError("advance takes a finite number of seconds >= 0") from None
        if not seconds >= 0 or seconds == float("inf"):
            raise ValueError("advance takes a finite number of seconds >= 0")
        with self._lock:
            return self.set(self._now + seconds)

    def set(self, when: str | float) -> float:
        """Move to ``when`` (not before now), running what falls due; the new time."""
        target = parse_instant(when)
        try:  # a time the calendar (and every stamp made at it) can show, before anything runs
            format_instant(target)
        except (OverflowError, ValueError, OSError):
            raise ValueError(f"the simulated clock cannot stand at {when!r}: past the "
                             f"calendar (year 9999)") from None
        with self._lock:
            if target < self._now:
                raise ValueError(f"the simulated clock does not go back: it is "
                                 f"{format_instant(self._now)}, asked {format_instant(target)}")
            for sched in self._schedulers:
                sched.run_due(target)
            self._move(target)
            if self._engine is not None:
                with self._engine.transaction() as tx:
                    self.persist(tx)
            return self._now

    def _move(self, t: float) -> None:
        """Stand at ``t`` (for the scheduler: a due run happens at its own time)."""
        with self._lock:
            if t > self._now:
                self._now = t


Clock = Callable[[], float]


def store_clock(engine: Engine) -> Clock:
    """The clock a store was last served on: its simulated clock, standing at its stored
    position, when it has one (``serve --clock simulated``), else the wall clock. Offline
    readers (``ebsengine cost``) use it, so "now" is the time the store's records live in."""
    if engine.service_get(NS_CLOCK, "now") is not None:
        return SimulatedClock(engine=engine)
    return WallClock()


def bind_clock(clock: Clock, engine: Engine, scheduler: Scheduler) -> None:
    """Stamp ``engine``'s records with ``clock``; let it (if simulated) persist in ``engine``
    and drive ``scheduler``."""
    engine.use_clock(clock)
    if isinstance(clock, SimulatedClock):
        clock.bind(engine, scheduler)


def persist_clock(clock: Clock, tx: Transaction) -> None:
    """Write a simulated clock's position in ``tx``; nothing for the wall clock."""
    if isinstance(clock, SimulatedClock):
        clock.persist(tx)


def is_simulated(clock: Clock) -> bool:
    return isinstance(clock, SimulatedClock)


class Scheduler:
    """Runs the due work of its sources in time order (``run_due``)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sources: list[Source] = []
        self._lock = threading.RLock()

    def add(self, source: Source) -> None:
        self.sources.append(source)

    def next_due(self) -> float | None:
        times = [t for t in (s.next_due() for s in self.sources) if t is not None]
        return min(times) if times else None

    def run_due(self, until: float | None = None) -> int:
        """Run, earliest first, everything due at or before ``until`` (default: now). On a
        simulated clock the clock stands at each run's time while it runs. Returns how many
        runs happened."""
        with self._lock:
            if until is None:
                until = self.clock()
            n = 0
            last: tuple[int, float] | None = None
            while True:
                best: tuple[float, int] | None = None
                for i, src in enumerate(self.sources):
                    t = src.next_due()
                    if t is not None and t <= until and (best is None or t < best[0]):
                        best = (t, i)
                if best is None:
                    return n
                t, i = best
                if last == (i, t):  # a source that does not move on: never spin
                    raise RuntimeError(f"scheduler source {self.sources[i]!r} stays due at {t}")
                last = (i, t)
                if isinstance(self.clock, SimulatedClock):
                    self.clock._move(t)
                self.sources[i].run(t)
                n += 1


class SchedulerThread:
    """The background runner of due work on the wall clock, as a serve-loop service:
    wakes at the next due time or every ``WAKE_SECONDS``, and stops with the loop."""

    label = "the lifecycle scheduler"

    def __init__(self, scheduler: Scheduler, wake: float = WAKE_SECONDS,
                 on_error: Callable[[BaseException], Any] | None = None) -> None:
        self.scheduler = scheduler
        self.wake = wake
        self.on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def addresses(self) -> list[str]:
        return []

    def start(self) -> SchedulerThread:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="dlm-scheduler", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scheduler.run_due()
                nxt = self.scheduler.next_due()
            except Exception as exc:  # noqa: BLE001 - one bad run must not end the thread
                if self.on_error is not None:
                    self.on_error(exc)
                nxt = None
            now = self.scheduler.clock()
            delay = self.wake if nxt is None else min(self.wake, max(0.0, nxt - now))
            self._stop.wait(max(delay, 0.05))

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self._thread = None


__all__ = ["NS_CLOCK", "Clock", "Scheduler", "SchedulerThread", "SimulatedClock", "Source",
           "WallClock", "bind_clock", "format_instant", "is_simulated", "parse_instant",
           "persist_clock"]
