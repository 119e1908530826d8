"""Cost Explorer's GetCostAndUsage over the cost meter (:mod:`ebsengine.cloud.meter`).

What is answered: ``TimePeriod`` (``Start`` inclusive, ``End`` exclusive; ``YYYY-MM-DD``, or
``YYYY-MM-DDThh:mm:ssZ`` with HOURLY), ``Granularity`` DAILY | MONTHLY | HOURLY,
``Metrics`` UnblendedCost, BlendedCost, AmortizedCost, NetUnblendedCost, NetAmortizedCost
(all equal here: list prices, no discounts or credits) and UsageQuantity, ``GroupBy`` up to
two of DIMENSION ``SERVICE`` / ``USAGE_TYPE`` / ``REGION`` and TAG ``<key>`` (group keys
``<key>$<value>``, ``<key>$`` when untagged), and ``Filter`` expressions of Dimensions
(those three keys) and Tags with And / Or / Not. Everything comes in one page. The report
first brings the ledger up to date (:meth:`Meter.reconcile`, its own unit of work).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any, ClassVar

from ebsengine.cloud import Cloud
from ebsengine.cloud.meter import GRANULARITIES, Line, buckets

from .errors import ApiError
from .store import Context

COST_METRICS = ("UnblendedCost", "BlendedCost", "AmortizedCost", "NetUnblendedCost",
                "NetAmortizedCost")
METRICS = (*COST_METRICS, "UsageQuantity")
DIMENSIONS = {"SERVICE": "service", "USAGE_TYPE": "usage_type", "REGION": "region"}


def _invalid(message: str) -> ApiError:
    return ApiError("ValidationException", message)


def parse_day(text: str, hourly: bool) -> float:
    """A TimePeriod bound as epoch seconds (UTC)."""
    forms = ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d") if hourly else ("%Y-%m-%d",)
    for form in forms:
        try:
            d = _dt.datetime.strptime(text, form)
        except ValueError:
            continue
        return d.replace(tzinfo=_dt.timezone.utc).timestamp()
    raise _invalid(f"Invalid date format: {text!r}; expected "
                   f"{'YYYY-MM-DDThh:mm:ssZ or ' if hourly else ''}YYYY-MM-DD")


def render_day(t: float, hourly: bool) -> str:
    d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%SZ" if hourly else "%Y-%m-%d")


def amount(x: float) -> str:
    """CE's decimal string (up to 10 places, no float noise)."""
    text = f"{x:.10f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _matches(expr: Mapping[str, Any], line: Line) -> bool:
    if "And" in expr:
        return all(_matches(e, line) for e in expr["And"])
    if "Or" in expr:
        return any(_matches(e, line) for e in expr["Or"])
    if "Not" in expr:
        return not _matches(expr["Not"], line)
    if "Dimensions" in expr:
        d = expr["Dimensions"]
        attr = DIMENSIONS.get(d.get("Key", ""))
        if attr is None:
            raise _invalid(f"Dimension {d.get('Key')} is not supported here; use "
                           f"{', '.join(DIMENSIONS)}")
        return str(getattr(line, attr)) in (d.get("Values") or [])
    if "Tags" in expr:
        t = expr["Tags"]
        value = line.tags.get(t.get("Key", ""))
        values = t.get("Values") or []
        if not values:  # "has the tag key"
            return value is not None
        return (value or "") in values
    if "CostCategories" in expr:
        raise _invalid("Cost categories are not supported here")
    raise _invalid("The filter expression is empty")


def check_filter(expr: Mapping[str, Any]) -> None:
    """Refuse what :func:`_matches` would refuse, on every branch (before anything runs)."""
    if "And" in expr or "Or" in expr:
        for e in expr.get("And") or expr.get("Or") or []:
            check_filter(e)
    elif "Not" in expr:
        check_filter(expr["Not"])
    elif "Dimensions" in expr:
        key = expr["Dimensions"].get("Key", "")
        if key not in DIMENSIONS:
            raise _invalid(f"Dimension {key} is not supported here; use "
                           f"{', '.join(DIMENSIONS)}")
    elif "CostCategories" in expr:
        raise _invalid("Cost categories are not supported here")
    elif "Tags" not in expr:
        raise _invalid("The filter expression is empty")


#: the longest period of one report: 14 days at HOURLY (as AWS), 10 years otherwise
HOURLY_SPAN = 14 * 86400
MAX_SPAN = 3660 * 86400


class CeModel:
    """The Cost Explorer operations this endpoint answers (``AWSInsightsIndexService.*``)."""

    ACTIONS: ClassVar[dict[str, str]] = {"GetCostAndUsage": "get_cost_and_usage"}

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    def supports(self, operation: str) -> bool:
        return operation in self.ACTIONS

    def call(self, ctx: Context, operation: str, params: dict[str, Any]) -> Mapping[str, Any]:
        return getattr(self, self.ACTIONS[operation])(ctx, params)  # type: ignore[no-any-return]

    def get_cost_and_usage(self, ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        gran = p["Granularity"]
        if gran not in GRANULARITIES:
            raise _invalid(f"Granularity {gran} is not valid; use {', '.join(GRANULARITIES)}")
        hourly = gran == "HOURLY"
        start = parse_day(p["TimePeriod"]["Start"], hourly)
        end = parse_day(p["TimePeriod"]["End"], hourly)
        if end <= start:
            raise _invalid("Start date (and hour) should be before end date (and hour)")
        if hourly and end - start > HOURLY_SPAN:  # AWS keeps hourly data for 14 days
            raise _invalid("HOURLY granularity is only available for up to 14 days")
        if end - start > MAX_SPAN:  # one report's buckets stay bounded
            raise _invalid("The time period may span at most 10 years")
        metrics = list(p["Metrics"])
        if not metrics:
            raise _invalid("Metrics must not be empty")
        for m in metrics:
            if m not in METRICS:
                raise _invalid(f"Metric {m} is not supported here; use {', '.join(METRICS)}")
        groups = list(p.get("GroupBy") or [])
        if len(groups) > 2:
            raise _invalid("You can group by up to two dimensions or tags")
        for g in groups:
            if g.get("Type") == "DIMENSION" and g.get("Key") not in DIMENSIONS:
                raise _invalid(f"Group by dimension {g.get('Key')} is not supported here; use "
                               f"{', '.join(DIMENSIONS)}")
            if g.get("Type") not in ("DIMENSION", "TAG") or not g.get("Key"):
                raise _invalid("GroupBy needs Type DIMENSION or TAG and a Key")
        expr = p.get("Filter")
        if expr is not None:
            check_filter(expr)
        meter = self.cloud.meter
        meter.reconcile()  # validated: only now may the report write
        now = self.cloud.now()
        account = ctx.account_id  # each account sees its own bill
        lines = meter.lines(start, end, gran, now=now,
                            keep=lambda ln: ln.account == account and (
                                expr is None or _matches(expr, ln)))
        spans = buckets(start, end, gran)
        periods: dict[float, list[Line]] = {a: [] for a, _ in spans}
        for ln in lines:
            periods[ln.start].append(ln)
        results = []
        for a, b in spans:
            chunk = periods[a]
            row: dict[str, Any] = {"TimePeriod": {"Start": render_day(a, hourly),
                                                  "End": render_day(b, hourly)},
                                   "Estimated": b > now}
            if groups:
                by: dict[tuple[str, ...], list[Line]] = {}
                for ln in chunk:
                    by.setdefault(tuple(self._key(g, ln) for g in groups), []).append(ln)
                row["Total"] = {}
                row["Groups"] = [{"Keys": list(k), "Metrics": self._metrics(metrics, v)}
                                 for k, v in sorted(by.items())]
            else:
                row["Total"] = self._metrics(metrics, chunk)
                row["Groups"] = []
            results.append(row)
        return {"GroupDefinitions": groups or None, "ResultsByTime": results,
                "DimensionValueAttributes": []}

    @staticmethod
    def _key(g: Mapping[str, Any], ln: Line) -> str:
        if g["Type"] == "TAG":
            return f"{g['Key']}${ln.tags.get(g['Key'], '')}"
        return str(getattr(ln, DIMENSIONS[g["Key"]]))

    def _metrics(self, metrics: list[str], chunk: list[Line]) -> dict[str, Any]:
        currency = self.cloud.meter.prices.currency
        cost = sum(ln.cost for ln in chunk)
        units = {ln.unit for ln in chunk}
        out: dict[str, Any] = {}
        for m in metrics:
            if m == "UsageQuantity":
                out[m] = {"Amount": amount(sum(ln.quantity for ln in chunk)),
                          "Unit": units.pop() if len(units) == 1 else "N/A"}
            else:
                out[m] = {"Amount": amount(cost), "Unit": currency}
        return out


__all__ = ["METRICS", "CeModel", "amount", "parse_day", "render_day"]
