"""Canary rollouts of KServe InferenceServices: state, patches, analysis (see README.md).

- :mod:`~ragserve.canary.target`: the :class:`CanaryTarget` protocol (``get`` / ``patch``) and its errors;
- :mod:`~ragserve.canary.kube`: the target for a cluster, over the official ``kubernetes`` client;
- :mod:`~ragserve.canary.ops`: canary state and the exact JSON merge patches (pure functions);
- :mod:`~ragserve.canary.prometheus` and :mod:`~ragserve.canary.analyze`: the metrics verdict.
"""

from .target import AccessDenied, CanaryTarget, Conflict, InferenceServiceNotFound, NoCanary

__all__ = ["AccessDenied", "CanaryTarget", "Conflict", "InferenceServiceNotFound", "NoCanary"]
