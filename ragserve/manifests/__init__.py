"""Offline checks of ragserve's Kubernetes manifests (``ragserve validate``).

- :mod:`.render` turns a kustomization, a YAML file or a folder into objects;
- :mod:`.crds` finds the KServe CRDs (a folder, or a cached download of the pinned release);
- :mod:`.schema` validates objects against those CRDs and core objects against
  Kubernetes' own schemas, rejecting unknown fields as ``kubectl apply`` does;
- :mod:`.core` adds what the API server validates beyond its schemas (names,
  labels, annotations, selectors, ports, CIDRs, PDB and PriorityClass rules,
  ConfigMap keys);
- :mod:`.webhook` adds KServe's validating-webhook rules (names, autoscaler
  class and metrics, replicas, the Standard-mode canary);
- :mod:`.rules`, :mod:`.pods` and :mod:`.quota` add what known KServe pitfalls
  and this project's house rules call for (graph shape, canary ranges, GPU
  requests == limits, pod security defaults, a GPU quota covering the maxima);
- :mod:`.check` runs them all over a bundle; :mod:`.processes` reads the local
  overlay as plain processes.
"""

from .problem import ManifestError, Problem

__all__ = ["ManifestError", "Problem"]
