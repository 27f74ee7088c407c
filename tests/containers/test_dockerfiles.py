"""The Dockerfiles: COPY sources exist, bases and packages are pinned and agree with
pyproject, the images run as a non-root user, and build.sh tags with the image constants."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from components._image import COMPONENTS_IMAGE, SPARK_IMAGE, TRAINER_IMAGE, TRITON_IMAGE

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
DOCKERFILES = sorted(CONTAINERS.glob("Dockerfile.*[!e]"), key=lambda p: p.name)
PIN = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[\w,]+\])?)==([\w.+-]+)")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs.extend(extra)
    pins = {}
    for spec in specs:
        name, _, version = spec.partition("==")
        pins[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
    return pins


TAGS = {"components": COMPONENTS_IMAGE, "trainer": TRAINER_IMAGE, "triton": TRITON_IMAGE, "spark": SPARK_IMAGE}


def test_the_four_images_have_dockerfiles():
    assert [p.name for p in DOCKERFILES] == [
        "Dockerfile.components",
        "Dockerfile.spark",
        "Dockerfile.trainer",
        "Dockerfile.triton",
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_reach_the_build_context(dockerfile):
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    copies = [args for word, args in instructions(dockerfile) if word in ("COPY", "ADD")]
    assert copies, f"{dockerfile.name} copies nothing"
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY source {source} does not exist"
            assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), (
                f"{dockerfile.name}: COPY source {source} is excluded by .dockerignore"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_build_arguments_whose_defaults_are_pinned_public_images(dockerfile):
    rows = instructions(dockerfile)
    defaults = dict(args.split("=", 1) for word, args in rows if word == "ARG" and "=" in args)
    bases = [args.split()[0] for word, args in rows if word == "FROM"]
    assert bases
    for base in bases:
        assert re.fullmatch(r"\$\{\w+\}", base), f"{dockerfile.name}: FROM {base} is not a build argument"
        base = defaults[base[2:-1]]
        name, _, tag = base.rpartition(":")
        assert name and "/" not in tag, f"{dockerfile.name}: base image {base} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{dockerfile.name}: base {base} is not pinned"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_package_pins_agree_with_pyproject(dockerfile):
    pins = pyproject_pins()
    installs = [args for word, args in instructions(dockerfile) if word == "RUN" and "pip install" in args]
    assert installs, f"{dockerfile.name} installs no Python packages"
    for args in installs:
        for name, version in PIN.findall(args):
            key = re.sub(r"\[.*\]", "", name).lower().replace("_", "-")
            assert key in pins, f"{dockerfile.name}: {name}=={version} is not pinned in pyproject.toml"
            assert pins[key] == version, f"{dockerfile.name}: {name}=={version}, pyproject pins {pins[key]}"
        unpinned = re.findall(r"pip install(?:\s+--\S+(?:\s+\"?\$?\w+\"?)?)*\s+(?:-U|--upgrade)\b", args)
        assert not unpinned, f"{dockerfile.name}: pip install --upgrade is not reproducible"
    # every other version comes from containers/requirements.lock (tests/containers/test_lock.py):
    # all of it, or (the Spark image) the packages named, constrained to it
    lock = ("--requirement /tmp/requirements.lock", "--constraint /tmp/requirements.lock")
    assert any(flag in args for args in installs for flag in lock), f"{dockerfile.name}: no lock"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root(dockerfile):
    users = [args for word, args in instructions(dockerfile) if word == "USER"]
    assert users, f"{dockerfile.name} sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name} runs as root"


def _printed(*args: str, **env: str) -> list[str]:
    out = subprocess.run(
        ["bash", str(CONTAINERS / "build.sh"), "--print", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return out.stdout.splitlines()


def test_build_script_tags_with_the_image_constant():
    lines = _printed()
    assert len(lines) == 4
    for line, (name, tag) in zip(lines, TAGS.items(), strict=True):
        assert f"--tag {tag} " in line and f"--file containers/Dockerfile.{name} " in line


def test_build_script_builds_the_images_named_with_their_own_build_arguments():
    (spark,) = _printed("spark", LOCAL_BASE="1")
    assert f"--tag {SPARK_IMAGE} " in spark and "BASE_IMAGE=unisup/base-local:bookworm" in spark
    assert "TORCH_INDEX_URL" not in spark and "GCS_CONNECTOR_URL" not in spark
    url = "https://repo1.maven.org/maven2/x.jar"
    (spark,) = _printed("spark", GCS_CONNECTOR_URL=url)
    assert f"--build-arg GCS_CONNECTOR_URL={url} " in spark
    components, triton = _printed("triton", "components", LOCAL_BASE="1")
    assert "TORCH_INDEX_URL=https://pypi.org/simple" in components and "TRITONSERVER=pytriton" in triton
    wrong = subprocess.run(["bash", str(CONTAINERS / "build.sh"), "--print", "hive"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "no image 'hive'" in wrong.stderr


def test_the_spark_image_gets_the_gcs_connector_only_when_asked():
    rows = instructions(CONTAINERS / "Dockerfile.spark")
    args = dict(a.split("=", 1) if "=" in a else (a, None) for word, a in rows if word == "ARG")
    assert args["GCS_CONNECTOR_URL"] == "" and args["GCS_CONNECTOR_SHA256"] == ""
    documented = re.findall(r"https://\S+\.jar", (CONTAINERS / "Dockerfile.spark").read_text())
    assert documented and all(
        u.startswith("https://repo1.maven.org/maven2/com/google/cloud/bigdataoss/gcs-connector/hadoop3-")
        and u.endswith("-shaded.jar")
        for u in documented
    )
    assert any(word == "ENTRYPOINT" and "/opt/unisup/entrypoint.sh" in a for word, a in rows)


def test_build_script_fails_clearly_without_docker(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("python3", "dirname", "bash"):
        (bindir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    env = {**os.environ, "PATH": str(bindir)}
    out = subprocess.run(["bash", str(CONTAINERS / "build.sh")], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "no 'docker' command" in out.stderr


def test_a_push_refuses_a_tag_the_registry_already_has(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    docker = bindir / "docker"  # a registry that has every tag: manifest inspect succeeds
    docker.write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\nexit 0\n')
    docker.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PUSH": "1", "LOCAL_BASE": "0"}
    out = subprocess.run(["bash", str(CONTAINERS / "build.sh"), "trainer"], capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert f"{TAGS['trainer']} is already in the registry" in out.stderr and "__version__" in out.stderr
    made = calls.read_text().splitlines()
    assert f"manifest inspect {TAGS['trainer']}" in made
    assert not [c for c in made if c.startswith(("build", "push"))]
