"""The blended prefill (``deltamem.llm.kv_blend``) on a small random Llama: exact where it reuses nothing or only exact
KV, exact when it recomputes everything, and RoPE re-rotation puts a moved token's key where a fresh one would be."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from deltamem.llm.kv_blend import KVBlender, aligned_spans, spans_from_cache
from deltamem.memory.kvcache import crop_cache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    config._attn_implementation = "eager"
    return transformers.LlamaForCausalLM(config).eval()


def exact(model, ids):
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
    return out.logits[0], getattr(out, "cache", None) or out.past_key_values


OLD = [5, 9, 13, 2, 7, 31, 44, 8, 19, 23, 3, 61, 70, 11, 12, 17, 29, 40, 41, 42, 55, 56, 57, 58, 90]
NEW = OLD[:6] + [77, 78] + OLD[7:]  # one token replaced by two: everything after it moves one position on


def test_without_reuse_the_blend_is_a_plain_prefill(model):
    logits, _cache = exact(model, NEW)
    result = KVBlender(model).prefill(NEW, None, [], last_logits=3)
    assert torch.allclose(result.logits, logits[-3:], atol=1e-4)
    assert result.num_reused == 0 and result.num_recomputed == len(NEW)


def test_reusing_a_prompts_own_kv_changes_nothing(model):
    logits, cache = exact(model, OLD)
    prefix = copy.deepcopy(cache)
    crop_cache(prefix, 4)
    spans = spans_from_cache(cache, aligned_spans(OLD, OLD, 4))
    result = KVBlender(model).prefill(OLD, prefix, spans, recompute_share=0.0, keep_from=len(OLD) - 2)
    assert result.num_reused == len(OLD) - 4 - 2
    assert torch.allclose(result.logits[-1], logits[-1], atol=1e-4)
    for layer, want in zip(result.cache.layers, cache.layers):
        assert torch.allclose(layer.keys, want.keys, atol=1e-4) and torch.allclose(layer.values, want.values, atol=1e-4)


def test_recomputing_every_reused_token_is_exact_after_an_edit(model):
    _logits, old_cache = exact(model, OLD)
    want, _cache = exact(model, NEW)
    prefix = copy.deepcopy(old_cache)
    crop_cache(prefix, 6)
    spans = spans_from_cache(old_cache, aligned_spans(OLD, NEW, 6))
    result = KVBlender(model).prefill(NEW, prefix, spans, recompute_share=1.0)
    assert torch.allclose(result.logits[-1], want[-1], atol=1e-4)


def test_a_partial_blend_reuses_the_share_it_was_not_told_to_recompute(model):
    _logits, old_cache = exact(model, OLD)
    prefix = copy.deepcopy(old_cache)
    crop_cache(prefix, 6)
    spans = spans_from_cache(old_cache, aligned_spans(OLD, NEW, 6))
    reusable = sum(s.length for s in spans)
    result = KVBlender(model).prefill(NEW, prefix, spans, recompute_share=0.25, keep_from=len(NEW) - 3)
    assert result.num_reused == (reusable - 3) - -(-(reusable - 3) * 25 // 100)  # all but the top 25%, rounded up
    assert result.cache.get_seq_length() == len(NEW)


def test_a_moved_keys_rotation_matches_a_fresh_key_at_its_new_position(model):
    # Layer 0's keys depend on the token and its position only, so a rotated old key must equal the new one.
    _logits, old_cache = exact(model, OLD)
    _logits, new_cache = exact(model, NEW)
    blender = KVBlender(model)
    spans = spans_from_cache(old_cache, aligned_spans(OLD, NEW, 8))
    x = model.model.embed_tokens(torch.tensor([NEW[8:]]))
    with torch.inference_mode():
        reuse_k, _reuse_v, reusable = blender._place(spans, 8, len(NEW) - 8, model.model, x)
    assert bool(reusable.all()) and spans[0].target - spans[0].source == 1
    assert torch.allclose(reuse_k[0], new_cache.layers[0].keys[0, :, 8:], atol=1e-5)


def test_a_span_outside_the_blended_positions_is_refused(model):
    _logits, cache = exact(model, OLD)
    spans = spans_from_cache(cache, [(0, 0, 5)])
    with pytest.raises(ValueError, match="outside the blended positions"):
        prefix = copy.deepcopy(cache)
        crop_cache(prefix, 3)
        KVBlender(model).prefill(OLD, prefix, spans)
