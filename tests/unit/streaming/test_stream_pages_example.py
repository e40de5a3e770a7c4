"""`examples/stream_pages.py`, run as a user would (quick settings): it streams, and says so."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "stream_pages.py"


def seconds(label: str, stdout: str) -> float:
    found = re.findall(rf"^{label}: ([0-9.]+) s$", stdout, flags=re.MULTILINE)
    assert len(found) == 1, f"expected one {label!r} line in:\n{stdout}"
    return float(found[0])


def test_the_example_writes_records_before_the_source_finished(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(out), "--rate", "1000000", "--page-ms", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pages fetched: 50" in done.stdout
    assert "records written: 10000" in done.stdout
    # 50 pages of 2 ms: the source needs at least 0.1 s; the first record is written after
    # the first page, long before the last one arrives.
    first, source_done = (
        seconds("first record written at", done.stdout),
        seconds("source finished at", done.stdout),
    )
    assert first < source_done
    assert "outputs kept: ['write']" in done.stdout
    lines = out.read_text().splitlines()
    assert len(lines) == 10_000
    records = [json.loads(line) for line in lines]
    assert sorted(r["id"] for r in records) == list(range(10_000))
    assert records[0]["name"] == f"Customer {records[0]['id']}"
    assert {r["tier"] for r in records} == {"gold", "standard"}
