"""The one clock: SimulatedClock moves only when told, runs what falls due in time order,
and keeps its position in the store; schedules (interval, cron) and retention arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from ebsengine import Engine
from ebsengine.cloud import Cloud, SimulatedClock
from ebsengine.cloud.clock import Scheduler, format_instant, parse_instant
from ebsengine.cloud.schedule import Cron, add_retention, next_interval_slot

T0 = parse_instant("2025-01-01T00:00:00Z")


class Ticker:
    """A source due every ``period`` seconds from ``start``, recording the clock at each run."""

    def __init__(self, name: str, clock: SimulatedClock, start: float, period: float,
                 log: list[Any]) -> None:
        self.name, self.clock, self.next, self.period, self.log = name, clock, start, period, log

    def next_due(self) -> float | None:
        return self.next

    def run(self, at: float) -> None:
        self.log.append((self.name, at, self.clock()))
        self.next = at + self.period


def test_simulated_clock_moves_only_when_told_and_never_back() -> None:
    clock = SimulatedClock("2025-01-01T00:00:00Z")
    assert clock() == T0 and clock() == T0
    assert clock.advance(90) == T0 + 90
    assert clock.set("2025-01-02T00:00:00Z") == T0 + 86400
    with pytest.raises(ValueError):
        clock.set("2024-12-31T00:00:00Z")
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert clock() == T0 + 86400
    assert format_instant(clock()) == "2025-01-02T00:00:00.000Z"


def test_due_work_runs_in_time_order_at_its_own_time() -> None:
    clock = SimulatedClock(T0)
    sched = Scheduler(clock)
    log: list[Any] = []
    sched.add(Ticker("a", clock, T0 + 30, 100, log))
    sched.add(Ticker("b", clock, T0 + 50, 60, log))
    clock.bind(Engine("memory://"), sched)
    clock.advance(200)
    assert log == [("a", T0 + 30, T0 + 30), ("b", T0 + 50, T0 + 50), ("b", T0 + 110, T0 + 110),
                   ("a", T0 + 130, T0 + 130), ("b", T0 + 170, T0 + 170)]
    assert clock() == T0 + 200


def test_position_survives_a_restart(tmp_path: Any) -> None:
    path = str(tmp_path / "store")
    with Engine(path) as eng:
        clock = SimulatedClock(T0)
        Cloud(eng, clock=clock)
        clock.advance(3600)
    with Engine(path) as eng:
        again = SimulatedClock("2030-01-01T00:00:00Z")  # the store's position wins
        Cloud(eng, clock=again)
        assert again() == T0 + 3600


def test_interval_slots_and_cron() -> None:
    nine = 9 * 3600
    assert next_interval_slot(T0, 12, nine) == T0 + nine
    assert next_interval_slot(T0 + nine, 12, nine) == T0 + nine + 12 * 3600
    c = Cron("cron(30 6 ? * MON-FRI *)")  # 2025-01-01 is a Wednesday
    assert c.next_after(T0) == T0 + 6 * 3600 + 1800
    friday = T0 + 2 * 86400 + 6 * 3600 + 1800
    assert c.next_after(friday) == friday + 3 * 86400  # the weekend is skipped
    assert Cron("cron(0 */6 * * ? *)").next_after(T0) == T0 + 6 * 3600
    for bad in ("cron(0 12 * * MON *)", "cron(0 12 L * ? *)", "cron(0 12 * *)", "rate(1 hour)"):
        with pytest.raises(ValueError):
            Cron(bad)
    with pytest.raises(ValueError):
        Cron("cron(0/30 * * * ? *)").check_interval(T0)  # more often than hourly


def test_retention_periods() -> None:
    assert add_retention(T0, 2, "DAYS") == T0 + 2 * 86400
    assert add_retention(T0, 1, "WEEKS") == T0 + 7 * 86400
    assert add_retention(parse_instant("2025-01-31T00:00:00Z"), 1, "MONTHS") == \
        parse_instant("2025-02-28T00:00:00Z")
    assert add_retention(T0, 1, "YEARS") == parse_instant("2026-01-01T00:00:00Z")
