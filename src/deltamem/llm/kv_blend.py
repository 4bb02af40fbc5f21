"""Prefill over reused KV beyond the prefix (CacheBlend-style selective recompute) for a Llama-architecture model.

    result = KVBlender(model).prefill(ids, prefix_cache, reused, recompute_share=0.15, last_logits=len(draft) + 1)

After an edit, the tokens *after* the changed span are the same tokens as before, one position shift later; their
stored KV is wrong only in how much their context changed. The blender reuses it: keys are re-rotated for the shift
(RoPE is a rotation per frequency, so rotating a key computed at position i by ``j - i`` gives its key at j), every
token without reusable KV is computed in full, and of the reused ones only the share whose KV deviates most is
recomputed, as CacheBlend does (Yao et al., 2024, "CacheBlend: Fast LLM Serving for RAG with Cached Knowledge
Fusion"). The deviation is measured where it first appears: layer 0's keys and values depend on a token and its
position only, so layer 0 is computed in full for every token, and the layer-1 KV it yields (exact, for every token)
is compared with the reused layer-1 KV; the tokens that deviate most, and those that must be computed, carry on
through layers 1 to L-1, while the rest keep their reused KV there.

The invariant: the returned cache covers exactly ``ids``; its first ``start`` positions are the exact prefix KV that
was passed in, untouched; every other position holds either KV this pass computed or reused KV rotated to that
position. The result is approximate unless every non-prefix token was recomputed (``num_reused == 0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReusedSpan:
    """Stored KV for ``length`` consecutive tokens of the new prompt starting at ``target``: ``keys`` and ``values``
    are [num_layers, num_kv_heads, length, head_dim], the keys RoPE-rotated for ``source`` (the position of the span's
    first token when its KV was computed)."""

    target: int
    source: int
    keys: Any  # torch.Tensor
    values: Any  # torch.Tensor

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])


@dataclass
class BlendResult:
    """One blended prefill: ``logits`` of the last ``last_logits`` positions, the cache covering the whole input,
    and how many non-prefix positions reused stored KV on layers 1 to L-1 (``num_reused``) or were computed in full
    (``num_recomputed``)."""

    logits: Any
    cache: Any
    num_reused: int
    num_recomputed: int


def aligned_spans(old_ids: Sequence[int], new_ids: Sequence[int], start: int, min_length: int = 4) -> list[tuple[int, int, int]]:
    """The runs of tokens the new prompt shares with the old one at or after ``start``: (old position, new position,
    length), in order, each at least ``min_length`` tokens (a shorter match is likelier a coincidence than the same
    text, and its KV would be recomputed anyway).

    >>> aligned_spans([1, 2, 3, 4, 5, 6, 7], [1, 2, 9, 3, 4, 5, 6, 7], start=2, min_length=3)
    [(2, 3, 5)]
    """
    from difflib import SequenceMatcher

    matcher = SequenceMatcher(None, list(old_ids), list(new_ids), autojunk=False)
    spans = []
    for old_at, new_at, size in matcher.get_matching_blocks():
        if new_at + size <= start:
            continue
        cut = max(0, start - new_at)  # the part inside the exact prefix is served by the prefix cache
        old_at, new_at, size = old_at + cut, new_at + cut, size - cut
        if size >= min_length:
            spans.append((old_at, new_at, size))
    return spans


def spans_from_cache(cache: Any, spans: Sequence[tuple[int, int, int]]) -> list[ReusedSpan]:
    """``ReusedSpan``s cut from a transformers cache (one KV layer per model layer) of an earlier prompt."""
    import torch

    keys = torch.stack([layer.keys[0] for layer in cache.layers])  # [layers, kv_heads, old_len, head_dim]
    values = torch.stack([layer.values[0] for layer in cache.layers])
    return [ReusedSpan(new_at, old_at, keys[:, :, old_at:old_at + size], values[:, :, old_at:old_at + size])
            for old_at, new_at, size in spans]


class KVBlender:
    """Selective-recompute prefill for one ``LlamaForCausalLM`` (eager float32 on any device). Holds no state
    between calls but the model."""

    def __init__(self, model: Any):
        self.model = model
        config = model.config
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def prefill(self, ids: Sequence[int], prefix_cache: Any, reused: Sequence[ReusedSpan], *,
                recompute_share: float = 0.15, keep_from: int | None = None, last_logits: int = 1) -> BlendResult:
        """Prefill ``ids`` after the ``prefix_cache`` (an exact cache of its first ``start`` tokens, or None for
        start 0), reusing ``reused`` spans and recomputing ``recompute_share`` of the reused tokens, chosen by their
        layer-1 KV deviation. Positions at or after ``keep_from`` are always computed in full (the question and the
        draft: what the answer reads most closely); so are the last ``last_logits`` positions, whose logits are
        returned."""
        import torch
        from transformers import DynamicCache
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        start = 0 if prefix_cache is None else int(prefix_cache.get_seq_length())
        n = len(ids) - start
        if n <= 0 or last_logits > n:
            raise ValueError(f"blend needs at least {last_logits} new tokens after the {start} cached ones")
        lm = self.model.model
        device = lm.embed_tokens.weight.device
        with torch.inference_mode():
            x = lm.embed_tokens(torch.tensor([list(ids[start:])], dtype=torch.long, device=device))
            positions = torch.arange(start, start + n, device=device)
            cos, sin = lm.rotary_emb(x, positions[None])
            reuse_k, reuse_v, reusable = self._place(reused, start, n, lm, x)
            always = min(n - last_logits, (keep_from - start) if keep_from is not None else n)
            reusable[max(0, always):] = False
            prefix = [(None, None)] * self.num_layers if prefix_cache is None else [
                (layer.keys, layer.values) for layer in prefix_cache.layers]
            rows = torch.arange(n, device=device)  # the positions still carried through the layers
            cache_k, cache_v = [], []
            for index, layer in enumerate(lm.layers):
                attn = layer.self_attn
                normed = layer.input_layernorm(x)
                full = index <= 1 or rows.numel() == n
                if index == 1:  # choose the tokens to carry on: all that must be computed, and the most deviating
                    k_all, v_all = self._kv(attn, normed, cos, sin, apply_rotary_pos_emb)
                    rows = self._select(k_all, v_all, reuse_k[index], reuse_v[index], reusable, recompute_share)
                    k_layer, v_layer = k_all, v_all
                    q = self._q(attn, normed[:, rows], cos[:, rows], sin[:, rows], apply_rotary_pos_emb)
                    x = x[:, rows]
                else:
                    q, k_new, v_new = self._qkv(attn, normed, cos[:, rows], sin[:, rows], apply_rotary_pos_emb)
                    if full:
                        k_layer, v_layer = k_new, v_new
                    else:
                        k_layer, v_layer = reuse_k[index].clone()[None], reuse_v[index].clone()[None]
                        k_layer[:, :, rows], v_layer[:, :, rows] = k_new, v_new
                keys, values = self._with_prefix(prefix[index], k_layer, v_layer)
                cache_k.append(keys)
                cache_v.append(values)
                x = x + attn.o_proj(self._attend(q, keys, values, start + rows, attn.scaling))
                x = x + layer.mlp(layer.post_attention_layernorm(x))
            logits = self.model.lm_head(lm.norm(x[:, -last_logits:]))[0]
        cache = DynamicCache()
        for index in range(self.num_layers):
            cache.update(cache_k[index], cache_v[index], index)
        recomputed = int(rows.numel())
        return BlendResult(logits=logits, cache=cache, num_reused=n - recomputed, num_recomputed=recomputed)

    # -- the pieces of one layer ----------------------------------------------------------------------------------

    def _place(self, reused: Sequence[ReusedSpan], start: int, n: int, lm: Any, x: Any) -> tuple[Any, Any, Any]:
        """Reused KV laid out over the new positions (keys rotated to them) and the mask of positions that have it."""
        import torch
        from transformers.models.llama.modeling_llama import rotate_half

        shape = (self.num_layers, self.num_kv_heads, n, self.head_dim)
        reuse_k = torch.zeros(shape, dtype=x.dtype, device=x.device)
        reuse_v = torch.zeros(shape, dtype=x.dtype, device=x.device)
        reusable = torch.zeros(n, dtype=torch.bool, device=x.device)
        for span in reused:
            lo, hi = span.target - start, span.target - start + span.length
            if lo < 0 or hi > n:
                raise ValueError(f"a reused span at {span.target}..{span.target + span.length} lies outside the "
                                 f"blended positions {start}..{start + n}")
            # Rotating by the shift composes with the rotation the key already has (both are rotations per frequency).
            shift = torch.full((1, span.length), span.target - span.source, device=x.device)
            cos, sin = lm.rotary_emb(x, shift)
            keys = span.keys.to(x.device, x.dtype)
            reuse_k[:, :, lo:hi] = keys * cos[0] + rotate_half(keys) * sin[0]
            reuse_v[:, :, lo:hi] = span.values.to(x.device, x.dtype)
            reusable[lo:hi] = True
        return reuse_k, reuse_v, reusable

    def _select(self, k_all: Any, v_all: Any, reuse_k: Any, reuse_v: Any, reusable: Any, share: float) -> Any:
        """The rows to carry on: every row without reusable KV, and the ``share`` of reusable rows whose layer-1 KV
        deviates most from the reused one, in position order."""
        import torch

        deviation = ((k_all[0] - reuse_k) ** 2).sum(dim=(0, 2)) + ((v_all[0] - reuse_v) ** 2).sum(dim=(0, 2))
        candidates = torch.nonzero(reusable).flatten()
        count = min(int(candidates.numel()), math.ceil(share * int(candidates.numel())))
        chosen = candidates[torch.topk(deviation[candidates], count).indices] if count else candidates[:0]
        must = torch.nonzero(~reusable).flatten()
        return torch.sort(torch.cat([must, chosen])).values

    def _q(self, attn, normed, cos, sin, rope):
        q = attn.q_proj(normed).view(1, normed.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
        return rope(q, q, cos, sin)[0]

    def _kv(self, attn, normed, cos, sin, rope):
        shape = (1, normed.shape[1], self.num_kv_heads, self.head_dim)
        k = attn.k_proj(normed).view(shape).transpose(1, 2)
        v = attn.v_proj(normed).view(shape).transpose(1, 2)
        return rope(k, k, cos, sin)[1], v

    def _qkv(self, attn, normed, cos, sin, rope):
        k, v = self._kv(attn, normed, cos, sin, rope)
        return self._q(attn, normed, cos, sin, rope), k, v

    @staticmethod
    def _with_prefix(prefix: tuple[Any, Any], keys: Any, values: Any) -> tuple[Any, Any]:
        import torch

        if prefix[0] is None:
            return keys, values
        return torch.cat([prefix[0], keys], dim=2), torch.cat([prefix[1], values], dim=2)

    def _attend(self, q: Any, keys: Any, values: Any, query_positions: Any, scaling: float) -> Any:
        """Causal attention of the carried rows (at ``query_positions``) over every key so far; [1, rows, hidden]."""
        import torch

        groups = self.num_heads // self.num_kv_heads
        keys = keys.repeat_interleave(groups, dim=1)
        values = values.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, keys.transpose(2, 3)) * scaling
        future = torch.arange(keys.shape[2], device=q.device)[None, :] > query_positions[:, None]
        scores = scores.masked_fill(future, float("-inf"))
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(weights, values).transpose(1, 2)
        return out.reshape(1, q.shape[2], self.num_heads * self.head_dim)




def chunk_ranges(segment_of_token: Sequence[int]) -> list[tuple[int, int]]:
    """The token ranges [lo, hi) of each run of tokens in one segment (``segment_of_token[i]`` is token i's segment,
    -1 for none): the chunks whose KV the chunk store keeps.

    >>> chunk_ranges([-1, 0, 0, 1, 1, 1, -1, 2])
    [(1, 3), (3, 6), (7, 8)]
    """
    ranges, lo = [], None
    for i, segment in enumerate([*segment_of_token, -1]):
        if lo is not None and (segment != segment_of_token[lo] or segment < 0):
            ranges.append((lo, i))
            lo = None
        if lo is None and segment >= 0:
            lo = i
    return ranges


def store_chunks(store: Any, model_id: str, ids: Sequence[int], cache: Any, ranges: Sequence[tuple[int, int]]) -> None:
    """Put the KV of each chunk of ``ids`` (``ranges``) from ``cache``, an exact cache covering at least them."""
    from deltamem.memory.chunk_kv import ChunkKV

    covered = int(cache.get_seq_length())
    keys = values = None
    for lo, hi in ranges:
        if hi > covered:
            continue
        if keys is None:
            import torch

            keys = torch.stack([layer.keys[0] for layer in cache.layers])
            values = torch.stack([layer.values[0] for layer in cache.layers])
        # Copies: a slice would keep the whole prompt's tensor alive in the memory tier.
        store.put(model_id, ids[lo:hi], ChunkKV(lo, keys[:, :, lo:hi].clone(), values[:, :, lo:hi].clone()))


def spans_from_store(store: Any, model_id: str, ids: Sequence[int], ranges: Sequence[tuple[int, int]], start: int,
                     taken: Sequence[ReusedSpan] = ()) -> list[ReusedSpan]:
    """``ReusedSpan``s for the chunks of ``ids`` at or after ``start`` that no span in ``taken`` covers and the chunk
    store holds."""
    busy = [(s.target, s.target + s.length) for s in taken]
    spans = []
    for lo, hi in ranges:
        if lo < start or any(a < hi and lo < b for a, b in busy):
            continue
        found = store.get(model_id, ids[lo:hi])
        if found is not None:
            spans.append(ReusedSpan(lo, found.position, found.keys, found.values))
    return spans


__all__ = ["BlendResult", "KVBlender", "ReusedSpan", "aligned_spans", "chunk_ranges", "spans_from_cache",
           "spans_from_store", "store_chunks"]
