"""EBS's volume-type rules: sizes, IOPS and throughput limits and defaults, Multi-Attach.

Limits follow the current botocore model of EC2 (CreateVolume, ModifyVolume).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidParameter, InvalidParameterCombination, MissingParameter
from .ids import check_int


@dataclass(frozen=True)
class TypeRule:
    min_gib: int
    max_gib: int
    iops: tuple[int, int, int] | None = None  # (min, max, max per GiB); None = not settable
    iops_required: bool = False
    iops_default: int | None = None
    throughput: tuple[int, int] | None = None  # (min, max) MiB/s; None = not settable
    throughput_default: int | None = None
    multi_attach: bool = False


#: the zone of a volume whose creator names none (the library, the CLI)
DEFAULT_AVAILABILITY_ZONE = "us-east-1a"
DEFAULT_REGION = "us-east-1"
#: the account of the open mode (and of every engine call that names none)
DEFAULT_ACCOUNT = "123456789012"


def region_of_zone(zone: str) -> str:
    """``us-east-1a`` -> ``us-east-1``."""
    return zone[:-1] if zone and zone[-1].isalpha() else zone
#: largest snapshot (EBS direct StartSnapshot VolumeSize) in GiB
MAX_SNAPSHOT_GIB = 65536

VOLUME_TYPES: dict[str, TypeRule] = {
    "gp2": TypeRule(1, 16384),
    "gp3": TypeRule(1, 65536, iops=(3000, 80000, 500), iops_default=3000,
                    throughput=(125, 2000), throughput_default=125),
    "io1": TypeRule(4, 16384, iops=(100, 64000, 50), iops_required=True, multi_attach=True),
    "io2": TypeRule(4, 65536, iops=(100, 256000, 1000), iops_required=True, multi_attach=True),
    "st1": TypeRule(125, 16384),
    "sc1": TypeRule(125, 16384),
    "standard": TypeRule(1, 1024),
}


def gp2_iops(size_gib: int) -> int:
    """gp2 baseline IOPS: 3 per GiB, at least 100, at most 16,000."""
    return max(100, min(16000, 3 * size_gib))


def modified_spec(current: tuple[str, int | None, int | None], volume_type: str | None,
                  iops: int | None, throughput: int | None) -> tuple[str, int | None, int | None]:
    """ModifyVolume's target ``(type, iops, throughput)`` from the current ones and the
    request's: omitted values keep theirs, except that a type change defaults IOPS and
    throughput to the new type's defaults (gp3/io1/io2: 3,000 IOPS; gp3: 125 MiB/s), as does
    a value the old type did not have. Not validated: see :func:`validate_volume_spec`."""
    old_type, old_iops, old_tp = current
    new_type = volume_type or old_type
    changed = new_type != old_type
    rule = VOLUME_TYPES.get(new_type)
    if iops is None and rule is not None and rule.iops is not None:
        iops = 3000 if changed or old_iops is None else old_iops
    if throughput is None and rule is not None and rule.throughput is not None:
        throughput = rule.throughput_default if changed or old_tp is None else old_tp
    return new_type, iops, throughput


def validate_volume_spec(volume_type: str, size_gib: int, iops: int | None,
                         throughput: int | None, multi_attach: bool,
                         *, defaults: bool = True) -> tuple[int | None, int | None]:
    """Check a volume's type, size, IOPS and throughput as EBS does.

    Returns the effective ``(iops, throughput)`` (defaults filled in when ``defaults``).
    Raises InvalidParameter / InvalidParameterCombination / MissingParameter.
    """
    rule = VOLUME_TYPES.get(volume_type)
    if rule is None:
        raise InvalidParameter(f"The volume type '{volume_type}' is not valid. Valid types: "
                               + ", ".join(VOLUME_TYPES))
    check_int("size", size_gib)
    check_int("iops", iops)
    check_int("throughput", throughput)
    if not rule.min_gib <= size_gib <= rule.max_gib:
        raise InvalidParameter(f"Volume of {size_gib}GiB is out of range for volume type "
                               f"{volume_type}: size must be {rule.min_gib}-{rule.max_gib} GiB")
    if iops is not None and rule.iops is None:
        raise InvalidParameterCombination(
            f"The parameter iops is not supported for {volume_type} volumes.")
    if throughput is not None and rule.throughput is None:
        raise InvalidParameterCombination(
            f"The parameter throughput is not supported for {volume_type} volumes.")
    if multi_attach and not rule.multi_attach:
        raise InvalidParameterCombination(
            f"Multi-Attach is not supported for {volume_type} volumes.")
    if rule.iops is not None:
        if iops is None:
            if rule.iops_required:
                raise MissingParameter(f"The request must contain the parameter iops "
                                       f"for {volume_type} volumes.")
            iops = rule.iops_default if defaults else None
        if iops is not None:
            lo, hi, per_gib = rule.iops
            if not lo <= iops <= hi:
                raise InvalidParameter(f"Volume iops of {iops} is out of range for "
                                       f"{volume_type}: {lo}-{hi}.")
            if iops > per_gib * size_gib and iops > lo:
                raise InvalidParameter(
                    f"Iops to volume size ratio of {iops / size_gib:g} is too high; maximum "
                    f"is {per_gib}.")
    elif volume_type == "gp2":
        iops = gp2_iops(size_gib)
    if rule.throughput is not None:
        if throughput is None:
            throughput = rule.throughput_default if defaults else None
        if throughput is not None:
            lo, hi = rule.throughput
            if not lo <= throughput <= hi:
                raise InvalidParameter(f"Throughput of {throughput} MiB/s is out of range for "
                                       f"{volume_type}: {lo}-{hi}.")
            if iops is not None and throughput > iops // 4 and throughput > lo:
                raise InvalidParameter(f"Throughput of {throughput} MiB/s is too high for "
                                       f"{iops} IOPS; maximum is 0.25 MiB/s per IOPS.")
    return iops, throughput
