"""The store's check value of its master key: a constant sealed by the master key, written
with the first KMS key. At open (and before any key is unsealed) it must open with the
master key file given, so a wrong file is refused before anything is read or written."""

from __future__ import annotations

import base64
import json
from typing import Any

from .. import layout as L
from ..errors import MasterKeyError, WrongMasterKey
from ..storage.store import Store
from .crypto import MasterKey, SealError, unseal

NS_MASTER = "kms.master"
MASTER_CHECK = b"ebsengine master key check v1"
MASTER_AAD = b"ebsengine/kms/master-check"

__all__ = ["MASTER_AAD", "MASTER_CHECK", "NS_MASTER", "MasterKey", "check_store_master",
           "verify_master"]


def verify_master(key: bytes, check: Any, path: str) -> None:
    """Raise WrongMasterKey unless the store's ``check`` record opens with ``key``."""
    try:
        ok = unseal(key, base64.b64decode(check["sealed"]), MASTER_AAD) == MASTER_CHECK
    except (SealError, KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise WrongMasterKey(f"master key file {path} is not the master key of this store "
                             f"(its KMS keys were sealed under another one); nothing was "
                             f"changed. Name the right file with --master-key or "
                             f"EBSENGINE_MASTER_KEY.")


def check_store_master(store: Store, master: MasterKey) -> bool:
    """At open: if the store holds sealed keys (a check value), the master key file must
    exist and be the right one (MasterKeyError / WrongMasterKey otherwise). Never creates
    the file. Returns whether the store has a check value."""
    with store.read() as txn:
        raw = txn.get(L.service_key(NS_MASTER, "check"), db=store.db["service"])
    if raw is None:
        return False
    if not master.exists():
        raise MasterKeyError(
            f"this store holds KMS keys sealed under a master key, and master key file "
            f"{master.path} does not exist: restore it, or name it with --master-key or "
            f"EBSENGINE_MASTER_KEY; nothing was changed")
    verify_master(master.load(create=False), json.loads(raw), master.path)
    return True
