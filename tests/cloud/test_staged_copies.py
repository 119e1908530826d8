"""RunInstances and CopyImage copies under a new data key, staged before their unit of work
(``Engine.staged_copy``): a request refused (or replayed) after its copies were staged leaves
the store exactly as it was (store_digest), as the same request without staging does, and a
launch stages no more copies than it can launch."""

from __future__ import annotations

import os
from typing import Any

import pytest
from test_instances import SCOPE, Clock, _raises, env, small_batches  # noqa: F401

from conftest import store_digest
from test_aws_support import put_image

ENC = [{"DeviceName": "/dev/xvda", "Ebs": {"Encrypted": True}}]


def _ready(cloud: Any) -> str:
    ami = put_image(cloud, os.urandom(6 * 65536), size=1)
    cloud.engine.kms.describe_key("alias/aws/ebs", SCOPE.region, SCOPE.account_id)
    return ami


def test_a_launch_refused_by_its_unit_after_staging_leaves_the_store_as_it_was(
        env: tuple[Any, Clock], small_batches: None) -> None:
    cloud, _ = env
    ami = _ready(cloud)
    before = store_digest(cloud.engine)
    _raises("InvalidKeyPair.NotFound", cloud.instances.run, SCOPE, image_id=ami,
            key_name="nope", max_count=2, block_device_mappings=ENC)
    assert store_digest(cloud.engine) == before


def test_a_launch_retried_with_its_client_token_leaves_the_store_as_it_was(
        env: tuple[Any, Clock], small_batches: None) -> None:
    cloud, _ = env
    ami = _ready(cloud)
    first = cloud.instances.run(SCOPE, image_id=ami, max_count=2, client_token="tok-1",
                                block_device_mappings=ENC)
    before = store_digest(cloud.engine)
    commits = cloud.engine._store.commit_id()
    again = cloud.instances.run(SCOPE, image_id=ami, max_count=2, client_token="tok-1",
                                block_device_mappings=ENC)
    assert [i.id for i in again] == [i.id for i in first]
    assert store_digest(cloud.engine) == before
    # a replay should not copy the AMI's data again (it copied 2 x 6 chunks here)
    assert cloud.engine._store.commit_id() - commits <= 1


def test_a_refused_launch_does_not_purge_an_expired_key_through_its_staged_copies(
        env: tuple[Any, Clock], small_batches: None) -> None:
    # staging's new_domain is a KMS write unit of its own, committed: it purges keys whose
    # deletion date has passed; the refused request's unit would have rolled that back
    cloud, clock = env
    ami = _ready(cloud)
    kms = cloud.engine.kms
    kms.clock = clock
    doomed = kms.create_key(SCOPE.region, SCOPE.account_id)
    kms.schedule_key_deletion(doomed.id, SCOPE.region, SCOPE.account_id, 7)
    clock.now += 8 * 86400  # deleted on the clock; its record goes with the next KMS write
    before = store_digest(cloud.engine)
    _raises("InvalidKeyPair.NotFound", cloud.instances.run, SCOPE, image_id=ami,
            key_name="nope", block_device_mappings=ENC)
    assert store_digest(cloud.engine) == before


def test_a_copy_image_retried_with_its_client_token_stages_nothing(
        tmp_path: Any, small_batches: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # RunInstances answers a replayed token before staging; CopyImage stages (copies every
    # snapshot's data under a new key, then drops it) before its unit finds the token
    from test_images import EAST, register, snapshot

    import ebsengine
    from ebsengine.cloud import Cloud
    from ebsengine.engine import domains as domains_mod
    with ebsengine.Engine(str(tmp_path / "store")) as eng:
        cloud = Cloud(eng)
        src = register(cloud, snapshot(cloud, data=os.urandom(10 * 65536),
                                       owner=EAST.account_id))
        eng.kms.describe_key("alias/aws/ebs", EAST.region, EAST.account_id)
        first = cloud.images.copy(EAST, source_image_id=src.id, source_region="us-east-1",
                                  name="enc", encrypted=True, client_token="tok-1")
        calls: list[Any] = []
        real = domains_mod.Domains.stage_copy
        monkeypatch.setattr(domains_mod.Domains, "stage_copy",
                            lambda self, *a, **kw: calls.append(a) or real(self, *a, **kw))
        again = cloud.images.copy(EAST, source_image_id=src.id, source_region="us-east-1",
                                  name="enc", encrypted=True, client_token="tok-1")
        assert again.id == first.id
        assert calls == []


def test_a_launch_stages_no_more_copies_than_its_subnet_has_addresses(
        env: tuple[Any, Clock], monkeypatch: pytest.MonkeyPatch) -> None:
    # MaxCount beyond the subnet's free addresses launches fewer; MinCount beyond them
    # launches none: staging MaxCount full copies first is O(MaxCount x data) of work the
    # unit throws away (here 40 copies for at most 11 instances, or for none)
    from ebsengine.engine import domains as domains_mod
    cloud, _ = env
    ami = _ready(cloud)
    vpc = cloud.network.create_vpc(SCOPE, "10.7.0.0/16")
    sub = cloud.network.create_subnet(SCOPE, vpc.id, "10.7.0.0/28")  # 11 free addresses
    calls: list[Any] = []
    real = domains_mod.Domains.stage_copy
    monkeypatch.setattr(domains_mod.Domains, "stage_copy",
                        lambda self, *a, **kw: calls.append(a) or real(self, *a, **kw))
    before = store_digest(cloud.engine)
    _raises("InsufficientFreeAddressesInSubnet", cloud.instances.run, SCOPE, image_id=ami,
            subnet_id=sub.id, min_count=40, max_count=40, block_device_mappings=ENC)
    assert store_digest(cloud.engine) == before
    assert calls == []  # refused by its count: nothing worth staging
    insts = cloud.instances.run(SCOPE, image_id=ami, subnet_id=sub.id, max_count=40,
                                block_device_mappings=ENC)
    assert len(calls) == len(insts) <= 11
