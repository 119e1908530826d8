"""Lifecycle policies through the library, on the simulated clock."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ebsengine import Engine, errors
from ebsengine.cloud import Cloud, Scope, SimulatedClock
from ebsengine.cloud.clock import parse_instant
from ebsengine.cloud.dlm import POLICY_TAG, SCHEDULE_TAG
from test_aws_support import put_image

SCOPE = Scope("us-east-1", "123456789012")
ROLE = "arn:aws:iam::123456789012:role/AWSDataLifecycleManagerDefaultRole"
T0 = parse_instant("2025-01-01T00:00:00Z")
HOUR = 3600
MIB = 1 << 20


def make(path: str = "memory://") -> tuple[Engine, Cloud, SimulatedClock]:
    eng = Engine(path)
    clock = SimulatedClock(T0)
    return eng, Cloud(eng, clock=clock), clock


def policy(cloud: Cloud, schedule: dict[str, Any], *, resource: str = "VOLUME",
           ptype: str = "EBS_SNAPSHOT_MANAGEMENT", state: str = "ENABLED",
           **details: Any) -> str:
    return cloud.dlm.create(SCOPE, execution_role_arn=ROLE, description="test policy",
                            state=state, policy_details={
                                "PolicyType": ptype, "ResourceTypes": [resource],
                                "TargetTags": [{"Key": "backup", "Value": "yes"}],
                                "Schedules": [dict({"Name": "sched"}, **schedule)], **details})


def every(hours: int, retain: dict[str, Any], at: str = "00:00") -> dict[str, Any]:
    return {"CreateRule": {"Interval": hours, "IntervalUnit": "HOURS", "Times": [at]},
            "RetainRule": retain}


def volume(eng: Engine, **tags: str) -> str:
    return eng.create_volume(1, "gp3", availability_zone="us-east-1a",
                             tags={"backup": "yes", **tags}).id


def write(eng: Engine, vid: str, data: bytes) -> None:
    with eng.open_volume(vid) as dev:
        dev.pwrite(data, 0)
        dev.flush()


def dlm_snaps(eng: Engine, pid: str) -> list[Any]:
    return sorted((s for s in eng.list_snapshots() if s.tags.get(POLICY_TAG) == pid),
                  key=lambda s: s.start_time)


def test_every_12_hours_retaining_3_keeps_the_3_newest_with_their_own_data() -> None:
    eng, cloud, clock = make()
    vid = volume(eng)
    other = eng.create_volume(1, "gp3", availability_zone="us-east-1a", tags={"backup": "no"})
    pid = policy(cloud, every(12, {"Count": 3}))
    written: list[bytes] = []
    for _ in range(8):  # four days: a run at every 00:00 and 12:00
        data = os.urandom(MIB)
        write(eng, vid, data)
        written.append(data)
        clock.advance(12 * HOUR)
    snaps = dlm_snaps(eng, pid)
    assert len(snaps) == 3
    assert [s.volume_id for s in snaps] == [vid] * 3
    assert not eng.list_snapshots(other.id)
    for snap, data in zip(snaps, written[-3:], strict=True):
        with eng.open_snapshot(snap.id) as dev:
            assert dev.pread(MIB, 0) == data
        assert snap.tags[SCHEDULE_TAG] == "sched"
    assert eng.fsck().ok
    # what is stored is what the 3 need: each recorded its own MiB, nothing of the 5 deleted
    stored = sum(eng.usage(s.id).stored_bytes for s in snaps)
    assert 3 * MIB <= stored < 3.3 * MIB
    assert eng.usage(snaps[0].id).unique_bytes == eng.usage(snaps[0].id).stored_bytes
    assert [r["created"] for r in cloud.dlm.made(pid)] == [T0 + h * HOUR for h in (72, 84, 96)]
    assert cloud.check() == []


def test_cron_schedule_and_age_retention() -> None:
    eng, cloud, clock = make()
    volume(eng)
    pid = policy(cloud, {"CreateRule": {"CronExpression": "cron(0 6 ? * MON *)"},
                         "RetainRule": {"Interval": 2, "IntervalUnit": "WEEKS"}})
    clock.set("2025-01-31T00:00:00Z")
    made = [r["created"] for r in cloud.dlm.made(pid)]
    # Mondays 6, 13, 20 and 27 January at 06:00; the first two are past 2 weeks
    assert made == [parse_instant("2025-01-20T06:00:00Z"), parse_instant("2025-01-27T06:00:00Z")]
    assert len(dlm_snaps(eng, pid)) == 2
    assert eng.fsck().ok


def test_restart_neither_repeats_nor_backfills(tmp_path: Any) -> None:
    path = str(tmp_path / "store")
    eng, cloud, clock = make(path)
    volume(eng)
    pid = policy(cloud, every(6, {"Count": 100}))
    clock.advance(13 * HOUR)  # 06:00 and 12:00
    assert len(dlm_snaps(eng, pid)) == 2
    eng.close()
    eng, cloud, clock = make(path)
    assert clock() == T0 + 13 * HOUR  # the position came back
    clock.advance(0)
    assert len(dlm_snaps(eng, pid)) == 2  # nothing repeated
    clock.advance(5 * HOUR)  # 18:00
    assert [r["created"] for r in cloud.dlm.made(pid)] == [T0 + h * HOUR for h in (6, 12, 18)]
    eng.close()


def test_disabled_does_nothing_and_enabling_does_not_backfill() -> None:
    eng, cloud, clock = make()
    volume(eng)
    pid = policy(cloud, every(1, {"Count": 10}), state="DISABLED")
    clock.advance(5 * HOUR)
    assert dlm_snaps(eng, pid) == []
    cloud.dlm.update(SCOPE, pid, state="ENABLED")
    clock.advance(HOUR + 1)
    assert [r["created"] for r in cloud.dlm.made(pid)] == [T0 + 6 * HOUR]


def test_failing_target_puts_the_policy_in_error_and_a_good_run_clears_it() -> None:
    eng, cloud, clock = make()
    vid = volume(eng, **{f"k{i}": "v" for i in range(48)})  # 49 tags + DLM's 2 > 50
    pid = policy(cloud, dict(every(12, {"Count": 2}), CopyTags=True))
    clock.advance(12 * HOUR)
    got = cloud.dlm.get(SCOPE, pid)
    assert got["State"] == "ERROR" and vid in got["StatusMessage"]
    assert dlm_snaps(eng, pid) == []
    eng.delete_tags(vid, {"k0": None})
    clock.advance(12 * HOUR)
    assert cloud.dlm.get(SCOPE, pid)["State"] == "ENABLED"
    assert len(dlm_snaps(eng, pid)) == 1


def test_only_what_the_policy_made_is_deleted() -> None:
    eng, cloud, clock = make()
    vid = volume(eng)
    pid = policy(cloud, every(12, {"Count": 1}))
    clock.advance(12 * HOUR)
    (mine,) = dlm_snaps(eng, pid)
    # a user's snapshot carrying the same tags (copied) is not the policy's
    with eng.transaction(flush=[vid]) as tx:
        fake = eng.create_snapshot(vid, tags={"backup": "yes"}, tx=tx)
    clock.advance(24 * HOUR)
    ids = {s.id for s in eng.list_snapshots()}
    assert fake.id in ids and mine.id not in ids
    assert len(dlm_snaps(eng, pid)) == 1


def test_users_cannot_set_dlm_tags_but_can_retag_dlm_snapshots() -> None:
    eng, cloud, clock = make()
    vid = volume(eng)
    pid = policy(cloud, every(12, {"Count": 1}))
    with pytest.raises(errors.InvalidTag):
        eng.set_tags(vid, {POLICY_TAG: pid})
    clock.advance(12 * HOUR)
    (snap,) = dlm_snaps(eng, pid)
    eng.set_tags(snap.id, {"note": "kept"})
    assert eng.get_snapshot(snap.id).tags[POLICY_TAG] == pid


def launch(cloud: Cloud, **tags: str) -> Any:
    image = put_image(cloud, b"boot", 0)
    (inst,) = cloud.instances.run(SCOPE, image_id=image, instance_type="t3.micro",
                                  tag_specifications=[{"ResourceType": "instance", "Tags": [
                                      {"Key": k, "Value": v} for k, v in tags.items()]}])
    return inst


def test_instance_policy_makes_one_set_per_instance() -> None:
    eng, cloud, clock = make()
    inst = launch(cloud, backup="yes", Name="db")
    zone = eng.get_volume(inst.block_devices[0]["volume_id"]).availability_zone
    data = eng.create_volume(1, "gp3", availability_zone=zone)
    cloud.instances.attach_volume(SCOPE, data.id, inst.id, "/dev/sdf")
    skip = eng.create_volume(1, "gp3", availability_zone=data.availability_zone,
                             tags={"scratch": "1"})
    cloud.instances.attach_volume(SCOPE, skip.id, inst.id, "/dev/sdg")
    pid = policy(cloud, dict(every(24, {"Count": 2}), CopyTags=True,
                             VariableTags=[{"Key": "from", "Value": "$(instance-id)"}]),
                 resource="INSTANCE",
                 Parameters={"ExcludeBootVolume": True,
                             "ExcludeDataVolumeTags": [{"Key": "scratch", "Value": "1"}]})
    clock.advance(3 * 24 * HOUR)
    sets = cloud.dlm.made(pid)
    assert len(sets) == 2 and all(r["kind"] == "set" and r["resource"] == inst.id for r in sets)
    snaps = dlm_snaps(eng, pid)
    assert len(snaps) == 2 and {s.volume_id for s in snaps} == {data.id}
    assert snaps[0].tags["from"] == inst.id and snaps[0].tags["Name"] == "db"
    assert eng.fsck().ok and cloud.check() == []


def test_image_policy_creates_and_retires_amis() -> None:
    eng, cloud, clock = make()
    inst = launch(cloud, backup="yes")
    pid = policy(cloud, every(24, {"Count": 2}), resource="INSTANCE", ptype="IMAGE_MANAGEMENT",
                 Parameters={"NoReboot": True})
    clock.advance(4 * 24 * HOUR)
    recs = cloud.dlm.made(pid)
    assert len(recs) == 2 and all(r["kind"] == "image" for r in recs)
    live = [i for i in cloud.image_table.all() if i.tags.get(POLICY_TAG) == pid and
            i.state == "available"]
    assert {i.id for i in live} == {r["image"] for r in recs}
    assert all(i.source_instance_id == inst.id for i in live)
    # the retired AMIs' snapshots are gone; the kept ones' remain
    kept = {s for r in recs for s in r["snapshots"]}
    assert {s.id for s in dlm_snaps(eng, pid)} == kept
    assert eng.fsck().ok and cloud.check() == []


def test_validation_refuses_and_changes_nothing() -> None:
    _eng, cloud, _ = make()
    cases = [
        every(5, {"Count": 1}),
        every(12, {"Count": 0}),
        every(12, {"Count": 1, "Interval": 1, "IntervalUnit": "DAYS"}),
        {"CreateRule": {"CronExpression": "cron(0/30 * * * ? *)"}, "RetainRule": {"Count": 1}},
        dict(every(12, {"Count": 1}), TagsToAdd=[{"Key": "aws:x", "Value": "1"}]),
        dict(every(12, {"Count": 1}), VariableTags=[{"Key": "a", "Value": "$(instance-id)"}]),
    ]
    for sched in cases:
        with pytest.raises(errors.Ec2Error) as info:
            policy(cloud, sched)
        assert info.value.code == "InvalidRequestException"
    with pytest.raises(errors.Ec2Error):
        policy(cloud, every(12, {"Count": 1}), resource="VOLUME", ptype="IMAGE_MANAGEMENT")
    assert cloud.dlm.describe(SCOPE) == []
    with pytest.raises(errors.Ec2Error) as info:
        cloud.dlm.get(SCOPE, "policy-0123456789abcdef0")
    assert info.value.code == "ResourceNotFoundException"


def test_policy_quota() -> None:
    _eng, cloud, _ = make()
    cloud.dlm.policy_quota = 2
    policy(cloud, every(12, {"Count": 1}))
    policy(cloud, every(12, {"Count": 1}))
    with pytest.raises(errors.Ec2Error) as info:
        policy(cloud, every(12, {"Count": 1}))
    assert info.value.code == "LimitExceededException"


def test_the_wall_clock_thread_runs_due_work_by_itself() -> None:
    """serve's background runner: with a wall-style clock (here offset so that a run is due
    at once), the thread takes the snapshot without anyone advancing anything."""
    import time

    from ebsengine.cloud.clock import SchedulerThread

    offset = [0.0]
    eng = Engine("memory://")
    cloud = Cloud(eng, clock=lambda: time.time() + offset[0])
    vid = volume(eng)
    pid = policy(cloud, every(1, {"Count": 2}))
    runner = SchedulerThread(cloud.scheduler, wake=0.05).start()
    try:
        offset[0] = 2 * HOUR + 60  # the next 1-hour slot is now in the past
        deadline = time.monotonic() + 20
        while not dlm_snaps(eng, pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.stop()
    snaps = dlm_snaps(eng, pid)
    assert [s.volume_id for s in snaps] == [vid]
    eng.close()


def test_an_expired_snapshot_an_ami_uses_goes_once_the_ami_is_deregistered() -> None:
    """Age retention keeps a snapshot an AMI uses (DeleteSnapshot would refuse) and looks
    again at the next run: once the AMI is gone, the snapshot goes too."""
    eng, cloud, clock = make()
    volume(eng)
    pid = policy(cloud, every(24, {"Interval": 1, "IntervalUnit": "DAYS"}))
    clock.advance(24 * HOUR)  # the first snapshot, at day 1
    (first,) = dlm_snaps(eng, pid)
    image = cloud.images.register(
        SCOPE, name="from-dlm", root_device_name="/dev/xvda", architecture="x86_64",
        virtualization_type="hvm", block_device_mappings=[{"DeviceName": "/dev/xvda", "Ebs": {
            "SnapshotId": first.id, "VolumeSize": 1, "VolumeType": "gp3"}}])
    clock.advance(2 * 24 * HOUR)  # the first one expired at day 2: kept, the AMI uses it
    assert first.id in {s.id for s in dlm_snaps(eng, pid)}
    cloud.images.deregister(SCOPE, image.id)
    clock.advance(24 * HOUR)
    assert first.id not in {s.id for s in dlm_snaps(eng, pid)}
    assert first.id not in {s for r in cloud.dlm.made(pid) for s in r["snapshots"]}
    assert eng.fsck().ok and cloud.check() == []


def test_count_retention_counts_only_the_snapshots_still_there() -> None:
    """Retain 3: the user deletes the two newest; the next run must keep the oldest (3 are
    allowed, 2 remain), as AWS counts the policy's snapshots that exist. Records of deleted
    snapshots counted, so the run deleted a backup it should have kept."""
    eng, cloud, clock = make()
    volume(eng)
    pid = policy(cloud, every(12, {"Count": 3}))
    clock.advance(36 * HOUR)
    oldest, *newest = dlm_snaps(eng, pid)
    assert len(newest) == 2
    for s in newest:
        eng.delete_snapshot(s.id)
    clock.advance(12 * HOUR)
    left = dlm_snaps(eng, pid)
    assert len(left) == 2 and left[0].id == oldest.id
    assert [r["snapshots"] for r in cloud.dlm.made(pid)] == [[s.id] for s in left]
    assert cloud.check() == []
