"""The cloud layer's facade: EC2's resources and rules over one engine.

``Cloud(engine)`` holds the record tables (:mod:`.tables`), the clock every time-driven rule
reads, the configuration, and one manager per resource family; each manager's public
methods are the library API of its EC2 actions (the HTTP layer, ``ebsengine.aws``, only
parses, calls them and renders)::

    cloud = Cloud(engine)
    scope = Scope("us-east-1", "123456789012")
    key = cloud.keypairs.create(scope, "mine")
    image = cloud.images.register(scope, name="base", root_device_name="/dev/xvda",
                                  block_device_mappings=[...])
    (inst,) = cloud.instances.run(scope, image_id=image.id, key_name="mine")

Every change that touches several records (an instance, its volumes and interfaces, its
addresses) is one engine unit of work: it commits once or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ebsengine.engine import Engine

from .addresses import Addresses
from .addressing import Addressing
from .clock import Scheduler, bind_clock
from .dlm import Lifecycle
from .encryption import EbsEncryption
from .images import Images
from .instances import Instances
from .keypairs import KeyPairs
from .meter import Meter
from .model import (
    KINDS,
    Address,
    Image,
    Instance,
    KeyPair,
    NetworkInterface,
    SecurityGroup,
    Subnet,
    Vpc,
)
from .network import Network
from .security_groups import SecurityGroups
from .tables import CloudRecord, Table
from .tags import Tags
from .tokens import TokenStore

R = TypeVar("R", bound=CloudRecord)


@dataclass(frozen=True)
class CloudConfig:
    """Knobs of the thin compute layer (documented in the README, "EC2 layer").

    ``public_pool``: where public IPs come from (see :mod:`.addressing`).
    ``boot_seconds`` / ``stop_seconds`` / ``terminate_seconds``: how long an instance stays
    ``pending`` / ``stopping`` / ``shutting-down`` on the clock (0: the next read sees it
    done, as soon as it can be observed).
    ``terminated_visible_seconds``: how long a terminated instance is still described.
    ``address_quota``: Elastic IPs per region (AWS's default: 5).
    ``rules_per_group``: rules per security group, direction and address family (AWS: 60).
    """

    public_pool: str = "198.18.0.0/15"
    boot_seconds: float = 0.0
    stop_seconds: float = 0.0
    terminate_seconds: float = 0.0
    terminated_visible_seconds: float = 3600.0
    deregistered_visible_seconds: float = 3600.0
    address_quota: int = 5
    key_pair_quota: int = 5000
    rules_per_group: int = 60
    #: the cost meter's price file (None: ``$EBSENGINE_PRICES``, else the shipped us-east-1
    #: table; see :mod:`.pricing`)
    prices_file: str | None = None


class Cloud:
    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time,
                 config: CloudConfig | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.config = config or CloudConfig()
        self.tokens = TokenStore(engine, clock)
        #: the usage ledger (:mod:`.meter`); every table write reports to it
        self.meter = Meter(self)
        self.keypair_table: Table[KeyPair] = self.table(KeyPair)
        self.vpcs: Table[Vpc] = self.table(Vpc)
        self.subnets: Table[Subnet] = self.table(Subnet)
        self.security_groups: Table[SecurityGroup] = self.table(SecurityGroup)
        self.network_interfaces: Table[NetworkInterface] = self.table(NetworkInterface)
        self.addresses: Table[Address] = self.table(Address)
        self.image_table: Table[Image] = self.table(Image)
        self.instance_table: Table[Instance] = self.table(Instance)
        self.addressing = Addressing(self)
        self.tags = Tags(self)
        #: encryption by default and the default KMS key, per region (:mod:`.encryption`)
        self.encryption = EbsEncryption(engine)
        # the managers: the library API of each resource family
        self.keypairs = KeyPairs(self)
        self.network = Network(self)
        self.groups = SecurityGroups(self)
        self.images = Images(self)
        self.instances = Instances(self)
        self.eips = Addresses(self)
        # time-driven work: lifecycle policies run on the clock (a simulated clock runs
        # them as it is advanced; see clock.py)
        self.scheduler = Scheduler(self.clock)
        self.dlm = Lifecycle(self)
        self.scheduler.add(self.dlm)
        bind_clock(self.clock, engine, self.scheduler)

    def table(self, cls: type[R]) -> Table[R]:
        return Table(self.engine, cls, observer=self.meter.observe)

    def now(self) -> float:
        return float(self.clock())

    def check(self) -> list[str]:
        """Problems in the cloud records (dangling references between them and the engine's
        volumes and snapshots); empty when consistent. See :mod:`.check`."""
        from .check import check_cloud

        return check_cloud(self)

    def reset(self) -> dict[str, Any]:
        """Delete every resource of every region: cloud records, volumes and snapshots
        (moto's ``POST /moto-api/reset``). Returns what was removed, by kind."""
        from .check import reset_all

        return reset_all(self)


__all__ = ["KINDS", "Cloud", "CloudConfig"]
