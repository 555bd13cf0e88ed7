"""Write ``requirements-lock.txt``: the exact versions of promptbench's dependency closure (``.[dev]``) in the
current environment, i.e. the versions the test suite was run with.

    python scripts/write_lock.py            # rewrite the lock from this environment
    python scripts/write_lock.py --check    # exit 1 when this environment differs from the lock

The closure follows each installed distribution's requirements (markers evaluated for this machine) from
pyproject.toml's ``dependencies`` and the ``dev`` extra. torch's hardware-specific dependencies (``nvidia-*``,
``triton``, ``cuda-*``) are left out and torch/torchvision are pinned without their local label (``+cu130``,
``+cpu``), so the same lock installs on a CPU-only laptop (``--index-url .../whl/cpu`` for torch) and on a GPU
node. docs/install.md, "Exact versions (lock file)", says when to use it.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's vendored copy
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"
#: torch's hardware-specific wheels: chosen by torch's own metadata for the machine, never locked here
HARDWARE_PREFIXES = ("nvidia-", "cuda-", "triton")
HEADER = """\
# Exact versions the test suite passes with (promptbench's .[dev] dependency closure), written by
# scripts/write_lock.py from the environment `make test` ran in. For paper reproductions (tokenisation is decided
# by open_clip_torch, transformers and timm):  pip install -r requirements-lock.txt -e .
# pyproject.toml keeps open ranges for everyday use; torch/torchvision agree with constraints.txt.
# torch's hardware-specific wheels (nvidia-*, triton) are left to torch's own metadata.
"""


def project_requirements(pyproject: Path = ROOT / "pyproject.toml", extras: tuple[str, ...] = ("dev",)
                         ) -> list[Requirement]:
    """pyproject.toml's ``dependencies`` plus the named optional extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project.get("optional-dependencies", {}).get(extra, [])
    return [Requirement(line) for line in lines]


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def closure(roots: list[Requirement]) -> dict[str, str]:
    """``{canonical name: installed version}`` of every installed distribution ``roots`` require, transitively."""
    found: dict[str, str] = {}
    todo = [(r, set()) for r in roots]
    while todo:
        req, extras = todo.pop()
        if not _applies(req, extras):
            continue
        name = canonicalize_name(req.name)
        if name.startswith(HARDWARE_PREFIXES) or name == "promptbench":
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement not installed here
        new = name not in found
        found[name] = Version(dist.version).public  # 2.14.1+cu130 -> 2.14.1
        if new or req.extras:
            wanted = set(req.extras)
            todo += [(Requirement(r), wanted) for r in dist.requires or []]
    return dict(sorted(found.items()))


def lock_text(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in pins.items())


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare this environment with the lock (exit 1)")
    args = parser.parse_args(argv)
    pins = closure(project_requirements())
    if args.check:
        locked = read_lock()
        diff = [f"{n}: lock {locked.get(n)}, installed {pins.get(n)}" for n in sorted(set(locked) | set(pins))
                if locked.get(n) != pins.get(n)]
        print("\n".join(diff) if diff else f"{LOCK.name}: this environment matches ({len(pins)} packages)")
        return 1 if diff else 0
    LOCK.write_text(lock_text(pins))
    print(f"wrote {LOCK} ({len(pins)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
