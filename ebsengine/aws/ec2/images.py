"""EC2 AMI actions: register, describe, deregister, copy, attributes. The rules are
``ebsengine.cloud.images``; this module parses, calls ``cloud.images`` and renders."""

from __future__ import annotations

from typing import Any, ClassVar

from ebsengine.cloud.images import image_snapshots
from ebsengine.cloud.model import Image

from ..errors import ApiError
from ..store import Context
from .common import (
    Actions,
    CursorPages,
    Extractor,
    Params,
    Result,
    _b,
    _iso,
    _tag_list,
    compile_filters,
)


def _ebs(m: dict[str, Any]) -> dict[str, Any]:
    return m.get("Ebs") or {}


#: DescribeImages filters (spec section 12 and botocore's list of the ones we can answer)
IMAGE_FILTERS: dict[str, Extractor] = {
    "image-id": lambda i: [i.id],
    "name": lambda i: [i.name],
    "state": lambda i: [i.state],
    "owner-id": lambda i: [i.owner_id],
    "owner-alias": lambda i: [],
    "architecture": lambda i: [i.architecture],
    "root-device-type": lambda i: [i.root_device_type],
    "root-device-name": lambda i: [i.root_device_name],
    "block-device-mapping.snapshot-id": image_snapshots,
    "block-device-mapping.device-name": lambda i: [m["DeviceName"]
                                                   for m in i.block_device_mappings],
    "block-device-mapping.volume-size": lambda i: [str(_ebs(m)["VolumeSize"])
                                                   for m in i.block_device_mappings
                                                   if _ebs(m).get("VolumeSize") is not None],
    "block-device-mapping.volume-type": lambda i: [_ebs(m)["VolumeType"]
                                                   for m in i.block_device_mappings
                                                   if _ebs(m).get("VolumeType")],
    "block-device-mapping.delete-on-termination": lambda i: [
        _b(bool(_ebs(m).get("DeleteOnTermination"))) for m in i.block_device_mappings
        if m.get("Ebs") is not None],
    "block-device-mapping.encrypted": lambda i: [
        _b(bool(_ebs(m).get("Encrypted"))) for m in i.block_device_mappings
        if m.get("Ebs") is not None],
    "is-public": lambda i: [_b(i.public)],
    "virtualization-type": lambda i: [i.virtualization_type],
    "description": lambda i: [i.description] if i.description is not None else [],
    "image-type": lambda i: ["machine"],
    "hypervisor": lambda i: ["xen"],
    "ena-support": lambda i: [_b(i.ena_support)],
    "sriov-net-support": lambda i: [i.sriov_net_support] if i.sriov_net_support else [],
    "creation-date": lambda i: [_iso(i.creation_time)],
    "manifest-location": lambda i: [f"{i.owner_id}/{i.name}"],
    "source-instance-id": lambda i: [i.source_instance_id] if i.source_instance_id else [],
    "source-image-id": lambda i: [i.source_image_id] if i.source_image_id else [],
    "source-image-region": lambda i: [i.source_region] if i.source_region else [],
    "platform": lambda i: [],
    "kernel-id": lambda i: [],
    "ramdisk-id": lambda i: [],
    "product-code": lambda i: [],
    "product-code.type": lambda i: [],
}

#: DescribeImageAttribute: attribute name -> output member of its scalar value
_SCALAR_ATTRIBUTES = {
    "description": "Description", "kernel": "KernelId", "ramdisk": "RamdiskId",
    "sriovNetSupport": "SriovNetSupport", "bootMode": "BootMode", "tpmSupport": "TpmSupport",
    "uefiData": "UefiData", "lastLaunchedTime": "LastLaunchedTime",
    "imdsSupport": "ImdsSupport", "deregistrationProtection": "DeregistrationProtection",
}


class ImageActions(Actions):
    ACTIONS: ClassVar[dict[str, str]] = {
        "RegisterImage": "register_image",
        "DescribeImages": "describe_images",
        "DeregisterImage": "deregister_image",
        "CopyImage": "copy_image",
        "DescribeImageAttribute": "describe_image_attribute",
        "ModifyImageAttribute": "modify_image_attribute",
        "ResetImageAttribute": "reset_image_attribute",
    }

    def _image_view(self, img: Image) -> Result:
        mappings = []
        for m in img.block_device_mappings:
            out: dict[str, Any] = {"DeviceName": m.get("DeviceName")}
            ebs = m.get("Ebs")
            if ebs is not None:
                e = {k: ebs.get(k) for k in ("DeleteOnTermination", "Iops", "SnapshotId",
                                             "VolumeSize", "VolumeType", "Throughput",
                                             "Encrypted", "KmsKeyId")}
                if e["Encrypted"] is None and e["SnapshotId"]:
                    snap = self._snapshot_or_none(e["SnapshotId"])
                    e["Encrypted"] = bool(snap.encrypted) if snap is not None else False
                out["Ebs"] = e
            if m.get("VirtualName") is not None:
                out["VirtualName"] = m["VirtualName"]
            if m.get("NoDevice") is not None:
                out["NoDevice"] = m["NoDevice"]
            mappings.append(out)
        return {
            "ImageId": img.id,
            "ImageLocation": f"{img.owner_id}/{img.name}",
            "State": img.state,
            "OwnerId": img.owner_id,
            "CreationDate": _iso(img.creation_time),
            "Public": bool(img.public),
            "Architecture": img.architecture,
            "ImageType": "machine",
            "Name": img.name,
            "Description": img.description,
            "RootDeviceType": img.root_device_type,
            "RootDeviceName": img.root_device_name,
            "BlockDeviceMappings": mappings,
            "VirtualizationType": img.virtualization_type,
            "Hypervisor": "xen",
            "EnaSupport": True if img.ena_support else None,
            "SriovNetSupport": img.sriov_net_support,
            "PlatformDetails": "Linux/UNIX",
            "UsageOperation": "RunInstances",
            "SourceInstanceId": img.source_instance_id,
            "SourceImageId": img.source_image_id,
            "SourceImageRegion": img.source_region,
            "BootMode": img.boot_mode,
            "ImdsSupport": img.imds_support,
            "TpmSupport": img.tpm_support,
            "DeregistrationProtection": "disabled",
            "Tags": _tag_list(img.tags),
        }

    def register_image(self, ctx: Context, p: Params) -> Result:
        tags = self.cloud.images.spec_tags(p.get("TagSpecifications"), "image", ("image",))
        img = self.cloud.images.register(
            self.scope(ctx), name=p["Name"], description=p.get("Description"),
            root_device_name=p.get("RootDeviceName"),
            block_device_mappings=p.get("BlockDeviceMappings"),
            architecture=p.get("Architecture"), virtualization_type=p.get("VirtualizationType"),
            boot_mode=p.get("BootMode"), ena_support=p.get("EnaSupport"),
            sriov_net_support=p.get("SriovNetSupport"), imds_support=p.get("ImdsSupport"),
            tpm_support=p.get("TpmSupport"), uefi_data=p.get("UefiData"), tags=tags,
            image_location=p.get("ImageLocation"), kernel_id=p.get("KernelId"),
            ramdisk_id=p.get("RamdiskId"), billing_products=p.get("BillingProducts"))
        return {"ImageId": img.id}

    def describe_images(self, ctx: Context, p: Params) -> Result:
        """Images in id order; ``MaxResults``/``NextToken`` page them (signed tokens bound to
        the region), not combinable with ``ImageIds``."""
        ids = p.get("ImageIds")
        if ids and (p.get("MaxResults") is not None or p.get("NextToken")):
            raise ApiError("InvalidParameterCombination",
                           "The parameter imagesSet cannot be used with the parameter maxResults")
        pages = CursorPages(self.store, "images", "ami", lo=1, hi=1000)
        after, limit = pages.open(ctx, p)
        match = compile_filters(p.get("Filters"), IMAGE_FILTERS, lambda i: i.tags)
        imgs = self.cloud.images.describe(self.scope(ctx), image_ids=ids, owners=p.get("Owners"),
                                          executable_users=p.get("ExecutableUsers"))
        page, last = pages.in_memory([i for i in imgs if match(i)], after, limit)
        return {"Images": [self._image_view(i) for i in page], "NextToken": pages.token(ctx, last)}

    def deregister_image(self, ctx: Context, p: Params) -> Result:
        results = self.cloud.images.deregister(
            self.scope(ctx), p["ImageId"],
            delete_associated_snapshots=bool(p.get("DeleteAssociatedSnapshots")))
        out: Result = {"Return": True}
        if p.get("DeleteAssociatedSnapshots"):
            out["DeleteSnapshotResults"] = [{"SnapshotId": sid, "ReturnCode": code}
                                            for sid, code in results]
        return out

    def copy_image(self, ctx: Context, p: Params) -> Result:
        for unsupported in ("DestinationOutpostArn", "DestinationAvailabilityZone",
                            "DestinationAvailabilityZoneId"):
            if p.get(unsupported):
                raise ApiError("InvalidParameterValue",
                               f"{unsupported}: copies to Outposts and Local Zones are not "
                               f"supported")
        specs = p.get("TagSpecifications")
        allowed = ("image", "snapshot")
        img = self.cloud.images.copy(
            self.scope(ctx), source_image_id=p["SourceImageId"], source_region=p["SourceRegion"],
            name=p["Name"], description=p.get("Description"),
            copy_image_tags=bool(p.get("CopyImageTags")),
            image_tags=self.cloud.images.spec_tags(specs, "image", allowed),
            snapshot_tags=self.cloud.images.spec_tags(specs, "snapshot", allowed),
            encrypted=p.get("Encrypted"), kms_key_id=p.get("KmsKeyId"),
            client_token=p.get("ClientToken"),
            completion_minutes=p.get("SnapshotCopyCompletionDurationMinutes"))
        return {"ImageId": img.id}

    def describe_image_attribute(self, ctx: Context, p: Params) -> Result:
        attr = p["Attribute"]
        value = self.cloud.images.attribute(self.scope(ctx), p["ImageId"], attr)
        out: Result = {"ImageId": p["ImageId"]}
        if attr == "launchPermission":
            out["LaunchPermissions"] = value
        elif attr == "productCodes":
            out["ProductCodes"] = value
        else:
            out[_SCALAR_ATTRIBUTES[attr]] = {} if value is None else {"Value": value}
        return out

    def modify_image_attribute(self, ctx: Context, p: Params) -> None:
        attr = p.get("Attribute")
        desc = (p.get("Description") or {}).get("Value")
        imds = (p.get("ImdsSupport") or {}).get("Value")
        perm = p.get("LaunchPermission") or {}
        add: list[dict[str, str]] = list(perm.get("Add") or [])
        remove: list[dict[str, str]] = list(perm.get("Remove") or [])
        flat = [{"UserId": u} for u in p.get("UserIds") or []] + \
            [{"Group": g} for g in p.get("UserGroups") or []] + \
            [{"OrganizationArn": a} for a in p.get("OrganizationArns") or []] + \
            [{"OrganizationalUnitArn": a} for a in p.get("OrganizationalUnitArns") or []]
        if p.get("ProductCodes"):
            raise ApiError("InvalidParameterValue", "Product codes cannot be added to an AMI")
        if attr is None:
            attr = "description" if desc is not None else "imdsSupport" if imds is not None \
                else "launchPermission" if (add or remove or flat) else None
        if attr is None:
            raise ApiError("MissingParameter", "The request must contain the parameter Attribute")
        if attr == "description":
            if desc is None:
                desc = p.get("Value")
            if desc is None:
                raise ApiError("MissingParameter", "The request must contain the parameter Value")
            self.cloud.images.modify_attribute(self.scope(ctx), p["ImageId"], description=desc)
        elif attr == "imdsSupport":
            if imds is None:
                imds = p.get("Value")
            if imds is None:
                raise ApiError("MissingParameter", "The request must contain the parameter Value")
            self.cloud.images.modify_attribute(self.scope(ctx), p["ImageId"], imds_support=imds)
        elif attr == "launchPermission":
            if flat:
                op = p.get("OperationType")
                if op not in ("add", "remove"):
                    raise ApiError("MissingParameter",
                                   "The request must contain the parameter OperationType")
                (add if op == "add" else remove).extend(flat)
            if not add and not remove:
                raise ApiError("MissingParameter",
                               "The request must contain the parameter LaunchPermission")
            self.cloud.images.modify_attribute(self.scope(ctx), p["ImageId"], launch_add=add,
                                               launch_remove=remove)
        else:
            raise ApiError("InvalidParameterValue",
                           f"Value ({attr}) for parameter attribute is invalid. Valid values: "
                           f"description, imdsSupport, launchPermission")

    def reset_image_attribute(self, ctx: Context, p: Params) -> None:
        self.cloud.images.reset_attribute(self.scope(ctx), p["ImageId"], p["Attribute"])
