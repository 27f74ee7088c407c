#!/usr/bin/env bash
# Build and tag the images with the version in components/_image.py (make images).
#   bash containers/build.sh           build components, trainer, triton and spark from the public bases
#   bash containers/build.sh spark     build only the images named (components trainer triton spark)
#   bash containers/build.sh --print   print the docker commands without running them
#   PUSH=1 bash containers/build.sh    also push the tags (refused for a tag the registry has)
#   LOCAL_BASE=1 bash containers/build.sh
#       for hosts that reach the package registries but no image registry: build on a Python
#       base made from Debian packages (containers/make_base_image.sh, made when missing),
#       with this host's torch wheel, a CPU trainer (faiss-cpu), and a Triton image whose server
#       is the tritonserver binary of nvidia-pytriton (TRITONSERVER=pytriton; CPU, python backend
#       only) instead of the NGC base's, and a Spark image without the GCS connector. Never pushed.
#   GCS_CONNECTOR_URL=https://... bash containers/build.sh spark
#       put the GCS connector jar (gs:// for Spark) in the Spark image (see containers/Dockerfile.spark)
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
for name in ("COMPONENTS_IMAGE", "TRAINER_IMAGE", "TRITON_IMAGE", "SPARK_IMAGE"):
    print(image[name])
')
declare -A DOCKERFILE=(
  [components]=containers/Dockerfile.components
  [trainer]=containers/Dockerfile.trainer
  [triton]=containers/Dockerfile.triton
  [spark]=containers/Dockerfile.spark
)
ORDER=(components trainer triton spark)
BUILD_ARGS=()

PRINT=0
if [[ "${1:-}" == "--print" ]]; then
  PRINT=1
  shift
fi
# The images asked for (all by default), each by its name in ORDER.
declare -A WANTED=()
for name in "${@:-${ORDER[@]}}"; do
  [[ -n "${DOCKERFILE[$name]:-}" ]] || { echo "build.sh: no image '$name' (expected: ${ORDER[*]})" >&2; exit 2; }
  WANTED[$name]=1
done
NEEDS_TORCH=0
for name in components trainer triton; do [[ -n "${WANTED[$name]:-}" ]] && NEEDS_TORCH=1; done

if [[ "$PRINT" == 1 ]]; then
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
    [[ "$NEEDS_TORCH" == 0 ]] || ls containers/wheels/torch-2.13.0*.whl >/dev/null 2>&1 \
      || PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/cpu" "$PYTHON" -m pip download -q --no-deps \
           --only-binary=:all: torch==2.13.0 -d containers/wheels
  fi
  BUILD_ARGS=(--build-arg "BASE_IMAGE=$LOCAL_BASE_IMAGE")
fi

# Tags are immutable: KFP's cache key holds the image reference, so a tag pushed again over
# other contents would let cached task results of the old image stand for the new one. A push
# refuses, before any build, a tag the registry already has: a changed image is a new version.
if [[ "${PUSH:-0}" == "1" && -z "${RUN[*]}" ]]; then
  for i in "${!ORDER[@]}"; do
    [[ -n "${WANTED[${ORDER[$i]}]:-}" ]] || continue
    if docker manifest inspect "${TAGS[$i]}" >/dev/null 2>&1; then
      echo "build.sh: ${TAGS[$i]} is already in the registry; tags are never pushed twice:" \
        "release a new version (__version__ in unisup/__init__.py, which the tags take)" >&2
      exit 2
    fi
  done
fi

for i in "${!ORDER[@]}"; do
  name="${ORDER[$i]}"
  tag="${TAGS[$i]}"
  [[ -n "${WANTED[$name]:-}" ]] || continue
  extra=()
  if [[ "$LOCAL_BASE" == "1" && "$name" != "spark" ]]; then
    extra=(--build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
  fi
  if [[ "$LOCAL_BASE" == "1" ]]; then
    [[ "$name" == "trainer" ]] && extra+=(--build-arg "FAISS_GPU=")
    [[ "$name" == "triton" ]] && extra+=(--build-arg "TRITONSERVER=pytriton")
  fi
  if [[ "$name" == "spark" && -n "${GCS_CONNECTOR_URL:-}" ]]; then
    extra+=(--build-arg "GCS_CONNECTOR_URL=$GCS_CONNECTOR_URL" --build-arg "GCS_CONNECTOR_SHA256=${GCS_CONNECTOR_SHA256:-}")
  fi
  "${RUN[@]}" docker build --file "${DOCKERFILE[$name]}" --tag "$tag" "${BUILD_ARGS[@]}" "${extra[@]}" "$ROOT"
  if [[ "${PUSH:-0}" == "1" ]]; then
    "${RUN[@]}" docker push "$tag"
  fi
done
