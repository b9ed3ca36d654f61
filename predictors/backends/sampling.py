"""Choosing each sequence's next token from a batch of logits, with its own options.

Rows of one decode step belong to different requests: each keeps its own
temperature, top-p and random generator, so a seeded request draws the same
tokens whoever it shares the batch with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import SamplingParams


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero out the tail of each row beyond cumulative probability ``top_p`` (keeps at least one token)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the strictly more likely tokens
    tail = before >= top_p.unsqueeze(-1)
    tail[..., 0] = False  # the most likely token always stays, whatever top_p rounds to in float32
    sorted_probs = sorted_probs.masked_fill(tail, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def sample_next(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """One token per row of ``logits`` ``[B, V]``: argmax for temperature 0, else top-p sampling."""
    chosen = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        index = torch.tensor(rows, device=logits.device)
        temperature = torch.tensor([params[i].temperature for i in rows], device=logits.device)
        probs = torch.softmax(logits.index_select(0, index).float() / temperature.unsqueeze(-1), dim=-1)
        if any(params[i].top_p < 1.0 for i in rows):
            top_p = torch.tensor([params[i].top_p for i in rows], device=logits.device)
            probs = top_p_filter(probs, top_p)
        for j, i in enumerate(rows):
            chosen[i] = torch.multinomial(probs[j], 1, generator=generators[i]).squeeze(0)
    return chosen.tolist()
