"""Sequences that decode together over one left-padded KV cache (transformers models).

Every decode step feeds the last token of each running sequence as one
``[B, 1]`` batch. Sequences start at different times, so their caches differ
in length: new ones are prefilled together (left-padded), then merged with the
running batch by left-padding the shorter cache; the attention mask hides the
padding and position ids count only real tokens, so each row computes what it
would alone. Finished or cancelled rows are cut out and all-padding columns
trimmed, so a long-gone sequence never keeps the batch wide.

transformers' ``DynamicLayer`` appends a step with ``torch.cat``, copying the
whole cache every step; at RAG prompt lengths that copy costs as much as the
step's attention. :class:`GrowableLayer` appends into spare room instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


class UnsupportedCache(RuntimeError):
    pass


def _growable_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowableLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values are views of buffers with room for more steps."""

        spare = 64

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.keys.shape[-2] if self.keys.dim() == 4 else 0
            end = length + key_states.shape[-2]
            if self._buffers is None or self._buffers[0].shape[-2] < end:
                self._buffers = (
                    _with_room(self.keys, key_states, length, end + self.spare),
                    _with_room(self.values, value_states, length, end + self.spare),
                )
            kbuf, vbuf = self._buffers
            kbuf[:, :, length:end] = key_states
            vbuf[:, :, length:end] = value_states
            self.keys, self.values = kbuf[:, :, :end], vbuf[:, :, :end]
            return self.keys, self.values

        def adopt(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            """Take tensors built outside ``update`` (merge, keep); the old buffers no longer back them."""
            self.keys, self.values = keys, values
            self._buffers = None

    return GrowableLayer


def _with_room(cached: torch.Tensor, new: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    batch, heads, _, dim = new.shape
    buffer = new.new_empty((batch, heads, capacity, dim))
    if length:
        buffer[:, :, :length] = cached
    return buffer


def _kv_pairs(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _set_kv_pairs(cache, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    if hasattr(cache, "layers"):
        for layer, (k, v) in zip(cache.layers, pairs):
            if hasattr(layer, "adopt"):
                layer.adopt(k, v)
            else:
                layer.keys, layer.values = k, v
    else:
        cache.key_cache[:] = [k for k, _ in pairs]
        cache.value_cache[:] = [v for _, v in pairs]


def check_cache(cache) -> None:
    """Merging by left padding is only right for plain (full-attention) dynamic caches."""
    from transformers.cache_utils import DynamicCache

    if not isinstance(cache, DynamicCache):
        raise UnsupportedCache(f"the model returned a {type(cache).__name__}; batching needs a DynamicCache")
    for layer in getattr(cache, "layers", ()):
        if getattr(layer, "is_sliding", False) or type(layer).__name__ not in ("DynamicLayer", "GrowableLayer"):
            raise UnsupportedCache(
                f"cache layer {type(layer).__name__} (sliding window or indexed attention) cannot be merged; "
                "use the vllm backend for this model"
            )


class CausalLM:
    """A transformers causal LM called the way batched decoding needs it."""

    def __init__(self, model, pad_token_id: int):
        self.model = model
        self.pad_token_id = pad_token_id
        self.device = model.device
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed ``past_key_values`` to ``cache``.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else "num_logits_to_keep"
        self._layer_class = None
        from transformers.cache_utils import DynamicCache

        if hasattr(DynamicCache(), "layer_class_to_replicate"):  # transformers >= 4.56
            # The model config decides which layers slide; only all-full-attention models can be merged.
            check_cache(DynamicCache(config=model.config))
            self._layer_class = _growable_layer_class()

    def new_cache(self):
        """An empty cache for a prefill (None: let the model build its own)."""
        if self._layer_class is None:
            return None
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        cache.layer_class_to_replicate = self._layer_class
        return cache

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache):
        """Forward ``input_ids`` ``[B, q]``; returns ``(last-position logits [B, V], cache)``."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: cache, self._keep_kw: 1},
        )
        new_cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return out.logits[:, -1, :], new_cache


@dataclass
class KVBatch:
    """Running sequences (``rows``) and their shared cache; ``mask`` is ``[B, T]`` over the cache."""

    rows: list[Any]
    cache: Any
    mask: torch.Tensor

    @classmethod
    def prefill(cls, lm: CausalLM, rows: list[Any], prompts: Sequence[Sequence[int]]) -> tuple[KVBatch, torch.Tensor]:
        """Run the prompts (left-padded to the longest) and return the batch and next-token logits."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = lm(ids, mask, positions, lm.new_cache())
        return cls(rows, cache, mask), logits

    def __len__(self) -> int:
        return len(self.rows)

    def decode(self, lm: CausalLM, tokens: Sequence[int]) -> torch.Tensor:
        """Feed one token per row; returns next-token logits ``[B, V]``."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.mask.device).unsqueeze(-1)
        positions = self.mask.sum(-1, keepdim=True)  # real tokens so far = this token's position
        self.mask = torch.cat([self.mask, torch.ones_like(ids)], dim=-1)
        logits, self.cache = lm(ids, self.mask, positions, self.cache)
        return logits

    def merge(self, other: KVBatch) -> None:
        """Append ``other``'s rows, left-padding whichever cache is shorter."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        pairs = []
        for (k1, v1), (k2, v2) in zip(_kv_pairs(self.cache), _kv_pairs(other.cache)):
            pairs.append(
                (
                    torch.cat([_left_pad(k1, width), _left_pad(k2, width)], dim=0),
                    torch.cat([_left_pad(v1, width), _left_pad(v2, width)], dim=0),
                )
            )
        _set_kv_pairs(self.cache, pairs)
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(other.mask, width)], dim=0)
        self.rows = self.rows + other.rows

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the rows at ``indices`` (non-empty) and drop columns no kept row attends to."""
        index = torch.tensor(list(indices), dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int((mask.sum(0) > 0).nonzero()[0])
        pairs = [
            (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
            for k, v in _kv_pairs(self.cache)
        ]
        _set_kv_pairs(self.cache, pairs)
        self.mask = mask[:, start:]
        self.rows = [self.rows[i] for i in indices]


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the sequence axis (the last for a mask, -2 for keys/values) on the left to ``width``."""
    if t.dim() == 2:
        return F.pad(t, (width - t.shape[1], 0))
    return F.pad(t, (0, 0, width - t.shape[-2], 0))
