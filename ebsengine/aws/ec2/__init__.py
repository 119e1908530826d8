"""The EC2 Query actions: AWS's rules on top of the engine and the cloud layer.

One method per action, named like boto3's (``create_volume``), taking a :class:`Context`
and the action's parsed input dict (botocore member names) and returning its output dict.
The rules (volume types, sizes, IOPS defaults and limits, Multi-Attach, tags, ids,
ClientTokens) live in ``ebsengine.rules``, shared with the engine; this layer owns what only
the EC2 API has: regions, owner id, DryRun, TagSpecifications, Describe filters and
pagination, modification states and their rate limit, snapshot permissions, and the
transient states of create responses.

A request that changes several records (a resource and its AWS records, several snapshots,
the tags of several resources) makes them in one unit of work of the engine, so they commit
together or not at all; a refused request changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ebsengine.cloud import Cloud

from ..errors import ApiError
from ..store import AwsStore, Context
from .addresses import AddressActions
from .common import (
    Actions,
    CursorPages,
    ModificationRules,
    Paginator,
    Params,
    Result,
    apply_filters,
    compile_filters,
    exact_values,
    volume_view,
)
from .encryption import EncryptionActions
from .images import ImageActions
from .instances import InstanceActions
from .keypairs import KeyPairActions
from .network import NetworkActions
from .regions import RegionActions
from .security_groups import SecurityGroupActions
from .snapshots import SnapshotActions
from .tags import TagActions
from .volumes import VolumeActions


class Ec2Model(
    VolumeActions,
    SnapshotActions,
    TagActions,
    ImageActions,
    NetworkActions,
    AddressActions,
    SecurityGroupActions,
    InstanceActions,
    KeyPairActions,
    RegionActions,
    EncryptionActions,
):
    """Every EC2 action this endpoint serves, over an :class:`AwsStore`: one base class per
    resource (or family), whose ``ACTIONS`` are merged (below the class)."""

    ACTIONS: ClassVar[dict[str, str]] = {}

    def __init__(self, store: AwsStore, *, modification: ModificationRules | None = None,
                 cloud: Cloud | None = None) -> None:
        self.store = store
        self.engine: Any = store.engine
        self.cloud = cloud or Cloud(store.engine, clock=store.clock)
        self.rules = modification or ModificationRules()

    def supports(self, action: str) -> bool:
        return action in self.ACTIONS

    def call(self, ctx: Context, action: str, params: Params) -> Result | None:
        """Run ``action``; DryRun answers ``DryRunOperation`` once the input has parsed."""
        if params.pop("DryRun", False):
            raise ApiError("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
        method: Callable[[Context, Params], Result | None] = getattr(self, self.ACTIONS[action])
        return method(ctx, params)



#: the action classes, one per resource (or family)
HANDLERS: tuple[type[Actions], ...] = tuple(
    b for b in Ec2Model.__bases__ if issubclass(b, Actions))
Ec2Model.ACTIONS = {k: v for h in HANDLERS for k, v in h.ACTIONS.items()}

__all__ = [
    "CursorPages",
    "Ec2Model",
    "ModificationRules",
    "Paginator",
    "apply_filters",
    "compile_filters",
    "exact_values",
    "volume_view",
]
