"""Migration of stores of an older format (see ``layout.py``, "Format history and migration").

``STEPS[n]`` turns a format-``n`` store into format ``n + 1``: a list of functions run in one
write transaction together with the new ``format`` record, so a crash during a migration
leaves the store in its old format, untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import lmdb

from .. import layout as L

Step = Callable[[lmdb.Transaction, Mapping[str, Any]], None]


def build_snaps_by_volume(txn: lmdb.Transaction, db: Mapping[str, Any]) -> None:
    """Format 1 -> 2: index every snapshot record that names a volume."""
    index = db["snaps_by_volume"]
    txn.drop(index, delete=False)
    for key, raw in txn.cursor(db=db["snapshots"]):
        vid = json.loads(bytes(raw)).get("volume_id")
        if vid:
            txn.put(L.snap_volume_key(vid, bytes(key).decode()), b"", db=index)


STEPS: dict[int, list[Step]] = {
    1: [build_snaps_by_volume],
}


def migrate(txn: lmdb.Transaction, db: Mapping[str, Any], fmt: int) -> None:
    """Bring a store of format ``fmt`` to ``layout.FORMAT_VERSION`` inside ``txn``."""
    for version in range(fmt, L.FORMAT_VERSION):
        for step in STEPS[version]:
            step(txn, db)
    txn.put(b"format", str(L.FORMAT_VERSION).encode(), db=db["meta"])
