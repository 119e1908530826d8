"""aws-cli (a subprocess, JSON output parsed) against the server, restarted between steps (issue 4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from test_aws_support import BLOCK, Aws, aws, sha_b64  # noqa: F401  (aws is a fixture)

pytestmark = pytest.mark.skipif(shutil.which("aws") is None, reason="aws-cli not installed")


def cli(a: Aws, tmp: Any, *args: str, region: str = "us-east-1", ok: bool = True) -> Any:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        "AWS_ACCESS_KEY_ID": "AKIDTEST",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": region,
        "AWS_CONFIG_FILE": str(tmp / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-credentials"),
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_PAGER": "",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(["aws", "--endpoint-url", a.url, "--output", "json", *args],
                          capture_output=True, text=True, env=env, timeout=120)
    if not ok:
        assert proc.returncode != 0, proc.stdout
        return proc.stderr
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def test_aws_cli_ec2_and_ebs_with_restarts(aws: Aws, tmp_path: Any) -> None:
    vol = cli(aws, tmp_path, "ec2", "create-volume", "--availability-zone", "us-east-1a", "--size", "2",
              "--volume-type", "gp3", "--tag-specifications",
              "ResourceType=volume,Tags=[{Key=Name,Value=cli}]")
    vid = vol["VolumeId"]
    assert vol["State"] == "creating" and vol["Size"] == 2
    cli(aws, tmp_path, "ec2", "wait", "volume-available", "--volume-ids", vid)
    aws.write(vid, 5 * BLOCK, b"from the library" * 100)
    with aws.engine.open_volume(vid) as dev:
        expected = dev.pread(BLOCK, 5 * BLOCK)

    aws.restart()
    listed = cli(aws, tmp_path, "ec2", "describe-volumes")              # aws-cli pages with MaxResults=1000
    assert [v["VolumeId"] for v in listed["Volumes"]] == [vid]
    assert listed["Volumes"][0]["Tags"] == [{"Key": "Name", "Value": "cli"}]
    filtered = cli(aws, tmp_path, "ec2", "describe-volumes", "--filters", "Name=tag:Name,Values=cli",
                   "Name=volume-type,Values=gp3")
    assert len(filtered["Volumes"]) == 1
    assert cli(aws, tmp_path, "ec2", "describe-volumes", region="eu-west-1")["Volumes"] == []
    cli(aws, tmp_path, "ec2", "create-tags", "--resources", vid, "--tags", "Key=env,Value=test")
    snap = cli(aws, tmp_path, "ec2", "create-snapshot", "--volume-id", vid, "--description", "cli snap")
    sid = snap["SnapshotId"]
    cli(aws, tmp_path, "ec2", "wait", "snapshot-completed", "--snapshot-ids", sid)

    aws.restart()
    tags = cli(aws, tmp_path, "ec2", "describe-tags", "--filters", f"Name=resource-id,Values={vid}")
    assert {t["Key"]: t["Value"] for t in tags["Tags"]} == {"Name": "cli", "env": "test"}
    snaps = cli(aws, tmp_path, "ec2", "describe-snapshots", "--owner-ids", "self")
    assert [(s["SnapshotId"], s["State"], s["Description"]) for s in snaps["Snapshots"]] == [
        (sid, "completed", "cli snap")]
    blocks = cli(aws, tmp_path, "ebs", "list-snapshot-blocks", "--snapshot-id", sid)
    assert [b["BlockIndex"] for b in blocks["Blocks"]] == [5] and blocks["BlockSize"] == BLOCK
    out_file = tmp_path / "block5.bin"
    got = cli(aws, tmp_path, "ebs", "get-snapshot-block", "--snapshot-id", sid, "--block-index", "5",
              "--block-token", blocks["Blocks"][0]["BlockToken"], str(out_file))
    assert out_file.read_bytes() == expected and got["Checksum"] == sha_b64(expected)

    aws.restart()
    upload = os.urandom(BLOCK)
    (tmp_path / "up.bin").write_bytes(upload)
    started = cli(aws, tmp_path, "ebs", "start-snapshot", "--volume-size", "1", "--timeout", "60")
    new = started["SnapshotId"]
    assert started["Status"] == "pending"
    cli(aws, tmp_path, "ebs", "put-snapshot-block", "--snapshot-id", new, "--block-index", "3",
        "--block-data", str(tmp_path / "up.bin"), "--data-length", str(BLOCK), "--checksum", sha_b64(upload),
        "--checksum-algorithm", "SHA256")
    aws.restart()
    done = cli(aws, tmp_path, "ebs", "complete-snapshot", "--snapshot-id", new, "--changed-blocks-count", "1")
    assert done["Status"] == "completed"
    restored = cli(aws, tmp_path, "ec2", "create-volume", "--availability-zone", "us-east-1a",
                   "--snapshot-id", new)["VolumeId"]
    with aws.engine.open_volume(restored) as dev:
        assert dev.pread(BLOCK, 3 * BLOCK) == upload

    err = cli(aws, tmp_path, "ec2", "delete-volume", "--volume-id", "vol-0000000000000dead", ok=False)
    assert "InvalidVolume.NotFound" in err
    err = cli(aws, tmp_path, "ebs", "list-snapshot-blocks", "--snapshot-id", "snap-0000000000000dead", ok=False)
    assert "ResourceNotFoundException" in err
    cli(aws, tmp_path, "ec2", "delete-volume", "--volume-id", vid)
    cli(aws, tmp_path, "ec2", "wait", "volume-deleted", "--volume-ids", vid)


def test_aws_cli_launch_snapshot_image_relaunch(aws: Aws, tmp_path: Any) -> None:
    """The README's aws-cli walk-through of the EC2 layer, step by step, restarting between."""
    vid = cli(aws, tmp_path, "ec2", "create-volume", "--availability-zone", "us-east-1a",
              "--size", "1")["VolumeId"]
    aws.write(vid, 0, b"boot sector" * 1000)
    sid = cli(aws, tmp_path, "ec2", "create-snapshot", "--volume-id", vid)["SnapshotId"]
    cli(aws, tmp_path, "ec2", "wait", "snapshot-completed", "--snapshot-ids", sid)
    ami = cli(aws, tmp_path, "ec2", "register-image", "--name", "base", "--architecture", "x86_64",
              "--virtualization-type", "hvm", "--root-device-name", "/dev/xvda",
              "--block-device-mappings",
              f"DeviceName=/dev/xvda,Ebs={{SnapshotId={sid},VolumeType=gp3}}")["ImageId"]
    key = cli(aws, tmp_path, "ec2", "create-key-pair", "--key-name", "me", "--key-type", "ed25519")
    assert key["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

    aws.restart()
    sg = cli(aws, tmp_path, "ec2", "create-security-group", "--group-name", "ssh",
             "--description", "ssh in")["GroupId"]
    cli(aws, tmp_path, "ec2", "authorize-security-group-ingress", "--group-id", sg,
        "--protocol", "tcp", "--port", "22", "--cidr", "0.0.0.0/0")
    run = cli(aws, tmp_path, "ec2", "run-instances", "--image-id", ami, "--instance-type", "t3.micro",
              "--key-name", "me", "--security-group-ids", sg, "--count", "1")
    iid = run["Instances"][0]["InstanceId"]
    cli(aws, tmp_path, "ec2", "wait", "instance-running", "--instance-ids", iid)
    eip = cli(aws, tmp_path, "ec2", "allocate-address")
    cli(aws, tmp_path, "ec2", "associate-address", "--instance-id", iid,
        "--allocation-id", eip["AllocationId"])

    aws.restart()
    desc = cli(aws, tmp_path, "ec2", "describe-instances", "--instance-ids", iid)
    inst = desc["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "running" and inst["PublicIpAddress"] == eip["PublicIp"]
    assert inst["KeyName"] == "me" and [g["GroupId"] for g in inst["SecurityGroups"]] == [sg]
    root = inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    with aws.engine.open_volume(root) as dev:
        assert dev.pread(11000, 0) == b"boot sector" * 1000
    aws.write(root, 4096, b"changed in the instance")
    snaps = cli(aws, tmp_path, "ec2", "create-snapshots", "--instance-specification",
                f"InstanceId={iid}")["Snapshots"]
    assert [s["VolumeId"] for s in snaps] == [root]
    ami2 = cli(aws, tmp_path, "ec2", "create-image", "--instance-id", iid, "--name", "base-v2",
               "--no-reboot")["ImageId"]
    cli(aws, tmp_path, "ec2", "wait", "image-available", "--image-ids", ami2)

    aws.restart()
    iid2 = cli(aws, tmp_path, "ec2", "run-instances", "--image-id", ami2, "--count", "1",
               "--instance-type", "t3.micro")["Instances"][0]["InstanceId"]
    cli(aws, tmp_path, "ec2", "wait", "instance-running", "--instance-ids", iid2)
    root2 = cli(aws, tmp_path, "ec2", "describe-instances", "--instance-ids", iid2)[
        "Reservations"][0]["Instances"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    with aws.engine.open_volume(root2) as dev:
        assert dev.pread(23, 4096) == b"changed in the instance"
    cli(aws, tmp_path, "ec2", "stop-instances", "--instance-ids", iid)
    cli(aws, tmp_path, "ec2", "wait", "instance-stopped", "--instance-ids", iid)
    cli(aws, tmp_path, "ec2", "terminate-instances", "--instance-ids", iid, iid2)
    cli(aws, tmp_path, "ec2", "wait", "instance-terminated", "--instance-ids", iid, iid2)
    left = {v["VolumeId"] for v in cli(aws, tmp_path, "ec2", "describe-volumes")["Volumes"]}
    assert left == {vid}  # the root volumes were delete-on-termination
    addr = cli(aws, tmp_path, "ec2", "describe-addresses")["Addresses"][0]
    assert "InstanceId" not in addr  # termination disassociated the Elastic IP
    assert aws.cloud.check() == [] and aws.engine.fsck().ok
