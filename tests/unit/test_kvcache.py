"""PromptKVCache on small real transformers DynamicCaches (no model): LRU order, the byte budget, prefix matching, and
that a match hands out a cropped copy while the stored entry keeps its length."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from deltamem.memory.kvcache import KVMatch, PromptKVCache, cache_nbytes, crop_cache

torch = pytest.importorskip("torch")
DynamicCache = pytest.importorskip("transformers").DynamicCache

LAYERS, HEADS, DIM = 2, 2, 4
BYTES_PER_TOKEN = LAYERS * 2 * HEADS * DIM * 4  # keys + values, float32


def make_cache(num_tokens: int, seed: int = 0) -> DynamicCache:
    generator = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    for layer in range(LAYERS):
        shape = (1, HEADS, num_tokens, DIM)
        cache.update(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator), layer)
    return cache


def test_size_is_the_key_and_value_bytes():
    assert cache_nbytes(make_cache(5)) == 5 * BYTES_PER_TOKEN
    store = PromptKVCache(max_bytes=100 * BYTES_PER_TOKEN)
    store.put("a", range(5), make_cache(5))
    store.put("b", range(7), make_cache(7))
    assert store.get_num_bytes() == 12 * BYTES_PER_TOKEN and len(store) == 2
    store.put("a", range(3), make_cache(3))  # replacing an entry releases the old bytes
    assert store.get_num_bytes() == 10 * BYTES_PER_TOKEN and len(store) == 2
    store.clear()
    assert store.get_num_bytes() == 0 and len(store) == 0


def test_put_checks_that_the_ids_match_the_cache():
    with pytest.raises(ValueError, match="covers 4 tokens"):
        PromptKVCache(10**6).put("a", range(3), make_cache(4))


def test_least_recently_used_entries_are_evicted_first():
    store = PromptKVCache(max_bytes=30 * BYTES_PER_TOKEN)
    for key in "abc":
        store.put(key, range(10), make_cache(10))
    assert store.keys() == ["a", "b", "c"] and store.num_evictions == 0
    assert store.match("a", range(20)) is not None  # a hit makes "a" the most recently used
    store.put("d", range(10), make_cache(10))
    assert store.keys() == ["c", "a", "d"] and store.num_evictions == 1
    store.put("e", range(25), make_cache(25))  # needs the room of two entries
    assert store.keys() == ["e"] and store.num_evictions == 4
    assert store.get_num_bytes() == 25 * BYTES_PER_TOKEN <= store.max_bytes


def test_an_entry_larger_than_the_budget_is_not_stored():
    store = PromptKVCache(max_bytes=10 * BYTES_PER_TOKEN)
    store.put("a", range(4), make_cache(4))
    store.put("b", range(4), make_cache(4))
    store.put("b", range(11), make_cache(11))  # too big: not stored, and b's stale entry goes too
    assert store.keys() == ["a"] and store.num_evictions == 0
    assert store.get_num_bytes() == 4 * BYTES_PER_TOKEN
    store.put("c", range(10), make_cache(10))  # exactly the budget fits, after evicting "a"
    assert store.keys() == ["c"] and store.num_evictions == 1


def test_match_reuses_the_longest_common_prefix():
    store = PromptKVCache(max_bytes=10**6)
    stored = [5, 6, 7, 8, 9, 10]
    store.put("k", stored, make_cache(len(stored)))
    assert store.match("k", [5, 6, 7, 0, 9, 10, 11]).num_reused == 3  # diverges at position 3
    assert store.match("k", stored + [1, 2]).num_reused == 6  # extends the stored sequence
    assert store.match("k", stored).num_reused == 5  # identical: the last token is still computed
    assert store.match("k", [5, 6]).num_reused == 1  # a shorter query: capped at its length - 1
    assert (store.num_hits, store.num_misses) == (4, 0)
    assert store.match("k", [4, 5, 6]) is None  # nothing in common
    assert store.match("k", [5]) is None  # one token: nothing can be reused
    assert store.match("other", stored) is None  # unknown key
    assert (store.num_hits, store.num_misses) == (4, 3)


def test_a_match_is_a_cropped_copy_and_the_entry_keeps_its_length():
    store = PromptKVCache(max_bytes=10**6)
    original = make_cache(8, seed=1)
    expected_keys = original.layers[0].keys.clone()
    store.put("k", range(8), original)
    match = store.match("k", [0, 1, 2, 99])
    assert isinstance(match, KVMatch) and match.num_reused == 3
    assert match.cache.get_seq_length() == 3 and match.cache is not original
    assert torch.equal(match.cache.layers[1].values, original.layers[1].values[..., :3, :])
    # Extending the copy (what a forward pass does) leaves the stored entry untouched.
    for layer in range(LAYERS):
        match.cache.update(torch.zeros(1, HEADS, 2, DIM), torch.zeros(1, HEADS, 2, DIM), layer)
    assert match.cache.get_seq_length() == 5
    assert original.get_seq_length() == 8 and torch.equal(original.layers[0].keys, expected_keys)
    again = store.match("k", list(range(8)) + [8])
    assert again.num_reused == 8 and torch.equal(again.cache.layers[0].keys, expected_keys)
    assert store.get_num_bytes() == 8 * BYTES_PER_TOKEN


def test_crop_cache_cuts_to_a_length():
    cache = make_cache(6)
    crop_cache(cache, 6)  # a no-op, not an emptying
    assert cache.get_seq_length() == 6
    crop_cache(cache, 2)
    assert cache.get_seq_length() == 2 and cache_nbytes(cache) == 2 * BYTES_PER_TOKEN
    with pytest.raises(ValueError):
        crop_cache(cache, 3)


def test_concurrent_puts_and_matches_keep_the_budget():
    store = PromptKVCache(max_bytes=40 * BYTES_PER_TOKEN)
    caches = [make_cache(10, seed=i) for i in range(8)]

    def work(i: int) -> None:
        for round_ in range(20):
            key = f"k{(i + round_) % 8}"
            store.put(key, range(10), caches[(i + round_) % 8])
            match = store.match(key, list(range(10)) + [0])
            assert match is None or match.cache.get_seq_length() == match.num_reused

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(work, i) for i in range(4)]:
            future.result()  # re-raises a worker's failure here
    assert store.get_num_bytes() == 10 * BYTES_PER_TOKEN * len(store) <= store.max_bytes


def test_a_copy_shares_entries_but_not_order_or_budget():
    store = PromptKVCache(max_bytes=30 * BYTES_PER_TOKEN)
    for key in "abc":
        store.put(key, range(10), make_cache(10, seed=ord(key)))
    small = store.copy(max_bytes=20 * BYTES_PER_TOKEN)  # the least recently used entry does not fit
    assert small.keys() == ["b", "c"] and small.get_num_bytes() == 20 * BYTES_PER_TOKEN
    same = store.copy()
    same.put("d", range(10), make_cache(10))  # evicts "a" from the copy only
    assert same.keys() == ["b", "c", "d"] and store.keys() == ["a", "b", "c"]
    assert torch.equal(same.match("b", range(10)).cache.layers[0].keys, store.match("b", range(10)).cache.layers[0].keys)
