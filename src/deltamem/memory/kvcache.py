"""Prompt KV caches kept between calls, so a re-asked prompt only computes what changed since the last time.

    match = PromptKVCache(max_bytes=256 * 2**20).match("view:7/row:42", prompt_ids)  # None, or the reusable prefix

One entry per standing output (the caller's ``cache_key``): the token ids of its last prompt + output and the
transformers cache holding their keys and values. ``match`` finds how much of a new token sequence the stored entry
already covers and hands back a *copy* cropped to that prefix, so the caller can extend it in place (a forward pass
mutates its cache) without corrupting the stored entry. Entries are evicted least recently used first to stay within a
byte budget.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KVMatch:
    """A reusable prefix: ``cache`` (a private copy) holds exactly the first ``num_reused`` tokens of the query."""

    num_reused: int
    cache: Any  # a transformers Cache, cropped to num_reused tokens


@dataclass(frozen=True)
class _Entry:
    token_ids: tuple[int, ...]
    cache: Any
    num_bytes: int


class PromptKVCache:
    """An LRU of KV caches under a byte budget. Invariants: the total ``num_bytes`` of the entries never exceeds
    ``max_bytes``; every entry's cache covers exactly its ``token_ids``; a stored cache is never mutated after ``put``
    (``match`` returns copies), so it may be read outside the lock. All methods are thread-safe."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._num_bytes = 0
        self._lock = threading.Lock()
        self.num_hits = 0
        self.num_misses = 0
        self.num_evictions = 0

    def put(self, cache_key: str, token_ids: Sequence[int], cache: Any) -> None:
        """Store ``cache`` (which must cover exactly ``token_ids``) under ``cache_key``, replacing its old entry. The
        cache is kept by reference: the caller must not extend it afterwards. An entry larger than the whole budget
        is not stored, and the key's old entry is dropped too, since it described an output that has moved on."""
        ids = tuple(int(t) for t in token_ids)
        if cache_seq_length(cache) != len(ids):
            raise ValueError(f"the cache covers {cache_seq_length(cache)} tokens but {len(ids)} token ids were given")
        entry = _Entry(ids, cache, cache_nbytes(cache))
        with self._lock:
            self._drop(cache_key)
            if entry.num_bytes > self.max_bytes:
                return
            self._entries[cache_key] = entry
            self._num_bytes += entry.num_bytes
            while self._num_bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)
                self.num_evictions += 1

    def match(self, cache_key: str, token_ids: Sequence[int]) -> KVMatch | None:
        """The longest stored prefix of ``token_ids`` under ``cache_key``, or None when nothing is reusable. At most
        ``len(token_ids) - 1`` tokens are reused: the last one must be computed to get the next token's logits."""
        with self._lock:
            entry = self._entries.get(cache_key)
            num_reused = 0
            if entry is not None:
                num_reused = min(common_prefix_length(entry.token_ids, token_ids), len(token_ids) - 1)
            if num_reused <= 0:
                self.num_misses += 1
                return None
            self._entries.move_to_end(cache_key)
            self.num_hits += 1
        # Copy outside the lock (entries are never mutated), then crop the copy: the stored entry keeps its length.
        cache = copy.deepcopy(entry.cache)
        crop_cache(cache, num_reused)
        return KVMatch(num_reused=num_reused, cache=cache)

    def peek(self, cache_key: str) -> tuple[tuple[int, ...], Any] | None:
        """The stored token ids and cache under ``cache_key`` (shared, read only: never extend it), without touching
        the LRU order or the counters; None when there is no entry."""
        with self._lock:
            entry = self._entries.get(cache_key)
        return None if entry is None else (entry.token_ids, entry.cache)

    def get_num_bytes(self) -> int:
        with self._lock:
            return self._num_bytes

    def keys(self) -> list[str]:
        """The stored keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def copy(self, max_bytes: int | None = None) -> "PromptKVCache":
        """A new cache holding the same entries (shared: stored caches are never mutated), with its own LRU order,
        counters and budget; entries beyond a smaller budget are evicted, least recently used first."""
        other = PromptKVCache(self.max_bytes if max_bytes is None else max_bytes)
        with self._lock:
            entries = list(self._entries.items())
        for cache_key, entry in entries:
            other._entries[cache_key] = entry
            other._num_bytes += entry.num_bytes
        while other._num_bytes > other.max_bytes:
            other._drop(next(iter(other._entries)))
        return other

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._num_bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, cache_key: object) -> bool:
        with self._lock:
            return cache_key in self._entries

    def _drop(self, cache_key: str) -> None:
        # Caller holds the lock.
        entry = self._entries.pop(cache_key, None)
        if entry is not None:
            self._num_bytes -= entry.num_bytes


def cache_seq_length(cache: Any) -> int:
    """How many tokens a transformers cache covers."""
    return int(cache.get_seq_length())


def crop_cache(cache: Any, length: int) -> None:
    """Cut ``cache`` in place to its first ``length`` tokens. transformers 5 ``crop`` takes minus the number of
    tokens to remove (a positive argument raises); 4.x read a positive argument as the new length and a negative one
    the same way as 5 does, so only the negative form means the same in both."""
    remove = cache_seq_length(cache) - length
    if remove < 0:
        raise ValueError(f"cannot crop a cache of {cache_seq_length(cache)} tokens to {length}")
    if remove > 0:  # crop(0) would empty a 4.x cache
        cache.crop(-remove)


def cache_nbytes(cache: Any) -> int:
    """Bytes held by the key and value tensors of a transformers cache."""
    return sum(int(t.nbytes) for t in _kv_tensors(cache))


def _kv_tensors(cache: Any) -> Iterator[Any]:
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56: one layer object per model layer
        for layer in layers:
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if tensor is not None:
                    yield tensor
    else:  # older transformers: parallel lists
        yield from getattr(cache, "key_cache", [])
        yield from getattr(cache, "value_cache", [])


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


__all__ = ["KVMatch", "PromptKVCache", "cache_nbytes", "cache_seq_length", "common_prefix_length", "crop_cache"]
