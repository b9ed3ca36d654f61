"""Manifests -> a list of objects: ``kubectl kustomize`` for kustomizations, plain YAML otherwise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from .problem import ManifestError

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def is_kustomization(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in KUSTOMIZATION_FILES)


def render(path: Path) -> list[dict]:
    """Objects of a kustomization directory, a YAML file, or every YAML file of a folder."""
    path = Path(path)
    if is_kustomization(path):
        return load_documents(kustomize(path), str(path))
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if not files:
            raise ManifestError(f"{path}: no kustomization and no YAML files")
        return [obj for f in files for obj in load_documents(f.read_text(), str(f))]
    if path.is_file():
        return load_documents(path.read_text(), str(path))
    raise ManifestError(f"{path}: no such file or directory")


def kustomize(path: Path) -> str:
    """Render with kubectl's built-in kustomize (or a standalone ``kustomize``)."""
    if kubectl := shutil.which("kubectl"):
        cmd = [kubectl, "kustomize", str(path)]
    elif standalone := shutil.which("kustomize"):
        cmd = [standalone, "build", str(path)]
    else:
        raise ManifestError("rendering a kustomization needs `kubectl` (or `kustomize`) on PATH")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ManifestError(f"{path}: kustomize failed: {proc.stderr.strip()}")
    return proc.stdout


def load_documents(text: str, source: str = "<yaml>") -> list[dict]:
    """Every non-empty YAML document as an object; ``kind: List`` items are flattened."""
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: invalid YAML: {exc}") from None
    objects: list[dict] = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            raise ManifestError(f"{source}: a document is not a Kubernetes object (no `kind`)")
        is_list = doc["kind"].endswith("List") and isinstance(doc.get("items"), list)
        objects.extend(doc["items"] if is_list else [doc])
    return objects
