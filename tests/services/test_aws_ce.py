"""Cost Explorer's GetCostAndUsage through boto3's ``ce`` client against a server on a fake
clock: a scripted month of usage gives the bill a hand calculation gives, to the cent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from cost_support import MONTH, Clock, P, cents, expected, lifecycle
from test_aws_support import Aws, client, expect_error, put_block

GROUP_USAGE = [{"Type": "DIMENSION", "Key": "USAGE_TYPE"}]


@pytest.fixture
def env(tmp_path: Any) -> Iterator[tuple[Aws, Clock]]:
    clock = Clock()
    a = Aws(str(tmp_path / "store"), clock=clock)
    try:
        yield a, clock
    finally:
        a.stop()


def _ce(aws: Aws) -> Any:
    return client("ce", aws.url)


def _by_key(result: dict[str, Any], metric: str = "UnblendedCost") -> dict[str, float]:
    return {g["Keys"][0]: float(g["Metrics"][metric]["Amount"]) for g in result["Groups"]}


def test_a_scripted_month_costs_what_the_price_table_says(env: tuple[Aws, Clock]) -> None:
    aws, clock = env
    lifecycle(aws, clock)
    aws.restart()  # the ledger is in the store, not in the server
    ce = _ce(aws)
    out = ce.get_cost_and_usage(TimePeriod={"Start": "2025-01-01", "End": "2025-02-01"},
                                Granularity="MONTHLY", Metrics=["UnblendedCost", "UsageQuantity"],
                                GroupBy=GROUP_USAGE)
    (month,) = out["ResultsByTime"]
    assert month["TimePeriod"] == {"Start": "2025-01-01", "End": "2025-02-01"}
    got = _by_key(month)
    want = expected()
    assert {k: cents(v) for k, v in got.items()} == {k: cents(v) for k, v in want.items()}
    qty = {g["Keys"][0]: g["Metrics"]["UsageQuantity"] for g in month["Groups"]}
    assert qty["BoxUsage:t3.micro"] == {"Amount": "11", "Unit": "Hrs"}
    assert qty["EBS:VolumeUsage.gp2"]["Unit"] == "GB-Mo"

    total = ce.get_cost_and_usage(TimePeriod={"Start": "2025-01-01", "End": "2025-02-01"},
                                  Granularity="MONTHLY", Metrics=["UnblendedCost"])
    amount = total["ResultsByTime"][0]["Total"]["UnblendedCost"]
    assert amount["Unit"] == "USD" and cents(amount["Amount"]) == cents(sum(want.values()))

    services = _by_key(ce.get_cost_and_usage(
        TimePeriod={"Start": "2025-01-01", "End": "2025-02-01"}, Granularity="MONTHLY",
        Metrics=["UnblendedCost"],
        GroupBy=[{"Type": "DIMENSION", "Key": "SERVICE"}])["ResultsByTime"][0])
    assert cents(services["Amazon Elastic Compute Cloud - Compute"]) == \
        cents(want["BoxUsage:t3.micro"])
    assert cents(services["EC2 - Other"]) == \
        cents(want["EBS:VolumeUsage.gp3"] + want["EBS:VolumeUsage.gp2"])
    assert cents(services["Amazon Virtual Private Cloud"]) == \
        cents(want["PublicIPv4:InUseAddress"] + want["PublicIPv4:IdleAddress"])


def test_daily_buckets_split_the_runs_by_day(env: tuple[Aws, Clock]) -> None:
    aws, clock = env
    lifecycle(aws, clock)
    out = _ce(aws).get_cost_and_usage(
        TimePeriod={"Start": "2025-01-01", "End": "2025-01-04"}, Granularity="DAILY",
        Metrics=["UsageQuantity"], GroupBy=GROUP_USAGE,
        Filter={"Dimensions": {"Key": "USAGE_TYPE", "Values": ["BoxUsage:t3.micro"]}})
    days = [(r["TimePeriod"]["Start"], _by_key(r, "UsageQuantity")) for r in out["ResultsByTime"]]
    # running 0-10 h on the 1st, stopped all of the 2nd, running 58-59 h on the 3rd
    assert days == [("2025-01-01", {"BoxUsage:t3.micro": 10.0}), ("2025-01-02", {}),
                    ("2025-01-03", {"BoxUsage:t3.micro": 1.0})]


def test_tags_group_and_filter(env: tuple[Aws, Clock]) -> None:
    aws, clock = env
    ec2 = aws.ec2
    spec = [{"ResourceType": "volume", "Tags": [{"Key": "team", "Value": "blue"}]}]
    ec2.create_volume(AvailabilityZone="us-east-1a", Size=30, VolumeType="gp3",
                      TagSpecifications=spec)
    ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, VolumeType="gp3")
    clock.at(24 * 30)
    ce = _ce(aws)
    period = {"Start": "2025-01-01", "End": "2025-02-01"}
    out = ce.get_cost_and_usage(TimePeriod=period, Granularity="MONTHLY",
                                Metrics=["UnblendedCost"],
                                GroupBy=[{"Type": "TAG", "Key": "team"}])
    got = {k: cents(v) for k, v in _by_key(out["ResultsByTime"][0]).items()}
    gp3 = P.volume_gib_month["gp3"]
    assert got == {"team$blue": cents(30 * gp3), "team$": cents(10 * gp3)}
    only = ce.get_cost_and_usage(TimePeriod=period, Granularity="MONTHLY",
                                 Metrics=["UnblendedCost"],
                                 Filter={"Tags": {"Key": "team", "Values": ["blue"]}})
    assert cents(only["ResultsByTime"][0]["Total"]["UnblendedCost"]["Amount"]) == \
        cents(30 * gp3)


def test_provisioned_performance_is_billed_above_the_baseline(env: tuple[Aws, Clock]) -> None:
    aws, clock = env
    ec2 = aws.ec2
    gp3 = ec2.create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="gp3",
                            Iops=4000, Throughput=250)["VolumeId"]
    io1 = ec2.create_volume(AvailabilityZone="us-east-1a", Size=50, VolumeType="io1",
                            Iops=1000)["VolumeId"]
    clock.at(24 * 10)
    ec2.delete_volume(VolumeId=gp3)
    ec2.delete_volume(VolumeId=io1)
    out = _ce(aws).get_cost_and_usage(TimePeriod={"Start": "2025-01-01", "End": "2025-02-01"},
                                      Granularity="MONTHLY", Metrics=["UnblendedCost"],
                                      GroupBy=GROUP_USAGE)
    got = {k: cents(v) for k, v in _by_key(out["ResultsByTime"][0]).items()}
    months = 10 * 24 * 3600 / MONTH
    assert got == {
        "EBS:VolumeUsage.gp3": cents(100 * months * P.volume_gib_month["gp3"]),
        "EBS:VolumeP-IOPS.gp3": cents((4000 - 3000) * months * P.gp3_iops_month),
        "EBS:VolumeP-Throughput.gp3": cents((250 - 125) * months * P.gp3_throughput_mibps_month),
        "EBS:VolumeUsage.piops": cents(50 * months * P.volume_gib_month["io1"]),
        "EBS:VolumeP-IOPS.piops": cents(1000 * months * P.piops_iops_month["io1"]),
    }


def test_snapshot_storage_and_direct_api_calls(env: tuple[Aws, Clock]) -> None:
    aws, clock = env
    snap = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    blocks = {i: os.urandom(524288) for i in range(3)}  # incompressible: 1.5 MiB stored
    for i, data in blocks.items():
        put_block(aws.ebs, snap, i, data)
    aws.ebs.complete_snapshot(SnapshotId=snap, ChangedBlocksCount=3)
    listed = aws.ebs.list_snapshot_blocks(SnapshotId=snap)["Blocks"]
    for b in listed[:2]:
        aws.ebs.get_snapshot_block(SnapshotId=snap, BlockIndex=b["BlockIndex"],
                                   BlockToken=b["BlockToken"])
    stored = aws.engine.usage(snap).stored_bytes
    assert stored > 0
    clock.at(24 * 15)
    aws.ec2.delete_snapshot(SnapshotId=snap)
    aws.restart()  # the in-memory call counters reach the store when the server stops
    out = _ce(aws).get_cost_and_usage(TimePeriod={"Start": "2025-01-01", "End": "2025-02-01"},
                                      Granularity="MONTHLY",
                                      Metrics=["UnblendedCost", "UsageQuantity"],
                                      GroupBy=GROUP_USAGE)
    month = out["ResultsByTime"][0]
    got = {k: cents(v) for k, v in _by_key(month).items()}
    qty = _by_key(month, "UsageQuantity")
    assert qty["EBS:directAPI.snapshot.Put"] == 3
    assert qty["EBS:directAPI.snapshot.Get"] == 2
    assert qty["EBS:directAPI.snapshot.List"] == 1
    snap_cost = stored / 2**30 * (15 * 24 * 3600 / MONTH) * P.snapshot_gib_month
    assert got["EBS:SnapshotUsage"] == cents(snap_cost)
    assert qty["EBS:SnapshotUsage"] == pytest.approx(stored / 2**30 * 15 * 24 * 3600 / MONTH,
                                                     rel=1e-6)
    total = sum(float(g["Metrics"]["UnblendedCost"]["Amount"]) for g in month["Groups"]
                if g["Keys"][0].startswith("EBS:directAPI"))
    assert total == pytest.approx(3 * P.direct_api_per_1000["Put"] / 1000 +
                                  2 * P.direct_api_per_1000["Get"] / 1000 +
                                  1 * P.direct_api_per_1000["List"] / 1000)


def test_bad_requests_are_validation_errors(env: tuple[Aws, Clock]) -> None:
    aws, _ = env
    ce = _ce(aws)
    expect_error(ce.get_cost_and_usage, "ValidationException", 400,
                 TimePeriod={"Start": "2025-01-03", "End": "2025-01-01"}, Granularity="DAILY",
                 Metrics=["UnblendedCost"])
    expect_error(ce.get_cost_and_usage, "ValidationException", 400,
                 TimePeriod={"Start": "2025-01-01", "End": "2025-01-03"}, Granularity="DAILY",
                 Metrics=["Nonsense"])
    expect_error(ce.get_cost_and_usage, "ValidationException", 400,
                 TimePeriod={"Start": "01/01/2025", "End": "2025-01-03"}, Granularity="DAILY",
                 Metrics=["UnblendedCost"])
    with aws.unchanged():
        expect_error(ce.get_cost_and_usage, "ValidationException", 400,
                     TimePeriod={"Start": "2025-01-01", "End": "2025-01-03"},
                     Granularity="DAILY", Metrics=["UnblendedCost"],
                     GroupBy=[{"Type": "DIMENSION", "Key": "AZ"}])


def test_hourly_granularity_takes_times(env: tuple[Aws, Clock]) -> None:
    aws, clock = env
    aws.ec2.create_volume(AvailabilityZone="us-east-1a", Size=720, VolumeType="gp2")
    clock.at(3)
    out = _ce(aws).get_cost_and_usage(
        TimePeriod={"Start": "2025-01-01T00:00:00Z", "End": "2025-01-01T02:00:00Z"},
        Granularity="HOURLY", Metrics=["UsageQuantity"])
    rows = [(r["TimePeriod"]["Start"], float(r["Total"]["UsageQuantity"]["Amount"]))
            for r in out["ResultsByTime"]]
    per_hour = 720 * 3600 / MONTH
    assert [r[0] for r in rows] == ["2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z"]
    assert [round(r[1], 6) for r in rows] == [round(per_hour, 6)] * 2


def test_a_deleted_snapshots_blocks_are_billed_to_its_successor_at_once(
        env: tuple[Aws, Clock]) -> None:
    """DeleteSnapshot merges what the next snapshot still needs into it: the ledger follows
    in the same moment (the meter samples that volume's snapshots when the delete commits),
    with no report in between."""
    aws, _clock = env
    vid = aws.volume(1)
    aws.write(vid, 0, os.urandom(1 << 20))
    first = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    aws.write(vid, 4 << 20, os.urandom(1 << 20))
    second = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]

    def billed(sid: str) -> Any:
        (doc,) = [d for d in aws.cloud.meter.records() if d["id"] == sid]
        return doc["entries"][-1][1]

    before = billed(second)["bytes"]
    assert before == aws.engine.usage(second).stored_bytes
    aws.ec2.delete_snapshot(SnapshotId=first)
    assert billed(first) is None
    after = billed(second)["bytes"]
    assert after == aws.engine.usage(second).stored_bytes > before  # the first MiB moved over


def test_refused_reports_do_not_reconcile_first(env: tuple[Aws, Clock]) -> None:
    """A report refused for its Granularity or its Filter writes nothing: the ledger's
    reconcile (and the flush of the in-memory direct API counters) comes after validation."""
    aws, _ = env
    snap = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(aws.ebs, snap, 0, os.urandom(524288))  # a counter held in memory
    ce = _ce(aws)
    period = {"Start": "2025-01-01", "End": "2025-01-03"}
    with aws.unchanged():
        expect_error(ce.get_cost_and_usage, "ValidationException", 400,
                     TimePeriod=period, Granularity="WEEKLY", Metrics=["UnblendedCost"])
        expect_error(ce.get_cost_and_usage, "ValidationException", 400,
                     TimePeriod=period, Granularity="DAILY", Metrics=["UnblendedCost"],
                     Filter={"Dimensions": {"Key": "AZ", "Values": ["us-east-1a"]}})
        expect_error(ce.get_cost_and_usage, "ValidationException", 400,
                     TimePeriod=period, Granularity="DAILY", Metrics=["UnblendedCost"],
                     Filter={"Or": [{"Tags": {"Key": "a", "Values": ["b"]}},
                                    {"CostCategories": {"Key": "c", "Values": ["d"]}}]})


def test_report_periods_are_bounded(env: tuple[Aws, Clock]) -> None:
    """HOURLY covers at most 14 days (as AWS), any report at most 10 years: a request for
    millions of buckets is refused before any work, and changes nothing."""
    aws, _clock = env
    ce = _ce(aws)
    with aws.unchanged():
        expect_error(ce.get_cost_and_usage, "ValidationException", 400,
                     TimePeriod={"Start": "2025-01-01T00:00:00Z", "End": "2025-01-16T00:00:00Z"},
                     Granularity="HOURLY", Metrics=["UnblendedCost"])
        expect_error(ce.get_cost_and_usage, "ValidationException", 400,
                     TimePeriod={"Start": "1900-01-01", "End": "2100-01-01"},
                     Granularity="DAILY", Metrics=["UnblendedCost"])
    ok = ce.get_cost_and_usage(TimePeriod={"Start": "2025-01-01T00:00:00Z",
                                           "End": "2025-01-15T00:00:00Z"},
                               Granularity="HOURLY", Metrics=["UnblendedCost"])
    assert len(ok["ResultsByTime"]) == 14 * 24
