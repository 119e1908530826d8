"""The key service: KMS inside the engine, and EBS's envelope encryption keys.

Key hierarchy (each level stored only sealed by the one above it):

1. **The master key**: 32 random bytes in a file outside the store (never in it):
   ``Engine(path, master_key=PATH)`` / ``ebsengine --master-key PATH``, default
   :func:`default_master_key_path` (``$EBSENGINE_MASTER_KEY``, else
   ``~/.config/ebsengine/master.key``), created 0600 (directory 0700) when the first KMS key
   is made. The store keeps a check value (a constant sealed by it), so opening a store with
   another master key file is refused (:class:`~ebsengine.errors.WrongMasterKey`) before
   anything is written. Lose the file and every key of the store is lost: back it up.
2. **KMS keys** (:class:`KeyService`: CreateKey, aliases, states, deletion on the clock,
   Encrypt/Decrypt/GenerateDataKey...): their key material is sealed by the master key; the
   HTTP endpoint serves them to boto3's ``kms`` client.
3. **Data keys** of *domains* (one per encrypted volume lineage, as EBS keeps one data key
   per volume and its snapshots): 256 random bits stored only as KMS ciphertext under the
   lineage's KMS key, with the domain id as EncryptionContext
   (:meth:`KeyService.new_domain`, :meth:`KeyService.domain_key`). A disabled or
   pending-deletion KMS key makes its domains unreadable until it is enabled again.

Layer: below ``ebsengine.block`` (the data path unwraps data keys), above
``ebsengine.storage``. Ciphers and the nonce scheme: :mod:`.crypto`.
"""

from .crypto import default_master_key_path
from .master import MasterKey, check_store_master
from .service import (
    EBS_ALIAS,
    KMS_NAMESPACES,
    NS_ALIASES,
    NS_DOMAINS,
    NS_KEYS,
    Alias,
    KeyService,
    KmsKey,
    key_arn,
)

__all__ = ["EBS_ALIAS", "KMS_NAMESPACES", "NS_ALIASES", "NS_DOMAINS", "NS_KEYS", "Alias",
           "KeyService", "KmsKey", "MasterKey", "check_store_master", "default_master_key_path",
           "key_arn"]
