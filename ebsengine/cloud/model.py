"""The records of the EC2 layer (see :mod:`.tables` for how they are stored).

Field values use AWS's vocabulary where the API hands them back unchanged (block device
mappings and IP permissions are kept as botocore member dicts), and plain Python
elsewhere: times are epoch seconds, absent values None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .tables import CloudRecord


@dataclass(frozen=True)
class KeyPair(CloudRecord):
    KIND: ClassVar[str] = "keypair"
    PREFIX: ClassVar[str] = "key"
    RESOURCE_TYPE: ClassVar[str] = "key-pair"

    name: str = ""
    key_type: str = "rsa"
    fingerprint: str = ""
    public_key: str = ""          # OpenSSH one-line form
    create_time: float = 0.0
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Vpc(CloudRecord):
    KIND: ClassVar[str] = "vpc"
    PREFIX: ClassVar[str] = "vpc"
    RESOURCE_TYPE: ClassVar[str] = "vpc"

    cidr_block: str = ""
    is_default: bool = False
    state: str = "available"
    instance_tenancy: str = "default"
    dhcp_options_id: str = "default"
    tags: dict[str, str] = field(default_factory=dict)
    #: the id of the primary IPv4 CIDR's association (``vpc-cidr-assoc-...``)
    cidr_association_id: str = ""
    enable_dns_support: bool = True
    #: AWS: true in a default VPC, false in one made by CreateVpc
    enable_dns_hostnames: bool = False


@dataclass(frozen=True)
class Subnet(CloudRecord):
    KIND: ClassVar[str] = "subnet"
    PREFIX: ClassVar[str] = "subnet"
    RESOURCE_TYPE: ClassVar[str] = "subnet"

    vpc_id: str = ""
    cidr_block: str = ""
    availability_zone: str = ""
    default_for_az: bool = False
    map_public_ip_on_launch: bool = False
    state: str = "available"
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SecurityGroup(CloudRecord):
    KIND: ClassVar[str] = "sg"
    PREFIX: ClassVar[str] = "sg"
    RESOURCE_TYPE: ClassVar[str] = "security-group"

    vpc_id: str = ""
    name: str = ""
    description: str = ""
    #: rules, one per (protocol, ports, source) as botocore's SecurityGroupRule members plus
    #: ``SecurityGroupRuleId``; rendered into IpPermissions by grouping
    ingress: list[dict[str, Any]] = field(default_factory=list)
    egress: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkInterface(CloudRecord):
    KIND: ClassVar[str] = "eni"
    PREFIX: ClassVar[str] = "eni"
    RESOURCE_TYPE: ClassVar[str] = "network-interface"

    subnet_id: str = ""
    vpc_id: str = ""
    availability_zone: str = ""
    private_ip: str = ""
    mac_address: str = ""
    description: str = ""
    security_group_ids: list[str] = field(default_factory=list)
    #: ``{"instance_id", "device_index", "attachment_id", "delete_on_termination",
    #: "attach_time"}`` while attached, else None
    attachment: dict[str, Any] | None = None
    #: an auto-assigned public IP (never an Elastic IP: that is the Address's); None while
    #: an Elastic IP is associated or the instance is stopped
    public_ip: str | None = None
    #: whether this interface gets an AWS public IP whenever its instance runs and no
    #: Elastic IP is associated (launch into a subnet with MapPublicIpOnLaunch, or
    #: AssociatePublicIpAddress): stop releases the address, start and DisassociateAddress
    #: give a new one
    auto_public_ip: bool = False
    interface_type: str = "interface"
    source_dest_check: bool = True
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Address(CloudRecord):
    """An Elastic IP; ``id`` is its allocation id (``eipalloc-...``)."""

    KIND: ClassVar[str] = "eip"
    PREFIX: ClassVar[str] = "eipalloc"
    RESOURCE_TYPE: ClassVar[str] = "elastic-ip"

    public_ip: str = ""
    domain: str = "vpc"
    association_id: str | None = None
    instance_id: str | None = None
    network_interface_id: str | None = None
    private_ip: str | None = None
    network_border_group: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    allocation_time: float = 0.0
    #: the association id that ended last (DisassociateAddress repeated with it succeeds:
    #: AWS calls the action idempotent)
    ended_association_id: str | None = None


@dataclass(frozen=True)
class Image(CloudRecord):
    KIND: ClassVar[str] = "image"
    PREFIX: ClassVar[str] = "ami"
    RESOURCE_TYPE: ClassVar[str] = "image"

    name: str = ""
    description: str | None = None
    state: str = "available"
    creation_time: float = 0.0
    architecture: str = "x86_64"
    virtualization_type: str = "hvm"
    root_device_name: str = "/dev/xvda"
    root_device_type: str = "ebs"
    #: botocore BlockDeviceMapping dicts: ``{"DeviceName", "Ebs": {"SnapshotId", "VolumeSize",
    #: "VolumeType", "DeleteOnTermination", "Iops", "Throughput", "Encrypted"}}``,
    #: ``{"DeviceName", "VirtualName"}`` or ``{"DeviceName", "NoDevice": ""}``
    block_device_mappings: list[dict[str, Any]] = field(default_factory=list)
    ena_support: bool = True
    sriov_net_support: str | None = None
    boot_mode: str | None = None
    imds_support: str | None = None
    #: ``v2.0`` (NitroTPM, uefi images only) and the base64 UEFI variable store, as given
    tpm_support: str | None = None
    uefi_data: str | None = None
    public: bool = False
    launch_users: list[str] = field(default_factory=list)
    source_instance_id: str | None = None
    source_image_id: str | None = None
    source_region: str | None = None
    deregister_time: float | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Instance(CloudRecord):
    KIND: ClassVar[str] = "instance"
    PREFIX: ClassVar[str] = "i"
    RESOURCE_TYPE: ClassVar[str] = "instance"

    reservation_id: str = ""
    image_id: str = ""
    instance_type: str = "t2.micro"
    key_name: str | None = None
    #: stored state and when it was entered; transient states (pending, stopping,
    #: shutting-down) mature on the clock (see ``instances.py``)
    state: str = "pending"
    state_time: float = 0.0
    state_reason: dict[str, str] | None = None
    state_transition_reason: str = ""
    launch_time: float = 0.0
    availability_zone: str = ""
    subnet_id: str = ""
    vpc_id: str = ""
    private_ip: str = ""
    #: network interface ids, primary first
    network_interface_ids: list[str] = field(default_factory=list)
    security_group_ids: list[str] = field(default_factory=list)
    root_device_name: str = "/dev/xvda"
    root_device_type: str = "ebs"
    #: ``{"device", "volume_id", "delete_on_termination", "attach_time"}`` per EBS device
    block_devices: list[dict[str, Any]] = field(default_factory=list)
    user_data: str | None = None          # base64, as the API carries it
    client_token: str | None = None
    ami_launch_index: int = 0
    architecture: str = "x86_64"
    virtualization_type: str = "hvm"
    disable_api_termination: bool = False
    disable_api_stop: bool = False
    instance_initiated_shutdown_behavior: str = "stop"
    ebs_optimized: bool = False
    monitoring: str = "disabled"
    tenancy: str = "default"
    tags: dict[str, str] = field(default_factory=dict)


#: every kind, for tags, reset and the consistency check
KINDS: tuple[type[CloudRecord], ...] = (KeyPair, Vpc, Subnet, SecurityGroup, NetworkInterface,
                                        Address, Image, Instance)
