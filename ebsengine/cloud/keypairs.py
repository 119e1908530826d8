"""Key pairs: CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair.

A key pair is named uniquely per account and region and keeps only its public half (the
OpenSSH line), its type and AWS's fingerprint; a created key's private material is returned
once by :meth:`KeyPairs.create` and never stored. The formats and fingerprints are
:mod:`.keyformats`'. ::

    rec, material = cloud.keypairs.create(scope, "deploy", key_type="ed25519")
    rec = cloud.keypairs.import_key(scope, "laptop", b"ssh-ed25519 AAAA... me@host")
    cloud.keypairs.describe(scope, names=["deploy"])      # InvalidKeyPair.NotFound if absent
    cloud.keypairs.delete(scope, name="deploy")           # -> the deleted id (None: no such)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ebsengine import errors
from ebsengine.engine import Transaction
from ebsengine.rules import is_aws_id, new_id

from . import keyformats
from .model import KeyPair
from .scope import Scope
from .tags import spec_tags

if TYPE_CHECKING:
    from .core import Cloud

MAX_NAME = 255


def check_key_name(name: Any) -> str:
    """A key pair name: 1 to 255 ASCII characters, else ``InvalidParameterValue``."""
    if not isinstance(name, str) or not name:
        raise errors.Ec2Error("MissingParameter", "The request must contain the parameter KeyName")
    if len(name) > MAX_NAME or not name.isascii():
        raise errors.Ec2Error("InvalidParameterValue",
                              f"Value ({name}) for parameter keyName is invalid. The key name "
                              f"must be up to {MAX_NAME} ASCII characters.")
    return name


class KeyPairs:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    @property
    def table(self) -> Any:
        return self.cloud.keypair_table

    # --- reads ----------------------------------------------------------------------------

    def all(self, scope: Scope, tx: Transaction | None = None) -> list[KeyPair]:
        """The scope's key pairs (its account, its region), in name order."""
        recs = [k for k in self.table.in_region(scope.region, tx=tx)
                if k.owner_id == scope.account_id]
        return sorted(recs, key=lambda k: (k.name, k.id))

    def find(self, scope: Scope, name: str, tx: Transaction | None = None) -> KeyPair | None:
        """The key pair named ``name`` (case-sensitive), or None."""
        return next((k for k in self.all(scope, tx) if k.name == name), None)

    def get(self, scope: Scope, key_pair_id: str, tx: Transaction | None = None) -> KeyPair | None:
        rec: KeyPair | None = self.table.get(key_pair_id, tx=tx) if is_aws_id(key_pair_id, "key") \
            else None
        if rec is None or rec.region != scope.region or rec.owner_id != scope.account_id:
            return None
        return rec

    def describe(self, scope: Scope, names: list[str] | None = None,
                 ids: list[str] | None = None) -> list[KeyPair]:
        """The key pairs named or identified (all of them when neither is given), in name
        order; any unknown one is ``InvalidKeyPair.NotFound`` (the first, as AWS names it)."""
        recs = self.all(scope)
        if names:
            by_name = {k.name: k for k in recs}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise errors.Ec2Error("InvalidKeyPair.NotFound",
                                      f"The key pair '{missing[0]}' does not exist")
            recs = [k for k in recs if k.name in set(names)]
        if ids:
            by_id = {k.id: k for k in recs}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise errors.Ec2Error("InvalidKeyPair.NotFound",
                                      f"The key pair ID '{missing[0]}' does not exist")
            recs = [k for k in recs if k.id in set(ids)]
        return recs

    # --- writes ---------------------------------------------------------------------------

    def create(self, scope: Scope, name: str, *, key_type: str = "rsa", key_format: str = "pem",
               tags: dict[str, str] | None = None,
               tag_specifications: list[dict[str, Any]] | None = None) -> tuple[KeyPair, str]:
        """A new key pair; returns its record and its private key material (the only time
        it exists: it is not stored). ``tags`` or ``tag_specifications`` (``key-pair``)."""
        check_key_name(name)
        if key_type not in keyformats.KEY_TYPES:
            raise errors.Ec2Error("InvalidParameterValue", f"Invalid key type: {key_type}")
        if key_format not in keyformats.KEY_FORMATS:
            raise errors.Ec2Error("InvalidParameterValue", f"Invalid key format: {key_format}")
        all_tags = self._tags(tags, tag_specifications)
        self._precheck(scope, name)
        new = keyformats.generate(key_type, key_format, comment=name)
        rec = self._put(scope, name, new.key_type, new.fingerprint, new.public_key, all_tags)
        return rec, new.material

    def import_key(self, scope: Scope, name: str, public_key_material: bytes | str, *,
                   tags: dict[str, str] | None = None,
                   tag_specifications: list[dict[str, Any]] | None = None) -> KeyPair:
        """Register the public half of a key made elsewhere (see :mod:`.keyformats` for the
        encodings taken). Bad material is ``InvalidKeyPair.Format``."""
        check_key_name(name)
        raw = public_key_material.encode() if isinstance(public_key_material, str) \
            else bytes(public_key_material)
        key = keyformats.parse_public_key(raw)
        all_tags = self._tags(tags, tag_specifications)
        self._precheck(scope, name)
        return self._put(scope, name, keyformats.key_type_of(key),
                         keyformats.imported_fingerprint(key), keyformats.openssh_line(key),
                         all_tags)

    def delete(self, scope: Scope, name: str | None = None,
               key_pair_id: str | None = None) -> str | None:
        """Delete a key pair by name or id; returns its id. An unknown name is not an error
        (AWS answers ``true`` and deletes nothing: None is returned); an unknown id is
        ``InvalidKeyPair.NotFound``. Instances launched with it keep their key name."""
        if not name and not key_pair_id:
            raise errors.Ec2Error("MissingParameter",
                                  "The request must contain the parameter KeyName or KeyPairId")
        with self.cloud.engine.transaction() as tx:
            if key_pair_id:
                rec = self.get(scope, key_pair_id, tx)
                if rec is None or (name and rec.name != name):
                    raise errors.Ec2Error("InvalidKeyPair.NotFound",
                                          f"The key pair ID '{key_pair_id}' does not exist")
            else:
                rec = self.find(scope, str(name), tx)
                if rec is None:
                    return None
            self.table.delete(rec.id, tx=tx)
            return rec.id

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _tags(tags: dict[str, str] | None,
              specs: list[dict[str, Any]] | None) -> dict[str, str]:
        from ebsengine.rules import check_tags

        out = spec_tags(specs, KeyPair.RESOURCE_TYPE)
        return check_tags({**out, **(tags or {})})

    def _precheck(self, scope: Scope, name: str, tx: Transaction | None = None) -> None:
        """Duplicate name, then the per-region quota (before the key is made, and again in
        the unit that stores it)."""
        mine = self.all(scope, tx)
        if any(k.name == name for k in mine):
            raise errors.Ec2Error("InvalidKeyPair.Duplicate",
                                  f"The keypair '{name}' already exists.")
        if len(mine) >= self.cloud.config.key_pair_quota:
            raise errors.Ec2Error("KeyPairLimitExceeded",
                                  f"Maximum of {self.cloud.config.key_pair_quota} key pairs per "
                                  f"region reached.")

    def _put(self, scope: Scope, name: str, key_type: str, fingerprint: str, public_key: str,
             tags: dict[str, str]) -> KeyPair:
        rec = KeyPair(id=new_id(KeyPair.PREFIX), region=scope.region, owner_id=scope.account_id,
                      name=name, key_type=key_type, fingerprint=fingerprint,
                      public_key=f"{public_key} {name}", create_time=self.cloud.now(),
                      tags=tags)
        with self.cloud.engine.transaction() as tx:
            self._precheck(scope, name, tx)  # a concurrent create of the same name lost
            self.table.put(rec, tx=tx)
        return rec
