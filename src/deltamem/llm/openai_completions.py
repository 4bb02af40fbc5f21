"""Regenerate and verify over a serving engine's legacy ``/v1/completions`` endpoint: ``OpenAILLM``'s draft path.

    OpenAILLM("smollm2", "http://127.0.0.1:8000/v1").complete(new_request, draft=old_completion.output_ids)

Invariant: with a draft or without, a call returns the greedy completion of the chat as the backend's chat template
renders it, token for token (``text``, ``output_ids``, ``finish_reason``); a draft only changes what the server computes.
That holds on a *batch-invariant* server, one whose logits for a token do not depend on how many tokens it evaluates
in the same batch: the draft is scored, and a kept prefix prefilled, as one batch, where a plain completion decodes
the same tokens one at a time. llama.cpp is batch-invariant with ``--n_batch 1 --n_ubatch 1``; at its default batch
size its kernels round differently and flipped near-ties in at least 2 of 20 real edits (``benchmarks/RESULTS.md``), so there
the result is greedy decoding up to such flips.

The chat is rendered here (``chat_template``: a name in ``CHAT_TEMPLATES``, ChatML by default, or a Jinja2 template
string) and sent as a raw prompt, so that a draft can follow it. A call with a draft (the old answer's token ids) sends
ONE request for new prompt + draft with ``echo=true, logprobs=1, max_tokens=1``: the prompt logprobs name the server's
top choice at every draft position, and the one generated token says whether the answer ends after the draft. When
every draft token is the top choice and the next is EOS (or the draft fills ``max_tokens``), the draft is the answer.
Otherwise a SECOND request continues greedily from the agreeing prefix for the tokens left. The scoring pass is cheap
because of the server's automatic prefix cache (llama.cpp keeps its last request's KV and reuses the longest common
prefix), which is why such a server's ``capabilities`` report ``kv_cache`` as well as ``logits``; no ``cache_key`` is
needed. ``Completion.requests`` counts the model requests (1 or 2); tokenizer round trips are not counted.

A server qualifies when a probe, at first use, finds prompt logprobs for ``echo`` + ``logprobs``, usage counts, and a
tokenizer at ``/extras/tokenize`` and ``/extras/detokenize`` beside ``/v1``: llama-cpp-python's server started with
``--logits_all true`` (and ``--n_batch 1 --n_ubatch 1`` for the invariant above). Otherwise ``OpenAILLM`` logs one warning saying why and keeps to ``/chat/completions``.

What llama-cpp-python's server really returns, and what follows:

- no token ids, only each token's text. ``output_ids`` are the server tokenizer's ids of the returned text (what a
  draft needs), and a draft token agrees when the top choice's text equals its text. A top choice whose text differs
  from the draft token's only by the bytes of an incomplete UTF-8 character would pass for it: neither is reported.
- prompts are text only, so the continuation sends the kept prefix as text. The server's tokens for the draft must
  reproduce its text piece by piece (a token ending inside a character is not kept), and the continued prompt must
  have the scored prefix's length; where it does not, the call completes plainly (a third request).
- it pairs each echoed token with the distribution of the *next* position (one off from OpenAI's layout) unless the
  prompt begins with the model's BOS token, which it drops before pairing. SmolLM2's BOS is ``<|im_start|>``, so
  ChatML prompts line up and bare text does not; the probe sends a prompt rendered by the chat template, so it sees
  the layout that real calls get.
- ``repeat_penalty`` defaults to 1.1, which is not greedy; every request here sends 1.0.

A request with ``temperature > 0`` or stop strings ignores its draft: sampling has nothing to keep, and the server
reports nothing past a stop string, so a kept prefix could not be joined to it exactly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from deltamem.errors import BackendError, BackendUnavailable, ConfigError
from deltamem.llm.base import Completion, CompletionRequest, Message
from deltamem.llm.openai import _describe, _sdk

log = logging.getLogger(__name__)

ChatRenderer = Callable[[Sequence[Message]], str]

# A chat (rendered with the template, as real calls are) and the start of an answer whose next token is plain, so the
# probe can tell which position the echoed logprobs describe.
_PROBE_CHAT = (Message("user", "Count from one to ten in words."),)
_PROBE_ANSWER = "One, two, three, four,"
_GREEDY = {"repeat_penalty": 1.0}  # llama-cpp-python's server defaults to 1.1; other servers ignore the field


def _chatml(messages: Sequence[Message]) -> str:
    turns = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


CHAT_TEMPLATES: dict[str, ChatRenderer] = {"chatml": _chatml}  # ChatML: SmolLM2, Qwen2.5 and others


def chat_renderer(template: str) -> ChatRenderer:
    """The prompt renderer for ``template``: a name in ``CHAT_TEMPLATES`` or a Jinja2 chat template string (Hugging
    Face style: ``messages``, ``add_generation_prompt``, ``raise_exception``; ``bos_token`` and ``eos_token`` are "")."""
    if template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[template]
    if "{{" not in template and "{%" not in template:
        raise ConfigError(
            f"Unknown chat template {template!r}: use one of {sorted(CHAT_TEMPLATES)} or a Jinja2 template string"
        )
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise BackendUnavailable("a Jinja2 chat template needs the `jinja2` package: pip install jinja2") from e

    def raise_exception(message: str) -> None:
        raise ConfigError(f"the chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        compiled = env.from_string(template)
    except TemplateError as e:
        raise ConfigError(f"the chat template is not valid Jinja2: {e}") from e

    def render(messages: Sequence[Message]) -> str:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        return compiled.render(messages=chat, add_generation_prompt=True, bos_token="", eos_token="")

    return render


@dataclass(frozen=True)
class _Probe:
    """What the first-use probe found: whether drafts can be scored, and if not, why."""

    ok: bool
    reason: str = ""
    shifted: bool = False  # an echoed token's top_logprobs are the next position's (llama-cpp-python, no leading BOS)
    bos: tuple[int, ...] = ()  # what /extras/tokenize puts before every text


@dataclass
class _Spent:
    """A call's model requests and their tokens, as the server's usage reports them."""

    requests: int = 0
    prompt: int = 0  # computed: OpenAI counts cached tokens inside prompt_tokens, the ledger wants them apart
    reused: int = 0
    output: int = 0
    last_prompt: int | None = None  # the last request's prompt_tokens, cached ones included

    def add(self, usage: Any) -> None:
        self.last_prompt = getattr(usage, "prompt_tokens", None)
        prompt = self.last_prompt or 0
        cached = min(getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None) or 0, prompt)
        self.requests += 1
        self.prompt += prompt - cached
        self.reused += cached
        self.output += getattr(usage, "completion_tokens", None) or 0


class CompletionsPath:
    """Greedy completions, with or without a draft, over ``{base_url}/completions``; see the module docstring.

    ``can_score()`` runs the probe once (again later only when the server could not be reached).
    """

    def __init__(self, client: Any, model: str, base_url: str, model_id: str, render: ChatRenderer):
        self._client = client
        self.model = model
        self.model_id = model_id
        self.render = render
        self._root = base_url.removesuffix("/v1")  # llama-cpp-python serves /extras/* beside /v1, not under it
        self._probe: _Probe | None = None
        self._lock = threading.Lock()

    def can_score(self) -> bool:
        with self._lock:
            if self._probe is None:
                probe = self._run_probe()
                if probe is None:
                    return False  # unreachable: the chat call that follows reports it; probe again next time
                self._probe = probe
                if not probe.ok:
                    log.warning("%s cannot verify drafts: %s; it answers with plain chat completions", self.model_id,
                                probe.reason)
            return self._probe.ok

    def complete(self, request: CompletionRequest, draft: Sequence[int] | None) -> Completion:
        """The greedy completion of ``request`` (sampled when its temperature is above 0), re-scoring ``draft``
        first where that can save decoding; ``BackendError`` when the server fails."""
        sdk = _sdk()
        start = time.perf_counter()
        prompt = self.render(request.messages)
        spent = _Spent()
        try:
            if draft and request.temperature == 0 and not request.stop and request.max_tokens > 0:
                text, finish, ids = self._regenerate(prompt, request.max_tokens, [int(t) for t in draft], spent)
            else:
                text, finish = self._generate(prompt, request.max_tokens, spent, request.temperature, request.stop)
                ids = self._ids(text)
        except sdk.OpenAIError as e:
            raise BackendError(_describe(e, self.model_id)) from e
        return Completion(
            text=text,
            prompt_tokens=spent.prompt,
            output_tokens=spent.output,
            seconds=time.perf_counter() - start,
            model=self.model_id,
            reused_tokens=spent.reused,
            finish_reason=finish,
            output_ids=ids,
            requests=spent.requests,
        )

    # -- the draft path --------------------------------------------------------------------------------------------

    def _regenerate(self, prompt: str, max_tokens: int, draft: list[int], spent: _Spent) -> tuple[str, str, tuple]:
        draft = draft[:max_tokens]
        draft_text = self._detokenize(draft)
        scored = self._create(prompt + draft_text, 1, spent, echo=True)
        kept, kept_text = self._agreeing(prompt, draft_text, len(draft), scored)
        if kept == len(draft) == max_tokens:
            return draft_text, "length", tuple(draft)
        if kept == len(draft) and scored.choices[0].finish_reason == "stop":  # no stop strings here: it chose EOS
            return draft_text, "stop", tuple(draft)
        # Greedy decoding of prompt + kept is greedy decoding of prompt, given that its first tokens are the kept ones.
        text, finish = self._generate(prompt + kept_text, max_tokens - kept, spent)
        scored_prompt = scored.usage.prompt_tokens - len(draft)
        if kept and spent.last_prompt != scored_prompt + kept:
            # The kept text tokenised differently once cut from the draft: its scores do not apply. Start over.
            text, finish = self._generate(prompt, max_tokens, spent)
            kept_text = ""
        return kept_text + text, finish, self._ids(kept_text + text)

    def _agreeing(self, prompt: str, draft_text: str, n: int, scored: Any) -> tuple[int, str]:
        """How many of the ``n`` draft tokens greedy decoding keeps, and their text, from the echoed logprobs."""
        assert self._probe is not None, "CompletionsPath._agreeing runs only after a successful probe"
        choice = scored.choices[0]
        pieces = list(getattr(choice.logprobs, "tokens", None) or ())
        tops = list(getattr(choice.logprobs, "top_logprobs", None) or ())
        # Entries after the draft's: OpenAI's layout has one per generated token, the shifted one per generated token
        # the server evaluated (all but the last; more than none when a token ended inside a UTF-8 character).
        generated = scored.usage.completion_tokens or 0
        end = len(pieces) - (max(generated - 1, 0) if self._probe.shifted else generated)
        first = end - n
        if first < 1 or len(tops) != len(pieces) or not prompt.endswith(pieces[first - 1]):
            return 0, ""  # the server's tokens for the draft are not where they should be: keep nothing
        kept = offset = 0
        for j in range(n):
            piece = pieces[first + j]
            if not piece or not draft_text.startswith(piece, offset):
                if kept:  # the token before may end inside a character its text could not show: drop it too
                    kept -= 1
                    offset -= len(pieces[first + j - 1])
                break
            top = tops[first + j - 1] if self._probe.shifted else tops[first + j]
            if not top or max(top, key=top.__getitem__) != piece:
                break
            kept += 1
            offset += len(piece)
        if kept == n and offset != len(draft_text):  # the last token's text showed less than it holds: not kept
            kept -= 1
            offset -= len(pieces[first + n - 1])
        return kept, draft_text[:offset]

    # -- requests ---------------------------------------------------------------------------------------------------

    def _generate(self, prompt: str, max_tokens: int, spent: _Spent, temperature: float = 0.0,
                  stop: Sequence[str] = ()) -> tuple[str, str]:
        choice = self._create(prompt, max_tokens, spent, temperature=temperature, stop=stop).choices[0]
        return choice.text or "", choice.finish_reason or "stop"

    def _create(self, prompt: str, max_tokens: int, spent: _Spent, *, echo: bool = False, temperature: float = 0.0,
                stop: Sequence[str] = (), client: Any = None) -> Any:
        kwargs: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                                  "temperature": temperature, "extra_body": _GREEDY}
        if echo:
            kwargs.update(echo=True, logprobs=1)
        if stop:  # some servers reject an empty stop list
            kwargs["stop"] = list(stop)
        response = (client or self._client).completions.create(**kwargs)
        if not response.choices:
            raise BackendError(f"{self.model_id}: the server returned no choices")
        spent.add(response.usage)
        return response

    def _ids(self, text: str) -> tuple[int, ...]:
        assert self._probe is not None, "CompletionsPath._ids runs only after a successful probe"
        return tuple(self._tokenize(text)[len(self._probe.bos):]) if text else ()

    def _tokenize(self, text: str, client: Any = None) -> list[int]:
        tokens = self._extras("tokenize", {"input": text}, client).get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise BackendError(f"{self.model_id}: /extras/tokenize returned {tokens!r}, not a list of token ids")
        return tokens

    def _detokenize(self, ids: Sequence[int], client: Any = None) -> str:
        text = self._extras("detokenize", {"tokens": list(ids)}, client).get("text")
        if not isinstance(text, str):
            raise BackendError(f"{self.model_id}: /extras/detokenize returned {text!r}, not a text")
        return text

    def _extras(self, name: str, body: dict[str, Any], client: Any) -> dict[str, Any]:
        # Through the SDK for its auth header, timeout and retries; an absolute URL bypasses its /v1 base.
        response = (client or self._client).post(f"{self._root}/extras/{name}", cast_to=httpx.Response,
                                                  body={"model": self.model, **body})
        try:
            data = response.json()
        except ValueError as e:
            raise BackendError(f"{self.model_id}: /extras/{name} did not return JSON") from e
        return data if isinstance(data, dict) else {}

    def _run_probe(self) -> _Probe | None:
        """Tokenizer round trip, then prompt logprobs for a short text; None when the server cannot be reached."""
        sdk = _sdk()
        client = self._client.with_options(max_retries=0)  # an answer is an answer: a 404 or 500 will not change
        try:
            bos = tuple(self._tokenize("", client))
            if self._detokenize(self._tokenize(_PROBE_ANSWER, client)[len(bos):], client) != _PROBE_ANSWER:
                return _Probe(False, "its /extras/detokenize does not invert /extras/tokenize")
            prompt = self.render(_PROBE_CHAT) + _PROBE_ANSWER
            response = self._create(prompt, 1, _Spent(), echo=True, client=client)
        except sdk.APIConnectionError:
            return None
        except (sdk.OpenAIError, BackendError) as e:
            message = _describe(e, "probe") if isinstance(e, sdk.OpenAIError) else str(e)
            return _Probe(False, f"probing /extras/tokenize, /extras/detokenize and /completions failed ({message})")
        choice = response.choices[0]
        pieces = list(getattr(choice.logprobs, "tokens", None) or ())
        tops = list(getattr(choice.logprobs, "top_logprobs", None) or ())
        if not pieces or len(tops) != len(pieces) or not tops[-1]:
            return _Probe(False, "it returns no prompt logprobs for echo=true with logprobs "
                                 "(llama-cpp-python's server needs --logits_all true)")
        if getattr(response.usage, "prompt_tokens", None) is None:
            return _Probe(False, "it reports no usage for /completions")
        text = choice.text or ""
        generated = text[len(prompt):] if text.startswith(prompt) else ""
        joined, top = "".join(pieces), max(tops[-1], key=tops[-1].__getitem__)
        if generated and top == generated and joined.endswith(_PROBE_ANSWER + generated):
            return _Probe(True, bos=bos)
        if generated and top == generated and joined.endswith(_PROBE_ANSWER):
            return _Probe(True, shifted=True, bos=bos)
        return _Probe(False, "its echoed prompt logprobs do not line up with its tokens")


__all__ = ["CHAT_TEMPLATES", "ChatRenderer", "CompletionsPath", "chat_renderer"]
