"""Reference files from the pinned KServe release: its CRDs (what `ragserve validate`
checks against) and the Open Inference Protocol REST spec (what the fuzz tests
generate requests from).

Each set is downloaded once into ``~/.cache/ragserve/<set>/<version>`` from the
release's tag on GitHub, or from a mirror named by an env var (an ``http(s)://``
or ``file://`` URL of a folder holding the same file names). Nothing here reads a
sibling checkout: a mirror is always an explicit setting.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ragserve.errors import RagserveError
from ragserve.model_assets import cache_dir

# Keep it in step with the `kserve==` pin in pyproject.toml (a test checks).
KSERVE_RELEASE = "v0.21.0"
_GITHUB = "https://raw.githubusercontent.com/kserve/kserve/{version}/"


class ReferenceUnavailable(RagserveError):
    """A pinned reference file is neither cached nor downloadable."""


@dataclass(frozen=True)
class PinnedFiles:
    """A set of files from one folder of the KServe repository, at a release tag."""

    key: str
    """Cache folder name (``~/.cache/ragserve/<key>/<version>``)."""
    files: tuple[str, ...]
    default_base_url: str
    """The folder at the release tag; ``{version}`` is filled in."""
    mirror_env: str
    """Env var naming a mirror of that folder."""

    def cached(self, version: str = KSERVE_RELEASE) -> Path:
        return cache_dir() / self.key / version

    def fetch(self, version: str = KSERVE_RELEASE, base_url: str | None = None) -> Path:
        """The cached folder, downloading what is missing first."""
        target = self.cached(version)
        missing = [name for name in self.files if not (target / name).is_file()]
        if not missing:
            return target
        base = (base_url or os.environ.get(self.mirror_env) or self.default_base_url).format(version=version)
        target.mkdir(parents=True, exist_ok=True)
        for name in missing:
            url = base.rstrip("/") + "/" + name
            try:
                with urllib.request.urlopen(url, timeout=30) as resp:
                    body = resp.read()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise ReferenceUnavailable(
                    f"cannot download KServe {version}'s {name} from {url} ({exc}); "
                    f"set {self.mirror_env} to a mirror of that folder"
                ) from None
            # write-then-rename: a concurrent or interrupted download never leaves half a file
            with tempfile.NamedTemporaryFile(dir=target, delete=False) as tmp:
                tmp.write(body)
            os.replace(tmp.name, target / name)
        return target


CRDS = PinnedFiles(
    key="crds",
    files=(
        "serving.kserve.io_inferenceservices.yaml",
        "serving.kserve.io_inferencegraphs.yaml",
        "serving.kserve.io_servingruntimes.yaml",
        "serving.kserve.io_clusterservingruntimes.yaml",
    ),
    default_base_url=_GITHUB + "config/crd/full/",
    mirror_env="RAGSERVE_CRD_BASE_URL",
)
OIP_REST_SPEC = PinnedFiles(
    key="oip",
    files=("rest_predict_v2.yaml",),
    default_base_url=_GITHUB + "docs/predict-api/v2/",
    mirror_env="RAGSERVE_OIP_BASE_URL",
)
