"""Fixtures shared by the AWS endpoint tests: a real server on a free loopback port, real clients.

Imported by the other ``test_aws_*`` modules (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

import ebsengine
from conftest import store_digest
from ebsengine.aws.server import ApiServer

BLOCK = 524288
_CONFIG = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                 max_pool_connections=16)


def client(service: str, url: str, region: str = "us-east-1") -> Any:
    return boto3.client(service, endpoint_url=url, region_name=region, aws_access_key_id="AKIDTEST",
                        aws_secret_access_key="secret", config=_CONFIG)


class Aws:
    """An engine on ``path`` served over HTTP, with boto3 clients for two regions."""

    def __init__(self, path: str, *, simulated: str | float | None = None, **options: Any) -> None:
        """``simulated``: serve on a SimulatedClock starting there (a new clock object at
        every start: its position comes back from the store)."""
        self.path = path
        self.simulated = simulated
        self.options = options
        self.engine: Any = None
        self.server: ApiServer | None = None
        self.start()

    def start(self) -> None:
        self.engine = ebsengine.Engine(self.path)
        options = dict(self.options)
        if self.simulated is not None:
            from ebsengine.cloud import SimulatedClock

            options["clock"] = SimulatedClock(self.simulated)
        self.server = ApiServer(self.engine, port=0, **options).start()
        url = self.server.url
        self.url = url
        self.ec2 = client("ec2", url)
        self.ebs = client("ebs", url)
        self.ec2_west = client("ec2", url, "us-west-2")
        self.ebs_west = client("ebs", url, "us-west-2")
        self.kms = client("kms", url)
        self.kms_west = client("kms", url, "us-west-2")
        self.dlm = client("dlm", url)

    def clock(self, **body: Any) -> Any:
        """POST /_ebsengine/clock with ``body`` ({"advance": s} / {"set": iso}); ``(status,
        json)``. Without a body: GET."""
        import json
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body else None
        req = urllib.request.Request(self.url + "/_ebsengine/clock", data=data,
                                     method="POST" if body else "GET",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def restart(self) -> None:
        """New process state: the server and the engine are closed and reopened on the same store."""
        self.stop()
        self.start()

    @contextlib.contextmanager
    def unchanged(self) -> Iterator[None]:
        """Assert the store is byte-for-byte the same after the block (refused means untouched)."""
        before = store_digest(self.engine)
        yield
        assert store_digest(self.engine) == before

    def volume(self, size: int = 1, **kw: Any) -> str:
        return str(self.ec2.create_volume(AvailabilityZone="us-east-1a", Size=size, **kw)["VolumeId"])

    @property
    def cloud(self) -> Any:
        """The server's cloud layer (the library API behind the endpoint)."""
        assert self.server is not None
        return self.server.app.cloud

    def image(self, data: bytes = b"", offset: int = 0, **kw: Any) -> str:
        """An AMI whose root snapshot holds ``data`` at ``offset`` (see :func:`put_image`)."""
        return put_image(self.cloud, data, offset, **kw)

    def launch(self, **kw: Any) -> str:
        """One running instance of a fresh one-GiB AMI; its id."""
        image_id = kw.pop("ImageId", None) or self.image()
        res = self.ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1,
                                     InstanceType=kw.pop("InstanceType", "t3.micro"), **kw)
        return str(res["Instances"][0]["InstanceId"])

    def write(self, volume_id: str, offset: int, data: bytes) -> None:
        with self.engine.open_volume(volume_id) as dev:
            dev.pwrite(data, offset)
            dev.flush()


@pytest.fixture
def aws(tmp_path: Any) -> Iterator[Aws]:
    a = Aws(str(tmp_path / "store"))
    try:
        yield a
    finally:
        a.stop()


def put_image(cloud: Any, data: bytes = b"", offset: int = 0, *, size: int = 1,
              root: str = "/dev/xvda", region: str = "us-east-1", name: str | None = None,
              owner: str = "123456789012") -> str:
    """An AMI made through the library: a volume holding ``data`` at ``offset``, its
    snapshot, and ``cloud.images.register`` of it at ``root`` (x86_64, hvm). Returns the
    image id."""
    from ebsengine.cloud import Scope
    from ebsengine.cloud.scope import put_snapshot_region

    eng = cloud.engine
    vol = eng.create_volume(size, "gp3", availability_zone=region + "a")
    if data:
        with eng.open_volume(vol.id) as dev:
            dev.pwrite(data, offset)
            dev.flush()
    with eng.transaction(flush=[vol.id]) as tx:
        snap = eng.create_snapshot(vol.id, tx=tx)
        put_snapshot_region(eng, tx, snap.id, region, owner)
        eng.delete_volume(vol.id, tx=tx)
    image = cloud.images.register(
        Scope(region, owner), name=name or f"image-{snap.id}", root_device_name=root,
        architecture="x86_64", virtualization_type="hvm",
        block_device_mappings=[{"DeviceName": root, "Ebs": {
            "SnapshotId": snap.id, "VolumeSize": size, "VolumeType": "gp3",
            "DeleteOnTermination": True}}])
    return str(image.id)


def expect_error(call: Callable[..., Any], code: str, status: int, **kw: Any) -> dict[str, Any]:
    """Call and assert AWS's error code and HTTP status; returns the parsed error response."""
    with pytest.raises(ClientError) as info:
        call(**kw)
    resp: dict[str, Any] = info.value.response
    assert resp["Error"]["Code"] == code, resp
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == status, resp
    return resp


def sha_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def linear_checksum(blocks: dict[int, bytes]) -> str:
    """LINEAR aggregate as coldsnap computes it: SHA-256 over the raw digests in index order."""
    raw = b"".join(hashlib.sha256(blocks[i]).digest() for i in sorted(blocks))
    return base64.b64encode(hashlib.sha256(raw).digest()).decode()


def put_block(ebs: Any, snap_id: str, index: int, data: bytes, **kw: Any) -> Any:
    return ebs.put_snapshot_block(SnapshotId=snap_id, BlockIndex=index, BlockData=data, DataLength=len(data),
                                  Checksum=sha_b64(data), ChecksumAlgorithm="SHA256", **kw)


def read_block(ebs: Any, snap_id: str, index: int) -> bytes:
    """GetSnapshotBlock through a token obtained from ListSnapshotBlocks."""
    tokens = {b["BlockIndex"]: b["BlockToken"] for b in ebs.list_snapshot_blocks(SnapshotId=snap_id)["Blocks"]}
    out = ebs.get_snapshot_block(SnapshotId=snap_id, BlockIndex=index, BlockToken=tokens[index])
    data: bytes = out["BlockData"].read()
    assert out["Checksum"] == sha_b64(data) and out["DataLength"] == len(data) == BLOCK
    return data


def all_blocks(ebs: Any, snap_id: str) -> dict[int, bytes]:
    """Every listed block of a snapshot with its bytes, through the API."""
    out = {}
    for b in ebs.list_snapshot_blocks(SnapshotId=snap_id)["Blocks"]:
        got = ebs.get_snapshot_block(SnapshotId=snap_id, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
        out[b["BlockIndex"]] = got["BlockData"].read()
    return out
