"""A scripted month of usage on a controlled clock, driven through boto3, and its bill
worked out by hand from the price table (shared by the ce and CLI cost tests)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ebsengine.cloud.pricing import Prices
from test_aws_support import Aws

T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
H = 3600.0
P = Prices.load()
MONTH = P.month_seconds


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def at(self, hours: float) -> None:
        assert T0 + hours * H >= self.now
        self.now = T0 + hours * H


def lifecycle(aws: Aws, clock: Clock) -> dict[str, str]:
    """Hours after 2025-01-01 00:00Z: 0 launch a t3.micro (8 GiB gp3 root, auto public IP),
    create a 100 GiB gp2 volume, allocate an Elastic IP (idle); 2 associate the EIP with the
    instance (the auto IP goes); 4 disassociate (a new auto IP); 10 stop; 58 (2 days later)
    start; 59 terminate (root deleted), release the EIP; 120 (day 6) grow the data volume to
    200 GiB; 360 (day 16) delete it."""
    ec2 = aws.ec2
    clock.at(0)
    ami = aws.image(size=8)
    iid = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1,
                            InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="gp2")["VolumeId"]
    alloc = ec2.allocate_address(Domain="vpc")["AllocationId"]
    clock.at(2)
    assoc = ec2.associate_address(AllocationId=alloc, InstanceId=iid)["AssociationId"]
    clock.at(4)
    ec2.disassociate_address(AssociationId=assoc)
    clock.at(10)
    ec2.stop_instances(InstanceIds=[iid])
    clock.at(58)
    ec2.start_instances(InstanceIds=[iid])
    clock.at(59)
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.release_address(AllocationId=alloc)
    clock.at(120)
    ec2.modify_volume(VolumeId=vid, Size=200)
    clock.at(360)
    ec2.delete_volume(VolumeId=vid)
    return {"instance": iid, "volume": vid, "eip": alloc}


def expected() -> dict[str, float]:
    """The bill of :func:`lifecycle` for January 2025, by usage type, by hand."""
    run_hours = 10 + 1                              # 0-10 h and 58-59 h running
    root_gib_seconds = 8 * 59 * H                   # the root volume lives 0-59 h
    data_gib_seconds = 100 * 120 * H + 200 * (360 - 120) * H
    eni_hours = (2 - 0) + (10 - 4) + (59 - 58)      # auto-assigned IP while running, no EIP
    eip_in_use = 4 - 2
    eip_idle = (2 - 0) + (59 - 4)
    return {
        "BoxUsage:t3.micro": run_hours * P.instance_hour["t3.micro"],
        "EBS:VolumeUsage.gp3": root_gib_seconds / MONTH * P.volume_gib_month["gp3"],
        "EBS:VolumeUsage.gp2": data_gib_seconds / MONTH * P.volume_gib_month["gp2"],
        "PublicIPv4:InUseAddress": (eni_hours + eip_in_use) * P.public_ipv4_hour,
        "PublicIPv4:IdleAddress": eip_idle * P.public_ipv4_hour,
    }


def cents(x: Any) -> Decimal:
    """``x`` to the cent, half up (float noise below a millionth of a dollar dropped first)."""
    return Decimal(str(round(float(x), 6))).quantize(Decimal("0.01"), ROUND_HALF_UP)
