"""`examples/llm_report.py`, run as a user would: crash it, resume it, compare with a clean run.

Three processes: a clean run (trio) in its own cache directory runs alongside a run killed by
`--crash-after 20` (asyncio) and its resume (trio) in another. Every count comes from what the
processes print, so the test checks the claims the README makes about the example: the crash
kills the process early, the resume pays only the calls that had not been answered, and the
shared resource keeps the simulated API's limits from ever being exceeded. A further run then
replays everything and pays nothing. About 8 s of real time (the API allows 10 calls/s).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm_report.py"
CALLS = 59  # 6 summaries + 1 keyword list + 50 explanations + abstract and title
CRASH_AFTER = 20

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="the crash is a SIGKILL")


def command(cache: Path, *extra: str) -> list[str]:
    return [sys.executable, str(EXAMPLE), "--cache-dir", str(cache), "--seed", "11", *extra]


def number(label: str, stdout: str) -> int:
    found = re.findall(rf"^{label}: (\d+)", stdout, flags=re.MULTILINE)
    assert len(found) == 1, f"expected one {label!r} line in:\n{stdout}"
    return int(found[0])


def finished(proc: subprocess.Popen[str]) -> str:
    stdout, stderr = proc.communicate(timeout=25)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{stdout}\n{stderr}"
    assert stderr == "", stderr  # no warning, no traceback
    return stdout


@pytest.mark.timeout(60)
def test_a_resumed_run_pays_only_for_the_calls_the_crashed_run_had_not_paid(
    tmp_path: Path,
) -> None:
    clean = subprocess.Popen(
        command(tmp_path / "clean", "--backend", "trio"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        crashed = subprocess.run(
            command(tmp_path / "resumed", "--crash-after", str(CRASH_AFTER)),
            capture_output=True,
            text=True,
            timeout=25,
            check=False,
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
        assert "crash: killing the process" in crashed.stdout
        assert "A Short History of Lighthouses" not in crashed.stdout  # it died before the end
        assert number("LLM calls paid this run", crashed.stdout) == CRASH_AFTER

        resumed = subprocess.Popen(
            command(tmp_path / "resumed", "--backend", "trio"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        resumed_out = finished(resumed)
    finally:
        clean_out = finished(clean)

    # A clean run pays every call once; the crashed run and its resume together pay the same.
    assert number("LLM calls paid this run", clean_out) == CALLS
    assert number("LLM calls replayed from the cache", clean_out) == 0
    paid_on_resume = number("LLM calls paid this run", resumed_out)
    assert paid_on_resume == CALLS - CRASH_AFTER
    assert number("LLM calls replayed from the cache", resumed_out) == CRASH_AFTER
    for out in (clean_out, resumed_out):
        assert "A Short History of Lighthouses" in out
        assert "6 section summaries, 50 keywords:" in out
        assert "0 from exceeding the API's limits" in out  # the shared resource held them
    # The report of the resumed run is the clean run's, word for word.
    report = clean_out.split("LLM calls paid")[0]
    assert resumed_out.startswith(report)

    again = subprocess.run(
        command(tmp_path / "resumed"), capture_output=True, text=True, timeout=25, check=True
    )
    assert number("LLM calls paid this run", again.stdout) == 0
    assert number("LLM calls replayed from the cache", again.stdout) == CALLS
    assert again.stdout.startswith(report)
