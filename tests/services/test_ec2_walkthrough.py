"""Data through every layer, as a user drives it (issue 8): ``ebsengine serve`` as a process,
boto3 for EC2 and the EBS direct APIs, NBD for the bytes.

Upload a disk image with the EBS direct APIs, RegisterImage from its snapshot, RunInstances,
read the root volume back over NBD (and with qemu-img, as a VM would boot it) and through a
snapshot of it, byte for byte; write to it over NBD, CreateImage, launch from the new AMI,
compare again; terminate, and the delete-on-termination volumes are gone. The server is
restarted between steps, so every step also shows that the state survives.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

import ebsengine
import nbd_client as nc

EBS_BLOCK = 524288
NBD_CHUNK = 1 << 20


class Served:
    """``ebsengine serve`` on a store: start, stop (SIGTERM), restart."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ebsengine.cli", "--store", str(self.store), "serve",
             "--nbd-port", "0", "--http-port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            lines.append(line)
            if line.startswith("ebsengine: store"):
                break
        self.sock = str(self.store / "nbd.sock")
        assert os.path.exists(self.sock), "".join(lines)
        kw: dict[str, Any] = {
            "endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1",
            "aws_access_key_id": "any", "aws_secret_access_key": "any",
            "config": Config(retries={"max_attempts": 1})}
        self.ec2 = boto3.client("ec2", **kw)
        self.ebs = boto3.client("ebs", **kw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            out, _ = self.proc.communicate(timeout=60)
            assert self.proc.returncode == 0, out
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def nbd_read(self, volume_id: str, length: int) -> bytes:
        with nc.NbdClient(self.sock) as c:
            c.go(volume_id)
            out = b"".join(c.pread(off, min(NBD_CHUNK, length - off))
                           for off in range(0, length, NBD_CHUNK))
            c.disc()
            # the server releases the volume before it closes the connection: once EOF is
            # seen, the volume is no longer open (TerminateInstances may delete it)
            assert c.is_closed(wait=30)
        return out

    def nbd_write(self, volume_id: str, offset: int, data: bytes) -> None:
        with nc.NbdClient(self.sock) as c:
            c.go(volume_id)
            c.pwrite(offset, data)
            c.cmd(nc.CMD_FLUSH)
            c.disc()
            assert c.is_closed(wait=30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "store")
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
            s.proc.communicate()


def upload(ebs: Any, image: bytes, size_gib: int = 1) -> str:
    """The image as a snapshot, block by block through the EBS direct APIs."""
    sid = str(ebs.start_snapshot(VolumeSize=size_gib, Description="uploaded image")["SnapshotId"])
    n = 0
    for i in range(0, len(image), EBS_BLOCK):
        block = image[i:i + EBS_BLOCK].ljust(EBS_BLOCK, b"\0")
        if not any(block):
            continue
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=i // EBS_BLOCK, BlockData=block,
                               DataLength=EBS_BLOCK, ChecksumAlgorithm="SHA256",
                               Checksum=base64.b64encode(hashlib.sha256(block).digest()).decode())
        n += 1
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=n)
    return sid


def snapshot_bytes(ebs: Any, sid: str, length: int) -> bytes:
    """A snapshot's first ``length`` bytes, read with GetSnapshotBlock."""
    out = bytearray(length)
    token = None
    while True:
        kw = {"SnapshotId": sid, **({"NextToken": token} if token else {})}
        page = ebs.list_snapshot_blocks(**kw)
        for b in page["Blocks"]:
            at = b["BlockIndex"] * EBS_BLOCK
            if at >= length:
                continue
            data = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=b["BlockIndex"],
                                          BlockToken=b["BlockToken"])["BlockData"].read()
            out[at:at + EBS_BLOCK] = data[:length - at]
        token = page.get("NextToken")
        if not token:
            return bytes(out)


def root_volume(ec2: Any, instance_id: str) -> str:
    (res,) = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    inst = res["Instances"][0]
    (root,) = [m for m in inst["BlockDeviceMappings"] if m["DeviceName"] == inst["RootDeviceName"]]
    return str(root["Ebs"]["VolumeId"])


def test_upload_register_launch_read_write_image_relaunch(served: Served, tmp_path: Path) -> None:
    image = os.urandom(3 * EBS_BLOCK) + bytes(EBS_BLOCK) + b"tail of the image" * 1000
    ec2, ebs = served.ec2, served.ebs
    sid = upload(ebs, image)
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid])
    ami = ec2.register_image(
        Name="uploaded-base", RootDeviceName="/dev/xvda", Architecture="x86_64",
        VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                              "Ebs": {"SnapshotId": sid, "VolumeType": "gp3",
                                      "DeleteOnTermination": True}}])["ImageId"]
    ec2.get_waiter("image_available").wait(ImageIds=[ami])
    ec2.create_key_pair(KeyName="walk")

    served.restart()
    ec2, ebs = served.ec2, served.ebs
    run = ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                            KeyName="walk",
                            BlockDeviceMappings=[{"DeviceName": "/dev/sdf",
                                                  "Ebs": {"VolumeSize": 2}}])
    iid = run["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid])
    root = root_volume(ec2, iid)
    vols = {v["VolumeId"]: v for v in ec2.describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]}
    assert set(vols) >= {root} and len(vols) == 2
    assert vols[root]["State"] == "in-use" and vols[root]["SnapshotId"] == sid
    assert vols[root]["Attachments"][0]["DeleteOnTermination"] is True

    served.restart()  # the root volume holds the AMI's bytes, over NBD and through a snapshot
    assert served.nbd_read(root, len(image)) == image
    if shutil.which("qemu-img") or os.environ.get("EBSENGINE_REQUIRE_TOOLS"):  # CI: required
        out = tmp_path / "root.raw"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw",
                        f"nbd+unix:///{root}?socket={served.sock}", str(out)],
                       check=True, capture_output=True, timeout=120)
        assert out.read_bytes()[:len(image)] == image
    snap = served.ec2.create_snapshot(VolumeId=root)["SnapshotId"]
    served.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap])
    assert snapshot_bytes(served.ebs, snap, len(image)) == image

    patch = b"written by the guest" * 500
    served.nbd_write(root, EBS_BLOCK + 100, patch)
    changed = bytearray(image)
    changed[EBS_BLOCK + 100:EBS_BLOCK + 100 + len(patch)] = patch
    ami2 = served.ec2.create_image(InstanceId=iid, Name="after-write", NoReboot=True)["ImageId"]
    served.ec2.get_waiter("image_available").wait(ImageIds=[ami2])

    served.restart()
    ec2, ebs = served.ec2, served.ebs
    (img,) = ec2.describe_images(ImageIds=[ami2])["Images"]
    root_map = [m for m in img["BlockDeviceMappings"] if m["DeviceName"] == "/dev/xvda"]
    assert len(root_map) == 1
    assert snapshot_bytes(ebs, root_map[0]["Ebs"]["SnapshotId"], len(image)) == bytes(changed)
    iid2 = ec2.run_instances(ImageId=ami2, InstanceType="t3.micro", MinCount=1,
                             MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid2])
    root2 = root_volume(ec2, iid2)
    assert root2 != root
    assert served.nbd_read(root2, len(image)) == bytes(changed)
    assert served.nbd_read(root, len(image)) == bytes(changed)  # the first instance's own disk

    ec2.terminate_instances(InstanceIds=[iid, iid2])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid, iid2])
    left = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
    assert not left & (set(vols) | {root2})  # every launch volume was delete-on-termination
    served.stop()
    with ebsengine.Engine(served.store) as eng:
        assert eng.fsck().ok
        from ebsengine.cloud import Cloud

        assert Cloud(eng).check() == []
