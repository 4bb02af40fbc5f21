"""Attention captured while the local model generates: one row per output token, over the prompt's tokens.

    with recorder.capture(last_rows=1):
        model(...)                       # rows now ends with the new token's attention over the prompt

A forward hook on every attention module reads the weights eager attention computes anyway, keeps only the query
rows that predict output tokens and the key columns of the prompt, and sums them over heads at once, so a prefill of
1,300 tokens never holds its [heads, 1,300, 1,300] matrices past the layer that made them. Invariant: ``rows[i]`` is
the attention (the mean over layers and heads) of the i-th captured query position over the first ``prompt_len`` key
positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from deltamem.errors import BackendError


class AttentionRecorder:
    """Collects output-token attention rows from ``modules`` (the model's attention layers) during ``capture``."""

    def __init__(self, modules: Sequence[Any], num_heads: int, prompt_len: int):
        self.modules = list(modules)
        self.num_heads = num_heads
        self.prompt_len = prompt_len
        self.rows: list[Any] = []  # torch tensors of shape [prompt_len]

    @contextmanager
    def capture(self, last_rows: int) -> Iterator[None]:
        """Record the attention of the last ``last_rows`` query positions of every forward run inside the block."""
        total: list[Any] = []

        def hook(_module: Any, _args: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise BackendError("attention weights are not available: the model must use eager attention")
            part = weights[0, :, -last_rows:, : self.prompt_len].sum(dim=0, dtype=weights.dtype)
            if total:
                total[0] += part
            else:
                total.append(part.clone())

        handles = [module.register_forward_hook(hook) for module in self.modules]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        if total:
            mean = total[0].float() / (len(self.modules) * self.num_heads)
            self.rows.extend(mean.unbind(0))

    def matrix(self, num_rows: int) -> Any:
        """The first ``num_rows`` rows as a numpy array [num_rows, prompt_len]."""
        import torch

        if num_rows == 0:
            return torch.zeros((0, self.prompt_len)).numpy()
        return torch.stack(self.rows[:num_rows]).cpu().numpy()
