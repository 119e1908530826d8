"""AWS's rules and formats, in one home shared by every layer: ids, volume types and their
limits, tags. Pure functions over plain values; they import nothing but ``errors``."""

from .ids import check_id, check_int, new_id
from .tags import MAX_TAGS, check_description, check_tags, check_text
from .volumes import VOLUME_TYPES, TypeRule, gp2_iops, validate_volume_spec

__all__ = ["check_id", "check_int", "new_id", "MAX_TAGS", "check_description", "check_tags",
           "check_text", "VOLUME_TYPES", "TypeRule", "gp2_iops", "validate_volume_spec"]
