"""When a lifecycle schedule creates: ``Interval``/``IntervalUnit``/``Times`` and cron.

Pure functions over epoch seconds (UTC), used by :mod:`.dlm`:

* :func:`interval_slots` -- every ``Interval`` hours (1, 2, 3, 4, 6, 8, 12 or 24, so each day
  repeats) from the ``Times`` anchor ``hh:mm`` (default ``00:00``). AWS starts "within the
  hour following" that time; here the run is exactly at it.
* :class:`Cron` -- EventBridge's six fields ``cron(Minutes Hours Day-of-month Month
  Day-of-week Year)``: ``*``, ``?``, numbers, ranges ``a-b``, lists ``a,b``, steps ``a/n``
  and ``*/n``, month (JAN-DEC) and weekday (SUN-SAT = 1-7) names. ``L``, ``W`` and ``#`` are
  refused (ValueError).
"""

from __future__ import annotations

import calendar
import datetime as _dt
import re

VALID_INTERVALS = (1, 2, 3, 4, 6, 8, 12, 24)
_UTC = _dt.timezone.utc


def parse_time_of_day(text: str) -> int:
    """Seconds after midnight of ``hh:mm``; ValueError otherwise."""
    m = re.fullmatch(r"(0[0-9]|1[0-9]|2[0-3]):([0-5][0-9])", text or "")
    if not m:
        raise ValueError(f"Times must be hh:mm (UTC), not {text!r}")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60


def next_interval_slot(after: float, interval_hours: int, anchor_seconds: int = 0) -> float:
    """The first slot strictly after ``after``: ``anchor + k * interval`` (any day)."""
    period = interval_hours * 3600
    k = (after - anchor_seconds) // period + 1
    return float(anchor_seconds + k * period)


_MONTHS = {m: i for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1)}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"], 1)}


def _field(text: str, lo: int, hi: int, names: dict[str, int] | None = None) -> set[int] | None:
    """The values a cron field allows; None for ``*``/``?`` (anything)."""
    if text in ("*", "?"):
        return None
    out: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"bad step in cron field {text!r}")
            step = int(step_text)

        def num(s: str) -> int:
            up = s.upper()
            if names and up in names:
                return names[up]
            if not s.isdigit():
                raise ValueError(f"unsupported cron value {s!r} in {text!r}")
            return int(s)

        if part in ("*", "?"):
            a, b = lo, hi
        elif "-" in part:
            x, y = part.split("-", 1)
            a, b = num(x), num(y)
        else:
            a = num(part)
            b = hi if step > 1 else a
        if not (lo <= a <= hi and lo <= b <= hi) or a > b:
            raise ValueError(f"cron field {text!r} is outside {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return out


class Cron:
    """A parsed ``cron(...)`` expression; :meth:`next_after` gives its next time."""

    def __init__(self, expression: str) -> None:
        m = re.fullmatch(r"cron\((.*)\)", (expression or "").strip())
        if not m:
            raise ValueError(f"a cron expression is cron(...), not {expression!r}")
        parts = m.group(1).split()
        if len(parts) != 6:
            raise ValueError("a cron expression has six fields: minutes hours day-of-month "
                             "month day-of-week year")
        minutes, hours, dom, month, dow, year = parts
        if dom != "?" and dow != "?":
            raise ValueError("one of day-of-month and day-of-week must be '?'")
        self.minutes = sorted(_field(minutes, 0, 59) or range(60))
        self.hours = sorted(_field(hours, 0, 23) or range(24))
        self.dom = _field(dom, 1, 31)
        self.months = _field(month, 1, 12, _MONTHS)
        self.dow = _field(dow, 1, 7, _DAYS)
        self.years = _field(year, 1970, 2199)
        self.expression = expression

    def _day_ok(self, d: _dt.date) -> bool:
        if self.years is not None and d.year not in self.years:
            return False
        if self.months is not None and d.month not in self.months:
            return False
        if self.dom is not None and d.day not in self.dom:
            return False
        # EventBridge: 1 = Sunday ... 7 = Saturday; isoweekday: Monday 1 ... Sunday 7
        return self.dow is None or (d.isoweekday() % 7 + 1) in self.dow

    def next_after(self, after: float, horizon_days: int = 366 * 5) -> float | None:
        """The first time strictly after ``after`` (None within ``horizon_days``)."""
        start = _dt.datetime.fromtimestamp(after, _UTC)
        day = start.date()
        for _ in range(horizon_days + 1):
            if self._day_ok(day):
                base = calendar.timegm(day.timetuple())
                for h in self.hours:
                    for mi in self.minutes:
                        t = float(base + h * 3600 + mi * 60)
                        if t > after:
                            return t
            day += _dt.timedelta(days=1)
        return None

    def check_interval(self, now: float, min_seconds: int = 3600) -> None:
        """ValueError unless runs are at least ``min_seconds`` apart and one happens within
        a year (AWS: "the schedule interval must be between 1 hour and 1 year")."""
        t = self.next_after(now, horizon_days=366)
        if t is None:
            raise ValueError("the cron expression does not run within a year")
        for _ in range(48):
            nxt = self.next_after(t, horizon_days=366)
            if nxt is None:
                return
            if nxt - t < min_seconds:
                raise ValueError("the cron expression runs more often than once an hour")
            t = nxt


def add_retention(t: float, interval: int, unit: str) -> float:
    """``t`` plus an age-retention period (DAYS, WEEKS, calendar MONTHS, YEARS)."""
    if unit == "DAYS":
        return t + interval * 86400.0
    if unit == "WEEKS":
        return t + interval * 7 * 86400.0
    d = _dt.datetime.fromtimestamp(t, _UTC)
    months = interval * (12 if unit == "YEARS" else 1)
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return d.replace(year=year, month=month, day=day).timestamp()


__all__ = ["VALID_INTERVALS", "Cron", "add_retention", "next_interval_slot", "parse_time_of_day"]
