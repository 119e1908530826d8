"""The instance types this cloud launches: t2, t3, m5, c5 and r5 with AWS's published vCPU
and memory (spec section 5), as :class:`InstanceType` rows that DescribeInstanceTypes renders.

T2 and T3 are burstable (CPU credits: T2 ``standard``, T3 ``unlimited`` by default); T2 is Xen,
the others Nitro. Every type here is offered in every zone of every region."""

from __future__ import annotations

from dataclasses import dataclass

from ebsengine import errors


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_mib: int
    hypervisor: str            # xen (t2) or nitro
    burstable: bool
    free_tier: bool = False

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def cores(self) -> int:
        """Physical cores: one per vCPU on a one-vCPU type, else two threads per core."""
        return max(1, self.vcpus // 2) if self.vcpus > 1 else 1


def _gib(g: float) -> int:
    return int(g * 1024)


_ROWS: list[tuple[str, int, float]] = [
    ("t2.nano", 1, 0.5), ("t2.micro", 1, 1), ("t2.small", 1, 2), ("t2.medium", 2, 4),
    ("t2.large", 2, 8), ("t2.xlarge", 4, 16), ("t2.2xlarge", 8, 32),
    ("t3.nano", 2, 0.5), ("t3.micro", 2, 1), ("t3.small", 2, 2), ("t3.medium", 2, 4),
    ("t3.large", 2, 8), ("t3.xlarge", 4, 16), ("t3.2xlarge", 8, 32),
    ("m5.large", 2, 8), ("m5.xlarge", 4, 16), ("m5.2xlarge", 8, 32), ("m5.4xlarge", 16, 64),
    ("m5.8xlarge", 32, 128), ("m5.12xlarge", 48, 192), ("m5.16xlarge", 64, 256),
    ("m5.24xlarge", 96, 384),
    ("c5.large", 2, 4), ("c5.xlarge", 4, 8), ("c5.2xlarge", 8, 16), ("c5.4xlarge", 16, 32),
    ("c5.9xlarge", 36, 72), ("c5.12xlarge", 48, 96), ("c5.18xlarge", 72, 144),
    ("c5.24xlarge", 96, 192),
    ("r5.large", 2, 16), ("r5.xlarge", 4, 32), ("r5.2xlarge", 8, 64), ("r5.4xlarge", 16, 128),
    ("r5.8xlarge", 32, 256), ("r5.12xlarge", 48, 384), ("r5.16xlarge", 64, 512),
    ("r5.24xlarge", 96, 768),
]

#: every type, by name, in catalogue order
TYPES: dict[str, InstanceType] = {
    name: InstanceType(name, vcpus, _gib(mem), "xen" if name.startswith("t2.") else "nitro",
                       name.startswith(("t2.", "t3.")),
                       free_tier=name in ("t2.micro", "t3.micro"))
    for name, vcpus, mem in _ROWS
}


def instance_type(name: object) -> InstanceType:
    """The catalogue row of ``name``, else ``InvalidParameterValue`` (RunInstances' text)."""
    found = TYPES.get(name) if isinstance(name, str) else None
    if found is None:
        raise errors.Ec2Error("InvalidParameterValue", f"Invalid value '{name}' for InstanceType.")
    return found


__all__ = ["TYPES", "InstanceType", "instance_type"]
