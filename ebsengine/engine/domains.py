"""Encrypted lineages: their data-key domains, unlocked through KMS, and re-encrypting copies.

A lineage's ``domain`` (``layout.py``, "Encryption") names a data key that KMS keeps wrapped by
a KMS key. :meth:`Domains.unlock` asks KMS for it each time a volume, snapshot, export,
import or EBS-direct call of that lineage begins, so a disabled or pending-deletion key
refuses the work (KMS's error) until it is enabled again; the unwrapped key then stays in the
chunk store's :class:`~ebsengine.storage.sealing.Keyring` for the readers and writers already
running (as an attached EBS volume keeps working when its key is disabled).

A lineage reads through a base of the same domain only. Encrypting a plaintext snapshot, or
moving data to another key, is a full copy (:meth:`Domains.copy_into`): every visible chunk is
decoded and stored again, sealed in the new domain. Outside a unit of work that copy is
*staged* (:meth:`Domains.staging`): made first, in transactions of at most
``STAGE_COMMIT_CHUNKS`` chunks, into a lineage marked ``copier``, then adopted in O(1) by the
unit that makes the volume or snapshot; dropped if that unit fails, and at the next
read-write open after a crash (on a store shared by hosts, a copy of another host's process
once the lease its copier held is free). Inside a unit given no staged copy, the unit copies
itself.

A domain's record (its wrapped data key) lives as long as some lineage names the domain:
the transaction that destroys the last one deletes it (:meth:`Domains.forget`, called by
``BlockMaps.destroy``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import layout as L
from ..block.context import BlockContext
from ..block.maps import BlockMaps, Lineage
from ..errors import BackendUnavailable, EbsError, IncorrectState, KmsError, VolumeInUse
from ..kms.service import EBS_ALIAS
from ..rules import DEFAULT_ACCOUNT, DEFAULT_REGION
from ..storage.base import Txn
from ..storage.chunks import ChunkStore
from ..storage.sealing import Domain
from .imports import elsewhere, process_alive, process_token

if TYPE_CHECKING:
    from ..kms import KeyService

log = logging.getLogger(__name__)

#: data chunks a staged copy stores per transaction (64 KiB each: 128 MiB)
STAGE_COMMIT_CHUNKS = 2048
#: chunk indexes looked up per map scan of a staged copy
STAGE_WINDOW = 8192


class _Rollback(Exception):
    """Aborts a write transaction that only looked."""


@dataclass(frozen=True)
class Staged:
    """A copy under a new data key made before the unit that adopts it
    (:meth:`Domains.staging`): its lineage, the ``copy-`` id owning it until then, the
    source point, the new domain and its KMS key's ARN."""

    lineage: int
    owner: str
    source: tuple[int, int]
    domain: str
    arn: str

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
                  domain: Domain | None, lo: int = 0, hi: int = L.MAX_CHUNKS,
                  source: Domain | None = None) -> int:
        """Store every data chunk visible at ``chain[0]`` in ``[lo, hi)`` into the fresh
        lineage ``lin`` (no base; no entry there yet) sealed in ``domain``; the caller saves
        ``lin`` (``allocated`` counts them). Returns the number of chunks. ``source`` is the
        source's domain, unlocked (:meth:`unlock`): every value read must be sealed in it."""
        n = 0
        for idx, value in sorted(self.maps.visible(txn, chain, lo, hi).items()):
            data = self.ctx.content(txn, value, source)
            fp = self.chunks.fingerprints(data, domain)[0]
            if fp is None:
                continue
            self.maps.set_fresh(txn, lin, idx, self.chunks.put(txn, fp, data, None, domain))
            n += 1
        return n

    def needs_copy(self, txn: Txn, source: tuple[int, int] | None, *, encrypted: bool,
                   kms_key_id: str | None, region: str | None, account: str | None) -> bool:
        """Whether a volume or snapshot starting as ``source`` with these encryption
        arguments gets a full copy under a new data key (see :meth:`lineage_for`)."""
        if source is None:
            return False
        src_domain = self.domain_of(txn, source[0])
        if src_domain is None:
            return encrypted
        if kms_key_id is None:
            return False
        src_arn = self._kms().domain_key_arn(src_domain, txn)
        return self._arn(txn, kms_key_id, region or DEFAULT_REGION, account) != src_arn

    def lineage_for(self, txn: Txn, owner: str | None, source: tuple[int, int] | None,
                    allocated: int, *, encrypted: bool, kms_key_id: str | None,
                    region: str | None, account: str | None,
                    staged: Staged | None = None) -> tuple[Lineage, str | None]:
        """The new lineage of a volume or snapshot that starts as ``source`` (a point, or
        None: empty), with EBS's encryption rules: ``(lineage, KMS key ARN or None)``.

        * plaintext source, no encryption asked: reads through the source (O(1));
        * encrypted source, no other key asked: the same domain, reads through (O(1));
        * encryption of a plaintext source, or another key: a new domain under
          ``kms_key_id`` (None: ``alias/aws/ebs``) and a full copy, sealed in it. With
          ``staged`` (:meth:`staging`, made before the unit from the same arguments) that
          copy is already made, in transactions of its own, and is adopted in O(1); else
          it is made here, in the caller's transaction (O(data)).

        An encrypted source is never decrypted into a plaintext lineage. KmsError when a key
        is unusable; the caller's unit then aborts, so nothing of it is stored."""
        region = region or DEFAULT_REGION
        if staged is not None and self._fits(txn, staged, source, encrypted=encrypted,
                                             kms_key_id=kms_key_id, region=region,
                                             account=account):
            return self.adopt(txn, staged, owner), staged.arn
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
            src = self.unlock(src_domain, txn)
            self.copy_into(txn, self.maps.chain(txn, source), lin, domain, source=src)
            self.maps.save(txn, lin)
        return lin, arn

    # --- copies staged in transactions of their own ----------------------------------------

    def _fits(self, txn: Txn, staged: Staged, source: tuple[int, int] | None, *,
              encrypted: bool, kms_key_id: str | None, region: str,
              account: str | None) -> bool:
        """Whether ``staged`` is the copy this request makes now: same source, a copy is
        still needed, under the same KMS key (else the request copies in its own unit and
        the staged copy is dropped with its :meth:`staging` block)."""
        if staged.source != source or not self.needs_copy(
                txn, source, encrypted=encrypted, kms_key_id=kms_key_id, region=region,
                account=account):
            return False
        return self._arn(txn, kms_key_id or EBS_ALIAS, region, account) == staged.arn

    @contextlib.contextmanager
    def staging(self, source: Callable[[Txn], tuple[tuple[int, int], int]] | None, *,
                encrypted: bool, kms_key_id: str | None, region: str | None,
                account: str | None) -> Iterator[Staged | None]:
        """Before a unit of work that makes a volume or snapshot from a snapshot: when it
        gets a full copy under a new data key (:meth:`needs_copy`), make that copy now, in
        bounded transactions of its own (:meth:`stage_copy`), so that the unit adopts it in
        O(1) (``lineage_for(staged=)``) instead of holding the writer for O(data).

        ``source(txn)`` gives the source point and its size in chunks, or raises the
        request's error (then nothing is staged, and the unit raises it again). Yields the
        staged copy (None: no copy needed). All or nothing: if the block raises, or the unit
        did not adopt the copy, the copy is dropped; a crash leaves it marked as staged by
        a dead process, and the next read-write open drops it (:meth:`recover`)."""
        if source is None:
            yield None
            return
        store = self.chunks.store
        need = False
        try:
            with store.read() as txn:  # the common cases, without the writer
                src_domain = self.domain_of(txn, source(txn)[0][0])
            maybe = (encrypted if src_domain is None else kms_key_id is not None)
        except (EbsError, KmsError):
            maybe = False  # the unit runs into the same error, with nothing staged
        if not maybe:
            yield None
            return
        try:
            # a write transaction, rolled back: naming alias/aws/ebs makes it on first use
            with store.write() as txn:
                point = source(txn)[0]
                # a key service used for the first time (its master check value, the
                # region's alias/aws/ebs) is left to the unit: staging must not create what a
                # refused request would then leave behind
                need = not self._kms().first_use(kms_key_id, region or DEFAULT_REGION,
                                                 account or DEFAULT_ACCOUNT, txn) and \
                    self.needs_copy(txn, point, encrypted=encrypted, kms_key_id=kms_key_id,
                                    region=region, account=account)
                raise _Rollback
        except _Rollback:
            pass
        except (EbsError, KmsError):
            need = False  # the unit runs into the same error, with nothing staged
        if not need:
            yield None
            return
        tag = "copy-" + uuid.uuid4().hex
        self._lease(tag)
        try:
            staged = self.stage_copy(source, kms_key_id=kms_key_id, region=region,
                                     account=account, tag=tag)
            try:
                yield staged
            finally:
                self.drop_staged(staged)  # a no-op once adopted
        finally:
            self._unlease(tag)

    # A staged copy on a store shared by hosts (``rados://``) is held under a lease named by
    # its ``copy-`` id for as long as its copier runs, since no host can tell whether
    # another's process is alive: :meth:`recover` drops another host's copy once that lease
    # is free (expired: its copier is gone), and fences that copier off as it takes it.

    def _lease(self, tag: str) -> None:
        lease = getattr(self.chunks.store.backend, "lease", None)
        if lease is not None:
            lease(tag)

    def _unlease(self, tag: str) -> None:
        backend = self.chunks.store.backend
        retire = getattr(backend, "retire", None)
        release = getattr(backend, "release", None)
        if retire is not None and release is not None:
            retire(tag)  # its lease object goes with the last claim
            release(tag)

    def stage_copy(self, source: Callable[[Txn], tuple[tuple[int, int], int]], *,
                   kms_key_id: str | None, region: str | None,
                   account: str | None, tag: str) -> Staged:
        """Copy the data visible at ``source(txn)`` (see :meth:`staging`) into a new lineage
        of a new domain under ``kms_key_id``, in transactions of at most
        ``STAGE_COMMIT_CHUNKS`` chunks each. The lineage is marked as a staged copy
        (``copier``: this process; ``owner``: a ``copy-`` id) until :meth:`adopt`. On a
        failure (StoreFull, KmsError, the source deleted meanwhile...) the copy is dropped
        and the error raised: the store holds nothing of it."""
        store = self.chunks.store
        with store.write() as txn:
            point, size = source(txn)
            src = self.unlock(self.domain_of(txn, point[0]), txn)
            domain_id, arn = self.new(txn, kms_key_id, region or DEFAULT_REGION, account)
            domain = self.unlock(domain_id, txn)
            lin = self.maps.create(txn, tag, None, 0, domain_id)
            lin.copier = process_token()
            self.maps.save(txn, lin)
        staged = Staged(lin.id, tag, point, domain_id, arn)
        try:
            lo = 0
            while lo < size:
                with store.write() as txn:
                    if source(txn)[0] != point:
                        raise IncorrectState("The source snapshot changed during the copy.")
                    lin = self.maps.load(txn, staged.lineage)
                    chain = self.maps.chain(txn, point)
                    n = 0
                    while lo < size and n < STAGE_COMMIT_CHUNKS:
                        hi = min(size, lo + STAGE_WINDOW)
                        n += self.copy_into(txn, chain, lin, domain, lo, hi, source=src)
                        lo = hi
                    self.maps.save(txn, lin)
        except BaseException:
            self.drop_staged(staged)
            raise
        return staged

    def adopt(self, txn: Txn, staged: Staged, owner: str | None) -> Lineage:
        """The staged copy, now owned by ``owner``, saved in ``txn`` (it commits with the
        caller's unit). IncorrectState if it is gone."""
        lin = self.maps.peek(txn, staged.lineage)
        if lin is None or lin.copier is None or lin.owner != staged.owner:
            raise IncorrectState("The copy staged for this request is gone; try again.")
        lin = self.maps.load(txn, staged.lineage)
        lin.owner, lin.copier = owner, None
        self.maps.save(txn, lin)
        return lin

    def drop_staged(self, staged: Staged) -> None:
        """Drop a staged copy that was not adopted (its domain record goes with it)."""
        store = self.chunks.store
        with store.read() as txn:
            lin = self.maps.peek(txn, staged.lineage)
            if lin is None or lin.copier is None or lin.owner != staged.owner:
                return
        with store.write(freeing=True) as txn:
            self._drop_copy(txn, staged.lineage, staged.owner)
        store.after_free()

    def _drop_copy(self, txn: Txn, lid: int, owner: str | None) -> None:
        lin = self.maps.peek(txn, lid)
        if lin is None or lin.copier is None or (owner is not None and lin.owner != owner):
            return
        lin = self.maps.load(txn, lid)
        head = lin.head
        assert head is not None
        lin.head, lin.owner, lin.allocated, lin.copier = None, None, 0, None
        self.maps.drop_point(txn, lin, head)
        meta = self.chunks.store.db["meta"]
        if L.read_u64(txn.get(b"next_lineage", db=meta)) == lid + 1:
            # nothing was made since: give the id back, so a failed request leaves the store
            # exactly as it was (no reference to a dropped lineage id remains anywhere)
            txn.put(b"next_lineage", L.u64(lid), db=meta)

    # --- domain records ---------------------------------------------------------------------

    def forget(self, txn: Txn, domain_id: str) -> None:
        """In the transaction that destroys the last lineage of ``domain_id``
        (``BlockMaps.on_domain_gone``): its record, the wrapped data key, goes too."""
        kms = self._kms()
        if kms.has_domain(domain_id, txn):
            kms.delete_domain(domain_id, txn)

    def recover(self) -> None:
        """On a read-write open: drop the copies staged by processes that are gone (a crash
        during :meth:`stage_copy`), with their domains."""
        store = self.chunks.store
        db = self.maps.lineages
        with store.read() as txn:
            stale = [Lineage.from_json(L.read_u64(k), v) for k, v in txn.cursor(db=db)
                     if b'"copier"' in v]
        leases = getattr(store.backend, "lease", None) is not None
        gone: list[Lineage] = []
        taken: list[str] = []
        dead: list[str] = []  # copies of dead processes of this host: their lease objects
        try:
            for lin in stale:
                if lin.copier is None:
                    continue
                if leases and lin.owner is not None and elsewhere(lin.copier):
                    try:  # another host's copier: gone once its lease is free
                        self._lease(lin.owner)
                    except VolumeInUse:
                        continue  # still copying there
                    except BackendUnavailable as exc:  # e.g. no cap to fence the copier
                        log.warning("leaving the copy staged by %s: %s", lin.copier, exc)
                        continue
                    taken.append(lin.owner)
                    gone.append(lin)
                elif not process_alive(lin.copier):
                    gone.append(lin)
                    if leases and lin.owner is not None:
                        dead.append(lin.owner)
            if gone:
                with store.write(freeing=True) as txn:
                    for lin in gone:
                        self._drop_copy(txn, lin.id, lin.owner)
                store.after_free()
            retire = getattr(store.backend, "retire", None)
            if retire is not None:
                for tag in dead:  # the dead copier's lock may not have expired yet
                    retire(tag, holder_gone=True)
        finally:
            for tag in taken:
                self._unlease(tag)

    def _arn(self, txn: Txn, kms_key_id: str, region: str, account: str | None) -> str | None:
        try:
            return self.key_arn(txn, kms_key_id, region, account)
        except KmsError as exc:
            if exc.code == "NotFoundException":
                return None  # alias/aws/ebs not made yet in this region: not the source's
            raise
