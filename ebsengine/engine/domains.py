"""Encrypted lineages: their data-key domains, unlocked through KMS, and re-encrypting copies.

A lineage's ``domain`` (``layout.py``, "Encryption") names a data key that KMS keeps wrapped by
a KMS key. :meth:`Domains.unlock` asks KMS for it each time a volume, snapshot, export,
import or EBS-direct call of that lineage begins, so a disabled or pending-deletion key
refuses the work (KMS's error) until it is enabled again; the unwrapped key then stays in the
chunk store's :class:`~ebsengine.storage.sealing.Keyring` for the readers and writers already
running (as an attached EBS volume keeps working when its key is disabled).

A lineage reads through a base of the same domain only. Encrypting a plaintext snapshot, or
moving data to another key, is a full copy (:meth:`Domains.copy_into`): every visible chunk is
decoded and stored again, sealed in the new domain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..block.context import BlockContext
from ..block.maps import BlockMaps, Lineage
from ..errors import KmsError
from ..rules import DEFAULT_ACCOUNT, DEFAULT_REGION
from ..storage.base import Txn
from ..storage.chunks import ChunkStore
from ..storage.sealing import Domain

if TYPE_CHECKING:
    from ..kms import KeyService

class Domains:
    """The engine's view of data-key domains (see the module doc)."""

    def __init__(self, chunks: ChunkStore, maps: BlockMaps, ctx: BlockContext,
                 kms: Callable[[], KeyService]) -> None:
        self.chunks = chunks
        self.maps = maps
        self.ctx = ctx
        self._kms = kms

    def new(self, txn: Txn, kms_key_id: str | None, region: str,
            account: str | None) -> tuple[str, str]:
        """A new domain under KMS key ``kms_key_id`` (None: the region's ``alias/aws/ebs``),
        created in ``txn``: ``(domain id, key ARN)``. KmsError if the key is unusable."""
        return self._kms().new_domain(kms_key_id, region, account or DEFAULT_ACCOUNT, txn)

    def key_arn(self, txn: Txn, kms_key_id: str, region: str, account: str | None) -> str:
        """The ARN of the KMS key ``kms_key_id`` names (id, ARN, alias); KmsError if none."""
        return self._kms().describe_key(kms_key_id, region, account or DEFAULT_ACCOUNT,
                                        txn=txn).arn

    def unlock(self, domain_id: str | None, txn: Txn | None = None) -> Domain | None:
        """The domain, its data key unwrapped by KMS now (KmsError when its KMS key is
        disabled, pending deletion or gone); None for a plaintext lineage."""
        if domain_id is None:
            return None
        data_key = self._kms().domain_key(domain_id, txn)
        held = self.chunks.keys.by_id(domain_id)
        return held if held is not None else self.chunks.keys.add(Domain(domain_id, data_key))

    def of_lineage(self, txn: Txn, lineage: int) -> Domain | None:
        """:meth:`unlock` for the domain of ``lineage``."""
        return self.unlock(self.maps.load(txn, lineage).domain, txn)

    def domain_of(self, txn: Txn, lineage: int) -> str | None:
        return self.maps.load(txn, lineage).domain

    def copy_into(self, txn: Txn, chain: list[tuple[int, int]], lin: Lineage,
                  domain: Domain | None) -> int:
        """Store every data chunk visible at ``chain[0]`` into the fresh lineage ``lin`` (no
        entries, no base) sealed in ``domain``; the caller saves ``lin``. Returns the number
        of chunks. The source's domain must be unlocked (:meth:`unlock`)."""
        n = 0
        for idx, value in sorted(self.maps.visible(txn, chain).items()):
            data = self.ctx.content(txn, value)
            fp = self.chunks.fingerprints(data, domain)[0]
            if fp is None:
                continue
            self.maps.set_fresh(txn, lin, idx, self.chunks.put(txn, fp, data, None, domain))
            n += 1
        lin.allocated = n
        return n

    def lineage_for(self, txn: Txn, owner: str | None, source: tuple[int, int] | None,
                    allocated: int, *, encrypted: bool, kms_key_id: str | None,
                    region: str | None, account: str | None) -> tuple[Lineage, str | None]:
        """The new lineage of a volume or snapshot that starts as ``source`` (a point, or
        None: empty), with EBS's encryption rules: ``(lineage, KMS key ARN or None)``.

        * plaintext source, no encryption asked: reads through the source (O(1));
        * encrypted source, no other key asked: the same domain, reads through (O(1));
        * encryption of a plaintext source, or another key: a new domain under
          ``kms_key_id`` (None: ``alias/aws/ebs``) and a full copy, sealed in it.

        An encrypted source is never decrypted into a plaintext lineage. KmsError when a key
        is unusable; the caller's unit then aborts, so nothing of it is stored."""
        region = region or DEFAULT_REGION
        src_domain = self.domain_of(txn, source[0]) if source is not None else None
        if src_domain is None and not encrypted:
            return self.maps.create(txn, owner, source, allocated), None
        if src_domain is not None:
            src_arn = self._kms().domain_key_arn(src_domain, txn)
            if kms_key_id is None or self._arn(txn, kms_key_id, region, account) == src_arn:
                self.unlock(src_domain, txn)  # a disabled key refuses new volumes of it too
                return self.maps.create(txn, owner, source, allocated, src_domain), src_arn
        domain_id, arn = self.new(txn, kms_key_id, region, account)
        domain = self.unlock(domain_id, txn)
        lin = self.maps.create(txn, owner, None, 0, domain_id)
        if source is not None:
            self.unlock(src_domain, txn)
            self.copy_into(txn, self.maps.chain(txn, source), lin, domain)
            self.maps.save(txn, lin)
        return lin, arn

    def _arn(self, txn: Txn, kms_key_id: str, region: str, account: str | None) -> str | None:
        try:
            return self.key_arn(txn, kms_key_id, region, account)
        except KmsError as exc:
            if exc.code == "NotFoundException":
                return None  # alias/aws/ebs not made yet in this region: not the source's
            raise
