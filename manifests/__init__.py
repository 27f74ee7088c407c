"""Kubernetes manifests (kustomize base and overlays) and a Python renderer for them."""
