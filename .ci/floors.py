"""Pin every runtime dependency to the floor pyproject.toml allows.

    python .ci/floors.py            # print pip constraints: one `name==floor` per dependency
    python .ci/floors.py --check    # exit 1 unless the running interpreter has exactly those

The floors are read from `[project].dependencies` (each must be `name>=X`), so they cannot drift
from what pyproject.toml promises. Used by `make test-floors`.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# name, optional [extras], then exactly one `>=` floor (an upper bound after a comma is allowed).
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")


def floors() -> dict[str, str]:
    """Return {distribution name: floor version} for `[project].dependencies`."""
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins: dict[str, str] = {}
    for dep in deps:
        match = _REQ.match(dep)
        if match is None:
            sys.exit(
                f"floors.py: dependency {dep!r} in {PYPROJECT} [project].dependencies has no "
                "'>=' floor; give it one (e.g. 'name>=1.2') so CI can test the oldest allowed."
            )
        pins[match.group(1)] = match.group(2)
    return pins


def _norm(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def main(argv: list[str]) -> int:
    """Print the constraints, or with --check verify the installed versions equal them."""
    pins = floors()
    if argv == ["--check"]:
        bad = []
        for name, floor in pins.items():
            have = metadata.version(name)
            sys.stdout.write(f"floors: {name} {have} (floor {floor})\n")
            if _norm(have) != _norm(floor):
                bad.append(f"{name} is {have}, not its floor {floor}")
        if bad:
            sys.stderr.write("floors.py: " + "; ".join(bad) + "\n")
            return 1
        return 0
    if argv:
        sys.stderr.write(__doc__ or "")
        return 2
    for name, floor in pins.items():
        sys.stdout.write(f"{name}=={floor}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
