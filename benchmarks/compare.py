"""Before / after: run benchmarks/overhead.py against two source trees and compare the medians.

Runs `overhead.py --json` as a subprocess with `PYTHONPATH` set to each tree's `src`, alternating
the two (before, after; then after, before; ...) `--runs` times per backend, so a slow spell on a
shared machine lands on both sides. Prints one table per backend: the median of every row's
number before and after, the change, the spread (half the range over the runs, in the row's
unit), and the hand-written baseline measured in the same runs where the row has one. The
baselines run the same code on both sides, so how far they move is how noisy the machine was.

Usage: python benchmarks/compare.py [--before DIR] [--after DIR] [--runs N]
           [--backend asyncio --backend trio] [--keep DIR] [overhead.py options...]
Options it does not know go to overhead.py (`--quick`, `--scale N`; `--scale 0` unless given).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OVERHEAD = HERE / "overhead.py"


@dataclass
class Series:
    """One row's numbers over the runs of one version."""

    workload: str
    unit: str
    values: list[float] = field(default_factory=list)
    bases: list[float] = field(default_factory=list)
    oks: list[bool | None] = field(default_factory=list)
    target: str = ""


def run_once(src: Path, backend: str, extra: list[str], out: Path) -> dict[str, Any]:
    """One `overhead.py --json` run importing `pipeline` from `src`; its report."""
    json_path = out.with_suffix(".json")
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, str(OVERHEAD), "--backend", backend, "--json", str(json_path), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    out.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode not in (0, 1) or not json_path.exists():  # 1: some target failed
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); output in {out}")
    report: dict[str, Any] = json.loads(json_path.read_text(encoding="utf-8"))
    imported = Path(report["pipeline"]).resolve()
    if not imported.is_relative_to(src.resolve()):
        raise SystemExit(f"run with PYTHONPATH={src} imported pipeline from {imported}")
    return report


def collect(series: dict[str, Series], report: dict[str, Any]) -> None:
    for row in report["rows"]:
        if row["value"] is None:
            continue
        s = series.setdefault(row["key"], Series(row["workload"], row["unit"]))
        s.values.append(row["value"])
        if row["base"] is not None:
            s.bases.append(row["base"])
        s.oks.append(row["ok"])
        s.target = row["target"]


def fmt(x: float, unit: str) -> str:
    if unit.startswith("x"):
        return f"{x:.3f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def spread(values: list[float], unit: str) -> str:
    return f"±{fmt((max(values) - min(values)) / 2, unit)}" if len(values) > 1 else ""


def change(before: float | None, after: float | None) -> str:
    if before is None or after is None or abs(before) < 1e-12:
        return ""
    return f"{(after - before) / abs(before) * 100:+.0f}%"


def verdict(oks: list[bool | None]) -> str:
    flags = [ok for ok in oks if ok is not None]
    if not flags:
        return ""
    if all(flags):
        return "PASS"
    return "FAIL" if not any(flags) else f"PASS {sum(flags)}/{len(flags)}"


def table(before: dict[str, Series], after: dict[str, Series]) -> list[str]:
    """The markdown table of both versions (rows in the after run's order)."""
    header = (
        "workload",
        "unit",
        "before",
        "after",
        "change",
        "spread b / a",
        "baseline b / a",
        "target",
        "verdict b / a",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = [*after, *(k for k in before if k not in after)]
    for key in keys:
        b, a = before.get(key), after.get(key)
        any_s = a or b
        assert any_s is not None
        unit = any_s.unit
        mb, ma = (median(s.values) if s else None for s in (b, a))
        bb, ba = (median(s.bases) if s else None for s in (b, a))
        base = f"{fmt(bb, unit)} / {fmt(ba, unit)}" if bb is not None and ba is not None else ""
        cells = (
            any_s.workload,
            unit,
            "" if mb is None else fmt(mb, unit),
            "" if ma is None else fmt(ma, unit),
            change(mb, ma),
            f"{spread(b.values, unit) if b else ''} / {spread(a.values, unit) if a else ''}",
            base,
            any_s.target,
            f"{verdict(b.oks) if b else ''} / {verdict(a.oks) if a else ''}".strip(" /"),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def baseline_drift(before: dict[str, Series], after: dict[str, Series]) -> list[float]:
    """How far each same-code baseline's median moved between the two sides, in percent."""
    drift = []
    for key, b in before.items():
        a = after.get(key)
        if a and b.bases and a.bases:
            mb, ma = statistics.median(b.bases), statistics.median(a.bases)
            if mb and not b.unit.startswith(("KiB", "B/", "MiB")):  # memory does not drift
                drift.append(abs(ma - mb) / abs(mb) * 100)
    return drift


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--before", type=Path, default=Path("/tmp/before/src"), metavar="DIR")
    parser.add_argument("--after", type=Path, default=HERE.parent / "src", metavar="DIR")
    parser.add_argument("--runs", type=int, default=3, help="runs of each version per backend")
    parser.add_argument(
        "--backend", action="append", choices=("asyncio", "trio"), help="repeatable; default both"
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep each run's output here")
    args, extra = parser.parse_known_args()
    if not any(e == "--scale" or e.startswith("--scale=") for e in extra):
        extra += ["--scale", "0"]
    backends = args.backend or ["asyncio", "trio"]
    keep = args.keep or Path(tempfile.mkdtemp(prefix="pipeline-compare-"))
    keep.mkdir(parents=True, exist_ok=True)
    sides = {"before": args.before, "after": args.after}
    print(f"before: {args.before}\nafter: {args.after}\noverhead.py {' '.join(extra)}")
    print(f"outputs in {keep}\n")
    for backend in backends:
        series: dict[str, dict[str, Series]] = {"before": {}, "after": {}}
        for i in range(args.runs):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            for side in order:
                print(f"{backend}: run {i + 1}/{args.runs} {side}", file=sys.stderr, flush=True)
                report = run_once(sides[side], backend, extra, keep / f"{backend}-{side}-{i}.txt")
                collect(series[side], report)
        print(f"### {backend}: medians of {args.runs} alternating runs per side\n")
        print("\n".join(table(series["before"], series["after"])))
        drift = baseline_drift(series["before"], series["after"])
        if drift:
            print(
                f"\nsame-code baselines (anyio, holder) moved {statistics.median(drift):.0f}% "
                f"(median) / {max(drift):.0f}% (max) between the sides: the noise floor.\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
