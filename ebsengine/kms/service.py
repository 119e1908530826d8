"""The key service: KMS keys, aliases, tags, the cryptographic operations, and EBS's
per-lineage data keys (domains). See the package docstring for the key hierarchy.

Records (the store's ``service`` table, ``layout.service_key(namespace, key)``, JSON):

==================  ==============================  ==========================================
namespace           key                             value
==================  ==============================  ==========================================
``kms.keys``        key id (UUID)                   a :class:`KmsKey` (material sealed by the
                                                    master key, AAD = the key id)
``kms.aliases``     ``region/account/alias/name``   ``{"target": key id, "created", "updated"}``
``kms.domains``     domain id (``dom-<32 hex>``)    ``{"key": key id, "region", "account",
                                                    "wrapped": b64 KMS ciphertext of the data
                                                    key, EncryptionContext = the domain id}``
``kms.master``      ``check``                       ``{"sealed": b64}``: a constant sealed by
                                                    the master key (detects a wrong one)
==================  ==============================  ==========================================

Every change is one unit of work: the caller's transaction when it passes ``txn=`` (an
engine :class:`~ebsengine.engine.Transaction`, or a storage transaction below the engine),
else one of its own; a refused call changes nothing. Time comes from the ``clock`` the
service was made (or :meth:`KeyService.bind`-ed) with. A key past its deletion date is
deleted: readers no longer see it at once, and the next write of the service removes its
record and aliases (so a read never writes).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from .. import layout as L
from ..errors import KmsError, WrongMasterKey
from ..storage.base import Txn
from ..storage.store import Store
from .crypto import SealError, seal, unseal
from .master import MASTER_AAD, MASTER_CHECK, NS_MASTER, MasterKey, verify_master

NS_KEYS = "kms.keys"
NS_ALIASES = "kms.aliases"
NS_DOMAINS = "kms.domains"
#: every namespace of the key service (the master check value apart: it is no resource)
KMS_NAMESPACES = (NS_KEYS, NS_ALIASES, NS_DOMAINS)

DAY = 86400.0
DEFAULT_PENDING_DAYS = 30
PENDING_DAYS = (7, 30)
EBS_ALIAS = "alias/aws/ebs"
#: AWS-managed keys made on first use: alias -> description (AWS's wording)
MANAGED_ALIASES = {EBS_ALIAS: "Default key that protects my EBS volumes when no other key "
                              "is defined"}
DOMAIN_CONTEXT = "ebsengine:domain"
BLOB_VERSION = 1
_HEADER = 1 + 16  # version | key id (UUID bytes)

SYMMETRIC = "SYMMETRIC_DEFAULT"
#: HMAC key spec -> (material bytes, MAC algorithm, hashlib name)
HMAC_SPECS = {"HMAC_224": (28, "HMAC_SHA_224", "sha224"),
              "HMAC_256": (32, "HMAC_SHA_256", "sha256"),
              "HMAC_384": (48, "HMAC_SHA_384", "sha384"),
              "HMAC_512": (64, "HMAC_SHA_512", "sha512")}
ASYMMETRIC_SPECS = ("RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384",
                    "ECC_NIST_P521", "ECC_SECG_P256K1", "SM2", "ML_DSA_44", "ML_DSA_65",
                    "ML_DSA_87", "ECC_NIST_EDWARDS25519")
MAX_TAGS = 50
_ALIAS_RE = re.compile(r"^alias/[a-zA-Z0-9/_-]+\Z")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):(key/.+|alias/.+)\Z")

Clock = Callable[[], float]
#: ``unit(txn)``: a write transaction (the caller's ``txn`` resolved, else a unit of its own)
Unit = Callable[[Any], AbstractContextManager[Txn]]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass(frozen=True)
class KmsKey:
    """One KMS key as stored (its material sealed by the master key)."""

    id: str
    region: str
    account: str
    created: float
    description: str = ""
    usage: str = "ENCRYPT_DECRYPT"
    spec: str = SYMMETRIC
    state: str = "Enabled"            # Enabled | Disabled | PendingDeletion
    manager: str = "CUSTOMER"         # CUSTOMER | AWS
    origin: str = "AWS_KMS"
    deletion_date: float | None = None
    pending_days: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    sealed: str = ""

    @property
    def arn(self) -> str:
        return key_arn(self.region, self.account, self.id)

    def but(self, **changes: Any) -> KmsKey:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KmsKey:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def metadata(self) -> dict[str, Any]:
        """KMS's ``KeyMetadata`` (botocore member names)."""
        md: dict[str, Any] = {
            "AWSAccountId": self.account, "KeyId": self.id, "Arn": self.arn,
            "CreationDate": self.created, "Enabled": self.state == "Enabled",
            "Description": self.description, "KeyUsage": self.usage, "KeyState": self.state,
            "Origin": self.origin, "KeyManager": self.manager, "CustomerMasterKeySpec": self.spec,
            "KeySpec": self.spec, "MultiRegion": False,
        }
        if self.spec == SYMMETRIC:
            md["EncryptionAlgorithms"] = [SYMMETRIC]
        elif self.spec in HMAC_SPECS:
            md["MacAlgorithms"] = [HMAC_SPECS[self.spec][1]]
        if self.state == "PendingDeletion":
            md["DeletionDate"] = self.deletion_date
            md["PendingDeletionWindowInDays"] = self.pending_days
        return md


@dataclass(frozen=True)
class Alias:
    name: str
    region: str
    account: str
    target: str | None       # None: a predefined AWS alias whose key does not exist yet
    created: float | None = None
    updated: float | None = None

    @property
    def arn(self) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:{self.name}"


def key_arn(region: str, account: str, key_id: str) -> str:
    return f"arn:aws:kms:{region}:{account}:key/{key_id}"


def _encode_context(context: dict[str, str] | None) -> bytes:
    """The EncryptionContext as AAD: canonical (sorted) JSON; empty for none."""
    if not context:
        return b""
    if not isinstance(context, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise KmsError("ValidationException", "EncryptionContext must map strings to strings")
    return json.dumps(context, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def _not_found(region: str, account: str, key_id: str) -> KmsError:
    return KmsError("NotFoundException",
                    f"Key '{key_arn(region, account, key_id)}' does not exist")


class KeyService:
    """KMS keys, aliases and data-key domains in one store (see the module docstring).

    Made by the engine (``engine.kms``, lazily); ``store`` is its storage, ``master`` the
    master key (file), ``unit(txn)`` / ``reading(txn)`` resolve the caller's transaction (or
    open one), ``clock`` gives the time. Region/account arguments scope every call as AWS's
    endpoints do: a key of another region or account is not found.
    """

    def __init__(self, store: Store, master: MasterKey, *, unit: Unit | None = None,
                 reading: Unit | None = None, clock: Clock = time.time) -> None:
        self.store = store
        self.master = master
        self._unit = unit or self._own_unit
        self._reading = reading or self._own_reading
        self.clock = clock

    def bind(self, clock: Clock) -> KeyService:
        """The same service reading time from ``clock`` (the AWS endpoint's, a test's)."""
        other = KeyService(self.store, self.master, unit=self._unit, reading=self._reading,
                           clock=clock)
        return other

    # --- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _own_unit(self, txn: Any) -> Iterator[Txn]:
        if txn is not None:
            yield txn
        else:
            with self.store.write() as own:
                yield own

    @contextlib.contextmanager
    def _own_reading(self, txn: Any) -> Iterator[Txn]:
        if txn is not None:
            yield txn
        else:
            with self.store.read() as own:
                yield own

    @contextlib.contextmanager
    def _write(self, txn: Any) -> Iterator[tuple[Txn, float]]:
        """A write unit with expired keys removed first, and the time of the unit."""
        with self._unit(txn) as t:
            now = self.clock()
            self._purge(t, now)
            yield t, now

    def _get(self, t: Txn, ns: str, key: str) -> Any:
        raw = t.get(L.service_key(ns, key), db=self.store.db["service"])
        return None if raw is None else json.loads(raw)

    def _put(self, t: Txn, ns: str, key: str, value: Any) -> None:
        k = L.service_key(ns, key)
        if value is None:
            t.delete(k, db=self.store.db["service"])
        else:
            t.put(k, json.dumps(value, sort_keys=True).encode(), db=self.store.db["service"])

    def _items(self, t: Txn, ns: str, prefix: str = "") -> list[tuple[str, Any]]:
        start = L.service_key(ns, prefix)
        base = len(L.service_key(ns, ""))
        out: list[tuple[str, Any]] = []
        cur = t.cursor(db=self.store.db["service"])
        if cur.set_range(start):
            for k, v in cur:
                if not k.startswith(start):
                    break
                out.append((bytes(k[base:]).decode(), json.loads(v)))
        return out

    # --- the master key -----------------------------------------------------------------------

    def _master_key(self, t: Txn, *, writing: bool) -> bytes:
        """The master key, checked against the store's check value; in a write, a store
        without one gets it (the master key file is created if missing)."""
        check = self._get(t, NS_MASTER, "check")
        if check is None:
            if not writing:  # nothing is sealed yet: nothing to open
                raise KmsError("KMSInternalException", "the store holds no sealed keys")
            key = self.master.load(create=True)
            self._put(t, NS_MASTER, "check", {"sealed": _b64(seal(key, MASTER_CHECK, MASTER_AAD))})
            return key
        key = self.master.load(create=False)
        verify_master(key, check, self.master.path)
        return key

    def _material(self, t: Txn, key: KmsKey, *, writing: bool = False) -> bytes:
        master = self._master_key(t, writing=writing)
        try:
            return unseal(master, _unb64(key.sealed), b"kms-key\x00" + key.id.encode())
        except SealError:
            raise WrongMasterKey(f"the material of KMS key {key.id} does not open with master "
                                 f"key {self.master.path}") from None

    # --- records --------------------------------------------------------------------------

    def _alive(self, rec: Any, now: float) -> KmsKey | None:
        if rec is None:
            return None
        key = KmsKey.from_dict(rec)
        if key.state == "PendingDeletion" and key.deletion_date is not None \
                and key.deletion_date <= now:
            return None  # deleted on the clock (its record goes with the next write)
        return key

    def _purge(self, t: Txn, now: float) -> None:
        dead = [k for k, rec in self._items(t, NS_KEYS) if self._alive(rec, now) is None]
        if not dead:
            return
        gone = set(dead)
        for k in dead:
            self._put(t, NS_KEYS, k, None)
        for name, rec in self._items(t, NS_ALIASES):
            if rec.get("target") in gone:
                self._put(t, NS_ALIASES, name, None)

    def _store_key(self, t: Txn, key: KmsKey) -> None:
        self._put(t, NS_KEYS, key.id, key.to_dict())

    def _alias_rec(self, t: Txn, region: str, account: str, name: str) -> Any:
        return self._get(t, NS_ALIASES, f"{region}/{account}/{name}")

    def _resolve(self, t: Txn, key_id: Any, region: str, account: str, now: float, *,
                 aliases: bool = True) -> KmsKey:
        """The live key ``key_id`` names (key id, key ARN, alias name or alias ARN, when
        ``aliases``) in this region and account; NotFoundException otherwise."""
        if not isinstance(key_id, str) or not key_id:
            raise KmsError("ValidationException", "KeyId must be a non-empty string")
        ident = key_id
        if ident.startswith("arn:"):
            m = _ARN_RE.match(ident)
            if m is None:
                raise KmsError("NotFoundException", f"Invalid arn {ident}")
            if (m.group(1), m.group(2)) != (region, account):
                raise KmsError("NotFoundException", f"Invalid arn {ident}: it is not of "
                                                    f"region {region} and account {account}")
            ident = m.group(3)
            if ident.startswith("key/"):
                ident = ident[4:]
        if ident.startswith("alias/"):
            if not aliases:
                raise KmsError("NotFoundException", f"Invalid keyId '{key_id}'")
            rec = self._alias_rec(t, region, account, ident)
            if rec is None:
                raise KmsError("NotFoundException", f"Alias arn:aws:kms:{region}:{account}:"
                                                    f"{ident} is not found.")
            key = self._alive(self._get(t, NS_KEYS, rec["target"]), now)
            if key is None:
                raise _not_found(region, account, rec["target"])
            return key
        if not _UUID_RE.match(ident):
            raise KmsError("NotFoundException", f"Invalid keyId '{key_id}'")
        key = self._alive(self._get(t, NS_KEYS, ident), now)
        if key is None or (key.region, key.account) != (region, account):
            raise _not_found(region, account, ident)
        return key

    def _managed_name(self, key_id: Any, region: str, account: str) -> str | None:
        """The predefined AWS alias ``key_id`` names (by name or ARN), if it does."""
        if not isinstance(key_id, str):
            return None
        name = key_id
        prefix = f"arn:aws:kms:{region}:{account}:"
        if name.startswith(prefix):
            name = name[len(prefix):]
        return name if name in MANAGED_ALIASES else None

    def _ensure_managed(self, key_id: Any, region: str, account: str, txn: Any) -> None:
        """Create the AWS-managed key a predefined alias names on its first use (in its own
        unit, or the caller's)."""
        name = self._managed_name(key_id, region, account)
        if name is None:
            return
        with self._reading(txn) as t:
            if self._alias_rec(t, region, account, name) is not None:
                return
        with self._write(txn) as (t, now):
            if self._alias_rec(t, region, account, name) is None:
                self._new_key(t, now, region, account, description=MANAGED_ALIASES[name],
                              manager="AWS", alias=name)

    def _new_key(self, t: Txn, now: float, region: str, account: str, *, description: str = "",
                 usage: str = "ENCRYPT_DECRYPT", spec: str = SYMMETRIC, manager: str = "CUSTOMER",
                 tags: dict[str, str] | None = None, alias: str | None = None) -> KmsKey:
        key_id = str(uuid.uuid4())
        size = HMAC_SPECS[spec][0] if spec in HMAC_SPECS else 32
        master = self._master_key(t, writing=True)
        sealed = seal(master, os.urandom(size), b"kms-key\x00" + key_id.encode())
        key = KmsKey(id=key_id, region=region, account=account, created=now,
                     description=description, usage=usage, spec=spec, manager=manager,
                     tags=dict(tags or {}), sealed=_b64(sealed))
        self._store_key(t, key)
        if alias is not None:
            self._put(t, NS_ALIASES, f"{region}/{account}/{alias}",
                      {"target": key_id, "created": now, "updated": now})
        return key

    @staticmethod
    def _usable(key: KmsKey, usage: str = "ENCRYPT_DECRYPT") -> None:
        if key.state == "Disabled":
            raise KmsError("DisabledException", f"{key.arn} is disabled.")
        if key.state == "PendingDeletion":
            raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
        if key.usage != usage:
            raise KmsError("InvalidKeyUsageException",
                           f"{key.arn} key usage is {key.usage} which is not valid for this "
                           f"operation.")

    @staticmethod
    def _customer(key: KmsKey, action: str) -> None:
        if key.manager != "CUSTOMER":
            raise KmsError("AccessDeniedException",
                           f"{action} is not allowed on AWS managed key {key.arn}")

    # --- keys ---------------------------------------------------------------------------------

    def create_key(self, region: str, account: str, *, description: str = "",
                   key_usage: str | None = None, key_spec: str | None = None,
                   origin: str = "AWS_KMS", multi_region: bool = False,
                   tags: dict[str, str] | None = None, txn: Any = None) -> KmsKey:
        """CreateKey: a symmetric (``SYMMETRIC_DEFAULT``, AES-256-GCM) key, or an HMAC key
        (``HMAC_224..512`` with ``key_usage="GENERATE_VERIFY_MAC"``)."""
        spec = key_spec or SYMMETRIC
        usage = key_usage or "ENCRYPT_DECRYPT"
        if spec in ASYMMETRIC_SPECS:
            raise KmsError("UnsupportedOperationException",
                           f"KeySpec {spec}: asymmetric keys are not implemented by ebsengine")
        wanted = "ENCRYPT_DECRYPT" if spec == SYMMETRIC else \
            "GENERATE_VERIFY_MAC" if spec in HMAC_SPECS else None
        if usage != wanted:
            raise KmsError("ValidationException",
                           f"KeyUsage {usage} is not compatible with KeySpec {spec}")
        if origin != "AWS_KMS":
            raise KmsError("UnsupportedOperationException",
                           f"Origin {origin} is not implemented by ebsengine (only AWS_KMS)")
        if multi_region:
            raise KmsError("UnsupportedOperationException",
                           "multi-Region keys are not implemented by ebsengine")
        checked = check_tags(tags)
        with self._write(txn) as (t, now):
            return self._new_key(t, now, region, account, description=description, usage=usage,
                                 spec=spec, tags=checked)

    def describe_key(self, key_id: str, region: str, account: str, *, txn: Any = None) -> KmsKey:
        """DescribeKey (by id, ARN, alias or alias ARN). A predefined AWS alias
        (``alias/aws/ebs``) gets its key made here on first use, as AWS does."""
        self._ensure_managed(key_id, region, account, txn)
        with self._reading(txn) as t:
            return self._resolve(t, key_id, region, account, self.clock())

    def list_keys(self, region: str, account: str, *, txn: Any = None) -> list[KmsKey]:
        """ListKeys: every live key of the region and account, in key id order."""
        now = self.clock()
        with self._reading(txn) as t:
            keys = [self._alive(rec, now) for _, rec in self._items(t, NS_KEYS)]
        return [k for k in keys if k is not None and (k.region, k.account) == (region, account)]

    def _change(self, key_id: str, region: str, account: str, txn: Any,
                fn: Callable[[KmsKey, float], KmsKey]) -> KmsKey:
        with self._write(txn) as (t, now):
            key = self._resolve(t, key_id, region, account, now, aliases=False)
            new = fn(key, now)
            if new != key:
                self._store_key(t, new)
            return new

    def enable_key(self, key_id: str, region: str, account: str, *, txn: Any = None) -> KmsKey:
        def fn(key: KmsKey, now: float) -> KmsKey:
            self._customer(key, "EnableKey")
            if key.state == "PendingDeletion":
                raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
            return key.but(state="Enabled")
        return self._change(key_id, region, account, txn, fn)

    def disable_key(self, key_id: str, region: str, account: str, *, txn: Any = None) -> KmsKey:
        def fn(key: KmsKey, now: float) -> KmsKey:
            self._customer(key, "DisableKey")
            if key.state == "PendingDeletion":
                raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
            return key.but(state="Disabled")
        return self._change(key_id, region, account, txn, fn)

    def schedule_key_deletion(self, key_id: str, region: str, account: str,
                              pending_days: int | None = None, *, txn: Any = None) -> KmsKey:
        """ScheduleKeyDeletion: PendingDeletion for ``pending_days`` (7-30, default 30) on
        the service's clock; then the key is deleted (and with it what it encrypted)."""
        days = DEFAULT_PENDING_DAYS if pending_days is None else pending_days
        if isinstance(days, bool) or not isinstance(days, int) or \
                not PENDING_DAYS[0] <= days <= PENDING_DAYS[1]:
            raise KmsError("ValidationException",
                           f"PendingWindowInDays must be between {PENDING_DAYS[0]} and "
                           f"{PENDING_DAYS[1]}")

        def fn(key: KmsKey, now: float) -> KmsKey:
            self._customer(key, "ScheduleKeyDeletion")
            if key.state == "PendingDeletion":
                raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
            return key.but(state="PendingDeletion", deletion_date=now + days * DAY,
                           pending_days=days)
        return self._change(key_id, region, account, txn, fn)

    def cancel_key_deletion(self, key_id: str, region: str, account: str, *,
                            txn: Any = None) -> KmsKey:
        """CancelKeyDeletion: the key is back, Disabled (as AWS leaves it)."""
        def fn(key: KmsKey, now: float) -> KmsKey:
            self._customer(key, "CancelKeyDeletion")
            if key.state != "PendingDeletion":
                raise KmsError("KMSInvalidStateException", f"{key.arn} is not pending deletion.")
            return key.but(state="Disabled", deletion_date=None, pending_days=None)
        return self._change(key_id, region, account, txn, fn)

    def update_key_description(self, key_id: str, description: str, region: str, account: str,
                               *, txn: Any = None) -> KmsKey:
        def fn(key: KmsKey, now: float) -> KmsKey:
            self._customer(key, "UpdateKeyDescription")
            if key.state == "PendingDeletion":
                raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
            return key.but(description=description)
        return self._change(key_id, region, account, txn, fn)

    # --- tags ---------------------------------------------------------------------------------

    def tag_resource(self, key_id: str, tags: dict[str, str], region: str, account: str, *,
                     txn: Any = None) -> KmsKey:
        def fn(key: KmsKey, now: float) -> KmsKey:
            self._customer(key, "TagResource")
            if key.state == "PendingDeletion":
                raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
            return key.but(tags=check_tags({**key.tags, **check_tags(tags)}))
        return self._change(key_id, region, account, txn, fn)

    def untag_resource(self, key_id: str, tag_keys: list[str], region: str, account: str, *,
                       txn: Any = None) -> KmsKey:
        def fn(key: KmsKey, now: float) -> KmsKey:
            self._customer(key, "UntagResource")
            if key.state == "PendingDeletion":
                raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
            for k in tag_keys:
                _check_tag_key(k)
            return key.but(tags={k: v for k, v in key.tags.items() if k not in set(tag_keys)})
        return self._change(key_id, region, account, txn, fn)

    def list_resource_tags(self, key_id: str, region: str, account: str, *,
                           txn: Any = None) -> dict[str, str]:
        with self._reading(txn) as t:
            return dict(self._resolve(t, key_id, region, account, self.clock(),
                                      aliases=False).tags)

    # --- aliases ------------------------------------------------------------------------------

    @staticmethod
    def _check_alias_name(name: Any) -> str:
        if not isinstance(name, str) or not name.startswith("alias/") or len(name) > 256 \
                or not _ALIAS_RE.match(name) or name == "alias/":
            raise KmsError("ValidationException",
                           f"Alias name {name!r} must begin with 'alias/' followed by letters, "
                           f"digits, '/', '_' or '-'")
        if name.startswith("alias/aws/"):
            raise KmsError("NotAuthorizedException",
                           f"The alias prefix 'alias/aws/' is reserved for AWS managed keys "
                           f"({name})")
        return name

    def _alias_target(self, t: Txn, target: str, region: str, account: str, now: float) -> KmsKey:
        key = self._resolve(t, target, region, account, now, aliases=False)
        self._customer(key, "An alias")
        if key.state == "PendingDeletion":
            raise KmsError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
        return key

    def create_alias(self, name: str, target_key_id: str, region: str, account: str, *,
                     txn: Any = None) -> Alias:
        name = self._check_alias_name(name)
        with self._write(txn) as (t, now):
            if self._alias_rec(t, region, account, name) is not None:
                raise KmsError("AlreadyExistsException",
                               f"An alias with the name arn:aws:kms:{region}:{account}:{name} "
                               f"already exists")
            key = self._alias_target(t, target_key_id, region, account, now)
            self._put(t, NS_ALIASES, f"{region}/{account}/{name}",
                      {"target": key.id, "created": now, "updated": now})
            return Alias(name, region, account, key.id, now, now)

    def update_alias(self, name: str, target_key_id: str, region: str, account: str, *,
                     txn: Any = None) -> Alias:
        name = self._check_alias_name(name)
        with self._write(txn) as (t, now):
            rec = self._alias_rec(t, region, account, name)
            if rec is None:
                raise KmsError("NotFoundException", f"Alias arn:aws:kms:{region}:{account}:"
                                                    f"{name} is not found.")
            key = self._alias_target(t, target_key_id, region, account, now)
            old = self._alive(self._get(t, NS_KEYS, rec["target"]), now)
            if old is not None and (old.usage, old.spec) != (key.usage, key.spec):
                raise KmsError("ValidationException",
                               f"{name} points to a key of type {old.spec}/{old.usage}; the "
                               f"new target must be of the same type")
            self._put(t, NS_ALIASES, f"{region}/{account}/{name}",
                      {"target": key.id, "created": rec["created"], "updated": now})
            return Alias(name, region, account, key.id, rec["created"], now)

    def delete_alias(self, name: str, region: str, account: str, *, txn: Any = None) -> None:
        name = self._check_alias_name(name)
        with self._write(txn) as (t, _now):
            if self._alias_rec(t, region, account, name) is None:
                raise KmsError("NotFoundException", f"Alias arn:aws:kms:{region}:{account}:"
                                                    f"{name} is not found.")
            self._put(t, NS_ALIASES, f"{region}/{account}/{name}", None)

    def list_aliases(self, region: str, account: str, key_id: str | None = None, *,
                     txn: Any = None) -> list[Alias]:
        """ListAliases in name order: the region's aliases, with the predefined AWS ones
        whose key does not exist yet (no target), as AWS lists them; with ``key_id`` only
        that key's."""
        now = self.clock()
        with self._reading(txn) as t:
            want = None if key_id is None else \
                self._resolve(t, key_id, region, account, now, aliases=False).id
            live = {k for k, rec in self._items(t, NS_KEYS) if self._alive(rec, now)}
            out: dict[str, Alias] = {}
            for k, rec in self._items(t, NS_ALIASES, f"{region}/{account}/"):
                name = k.split("/", 2)[2]
                if rec["target"] in live:
                    out[name] = Alias(name, region, account, rec["target"], rec.get("created"),
                                      rec.get("updated"))
        if want is not None:
            return sorted((a for a in out.values() if a.target == want), key=lambda a: a.name)
        for name in MANAGED_ALIASES:
            out.setdefault(name, Alias(name, region, account, None))
        return sorted(out.values(), key=lambda a: a.name)

    # --- cryptography -------------------------------------------------------------------------

    def _encrypt_with(self, t: Txn, key: KmsKey, plaintext: bytes,
                      context: dict[str, str] | None) -> bytes:
        header = bytes([BLOB_VERSION]) + uuid.UUID(key.id).bytes
        return header + seal(self._material(t, key), plaintext, header + _encode_context(context))

    @contextlib.contextmanager
    def _using(self, key_id: str, region: str, account: str, txn: Any,
               usage: str = "ENCRYPT_DECRYPT") -> Iterator[tuple[Txn, KmsKey]]:
        """A read transaction and the usable key ``key_id`` names (a predefined AWS alias
        gets its key first)."""
        self._ensure_managed(key_id, region, account, txn)
        with self._reading(txn) as t:
            key = self._resolve(t, key_id, region, account, self.clock())
            self._usable(key, usage)
            yield t, key

    def encrypt(self, key_id: str, plaintext: bytes, region: str, account: str, *,
                context: dict[str, str] | None = None, txn: Any = None) -> tuple[bytes, KmsKey]:
        """Encrypt: ``(ciphertext blob, key)``. The blob names its key (Decrypt needs no
        KeyId) and is bound to ``context`` (Decrypt must give the same)."""
        plaintext = bytes(plaintext)
        if not 1 <= len(plaintext) <= 4096:
            raise KmsError("ValidationException", "Plaintext must be 1 to 4096 bytes")
        _encode_context(context)
        with self._using(key_id, region, account, txn) as (t, key):
            return self._encrypt_with(t, key, plaintext, context), key

    def _open_blob(self, t: Txn, blob: bytes, region: str, account: str, now: float,
                   key_id: str | None, context: dict[str, str] | None) -> tuple[bytes, KmsKey]:
        blob = bytes(blob)
        if len(blob) < _HEADER + 48 or blob[0] != BLOB_VERSION:
            raise KmsError("InvalidCiphertextException", "The ciphertext is not valid")
        owner = str(uuid.UUID(bytes=blob[1:_HEADER]))
        if key_id is not None:
            wanted = self._resolve(t, key_id, region, account, now)
            if wanted.id != owner:
                raise KmsError("IncorrectKeyException",
                               "The key ID in the request does not identify a KMS key that "
                               "can perform this operation.")
        try:
            key = self._resolve(t, owner, region, account, now)
        except KmsError:  # tampered, of another region or account, or its key was deleted
            raise KmsError("InvalidCiphertextException",
                           "The ciphertext names no KMS key of this region and account "
                           "(tampered with, or its key was deleted)") from None
        self._usable(key)
        aad = blob[:_HEADER] + _encode_context(context)
        try:
            return unseal(self._material(t, key), blob[_HEADER:], aad), key
        except SealError:
            raise KmsError("InvalidCiphertextException",
                           "The ciphertext or its EncryptionContext is not valid") from None

    def decrypt(self, blob: bytes, region: str, account: str, *,
                context: dict[str, str] | None = None, key_id: str | None = None,
                txn: Any = None) -> tuple[bytes, KmsKey]:
        """Decrypt: ``(plaintext, key)``; InvalidCiphertextException when the blob was
        tampered with or ``context`` differs from the one it was encrypted with."""
        _encode_context(context)
        with self._reading(txn) as t:
            return self._open_blob(t, blob, region, account, self.clock(), key_id, context)

    def re_encrypt(self, blob: bytes, destination_key_id: str, region: str, account: str, *,
                   source_context: dict[str, str] | None = None,
                   destination_context: dict[str, str] | None = None,
                   source_key_id: str | None = None, txn: Any = None
                   ) -> tuple[bytes, KmsKey, KmsKey]:
        """ReEncrypt: ``(new blob, source key, destination key)``."""
        _encode_context(source_context)
        _encode_context(destination_context)
        if self._managed_name(destination_key_id, region, account) is not None:
            with self._reading(txn) as t:  # refuse a bad source before making the managed key
                self._open_blob(t, blob, region, account, self.clock(), source_key_id,
                                source_context)
        self._ensure_managed(destination_key_id, region, account, txn)
        with self._reading(txn) as t:
            now = self.clock()
            plain, source = self._open_blob(t, blob, region, account, now, source_key_id,
                                            source_context)
            dest = self._resolve(t, destination_key_id, region, account, now)
            self._usable(dest)
            return self._encrypt_with(t, dest, plain, destination_context), source, dest

    def generate_data_key(self, key_id: str, region: str, account: str, *,
                          number_of_bytes: int | None = None, key_spec: str | None = None,
                          context: dict[str, str] | None = None, txn: Any = None
                          ) -> tuple[bytes, bytes, KmsKey]:
        """GenerateDataKey: ``(plaintext, ciphertext blob, key)``; exactly one of
        ``number_of_bytes`` (1-1024) and ``key_spec`` (AES_256, AES_128)."""
        if (number_of_bytes is None) == (key_spec is None):
            raise KmsError("ValidationException",
                           "Please specify either number of bytes or key spec.")
        if key_spec is not None:
            sizes = {"AES_256": 32, "AES_128": 16}
            if key_spec not in sizes:
                raise KmsError("ValidationException", f"KeySpec {key_spec} is not valid")
            n = sizes[key_spec]
        else:
            n = number_of_bytes  # type: ignore[assignment]
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
                raise KmsError("ValidationException", "NumberOfBytes must be 1 to 1024")
        _encode_context(context)
        with self._using(key_id, region, account, txn) as (t, key):
            plain = os.urandom(n)
            return plain, self._encrypt_with(t, key, plain, context), key

    @staticmethod
    def generate_random(number_of_bytes: int) -> bytes:
        if isinstance(number_of_bytes, bool) or not isinstance(number_of_bytes, int) or \
                not 1 <= number_of_bytes <= 1024:
            raise KmsError("ValidationException", "NumberOfBytes must be 1 to 1024")
        return os.urandom(number_of_bytes)

    def _mac(self, key_id: str, message: bytes, algorithm: str, region: str, account: str,
             txn: Any) -> tuple[bytes, KmsKey]:
        message = bytes(message)
        if not 1 <= len(message) <= 4096:
            raise KmsError("ValidationException", "Message must be 1 to 4096 bytes")
        with self._using(key_id, region, account, txn, "GENERATE_VERIFY_MAC") as (t, key):
            _, alg, digest = HMAC_SPECS[key.spec]
            if algorithm != alg:
                raise KmsError("InvalidKeyUsageException",
                               f"MacAlgorithm {algorithm} is not valid for {key.arn} ({alg})")
            return hmac.new(self._material(t, key), message, getattr(hashlib, digest)).digest(), key

    def generate_mac(self, key_id: str, message: bytes, algorithm: str, region: str,
                     account: str, *, txn: Any = None) -> tuple[bytes, KmsKey]:
        """GenerateMac with an HMAC key: ``(mac, key)``."""
        return self._mac(key_id, message, algorithm, region, account, txn)

    def verify_mac(self, key_id: str, message: bytes, mac: bytes, algorithm: str, region: str,
                   account: str, *, txn: Any = None) -> KmsKey:
        """VerifyMac: the key, or KMSInvalidMacException when ``mac`` does not match."""
        want, key = self._mac(key_id, message, algorithm, region, account, txn)
        if not hmac.compare_digest(want, bytes(mac)):
            raise KmsError("KMSInvalidMacException", "The MAC is not valid for the message")
        return key

    # --- data-key domains (envelope encryption, as EBS does it) ---------------------------------

    def first_use(self, kms_key_id: str | None, region: str, account: str,
                  txn: Any = None) -> bool:
        """Whether :meth:`new_domain` under ``kms_key_id`` would also create what the key
        service makes on first use: the master key's check value, or the AWS-managed key a
        predefined alias names (``None``: ``alias/aws/ebs``); or purge first (a key whose
        deletion date has passed), which a refused request's unit would roll back."""
        key_ref = EBS_ALIAS if kms_key_id is None else kms_key_id
        with self._reading(txn) as t:
            if self._get(t, NS_MASTER, "check") is None:
                return True
            now = self.clock()  # a write unit would first purge keys deleted on the clock
            if any(self._alive(rec, now) is None for _, rec in self._items(t, NS_KEYS)):
                return True
            name = self._managed_name(key_ref, region, account)
            return name is not None and self._alias_rec(t, region, account, name) is None

    def new_domain(self, kms_key_id: str | None, region: str, account: str,
                   txn: Any = None) -> tuple[str, str]:
        """A new data-key domain: a fresh 256-bit data key, stored only wrapped (KMS
        ciphertext) by the KMS key ``kms_key_id`` (id, ARN, alias, alias ARN; None: the
        region's ``alias/aws/ebs``, made on first use), with the domain id as its
        EncryptionContext. Returns ``(domain_id, key ARN)``. The key must be Enabled."""
        key_ref = EBS_ALIAS if kms_key_id is None else kms_key_id
        self._ensure_managed(key_ref, region, account, txn)
        with self._write(txn) as (t, now):
            key = self._resolve(t, key_ref, region, account, now)
            self._usable(key)
            domain_id = "dom-" + uuid.uuid4().hex
            data_key = os.urandom(32)
            wrapped = self._encrypt_with(t, key, data_key, {DOMAIN_CONTEXT: domain_id})
            self._put(t, NS_DOMAINS, domain_id, {"key": key.id, "region": region,
                                                 "account": account, "wrapped": _b64(wrapped)})
            return domain_id, key.arn

    def _domain(self, t: Txn, domain_id: str) -> dict[str, Any]:
        rec = self._get(t, NS_DOMAINS, domain_id) if isinstance(domain_id, str) else None
        if rec is None:
            raise KmsError("NotFoundException", f"Data key domain {domain_id!r} does not exist")
        return dict(rec)

    def domain_key(self, domain_id: str, txn: Any = None) -> bytes:
        """The 32-byte data key of a domain, unwrapped by its KMS key. Raises KmsError with
        KMS's code when the key is disabled (``DisabledException``), pending deletion
        (``KMSInvalidStateException``) or deleted (``NotFoundException``); while the key
        exists nothing is lost: enabled again, the same data key comes back."""
        with self._reading(txn) as t:
            rec = self._domain(t, domain_id)
            now = self.clock()
            key = self._alive(self._get(t, NS_KEYS, rec["key"]), now)
            if key is None:
                raise KmsError("NotFoundException",
                               f"KMS key {key_arn(rec['region'], rec['account'], rec['key'])} "
                               f"of data key domain {domain_id} was deleted: its data cannot "
                               f"be decrypted")
            try:
                plain, _ = self._open_blob(t, _unb64(rec["wrapped"]), rec["region"],
                                           rec["account"], now, None,
                                           {DOMAIN_CONTEXT: domain_id})
            except KmsError as exc:
                raise KmsError(exc.code, f"the data key of domain {domain_id} cannot be "
                                         f"unwrapped: {exc.message}") from None
            return plain

    def has_domain(self, domain_id: str, txn: Any = None) -> bool:
        """Whether data-key domain ``domain_id`` exists (whatever its key's state)."""
        with self._reading(txn) as t:
            return isinstance(domain_id, str) and self._get(t, NS_DOMAINS, domain_id) is not None

    def domain_key_arn(self, domain_id: str, txn: Any = None) -> str:
        """The ARN of the KMS key wrapping a domain's data key."""
        with self._reading(txn) as t:
            rec = self._domain(t, domain_id)
        return key_arn(rec["region"], rec["account"], rec["key"])

    def delete_domain(self, domain_id: str, txn: Any = None) -> None:
        """Forget a domain (its data key is then gone for good)."""
        with self._write(txn) as (t, _now):
            self._domain(t, domain_id)
            self._put(t, NS_DOMAINS, domain_id, None)

    def domains(self, txn: Any = None) -> list[str]:
        with self._reading(txn) as t:
            return [k for k, _ in self._items(t, NS_DOMAINS)]

    # --- reset ------------------------------------------------------------------------------

    def reset(self, txn: Any = None) -> int:
        """Remove every key, alias and domain (the master check value stays); how many keys
        went."""
        with self._unit(txn) as t:
            n = len(self._items(t, NS_KEYS))
            for ns in KMS_NAMESPACES:
                for k, _ in self._items(t, ns):
                    self._put(t, ns, k, None)
            return n


# --- tag rules (KMS's: TagException) ------------------------------------------------------------


def _check_tag_key(k: Any) -> None:
    if not isinstance(k, str) or not 1 <= len(k) <= 128:
        raise KmsError("TagException", f"Tag key {k!r} must be 1-128 characters")
    if k.startswith("aws:"):
        raise KmsError("TagException", f"Tag keys beginning with 'aws:' are reserved ({k})")


def check_tags(tags: dict[str, str] | None) -> dict[str, str]:
    tags = dict(tags or {})
    if len(tags) > MAX_TAGS:
        raise KmsError("TagException", f"A KMS key can have at most {MAX_TAGS} tags")
    for k, v in tags.items():
        _check_tag_key(k)
        if not isinstance(v, str) or len(v) > 256:
            raise KmsError("TagException", f"Tag value of {k!r} must be at most 256 characters")
    return tags
