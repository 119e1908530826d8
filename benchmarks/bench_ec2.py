"""The EC2 layer's costs (issue 8): a launch does not copy its AMI, and what a launch costs
against the engine calls it is made of.

    PYTHONPATH=. python3 benchmarks/bench_ec2.py [--n 30] [--big-mib 512]

In one run on one LMDB store, through the library (``ebsengine.cloud``):

* RunInstances + TerminateInstances of an AMI whose root snapshot holds 4 MiB, and of one
  holding ``--big-mib`` MiB: the ratio big/small is what "created from the AMI's snapshot in
  O(1)" means (1.0 = independent of the image's size);
* the same launch against its baseline, the bare engine work inside it: create a volume from
  the snapshot, attach it, delete it (each a unit of its own), so the ratio is the cost of the
  instance, interface, address and token records and of the rules;
* CreateImage of a running instance (one snapshot of its root volume in one unit) against a
  plain CreateSnapshot of the same volume.

Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from bench_units import _median  # benchmarks/ is the script's directory

import ebsengine
from ebsengine.cloud import Cloud, Scope

MIB = 1 << 20


def _image(eng: ebsengine.Engine, cloud: Cloud, me: Scope, mib: int, name: str) -> tuple[str, str]:
    vol = eng.create_volume(max(1, -(-mib // 1024)), "gp3", availability_zone="us-east-1a")
    with eng.open_volume(vol.id) as dev:
        for off in range(0, mib * MIB, 8 * MIB):
            dev.pwrite(os.urandom(min(8 * MIB, mib * MIB - off)), off)
        dev.flush()
    snap = eng.create_snapshot(vol.id)
    eng.delete_volume(vol.id)
    img = cloud.images.register(me, name=name, root_device_name="/dev/xvda",
                                architecture="x86_64", virtualization_type="hvm",
                                block_device_mappings=[{"DeviceName": "/dev/xvda",
                                                        "Ebs": {"SnapshotId": snap.id}}])
    return img.id, snap.id


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--big-mib", type=int, default=512)
    args = ap.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory() as d, ebsengine.Engine(d) as eng:
        cloud, me = Cloud(eng), Scope()
        small, small_snap = _image(eng, cloud, me, 4, "small")
        big, _ = _image(eng, cloud, me, args.big_mib, "big")

        def launch(image_id: str) -> Callable[[int], None]:
            def run(i: int) -> None:
                (inst,) = cloud.instances.run(me, image_id=image_id, instance_type="t3.micro")
                cloud.instances.terminate(me, [inst.id])
            return run

        def bare(i: int) -> None:
            vol = eng.create_volume(None, "gp3", snapshot_id=small_snap,
                                    availability_zone="us-east-1a")
            eng.attach_volume(vol.id, "i-0123456789abcdef0", "/dev/xvda", True)
            eng.detach_volume(vol.id)
            eng.delete_volume(vol.id)

        launch(small)(0)  # warm up
        # interleaved, so that whatever drifts over the run (the store grows) hits both alike
        small_times: list[float] = []
        big_times: list[float] = []
        for i in range(n):
            for fn, out in ((launch(small), small_times), (launch(big), big_times)):
                t = time.perf_counter()
                fn(i)
                out.append(time.perf_counter() - t)
        t_small, t_big = statistics.median(small_times), statistics.median(big_times)
        t_bare = _median(bare, n)
        print(f"launch+terminate: 4 MiB AMI {t_small * 1e3:.2f} ms, {args.big_mib} MiB AMI "
              f"{t_big * 1e3:.2f} ms, ratio {t_big / t_small:.2f} (1.0: independent of image size)")
        print(f"engine work alone (volume from snapshot, attach, detach, delete) "
              f"{t_bare * 1e3:.2f} ms; launch+terminate / engine work {t_small / t_bare:.2f}")

        (inst,) = cloud.instances.run(me, image_id=big, instance_type="t3.micro")
        root = inst.block_devices[0]["volume_id"]
        dev = eng.open_volume(root)

        def dirty(i: int) -> None:
            dev.pwrite(i.to_bytes(8, "big") * 512, (i % 512) * 65536)

        def create_image(i: int) -> None:
            dirty(i)
            cloud.instances.create_image(me, inst.id, name=f"img-{i}", no_reboot=True)

        def create_snapshot(i: int) -> None:
            dirty(i)
            eng.create_snapshot(root)

        t_img, t_snap = _median(create_image, n), _median(create_snapshot, n)
        dev.close()
        print(f"CreateImage {t_img * 1e3:.2f} ms, CreateSnapshot {t_snap * 1e3:.2f} ms, "
              f"ratio {t_img / t_snap:.2f}")


if __name__ == "__main__":
    main()
