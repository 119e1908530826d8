"""AMIs: register from snapshots, copy (within and across regions), deregister, attributes.

An image is an :class:`~.model.Image` record in ``cloud.image_table``; its EBS mappings name
engine snapshots. The rules here are AWS's (``AWS_SEMANTICS.md`` section 6):

* RegisterImage builds an EBS-backed image from completed snapshots of the region; the
  defaults are AWS's (Architecture ``i386``, VirtualizationType ``paravirtual``), a mapping's
  VolumeSize defaults to its snapshot's size and may not be smaller, ``Encrypted`` must be
  omitted on a snapshot mapping, and a name is unique per account and region among the
  images not deregistered.
* A snapshot used by an image that is not deregistered cannot be deleted
  (:meth:`Images.snapshot_in_use`, checked by DeleteSnapshot inside its unit of work).
* DeregisterImage keeps the record as ``deregistered`` for
  ``CloudConfig.deregistered_visible_seconds`` on the cloud's clock (described, never
  launchable), then it is gone (``InvalidAMIID.NotFound``); expired records are purged by
  the next image write. ``DeleteAssociatedSnapshots`` deletes the image's snapshots in the
  same unit, except those another live image still uses.
* CopyImage copies every snapshot (``engine.copy_snapshot``: O(1), chunks shared) into the
  destination region, all in one unit of work with the new image.
* Only the owner changes an image; others see it when it is public or shared with them.

Every change is one engine unit of work: validated inside it, so a refusal leaves nothing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ebsengine import errors
from ebsengine.engine import Staged, Transaction
from ebsengine.rules import (
    check_description,
    check_device_name,
    check_image_name,
    check_tags,
    is_aws_id,
    new_id,
    validate_volume_spec,
)
from ebsengine.rules import tokens as token_rules

from .model import Image
from .scope import REGIONS, Scope, put_snapshot_region, snapshot_owner, snapshot_region
from .tables import Table
from .tags import spec_tags

if TYPE_CHECKING:
    from .core import Cloud

ARCHITECTURES = ("i386", "x86_64", "arm64", "x86_64_mac", "arm64_mac")
VIRTUALIZATION_TYPES = ("hvm", "paravirtual")
BOOT_MODES = ("legacy-bios", "uefi", "uefi-preferred")
#: owner aliases DescribeImages accepts; no image here is owned by one of them
OWNER_ALIASES = ("amazon", "aws-marketplace", "aws-backup-vault")
#: image states that keep their snapshots in use (everything but these two)
DEAD_STATES = ("deregistered", "failed")
#: the AWS-side records of a snapshot (namespaces of ``ebsengine.aws.store``) dropped with it
_SNAPSHOT_NAMESPACES = ("aws.snapshot", "aws.direct", "aws.snapattr")
_ACCOUNT = re.compile(r"^[0-9]{12}$")
#: the owner of seed images (``Images.seed``) that name none: an account that is not the
#: caller's, as a catalogue's images are
SEED_OWNER = "137112412989"


def _err(code: str, message: str) -> errors.Ec2Error:
    return errors.Ec2Error(code, message)


def _not_found(image_id: str) -> errors.Ec2Error:
    return _err("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")


def _bdm_error(message: str) -> errors.Ec2Error:
    return _err("InvalidBlockDeviceMapping", message)


def image_snapshots(img: Image) -> list[str]:
    """The snapshot ids of an image's EBS mappings, in mapping order."""
    out = []
    for m in img.block_device_mappings:
        sid = (m.get("Ebs") or {}).get("SnapshotId")
        if sid:
            out.append(str(sid))
    return out


class Images:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud

    @property
    def table(self) -> Table[Image]:
        return self.cloud.image_table

    # --- visibility and state -------------------------------------------------------------

    def expired(self, img: Image) -> bool:
        """A deregistered image past its visibility window: gone for every caller."""
        return img.state == "deregistered" and img.deregister_time is not None and \
            self.cloud.now() >= img.deregister_time + self.cloud.config.deregistered_visible_seconds

    def state(self, img: Image, tx: Transaction | None = None) -> str:
        """The state a caller sees: a ``pending`` image (CreateImage) is ``available`` once
        every snapshot it names has completed and ``failed`` if one failed or is gone."""
        if img.state != "pending":
            return img.state
        eng = self.cloud.engine
        states = []
        for sid in image_snapshots(img):
            try:
                states.append(eng.get_snapshot(sid, tx=tx).state)
            except errors.NotFound:
                states.append("error")
        if any(s == "error" for s in states):
            return "failed"
        return "available" if all(s == "completed" for s in states) else "pending"

    def current(self, img: Image, tx: Transaction | None = None) -> Image:
        """``img`` with the state a caller sees (see :meth:`state`)."""
        st = self.state(img, tx)
        return img if st == img.state else img.but(state=st)

    @staticmethod
    def visible_to(img: Image, account_id: str) -> bool:
        """Owned by the account, public, or shared with it."""
        return img.owner_id == account_id or img.public or account_id in img.launch_users

    def find(self, scope: Scope, image_id: str, tx: Transaction | None = None) -> Image:
        """An image the scope's account can see in its region (deregistered ones within
        their window too), with its current state. ``InvalidAMIID.Malformed`` /
        ``InvalidAMIID.NotFound`` otherwise."""
        if not is_aws_id(image_id, "ami"):
            raise _err("InvalidAMIID.Malformed", f'Invalid id: "{image_id}" (expecting "ami-...")')
        img = self.table.get(image_id, tx=tx)
        if img is None or img.region != scope.region or self.expired(img) or \
                not self.visible_to(img, scope.account_id):
            raise _not_found(image_id)
        return self.current(img, tx)

    def launchable(self, scope: Scope, image_id: str, tx: Transaction | None = None) -> Image:
        """The image RunInstances may launch: visible and ``available``; a deregistered or
        failed one is ``InvalidAMIID.Unavailable``, a pending one ``InvalidAMIID.Unavailable``
        too (AWS: the AMI is not yet available)."""
        img = self.find(scope, image_id, tx)
        if img.state != "available":
            raise _err("InvalidAMIID.Unavailable",
                       f"The image id '[{image_id}]' is not available (state {img.state})")
        return img

    def _owned(self, scope: Scope, image_id: str, tx: Transaction) -> Image:
        """An image the account owns and that is not deregistered (for changes)."""
        img = self.find(scope, image_id, tx)
        if img.owner_id != scope.account_id:
            raise _err("AuthFailure", f"Not authorized for image:{image_id}")
        if img.state == "deregistered":
            raise _err("InvalidAMIID.Unavailable", f"The image id '[{image_id}]' is no longer "
                                                   f"available")
        return img

    def describe(self, scope: Scope, *, image_ids: list[str] | None = None,
                 owners: list[str] | None = None,
                 executable_users: list[str] | None = None) -> list[Image]:
        """The images DescribeImages lists, in id order: those named (each must be visible,
        else NotFound) or every visible one of the region, then scoped by ``owners``
        (``self``, account ids, owner aliases) and ``executable_users`` (``self``, account
        ids: shared explicitly with them; ``all``: public). Filters are the caller's."""
        me = scope.account_id
        owner_ids = self._owner_ids(owners, me)
        users = self._executable(executable_users, me)
        if image_ids:
            for iid in image_ids:
                if not is_aws_id(iid, "ami"):
                    raise _err("InvalidAMIID.Malformed", f'Invalid id: "{iid}"')
            found = {iid: self.table.get(iid) for iid in image_ids}
            missing = [iid for iid, img in found.items()
                       if img is None or img.region != scope.region or self.expired(img)
                       or not self.visible_to(img, me)]
            if missing:
                raise _err("InvalidAMIID.NotFound",
                           f"The image id '[{', '.join(missing)}]' does not exist")
            imgs = [i for i in found.values() if i is not None]
        else:
            imgs = [i for i in self.table.in_region(scope.region)
                    if not self.expired(i) and self.visible_to(i, me)]
        if owner_ids is not None:
            imgs = [i for i in imgs if i.owner_id in owner_ids]
        if users is not None:
            public, accounts = users
            imgs = [i for i in imgs if (public and i.public)
                    or any(a in i.launch_users for a in accounts)]
        imgs = sorted({i.id: i for i in imgs}.values(), key=lambda i: i.id)
        return [self.current(i) for i in imgs]

    @staticmethod
    def _owner_ids(owners: list[str] | None, me: str) -> set[str] | None:
        if not owners:
            return None
        out: set[str] = set()
        for o in owners:
            if o == "self":
                out.add(me)
            elif _ACCOUNT.match(o):
                out.add(o)
            elif o not in OWNER_ALIASES:
                raise _err("InvalidUserID.Malformed", f'Invalid user id: "{o}"')
        return out

    @staticmethod
    def _executable(users: list[str] | None, me: str) -> tuple[bool, set[str]] | None:
        if not users:
            return None
        public = False
        accounts: set[str] = set()
        for u in users:
            if u == "all":
                public = True
            elif u == "self":
                accounts.add(me)
            elif _ACCOUNT.match(u):
                accounts.add(u)
            else:
                raise _err("InvalidUserID.Malformed", f'Invalid user id: "{u}"')
        return public, accounts

    # --- snapshots in use -----------------------------------------------------------------

    def snapshot_in_use(self, scope: Scope | None, snapshot_id: str,
                        tx: Transaction | None = None, *,
                        ignore: str | None = None) -> str | None:
        """The id of an image (not deregistered or failed; other than ``ignore``) whose
        mappings name ``snapshot_id``, else None. DeleteSnapshot calls it in its unit of
        work and refuses with ``InvalidSnapshot.InUse``. ``scope`` is unused (an image can
        only name snapshots of its own region) and may be None."""
        for img in self.table.all(tx=tx):
            if img.id != ignore and img.state not in DEAD_STATES and \
                    snapshot_id in image_snapshots(img):
                return str(img.id)
        return None

    def check_snapshot_deletable(self, scope: Scope | None, snapshot_id: str,
                                 tx: Transaction) -> None:
        """``InvalidSnapshot.InUse`` when an image uses the snapshot."""
        ami = self.snapshot_in_use(scope, snapshot_id, tx)
        if ami is not None:
            raise _err("InvalidSnapshot.InUse",
                       f"The snapshot {snapshot_id} is currently in use by {ami}")

    # --- register -------------------------------------------------------------------------

    def register(self, scope: Scope, *, name: str, description: str | None = None,
                 root_device_name: str | None = None,
                 block_device_mappings: list[dict[str, Any]] | None = None,
                 architecture: str | None = None, virtualization_type: str | None = None,
                 boot_mode: str | None = None, ena_support: bool | None = None,
                 sriov_net_support: str | None = None, imds_support: str | None = None,
                 tpm_support: str | None = None, uefi_data: str | None = None,
                 tags: dict[str, str] | None = None, image_location: str | None = None,
                 kernel_id: str | None = None, ramdisk_id: str | None = None,
                 billing_products: list[str] | None = None) -> Image:
        """RegisterImage: an EBS-backed image from snapshots of the region (botocore
        BlockDeviceMapping dicts). Returns the new, ``available`` image."""
        check_image_name(name)
        if description is not None:
            check_description(description)
        if image_location:
            raise _err("InvalidParameterValue", "Instance store-backed AMIs (ImageLocation) "
                                                "are not supported: register from snapshots")
        if billing_products:
            raise _err("InvalidParameterValue",
                       "Your account is not authorized to specify billing product codes")
        if kernel_id:
            raise _err("InvalidAKIID.NotFound", f"The kernel id '[{kernel_id}]' does not exist")
        if ramdisk_id:
            raise _err("InvalidARIID.NotFound", f"The ramdisk id '[{ramdisk_id}]' does not exist")
        arch = architecture or "i386"
        if arch not in ARCHITECTURES:
            raise _err("InvalidParameterValue",
                       f"Value ({arch}) for parameter architecture is invalid. Valid values: "
                       + ", ".join(ARCHITECTURES))
        virt = virtualization_type or "paravirtual"
        if virt not in VIRTUALIZATION_TYPES:
            raise _err("InvalidParameterValue",
                       f"Value ({virt}) for parameter virtualizationType is invalid")
        if boot_mode is not None and boot_mode not in BOOT_MODES:
            raise _err("InvalidParameterValue", f"Value ({boot_mode}) for parameter bootMode is "
                                                f"invalid. Valid values: " + ", ".join(BOOT_MODES))
        if sriov_net_support is not None and sriov_net_support != "simple":
            raise _err("InvalidParameterValue",
                       f"Value ({sriov_net_support}) for parameter sriovNetSupport is invalid")
        if imds_support is not None and imds_support != "v2.0":
            raise _err("InvalidParameterValue",
                       f"Value ({imds_support}) for parameter imdsSupport is invalid")
        if tpm_support is not None:
            if tpm_support != "v2.0":
                raise _err("InvalidParameterValue",
                           f"Value ({tpm_support}) for parameter tpmSupport is invalid")
            if boot_mode != "uefi":
                raise _err("InvalidParameterCombination",
                           "NitroTPM (tpmSupport v2.0) requires the boot mode uefi")
        if (ena_support or sriov_net_support) and virt != "hvm":
            raise _err("InvalidParameterCombination",
                       "Enhanced networking (enaSupport, sriovNetSupport) is supported only "
                       "for hvm images")
        tags = check_tags(tags or {})
        if not block_device_mappings:
            raise _err("MissingParameter", "The request must contain the parameter "
                                           "BlockDeviceMapping (or ImageLocation)")
        if not root_device_name:
            raise _err("MissingParameter", "The request must contain the parameter "
                                           "rootDeviceName")
        check_device_name(root_device_name)
        eng = self.cloud.engine
        with eng.transaction() as tx:
            mappings = self._mappings(scope, block_device_mappings, tx)
            root = self._root_mapping(root_device_name, mappings)
            if root is None:
                raise _bdm_error(f"The root device name {root_device_name} is not in the "
                                 f"block device mapping")
            if not (root.get("Ebs") or {}).get("SnapshotId"):
                raise _bdm_error(f"The root device {root['DeviceName']} must map a snapshot")
            self._purge(tx)
            self.check_unique(scope, name, tx)
            img = Image(id=new_id("ami"), region=scope.region, owner_id=scope.account_id,
                        name=name, description=description, state="available",
                        creation_time=self.cloud.now(), architecture=arch,
                        virtualization_type=virt, root_device_name=root_device_name,
                        root_device_type="ebs", block_device_mappings=mappings,
                        ena_support=bool(ena_support), sriov_net_support=sriov_net_support,
                        boot_mode=boot_mode, imds_support=imds_support,
                        tpm_support=tpm_support, uefi_data=uefi_data, tags=tags)
            self.table.put(img, tx=tx)
        return img

    def seed(self, scope: Scope, entries: list[dict[str, Any]]) -> list[Image]:
        """Preload public images with the given ids (``ebsengine serve --seed-images``; the
        entries are described at :func:`seed_records`), in one unit of work; ids already
        present are left as they are. ``ValueError`` names a bad entry (nothing written).
        Returns the images written."""
        imgs = seed_records(entries, scope.region, self.cloud.now())
        written: list[Image] = []
        with self.cloud.engine.transaction() as tx:
            for img in imgs:
                if self.table.get(img.id, tx=tx) is None:
                    written.append(self.table.put(img, tx=tx))
        return written

    @staticmethod
    def _root_mapping(root: str, mappings: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The mapping of the root device: same name, or the disk whose partition the root
        is (``/dev/sda`` for ``/dev/sda1``, as AWS accepts)."""
        for m in mappings:
            if m["DeviceName"] == root:
                return m
        for m in mappings:
            dev = m["DeviceName"]
            if root.startswith(dev) and root[len(dev):].isdigit():
                return m
        return None

    def _mappings(self, scope: Scope, bdms: list[dict[str, Any]],
                  tx: Transaction) -> list[dict[str, Any]]:
        """Validated mappings as stored: EBS ones with their snapshot's size and
        encryption and the volume type's defaults filled in."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i, m in enumerate(bdms, 1):
            dev = m.get("DeviceName")
            if not dev:
                raise _err("MissingParameter", f"The request must contain the parameter "
                                               f"BlockDeviceMapping.{i}.DeviceName")
            check_device_name(dev)
            if dev in seen:
                raise _bdm_error(f"The device '{dev}' is used in more than one block-device "
                                 f"mapping")
            seen.add(dev)
            ebs = m.get("Ebs")
            kinds = [k for k in ("Ebs", "VirtualName", "NoDevice") if m.get(k) is not None]
            if len(kinds) > 1:
                raise _bdm_error(f"The block device mapping for {dev} may name only one of "
                                 f"Ebs, VirtualName and NoDevice")
            if ebs is None:
                if m.get("VirtualName") is not None:
                    vn = m["VirtualName"]
                    if not re.match(r"^ephemeral\d{1,2}$", str(vn)):
                        raise _bdm_error(f"Invalid virtual name {vn} for {dev}")
                    out.append({"DeviceName": dev, "VirtualName": vn})
                else:
                    out.append({"DeviceName": dev, "NoDevice": ""})
                continue
            out.append({"DeviceName": dev, "Ebs": self._ebs(scope, dev, ebs, tx)})
        return out

    def _ebs(self, scope: Scope, dev: str, ebs: dict[str, Any],
             tx: Transaction) -> dict[str, Any]:
        sid = ebs.get("SnapshotId")
        size = ebs.get("VolumeSize")
        for unsupported in ("OutpostArn", "AvailabilityZone", "AvailabilityZoneId"):
            if ebs.get(unsupported) is not None:
                raise _bdm_error(f"The parameter {unsupported} is not valid in an AMI's block "
                                 f"device mapping ({dev})")
        encrypted = False
        if ebs.get("KmsKeyId") is not None:
            # AWS: KmsKeyId "is only supported on BlockDeviceMapping objects called by
            # RunInstances, RequestSpotFleet, and RequestSpotInstances"
            raise _err("InvalidParameterValue", f"The parameter KmsKeyId is not valid in an "
                                                f"AMI's block device mapping ({dev}); name "
                                                f"the key in RunInstances' mappings")
        if sid:
            if ebs.get("Encrypted") is not None:
                # AWS: from a snapshot, Encrypted must be omitted whatever its value
                raise _bdm_error(f"Encrypted must be omitted for {dev}: a snapshot's "
                                 f"volumes take its encryption")
            snap = self._snapshot(scope, str(sid), tx, owner=scope.account_id)
            encrypted = bool(snap.encrypted)
            if size is None:
                size = snap.volume_size_gib
            elif size < snap.volume_size_gib:
                raise _bdm_error(f"Volume of size {size}GB is smaller than snapshot '{sid}', "
                                 f"expect size >= {snap.volume_size_gib}GB")
        elif size is None:
            raise _bdm_error(f"Either snapshot ID or volume size must be provided for: {dev}")
        else:
            # a new (empty) volume: Encrypted true or false (default false); RunInstances
            # makes it under the Region's default key (or its mapping's KmsKeyId)
            encrypted = bool(ebs.get("Encrypted"))
        vtype = ebs.get("VolumeType") or "gp2"
        iops, throughput = validate_volume_spec(vtype, int(size), ebs.get("Iops"),
                                                ebs.get("Throughput"), False)
        out: dict[str, Any] = {"DeleteOnTermination": bool(ebs.get("DeleteOnTermination", True)),
                               "VolumeSize": int(size), "VolumeType": vtype,
                               "Encrypted": encrypted}
        if sid:
            out["SnapshotId"] = str(sid)
        if vtype in ("gp3", "io1", "io2"):
            out["Iops"] = iops
        if throughput is not None:
            out["Throughput"] = throughput
        return out

    def _snapshot(self, scope: Scope, sid: str, tx: Transaction | None, *,
                  owner: str) -> Any:
        """A completed snapshot of the scope's region that ``owner`` owns."""
        if not is_aws_id(sid, "snap"):
            raise _err("InvalidSnapshotID.Malformed", f'Invalid id: "{sid}" (expecting '
                                                      f'"snap-...")')
        eng = self.cloud.engine
        try:
            snap = eng.get_snapshot(sid, tx=tx)
        except errors.NotFound:
            snap = None
        if snap is None or snapshot_region(eng, snap, scope.region, tx=tx) != scope.region or \
                snapshot_owner(eng, snap.id, tx) != owner:
            raise _err("InvalidSnapshot.NotFound", f"The snapshot '{sid}' does not exist.")
        if snap.state != "completed":
            raise _err("IncorrectState", f"Snapshot '{sid}' is not in the completed state "
                                         f"({snap.state})")
        return snap

    def check_unique(self, scope: Scope, name: str, tx: Transaction) -> None:
        """``InvalidAMIName.Duplicate`` when the account has a live image of that name in the
        region (RegisterImage, CreateImage and CopyImage share it)."""
        for img in self.table.in_region(scope.region, tx=tx):
            if img.owner_id == scope.account_id and img.name == name and \
                    img.state != "deregistered":
                raise _err("InvalidAMIName.Duplicate",
                           f"AMI name {name} is already in use by AMI {img.id}")

    def _purge(self, tx: Transaction) -> None:
        """Forget deregistered images past their window (and the tokens that made them)."""
        for img in self.table.all(tx=tx):
            if self.expired(img):
                self.table.delete(img.id, tx=tx)
                self.cloud.tokens.drop(tx, img.id)

    # --- deregister -----------------------------------------------------------------------

    def deregister(self, scope: Scope, image_id: str, *,
                   delete_associated_snapshots: bool = False) -> list[tuple[str, str]]:
        """DeregisterImage; with ``delete_associated_snapshots`` its snapshots go in the same
        unit, except those another live image uses (``skipped``). Returns
        ``[(snapshot id, return code)]`` for the deleted-or-not snapshots (empty without
        the flag)."""
        eng = self.cloud.engine
        results: list[tuple[str, str]] = []
        with eng.transaction() as tx:
            img = self._owned(scope, image_id, tx)
            self.table.put(img.but(state="deregistered", deregister_time=self.cloud.now()),
                           tx=tx)
            if delete_associated_snapshots:
                for sid in dict.fromkeys(image_snapshots(img)):
                    if self.snapshot_in_use(scope, sid, tx, ignore=img.id) is not None:
                        results.append((sid, "skipped"))
                        continue
                    try:
                        eng.delete_snapshot(sid, tx=tx)
                    except errors.NotFound:
                        results.append((sid, "client-error"))
                        continue
                    self.forget_snapshot(tx, sid)
                    self.cloud.meter.snapshot(tx, sid)
                    results.append((sid, "success"))
            self._purge(tx)
        return results

    def forget_snapshot(self, tx: Transaction, snapshot_id: str) -> None:
        """Drop a deleted snapshot's AWS-side records (region, direct, permissions, tokens),
        in the unit that deletes it (what ``AwsStore.forget_snapshot`` does)."""
        for ns in _SNAPSHOT_NAMESPACES:
            self.cloud.engine.service_put(ns, snapshot_id, None, tx=tx)
        self.cloud.tokens.drop(tx, snapshot_id)

    # --- copy -----------------------------------------------------------------------------

    def copy(self, scope: Scope, *, source_image_id: str, source_region: str, name: str,
             description: str | None = None, copy_image_tags: bool = False,
             image_tags: dict[str, str] | None = None,
             snapshot_tags: dict[str, str] | None = None, encrypted: bool | None = None,
             kms_key_id: str | None = None, client_token: str | None = None,
             completion_minutes: int | None = None) -> Image:
        """CopyImage into the scope's region (the destination) from ``source_region``
        (the same or another): every snapshot copied (``engine.copy_snapshot``, sharing
        chunks) and recorded in the destination region, with the new image, in one unit.
        A ``client_token`` retried with the same arguments returns the first copy."""
        check_image_name(name)
        if description is not None:
            check_description(description)
        if source_region not in REGIONS:
            raise _err("InvalidParameterValue", f"Invalid source region: {source_region}")
        if kms_key_id and not encrypted:
            raise _err("InvalidParameterDependency",
                       "The parameter KmsKeyId requires the parameter Encrypted to be set.")
        if completion_minutes is not None and (completion_minutes < 15 or
                                               completion_minutes > 2880 or
                                               completion_minutes % 15):
            raise _err("InvalidParameterValue", "SnapshotCopyCompletionDurationMinutes must be "
                                                "a multiple of 15 in 15-2880")
        image_tags = check_tags(image_tags or {})
        snapshot_tags = check_tags(snapshot_tags or {})
        token = token_rules.check_client_token(client_token)
        digest = token_rules.request_digest({
            "SourceImageId": source_image_id, "SourceRegion": source_region, "Name": name,
            "Description": description, "CopyImageTags": copy_image_tags,
            "ImageTags": image_tags, "SnapshotTags": snapshot_tags, "Encrypted": encrypted,
            "KmsKeyId": kms_key_id, "CompletionMinutes": completion_minutes})
        src_scope = Scope(source_region, scope.account_id)
        with contextlib.ExitStack() as stack:
            staged = self._stage_copies(scope, src_scope, source_image_id, encrypted,
                                        kms_key_id, stack, token, digest)
            return self._copy(scope, src_scope, source_image_id, name, description,
                              copy_image_tags, image_tags, snapshot_tags, encrypted,
                              kms_key_id, token, digest, staged)

    def _stage_copies(self, scope: Scope, src_scope: Scope, source_image_id: str,
                      encrypted: bool | None, kms_key_id: str | None,
                      stack: contextlib.ExitStack, token: str | None = None,
                      digest: str = "") -> dict[str, Staged]:
        """The snapshot copies CopyImage makes under a new data key (encrypting a plaintext
        snapshot, or another key), made before its unit in bounded transactions of their own
        (``Engine.staged_copy``): the unit adopts them in O(1) instead of holding the store's
        writer for the whole copy. Best effort: what cannot be staged now (the request is
        wrong, a key unusable, the store full) is left to the unit, which copies or refuses
        it itself, in its own order of checks; a staged copy it does not adopt is dropped
        when ``stack`` closes."""
        eng = self.cloud.engine
        out: dict[str, Staged] = {}
        try:
            if token is not None and \
                    self.cloud.tokens.previous(scope, "CopyImage", token, digest) is not None:
                return out  # a retry: the unit returns the first copy, nothing to stage
            src = self.find(src_scope, source_image_id)
            if src.state != "available":
                return out
            plans = []
            for m in src.block_device_mappings:
                sid = (m.get("Ebs") or {}).get("SnapshotId")
                if sid:
                    snap = self._snapshot(src_scope, str(sid), None, owner=src.owner_id)
                    plans.append((snap.id, *self.cloud.encryption.resolve(
                        scope, encrypted=encrypted, kms_key_id=kms_key_id,
                        source_encrypted=bool(snap.encrypted))))
            for sid, enc, key in plans:
                if sid not in out:
                    copy = stack.enter_context(eng.staged_copy(
                        sid, encrypted=enc, kms_key_id=key, region=scope.region,
                        account=scope.account_id))
                    if copy is not None:
                        out[sid] = copy
        except errors.EbsError:
            pass  # the unit meets the same condition and answers it
        return out

    def _copy(self, scope: Scope, src_scope: Scope, source_image_id: str, name: str,
              description: str | None, copy_image_tags: bool, image_tags: dict[str, str],
              snapshot_tags: dict[str, str], encrypted: bool | None, kms_key_id: str | None,
              token: str | None, digest: str, staged: dict[str, Staged]) -> Image:
        eng = self.cloud.engine
        with eng.transaction() as tx:
            if token is not None:
                prev = self.cloud.tokens.previous(scope, "CopyImage", token, digest, tx)
                done = self.table.get(prev, tx=tx) if prev else None
                if done is not None:
                    return done
            src = self.find(src_scope, source_image_id, tx)
            if src.state == "deregistered":
                raise _err("InvalidAMIID.Unavailable",
                           f"The image id '[{source_image_id}]' is no longer available")
            if src.state != "available":
                raise _err("IncorrectState", f"The image {source_image_id} is not in the "
                                             f"available state ({src.state})")
            self._purge(tx)
            self.check_unique(scope, name, tx)
            new = new_id("ami")
            mappings: list[dict[str, Any]] = []
            for m in src.block_device_mappings:
                ebs = m.get("Ebs")
                sid = (ebs or {}).get("SnapshotId")
                if not sid:
                    mappings.append(dict(m))
                    continue
                snap = self._snapshot(src_scope, str(sid), tx, owner=src.owner_id)
                # as CopySnapshot: encrypted when asked or by default, never decrypted; the
                # key resolves in the destination region
                enc, key = self.cloud.encryption.resolve(
                    scope, encrypted=encrypted, kms_key_id=kms_key_id,
                    source_encrypted=bool(snap.encrypted), tx=tx)
                copy = eng.copy_snapshot(
                    snap.id, description=f"Copied for DestinationAmi {new} from SourceAmi "
                                         f"{src.id} for SourceSnapshot {snap.id}",
                    tags=snapshot_tags or None, encrypted=enc, kms_key_id=key,
                    region=scope.region, account=scope.account_id, tx=tx,
                    staged=staged.pop(snap.id, None))
                put_snapshot_region(eng, tx, copy.id, scope.region, scope.account_id)
                self.cloud.meter.snapshot(tx, copy.id)
                mappings.append({**m, "Ebs": {**(ebs or {}), "SnapshotId": copy.id,
                                              "Encrypted": bool(copy.encrypted)}})
            tags = {k: v for k, v in src.tags.items() if not k.startswith("aws:")} \
                if copy_image_tags and src.owner_id == scope.account_id else {}
            tags = check_tags({**tags, **image_tags})
            img = src.but(id=new, region=scope.region, owner_id=scope.account_id, name=name,
                          description=description, state="available",
                          creation_time=self.cloud.now(), block_device_mappings=mappings,
                          public=False, launch_users=[], source_instance_id=None,
                          source_image_id=src.id, source_region=src_scope.region,
                          deregister_time=None, tags=tags)
            self.table.put(img, tx=tx)
            if token is not None:
                self.cloud.tokens.put(tx, scope, "CopyImage", token, digest, img.id)
        return img

    # --- attributes -----------------------------------------------------------------------

    def attribute(self, scope: Scope, image_id: str, attribute: str) -> Any:
        """DescribeImageAttribute's value: a string or None for the scalar ones,
        ``[{"Group": "all"} | {"UserId": ...}]`` for ``launchPermission``, ``[]`` for
        ``productCodes``. ``blockDeviceMapping`` is AuthFailure, as AWS deprecated it."""
        img = self.find(scope, image_id)
        if attribute == "blockDeviceMapping":
            raise _err("AuthFailure", "Unauthorized attempt to access restricted resource")
        if attribute == "launchPermission":
            if img.owner_id != scope.account_id:
                raise _err("AuthFailure", f"Not authorized for image:{image_id}")
            return ([{"Group": "all"}] if img.public else []) + \
                [{"UserId": u} for u in img.launch_users]
        if attribute == "productCodes":
            return []
        values: dict[str, str | None] = {
            "description": img.description, "kernel": None, "ramdisk": None,
            "sriovNetSupport": img.sriov_net_support, "bootMode": img.boot_mode,
            "tpmSupport": img.tpm_support, "uefiData": img.uefi_data,
            "lastLaunchedTime": None, "imdsSupport": img.imds_support,
            "deregistrationProtection": "disabled",
        }
        if attribute not in values:
            raise _err("InvalidParameterValue",
                       f"Value ({attribute}) for parameter attribute is invalid. Unknown "
                       f"attribute.")
        return values[attribute]

    def modify_attribute(self, scope: Scope, image_id: str, *, description: str | None = None,
                         launch_add: Iterable[dict[str, str]] = (),
                         launch_remove: Iterable[dict[str, str]] = (),
                         imds_support: str | None = None) -> Image:
        """ModifyImageAttribute (owner only): a new description, launch permissions added
        or removed (``{"UserId": account}`` / ``{"Group": "all"}``: public), or
        ``imdsSupport`` ``v2.0`` (which cannot be undone)."""
        add, remove = list(launch_add), list(launch_remove)
        for e in add + remove:
            self._check_permission(e)
        if description is not None:
            check_description(description)
        if imds_support is not None and imds_support != "v2.0":
            raise _err("InvalidParameterValue",
                       f"Value ({imds_support}) for parameter imdsSupport is invalid")
        eng = self.cloud.engine
        with eng.transaction() as tx:
            img = self._owned(scope, image_id, tx)
            changes: dict[str, Any] = {}
            if description is not None:
                changes["description"] = description
            if imds_support is not None:
                changes["imds_support"] = imds_support
            if add or remove:
                public = img.public
                users = list(img.launch_users)
                if any(e.get("Group") == "all" for e in add):
                    if any(self._snapshot_encrypted(sid, tx) for sid in image_snapshots(img)):
                        raise _err("InvalidParameterValue",
                                   "Images with encrypted snapshots cannot be made public")
                    public = True
                if any(e.get("UserId") not in (None, scope.account_id) for e in add) and \
                        any(self._snapshot_encrypted(sid, tx) for sid in image_snapshots(img)):
                    raise _err("InvalidParameterValue",
                               "Images with encrypted snapshots cannot be shared with other "
                               "accounts: their KMS keys cannot be granted to another account "
                               "here")
                for e in add:
                    if e.get("UserId") and e["UserId"] not in users:
                        users.append(e["UserId"])
                for e in remove:
                    if e.get("Group") == "all":
                        public = False
                    if e.get("UserId") in users:
                        users.remove(e["UserId"])
                changes.update(public=public, launch_users=users)
            img = img.but(**changes)
            self.table.put(img, tx=tx)
        return img

    def reset_attribute(self, scope: Scope, image_id: str, attribute: str) -> Image:
        """ResetImageAttribute: only ``launchPermission`` (private, shared with nobody)."""
        if attribute != "launchPermission":
            raise _err("InvalidParameterValue", f"Value ({attribute}) for parameter attribute "
                                                f"is invalid: only launchPermission can be "
                                                f"reset")
        with self.cloud.engine.transaction() as tx:
            img = self._owned(scope, image_id, tx).but(public=False, launch_users=[])
            self.table.put(img, tx=tx)
        return img

    def _snapshot_encrypted(self, sid: str, tx: Transaction) -> bool:
        try:
            return bool(self.cloud.engine.get_snapshot(sid, tx=tx).encrypted)
        except errors.NotFound:
            return False

    @staticmethod
    def _check_permission(e: dict[str, str]) -> None:
        if e.get("OrganizationArn") or e.get("OrganizationalUnitArn"):
            raise _err("InvalidParameterValue", "Sharing with organizations or organizational "
                                                "units is not supported here")
        group, user = e.get("Group"), e.get("UserId")
        if group is not None and group != "all":
            raise _err("InvalidAMIAttributeItemValue",
                       f'Invalid attribute item value "{group}" for UserGroup item type.')
        if user is not None and not _ACCOUNT.match(str(user)):
            raise _err("InvalidAMIAttributeItemValue",
                       f'Invalid attribute item value "{user}" for userId item type.')
        if group is None and user is None:
            raise _err("InvalidParameterValue", "A launch permission names a UserId or the "
                                                "Group all")

    # --- tags of a new image --------------------------------------------------------------

    @staticmethod
    def spec_tags(specs: list[dict[str, Any]] | None, resource_type: str,
                  allowed: tuple[str, ...]) -> dict[str, str]:
        """Tags a request's TagSpecifications give ``resource_type`` (see :func:`spec_tags`)."""
        return spec_tags(specs, resource_type, allowed)


__all__ = ["Images", "image_snapshots"]


def seed_records(entries: Any, default_region: str, now: float) -> list[Image]:
    """The public images a seed list names, for test suites that launch well-known AMI ids.
    Each entry: ``ImageId`` (required), ``Name`` (default the id), ``Description``,
    ``Region`` (default ``default_region``; an id lives in one region), ``OwnerId`` (default
    ``SEED_OWNER``), ``Architecture`` (``x86_64``), ``VirtualizationType`` (``hvm``),
    ``RootDeviceName`` (``/dev/xvda``), ``VolumeSize`` (8 GiB), ``VolumeType`` (``gp2``).
    A seed image has no snapshot: its root volume starts blank. ``ValueError`` names the
    first bad entry."""
    if not isinstance(entries, list):
        raise ValueError("seed images: expected a JSON list of objects")
    imgs: list[Image] = []
    seen: set[str] = set()
    for n, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ValueError(f"seed image {n}: not an object")
        iid = e.get("ImageId")
        if not isinstance(iid, str) or not is_aws_id(iid, "ami") or iid in seen:
            raise ValueError(f"seed image {n}: ImageId {iid!r} is not a new ami-... id")
        seen.add(iid)
        region = e.get("Region", default_region)
        owner = e.get("OwnerId", SEED_OWNER)
        arch = e.get("Architecture", "x86_64")
        virt = e.get("VirtualizationType", "hvm")
        size = e.get("VolumeSize", 8)
        vtype = e.get("VolumeType", "gp2")
        root = e.get("RootDeviceName", "/dev/xvda")
        name = e.get("Name", iid)
        description = e.get("Description")
        try:
            check_image_name(name)
            check_device_name(root)
            if not isinstance(size, int):
                raise errors.InvalidParameter(f"VolumeSize {size!r} is not an integer")
            validate_volume_spec(vtype, size, None, None, False)
            if description is not None:
                check_description(description)
        except errors.EbsError as exc:
            raise ValueError(f"seed image {iid}: {exc}") from None
        if region not in REGIONS or not (isinstance(owner, str) and _ACCOUNT.match(owner)) \
                or arch not in ARCHITECTURES or virt not in VIRTUALIZATION_TYPES:
            raise ValueError(f"seed image {iid}: bad Region, OwnerId, Architecture or "
                             f"VirtualizationType")
        imgs.append(Image(id=iid, region=region, owner_id=owner, name=name,
                          description=description, state="available", creation_time=now,
                          architecture=arch, virtualization_type=virt, root_device_name=root,
                          block_device_mappings=[{"DeviceName": root, "Ebs": {
                              "VolumeSize": size, "VolumeType": vtype,
                              "DeleteOnTermination": True, "Encrypted": False}}],
                          public=True))
    return imgs


def check_seed_entries(entries: Any) -> list[dict[str, Any]]:
    """``entries`` if :func:`seed_records` accepts them (``serve --seed-images`` checks its
    file before it serves), else ``ValueError``."""
    seed_records(entries, "us-east-1", 0.0)
    return list(entries)
