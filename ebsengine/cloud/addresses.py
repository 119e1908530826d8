"""(being written)"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Cloud


class Addresses:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
