"""The README's library example runs as written (against a temporary store)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_library_example_runs(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    code = blocks[0].replace('"/tmp/ebs-demo"', repr(str(tmp_path / "demo")))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "[2]"          # list_changed_blocks(first, second)
    assert "Usage(" in out[2]


def test_cloud_layer_example_runs(tmp_path):
    """The EC2 layer's library example (launch from an AMI, terminate) runs as written."""
    import ebsengine

    (code,) = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
               if "from ebsengine.cloud import" in b]
    path = str(tmp_path / "store")
    with ebsengine.Engine(path) as eng:
        vol = eng.create_volume(1, availability_zone="us-east-1a")
        with eng.open_volume(vol.id) as dev:
            dev.pwrite(b"root", 0)
            dev.flush()
        snap_id = eng.create_snapshot(vol.id).id
    scope = {"path": path, "snap_id": snap_id}
    exec(compile(code, "README.md", "exec"), scope)
    with ebsengine.Engine(path) as eng:
        from ebsengine.cloud import Cloud
        from ebsengine.errors import VolumeNotFound

        with pytest.raises(VolumeNotFound):  # the root volume was delete-on-termination
            eng.get_volume(scope["root"])

        assert Cloud(eng).check() == []
        inst = Cloud(eng).instance_table.get(scope["inst"].id)
        assert inst is not None and inst.state in ("shutting-down", "terminated")
