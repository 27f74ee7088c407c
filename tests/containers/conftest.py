"""Docker fixtures: the images, built once per session by containers/build.sh (LOCAL_BASE=1 in
the environment builds them on a base made from Debian packages, for hosts that reach no image
registry): all four, or the Spark image alone for the tests that need only it. Tests that use
them skip, with the reason, only when no Docker engine answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components._image import COMPONENTS_IMAGE, SPARK_IMAGE, TRAINER_IMAGE, TRITON_IMAGE

REPO = Path(__file__).resolve().parents[2]


def build_images(*names: str) -> None:
    """Run containers/build.sh for the images named (all when none); skip when no engine answers."""
    docker = pytest.importorskip("docker", reason="the docker package is in the dev extra")
    try:
        docker.from_env().ping()
    except Exception as err:  # no engine: the docker marker's tests cannot run here
        pytest.skip(f"no Docker engine reachable ({type(err).__name__}); .ci/run installs and starts one")
    build = subprocess.run(
        ["bash", str(REPO / "containers" / "build.sh"), *names],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert build.returncode == 0, f"containers/build.sh failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Build the four images (cached layers make a rebuild quick); their tags."""
    build_images()
    return {"components": COMPONENTS_IMAGE, "trainer": TRAINER_IMAGE, "triton": TRITON_IMAGE, "spark": SPARK_IMAGE}


@pytest.fixture(scope="session")
def spark_image() -> str:
    """The Spark image alone (with the images fixture too, its second build is all cache hits); its tag."""
    build_images("spark")
    return SPARK_IMAGE
