"""Child process of test_instance_crash.py: launches and terminates instances on one store
until killed. Prints ``ready`` once its AMI exists, then ``run`` / ``term`` after each
acknowledged call. Usage: ``instance_writer.py STORE`` (a path or a store URL)."""

from __future__ import annotations

import sys
import time

from ebsengine import Engine
from ebsengine.cloud import Cloud, Scope
from ebsengine.cloud.model import Image
from ebsengine.errors import VolumeInUse
from ebsengine.rules import new_id


def image(cloud: Cloud) -> str:
    for img in cloud.image_table.all():
        return img.id
    eng = cloud.engine
    vol = eng.create_volume(1, "gp3", availability_zone="us-east-1a")
    with eng.open_volume(vol.id) as dev:
        dev.pwrite(b"boot" * 1024, 0)
        dev.flush()
    with eng.transaction(flush=[vol.id]) as tx:
        snap = eng.create_snapshot(vol.id, tx=tx)
        eng.delete_volume(vol.id, tx=tx)
        img = Image(id=new_id("ami"), region="us-east-1", owner_id=Scope().account_id,
                    name="crash", block_device_mappings=[{"DeviceName": "/dev/xvda", "Ebs": {
                        "SnapshotId": snap.id, "VolumeSize": 1, "DeleteOnTermination": True}}])
        cloud.image_table.put(img, tx=tx)
    return img.id


def main() -> None:
    eng = Engine(sys.argv[1])
    eng.own(wait=60.0)  # own it as a server does
    cloud = Cloud(eng)
    scope = Scope()
    ami = image(cloud)
    print("ready", flush=True)
    extra = [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1}},
             {"DeviceName": "/dev/sdg", "Ebs": {"VolumeSize": 2, "DeleteOnTermination": True}}]
    while True:
        live = [i.id for i in cloud.instances.describe(scope) if i.state == "running"]
        if len(live) >= 4:
            try:
                cloud.instances.terminate(scope, live[:3])
            except VolumeInUse:  # rados://: a killed predecessor was deleting one: its lease
                time.sleep(0.2)
                continue
            print("term", flush=True)
        cloud.instances.run(scope, image_id=ami, instance_type="t3.micro", min_count=1,
                            max_count=2, block_device_mappings=extra)
        print("run", flush=True)


if __name__ == "__main__":
    main()
