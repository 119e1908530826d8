"""Imports in progress and their crash recovery.

An import in progress is marked in its volume's record: ``state`` "creating" (a new volume)
or ``staging`` (the lineage being loaded beside an existing volume), with ``importer``, the
process doing it (:func:`process_token`), so that a reopened store can tell a crashed import
from one still running in another process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from ..block.maps import BlockMaps
from ..storage.base import Txn
from .records import Records


def recover_imports(records: Records, maps: BlockMaps,
                    lease_free: Callable[[str], bool] | None = None) -> None:
    """On open: imports whose process is gone (a crash) are settled. A new volume that
    was being imported shows as ``error`` (delete it); a partial copy staged beside an
    existing volume is dropped, the volume keeps its content. An importer on another host
    cannot be looked up here: on a store with volume leases (``lease_free``) its import is
    settled when the volume's lease, which an import holds throughout, is free."""
    with records.store.read() as txn:
        stale = [json.loads(v) for _, v in txn.cursor(db=records.db["volumes"])
                 if b'"importer"' in v]  # cheap: no JSON for the volumes at rest
    stale = [r for r in stale if r.get("importer") is not None
             and (not process_alive(r["importer"])
                  or (lease_free is not None and elsewhere(r["importer"])
                      and lease_free(r["id"])))]
    if not stale:
        return
    with records.store.write(freeing=True) as txn:
        for old in stale:
            rec = records.vol_rec(txn, old["id"])
            if rec.get("importer") != old["importer"]:
                continue
            drop_import(records, maps, txn, rec, rec.get("staging"), delete=False)
    records.store.after_free()


def importing(rec: dict[str, Any]) -> bool:
    """Whether an import into this volume record is running (in some live process)."""
    return rec.get("importer") is not None and process_alive(rec["importer"])


def drop_import(records: Records, maps: BlockMaps, txn: Txn, rec: dict[str, Any],
                staged: int | None, delete: bool) -> None:
    """End an import that did not finish: drop the staged lineage (``staged``), or delete
    the new volume (``delete``), else mark it ``error``. ``rec`` is the volume's record."""
    if staged is not None:
        lin = maps.load(txn, staged)
        head = lin.head
        assert head is not None
        lin.head, lin.owner, lin.allocated = None, None, 0
        maps.drop_point(txn, lin, head)
        rec.pop("staging", None)
    elif delete:
        lin = maps.load(txn, rec["lineage"])
        head = lin.head
        assert head is not None
        lin.head, lin.owner, lin.allocated = None, None, 0
        maps.drop_point(txn, lin, head)
        txn.delete(rec["id"].encode(), db=records.db["volumes"])
        return
    else:
        rec["state"] = "error"
    rec.pop("importer", None)
    records.put_vol(txn, rec)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            field: str = f.read().rsplit(")", 1)[1].split()[19]
            return field
    except (OSError, IndexError):
        return None


def process_token() -> dict[str, Any]:
    """Names this process across the machine's lifetime (pid reuse included) and the
    machine (a store on RADOS is shared by hosts)."""
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "boot": _boot_id(),
            "host": os.uname().nodename}


def elsewhere(token: Any) -> bool:
    """Whether the token names a process of another host (older tokens name none)."""
    return isinstance(token, dict) and token.get("host") not in (None, os.uname().nodename)


def process_alive(token: Any) -> bool:
    """Whether the process a :func:`process_token` names still runs. Without /proc, or for
    a process of another host, the answer is yes (never settle an import that may be
    running; see :func:`recover_imports`)."""
    if not isinstance(token, dict) or not isinstance(token.get("pid"), int):
        return False
    if elsewhere(token):
        return True
    boot = _boot_id()
    if not boot or token.get("start") is None:
        return True
    if token.get("boot") != boot:
        return False
    return bool(_start_time(token["pid"]) == token["start"])

