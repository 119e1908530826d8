"""The usage ledger: what this cloud would bill, metered from the state changes themselves.

Each billable resource has one ledger record (service namespace ``meter.ledger``, key
``<kind>:<id>``): its region, its latest tags, and ``entries``, a list of ``[t, attrs]``
where ``attrs`` is the billable configuration from time ``t`` on (``None``: not billed from
then). Entries are written with ``tx=`` in the very unit of work that changes the state,
so a change and its metering commit together or not at all. Times are the cloud's clock.

=============  ============================================  ==================================
kind           attrs                                         written by
=============  ============================================  ==================================
``instance``   ``{"type"}`` while running                    every Instance record write
``eni``        ``{"ip"}`` while it holds an auto-assigned    every NetworkInterface write
               public IPv4 address
``eip``        ``{"in_use"}`` while allocated (in use =       every Address (Elastic IP) write
               associated with an interface)
``volume``     ``{"type", "size", "iops", "throughput"}``    :meth:`Meter.volume` at each site
                                                             that creates, modifies or deletes
``snapshot``   ``{"bytes"}``: its own stored bytes           :meth:`Meter.snapshot` (existence,
                                                             in the unit) + :meth:`Meter.sample`
=============  ============================================  ==================================

Rules, as AWS bills them: an instance is billed while ``running`` only (a start's
``pending`` matures after ``CloudConfig.boot_seconds``: its entry is dated then; a stop or
termination before that drops it), at least ``instance_minimum_seconds`` (60) per start;
volumes are billed whatever the instance state, from creation to deletion, for their
provisioned size, gp3 IOPS/throughput above the free baseline and io1/io2 IOPS (a
modification bills the new configuration from the ModifyVolume call); snapshots for the
stored bytes they hold themselves (standard tier, incremental: ``Usage.stored_bytes``, the
blocks changed since the previous snapshot, as AWS bills them; a deleted snapshot's blocks
still needed pass to its successor, whose count grows at the next sample). Not
``Usage.unique_bytes`` (what deleting it would free): that is 0 for the newest snapshot of a
volume that has not overwritten its blocks, which AWS does bill; public IPv4 addresses per
hour, in use or idle.

Snapshots: a snapshot's stored bytes change when its neighbours go, and the engine can
only count them outside a unit, so the unit that makes or deletes a snapshot records its
existence (exact times) and :meth:`Meter.sample` - run right after that unit commits and
at every report - fills in and updates the byte counts. The approximation: a count holds
from one sample to the next, and a new snapshot's first count is dated at its creation.

Volumes and snapshots changed outside the cloud/AWS paths (the library, the CLI, NBD
writes) are caught by :meth:`Meter.reconcile` (run by every report):
a difference from the ledger is dated at the reconcile, so such a change is billed from
the next report on (documented in the README).

EBS direct API calls are counted in memory and added to ``meter.api`` (key
``<region>|<hour>|<op>``) at most a minute later, at every report and when the server
stops: a crash loses at most that minute of calls (the reads have no unit to ride in).
"""

from __future__ import annotations

import datetime as _dt
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ebsengine import errors
from ebsengine.engine import Transaction

from .pricing import VOLUME_SUFFIX, Prices, usage_type
from .scope import (
    DEFAULT_ACCOUNT,
    region_of_zone,
    snapshot_owner,
    snapshot_region,
    volume_owner,
)

if TYPE_CHECKING:
    from .core import Cloud
    from .tables import CloudRecord

NS_LEDGER = "meter.ledger"
NS_API = "meter.api"
#: the service namespaces of the meter (wiped by ``Cloud.reset``)
METER_NAMESPACES = (NS_LEDGER, NS_API)
GIB = 1024 ** 3
#: seconds between two flushes of the in-memory EBS direct API counters
API_FLUSH_SECONDS = 60.0
GRANULARITIES = ("HOURLY", "DAILY", "MONTHLY")


@dataclass(frozen=True)
class Line:
    """One usage type of one resource in one time bucket: its quantity and cost."""

    start: float
    end: float
    region: str
    service: str
    usage_type: str
    resource_id: str
    quantity: float
    unit: str
    cost: float
    tags: dict[str, str] = field(default_factory=dict)
    #: the account billed (the resource's owner; Cost Explorer shows each account its own)
    account: str = DEFAULT_ACCOUNT


@dataclass(frozen=True)
class _Piece:
    """A constant rate of one usage type over ``[start, end)`` (``end == start`` and
    ``count`` for a counted quantity)."""

    region: str
    base: str
    resource_id: str
    start: float
    end: float
    per_second: float = 0.0
    count: float = 0.0
    account: str = DEFAULT_ACCOUNT


def buckets(since: float, until: float, granularity: str) -> list[tuple[float, float]]:
    """``[start, end)`` periods of ``granularity`` (UTC hours, days or calendar months)
    covering ``[since, until)``, clipped to it."""
    if granularity not in GRANULARITIES:
        raise errors.InvalidParameter(f"granularity must be one of {', '.join(GRANULARITIES)}")
    out: list[tuple[float, float]] = []
    t = since
    while t < until:
        d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
        if granularity == "HOURLY":
            nxt = d.replace(minute=0, second=0, microsecond=0) + _dt.timedelta(hours=1)
        elif granularity == "DAILY":
            nxt = d.replace(hour=0, minute=0, second=0, microsecond=0) + _dt.timedelta(days=1)
        else:
            first = d.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            nxt = (first + _dt.timedelta(days=32)).replace(day=1)
        end = min(nxt.timestamp(), until)
        out.append((t, end))
        t = end
    return out


class Meter:
    """The ledger's writer (hooks called in the units that change state) and reader."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self._prices: Prices | None = None
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int, str, str], int] = {}
        self._last_flush: float | None = None
        #: per open unit of work: (snapshot ids, volume ids) to sample once it commits; weak,
        #: so a unit that aborts leaves nothing behind (an id() key outlived it and could be
        #: found again by a later unit given the same id)
        self._sampling: weakref.WeakKeyDictionary[Transaction, tuple[set[str], set[str]]] = \
            weakref.WeakKeyDictionary()

    @property
    def engine(self) -> Any:
        return self.cloud.engine

    @property
    def prices(self) -> Prices:
        if self._prices is None:
            self._prices = Prices.load(self.cloud.config.prices_file)
        return self._prices

    @prices.setter
    def prices(self, value: Prices) -> None:
        self._prices = value

    # --- the ledger ------------------------------------------------------------------------

    def _doc(self, kind: str, rid: str, region: str,
             tx: Transaction | None) -> dict[str, Any]:
        doc = self.engine.service_get(NS_LEDGER, f"{kind}:{rid}", tx=tx)
        if doc is None:
            doc = {"kind": kind, "id": rid, "region": region, "tags": {}, "entries": []}
        return dict(doc)

    def record(self, tx: Transaction, kind: str, rid: str, region: str,
               attrs: dict[str, Any] | None, t: float | None = None,
               tags: dict[str, str] | None = None, account: str | None = None) -> None:
        """Bill ``rid`` (of ``account``, kept from the first record that names it) by
        ``attrs`` from ``t`` (default now) on; ``None`` stops billing it (and drops a start
        dated after ``t``: an instance stopped before it ran)."""
        now = self.cloud.now() if t is None else t
        doc = self._doc(kind, rid, region, tx)
        if account is not None and doc.get("account") is None:
            doc["account"] = account
        entries: list[list[Any]] = [list(e) for e in doc["entries"]]
        before = (list(map(list, doc["entries"])), doc.get("tags"))
        if attrs is None:
            entries = [e for e in entries if e[0] <= now]
            if entries and entries[-1][1] is not None:
                entries.append([now, None])
        elif not entries or entries[-1][1] != attrs:
            entries.append([max(now, entries[-1][0]) if entries else now, attrs])
        if tags is not None:
            doc["tags"] = dict(tags)
        if not entries:  # never billed: nothing to keep
            if doc["entries"]:
                self.engine.service_put(NS_LEDGER, f"{kind}:{rid}", None, tx=tx)
            return
        doc["entries"] = entries
        if (entries, doc.get("tags")) != before:
            self.engine.service_put(NS_LEDGER, f"{kind}:{rid}", doc, tx=tx)

    def records(self) -> list[dict[str, Any]]:
        return [v for _, v in self.engine.service_items(NS_LEDGER)]

    # --- hooks: cloud records (Table writes) -----------------------------------------------

    def observe(self, kind: str, rid: str, rec: CloudRecord | None, tx: Transaction) -> None:
        """Called by every :class:`~.tables.Table` put (``rec``) and delete (None)."""
        if kind == "instance":
            self._instance(tx, rid, rec)
        elif kind == "eni":
            ip = getattr(rec, "public_ip", None)
            if rec is not None or self._known("eni", rid, tx):
                self.record(tx, "eni", rid, getattr(rec, "region", ""),
                            {"ip": ip} if ip else None, tags=getattr(rec, "tags", None),
                            account=getattr(rec, "owner_id", None))
        elif kind == "eip":
            attrs = None if rec is None else {"in_use": bool(getattr(rec, "network_interface_id",
                                                                     None))}
            self.record(tx, "eip", rid, getattr(rec, "region", ""), attrs,
                        tags=getattr(rec, "tags", None), account=getattr(rec, "owner_id", None))

    def _known(self, kind: str, rid: str, tx: Transaction) -> bool:
        return self.engine.service_get(NS_LEDGER, f"{kind}:{rid}", tx=tx) is not None

    def _instance(self, tx: Transaction, rid: str, rec: Any) -> None:
        if rec is None:
            self.record(tx, "instance", rid, "", None)
            return
        state, t = rec.state, None
        if state == "pending":
            t = float(rec.state_time) + float(self.cloud.config.boot_seconds)
        elif state == "running":
            t = float(rec.state_time)
        if t is None:
            if self._known("instance", rid, tx):
                self.record(tx, "instance", rid, rec.region, None, tags=rec.tags)
            return
        self.record(tx, "instance", rid, rec.region, {"type": rec.instance_type}, t=t,
                    tags=rec.tags, account=rec.owner_id)

    # --- hooks: engine volumes and snapshots -----------------------------------------------

    def volume(self, tx: Transaction, volume_id: str) -> None:
        """Meter the volume as it is now in ``tx`` (created, modified, or gone)."""
        try:
            vol = self.engine.get_volume(volume_id, tx=tx)
        except errors.NotFound:
            vol = None
        if vol is None or vol.state in ("deleting", "deleted"):
            if self._known("volume", volume_id, tx):
                self.record(tx, "volume", volume_id, "", None)
            return
        attrs = {"type": vol.volume_type, "size": int(vol.size_gib),
                 "iops": int(vol.iops or 0), "throughput": int(vol.throughput or 0)}
        self.record(tx, "volume", vol.id, region_of_zone(vol.availability_zone), attrs,
                    tags=dict(vol.tags), account=volume_owner(self.engine, vol.id, tx))

    def snapshot(self, tx: Transaction, snapshot_id: str) -> None:
        """Meter a snapshot made or deleted in ``tx``: its existence now (in the unit), its
        stored bytes by :meth:`sample` once the unit commits -- of just the snapshots whose
        count can have changed: a new snapshot's own, and after a delete those of its
        volume's other snapshots (the delete merged what they still need into its
        successor)."""
        try:
            snap = self.engine.get_snapshot(snapshot_id, tx=tx)
        except errors.NotFound:
            snap = None
        touched: set[str] = set()
        volumes: set[str] = set()
        if snap is None:
            doc = self.engine.service_get(NS_LEDGER, f"snapshot:{snapshot_id}", tx=tx)
            if doc is not None:
                self.record(tx, "snapshot", snapshot_id, "", None)
                if doc.get("volume"):
                    volumes.add(str(doc["volume"]))
        elif snap.state == "completed":
            doc = self._doc("snapshot", snap.id, "", tx)
            if not doc["entries"] or doc["entries"][-1][1] is None:
                self.record(tx, "snapshot", snap.id,
                            snapshot_region(self.engine, snap, tx=tx), {"bytes": None},
                            tags=dict(snap.tags),
                            account=snapshot_owner(self.engine, snap.id, tx))
            if snap.volume_id:
                doc = self._doc("snapshot", snap.id, "", tx)
                if doc.get("volume") != snap.volume_id:
                    doc["volume"] = snap.volume_id
                    self.engine.service_put(NS_LEDGER, f"snapshot:{snap.id}", doc, tx=tx)
            touched.add(snap.id)
        pending = self._sampling.get(tx)
        if pending is None:
            pending = self._sampling[tx] = (set(), set())

            def after(pending: tuple[set[str], set[str]] = pending) -> None:
                ids, vols = pending
                for vid in vols:
                    ids |= {s.id for s in self.engine.list_snapshots(vid)}
                if ids:
                    self.sample(ids)

            tx.after_commit(after)
        pending[0].update(touched)
        pending[1].update(volumes)

    def sample(self, ids: set[str] | None = None) -> None:
        """Bring the stored byte counts of the snapshots ``ids`` (default: every one) up to
        date, in a unit of work of its own."""
        eng = self.engine
        sizes: dict[str, int] = {}
        snaps = eng.list_snapshots() if ids is None else \
            [s for s in (self._snapshot_or_none(i) for i in sorted(ids)) if s is not None]
        for s in snaps:
            if s.state != "completed":
                continue
            try:
                sizes[s.id] = int(eng.stored_bytes(s.id))
            except errors.NotFound:
                continue
        with eng.transaction() as tx:
            now = self.cloud.now()
            for sid, n in sizes.items():
                try:
                    snap = eng.get_snapshot(sid, tx=tx)
                except errors.NotFound:
                    continue
                doc = self._doc("snapshot", sid, "", tx)
                entries = doc["entries"]
                if entries and entries[-1][1] == {"bytes": None}:
                    entries[-1] = [entries[-1][0], {"bytes": n}]
                    doc["tags"] = dict(snap.tags)
                    eng.service_put(NS_LEDGER, f"snapshot:{sid}", doc, tx=tx)
                else:
                    self.record(tx, "snapshot", sid, doc["region"] or
                                snapshot_region(eng, snap, tx=tx), {"bytes": n}, t=now,
                                tags=dict(snap.tags))
            if ids is not None:  # deletes were recorded in their own units
                return
            for _key, doc in eng.service_items(NS_LEDGER, "snapshot:", tx=tx):
                if doc["entries"] and doc["entries"][-1][1] is not None:
                    try:
                        eng.get_snapshot(doc["id"], tx=tx)
                    except errors.NotFound:
                        self.record(tx, "snapshot", doc["id"], doc["region"], None, t=now)

    def _snapshot_or_none(self, sid: str) -> Any:
        try:
            return self.engine.get_snapshot(sid)
        except errors.NotFound:
            return None

    def reconcile(self) -> None:
        """Catch what changed outside the metered paths (see the module docstring): every
        volume against its ledger, every snapshot's bytes, the direct API counters."""
        eng = self.engine
        with eng.transaction() as tx:
            for v in eng.list_volumes():
                self.volume(tx, v.id)
            for _, doc in eng.service_items(NS_LEDGER, "volume:", tx=tx):
                if doc["entries"] and doc["entries"][-1][1] is not None:
                    self.volume(tx, doc["id"])
        self.sample()
        self.flush()

    # --- hooks: EBS direct API calls -------------------------------------------------------

    def count(self, region: str, op: str, n: int = 1,
              account: str = DEFAULT_ACCOUNT) -> None:
        """Count ``n`` billable units of EBS direct API ``op`` (``Get``/``Put``: blocks,
        ``List``: requests) made by ``account``."""
        now = self.cloud.now()
        hour = int(now // 3600) * 3600
        with self._lock:
            key = (region, hour, op, account)
            self._counts[key] = self._counts.get(key, 0) + n
            if self._last_flush is None:
                self._last_flush = now
            due = now - self._last_flush >= API_FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self) -> None:
        """Add the in-memory API counters to the store (one unit of work)."""
        with self._lock:
            counts, self._counts = self._counts, {}
            self._last_flush = self.cloud.now()
        if not counts:
            return
        try:
            with self.engine.transaction() as tx:
                for (region, hour, op, account), n in counts.items():
                    key = f"{region}|{hour}|{op}"  # the open mode's key, as before accounts
                    if account != DEFAULT_ACCOUNT:
                        key += f"|{account}"
                    old = int(self.engine.service_get(NS_API, key, tx=tx) or 0)
                    self.engine.service_put(NS_API, key, old + n, tx=tx)
        except Exception:
            with self._lock:  # keep them for the next flush
                for k, n in counts.items():
                    self._counts[k] = self._counts.get(k, 0) + n
            raise

    # --- reading ---------------------------------------------------------------------------

    def _pieces(self, now: float) -> Iterable[tuple[_Piece, dict[str, str]]]:
        p = self.prices
        month = p.month_seconds
        for doc in self.records():
            kind, rid, region = doc["kind"], doc["id"], doc.get("region") or ""
            account = str(doc.get("account") or DEFAULT_ACCOUNT)
            tags = dict(doc.get("tags") or {})
            entries = doc["entries"]
            for i, (start, attrs) in enumerate(entries):
                if attrs is None:
                    continue
                end = entries[i + 1][0] if i + 1 < len(entries) else max(now, start)
                for base, per_second in self._rates(kind, attrs, month):
                    e = end
                    if kind == "instance":
                        e = max(end, start + p.instance_minimum_seconds)
                    yield _Piece(region, base, rid, float(start), float(e), per_second,
                                 account=account), tags
        for key, n in self.engine.service_items(NS_API):
            region, hour, op, *who = key.split("|")
            yield _Piece(region, f"EBS:directAPI.snapshot.{op}", "", float(hour), float(hour),
                         count=float(n), account=who[0] if who else DEFAULT_ACCOUNT), {}
        with self._lock:
            pending = dict(self._counts)
        for (region, hour, op, account), n in pending.items():
            yield _Piece(region, f"EBS:directAPI.snapshot.{op}", "", float(hour), float(hour),
                         count=float(n), account=account), {}

    def _rates(self, kind: str, a: dict[str, Any], month: float) -> list[tuple[str, float]]:
        p = self.prices
        if kind == "instance":
            return [(f"BoxUsage:{a['type']}", 1 / 3600)]
        if kind == "eni":
            return [("PublicIPv4:InUseAddress", 1 / 3600)]
        if kind == "eip":
            return [("PublicIPv4:InUseAddress" if a.get("in_use") else "PublicIPv4:IdleAddress",
                     1 / 3600)]
        if kind == "snapshot":
            return [("EBS:SnapshotUsage", (a.get("bytes") or 0) / GIB / month)]
        if kind == "volume":
            vtype = a["type"]
            out = [("EBS:VolumeUsage" + VOLUME_SUFFIX.get(vtype, "." + vtype),
                    a["size"] / month)]
            if vtype == "gp3":
                if a["iops"] > p.gp3_free_iops:
                    out.append(("EBS:VolumeP-IOPS.gp3", (a["iops"] - p.gp3_free_iops) / month))
                if a["throughput"] > p.gp3_free_throughput:
                    out.append(("EBS:VolumeP-Throughput.gp3",
                                (a["throughput"] - p.gp3_free_throughput) / month))
            elif vtype in ("io1", "io2"):
                out.append(("EBS:VolumeP-IOPS" + VOLUME_SUFFIX[vtype], a["iops"] / month))
            return out
        return []

    def lines(self, since: float, until: float, granularity: str = "MONTHLY",
              now: float | None = None,
              keep: Callable[[Line], bool] | None = None) -> list[Line]:
        """Usage and cost per (bucket, resource, usage type) over ``[since, until)``; open
        usage runs to ``now`` (the clock). Zero lines are left out."""
        if until <= since:
            raise errors.InvalidParameter("the end of the period must be after its start")
        t_now = self.cloud.now() if now is None else now
        periods = buckets(since, until, granularity)
        acc: dict[tuple[int, str, str, str, str], list[Any]] = {}
        for piece, tags in self._pieces(t_now):
            for bi, (a, b) in enumerate(periods):
                if piece.count:
                    q = piece.count if a <= piece.start < b else 0.0
                else:
                    q = max(0.0, min(b, piece.end) - max(a, piece.start)) * piece.per_second
                if q <= 0:
                    continue
                k = (bi, piece.region, piece.base, piece.resource_id, piece.account)
                slot = acc.setdefault(k, [0.0, tags])
                slot[0] += q
        out = []
        for (bi, region, base, rid, account), (q, tags) in sorted(acc.items()):
            rate = self.prices.rate(base)
            a, b = periods[bi]
            line = Line(a, b, region, rate.service, usage_type(region, base), rid, q, rate.unit,
                        q * rate.price, tags, account)
            if keep is None or keep(line):
                out.append(line)
        return out


__all__ = ["GRANULARITIES", "METER_NAMESPACES", "NS_API", "NS_LEDGER", "Line", "Meter",
           "buckets"]
