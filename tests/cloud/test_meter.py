"""The usage ledger as a library (``Cloud(Engine("memory://"), clock=...)``): what is billed
while, on the cloud's clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from ebsengine import Engine
from ebsengine.cloud import Cloud, CloudConfig, Scope
from ebsengine.cloud.meter import NS_LEDGER
from ebsengine.cloud.pricing import Prices
from ebsengine.storage.memory import forget
from test_aws_support import put_image

SCOPE = Scope()
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
P = Prices.load()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(request: Any) -> Iterator[tuple[Cloud, Clock]]:
    name = f"meter-{id(request)}"
    clock = Clock()
    with Engine(f"memory://{name}") as eng:
        yield Cloud(eng, clock=clock, config=CloudConfig(boot_seconds=30)), clock
    forget(name)


def _usage(cloud: Cloud, base: str, until: float) -> float:
    cloud.meter.reconcile()
    return sum(ln.quantity for ln in cloud.meter.lines(T0, until)
               if ln.usage_type == base)


def test_running_is_billed_after_boot_with_a_minute_minimum(env: tuple[Cloud, Clock]) -> None:
    cloud, clock = env
    ami = put_image(cloud)
    (inst,) = cloud.instances.run(SCOPE, image_id=ami, instance_type="m5.large")
    clock.now += 30 + 10          # boots in 30 s, runs 10 s
    cloud.instances.stop(SCOPE, [inst.id])
    clock.now += 3600
    cloud.instances.start(SCOPE, [inst.id])
    clock.now += 30 + 7200        # boots, runs two hours
    cloud.instances.terminate(SCOPE, [inst.id])
    hours = _usage(cloud, "BoxUsage:m5.large", clock.now + 1)
    assert hours == pytest.approx((60 + 7200) / 3600)   # 10 s billed as the 60 s minimum
    cost = sum(ln.cost for ln in cloud.meter.lines(T0, clock.now + 1)
               if ln.usage_type == "BoxUsage:m5.large")
    assert cost == pytest.approx((60 + 7200) / 3600 * P.instance_hour["m5.large"])


def test_terminated_before_it_booted_is_not_billed(env: tuple[Cloud, Clock]) -> None:
    cloud, clock = env
    ami = put_image(cloud)
    (inst,) = cloud.instances.run(SCOPE, image_id=ami, instance_type="c5.large")
    clock.now += 10               # still pending (boot takes 30 s)
    cloud.instances.terminate(SCOPE, [inst.id])
    clock.now += 3600
    assert _usage(cloud, "BoxUsage:c5.large", clock.now) == 0


def test_volumes_are_billed_whatever_the_instance_state(env: tuple[Cloud, Clock]) -> None:
    cloud, clock = env
    ami = put_image(cloud, size=20)
    (inst,) = cloud.instances.run(SCOPE, image_id=ami, instance_type="r5.large")
    clock.now += 3600
    cloud.instances.stop(SCOPE, [inst.id])
    clock.now += 5 * 3600         # stopped: the root volume is still billed
    cloud.instances.terminate(SCOPE, [inst.id])
    clock.now += 3600
    gib_months = _usage(cloud, "EBS:VolumeUsage.gp3", clock.now)
    assert gib_months == pytest.approx(20 * 6 * 3600 / P.month_seconds)


def test_library_changes_are_caught_by_reconcile(env: tuple[Cloud, Clock]) -> None:
    cloud, clock = env
    vol = cloud.engine.create_volume(125, "st1", availability_zone="us-east-1a")
    cloud.meter.reconcile()       # first seen here (the library path has no hook)
    clock.now += 86400
    cloud.engine.delete_volume(vol.id)
    cloud.meter.reconcile()       # gone: billed up to this reconcile
    clock.now += 86400
    assert _usage(cloud, "EBS:VolumeUsage.st1", clock.now) == \
        pytest.approx(125 * 86400 / P.month_seconds)


def test_snapshot_bytes_are_sampled_after_the_unit(env: tuple[Cloud, Clock]) -> None:
    cloud, clock = env
    ami = put_image(cloud)
    (inst,) = cloud.instances.run(SCOPE, image_id=ami, instance_type="t2.micro")
    root = inst.block_devices[0]["volume_id"]
    with cloud.engine.open_volume(root) as dev:
        dev.pwrite(os.urandom(1 << 20), 0)
        dev.flush()
    (snap,) = cloud.instances.create_snapshots(SCOPE, inst.id)
    stored = cloud.engine.usage(snap.id).stored_bytes
    assert stored > 0
    doc = cloud.engine.service_get(NS_LEDGER, f"snapshot:{snap.id}")
    assert doc["entries"] == [[T0, {"bytes": stored}]]   # dated at creation, filled after
    clock.now += 10 * 86400
    assert _usage(cloud, "EBS:SnapshotUsage", clock.now) == \
        pytest.approx(stored / 2**30 * 10 * 86400 / P.month_seconds)


def test_reset_wipes_the_ledger(env: tuple[Cloud, Clock]) -> None:
    cloud, _clock = env
    ami = put_image(cloud)
    cloud.instances.run(SCOPE, image_id=ami, instance_type="t3.micro")
    cloud.eips.allocate(SCOPE)
    assert cloud.meter.records()
    cloud.reset()
    assert cloud.meter.records() == []


def _metered_then_refused(cloud: Cloud, vid: str) -> None:
    try:
        with cloud.engine.transaction(flush=[vid]) as tx:
            snap = cloud.engine.create_snapshot(vid, tx=tx)
            cloud.meter.snapshot(tx, snap.id)
            raise RuntimeError("refused after metering")
    except RuntimeError:
        pass


def test_an_aborted_unit_leaves_nothing_to_sample_behind(env: tuple[Cloud, Clock]) -> None:
    """What to sample after a unit was kept by ``id(tx)`` and dropped only by the unit's
    after-commit: every unit that metered a snapshot and then aborted left its entry for
    good (a long-running server's memory grew with each), and a later unit whose
    Transaction got the same id found it there, so registered no sampling of its own."""
    import gc

    cloud, _ = env
    eng = cloud.engine
    vid = eng.create_volume(1, "gp3", availability_zone="us-east-1a").id
    for _ in range(3):
        _metered_then_refused(cloud, vid)
    gc.collect()
    assert len(cloud.meter._sampling) == 0
    with eng.open_volume(vid) as dev:
        dev.pwrite(os.urandom(1 << 20), 0)
        dev.flush()
    with eng.transaction(flush=[vid]) as tx:
        snap = eng.create_snapshot(vid, tx=tx)
        cloud.meter.snapshot(tx, snap.id)
    doc = eng.service_get(NS_LEDGER, f"snapshot:{snap.id}")
    assert doc["entries"][-1][1] == {"bytes": eng.stored_bytes(snap.id)} != {"bytes": 0}
