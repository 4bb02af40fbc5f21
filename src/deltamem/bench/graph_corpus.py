"""The corpora of ``deltamem bench graph``: passages, questions with known supporting passages, and the passages a
change stream inserts and edits, from the 2Wiki corpus and HotpotQA.

    corpus = two_wiki(default_data_dir(), passages=500)

2Wiki: the HippoRAG corpus (6,119 passages) and the dev questions whose supporting passages it all holds (their
titles are the corpus's). HotpotQA: the distinct paragraphs of its 100 dev questions (about a thousand) and the
questions. In both, a question's ``context`` (its ten paragraphs) is what full-context retrieval reads, and a tenth
of the paragraphs that no question needs is held back for the stream to insert.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from deltamem.bench.datasets import Question, load_corpus, load_questions

_YEAR = re.compile(r"\b(1[5-9]\d\d|20[0-2]\d)\b")


@dataclass(frozen=True)
class GraphCorpus:
    name: str
    passages: list[dict[str, str]]  # {"pid", "title", "text"}, loaded before the stream
    spare: list[dict[str, str]]  # passages the stream inserts
    questions: list[Question]
    supporting: dict[str, set[str]]  # question id -> the pids of its supporting passages


def _rows(paragraphs: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"pid": p["id"], "title": p["title"], "text": p["text"]} for p in paragraphs]


def two_wiki(data_dir: Path, *, passages: int | None = None, questions: int | None = None,
             seed: int = 0) -> GraphCorpus:
    """The 2Wiki corpus, cut to ``passages`` (the supporting ones always kept), and its first ``questions``
    answerable dev questions."""
    corpus = _rows(load_corpus(data_dir / "2wikimultihopqa" / "hipporag_corpus_6119.json"))
    by_title: dict[str, list[str]] = {}
    for row in corpus:
        by_title.setdefault(row["title"], []).append(row["pid"])
    answerable, supporting = [], {}
    for q in load_questions(data_dir / "2wikimultihopqa" / "dev_000_099.json"):
        titles = {title for title, _i in q.supporting_facts}
        if titles and all(t in by_title for t in titles):
            answerable.append(q)
            supporting[q.qid] = {pid for t in titles for pid in by_title[t]}
    asked = answerable[:questions]
    return _split("2wiki", corpus, asked, {q.qid: supporting[q.qid] for q in asked}, passages, seed)


def hotpot(data_dir: Path, *, passages: int | None = None, questions: int | None = None,
           seed: int = 0) -> GraphCorpus:
    """HotpotQA's dev paragraphs as one corpus (ids: titles), and its first ``questions`` dev questions."""
    everyone = load_questions(data_dir / "hotpotqa" / "dev_000_099.json")
    seen: dict[str, dict[str, str]] = {}
    for q in everyone:
        for p in q.paragraphs:
            if p.title not in seen and p.text:
                seen[p.title] = {"pid": p.title, "title": p.title, "text": p.text}
    asked = everyone[:questions]
    supporting = {q.qid: {title for title, _i in q.supporting_facts if title in seen} for q in asked}
    return _split("hotpotqa", list(seen.values()), asked, supporting, passages, seed)


def _split(name: str, corpus: list[dict[str, str]], questions: list[Question], supporting: dict[str, set[str]],
           passages: int | None, seed: int) -> GraphCorpus:
    needed = set().union(*supporting.values()) if supporting else set()
    rng = random.Random(seed)
    others = [row for row in corpus if row["pid"] not in needed]
    rng.shuffle(others)
    spare, others = others[: max(1, len(others) // 10)], others[max(1, len(others) // 10):]
    if passages is not None:
        others = others[: max(0, passages - len(needed))]
    keep = needed | {row["pid"] for row in others}
    return GraphCorpus(name, [row for row in corpus if row["pid"] in keep], spare, questions, supporting)


def edited(text: str, rng: random.Random) -> str:
    """A plausible edit: a year changed when the passage has one, else a sentence appended."""
    years = _YEAR.findall(text)
    if years:
        old = rng.choice(years)
        return text.replace(old, str(int(old) + rng.choice((-3, -1, 1, 2, 5))), 1)
    return text + " It was revised in " + str(rng.randint(1950, 2020)) + "."
