"""Render a kustomization without the kustomize binary.

Supports the subset of kustomize these manifests use: ``resources`` (files and nested
kustomization folders), ``namespace`` (also on RoleBinding subjects that name a service
account of the build), ``labels`` (``pairs``, ``includeTemplates``; selectors untouched) and
``patches`` holding JSON 6902 operations (inline ``patch`` or ``path``) with a ``target``.
Anything else in a kustomization.yaml is refused, so a rendering never silently differs
from ``kustomize build``. ``python -m manifests.render manifests/overlays/prod`` prints the
objects as a YAML stream (pipe it to ``kubectl apply -f -``).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "patches"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class KustomizeError(ValueError):
    """A kustomization uses a feature this renderer does not support, or is malformed."""


def _load_yaml_stream(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    meta = obj.get("metadata", {})
    checks = {"kind": obj.get("kind"), "name": meta.get("name"), "namespace": meta.get("namespace")}
    return all(checks.get(key) == value for key, value in target.items() if key in checks)


def _apply_patches(objects: list[dict[str, Any]], patches: list[dict[str, Any]], folder: Path) -> None:
    for entry in patches:
        text = (folder / entry["path"]).read_text() if "path" in entry else entry.get("patch", "")
        operations = yaml.safe_load(text)
        if not isinstance(operations, list):
            raise KustomizeError(f"{folder}: only JSON 6902 patches (a list of operations) are supported")
        target = entry.get("target")
        if not target:
            raise KustomizeError(f"{folder}: a JSON 6902 patch needs a target")
        hits = [i for i, obj in enumerate(objects) if _matches(obj, target)]
        if not hits:
            raise KustomizeError(f"{folder}: patch target {target} matches no object")
        for i in hits:
            objects[i] = jsonpatch.apply_patch(objects[i], operations)


def _set_namespace(objects: list[dict[str, Any]], namespace: str) -> None:
    accounts = {o["metadata"]["name"] for o in objects if o.get("kind") == "ServiceAccount"}
    for obj in objects:
        if obj.get("kind") not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = namespace
        if obj.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount" and subject.get("name") in accounts:
                    subject["namespace"] = namespace


def _add_labels(objects: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    if spec.get("includeSelectors"):
        raise KustomizeError("labels with includeSelectors: true are not supported")
    pairs = spec.get("pairs", {})
    for obj in objects:
        obj.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if spec.get("includeTemplates") and obj.get("kind") in POD_TEMPLATE_KINDS:
            template = obj["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(pairs)


def render(folder: str | Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build folder`` would produce, in resource order."""
    folder = Path(folder)
    kustomization_path = folder / "kustomization.yaml"
    if not kustomization_path.exists():
        raise KustomizeError(f"{folder}: no kustomization.yaml")
    kustomization = yaml.safe_load(kustomization_path.read_text()) or {}
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{kustomization_path}: unsupported keys {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        objects.extend(render(path) if path.is_dir() else copy.deepcopy(_load_yaml_stream(path)))
    _apply_patches(objects, kustomization.get("patches", []), folder)
    if "namespace" in kustomization:
        _set_namespace(objects, kustomization["namespace"])
    for spec in kustomization.get("labels", []):
        _add_labels(objects, spec)
    return objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a kustomization folder to a YAML stream.")
    parser.add_argument("folder", help="e.g. manifests/overlays/prod")
    args = parser.parse_args(argv)
    yaml.safe_dump_all(render(args.folder), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
