"""Device names and AMI names: AWS's formats, shared by AttachVolume, RunInstances' block
device mappings, RegisterImage and CreateImage."""

from __future__ import annotations

import re

from ..errors import InvalidParameter

#: Linux device names EC2 accepts for EBS volumes (``/dev/sdf``, ``/dev/xvdba``, ``/dev/sda1``)
_DEVICE = re.compile(r"^(/dev/(sd[a-z]\d{0,2}|xvd[a-z]{1,2}\d{0,2}|hd[a-z])|xvd[a-z]{1,2})$")
#: AMI names: 3-128 characters of letters, digits and ``()[] ./-'@_``
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")


def check_device_name(device: object) -> str:
    """``device`` if EC2 accepts it as an EBS device name, else InvalidParameter."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise InvalidParameter(f"Value ({device}) for parameter device is invalid. {device} is "
                               f"not a valid EBS device name.")
    return device


def check_image_name(name: object) -> str:
    """``name`` if it is a valid AMI name, else InvalidParameter (InvalidAMIName.Malformed)."""
    if not isinstance(name, str) or not _IMAGE_NAME.match(name):
        err = InvalidParameter(f"AMI names must be between 3 and 128 characters long, and may "
                               f"contain letters, numbers, '(', ')', '.', '-', '/', '[', ']', "
                               f"''', '@', ' ' and '_' ({name!r})")
        err.code = "InvalidAMIName.Malformed"
        raise err
    return name
