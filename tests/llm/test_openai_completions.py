"""OpenAILLM's draft path (deltamem.llm.openai_completions) against a fake serving engine over real HTTP on 127.0.0.1.

The fake speaks llama-cpp-python's dialect (``/v1/completions`` with ``echo`` + ``logprobs``, ``/extras/tokenize``,
``/extras/detokenize``) in front of a toy greedy model: the answer to a prompt is the text of its ``Fact: ...`` line,
word by word, then EOS. It reports echoed logprobs in either layout (OpenAI's, or llama-cpp-python's one-off for
prompts that do not begin with BOS), or none at all. Its chat endpoint is ``make_app``'s, fronting ScriptedLLM.
"""

from __future__ import annotations

import logging
import re

import pytest
from fastapi import FastAPI

from deltamem.errors import ConfigError
from deltamem.llm.base import CompletionRequest, Message
from deltamem.llm.openai import OpenAILLM
from deltamem.llm.openai_completions import CHAT_TEMPLATES, chat_renderer
from deltamem.llm.openai_server import make_app, serve_in_thread
from deltamem.llm.scripted import ScriptedLLM

pytestmark = pytest.mark.timeout(60)

EOS = "<|im_end|>"
ANSWER_START = ["<|im_start|>", "assistant", "\n"]
_TOKEN = re.compile(r"<\|im_(?:start|end)\|>|\n|[ ]?[^\s<]+")


class ToyEngine:
    """A greedy 'model' with a word-level tokenizer; ``layout`` is "openai", "shifted" or "none" (no logprobs)."""

    def __init__(self, layout: str):
        self.layout = layout
        self.vocab: dict[str, int] = {EOS: 0}
        self.completions = 0  # /v1/completions requests, the probe's included
        self.tokenizer_calls = 0

    def tokenize(self, text: str) -> list[int]:
        pieces = _TOKEN.findall(text)
        assert "".join(pieces) == text, f"the toy tokenizer cannot cover {text!r}"
        return [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]

    def piece(self, token: int) -> str:
        text = next(p for p, i in self.vocab.items() if i == token)
        return "" if text.startswith("<|im_") else text  # special tokens detokenize to nothing, as in llama.cpp

    def greedy(self, ids: list[int], k: int) -> int:
        """The greedy token at position k <= len(ids): in the answer to a chat with a fact, the fact's next token or
        EOS; elsewhere the token that is there, and " five" after the last one (for the probe's "One, ..., four,")."""
        words = [next(p for p, i in self.vocab.items() if i == t) for t in ids[:k]]
        starts = [j + 3 for j in range(len(words) - 2) if words[j : j + 3] == ANSWER_START]
        fact = re.findall(r"Fact: ([^.]*)\.", "".join(words[: starts[-1]])) if starts else []
        if not fact:
            return ids[k] if k < len(ids) else self.tokenize(" five")[0]
        target = self.tokenize(fact[-1])
        so_far = ids[starts[-1] : k]
        if so_far == target[: len(so_far)] and len(so_far) < len(target):
            return target[len(so_far)]
        return self.vocab[EOS]

    def complete(self, body: dict) -> dict:
        self.completions += 1
        prompt, max_tokens = body["prompt"], body.get("max_tokens") or 16
        ids, generated, finish = self.tokenize(prompt), [], "length"
        while len(generated) < max_tokens:
            token = self.greedy(ids + generated, len(ids) + len(generated))
            if token == self.vocab[EOS]:
                finish = "stop"
                break
            generated.append(token)
        text = "".join(self.piece(t) for t in generated)
        logprobs = None
        if body.get("echo") and body.get("logprobs") is not None and self.layout != "none":
            logprobs = self._echo_logprobs(ids + generated, len(ids), len(generated))
        return {
            "id": "cmpl-toy", "object": "text_completion", "created": 0, "model": "toy",
            "choices": [{"text": (prompt if body.get("echo") else "") + text, "index": 0, "logprobs": logprobs,
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(generated),
                      "total_tokens": len(ids) + len(generated)},
        }

    def _echo_logprobs(self, all_ids: list[int], prompt_len: int, generated: int) -> dict:
        # OpenAI: one entry per token, describing its own position. llama-cpp-python without BOS: one entry per token
        # it evaluated (not the last generated one), holding the distribution of the position after it.
        shift = self.layout == "shifted"
        count = prompt_len + max(generated - 1, 0) if shift else len(all_ids)
        tokens, tops = [], []
        for k in range(count):
            at = k + 1 if shift else k
            top = None
            if at > 0:
                best = self.greedy(all_ids, at)
                top = {self.piece(best): -0.1}
                own = all_ids[k]
                top.setdefault(self.piece(own), -0.1 if own == best and not shift else -5.0)
            tokens.append(self.piece(all_ids[k]))
            tops.append(top)
        tops[0] = None
        return {"tokens": tokens, "token_logprobs": [None] * count, "top_logprobs": tops, "text_offset": [0] * count}


def serve(engine: ToyEngine | None):
    app: FastAPI = make_app(ScriptedLLM())
    if engine is not None:
        app.post("/v1/completions")(engine.complete)

        @app.post("/extras/tokenize")
        def tokenize(body: dict) -> dict:
            engine.tokenizer_calls += 1
            return {"tokens": engine.tokenize(body["input"])}

        @app.post("/extras/detokenize")
        def detokenize(body: dict) -> dict:
            engine.tokenizer_calls += 1
            return {"text": "".join(engine.piece(t) for t in body["tokens"])}

    return serve_in_thread(app)


def ask(fact: str, noise: str = "some document", max_tokens: int = 16) -> CompletionRequest:
    user = f"Doc: {noise}\nFact: {fact}.\nAnswer briefly."
    return CompletionRequest((Message("system", "Answer with the fact."), Message("user", user)), max_tokens)


# (old fact, new fact, max_tokens, requests the draft call should take)
EDITS = [
    ("Paris is the capital", "Paris is the capital", 16, 1),  # the answer is unchanged: one scoring request
    ("the sky is blue", "the sky is green", 16, 2),  # diverges at the 4th token
    ("red", "red and blue", 16, 2),  # the draft holds, but the answer goes on after it
    ("one two", "three", 16, 2),  # diverges at once
    ("a b c d e", "a b c d e", 3, 1),  # the draft fills max_tokens
    ("a b c d e", "a b x d e", 3, 2),
]


@pytest.mark.parametrize("layout", ["openai", "shifted"])
@pytest.mark.parametrize(("old_fact", "new_fact", "max_tokens", "requests"), EDITS)
def test_a_draft_gives_the_plain_answer(layout: str, old_fact: str, new_fact: str, max_tokens: int,
                                        requests: int) -> None:
    engine = ToyEngine(layout)
    with serve(engine) as server:
        llm = OpenAILLM("toy", server.base_url)
        assert llm.capabilities.logits and llm.capabilities.kv_cache
        old = llm.complete(ask(old_fact, "the old document", max_tokens))
        new_request = ask(new_fact, "an edited document", max_tokens)
        plain = llm.complete(new_request)
        before = engine.completions
        regenerated = llm.complete(new_request, cache_key="view/row", draft=old.output_ids)
        sent = engine.completions - before
    assert old.output_ids and old.text == " ".join(old_fact.split()[:max_tokens])
    assert (regenerated.text, regenerated.output_ids, regenerated.finish_reason) == (
        plain.text, plain.output_ids, plain.finish_reason)
    assert regenerated.requests == sent == requests
    assert plain.requests == 1
    assert regenerated.prompt_tokens > plain.prompt_tokens  # it paid for the draft tokens it scored
    # It decodes no more than a plain call, but for the token the scoring request generates after the draft.
    assert regenerated.output_tokens <= plain.output_tokens + 1


def test_a_sampled_request_ignores_its_draft() -> None:
    engine = ToyEngine("shifted")
    with serve(engine) as server:
        llm = OpenAILLM("toy", server.base_url)
        old = llm.complete(ask("x y"))
        got = llm.complete(ask("x y", "edited"), draft=old.output_ids)
        sampled = llm.complete(CompletionRequest(ask("x y").messages, temperature=0.5), draft=old.output_ids)
    assert got.requests == 1 and sampled.requests == 1 and sampled.text == "x y"


def test_without_prompt_logprobs_it_falls_back_to_chat(caplog: pytest.LogCaptureFixture) -> None:
    engine = ToyEngine("none")
    request = ask("Paris")
    with serve(engine) as server, caplog.at_level(logging.WARNING):
        llm = OpenAILLM("toy", server.base_url)
        capabilities = llm.capabilities
        plain = llm.complete(request)
        with_draft = llm.complete(request, cache_key="view/row", draft=(1, 2, 3))
        assert llm.capabilities == capabilities  # probed once
    assert not capabilities.logits and not capabilities.kv_cache
    assert engine.completions == 1  # the probe; answers come from /chat/completions
    want = ScriptedLLM().complete(request).text
    assert plain.text == with_draft.text == want and with_draft.output_ids == ()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "cannot verify drafts" in warnings[0] and "no prompt logprobs" in warnings[0]
    assert "--logits_all true" in warnings[0]


def test_a_server_without_the_endpoints_falls_back_to_chat(caplog: pytest.LogCaptureFixture) -> None:
    with serve(None) as server, caplog.at_level(logging.WARNING):
        llm = OpenAILLM("toy", server.base_url)
        got = llm.complete(ask("Paris"), draft=(1, 2))
    assert not llm.capabilities.logits
    assert got.text == ScriptedLLM().complete(ask("Paris")).text
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "cannot verify drafts" in warning and "HTTP 404" in warning


def test_no_chat_template_means_no_probe() -> None:
    engine = ToyEngine("openai")
    with serve(engine) as server:
        llm = OpenAILLM("toy", server.base_url, chat_template=None)
        assert not llm.capabilities.logits
        got = llm.complete(ask("Paris"), draft=(1,))
    assert engine.completions == engine.tokenizer_calls == 0
    assert got.text == ScriptedLLM().complete(ask("Paris")).text


def test_chat_templates() -> None:
    messages = ask("Paris").messages
    chatml = CHAT_TEMPLATES["chatml"](messages)
    assert chatml == (f"<|im_start|>system\n{messages[0].content}<|im_end|>\n"
                      f"<|im_start|>user\n{messages[1].content}<|im_end|>\n<|im_start|>assistant\n")
    jinja = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert chat_renderer(jinja)(messages) == chatml
    with pytest.raises(ConfigError, match="Unknown chat template 'llama9'"):
        chat_renderer("llama9")
    with pytest.raises(ConfigError, match="not valid Jinja2"):
        chat_renderer("{% for %}")
    refusing = chat_renderer("{{ raise_exception('system messages only') }}")
    with pytest.raises(ConfigError, match="system messages only"):
        refusing(messages)
