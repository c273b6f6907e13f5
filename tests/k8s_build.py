"""A small kustomize-equivalent build of `k8s/` for tests on machines without kustomize.

Supports exactly what our kustomizations use: `resources` (files and folders),
`namespace`, `labels` (metadata only), `images` (name → newName/newTag) and `patches`
given by `path` (strategic merge: maps merge, lists of named maps merge by `name`, other
lists replace). `tests/test_k8s.py` checks it against `kubectl kustomize` where kubectl
is installed, so it cannot silently drift from the real tool.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
_POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
}


class KustomizeLiteError(Exception):
    """The kustomization uses something this small builder does not support."""


def build(folder: Path) -> list[Manifest]:
    """Render one kustomization folder (an overlay or the base) into manifests."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
    if unknown := set(spec) - known:
        raise KustomizeLiteError(f"{folder}: unsupported kustomization fields {sorted(unknown)}")
    manifests: list[Manifest] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            manifests.extend(build(path))
        else:
            manifests.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeLiteError(f"{folder}: only `patches: - path:` is supported")
        for patch in yaml.safe_load_all((folder / patch_entry["path"]).read_text()):
            _apply_patch(manifests, patch, folder / patch_entry["path"])
    for label_set in spec.get("labels", []):
        if label_set.get("includeSelectors") or label_set.get("includeTemplates"):
            raise KustomizeLiteError("labels on selectors/templates are not supported")
        for manifest in manifests:
            manifest.setdefault("metadata", {}).setdefault("labels", {}).update(label_set["pairs"])
    if namespace := spec.get("namespace"):
        for manifest in manifests:
            if manifest["kind"] not in CLUSTER_SCOPED_KINDS:
                manifest["metadata"]["namespace"] = namespace
    for image in spec.get("images", []):
        for manifest in manifests:
            for container in pod_containers(manifest):
                if container.get("image", "").split(":")[0] == image["name"]:
                    name = image.get("newName", image["name"])
                    tag = image.get("newTag")
                    container["image"] = f"{name}:{tag}" if tag else name
    return manifests


def pod_containers(manifest: Manifest) -> list[dict[str, Any]]:
    """Init and regular containers of a workload's pod template (empty for other kinds)."""
    pod = pod_spec(manifest)
    if pod is None:
        return []
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def pod_spec(manifest: Manifest) -> dict[str, Any] | None:
    """The pod spec inside a Deployment/StatefulSet/Job, else None."""
    path = _POD_TEMPLATE_PATHS.get(manifest.get("kind", ""))
    if path is None:
        return None
    node: Any = manifest
    for key in path:
        node = node[key]
    return node


def _apply_patch(manifests: list[Manifest], patch: Manifest, source: Path) -> None:
    for manifest in manifests:
        if (manifest["kind"], manifest["metadata"]["name"]) == (
            patch["kind"],
            patch["metadata"]["name"],
        ):
            merged = strategic_merge(manifest, patch)
            manifest.clear()
            manifest.update(merged)
            return
    raise KustomizeLiteError(f"{source}: no {patch['kind']} {patch['metadata']['name']!r}")


def strategic_merge(base: Any, patch: Any) -> Any:
    """Merge `patch` into a copy of `base` the way our patches need it."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    if _named_list(base) and _named_list(patch):
        merged_list = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                i = index[item["name"]]
                merged_list[i] = strategic_merge(merged_list[i], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _named_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(i, dict) and "name" in i for i in value)
    )
