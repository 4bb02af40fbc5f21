"""The deterministic test backend (``llm="test"``, ``embedder="test"``).

Its answers are a pure function of the request, so a view maintained incrementally can be compared with one built
from scratch, and it counts calls and tokens like a real backend. It plays an obedient model: asked for True/False it
answers one of them, asked for a JSON object with given keys it returns one, otherwise it answers a short phrase.

Asked a pairwise comparison in ``sem_topk``'s exact format (``Item A:`` / ``Item B:`` blocks ending with
``QUESTION`` of ``deltamem.operators.topk``) it scores each item's text on its own (SHA-256 of ``"rank:" + text``,
larger is better) and names the winner, so its verdicts are transitive, like a model with a fixed opinion. An item
text that itself contains the line ``Item B:`` may be split elsewhere; the answer is still a pure function of the
prompt.

``ScriptedLLM(verifies=True)`` also plays a backend that keeps KV caches and scores drafts
(``capabilities.kv_cache``, ``logits``): its token ids are stable hashes of its words, and a ``draft`` equal to the
answer's ids costs no output tokens (the old answer verified), as greedy re-scoring on a real model would. Its answer
is the same function of the request either way. ``phrases=("x", "y")`` makes it answer a plain question with one of
those phrases (still a pure function of the request), so a changed prompt often keeps its answer.

Faults are injected by substring: ``ScriptedLLM(failures={"poison": 2})`` fails the first two calls whose prompt
contains ``poison`` with a ``BackendError``, then answers normally.

    >>> llm = ScriptedLLM()
    >>> llm.complete(CompletionRequest((Message("user", "Is 2 even? Answer True or False."),))).text in ("True", "False")
    True
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import threading
import time

import numpy as np

from deltamem.errors import BackendError
from deltamem.llm.base import BackendCapabilities, Completion, CompletionRequest, Message, Usage  # noqa: F401 (doctest)

_WORDS = (
    "amber basalt cedar delta ember fjord garnet harbor indigo juniper kelp lumen meadow nickel onyx pine quartz "
    "river saffron tundra umber violet willow xenon yarrow zephyr"
).split()
_JSON_KEYS = re.compile(r"JSON object with the keys? ([^.\n]+)")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_PAIRWISE = re.compile(
    r"\nItem A:\n(.*?)\n\nItem B:\n(.*)\n\nWhich item fits the criterion better\? Answer A or B\.\Z", re.DOTALL
)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@functools.lru_cache(maxsize=4096)  # answers reuse a few words: a token's id is worked out once
def _token_id(token: str) -> int:
    return int.from_bytes(_digest("token:" + token)[:3], "big")


def count_scripted_tokens(text: str) -> int:
    """Words and punctuation marks: a stand-in tokenizer that is stable and cheap."""
    return len(_TOKEN.findall(text))


class ScriptedLLM:
    """A chat model whose answer depends only on the request. ``usage`` counts what it did."""

    capabilities = BackendCapabilities()

    def __init__(self, *, failures: dict[str, int] | None = None, latency: float = 0.0, model_id: str = "scripted-v1",
                 verifies: bool = False, phrases: tuple[str, ...] = ()):
        self.model_id = model_id
        self.phrases = tuple(phrases)
        # With no latency it answers at once: overlapping its calls only adds thread hand-offs.
        self.capabilities = dataclasses.replace(self.capabilities, concurrent=latency > 0)
        if verifies:
            self.capabilities = dataclasses.replace(self.capabilities, logits=True, kv_cache=True)
        self.latency = latency
        self._failures_left = dict(failures or {})
        self._lock = threading.Lock()
        self.usage = Usage()

    def count_tokens(self, text: str) -> int:
        return count_scripted_tokens(text)

    def complete(self, request: CompletionRequest, *, cache_key: str | None = None,
                 draft: tuple[int, ...] | None = None) -> Completion:
        prompt = "\n".join(f"{m.role}: {m.content}" for m in request.messages)
        with self._lock:
            for needle, left in self._failures_left.items():
                if left > 0 and needle in prompt:
                    self._failures_left[needle] = left - 1
                    self.usage.failures += 1
                    raise BackendError(f"scripted failure for a prompt containing {needle!r}")
        if self.latency:
            time.sleep(self.latency)
        text = self.answer(request)
        words = text.split()
        if len(words) > request.max_tokens:
            text, finish = " ".join(words[: request.max_tokens]), "length"
        else:
            finish = "stop"
        ids = tuple(_token_id(t) for t in _TOKEN.findall(text))
        completion = Completion(
            text=text,
            prompt_tokens=sum(count_scripted_tokens(m.content) + 4 for m in request.messages),
            output_tokens=0 if draft is not None and tuple(draft) == ids else count_scripted_tokens(text),
            seconds=self.latency,
            model=self.model_id,
            finish_reason=finish,
            output_ids=ids,
        )
        with self._lock:
            self.usage.add(completion)
        return completion

    def answer(self, request: CompletionRequest) -> str:
        """The answer text, a pure function of the messages."""
        pair = _PAIRWISE.search(request.messages[-1].content) if request.messages else None
        if pair:  # checked first: an item's text may itself contain "True or False"
            return "A" if _digest("rank:" + pair.group(1)) >= _digest("rank:" + pair.group(2)) else "B"
        everything = "\n".join(m.content for m in request.messages)
        if "[subject, relation, object]" in everything:  # sem_graph's open information extraction
            passage = next(m.content for m in request.messages if m.content.startswith("Passage:\n"))
            return json.dumps(_extract(passage.removeprefix("Passage:\n")))
        digest = _digest(everything)
        if "True or False" in everything:
            return "True" if digest[0] % 2 == 0 else "False"
        keys = _JSON_KEYS.search(everything)
        if keys:
            names = [k.strip(" '\"`") for k in re.split(r",|\band\b", keys.group(1)) if k.strip(" '\"`")]
            return json.dumps({name: _phrase(_digest(name + everything), 2) for name in names})
        return self.phrases[digest[0] % len(self.phrases)] if self.phrases else _phrase(digest, 3)


_ENTITY = re.compile(r"[A-Z][\w-]*(?: [A-Z][\w-]*)*")


def _extract(passage: str) -> dict:
    """An extraction a careful reader could make: the capitalised names of each sentence are its entities, and the
    words between its first two names relate them."""
    entities: list[str] = []
    triples: list[list[str]] = []
    for sentence in re.split(r"(?<=[.!?])\s+", passage):
        found = list(_ENTITY.finditer(sentence))
        entities += [m.group(0) for m in found]
        if len(found) >= 2:
            between = sentence[found[0].end():found[1].start()].strip(" ,;:") or "is related to"
            triples.append([found[0].group(0), between, found[1].group(0)])
    return {"entities": entities, "triples": triples}


def _phrase(digest: bytes, num_words: int) -> str:
    return " ".join(_WORDS[b % len(_WORDS)] for b in digest[:num_words])


class HashingEmbedder:
    """A deterministic bag-of-words embedding: each lower-cased word adds a signed unit to one of ``dim`` buckets.

    Texts that share words get close vectors, which is all a unit test of blocking or search needs. Faults are
    injected as in ``ScriptedLLM``: ``HashingEmbedder(failures={"poison": 2})`` fails the first two calls with a text
    containing ``poison`` (the whole call, as a real endpoint would) with a ``BackendError``. ``num_texts`` counts
    the texts embedded, ``num_failures`` the calls that failed.
    """

    def __init__(self, dim: int = 64, *, failures: dict[str, int] | None = None):
        self.dim = dim
        self.model_id = f"hashing-{dim}"
        self.num_texts = 0
        self.num_failures = 0
        self._failures_left = dict(failures or {})
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return count_scripted_tokens(text)

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            for needle, left in self._failures_left.items():
                if left > 0 and any(needle in text for text in texts):
                    self._failures_left[needle] = left - 1
                    self.num_failures += 1
                    raise BackendError(f"scripted embedding failure for a text containing {needle!r}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                d = _digest(word)
                out[i, int.from_bytes(d[:4], "little") % self.dim] += 1.0 if d[4] % 2 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        self.num_texts += len(texts)
        return out / np.where(norms == 0, 1.0, norms)
