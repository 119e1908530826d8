"""``ebsengine cost``, run as a user runs it (a subprocess on the store, server stopped):
the scripted month of ``cost_support`` costs what the price table says, to the cent."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from cost_support import Clock, cents, expected, lifecycle
from test_aws_support import Aws


def run(store: str, *args: str, env: dict[str, str] | None = None) -> str:
    p = subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", store, "cost", *args],
                       capture_output=True, text=True, check=False, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_cost_cli_json_and_table(tmp_path: Any) -> None:
    store = str(tmp_path / "store")
    clock = Clock()
    aws = Aws(store, clock=clock)
    try:
        ids = lifecycle(aws, clock)
    finally:
        aws.stop()
    want = expected()
    doc = json.loads(run(store, "--since", "2025-01-01", "--until", "2025-02-01", "--json"))
    got = {r["usage_type"]: r["cost"] for r in doc["rows"]}
    assert {k: cents(v) for k, v in got.items()} == {k: cents(v) for k, v in want.items()}
    assert cents(doc["total"]) == cents(sum(want.values()))
    assert doc["currency"] == "USD" and doc["since"] == "2025-01-01T00:00:00Z"

    per = json.loads(run(store, "--since", "2025-01-01", "--until", "2025-02-01", "--by",
                         "resource", "--json"))["rows"]
    data = [r for r in per if r["resource"] == ids["volume"]]
    assert [r["usage_type"] for r in data] == ["EBS:VolumeUsage.gp2"]
    assert cents(data[0]["cost"]) == cents(want["EBS:VolumeUsage.gp2"])
    assert {r["resource"] for r in per if r["usage_type"] == "BoxUsage:t3.micro"} == \
        {ids["instance"]}

    table = run(store, "--since", "2025-01-01", "--until", "2025-02-01")
    assert "BoxUsage:t3.micro" in table
    assert f"TOTAL USD {cents(sum(want.values()))}" in table


def test_cost_cli_reads_a_replaced_price_file(tmp_path: Any) -> None:
    from ebsengine.cloud.pricing import DEFAULT_PRICES

    store = str(tmp_path / "store")
    clock = Clock()
    aws = Aws(store, clock=clock)
    try:
        lifecycle(aws, clock)
    finally:
        aws.stop()
    prices = json.loads(DEFAULT_PRICES.read_text())
    prices["instance_hour"]["t3.micro"] = 1.0
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(prices))
    doc = json.loads(run(store, "--since", "2025-01-01", "--until", "2025-02-01",
                         "--prices", str(path), "--json"))
    got = {r["usage_type"]: r["cost"] for r in doc["rows"]}
    assert cents(got["BoxUsage:t3.micro"]) == cents(11 * 1.0)   # 11 running hours
    assert doc["prices"] == str(path)
