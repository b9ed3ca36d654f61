"""Offline checks of ragserve's Kubernetes manifests (``ragserve validate``).

- :mod:`.render` turns a kustomization, a YAML file or a folder into objects;
- :mod:`.crds` finds the KServe CRDs (a folder, or a cached download of the pinned release);
- :mod:`.schema` validates objects against those CRDs and core objects against
  Kubernetes' own schemas, rejecting unknown fields as ``kubectl apply`` does;
- :mod:`.rules` and :mod:`.pods` add what KServe's admission webhooks and this
  project's house rules check but no schema can (graph shape, canary ranges,
  GPU requests == limits, pod security defaults);
- :mod:`.check` runs them all over a bundle; :mod:`.processes` reads the local
  overlay as plain processes.
"""

from .problem import ManifestError, Problem

__all__ = ["ManifestError", "Problem"]
