"""What a check reports: an object, a field path in it and what is wrong there."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ragserve.errors import RagserveError


class ManifestError(RagserveError):
    """Manifests could not be read at all (kustomize failed, no CRDs, bad YAML)."""


@dataclass(frozen=True, order=True)
class Problem:
    obj: str
    """``Kind/name`` of the object."""
    path: str
    """Field path inside the object, e.g. ``spec.predictor.model.resources.limits``."""
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.obj}: {self.path or '<object>'}: {self.message}"


def ref(obj: dict) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def field_path(*parts: str | int | Iterable) -> str:
    """``field_path("spec", "canary", 0, "predictor")`` -> ``spec.canary[0].predictor``.

    A part may itself be a sequence of parts, or an already joined path.
    """
    out = ""
    for part in parts:
        if isinstance(part, (list, tuple)):
            joined = field_path(*part)
            if joined:
                out = f"{out}.{joined}" if out and not joined.startswith("[") else out + joined
        elif isinstance(part, int):
            out += f"[{part}]"
        elif part:
            out = f"{out}.{part}" if out else str(part)
    return out
