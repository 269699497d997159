"""The lock files (requirements/*.txt, made by `make lock`) must stay in step with pyproject.toml.

A dependency added to or narrowed in pyproject.toml without `make lock` would install in development (from the
range) but not in the image or CI (from the lock): this fails first, naming the package.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)")


def locked(name: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def declared(*, extras: bool) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    if extras:
        for group in project.get("optional-dependencies", {}).values():
            specs.extend(group)
    return [Requirement(spec) for spec in specs]


@pytest.mark.parametrize(("lock", "extras"), [("runtime.txt", False), ("dev.txt", True)])
def test_every_declared_dependency_is_locked_within_its_range(lock: str, extras: bool) -> None:
    pins = locked(lock)
    problems = []
    for req in declared(extras=extras):
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name} is not in requirements/{lock}")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} in requirements/{lock} is outside {req.specifier}")
    assert not problems, "run `make lock`: " + "; ".join(problems)


def test_every_pin_carries_hashes() -> None:
    for lock in ("runtime.txt", "dev.txt"):
        text = (ROOT / "requirements" / lock).read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
        for block in blocks:
            if PIN.match(block):
                assert "--hash=sha256:" in block, f"{block.splitlines()[0]} in requirements/{lock} has no hash"


def test_runtime_lock_is_a_subset_of_the_dev_lock() -> None:
    # the image (runtime.txt) and the tests (dev.txt) must run the same versions of what they share
    runtime, dev = locked("runtime.txt"), locked("dev.txt")
    differ = {name: (str(v), str(dev.get(name))) for name, v in runtime.items() if dev.get(name) != v}
    assert not differ, f"run `make lock`: runtime and dev locks disagree on {differ}"
