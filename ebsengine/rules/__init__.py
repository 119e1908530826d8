"""AWS's rules and formats, in one home shared by every layer: ids, volume types and their
limits, tags, ClientTokens. Pure functions over plain values; they import nothing but
``errors``."""

from .devices import check_device_name, check_image_name
from .ids import check_id, check_int, is_aws_id, new_id
from .tags import (
                   EBS_DIRECT_TAG_LIMITS,
                   EC2_TAG_LIMITS,
                   MAX_TAGS,
                   check_description,
                   check_tag_key,
                   check_tags,
                   check_text,
                   kept_reserved,
                   system_tag_keys,
)
from .volumes import (
                   DEFAULT_ACCOUNT,
                   DEFAULT_AVAILABILITY_ZONE,
                   DEFAULT_REGION,
                   MAX_SNAPSHOT_GIB,
                   VOLUME_TYPES,
                   TypeRule,
                   gp2_iops,
                   modified_spec,
                   region_of_zone,
                   validate_volume_spec,
)

__all__ = [
                   "DEFAULT_ACCOUNT",
                   "DEFAULT_AVAILABILITY_ZONE",
                   "DEFAULT_REGION",
                   "EBS_DIRECT_TAG_LIMITS",
                   "EC2_TAG_LIMITS",
                   "MAX_SNAPSHOT_GIB",
                   "MAX_TAGS",
                   "VOLUME_TYPES",
                   "TypeRule",
                   "check_description",
                   "check_device_name",
                   "check_id",
                   "check_image_name",
                   "check_int",
                   "check_tag_key",
                   "check_tags",
                   "check_text",
                   "gp2_iops",
                   "is_aws_id",
                   "kept_reserved",
                   "modified_spec",
                   "region_of_zone",
                   "new_id",
                   "system_tag_keys",
                   "validate_volume_spec",
]
