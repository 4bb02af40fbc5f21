"""The second part of ``make demo``: standing answers to 2Wiki questions (``LLM_GENERATE``) kept fresh under edits.

    run_rag_demo(db, questions_file, num_questions=3, console=console, heatmap=Path("demo-out/heatmap.png"))

Each question is answered over its own ten paragraphs (``partition="qid"``, ``strategy="auto"``). Then four seeded
edits per question arrive, of known relevance (two irrelevant, the answer substituted in a supporting sentence, a
supporting paragraph deleted: the edit stream of ``deltamem bench edit-stream``). For every edit the demo prints the
strategy ``auto`` chose for the answer and why, and what it cost; then the cost beside a full recompute at every
refresh, and the attention heat map of one answer (on a backend with attention).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

import deltamem as dm
from deltamem.bench.datasets import load_questions
from deltamem.bench.edit_stream import DOCS, QUESTIONS, answers_view, doc_row, make_edits, paragraphs_of
from deltamem.display import literal
from deltamem.memory.attribution import render_heatmap

SEED = 0


def run_rag_demo(db: dm.Database, questions_file: Path, *, num_questions: int, console: Console,
                 heatmap: Path) -> None:
    questions = load_questions(questions_file)
    chosen = questions[:num_questions]
    rng = random.Random(SEED)
    edits = [e for q in chosen for e in make_edits(q, [o for o in questions if o is not q], 4, rng)]
    db.table("questions", key="qid", columns=QUESTIONS).upsert([{"qid": q.qid, "question": q.question}
                                                                for q in chosen])
    docs = db.table("docs", key="doc_id", columns=DOCS)
    docs.upsert([doc_row(q, title, sentences) for q in chosen for title, sentences in paragraphs_of(q).items()])
    console.rule("[bold]LLM_GENERATE: standing answers to 2Wiki questions")
    console.print(f"{len(chosen)} questions, each answered over its own 10 paragraphs; then {len(edits)} edits")
    answers = answers_view(db, "auto", shadow=0.0)
    started = time.perf_counter()
    for row in answers.rows(fresh=True):
        console.print(literal(f"  {row['question']}\n    -> ") + literal(row["answer"], "cyan"))
    console.print(f"answers built in {time.perf_counter() - started:.1f} s")
    _draw_heatmap(answers, chosen[0].qid, heatmap, console)

    table = RichTable(title="each edit: the strategy auto chose for the answer it touched, and why")
    for column in ("v", "edit (known relevance)", "strategy", "why", "calls", "reused tok", "s"):
        table.add_column(column, overflow="fold", justify="right" if column in ("calls", "reused tok", "s") else "left")
    for edit in edits:
        docs.delete(edit.doc_id) if edit.row is None else docs.upsert(edit.row)
        answers.rows(fresh=True)
        key = f'"{edit.qid}"'
        for d in (d for d in db.store.get_decisions("answers", key) if d.version == db.version):
            relevance = "relevant" if edit.relevant else "irrelevant"
            table.add_row(str(d.version), f"{edit.kind} ({relevance})", literal(d.strategy), literal(d.reason),
                          str(d.calls), str(d.reused_tokens), f"{d.seconds:.1f}")
    console.print(table)
    usage = db.usage()
    paid, full = usage.by_view["answers"], usage.full_recompute["answers"]
    # Tokens, not seconds: a full recompute's seconds are not measured here (a value refreshed over reused KV is
    # costed at its own, cheaper call); `deltamem bench edit-stream` times both in one run.
    computed = paid.prompt_tokens + paid.output_tokens
    full_tokens = full.cost.prompt_tokens + full.cost.output_tokens
    console.print(
        f"answers: deltamem paid [bold]{paid.calls}[/] calls computing {computed} tokens ({paid.reused_tokens} prompt "
        f"tokens reused from KV caches) over {full.refreshes} refreshes; a full recompute at every refresh would "
        f"have paid [bold]{full.cost.calls}[/] calls computing {full_tokens} tokens in the same engine, its memo "
        f"answering identical calls ({ratio(full.cost.calls, paid.calls)} the calls, "
        f"{ratio(full_tokens, computed)} the tokens), and {full.no_memo.calls} calls without a memo."
    )


def ratio(full: float, paid: float) -> str:
    """``full / paid`` as "12.3x", or "all" when nothing was paid."""
    return f"{full / paid:.1f}x" if paid else "all"


def _draw_heatmap(answers: dm.View, qid: str, path: Path, console: Console) -> None:
    """The attention heat map of one answer, from its attribution (absent on a backend without attention)."""
    dependencies = answers.explain(qid)["dependencies"]
    attribution = next((d["attribution"] for d in dependencies.values() if d.get("attribution")), None)
    if attribution is None:
        console.print("(no heat map: this backend has no attention to attribute the answers with)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    render_heatmap(attribution["matrix"], attribution["output_sentences"], attribution["context"], str(path),
                   title=f"answer to {qid}: output sentences x context sentences")
    console.print(literal(f"heat map of the answer to {qid} written to ") + literal(str(path), "bold")
                  + literal(f" (`deltamem explain DB answers '{qid}' --heatmap out.png` draws any answer's)"))
