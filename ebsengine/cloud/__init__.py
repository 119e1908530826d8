"""EC2's rules and state machines over the engine: instances, AMIs, key pairs, security
groups, VPCs, subnets, network interfaces and Elastic IPs, as typed records in the engine's
store (see :mod:`.core` for the facade and :mod:`.model` for the records)."""

from .clock import SimulatedClock, WallClock
from .core import Cloud, CloudConfig
from .scope import DEFAULT_ACCOUNT, DEFAULT_REGION, Scope

__all__ = ["DEFAULT_ACCOUNT", "DEFAULT_REGION", "Cloud", "CloudConfig", "Scope",
           "SimulatedClock", "WallClock"]
