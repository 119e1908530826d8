"""The ``ebsengine`` command line.

Tables for people, ``--json`` for scripts. Exit codes (stable, scripts rely on them):
0 success, 1 internal error, 2 bad arguments or parameter values, 3 not found,
4 wrong state (in use, read-only, disabled key, ...), 5 store full or locked, 6 fsck found
problems, 7 the master key file is missing, wrong or unusable (``--master-key``), 8 the
store's permissions are looser than 0700/0600 (``--fix-permissions``), 9 the storage backend
could not be reached (a Ceph cluster down or unreachable: nothing was lost, retry).
User errors print one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, TextIO

from . import __version__
from .engine import Engine, default_store_path
from .errors import EbsError, InvalidParameter, StoreOwned
from .model import Snapshot, Volume
from .rules import DEFAULT_ACCOUNT, VOLUME_TYPES
from .storage.owner import Holder, store_owner
from .storage.store import local_dir

EXIT_USAGE = 2
EXIT_FSCK = 6


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal, or forced)."""

    def __init__(self, label: str, enabled: bool, unit: str = "MiB") -> None:
        self.label = label
        self.enabled = enabled
        self.unit = unit  # "MiB": done and total are bytes; anything else: counts of it
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1 and done < total:
            return
        self.last = now
        frac = done / total if total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        scale = 2**20 if self.unit == "MiB" else 1
        rate = done / max(now - self.start, 1e-9) / scale
        sys.stderr.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}% "
                         f"{done / scale:,.0f}/{total / scale:,.0f} {self.unit} "
                         f"{rate:,.0f} {self.unit}/s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _tags(pairs: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep:
            raise InvalidParameter(f"--tag wants KEY=VALUE, got {p!r}")
        out[k] = v
    return out


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _vol_row(v: Volume) -> dict[str, Any]:
    return {"id": v.id, "size": f"{v.size_gib}GiB", "type": v.volume_type, "state": v.state,
            "iops": v.iops or "-", "from": v.snapshot_id or "-", "created": _when(v.create_time),
            "kms key": v.kms_key_id if v.encrypted else "-"}


def _snap_row(s: Snapshot) -> dict[str, Any]:
    return {"id": s.id, "volume": s.volume_id or "-", "size": f"{s.volume_size_gib}GiB",
            "state": s.state, "written": f"{s.full_size_bytes / 2**20:,.1f}MiB",
            "started": _when(s.start_time), "kms key": s.kms_key_id if s.encrypted else "-",
            "description": s.description}


class Out:
    """Where a command's result goes: ``file`` (stdout; a buffer when the command runs in
    the server for another process, see :func:`_control_handler`)."""

    def __init__(self, as_json: bool, file: TextIO | None = None) -> None:
        self.json = as_json
        self.file = file

    def emit(self, obj: Any, text: Callable[[], str]) -> None:
        if self.json:
            print(json.dumps(obj, indent=2, sort_keys=True, default=str), file=self.file)
        else:
            print(text(), file=self.file)


def _record(x: Volume | Snapshot) -> dict[str, Any]:
    d = asdict(x)
    d["kind"] = "volume" if isinstance(x, Volume) else "snapshot"
    return d


def _show(x: Volume | Snapshot) -> str:
    return "\n".join(f"{k:22} {v}" for k, v in _record(x).items())


def _progress_on(a: argparse.Namespace) -> bool:
    """A progress bar for this process's user: never in the server running the command
    for another process (its stderr is the server's)."""
    return not getattr(a, "remote", False) and (a.progress or sys.stderr.isatty())


# --- commands ---------------------------------------------------------------------------


def cmd_create(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    # the key resolves in the zone's region, in the account the keys group uses
    v = eng.create_volume(size_gib=a.size, volume_type=a.type, iops=a.iops,
                          throughput=a.throughput, availability_zone=a.az,
                          encrypted=a.encrypted, kms_key_id=a.kms_key, tags=_tags(a.tag),
                          account=DEFAULT_ACCOUNT)
    out.emit(_record(v), lambda: v.id)
    return 0


def cmd_list(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    vols = [] if a.snapshots else eng.list_volumes()
    snaps = [] if a.volumes else eng.list_snapshots(a.volume)
    if a.volume:
        vols = [v for v in vols if v.id == a.volume]
    parts = []
    if not a.snapshots:
        parts.append("VOLUMES\n" + _table([_vol_row(v) for v in vols],
                                          ["id", "size", "type", "state", "iops", "from",
                                           "created", "kms key"]))
    if not a.volumes:
        parts.append("SNAPSHOTS\n" + _table([_snap_row(s) for s in snaps],
                                            ["id", "volume", "size", "state", "written",
                                             "started", "kms key", "description"]))
    out.emit({"volumes": [_record(v) for v in vols], "snapshots": [_record(s) for s in snaps]},
             lambda: "\n\n".join(parts))
    return 0


def _get(eng: Engine, rid: str) -> Volume | Snapshot:
    return eng.get_snapshot(rid) if rid.startswith("snap-") else eng.get_volume(rid)


def cmd_show(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    x = _get(eng, a.id)
    out.emit(_record(x), lambda: _show(x))
    return 0


def cmd_delete(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    if a.id.startswith("snap-"):
        eng.delete_snapshot(a.id)
    else:
        eng.delete_volume(a.id)
    out.emit({"deleted": a.id}, lambda: f"deleted {a.id}")
    return 0


def cmd_resize(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    v = eng.modify_volume(a.volume, size_gib=a.size, volume_type=a.type, iops=a.iops,
                          throughput=a.throughput)
    out.emit(_record(v), lambda: f"{v.id} is now {v.size_gib}GiB {v.volume_type}")
    return 0


def cmd_import(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    t0 = time.monotonic()
    v = eng.import_image(a.image, volume_id=a.volume, volume_type=a.type,
                         progress=Progress("import", _progress_on(a)))
    result: dict[str, Any] = {"volume": _record(v), "seconds": round(time.monotonic() - t0, 3)}
    text = [f"{v.id} ({v.size_gib}GiB) imported from {a.image}"]
    if a.snapshot:
        s = eng.create_snapshot(v.id, description=a.description or f"import of {a.image}")
        result["snapshot"] = _record(s)
        text.append(f"{s.id} taken")
    out.emit(result, lambda: "\n".join(text))
    return 0


def cmd_export(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    t0 = time.monotonic()
    n = eng.export(a.id, a.output, progress=Progress("export", _progress_on(a)))
    out.emit({"id": a.id, "path": a.output, "data_bytes": n,
              "seconds": round(time.monotonic() - t0, 3)},
             lambda: f"{a.id} exported to {a.output} ({n / 2**20:,.1f} MiB of data)")
    return 0


def cmd_snapshot(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    s = eng.create_snapshot(a.volume, description=a.description, tags=_tags(a.tag))
    out.emit(_record(s), lambda: s.id)
    return 0


def cmd_restore(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    v = eng.create_volume(snapshot_id=a.snapshot, size_gib=a.size, volume_type=a.type,
                          iops=a.iops, throughput=a.throughput, tags=_tags(a.tag),
                          encrypted=a.encrypted, kms_key_id=a.kms_key, account=DEFAULT_ACCOUNT)
    out.emit(_record(v), lambda: v.id)
    return 0


def cmd_diff(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    first = None if a.first in ("-", "none") else a.first
    blocks = eng.list_changed_blocks(first, a.second)
    out.emit({"first": first, "second": a.second, "block_size": 524288,
              "changed_blocks": blocks},
             lambda: f"{len(blocks)} changed 512 KiB block(s)"
                     + (":\n" + " ".join(map(str, blocks)) if blocks else ""))
    return 0


def cmd_blocks(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    blocks = eng.list_snapshot_blocks(a.snapshot)
    out.emit({"snapshot": a.snapshot, "block_size": 524288, "blocks": blocks},
             lambda: f"{len(blocks)} block(s) with data"
                     + (":\n" + " ".join(map(str, blocks)) if blocks else ""))
    return 0


def cmd_usage(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    u = eng.usage(a.id)

    def text() -> str:
        return "\n".join(f"{k:14} {v:>16,} bytes" for k, v in asdict(u).items())

    out.emit({"id": a.id, **asdict(u)}, text)
    return 0


def cmd_fsck(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    r = eng.fsck(keys=not a.no_keys)
    out.emit({"ok": r.ok, "problems": r.problems, "stats": r.stats, "unverified": r.unverified},
             lambda: ("clean" if r.ok else "PROBLEMS:\n  " + "\n  ".join(r.problems))
             + "".join(f"\nnot verified: {n}" for n in r.unverified)
             + "\n" + ", ".join(f"{k}={v}" for k, v in sorted(r.stats.items())))
    return 0 if r.ok else EXIT_FSCK


def cmd_copy_store(a: argparse.Namespace, out: Out) -> int:
    """``copy-store SRC DST``: runs on no engine of ``--store`` (it opens both stores)."""
    from .engine import copy_store
    r = copy_store(a.source, a.destination, batch=a.batch, chunk_batch=a.chunk_batch,
                   progress=Progress("copy-store", _progress_on(a), unit="items"),
                   master_key=a.master_key)
    st = r.stats
    mib = st.stored_bytes / 2**20

    def text() -> str:
        lines = [f"copied {a.source} to {a.destination}: {sum(st.rows.values()):,} rows, "
                 f"{st.chunks:,} chunks, {mib:,.1f} MiB stored, {st.commits:,} commits in "
                 f"{st.seconds:.1f} s ({r.rate / 2**20:,.1f} MiB/s)",
                 "  " + ", ".join(f"{k}={v}" for k, v in st.rows.items()),
                 "fsck of the destination: " + ("clean" if r.fsck.ok else "PROBLEMS:\n  "
                                                 + "\n  ".join(r.fsck.problems))]
        lines += [f"not verified: {n}" for n in r.fsck.unverified]
        return "\n".join(lines)

    out.emit({**st.as_dict(), "mib_per_s": round(r.rate / 2**20, 3),
              "fsck": {"ok": r.fsck.ok, "problems": r.fsck.problems, "stats": r.fsck.stats,
                       "unverified": r.fsck.unverified}}, text)
    return 0 if r.fsck.ok else EXIT_FSCK


COPY_STORE_HELP = """\
Copy every volume, snapshot (with its lineage: incremental chains and the bases of restored
volumes), KMS key and service record of the store SRC into a new store DST, on any backend:
an LMDB directory, rados://PREFIX?conf=... (Ceph), or memory://NAME. This is how a store
moves between LMDB and RADOS. Values are copied as stored (compressed, and encrypted data
still sealed: no key is needed to copy it), in batches of fresh transactions.

SRC is opened read-only and must be idle: a SRC that a process serves (owns) is refused,
and if any process commits to SRC during the copy, the copy stops (exit 5). DST must not
exist or be empty (else exit 4, nothing changed). Until the copy's last commit DST carries
a marker and refuses to open ("an unfinished copy from SRC: delete it and copy again"), so
an interrupted or killed copy leaves nothing that looks like a store. At the end DST is
checked (fsck: exit 6 on problems; encrypted data is verified with --master-key, the same
master key as SRC's). Progress goes to stderr (a tty, or --progress); the result, with the
copy rate, to stdout (--json for scripts).
"""


def cmd_serve(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    """NBD (Unix socket and/or TCP) and the AWS API on ``eng``, in the one serve loop."""
    from .aws.server import ApiServer
    from .nbd.server import DEFAULT_SOCKET_NAME, NbdServer
    from .serve import Service, run_services
    from .serve.control import ControlServer

    if a.nbd_socket is None:
        where = local_dir(eng.path)
        unix: str | None = os.path.join(where, DEFAULT_SOCKET_NAME) if where else None
    elif a.nbd_socket in ("", "none"):
        unix = None
    else:
        unix = os.path.abspath(a.nbd_socket)
    tcp = (a.host, a.nbd_port) if a.nbd_port else None
    services: list[Service] = []
    control: ControlServer | None = None
    if not eng.path.startswith("memory://"):
        # first: it makes this process the store's owner before anything listens, and the
        # CLI's commands for this store then run here (see _control_handler)
        control = ControlServer(eng, _control_handler(eng))
        services.append(control)
    if unix is not None or tcp is not None:
        services.append(NbdServer(eng, unix, tcp, socket_group=a.socket_group,
                                  tls=getattr(a, "tls_config", None)))
    if a.http_port:
        from .cloud import CloudConfig
        from .cloud.clock import SchedulerThread, SimulatedClock, WallClock

        config = CloudConfig(public_pool=a.public_ip_pool) if a.public_ip_pool else None
        clock: WallClock | SimulatedClock = WallClock()
        if a.clock.startswith("simulated"):
            start = a.clock.split("=", 1)[1] if "=" in a.clock else None
            clock = SimulatedClock(start, engine=eng)
        authenticator = None
        if a.auth == "sigv4":
            from .aws.sigv4 import SigV4Verifier
            from .cloud.scope import REGIONS

            authenticator = SigV4Verifier(a.credentials, regions=REGIONS)
        api = ApiServer(eng, a.host, a.http_port, allow_reset=a.allow_reset,
                        cloud_config=config, clock=clock, seed_images=a.seed_images,
                        allow_origins=a.allow_origin or (), allow_hosts=a.allow_host or (),
                        authenticator=authenticator)
        services.append(api)
        cloud = getattr(getattr(api, "app", None), "cloud", None)
        if cloud is not None and not clock.simulated:
            # due lifecycle runs on the wall clock: a background thread of the serve loop
            services.append(SchedulerThread(cloud.scheduler))
        if control is not None:
            control.handler = _control_handler(eng, cloud)
    if len(services) == int(control is not None):  # nothing but the control socket
        print("ebsengine: error: nothing to serve (NBD and HTTP both disabled)", file=sys.stderr)
        return EXIT_USAGE
    return run_services(services, store=eng.path)


def _moment(text: str) -> float:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDThh:mm[:ss][Z]`` (UTC) as epoch seconds."""
    import datetime as dt

    for form in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%MZ",
                 "%Y-%m-%dT%H:%M"):
        try:
            return dt.datetime.strptime(text, form).replace(tzinfo=dt.timezone.utc).timestamp()
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"not a UTC date or time (YYYY-MM-DD[Thh:mm[:ss]]): {text!r}")


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def cmd_cost(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    """What the metered usage would cost at the price table's list prices (the usage ledger
    of :mod:`ebsengine.cloud.meter`, brought up to date first)."""
    from .cloud import Cloud, CloudConfig
    from .cloud.clock import store_clock
    from .cloud.pricing import Prices

    prices = Prices.load(a.prices)
    served = getattr(a, "served_cloud", None)
    if served is not None:
        # run in a server for another process: its own cloud and ledger (a second Cloud on
        # the engine would rebind the engine's clock), read at these prices
        from .cloud.meter import Meter

        cloud = served
        meter = Meter(cloud)
        meter.prices = prices
    else:
        cloud = Cloud(eng, clock=store_clock(eng),
                      config=CloudConfig(prices_file=a.prices) if a.prices else None)
        cloud.meter.prices = prices
        meter = cloud.meter
    now = cloud.now()
    until = a.until if a.until is not None else now
    if a.since is not None:
        since = a.since
    else:
        g = time.gmtime(until)
        since = _moment(f"{g.tm_year:04d}-{g.tm_mon:02d}-01")
    if until <= since:
        raise InvalidParameter("--until must be after --since")
    cloud.meter.reconcile()
    lines = meter.lines(since, until, "MONTHLY", now=now)
    by_resource = a.by == "resource"
    acc: dict[tuple[str, ...], list[Any]] = {}
    for ln in lines:
        key: tuple[str, ...] = ((ln.resource_id or "-", ln.usage_type) if by_resource
                                else (ln.usage_type,))
        slot = acc.setdefault(key, [0.0, 0.0, ln.unit, ln.service, ln.region])
        slot[0] += ln.quantity
        slot[1] += ln.cost
    rows = []
    for k, (q, cost, unit, service, region) in sorted(acc.items()):
        row: dict[str, Any] = {"usage_type": k[-1], "service": service, "region": region,
                               "quantity": round(q, 10), "unit": unit, "cost": round(cost, 10)}
        if by_resource:
            row["resource"] = k[0]
        rows.append(row)
    total = sum(r["cost"] for r in rows)
    doc = {"since": _utc(since), "until": _utc(until), "currency": prices.currency,
           "prices": prices.source, "by": a.by, "rows": rows, "total": round(total, 10)}

    def text() -> str:
        cols = (["resource"] if by_resource else []) + ["usage_type", "service", "quantity",
                                                        "unit", "cost"]
        shown = [{**r, "quantity": f"{r['quantity']:,.4f}", "cost": f"{r['cost']:,.4f}"}
                 for r in rows]
        return (f"cost {_utc(since)} .. {_utc(until)} ({prices.currency}, list prices of "
                f"{prices.source})\n" + _table(shown, cols) +
                f"\nTOTAL {prices.currency} {total:,.2f}")

    out.emit(doc, text)
    return 0


# --- keys (the key service, see ebsengine.kms) -----------------------------------------------


def _key_row(k: Any) -> dict[str, Any]:
    return {"id": k.id, "state": k.state, "manager": k.manager, "created": _when(k.created),
            "deletion": _when(k.deletion_date) if k.deletion_date else "",
            "description": k.description}


def _key_json(eng: Engine, k: Any, region: str, account: str) -> dict[str, Any]:
    d: dict[str, Any] = k.metadata()
    d["Aliases"] = [a.name for a in eng.kms.list_aliases(region, account, k.id)]
    d["Tags"] = dict(k.tags)
    return d


def cmd_keys(eng: Engine, a: argparse.Namespace, out: Out) -> int:
    from .aws.server import DEFAULT_ACCOUNT

    kms, region, account = eng.kms, a.region, DEFAULT_ACCOUNT
    if a.keys_command == "create":
        with eng.transaction() as tx:  # the key and its alias, or neither
            k = kms.create_key(region, account, description=a.description,
                               tags=_tags(a.tag), txn=tx)
            if a.alias:
                kms.create_alias(a.alias, k.id, region, account, txn=tx)
        out.emit(_key_json(eng, k, region, account), lambda: k.id)
        return 0
    if a.keys_command == "list":
        keys = kms.list_keys(region, account)
        out.emit([_key_json(eng, k, region, account) for k in keys],
                 lambda: _table([_key_row(k) for k in keys],
                                ["id", "state", "manager", "created", "deletion", "description"]))
        return 0
    action = {"enable": kms.enable_key, "disable": kms.disable_key,
              "cancel-deletion": kms.cancel_key_deletion}
    # the CLI takes an alias wherever a key goes (KMS's state actions take ids only)
    key_id = kms.describe_key(a.key, region, account).id
    if a.keys_command in action:
        k = action[a.keys_command](key_id, region, account)
    elif a.keys_command == "schedule-deletion":
        k = kms.schedule_key_deletion(key_id, region, account, a.days)
    else:  # show
        k = kms.describe_key(key_id, region, account)
    out.emit(_key_json(eng, k, region, account),
             lambda: "\n".join(f"{kk:22} {v}" for kk, v in _key_row(k).items()))
    return 0


COMMANDS: dict[str, Callable[[Engine, argparse.Namespace, Out], int]] = {
    "create": cmd_create, "list": cmd_list, "show": cmd_show, "delete": cmd_delete,
    "resize": cmd_resize, "import": cmd_import, "export": cmd_export,
    "snapshot": cmd_snapshot, "restore": cmd_restore, "diff": cmd_diff, "blocks": cmd_blocks,
    "usage": cmd_usage, "fsck": cmd_fsck, "serve": cmd_serve, "cost": cmd_cost, "keys": cmd_keys,
}


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebsengine", description=(
        "EBS-style volumes and incremental snapshots in a local store."))
    p.add_argument("--store", default=None, metavar="PATH",
                   help=f"store directory (default: $EBSENGINE_STORE or {default_store_path()})")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--master-key", default=None, metavar="PATH",
                   help="master key file sealing the store's KMS keys (default: "
                        "$EBSENGINE_MASTER_KEY or ~/.config/ebsengine/master.key)")
    p.add_argument("--fix-permissions", action="store_true",
                   help="tighten a store whose directory or files give its group or others "
                        "access (to 0700/0600) instead of refusing it (exit 8)")
    p.add_argument("--version", action="version", version=f"ebsengine {__version__}")
    # --store and --json are accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, metavar="PATH",
                        help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON for scripts")
    common.add_argument("--master-key", default=argparse.SUPPRESS, metavar="PATH",
                        help=argparse.SUPPRESS)
    common.add_argument("--fix-permissions", action="store_true", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)

    class CommandParser(argparse.ArgumentParser):
        def __init__(self, **kw: Any) -> None:
            super().__init__(parents=[common], **kw)

    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=CommandParser)
    types = sorted(VOLUME_TYPES)

    def spec(sp: argparse.ArgumentParser, type_default: str | None) -> None:
        sp.add_argument("--type", choices=types, default=type_default)
        sp.add_argument("--iops", type=int)
        sp.add_argument("--throughput", type=int, help="MiB/s (gp3)")

    s = sub.add_parser("create", help="create an empty volume")
    s.add_argument("--size", type=int, required=True, help="GiB")
    spec(s, "gp3")
    s.add_argument("--az", default="us-east-1a", help="availability zone")
    s.add_argument("--encrypted", action="store_true",
                   help="seal its data under a new data key wrapped by a KMS key")
    s.add_argument("--kms-key", default=None, metavar="KEY",
                   help="the KMS key (id, ARN, alias/NAME or alias ARN of the zone's region; "
                        "needs --encrypted; default alias/aws/ebs)")
    s.add_argument("--tag", action="append", metavar="KEY=VALUE")

    s = sub.add_parser("list", help="list volumes and snapshots")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--volumes", action="store_true", help="volumes only")
    g.add_argument("--snapshots", action="store_true", help="snapshots only")
    s.add_argument("--volume", help="only this volume and its snapshots")

    sub.add_parser("show", help="show one volume or snapshot").add_argument("id")
    sub.add_parser("delete", help="delete a volume or snapshot").add_argument("id")

    s = sub.add_parser("resize", help="grow a volume or change its type/IOPS/throughput")
    s.add_argument("volume")
    s.add_argument("--size", type=int, help="new size in GiB (may only grow)")
    spec(s, None)

    s = sub.add_parser("import", help="copy a raw image file into a new (or given) volume")
    s.add_argument("image")
    s.add_argument("--volume", help="import into this existing volume instead")
    s.add_argument("--type", choices=types, default="gp3")
    s.add_argument("--snapshot", action="store_true", help="take a snapshot afterwards")
    s.add_argument("--description", default="")
    s.add_argument("--progress", action="store_true", help="show progress even if not a tty")

    s = sub.add_parser("export", help="write a volume or snapshot to a sparse raw file")
    s.add_argument("id")
    s.add_argument("output")
    s.add_argument("--progress", action="store_true", help="show progress even if not a tty")

    s = sub.add_parser("snapshot", help="take a point-in-time snapshot of a volume")
    s.add_argument("volume")
    s.add_argument("--description", default="")
    s.add_argument("--tag", action="append", metavar="KEY=VALUE")

    s = sub.add_parser("restore", help="create a volume from a snapshot (instant, lazy)")
    s.add_argument("snapshot")
    s.add_argument("--size", type=int, help="GiB (default: the snapshot's size)")
    spec(s, "gp3")
    s.add_argument("--tag", action="append", metavar="KEY=VALUE")
    s.add_argument("--encrypted", action="store_true",
                   help="encrypt a plaintext snapshot's volume (a copy under a new data key); "
                        "an encrypted snapshot's volume is always encrypted")
    s.add_argument("--kms-key", default=None, metavar="KEY",
                   help="restore under this KMS key (needs --encrypted; re-encrypts)")

    s = sub.add_parser("diff", help="512 KiB blocks that differ between two snapshots")
    s.add_argument("first", help="older snapshot, or - for all blocks of SECOND")
    s.add_argument("second")

    s = sub.add_parser("blocks", help="512 KiB blocks holding data in a snapshot")
    s.add_argument("snapshot")

    sub.add_parser("usage", help="storage accounting of a volume or snapshot").add_argument("id")
    s = sub.add_parser("fsck", help="verify every storage invariant (exit 6 on problems)")
    s.add_argument("--no-keys", action="store_true",
                   help="do not unwrap data keys: check encrypted data's structure only")

    s = sub.add_parser("copy-store", help="copy a whole store to another (LMDB <-> RADOS)",
                       description=COPY_STORE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("source", metavar="SRC", help="the store to copy (left unchanged)")
    s.add_argument("destination", metavar="DST",
                   help="the new store (must not exist, or be empty)")
    s.add_argument("--batch", type=_positive, default=1024, metavar="N",
                   help="table rows per transaction (default 1024)")
    s.add_argument("--chunk-batch", type=_positive, default=128, metavar="N",
                   help="64 KiB chunks per transaction (default 128)")
    s.add_argument("--progress", action="store_true", help="show progress even if not a tty")

    s = sub.add_parser("cost", help="what the metered usage costs at list prices")
    s.add_argument("--since", type=_moment, default=None, metavar="DATE",
                   help="start, UTC, inclusive (YYYY-MM-DD[Thh:mm[:ss]]; default: the first of "
                        "the month of --until)")
    s.add_argument("--until", type=_moment, default=None, metavar="DATE",
                   help="end, UTC, exclusive (default: now)")
    s.add_argument("--by", choices=("usage-type", "resource"), default="usage-type",
                   help="one row per usage type (default) or per resource and usage type")
    s.add_argument("--prices", default=None, metavar="FILE",
                   help="price table (default: $EBSENGINE_PRICES, else the shipped us-east-1 "
                        "list prices)")

    s = sub.add_parser("serve", help="serve volumes over NBD and the AWS-compatible HTTP API")
    s.add_argument("--nbd-socket", default=None,
                   help="Unix socket path for NBD (default: STORE/nbd.sock; 'none' disables)")
    s.add_argument("--nbd-port", type=int, default=None, metavar="N",
                   help="also serve NBD over TCP on this port of --host (default: off, the "
                        "Unix socket only; 10809 is NBD's usual port; 0 also means off)")
    s.add_argument("--tls", choices=("off", "on", "require"), default=None,
                   help="TLS on the NBD TCP port: 'on' offers STARTTLS, 'require' refuses "
                        "anything else before it (default: require with --tls-cert, else off)")
    s.add_argument("--tls-cert", default=None, metavar="FILE",
                   help="the server's X.509 certificate (PEM, may include the chain)")
    s.add_argument("--tls-key", default=None, metavar="FILE",
                   help="the private key of --tls-cert (PEM)")
    s.add_argument("--tls-ca", default=None, metavar="FILE",
                   help="CA certificate(s) that client certificates must chain to "
                        "(with --tls-verify-client)")
    s.add_argument("--tls-verify-client", action="store_true",
                   help="NBD clients must present a certificate signed by --tls-ca")
    s.add_argument("--insecure", action="store_true",
                   help="allow serving on a non-loopback --host without SigV4 (HTTP) or "
                        "required TLS (NBD): anyone who reaches the address can read and "
                        "change every volume")
    s.add_argument("--socket-group", default=None, metavar="GROUP",
                   help="make the NBD Unix socket this group's, mode 0660 (default: 0600, "
                        "the owner's alone)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind TCP listeners to")
    s.add_argument("--http-port", type=int, default=8788,
                   help="port of the AWS-compatible API (default 8788; 0 disables)")
    s.add_argument("--allow-origin", action="append", metavar="URL",
                   help="accept requests a web page at this origin (scheme://host[:port]; "
                        "'*' for any) makes a browser send; repeatable (default: refused, 403)")
    s.add_argument("--allow-host", action="append", metavar="NAME",
                   help="accept this Host header (NAME or NAME:PORT) besides the server's "
                        "own address; repeatable (default: other names refused, 403)")
    s.add_argument("--allow-reset", action="store_true",
                   help="enable POST /moto-api/reset, which deletes EVERY resource of the store "
                        "(for test suites written for moto's server mode)")
    s.add_argument("--public-ip-pool", type=_cidr, default=None, metavar="CIDR",
                   help="where public IPs and Elastic IPs come from (default 198.18.0.0/15)")
    s.add_argument("--clock", type=_clock_spec, default="wall", metavar="wall|simulated[=ISO8601]",
                   help="the clock lifecycle policies (and every time rule) read: the wall "
                        "clock (default), or a simulated one that moves only by POST "
                        "/_ebsengine/clock (starting at ISO8601, or now, on a new store; a "
                        "store's own position wins)")
    s.add_argument("--seed-images", type=_seed_file, default=None, metavar="FILE",
                   help="JSON list of public images to preload (and restore after a reset), "
                        'e.g. [{"ImageId": "ami-12c6146b", "Name": "..."}]: blank root volume')
    s.add_argument("--auth", choices=("open", "sigv4"), default="open",
                   help="open (default): any credentials, one account (123456789012); sigv4: "
                        "every request's Signature Version 4 is verified against --credentials "
                        "and acts in the signer's account (README 'Security')")
    s.add_argument("--credentials", type=_credentials_file, default=None, metavar="FILE",
                   help="with --auth sigv4: the users, an AWS shared-credentials file with one "
                        "[section] per user: aws_access_key_id, aws_secret_access_key, "
                        "account_id (12 digits)")

    s = sub.add_parser("keys", help="KMS keys (sealed by the master key; see README "
                                    "'Encryption at rest')")
    keys = s.add_subparsers(dest="keys_command", required=True, metavar="ACTION",
                            parser_class=CommandParser)

    def key_action(name: str, text: str) -> argparse.ArgumentParser:
        k = keys.add_parser(name, help=text)
        k.add_argument("--region", default="us-east-1", help="region (default us-east-1)")
        return k

    k = key_action("create", "create a symmetric key")
    k.add_argument("--description", default="")
    k.add_argument("--alias", help="also name it alias/NAME")
    k.add_argument("--tag", action="append", metavar="KEY=VALUE")
    key_action("list", "list the region's keys")
    for name, text in (("show", "describe a key (id, ARN or alias)"),
                       ("enable", "enable a key"), ("disable", "disable a key"),
                       ("cancel-deletion", "cancel a scheduled deletion (the key stays "
                                           "disabled)")):
        key_action(name, text).add_argument("key")
    k = key_action("schedule-deletion", "delete a key after a waiting period")
    k.add_argument("key")
    k.add_argument("--days", type=int, default=None, help="waiting period, 7-30 (default 30)")
    return p


def _clock_spec(text: str) -> str:
    if text == "wall" or text == "simulated":
        return text
    if text.startswith("simulated="):
        from .cloud.clock import parse_instant

        try:
            parse_instant(text.split("=", 1)[1])
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    raise argparse.ArgumentTypeError("--clock is wall, simulated or simulated=ISO8601")


def _credentials_file(path: str) -> Any:
    """The users of a --credentials file (checked whole: a clear error names the section)."""
    from .aws.sigv4 import CredentialsError, load_credentials

    try:
        return load_credentials(path)
    except CredentialsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seed_file(path: str) -> list[dict[str, Any]]:
    """The entries of a --seed-images file, checked as ``Images.seed`` will."""
    import json

    from .cloud.images import check_seed_entries

    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
        return check_seed_entries(entries)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc}") from None


def _cidr(text: str) -> str:
    """An IPv4 network for --public-ip-pool (host bits must be zero)."""
    import ipaddress

    try:
        net = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an IPv4 CIDR block: {exc}") from None
    return str(net)


#: commands that read the store directly (opened read-only) while another process owns it:
#: they read only committed records and completed snapshots, which the owner's write cache
#: cannot change. Every other command runs in the owner (:func:`_through_owner`).
DIRECT_READS = frozenset({"list", "show", "diff", "blocks"})
#: arguments naming files, made absolute for a server whose working directory is not ours
_PATH_ARGS = {"import": ("image",), "export": ("output",), "cost": ("prices",)}
#: arguments about opening the store, which the server has done its own way
_LOCAL_ARGS = ("store", "master_key", "fix_permissions")


def _report(exc: EbsError | FileNotFoundError, as_json: bool, err: TextIO) -> int:
    """One line on ``err`` for a user error; the exit code."""
    if isinstance(exc, FileNotFoundError):
        print(f"ebsengine: error: {exc.strerror}: {exc.filename}", file=err)
        return EXIT_USAGE
    if as_json:
        print(json.dumps({"error": {"code": exc.code, "message": str(exc)}}), file=err)
    else:
        print(f"ebsengine: error: {exc} [{exc.code}]", file=err)
    return exc.exit_code


def _control_handler(eng: Engine, cloud: Any = None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What ``serve``'s control socket runs: another process's command (its parsed
    arguments) on this engine, answered with the exit code and what it printed. ``cloud``:
    the API's cloud, when the server serves the API (``cost`` reads its ledger)."""

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        command, args = request.get("command"), request.get("args")
        if command not in COMMANDS or command == "serve" or not isinstance(args, dict):
            return {"rc": EXIT_USAGE, "stdout": "",
                    "stderr": f"ebsengine: error: the server does not run {command!r}\n"}
        a = argparse.Namespace(**args)
        a.command, a.remote, a.served_cloud = command, True, cloud
        stdout, stderr = io.StringIO(), io.StringIO()
        as_json = bool(getattr(a, "json", False))
        try:
            rc = COMMANDS[command](eng, a, Out(as_json, stdout))
        except (EbsError, FileNotFoundError) as exc:
            rc = _report(exc, as_json, stderr)
        return {"rc": rc, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}

    return handle


def _through_owner(path: str, a: argparse.Namespace, holder: Holder) -> int:
    """Run the command in the process owning the store, over its control socket."""
    from .serve.control import call, socket_path

    args = {k: v for k, v in vars(a).items() if k not in _LOCAL_ARGS}
    for k in _PATH_ARGS.get(a.command, ()):
        if args.get(k):
            args[k] = os.path.abspath(args[k])
    try:
        answer = call(path, {"command": a.command, "args": args})
    except (OSError, ValueError) as exc:
        raise StoreOwned(
            f"store {path!r} is owned by {holder.describe()}, and no control socket answers "
            f"at {socket_path(path)} ({exc}); nothing was changed. Only 'ebsengine serve' "
            f"takes commands for its store: stop that process first, or use a command that "
            f"reads ({', '.join(sorted(DIRECT_READS))})") from None
    if "error" in answer:
        print(f"ebsengine: error: the serving process {holder.pid} failed: {answer['error']}",
              file=sys.stderr)
        return 1
    sys.stdout.write(str(answer.get("stdout", "")))
    sys.stdout.flush()
    sys.stderr.write(str(answer.get("stderr", "")))
    return int(answer.get("rc", 1))


def _run(a: argparse.Namespace, out: Out) -> int:
    """The command: in this process, or in the process owning the store (see README "One
    owner per store")."""
    if a.command == "serve":
        with Engine(a.store, master_key=a.master_key,
                    fix_permissions=a.fix_permissions) as eng:
            return cmd_serve(eng, a, out)
    path = a.store if a.store is not None else default_store_path()
    for attempt in range(2):
        where = local_dir(path)
        holder = None if where is None else store_owner(where)
        if holder is not None:
            if a.command in DIRECT_READS:
                with Engine(path, readonly=True, master_key=a.master_key) as eng:
                    return COMMANDS[a.command](eng, a, out)
            return _through_owner(path, a, holder)
        try:
            eng = Engine(path, master_key=a.master_key, fix_permissions=a.fix_permissions)
        except StoreOwned:
            if attempt:
                raise
            continue  # it began serving since we looked: through it, then
        with eng:
            return COMMANDS[a.command](eng, a, out)
    raise AssertionError("not reached")


def _is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback one (``""`` is every interface)."""
    import ipaddress
    import socket

    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


def check_serve_args(a: argparse.Namespace) -> str | None:
    """The serve options' consistency and exposure rules, checked before the store is opened:
    an error message, or None (then ``a.tls_config`` is set)."""
    from .nbd.tls import TlsConfig, TlsConfigError

    a.tls_config = None
    tcp = bool(a.nbd_port)
    mode = a.tls or ("require" if a.tls_cert else "off")
    if mode != "off" or a.tls_cert or a.tls_key or a.tls_ca or a.tls_verify_client:
        if not tcp:
            return "--tls options apply to NBD over TCP: give --nbd-port N too"
        if mode == "off":
            return "--tls off contradicts the other --tls-* options"
        if not (a.tls_cert and a.tls_key):
            return f"--tls {mode} needs --tls-cert FILE and --tls-key FILE"
        if a.tls_verify_client and not a.tls_ca:
            return "--tls-verify-client needs --tls-ca FILE (the CA client certificates chain to)"
        if a.tls_ca and not a.tls_verify_client:
            return "--tls-ca is used to verify clients: give --tls-verify-client too"
        try:
            config = TlsConfig(a.tls_cert, a.tls_key, a.tls_ca, a.tls_verify_client, mode)
            config.context()  # load the files now: a bad one is a usage error, not a crash
        except TlsConfigError as exc:
            return str(exc)
        a.tls_config = config
    if _is_loopback(a.host) or a.insecure:
        return None
    exposed = []
    if a.http_port and getattr(a, "auth", "open") != "sigv4":
        exposed.append(f"the AWS API (port {a.http_port}) without --auth sigv4")
    if tcp and mode != "require":
        exposed.append(f"NBD (port {a.nbd_port}) without --tls require (--tls-cert, --tls-key)")
    if exposed:
        return (f"refusing to serve {' and '.join(exposed)} on the non-loopback address "
                f"{a.host!r}: anyone who reaches it could read and change every volume; "
                "secure it, bind to 127.0.0.1, or pass --insecure")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.command == "serve":
        if a.auth == "sigv4" and a.credentials is None:
            parser.error("serve --auth sigv4 needs --credentials FILE (the users and their "
                         "accounts)")
        if a.auth != "sigv4" and a.credentials is not None:
            parser.error("--credentials is read with --auth sigv4 only")
    out = Out(a.json)
    if a.command == "serve":
        problem = check_serve_args(a)
        if problem is not None:
            print(f"ebsengine: error: {problem}", file=sys.stderr)
            return EXIT_USAGE
    try:
        if a.command == "copy-store":
            return cmd_copy_store(a, out)
        return _run(a, out)
    except (EbsError, FileNotFoundError) as exc:
        return _report(exc, a.json, sys.stderr)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `ebsengine list | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
