"""moto server-mode compatibility: ``POST /moto-api/reset`` wipes every resource when the
server runs with ``allow_reset`` (``ebsengine serve --allow-reset``) and is refused (403,
nothing changed) otherwise; a volume open over NBD refuses it (409, nothing changed)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import ebsengine
from ebsengine import cli
from test_aws_support import Aws, client, expect_error  # noqa: F401


def post(url: str, method: str = "POST") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url + "/moto-api/reset", data=b"" if method == "POST" else None,
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def resettable(tmp_path: Path):  # type: ignore[no-untyped-def]
    a = Aws(str(tmp_path / "store"), allow_reset=True)
    try:
        yield a
    finally:
        a.stop()


def populate(aws: Aws) -> dict[str, str]:
    vol = aws.volume(2, TagSpecifications=[{"ResourceType": "volume",
                                            "Tags": [{"Key": "a", "Value": "b"}]}])
    aws.write(vol, 0, b"x" * 4096)
    snap = aws.ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
    aws.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap])
    aws.ec2.create_snapshot(VolumeId=vol)  # a second, incremental one
    restored = aws.ec2.create_volume(AvailabilityZone="us-east-1b", SnapshotId=snap)["VolumeId"]
    key = aws.ec2.create_key_pair(KeyName="k")["KeyPairId"]
    aws.ec2_west.create_key_pair(KeyName="k")
    aws.ec2_west.create_volume(AvailabilityZone="us-west-2a", Size=1, ClientToken="tok")
    return {"vol": vol, "snap": snap, "restored": restored, "key": key}


def assert_empty(aws: Aws) -> None:
    for ec2 in (aws.ec2, aws.ec2_west):
        assert ec2.describe_volumes()["Volumes"] == []
        assert ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []
        assert ec2.describe_key_pairs()["KeyPairs"] == []
        assert ec2.describe_tags()["Tags"] == []
    assert aws.engine.list_volumes() == [] and aws.engine.list_snapshots() == []
    assert aws.engine.fsck().ok


def test_reset_refused_without_the_flag(tmp_path: Path) -> None:
    aws = Aws(str(tmp_path / "store"))
    try:
        populate(aws)
        with aws.unchanged():
            status, doc = post(aws.url)
            assert status == 403 and "--allow-reset" in doc["Error"]
        assert len(aws.engine.list_volumes()) == 3
    finally:
        aws.stop()


def test_reset_wipes_everything_and_the_server_keeps_working(resettable: Aws) -> None:
    aws = resettable
    populate(aws)
    status, doc = post(aws.url)
    assert status == 200 and doc["status"] == "ok"
    assert doc["removed"]["volume"] == 3 and doc["removed"]["snapshot"] == 2
    assert doc["removed"]["keypair"] == 2
    assert_empty(aws)
    cloud = aws.server.app.cloud  # type: ignore[union-attr]
    assert cloud.check() == []
    assert [v.is_default for v in cloud.vpcs.all()] == [True]  # as at server start
    # everything works again, names and client tokens are free
    aws.ec2.create_key_pair(KeyName="k")
    vol = aws.ec2_west.create_volume(AvailabilityZone="us-west-2a", Size=1, ClientToken="tok")
    assert aws.ec2_west.describe_volumes()["Volumes"][0]["VolumeId"] == vol["VolumeId"]
    aws.restart()
    assert [k["KeyName"] for k in aws.ec2.describe_key_pairs()["KeyPairs"]] == ["k"]
    assert aws.engine.fsck().ok
    # a second reset of a nearly empty store
    assert post(aws.url)[0] == 200
    assert_empty(aws)


def test_reset_refused_while_a_volume_is_open(resettable: Aws) -> None:
    aws = resettable
    ids = populate(aws)
    dev = aws.engine.open_volume(ids["restored"])  # as the NBD server holds it
    try:
        with aws.unchanged():
            status, doc = post(aws.url)
            assert status == 409 and ids["restored"] in doc["Error"]
            assert "nothing was deleted" in doc["Error"]
    finally:
        dev.close()
    assert post(aws.url)[0] == 200
    assert_empty(aws)


def test_reset_needs_post(resettable: Aws) -> None:
    populate(resettable)
    with resettable.unchanged():
        status, doc = post(resettable.url, method="GET")
        assert status == 400 and doc == {"Error": "Need to POST to reset Moto"}


# --- through the CLI ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(store: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebsengine.cli", "--store", str(store), "serve", "--nbd-port", "0",
         "--nbd-socket", "none", "--http-port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "stop with Ctrl-C" in line:
            break
    assert proc.poll() is None, "".join(lines)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_serve_allow_reset(tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc, url = serve(store)
    try:
        ec2 = client("ec2", url)
        ec2.create_key_pair(KeyName="k")
        assert post(url)[0] == 403
        assert len(ec2.describe_key_pairs()["KeyPairs"]) == 1
    finally:
        stop(proc)
    proc, url = serve(store, "--allow-reset")
    try:
        ec2 = client("ec2", url)
        ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)
        status, doc = post(url)
        assert status == 200 and doc["status"] == "ok"
        assert ec2.describe_key_pairs()["KeyPairs"] == [] and ec2.describe_volumes()["Volumes"] == []
        ec2.create_key_pair(KeyName="k")  # still serving
    finally:
        stop(proc)
    with ebsengine.Engine(str(store)) as eng:
        assert eng.list_volumes() == [] and eng.fsck().ok


class _Started(Exception):
    pass


def test_serve_passes_allow_reset_and_public_ip_pool(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class FakeServer:
        label = "the AWS API"

        def __init__(self, engine: Any, host: str, port: int, **options: Any) -> None:
            seen.update(options)

        def start(self) -> None:
            raise _Started

        def stop(self) -> None: ...

        def addresses(self) -> list[str]:
            return []

    import ebsengine.aws.server as server_mod

    monkeypatch.setattr(server_mod, "ApiServer", FakeServer)
    base = ["--store", str(tmp_path / "s"), "serve", "--nbd-socket", "none", "--nbd-port", "0"]
    with pytest.raises(_Started):
        cli.main([*base, "--allow-reset", "--public-ip-pool", "203.0.113.0/24"])
    assert seen["allow_reset"] is True
    assert seen["cloud_config"].public_pool == "203.0.113.0/24"
    seen.clear()
    with pytest.raises(_Started):
        cli.main(base)
    assert seen["allow_reset"] is False and seen["cloud_config"] is None
    with pytest.raises(SystemExit) as info:
        cli.main([*base, "--public-ip-pool", "203.0.113.7/24"])  # host bits set
    assert info.value.code == 2
