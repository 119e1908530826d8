"""``serve --seed-images FILE``: public images preloaded with given ids (for suites, such as
moto's, that launch well-known AMI ids), present at start and again after a reset."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ebsengine import Engine, cli
from ebsengine.cloud import Cloud
from ebsengine.cloud.check import check_cloud
from ebsengine.cloud.images import SEED_OWNER
from ebsengine.cloud.scope import Scope
from test_aws_support import Aws, expect_error


def post(url: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url + "/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read())

SEEDS = [{"ImageId": "ami-12c6146b", "Name": "seed-linux", "Description": "a seed"},
         {"ImageId": "ami-0123456789abcdef0", "Name": "seed-west", "Region": "us-west-2",
          "RootDeviceName": "/dev/sda1", "VolumeSize": 10, "OwnerId": "801119661308"}]


@pytest.fixture
def seeded(tmp_path: Path):  # type: ignore[no-untyped-def]
    a = Aws(str(tmp_path / "store"), allow_reset=True, seed_images=SEEDS)
    try:
        yield a
    finally:
        a.stop()


def test_seed_images_launch_and_survive_reset(seeded: Aws) -> None:
    ec2 = seeded.ec2
    img = ec2.describe_images(ImageIds=["ami-12c6146b"])["Images"][0]
    assert (img["Name"], img["OwnerId"], img["Public"], img["State"]) == \
        ("seed-linux", SEED_OWNER, True, "available")
    assert img["Description"] == "a seed" and img["RootDeviceName"] == "/dev/xvda"
    # an id lives in one region, as AWS's do
    expect_error(ec2.describe_images, "InvalidAMIID.NotFound", 400,
                 ImageIds=["ami-0123456789abcdef0"])
    west = seeded.ec2_west.describe_images(ImageIds=["ami-0123456789abcdef0"])["Images"][0]
    assert west["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 10
    assert ec2.describe_images(Owners=["self"])["Images"] == []  # not the caller's
    inst = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]
    root = inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    vol = ec2.describe_volumes(VolumeIds=[root])["Volumes"][0]
    assert vol["Size"] == 8 and vol.get("SnapshotId", "") == ""  # blank root volume
    # the seed images are no snapshots of the caller's, and not the caller's to change
    assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
    expect_error(ec2.deregister_image, "AuthFailure", 401, ImageId="ami-12c6146b")
    status, doc = post(seeded.url)
    assert status == 200 and doc["removed"]["image"] == 2
    assert ec2.describe_instances()["Reservations"] == []
    assert [i["ImageId"] for i in ec2.describe_images(ImageIds=["ami-12c6146b"])["Images"]] \
        == ["ami-12c6146b"]
    seeded.restart()  # the store keeps them; seeding again leaves them as they are
    assert len(seeded.ec2_west.describe_images(ImageIds=["ami-0123456789abcdef0"])["Images"]) == 1


def test_seed_is_idempotent_and_checked_first() -> None:
    cloud = Cloud(Engine("memory://"))
    s = Scope()
    assert [i.id for i in cloud.images.seed(s, SEEDS)] == ["ami-12c6146b", "ami-0123456789abcdef0"]
    assert cloud.images.seed(s, SEEDS) == []
    assert check_cloud(cloud) == []
    bad: list[Any] = [
        [{"ImageId": "ami-ekswin"}],                               # not an id AWS could issue
        [{"ImageId": "ami-aaaaaaaa"}, {"ImageId": "ami-aaaaaaaa"}],  # twice
        [{"ImageId": "ami-bbbbbbbb", "Region": "mars-north-1"}],
        [{"ImageId": "ami-bbbbbbbb", "VolumeSize": 0}],
        [{"ImageId": "ami-bbbbbbbb", "Name": "x"}],                  # AMI names are 3..128
        {"ImageId": "ami-bbbbbbbb"},                                 # not a list
    ]
    before = len(cloud.image_table.all())
    for entries in bad:
        with pytest.raises(ValueError):
            cloud.images.seed(s, entries)
    # a bad entry after good ones writes nothing
    with pytest.raises(ValueError):
        cloud.images.seed(s, [{"ImageId": "ami-cccccccc"}, {"ImageId": "nope"}])
    assert len(cloud.image_table.all()) == before


def test_serve_seed_images_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    class Started(Exception):
        pass

    class FakeServer:
        label = "the AWS API"

        def __init__(self, engine: Any, host: str, port: int, **options: Any) -> None:
            seen.update(options)
            raise Started

    import ebsengine.aws.server as server_mod

    monkeypatch.setattr(server_mod, "ApiServer", FakeServer)
    good, broken = tmp_path / "seeds.json", tmp_path / "bad.json"
    good.write_text(json.dumps(SEEDS))
    broken.write_text(json.dumps([{"ImageId": "ami-ekswin"}]))
    base = ["--store", str(tmp_path / "s"), "serve", "--nbd-socket", "none", "--nbd-port", "0"]
    with pytest.raises(Started):
        cli.main([*base, "--seed-images", str(good)])
    assert seen["seed_images"] == SEEDS
    for path in (broken, tmp_path / "missing.json"):
        with pytest.raises(SystemExit) as info:
            cli.main([*base, "--seed-images", str(path)])
        assert info.value.code == 2
    assert "ami-ekswin" in capsys.readouterr().err
