"""``deltamem bench edit-stream``: standing answers to 2Wiki/HotpotQA questions under edits of known relevance.

    deltamem bench edit-stream --data ../shared/data/2wikimultihopqa/dev_000_099.json --questions 30 --llm test

Each question gets a standing ``LLM_GENERATE`` answer over its own ten paragraphs (``partition="qid"``). Then a
seeded stream of edits arrives, per question in this order: an irrelevant edit (a non-supporting sentence of a
supporting paragraph, or a distractor paragraph changed, added or deleted), a second irrelevant one, the answer
substituted in a supporting sentence (the new answer is known), and a supporting paragraph deleted. The initial build
is made once and copied for every strategy; every strategy, and the ``full`` baseline, sees the same stream. Reported
per strategy: calls, prompt tokens computed and reused, output tokens and model seconds of the edits, wall seconds,
agreement with ``full`` after each edit, take-up of known new answers, accuracy against the gold answer after each
edit (contains-match and token F1, ``deltamem.bench.answer_quality``; the gold is the substituted answer from its
substitution on) with a paired bootstrap interval of the difference from ``full``'s, and the precision of its skips
and verifications against the edits' known relevance. The result lists every edit with every strategy's answer and
decisions, so ``headline_figures`` recomputes the answer figures from the JSON alone.

On a backend with KV caches every strategy starts from the caches the initial build left (a copy of them), as a
server that has been answering would; on a backend with attention the build captures attribution, and the same build
is also run once without it to measure what attribution costs.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deltamem as dm
from deltamem.bench.answer_quality import contains_match, paired_bootstrap_ci, token_f1
from deltamem.bench.datasets import Question, load_questions
from deltamem.changes import RowKey
from deltamem.errors import ConfigError
from deltamem.llm import lazy_llm
from deltamem.memory.kvcache import PromptKVCache
from deltamem.operators.generate import STRATEGIES
from deltamem.store.base import ViewDef
from deltamem.store.sqlite import SQLiteStore

PROMPT = "Answer the question from the documents with a short phrase."
QUESTIONS = {"qid": "text", "question": "text"}
DOCS = {"doc_id": "text", "qid": "text", "title": "text", "text": "text"}
_NUMBER = re.compile(r"\b(1[0-9]{3}|20[0-9]{2}|[0-9]{1,3})\b")
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class Edit:
    """One edit of a question's documents: ``row`` replaces the document, or deletes it when None."""

    qid: str
    kind: str
    relevant: bool
    doc_id: str
    row: dict[str, str] | None
    new_answer: str | None = None


def doc_row(question: Question, title: str, sentences: Sequence[str]) -> dict[str, str]:
    """One paragraph of a question as a DATA_SOURCE row, keyed by question and title."""
    return {"doc_id": f"{question.qid}/{title}", "qid": question.qid, "title": title,
            "text": " ".join(s.strip() for s in sentences)}


def _alter(sentence: str, rng: random.Random) -> str:
    """A plausible factual edit: shift a number, or else change the sentence's last word."""
    match = _NUMBER.search(sentence)
    if match:
        return sentence[: match.start()] + str(int(match.group()) + rng.randint(1, 9)) + sentence[match.end():]
    return sentence.rstrip(". ") + ", according to a later source."


def make_edits(question: Question, others: Sequence[Question], num_edits: int, rng: random.Random) -> list[Edit]:
    """The edits for one question: irrelevant, irrelevant, answer substitution, supporting-paragraph deletion, ..."""
    supporting = {title for title, _i in question.supporting_facts}
    support_idx = {(title, i) for title, i in question.supporting_facts}
    paragraphs = paragraphs_of(question)
    distractors = [t for t in paragraphs if t not in supporting]
    edits: list[Edit] = []
    for n in range(num_edits):
        slot = n % 4
        if slot in (0, 1):
            options = [(t, i) for t in paragraphs if t in supporting for i in range(len(paragraphs[t]))
                       if (t, i) not in support_idx] if slot == 0 else []
            if options:
                title, i = rng.choice(options)
                paragraphs[title][i] = _alter(paragraphs[title][i], rng)
                edits.append(Edit(question.qid, "non-supporting sentence", False, f"{question.qid}/{title}",
                                  doc_row(question, title, paragraphs[title])))
                continue
            kind = rng.choice(["distractor edit", "distractor add", "distractor delete"] if distractors else
                              ["distractor add"])
            if kind == "distractor add":
                donor = rng.choice([p for q in others for p in q.paragraphs if p.title not in paragraphs])
                paragraphs[donor.title] = list(donor.sentences)
                edits.append(Edit(question.qid, kind, False, f"{question.qid}/{donor.title}",
                                  doc_row(question, donor.title, donor.sentences)))
            elif kind == "distractor delete":
                title = distractors.pop(rng.randrange(len(distractors)))
                del paragraphs[title]
                edits.append(Edit(question.qid, kind, False, f"{question.qid}/{title}", None))
            else:
                title = rng.choice(distractors)
                paragraphs[title][0] = _alter(paragraphs[title][0], rng)
                edits.append(Edit(question.qid, kind, False, f"{question.qid}/{title}",
                                  doc_row(question, title, paragraphs[title])))
        elif slot == 2:
            found = [(t, i) for t, i in sorted(support_idx) if t in paragraphs and i < len(paragraphs[t])
                     and question.answer in paragraphs[t][i]]
            if not found:
                continue
            title, i = found[0]
            new = _new_answer(question, others, rng)
            paragraphs[title][i] = paragraphs[title][i].replace(question.answer, new)
            edits.append(Edit(question.qid, "answer substitution", True, f"{question.qid}/{title}",
                              doc_row(question, title, paragraphs[title]), new_answer=new))
        else:
            titles = [t for t in sorted(supporting) if t in paragraphs]
            if titles:
                title = rng.choice(titles)
                del paragraphs[title]
                edits.append(Edit(question.qid, "supporting deletion", True, f"{question.qid}/{title}", None))
    return edits


def paragraphs_of(question: Question) -> dict[str, list[str]]:
    """A question's paragraphs by title; a title repeated in the data keeps its first paragraph."""
    paragraphs: dict[str, list[str]] = {}
    for p in question.paragraphs:
        paragraphs.setdefault(p.title, list(p.sentences))
    return paragraphs


def _new_answer(question: Question, others: Sequence[Question], rng: random.Random) -> str:
    if question.answer.isdigit():
        return str(int(question.answer) + rng.randint(1, 9))
    names = sorted({q.answer for q in others if q.answer != question.answer and not any(c.isdigit() for c in q.answer)
                    and q.answer.lower() not in ("yes", "no")})
    return rng.choice(names) if names else question.answer + " Jr."


def gold_answers(edits: Sequence[Edit], questions: Sequence[Question]) -> list[str]:
    """The gold answer after each edit: its question's answer until an answer substitution for that question, the
    substituted answer from then on (a later deletion of its paragraph does not bring the old answer back)."""
    gold = {q.qid: q.answer for q in questions}
    after = []
    for edit in edits:
        if edit.new_answer is not None:
            gold[edit.qid] = edit.new_answer
        after.append(gold[edit.qid])
    return after


def _build(path: str, backend: Any, chosen: Sequence[Question], strategy: str, shadow: float) -> tuple[float, dict]:
    """Build the standing answers in a new database at ``path``; returns the model seconds paid and the answers."""
    db = dm.connect(path, llm=backend, embedder="test", background=False)
    db.table("questions", key="qid", columns=QUESTIONS).upsert(
        [{"qid": q.qid, "question": q.question} for q in chosen])
    db.table("docs", key="doc_id", columns=DOCS).upsert(
        [doc_row(q, title, sentences) for q in chosen for title, sentences in paragraphs_of(q).items()])
    answers = {r["qid"]: r["answer"] or "" for r in answers_view(db, strategy, shadow).rows(fresh=True)}
    seconds = sum(e.seconds for e in db.store.get_ledger("answers") if e.outcome == "paid")
    db.close()
    return seconds, answers


def answers_view(db: dm.Database, strategy: str, shadow: float) -> dm.View:
    """The standing answers: one per question, over its own paragraphs (``partition="qid"``)."""
    return db.generate("answers", prompt=PROMPT, context=db.table("questions"), data_source=db.table("docs"),
                       partition="qid", strategy=strategy, shadow=shadow, max_tokens=24,
                       question="{question}", document="{title}: {text}")


def run_edit_stream(
    *, data_file: Path, llm: str, num_questions: int, edits_per_question: int, seed: int,
    strategies: Sequence[str], shadow: float = 0.1, progress: Callable[[str, int, int], None] | None = None,
    kv_cache_bytes: int = 4 * 2**30,
) -> dict[str, Any]:
    """Run the benchmark described above; the result is JSON-ready: ``config``, ``strategies`` (the figures per
    strategy), ``initial_answers`` and ``edits`` (every edit with every strategy's answer, decisions and scores)."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"Unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    strategies = ["full", *[s for s in strategies if s != "full"]]  # the baseline runs first: it is the reference
    questions = load_questions(data_file)
    if len(questions) < 2:
        raise ConfigError(f"{data_file} holds {len(questions)} questions; the benchmark needs at least 2")
    chosen = questions[:num_questions]
    rng = random.Random(seed)
    edits = [e for q in chosen for e in make_edits(q, [o for o in questions if o is not q], edits_per_question, rng)]
    backend = lazy_llm(llm).get()
    kv = backend.capabilities.kv_cache
    if kv:  # room for every answer's prompt KV, so no strategy loses its cache to another question
        backend.kv_cache = PromptKVCache(max(kv_cache_bytes, backend.kv_cache.max_bytes))

    with tempfile.TemporaryDirectory() as folder:
        plain_seconds = None
        if backend.capabilities.attention:  # the same build without attribution, for its overhead
            plain_seconds, _answers = _build(str(Path(folder) / "plain.db"), backend, chosen, "full", shadow)
        base = str(Path(folder) / "base.db")
        build_seconds, initial = _build(base, backend, chosen, "auto", shadow)
        warm = backend.kv_cache.copy() if kv else None
        store = SQLiteStore(base)
        base_version = store.get_latest_version()
        store.close()

        results: dict[str, Any] = {}
        answered: dict[str, list[str]] = {}
        decided: dict[str, list[list[str]]] = {}
        reasons: dict[str, list[list[str]]] = {}  # beside the decisions: which were exact and which approximate
        for strategy in strategies:
            path = str(Path(folder) / f"{strategy}.db")
            shutil.copy(base, path)
            if warm is not None:
                backend.kv_cache = warm.copy()  # every strategy starts from the build's caches, none from another's
            store = SQLiteStore(path)  # the copied build, switched to this strategy: state and answers carry over
            (view,) = store.get_view_defs()
            store.put_view_def(ViewDef(view.name, {**view.plan, "strategy": strategy}), replace=True)
            store.close()
            db = dm.connect(path, llm=backend, embedder="test", background=False)
            answers, decisions, edit_walls = [], [], []
            started = time.perf_counter()
            for i, edit in enumerate(edits):
                docs = db.table("docs")
                edit_started = time.perf_counter()
                docs.delete(edit.doc_id) if edit.row is None else docs.upsert(edit.row)
                rows = {r["qid"]: r["answer"] for r in db.view("answers").rows(fresh=True)}
                edit_walls.append(time.perf_counter() - edit_started)
                answers.append(rows.get(edit.qid) or "")
                decisions.append([d for d in db.store.get_decisions("answers", RowKey(json.dumps(edit.qid)))
                                  if d.version == db.version])
                if progress:
                    progress(strategy, i + 1, len(edits))
            wall = time.perf_counter() - started
            ledger = [e for e in db.store.get_ledger("answers") if e.version and e.version > base_version
                      and e.outcome == "paid"]
            db.close()
            answered[strategy], decided[strategy] = answers, [[d.strategy for d in ds] for ds in decisions]
            reasons[strategy] = [[d.reason for d in ds] for ds in decisions]
            results[strategy] = _costs(edits, ledger, wall, edit_walls)
    result = {
        "config": {"data": str(data_file), "llm": backend.model_id, "questions": len(chosen),
                   "edits_per_question": edits_per_question, "edits": len(edits), "seed": seed, "shadow": shadow,
                   "kv_cache_bytes": backend.kv_cache.max_bytes if kv else None,
                   "initial_build_seconds": build_seconds,
                   "initial_build_seconds_without_attribution": plain_seconds,
                   "attribution_overhead": None if not plain_seconds else build_seconds / plain_seconds - 1,
                   "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "bootstrap_seed": seed,
                   "edit_kinds": {k: sum(e.kind == k for e in edits) for k in sorted({e.kind for e in edits})}},
        "strategies": results,
        "initial_answers": initial,
        "edits": [
            {"qid": e.qid, "kind": e.kind, "relevant": e.relevant, "doc_id": e.doc_id, "new_answer": e.new_answer,
             "gold": gold, "strategies": {s: {"answer": answered[s][i], "decided": decided[s][i], "reasons": reasons[s][i],
                                              "contains": contains_match(answered[s][i], gold),
                                              "f1": token_f1(answered[s][i], gold)} for s in strategies}}
            for i, (e, gold) in enumerate(zip(edits, gold_answers(edits, chosen), strict=True))],
    }
    figures = headline_figures(result)  # computed from the listed edits, as anyone holding the JSON can
    result["config"]["full_changed_on_irrelevant"] = figures["full_changed_on_irrelevant"]
    for strategy, numbers in figures["strategies"].items():
        results[strategy].update(numbers)
    return result


def headline_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The answer figures of an edit-stream result from its ``initial_answers``, ``edits`` and bootstrap settings
    alone: ``full_changed_on_irrelevant``, and per strategy the figures the run reports beside its costs."""
    edits, config = result["edits"], result["config"]
    per_edit = {s: [e["strategies"][s] for e in edits] for s in result["strategies"]}
    full = [a["answer"] for a in per_edit["full"]]
    irrelevant = sum(not e["relevant"] for e in edits)
    figures = {}
    for strategy, answers in per_edit.items():
        agrees = [a["answer"].strip() == r.strip() for a, r in zip(answers, full, strict=True)]
        takeup = [e["new_answer"].lower() in a["answer"].lower() for a, r, e in zip(answers, full, edits, strict=True)
                  if e["new_answer"] and e["new_answer"].lower() in r.lower()]
        out: dict[str, Any] = {"agreement": _mean(agrees), "takeup": _mean(takeup), "takeup_cases": len(takeup)}
        scores = {metric: [a[metric] for a in answers] for metric in ("contains", "f1")}
        for metric, values in scores.items():
            out[metric] = _mean(values)
            ci = None if strategy == "full" else paired_bootstrap_ci(
                values, [a[metric] for a in per_edit["full"]], resamples=config["bootstrap_resamples"],
                seed=config["bootstrap_seed"])
            out[f"{metric}_vs_full_ci"] = None if ci is None else list(ci)
        for relevant in (True, False):  # the same figures split by the edits' known relevance
            label = "relevant" if relevant else "irrelevant"
            picked = [i for i, e in enumerate(edits) if e["relevant"] == relevant]
            for name, values in (("agreement", agrees), *scores.items()):
                out[f"{name}_{label}"] = _mean([values[i] for i in picked])
        # the answers an edit left as they were (skipped, or verified and kept) beside what full answered
        kept = [i for i, a in enumerate(answers) if a["decided"] in (["skip"], ["verify"])]
        out["kept_count"], out["kept_agreement"] = len(kept), _mean([agrees[i] for i in kept])
        for kind in ("skip", "verify"):
            # an edit counts when this was its only decision: after a shadow check the answer kept is full's
            alone = [a["decided"] == [kind] for a in answers]
            hits = sum(a and not e["relevant"] for a, e in zip(alone, edits, strict=True))
            out[f"{kind}_count"] = sum(alone)
            out[f"{kind}_precision"] = hits / sum(alone) if any(alone) else None
            out[f"{kind}_recall"] = hits / irrelevant if any(alone) and irrelevant else None
        figures[strategy] = out
    return {"full_changed_on_irrelevant": _changed_on_irrelevant(edits, full, result["initial_answers"]),
            "strategies": figures}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _changed_on_irrelevant(edits: Sequence[dict], full: Sequence[str], initial: dict[str, str]) -> float | None:
    """The share of irrelevant edits after which ``full`` answered differently than before: the noise floor of the
    agreement any strategy that skips them can reach."""
    previous, changed, irrelevant = dict(initial), 0, 0
    for edit, answer in zip(edits, full, strict=True):
        if not edit["relevant"]:
            irrelevant += 1
            changed += answer.strip() != previous.get(edit["qid"], "").strip()
        previous[edit["qid"]] = answer
    return changed / irrelevant if irrelevant else None


def _costs(edits: Sequence[Edit], ledger: Sequence[Any], wall: float, edit_walls: Sequence[float]) -> dict[str, Any]:
    """What a strategy paid for the edits: its ledger's calls, tokens and model seconds, and the wall clock."""
    out = {
        "calls": len(ledger),
        "prompt_tokens": sum(e.prompt_tokens for e in ledger),
        "reused_tokens": sum(e.reused_tokens for e in ledger),
        "output_tokens": sum(e.output_tokens for e in ledger),
        "seconds": sum(e.seconds for e in ledger),
        "wall_seconds": wall,
    }
    for relevant in (True, False):
        out[f"wall_seconds_{'relevant' if relevant else 'irrelevant'}"] = sum(
            w for w, e in zip(edit_walls, edits, strict=True) if e.relevant == relevant)
    return out
