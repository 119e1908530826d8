"""Volumes: create (empty or from a snapshot), modify, delete, attach and detach.

Each change runs in the caller's unit of work or one of its own (:class:`~.unit.Units`);
the public methods of :class:`ebsengine.engine.Engine` of the same names document them.
"""

from __future__ import annotations

from .. import layout as L
from ..block.maps import BlockMaps
from ..errors import (
    AttachmentNotFound,
    IncorrectState,
    InvalidParameter,
    InvalidVolumeSize,
    MissingParameter,
    VolumeInUse,
)
from ..model import Volume
from ..rules import (
    DEFAULT_AVAILABILITY_ZONE,
    check_int,
    check_tags,
    modified_spec,
    new_id,
    region_of_zone,
    validate_volume_spec,
)
from ..storage.base import Txn
from .devices import VolumeCaches
from .domains import Domains, Staged
from .imports import drop_import, elsewhere, importing
from .records import Records
from .unit import Transaction, Units, outside_unit


class Volumes:
    """The volume records of one engine and the lineages they own."""

    def __init__(self, records: Records, maps: BlockMaps, devices: VolumeCaches,
                 units: Units, domains: Domains) -> None:
        self.records = records
        self.domains = domains
        self.store = records.store
        self.maps = maps
        self.devices = devices
        self.units = units

    def create_volume(self, size_gib: int | None = None, volume_type: str = "gp2", *,
                      snapshot_id: str | None = None, iops: int | None = None,
                      throughput: int | None = None, availability_zone: str | None = None,
                      multi_attach_enabled: bool = False, encrypted: bool = False,
                      kms_key_id: str | None = None,
                      tags: dict[str, str] | None = None, account: str | None = None,
                      tx: Transaction | None = None, staged: Staged | None = None) -> Volume:
        if size_gib is None and snapshot_id is None:
            raise MissingParameter("The request must contain the parameter size or snapshotId")
        check_int("size", size_gib)
        tags = check_tags(tags)
        if kms_key_id is not None and not encrypted:
            raise MissingParameter("The parameter KmsKeyId requires the parameter Encrypted "
                                   "to be set.")
        if kms_key_id is not None and (not isinstance(kms_key_id, str) or not kms_key_id):
            raise InvalidParameter(f"Invalid KmsKeyId: {kms_key_id!r}")
        if availability_zone is None:
            availability_zone = DEFAULT_AVAILABILITY_ZONE
        elif not isinstance(availability_zone, str) or not availability_zone:
            raise InvalidParameter(f"Invalid availability zone: {availability_zone!r}")
        vid = new_id("vol")
        region = region_of_zone(availability_zone)

        def source(txn: Txn) -> tuple[tuple[int, int], int]:
            snap = self.records.completed(txn, snapshot_id)  # type: ignore[arg-type]
            size = snap["volume_size_gib"] if size_gib is None else size_gib
            if size < snap["volume_size_gib"]:
                raise InvalidVolumeSize("smaller than the snapshot")  # raised again below
            validate_volume_spec(volume_type, size, iops, throughput, multi_attach_enabled)
            return (snap["lineage"], snap["gen"]), snap["volume_size_gib"] * L.CHUNKS_PER_GIB

        # a copy under a new data key is made before the unit, in transactions of its own
        free = tx is None and staged is None and snapshot_id is not None and \
            outside_unit(self.units)
        with self.domains.staging(source if free else None,
                                  encrypted=encrypted, kms_key_id=kms_key_id, region=region,
                                  account=account) as own:
            return self._create(vid, size_gib, volume_type, snapshot_id, iops, throughput,
                                availability_zone, multi_attach_enabled, encrypted,
                                kms_key_id, tags, account, tx, staged or own)

    def _create(self, vid: str, size_gib: int | None, volume_type: str,
                snapshot_id: str | None, iops: int | None, throughput: int | None,
                availability_zone: str, multi_attach_enabled: bool, encrypted: bool,
                kms_key_id: str | None, tags: dict[str, str], account: str | None,
                tx: Transaction | None, staged: Staged | None) -> Volume:
        with self.units.unit(tx, grows=True) as (_, txn):
            base = None
            allocated = 0
            if snapshot_id is not None:
                snap = self.records.completed(txn, snapshot_id)
                if size_gib is None:
                    size_gib = snap["volume_size_gib"]
                if size_gib < snap["volume_size_gib"]:
                    raise InvalidVolumeSize(
                        f"Volume of size {size_gib}GiB is smaller than snapshot "
                        f"'{snapshot_id}', expect size >= {snap['volume_size_gib']}GiB")
                base = (snap["lineage"], snap["gen"])
                allocated = snap["full_size_bytes"] // L.CHUNK_SIZE
            assert size_gib is not None
            iops, throughput = validate_volume_spec(volume_type, size_gib, iops, throughput,
                                                    multi_attach_enabled)
            lin, kms_key_id = self.domains.lineage_for(
                txn, vid, base, allocated, encrypted=encrypted, kms_key_id=kms_key_id,
                region=region_of_zone(availability_zone), account=account, staged=staged)
            encrypted = kms_key_id is not None
            vol = Volume(id=vid, size_gib=size_gib, volume_type=volume_type, state="available",
                         create_time=self.units.clock(), availability_zone=availability_zone,
                         iops=iops, throughput=throughput, snapshot_id=snapshot_id,
                         encrypted=bool(encrypted),
                         kms_key_id=kms_key_id if encrypted else None,
                         multi_attach_enabled=multi_attach_enabled, tags=tags)
            self.records.put_vol(txn, {**vol.to_dict(), "lineage": lin.id})
        return vol

    def delete_volume(self, volume_id: str, *, tx: Transaction | None = None) -> None:
        with self.units.unit(tx, frees=True) as (unit, txn):
            self.records.vol_rec(txn, volume_id)  # NotFound first
            claim = self.devices.claim(volume_id)  # not while another front end serves it
            unit.hold(claim)
            # the unit holds the engine lock: no device can open the volume meanwhile
            cache = self.devices.caches.get(volume_id)
            if cache is not None and cache.users > 0:
                raise VolumeInUse(f"Volume {volume_id} is open ({cache.users} device(s)).")
            rec = self.records.vol_rec(txn, volume_id)
            # an importer on another host held the lease we now hold: it is gone
            if importing(rec) and not (claim is not None and elsewhere(rec["importer"])):
                raise IncorrectState(f"Volume {volume_id} is being imported into.")
            if rec.get("staging") is not None:  # left by a crashed import: drop it too
                drop_import(self.records, self.maps, txn, rec, rec["staging"], delete=False)
            if rec["attachments"]:
                raise VolumeInUse(f"Volume {volume_id} is currently attached to "
                                  f"{rec['attachments'][0]['instance_id']}")
            lin = self.maps.load(txn, rec["lineage"])
            head = lin.head
            assert head is not None
            lin.head = None
            lin.owner = None
            lin.allocated = 0
            self.maps.drop_point(txn, lin, head)
            txn.delete(volume_id.encode(), db=self.store.db["volumes"])

            def forget() -> None:  # once committed: the cache's writes have nowhere to go
                self.devices.retire(volume_id)
                if cache is not None:
                    with cache.lock:
                        cache.drop()
                    self.devices.forget(volume_id)

            unit.after_commit(forget)

    def modify_volume(self, volume_id: str, size_gib: int | None = None,
                      volume_type: str | None = None, iops: int | None = None,
                      throughput: int | None = None,
                      multi_attach_enabled: bool | None = None, *,
                      tx: Transaction | None = None) -> Volume:
        with self.units.unit(tx, grows=True) as (unit, txn):
            rec = self.records.vol_rec(txn, volume_id)
            unit.hold(self.devices.claim(volume_id))  # not while another front end serves it
            new_size = rec["size_gib"] if size_gib is None else size_gib
            if isinstance(new_size, bool) or not isinstance(new_size, int):
                raise InvalidParameter(f"Size must be a whole number of GiB, not {new_size!r}")
            if new_size < rec["size_gib"]:
                raise InvalidVolumeSize(
                    f"New size cannot be smaller than existing size ({new_size}GiB < "
                    f"{rec['size_gib']}GiB).")
            new_type, new_iops, new_tp = modified_spec(
                (rec["volume_type"], rec["iops"], rec["throughput"]), volume_type, iops,
                throughput)
            multi = rec["multi_attach_enabled"] if multi_attach_enabled is None \
                else multi_attach_enabled
            new_iops, new_tp = validate_volume_spec(new_type, new_size, new_iops, new_tp, multi)
            rec.update(size_gib=new_size, volume_type=new_type, iops=new_iops,
                       throughput=new_tp, multi_attach_enabled=multi)
            self.records.put_vol(txn, rec)

            def resize() -> None:  # once committed
                cache = self.devices.caches.get(volume_id)
                if cache is not None:
                    cache.size = new_size * L.GIB

            unit.after_commit(resize)
        return Volume.from_dict(rec)

    def attach_volume(self, volume_id: str, instance_id: str, device: str,
                      delete_on_termination: bool = False, *,
                      tx: Transaction | None = None) -> Volume:
        with self.units.unit(tx, grows=True) as (_, txn):
            rec = self.records.vol_rec(txn, volume_id)
            atts = rec["attachments"]
            if atts and not rec["multi_attach_enabled"]:
                raise VolumeInUse(f"{volume_id} is already attached to an instance")
            if any(a["instance_id"] == instance_id for a in atts):
                raise VolumeInUse(f"{volume_id} is already attached to {instance_id}")
            atts.append({"instance_id": instance_id, "device": device, "state": "attached",
                         "attach_time": self.units.clock(),
                         "delete_on_termination": bool(delete_on_termination)})
            rec["state"] = "in-use"
            self.records.put_vol(txn, rec)
        return Volume.from_dict(rec)

    def detach_volume(self, volume_id: str, instance_id: str | None = None, *,
                      tx: Transaction | None = None) -> Volume:
        with self.units.unit(tx, grows=True) as (_, txn):
            rec = self.records.vol_rec(txn, volume_id)
            atts = rec["attachments"]
            if not atts:
                raise IncorrectState(f"Volume '{volume_id}' is in the 'available' state.")
            keep = [a for a in atts if instance_id is not None and a["instance_id"] != instance_id]
            if len(keep) == len(atts):
                raise AttachmentNotFound(
                    f"The volume {volume_id} is not attached to instance {instance_id}")
            rec["attachments"] = keep
            rec["state"] = "in-use" if keep else "available"
            self.records.put_vol(txn, rec)
        return Volume.from_dict(rec)
