"""Data Lifecycle Manager through boto3 against a real server on the simulated clock, the
clock route through plain HTTP, and ``serve --clock simulated=...`` as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from test_aws_support import Aws, aws, expect_error  # noqa: F401  (fixture)

ROLE = "arn:aws:iam::123456789012:role/AWSDataLifecycleManagerDefaultRole"
START = "2025-01-01T00:00:00Z"


@pytest.fixture
def sim(tmp_path: Any) -> Any:
    a = Aws(str(tmp_path / "sim-store"), simulated=START)
    try:
        yield a
    finally:
        a.stop()


def details(**sched: Any) -> dict[str, Any]:
    s = {"Name": "twice daily", "CreateRule": {"Interval": 12, "IntervalUnit": "HOURS",
                                               "Times": ["00:00"]},
         "RetainRule": {"Count": 3}}
    s.update(sched)
    return {"PolicyType": "EBS_SNAPSHOT_MANAGEMENT", "ResourceTypes": ["VOLUME"],
            "TargetTags": [{"Key": "backup", "Value": "yes"}], "Schedules": [s]}


def tagged_volume(aws: Aws) -> str:
    return str(aws.ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "backup", "Value": "yes"}]}])["VolumeId"])


def dlm_snapshots(aws: Aws, pid: str) -> list[dict[str, Any]]:
    snaps = aws.ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:aws:dlm:lifecycle-policy-id", "Values": [pid]}])["Snapshots"]
    return sorted(snaps, key=lambda s: s["StartTime"])


def test_policy_lifecycle_through_boto3(sim: Aws) -> None:
    vid = tagged_volume(sim)
    pid = sim.dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="twice a day",
                                          State="ENABLED", PolicyDetails=details(),
                                          Tags={"team": "db"})["PolicyId"]
    pol = sim.dlm.get_lifecycle_policy(PolicyId=pid)["Policy"]
    assert pol["State"] == "ENABLED" and pol["Tags"] == {"team": "db"}
    assert pol["PolicyDetails"]["Schedules"][0]["RetainRule"] == {"Count": 3}
    assert pol["PolicyArn"] == f"arn:aws:dlm:us-east-1:123456789012:policy/{pid}"
    listed = sim.dlm.get_lifecycle_policies(TargetTags=["backup=yes"], ResourceTypes=["VOLUME"])
    assert [p["PolicyId"] for p in listed["Policies"]] == [pid]
    assert sim.dlm.get_lifecycle_policies(TargetTags=["backup=no"])["Policies"] == []
    datas = []
    for _ in range(6):
        data = os.urandom(4096)
        sim.write(vid, 0, data)
        datas.append(data)
        status, doc = sim.clock(advance=12 * 3600)
        assert status == 200
    assert doc["now"] == "2025-01-04T00:00:00.000Z"
    snaps = dlm_snapshots(sim, pid)
    assert len(snaps) == 3
    for s in snaps:
        tags = {t["Key"]: t["Value"] for t in s["Tags"]}
        assert tags["aws:dlm:lifecycle-schedule-name"] == "twice daily"
    for s, data in zip(snaps, datas[-3:], strict=True):
        with sim.engine.open_snapshot(s["SnapshotId"]) as dev:
            assert dev.pread(4096, 0) == data
    # restart mid-way: the clock and the runs come back; nothing is repeated
    sim.restart()
    assert sim.clock()[1]["now"] == "2025-01-04T00:00:00.000Z"
    sim.clock(advance=0)
    assert len(sim.cloud.dlm.made(pid)) == 3
    sim.dlm.update_lifecycle_policy(PolicyId=pid, State="DISABLED")
    sim.clock(advance=3 * 86400)
    assert [s["SnapshotId"] for s in dlm_snapshots(sim, pid)] == [s["SnapshotId"] for s in snaps]
    assert sim.dlm.get_lifecycle_policies(State="DISABLED")["Policies"][0]["PolicyId"] == pid
    # tags by ARN
    arn = pol["PolicyArn"]
    sim.dlm.tag_resource(ResourceArn=arn, Tags={"env": "prod"})
    sim.dlm.untag_resource(ResourceArn=arn, TagKeys=["team"])
    assert sim.dlm.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"env": "prod"}
    sim.dlm.delete_lifecycle_policy(PolicyId=pid)
    expect_error(sim.dlm.get_lifecycle_policy, "ResourceNotFoundException", 404, PolicyId=pid)
    assert len(dlm_snapshots(sim, pid)) == 3  # what it made stays
    assert sim.engine.fsck().ok


def test_errors_refuse_and_change_nothing(sim: Aws) -> None:
    bad = details(CreateRule={"Interval": 5, "IntervalUnit": "HOURS"})
    with sim.unchanged():
        expect_error(sim.dlm.create_lifecycle_policy, "InvalidRequestException", 400,
                     ExecutionRoleArn=ROLE, Description="bad", State="ENABLED",
                     PolicyDetails=bad)
        expect_error(sim.dlm.create_lifecycle_policy, "InvalidRequestException", 400,
                     ExecutionRoleArn=ROLE, Description="bad!chars", State="ENABLED",
                     PolicyDetails=details())
        expect_error(sim.dlm.get_lifecycle_policy, "ResourceNotFoundException", 404,
                     PolicyId="policy-0123456789abcdef0")
        expect_error(sim.dlm.delete_lifecycle_policy, "ResourceNotFoundException", 404,
                     PolicyId="policy-0123456789abcdef0")
        expect_error(sim.dlm.update_lifecycle_policy, "ResourceNotFoundException", 404,
                     PolicyId="policy-0123456789abcdef0", State="ENABLED")
    pid = sim.dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="ok",
                                          State="ENABLED", PolicyDetails=details())["PolicyId"]
    with sim.unchanged():
        instance = dict(details(), ResourceTypes=["INSTANCE"])
        expect_error(sim.dlm.update_lifecycle_policy, "InvalidRequestException", 400,
                     PolicyId=pid, PolicyDetails=instance)
    sim.cloud.dlm.policy_quota = 1
    expect_error(sim.dlm.create_lifecycle_policy, "LimitExceededException", 429,
                 ExecutionRoleArn=ROLE, Description="two", State="ENABLED",
                 PolicyDetails=details())


def test_erroring_policy_reports_error(sim: Aws) -> None:
    vid = tagged_volume(sim)
    sim.ec2.create_tags(Resources=[vid], Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(49)])
    pid = sim.dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="copies tags",
                                          State="ENABLED",
                                          PolicyDetails=details(CopyTags=True))["PolicyId"]
    sim.clock(set="2025-01-01T12:00:00Z")
    pol = sim.dlm.get_lifecycle_policy(PolicyId=pid)["Policy"]
    assert pol["State"] == "ERROR" and vid in pol["StatusMessage"]
    assert sim.dlm.get_lifecycle_policies(State="ERROR")["Policies"][0]["PolicyId"] == pid


def test_clock_route(sim: Aws, aws: Aws) -> None:
    assert sim.clock() == (200, {"now": "2025-01-01T00:00:00.000Z"})
    assert sim.clock(set="2025-02-01T00:00:00Z") == (200, {"now": "2025-02-01T00:00:00.000Z"})
    assert sim.clock(set="2025-01-01T00:00:00Z")[0] == 400  # never back
    assert sim.clock(advance="soon")[0] == 400
    assert sim.clock(advance=1, set="2025-03-01T00:00:00Z")[0] == 400
    assert aws.clock(advance=60)[0] == 404  # the wall clock is not moved by anyone


def test_serve_clock_simulated_subprocess(tmp_path: Any) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-m", "ebsengine.cli", "--store", str(tmp_path / "s"),
                             "serve", "--nbd-socket", "none", "--nbd-port", "0",
                             "--http-port", str(port), "--clock", "simulated=" + START],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        url = f"http://127.0.0.1:{port}/_ebsengine/clock"
        for _ in range(200):
            try:
                urllib.request.urlopen(url)
                break
            except OSError:
                time.sleep(0.05)
        req = urllib.request.Request(url, data=json.dumps({"advance": 3600}).encode(),
                                     method="POST")
        with urllib.request.urlopen(req) as resp:
            assert json.loads(resp.read()) == {"now": "2025-01-01T01:00:00.000Z"}
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"stopped" in out


def _raw_clock(aws: Aws, body: bytes) -> int:
    req = urllib.request.Request(aws.url + "/_ebsengine/clock", data=body, method="POST")
    try:
        with urllib.request.urlopen(req) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_clock_route_refuses_moves_past_the_calendar(sim: Aws) -> None:
    """An advance too large for a timestamp is a 400 that changes nothing (it was a 500, or
    the clock was stored at 1e300 and every later read of it failed)."""
    with sim.unchanged():
        assert _raw_clock(sim, b'{"advance": 1e300}') == 400
        assert _raw_clock(sim, b'{"advance": ' + b"9" * 400 + b"}") == 400
        assert _raw_clock(sim, b'{"set": "10000-01-01T00:00:00Z"}') == 400
    assert sim.clock() == (200, {"now": "2025-01-01T00:00:00.000Z"})
    sim.restart()
    assert sim.clock() == (200, {"now": "2025-01-01T00:00:00.000Z"})


def test_policy_tags_by_arn_are_scoped_to_the_endpoints_region(sim: Aws) -> None:
    """A policy of us-east-1 is not found through us-west-2's endpoint, by ARN either."""
    from test_aws_support import client

    pid = sim.dlm.create_lifecycle_policy(ExecutionRoleArn=ROLE, Description="east",
                                          State="ENABLED", PolicyDetails=details(),
                                          Tags={"a": "b"})["PolicyId"]
    arn = sim.dlm.get_lifecycle_policy(PolicyId=pid)["Policy"]["PolicyArn"]
    west = client("dlm", sim.url, "us-west-2")
    with sim.unchanged():
        expect_error(west.tag_resource, "ResourceNotFoundException", 404, ResourceArn=arn,
                     Tags={"c": "d"})
        expect_error(west.untag_resource, "ResourceNotFoundException", 404, ResourceArn=arn,
                     TagKeys=["a"])
        expect_error(west.list_tags_for_resource, "ResourceNotFoundException", 404,
                     ResourceArn=arn)
    assert sim.dlm.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"a": "b"}
