"""Where the KServe CRDs come from: a folder given by the user, or the pinned
release downloaded once and cached under ``~/.cache/ragserve/crds/<version>``
(:mod:`ragserve.kserve_release`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ragserve.kserve_release import CRDS, KSERVE_RELEASE, ReferenceUnavailable

from .problem import ManifestError
from .render import _Loader

CRD_FILES = CRDS.files
BASE_URL_ENV = CRDS.mirror_env


@dataclass
class CrdCatalog:
    """openAPIV3Schema of every served version of every CRD, by (apiVersion, kind)."""

    schemas: dict[tuple[str, str], dict] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    source: str = ""
    validators: dict = field(default_factory=dict, repr=False, compare=False)
    """Compiled validators, filled by :mod:`.schema` on first use."""

    def schema(self, api_version: str, kind: str) -> dict | None:
        return self.schemas.get((api_version, kind))

    def owns(self, api_version: str) -> bool:
        """Whether the apiVersion's group is one these CRDs define."""
        return api_version.split("/")[0] in self.groups


def catalog_from_documents(docs: list[dict], source: str) -> CrdCatalog:
    cat = CrdCatalog(source=source)
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        cat.groups.add(spec["group"])
        for version in spec.get("versions", []):
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if version.get("served", True) and schema:
                cat.schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return cat


@functools.lru_cache(maxsize=8)
def load_crd_dir(path: str) -> CrdCatalog:
    """Every CustomResourceDefinition in the YAML files of ``path`` (parsed once per process)."""
    folder = Path(path)
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    docs = [doc for f in files for doc in yaml.load_all(f.read_text(), Loader=_Loader)]
    cat = catalog_from_documents(docs, str(folder))
    if not cat.schemas:
        raise ManifestError(f"{folder}: no CustomResourceDefinition found")
    return cat


def cached_crd_dir(version: str = KSERVE_RELEASE) -> Path:
    return CRDS.cached(version)


def download_crds(version: str = KSERVE_RELEASE, base_url: str | None = None) -> Path:
    """Fetch the release's CRDs into the cache unless already there; return the folder."""
    try:
        return CRDS.fetch(version, base_url)
    except ReferenceUnavailable as exc:
        raise ManifestError(f"{exc}, or pass --crd-dir") from None


def crd_catalog(crd_dir: Path | str | None = None, version: str = KSERVE_RELEASE) -> CrdCatalog:
    """The catalog from ``crd_dir`` if given, else from the cached (or downloaded) release."""
    folder = Path(crd_dir) if crd_dir else download_crds(version)
    if not folder.is_dir():
        raise ManifestError(f"--crd-dir {folder}: not a directory")
    return load_crd_dir(str(folder.resolve()))
