#!/usr/bin/env bash
# Build and tag the images with the version in components/_image.py (make images).
#   bash containers/build.sh           build components, trainer and triton from the public bases
#   bash containers/build.sh --print   print the docker commands without running them
#   PUSH=1 bash containers/build.sh    also push the tags
#   LOCAL_BASE=1 bash containers/build.sh
#       for hosts that reach the package registries but no image registry: build on a Python
#       base made from Debian packages (containers/make_base_image.sh, made when missing),
#       with this host's torch wheel, a CPU trainer (faiss-cpu), and a Triton image whose server
#       is the tritonserver binary of nvidia-pytriton (TRITONSERVER=pytriton; CPU, python backend
#       only) instead of the NGC base's. Never pushed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
LOCAL_BASE="${LOCAL_BASE:-0}"
LOCAL_BASE_IMAGE="${LOCAL_BASE_IMAGE:-unisup/base-local:bookworm}"
# The tags come from the one image constant every component uses.
mapfile -t TAGS < <("$PYTHON" -c '
import runpy
image = runpy.run_path("components/_image.py")
for name in ("COMPONENTS_IMAGE", "TRAINER_IMAGE", "TRITON_IMAGE"):
    print(image[name])
')
declare -A DOCKERFILE=(
  [components]=containers/Dockerfile.components
  [trainer]=containers/Dockerfile.trainer
  [triton]=containers/Dockerfile.triton
)
ORDER=(components trainer triton)
BUILD_ARGS=()

if [[ "${1:-}" == "--print" ]]; then
  RUN=(echo)
else
  if ! command -v docker >/dev/null 2>&1; then
    echo "build.sh: no 'docker' command on PATH: install a Docker engine (or run with --print to see the commands)" >&2
    exit 1
  fi
  if ! docker info >/dev/null 2>&1; then
    echo "build.sh: 'docker info' failed: no Docker engine is reachable (is the daemon running?)" >&2
    exit 1
  fi
  RUN=()
fi

if [[ "$LOCAL_BASE" == "1" ]]; then
  if [[ "${PUSH:-0}" == "1" ]]; then
    echo "build.sh: LOCAL_BASE=1 images are for this host only; they are never pushed" >&2
    exit 2
  fi
  if [[ -z "${RUN[*]}" ]]; then
    docker image inspect "$LOCAL_BASE_IMAGE" >/dev/null 2>&1 || bash containers/make_base_image.sh "$LOCAL_BASE_IMAGE"
    # The host's pip resolves torch==2.13.0 to its CPU build (a local wheel or the CPU index).
    ls containers/wheels/torch-2.13.0*.whl >/dev/null 2>&1 \
      || PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/cpu" "$PYTHON" -m pip download -q --no-deps \
           --only-binary=:all: torch==2.13.0 -d containers/wheels
  fi
  BUILD_ARGS=(--build-arg "BASE_IMAGE=$LOCAL_BASE_IMAGE" --build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
fi

for i in "${!ORDER[@]}"; do
  name="${ORDER[$i]}"
  tag="${TAGS[$i]}"
  extra=()
  if [[ "$LOCAL_BASE" == "1" ]]; then
    [[ "$name" == "trainer" ]] && extra=(--build-arg "FAISS_GPU=")
    [[ "$name" == "triton" ]] && extra=(--build-arg "TRITONSERVER=pytriton")
  fi
  "${RUN[@]}" docker build --file "${DOCKERFILE[$name]}" --tag "$tag" "${BUILD_ARGS[@]}" "${extra[@]}" "$ROOT"
  if [[ "${PUSH:-0}" == "1" ]]; then
    "${RUN[@]}" docker push "$tag"
  fi
done
