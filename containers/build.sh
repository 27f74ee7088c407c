#!/usr/bin/env bash
# Build and tag the three images with the version in components/_image.py (make images).
#   bash containers/build.sh           build components, trainer and triton
#   bash containers/build.sh --print   print the docker commands without running them
#   PUSH=1 bash containers/build.sh    also push the tags
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
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

for i in "${!ORDER[@]}"; do
  name="${ORDER[$i]}"
  tag="${TAGS[$i]}"
  "${RUN[@]}" docker build --file "${DOCKERFILE[$name]}" --tag "$tag" "$ROOT"
  if [[ "${PUSH:-0}" == "1" ]]; then
    "${RUN[@]}" docker push "$tag"
  fi
done
