"""The runner memoises only exact completions: an answer that rests on approximate KV must never answer an
identical call later, which has to get what a plain call returns."""

from __future__ import annotations

import dataclasses

from deltamem.llm.base import CompletionRequest, Message
from deltamem.llm.memo import call_hash
from deltamem.llm.runner import CallRunner, CallSpec
from deltamem.llm.scripted import ScriptedLLM
from deltamem.store.sqlite import SQLiteStore


class Approximate(ScriptedLLM):
    def complete(self, request, **hints):
        return dataclasses.replace(super().complete(request, **hints), exact=False)


def test_an_inexact_completion_is_paid_and_recorded_but_never_memoised(tmp_path):
    store = SQLiteStore(str(tmp_path / "db.sqlite"))
    request = CompletionRequest((Message("user", "Where was Ada born?"),))
    for backend, memoised in ((Approximate(), False), (ScriptedLLM(), True)):
        runner = CallRunner(store, backend)
        (result,) = runner.run([CallSpec(request, "insert")], view="v", operator="o", version=1)
        assert result.completion is not None and not result.memo_hit
        assert (store.get_memo(call_hash(backend.model_id, request)) is not None) is memoised
        runner.close()
    assert [e.outcome for e in store.get_ledger("v")] == ["paid", "paid"]  # the inexact answer did not save the second
    store.close()
