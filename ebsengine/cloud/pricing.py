"""The price table and AWS's names for what the meter measures.

Prices come from a JSON file (``prices-us-east-1.json`` beside this module, AWS's us-east-1
on-demand list prices; the file says where each figure comes from). A user replaces it with
a file of the same shape: ``Prices.load(path)``, ``ebsengine cost --prices FILE``, or the
``EBSENGINE_PRICES`` environment variable (the server and the CLI both read it). Every region
is priced from the one table.

Usage types are named as AWS's billing reports name them: ``BoxUsage:t3.micro``,
``EBS:VolumeUsage.gp3`` (``EBS:VolumeUsage`` for magnetic ``standard``, ``.piops`` for io1),
``EBS:VolumeP-IOPS.gp3|.piops|.io2``, ``EBS:VolumeP-Throughput.gp3``, ``EBS:SnapshotUsage``,
``PublicIPv4:InUseAddress|IdleAddress``; outside us-east-1 they carry AWS's region billing
code (``USW2-BoxUsage:t3.micro``). The EBS direct API names (``EBS:directAPI.snapshot.Get``,
``.Put``, ``.List``) could not be confirmed against AWS's documentation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebsengine import errors

DEFAULT_PRICES = Path(__file__).with_name("prices-us-east-1.json")
#: environment variable naming a replacement price file
PRICES_ENV = "EBSENGINE_PRICES"

#: Cost Explorer's SERVICE dimension values
SERVICE_COMPUTE = "Amazon Elastic Compute Cloud - Compute"
SERVICE_EC2_OTHER = "EC2 - Other"   # EBS volumes, snapshots and (assumed) the EBS direct APIs
SERVICE_VPC = "Amazon Virtual Private Cloud"   # public IPv4 addresses since 2024-02-01

#: AWS's region billing codes (the usage-type prefix; none in us-east-1)
REGION_CODES: dict[str, str] = {
    "us-east-1": "", "us-east-2": "USE2", "us-west-1": "USW1", "us-west-2": "USW2",
    "ca-central-1": "CAN1", "sa-east-1": "SAE1", "eu-west-1": "EU", "eu-west-2": "EUW2",
    "eu-west-3": "EUW3", "eu-central-1": "EUC1", "eu-north-1": "EUN1", "ap-south-1": "APS3",
    "ap-northeast-1": "APN1", "ap-northeast-2": "APN2", "ap-northeast-3": "APN3",
    "ap-southeast-1": "APS1", "ap-southeast-2": "APS2",
}

#: volume type -> the suffix of its storage and IOPS usage types
VOLUME_SUFFIX = {"gp3": ".gp3", "gp2": ".gp2", "io1": ".piops", "io2": ".io2", "st1": ".st1",
                 "sc1": ".sc1", "standard": ""}

#: EBS direct API operation -> the meter's counter name (Get/Put: blocks, List: requests)
DIRECT_API = {"GetSnapshotBlock": "Get", "PutSnapshotBlock": "Put",
              "ListSnapshotBlocks": "List", "ListChangedBlocks": "List"}


def usage_type(region: str, base: str) -> str:
    """``base`` as AWS names it in ``region`` (``USW2-BoxUsage:t3.micro``)."""
    code = REGION_CODES.get(region, region)
    return f"{code}-{base}" if code else base


def base_of(name: str) -> str:
    """The usage type without its region code."""
    head, sep, rest = name.partition("-")
    if sep and head in REGION_CODES.values() and head:
        return rest
    return name


@dataclass(frozen=True)
class Rate:
    """What one unit of a usage type costs, its unit and its service."""

    price: float
    unit: str
    service: str


class Prices:
    """A price table (see the module docstring for the file)."""

    def __init__(self, doc: dict[str, Any], source: str = "") -> None:
        try:
            self.currency = str(doc.get("currency", "USD"))
            self.month_seconds = float(doc["month_seconds"])
            self.instance_hour = {str(k): float(v) for k, v in doc["instance_hour"].items()}
            self.instance_minimum_seconds = float(doc.get("instance_minimum_seconds", 60))
            self.volume_gib_month = {str(k): float(v) for k, v in doc["volume_gib_month"].items()}
            self.snapshot_gib_month = float(doc["snapshot_gib_month"])
            self.piops_iops_month = {str(k): float(v) for k, v in doc["piops_iops_month"].items()}
            self.gp3_iops_month = float(doc["gp3_iops_month"])
            self.gp3_free_iops = int(doc["gp3_free_iops"])
            self.gp3_throughput_mibps_month = float(doc["gp3_throughput_mibps_month"])
            self.gp3_free_throughput = int(doc["gp3_free_throughput"])
            self.public_ipv4_hour = float(doc["public_ipv4_hour"])
            self.direct_api_per_1000 = {str(k): float(v)
                                        for k, v in doc["direct_api_per_1000"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise errors.InvalidParameter(f"price file {source or '(given)'} is not a price "
                                          f"table: {exc!r}") from None
        self.source = source

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Prices:
        """The table at ``path``, else ``$EBSENGINE_PRICES``, else the shipped us-east-1 one."""
        chosen = Path(path or os.environ.get(PRICES_ENV) or DEFAULT_PRICES)
        try:
            doc = json.loads(chosen.read_text())
        except (OSError, ValueError) as exc:
            raise errors.InvalidParameter(f"cannot read price file {chosen}: {exc}") from None
        return cls(doc, str(chosen))

    def rate(self, base: str) -> Rate:
        """The rate of a usage type (region code stripped); price 0 for an unknown one."""
        base = base_of(base)
        if base.startswith("BoxUsage:"):
            return Rate(self.instance_hour.get(base.split(":", 1)[1], 0.0), "Hrs",
                        SERVICE_COMPUTE)
        if base.startswith("EBS:VolumeUsage"):
            vtype = next((t for t, s in VOLUME_SUFFIX.items() if "EBS:VolumeUsage" + s == base),
                         "")
            return Rate(self.volume_gib_month.get(vtype, 0.0), "GB-Mo", SERVICE_EC2_OTHER)
        if base == "EBS:VolumeP-IOPS.gp3":
            return Rate(self.gp3_iops_month, "IOPS-Mo", SERVICE_EC2_OTHER)
        if base.startswith("EBS:VolumeP-IOPS"):
            vtype = "io1" if base.endswith(".piops") else base.rsplit(".", 1)[-1]
            return Rate(self.piops_iops_month.get(vtype, 0.0), "IOPS-Mo", SERVICE_EC2_OTHER)
        if base == "EBS:VolumeP-Throughput.gp3":
            return Rate(self.gp3_throughput_mibps_month, "MiBps-Mo", SERVICE_EC2_OTHER)
        if base == "EBS:SnapshotUsage":
            return Rate(self.snapshot_gib_month, "GB-Mo", SERVICE_EC2_OTHER)
        if base.startswith("PublicIPv4:"):
            return Rate(self.public_ipv4_hour, "Hrs", SERVICE_VPC)
        if base.startswith("EBS:directAPI.snapshot."):
            op = base.rsplit(".", 1)[-1]
            return Rate(self.direct_api_per_1000.get(op, 0.0) / 1000.0,
                        "Requests" if op == "List" else "Blocks", SERVICE_EC2_OTHER)
        return Rate(0.0, "N/A", SERVICE_EC2_OTHER)


__all__ = ["DEFAULT_PRICES", "DIRECT_API", "PRICES_ENV", "REGION_CODES", "SERVICE_COMPUTE",
           "SERVICE_EC2_OTHER", "SERVICE_VPC", "VOLUME_SUFFIX", "Prices", "Rate", "base_of",
           "usage_type"]
