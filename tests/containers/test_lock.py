"""containers/requirements.lock: every pin of pyproject.toml (dependencies, the triton and spark
extras) at the same version, every package pinned once, the build backend included, and each
Dockerfile installing the lock (or packages of it) in a layer before the package, which comes
with --no-deps."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.containers.test_dockerfiles import DOCKERFILES, instructions

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "containers" / "requirements.lock"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.sub(r"\[.*\]", "", name)).lower()


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][\w.]*)", line.strip())
            assert match, f"requirements.lock: {line!r} is not name==version"
            name = canonical(match[1])
            assert name not in pins, f"requirements.lock pins {name} twice"
            pins[name] = match[2]
    return pins


def test_lock_covers_every_pin_of_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    extras = project["optional-dependencies"]
    for spec in project["dependencies"] + extras["triton"] + extras["spark"]:
        name, _, version = spec.partition("==")
        assert version, f"pyproject.toml: {spec} is not pinned"
        assert canonical(name) in pins, f"{spec} is not in requirements.lock: rerun containers/lock.sh"
        assert pins[canonical(name)] == version, (
            f"pyproject.toml pins {spec}, requirements.lock has {pins[canonical(name)]}: rerun containers/lock.sh"
        )
    assert "unisup" not in pins


def test_lock_holds_the_build_backend_the_image_builds_with():
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = lock_pins()
    for spec in build:
        name, _, minimum = spec.partition(">=")
        assert canonical(name) in pins, f"build requirement {spec} is not in requirements.lock"
        if minimum:
            have = tuple(int(p) for p in pins[canonical(name)].split(".")[:2])
            assert have >= tuple(int(p) for p in minimum.split(".")[:2]), f"{name} {pins[canonical(name)]} < {minimum}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_come_from_the_lock_before_the_package_without_its_dependencies(dockerfile):
    rows = instructions(dockerfile)
    runs = [i for i, (word, args) in enumerate(rows) if word == "RUN" and "pip install" in args]
    flags = ("--requirement /tmp/requirements.lock", "--constraint /tmp/requirements.lock")
    lock = [i for i in runs if any(flag in rows[i][1] for flag in flags)]
    package = [i for i in runs if "/tmp/unisup" in rows[i][1]]
    assert len(lock) == 1 and len(package) == 1, f"{dockerfile.name}: one lock install and one package install"
    assert "--no-deps" in rows[package[0]][1] and "pip check" in rows[package[0]][1]
    code = min(i for i, (word, args) in enumerate(rows) if word == "COPY" and args.startswith("unisup "))
    assert lock[0] < code < package[0], f"{dockerfile.name}: the dependency layer must come before the code is copied"
    copied_before = [args for word, args in rows[: lock[0]] if word == "COPY"]
    assert all("pyproject" not in args and "unisup" not in args.split()[0] for args in copied_before)


def test_the_spark_image_installs_packages_of_the_lock_the_spark_extra_included():
    rows = instructions(REPO / "containers" / "Dockerfile.spark")
    (install,) = [args for word, args in rows if word == "RUN" and "--constraint /tmp/requirements.lock" in args]
    command = install.split("&&")[0].split()
    names = [canonical(word) for word in command[command.index("/tmp/requirements.lock") + 1 :]]
    pins = lock_pins()
    assert names and all(name in pins for name in names), f"not in requirements.lock: {set(names) - set(pins)}"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {canonical(spec.partition("==")[0]) for spec in project["optional-dependencies"]["spark"]} <= set(names)
    assert "torch" not in names
