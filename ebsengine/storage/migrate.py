"""Migration of stores of an older format (see ``layout.py``, "Format history and migration").

``STEPS[n]`` turns a format-``n`` store into format ``n + 1``: a list of functions run in one
write transaction together with the new ``format`` record, so a crash during a migration
leaves the store in its old format, untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from .. import layout as L
from .base import Table, Txn

Step = Callable[[Txn, Mapping[str, Table]], None]


def build_snaps_by_volume(txn: Txn, db: Mapping[str, Table]) -> None:
    """Format 1 -> 2: index every snapshot record that names a volume."""
    index = db["snaps_by_volume"]
    cur = txn.cursor(db=index)
    while cur.first():  # a crash can leave no partial index (one transaction), but be exact
        cur.delete()
    for key, raw in txn.cursor(db=db["snapshots"]):
        vid = json.loads(bytes(raw)).get("volume_id")
        if vid:
            txn.put(L.snap_volume_key(vid, bytes(key).decode()), b"", db=index)


STEPS: dict[int, list[Step]] = {
    1: [build_snaps_by_volume],
    2: [],  # format 3 only adds what format 2 never holds (sealed values, lineage domains)
    3: [],  # format 4 only adds what format 3 never holds (RADOS packs; chunks alone stay)
    4: [],  # format 5 only adds a patch tag (xxh3 digests); format-4 patches stay valid
    5: [],  # format 6 only adds layered patches; format-5 patches stay valid
}


def readable_as_is(fmt: int | None) -> bool:
    """Whether a store of format ``fmt`` is a valid store of ``layout.FORMAT_VERSION`` as it
    is (every step up to it changes nothing): a read-only open reads it, fsck accepts it."""
    return fmt == L.FORMAT_VERSION or (
        fmt in STEPS and all(v in STEPS and not STEPS[v] for v in range(fmt, L.FORMAT_VERSION)))


def migrate(txn: Txn, db: Mapping[str, Table], fmt: int) -> None:
    """Bring a store of format ``fmt`` to ``layout.FORMAT_VERSION`` inside ``txn``."""
    for version in range(fmt, L.FORMAT_VERSION):
        for step in STEPS[version]:
            step(txn, db)
    txn.put(b"format", str(L.FORMAT_VERSION).encode(), db=db["meta"])
