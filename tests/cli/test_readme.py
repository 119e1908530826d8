"""The README's library example runs as written (against a temporary store)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_library_example_runs(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    code = blocks[0].replace('"/tmp/ebs-demo"', repr(str(tmp_path / "demo")))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "[2]"          # list_changed_blocks(first, second)
    assert "Usage(" in out[2]
