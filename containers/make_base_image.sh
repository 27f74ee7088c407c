#!/usr/bin/env bash
# Make a Python 3.11 base image from Debian packages, for hosts that reach the package
# registries but no image registry (make images LOCAL_BASE=1). Runs as root.
#   bash containers/make_base_image.sh [TAG]      default tag: unisup/base-local:bookworm
# The image trusts the CA bundle this host trusts (copied in), so pip inside it reaches the
# registries through a re-signing proxy as the host does. Needs debootstrap and a Docker engine.
set -euo pipefail
TAG="${1:-unisup/base-local:bookworm}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_CA="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

for tool in debootstrap docker; do
  command -v "$tool" >/dev/null || { echo "make_base_image.sh: needs '$tool' on PATH" >&2; exit 1; }
done
[[ "$(id -u)" == 0 ]] || { echo "make_base_image.sh: debootstrap needs root" >&2; exit 1; }
[[ -f "$HOST_CA" ]] || { echo "make_base_image.sh: no CA bundle at $HOST_CA (set HOST_CA_BUNDLE)" >&2; exit 1; }

ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,libpython3.11,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR"
install -m 0644 "$HOST_CA" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "$TAG"
docker run --rm "$TAG" python3 --version
echo "made $TAG"
