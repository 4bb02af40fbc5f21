"""Readers for the QA data in ``../shared/data``: the standard 2WikiMultihopQA / HotpotQA layout.

    passages = load_passages(default_data_dir() / "2wikimultihopqa" / "dev_000_099.json", limit=40)

A record has ``_id``, ``question``, ``answer``, ``context`` ([[title, [sentences]]], ten paragraphs) and
``supporting_facts`` ([[title, sentence index]]); a supporting sentence is, by construction, relevant to its question.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from deltamem.errors import ConfigError


@dataclass(frozen=True)
class Paragraph:
    title: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(s.strip() for s in self.sentences)


@dataclass(frozen=True)
class Question:
    qid: str
    question: str
    answer: str
    paragraphs: tuple[Paragraph, ...]
    supporting_facts: tuple[tuple[str, int], ...]


def default_data_dir() -> Path:
    """``$DELTAMEM_DATA``, else the first ``shared/data`` beside the working directory or one of its parents."""
    if os.environ.get("DELTAMEM_DATA"):
        return Path(os.environ["DELTAMEM_DATA"])
    for folder in [Path.cwd(), *Path.cwd().parents]:
        candidate = folder.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    raise ConfigError("Cannot find the shared data folder; set DELTAMEM_DATA=/path/to/shared/data")


def load_questions(path: str | Path) -> list[Question]:
    """Questions from a JSON list or a JSON Lines file in the standard layout."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Data file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()
                                                                          if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path.name} is neither a JSON list nor JSON Lines: {exc}") from None
    questions = []
    for position, record in enumerate(records):
        try:
            questions.append(Question(
                qid=str(record["_id"]),
                question=record["question"],
                answer=record["answer"],
                paragraphs=tuple(Paragraph(title, tuple(sentences)) for title, sentences in record["context"]),
                supporting_facts=tuple((title, int(index)) for title, index in record["supporting_facts"]),
            ))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path.name}: record {position} is not in the 2Wiki/HotpotQA layout ({exc!r})") from None
    return questions


def load_passages(path: str | Path, *, limit: int | None = None, skip: int = 0) -> list[dict[str, str]]:
    """Distinct paragraphs as rows ``{"id", "title", "text"}``, in file order (id: the title)."""
    seen: dict[str, dict[str, str]] = {}
    for question in load_questions(path):
        for paragraph in question.paragraphs:
            if paragraph.title not in seen and paragraph.text:
                seen[paragraph.title] = {"id": paragraph.title, "title": paragraph.title, "text": paragraph.text}
    rows = list(seen.values())[skip:]
    return rows if limit is None else rows[:limit]


def load_corpus(path: str | Path) -> list[dict[str, str]]:
    """A passage corpus in the HippoRAG layout (a JSON list of ``{"title", "text"}``) as rows ``{"id", "title",
    "text"}``, in file order; ids are the titles, numbered when a title repeats."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Cannot read the corpus {path}: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(p, dict) and "title" in p and "text" in p for p in data):
        raise ConfigError(f"{path} is not a passage corpus: expected a JSON list of objects with 'title' and 'text'")
    rows, seen = [], Counter()
    for passage in data:
        title = str(passage["title"])
        seen[title] += 1
        key = title if seen[title] == 1 else f"{title} ({seen[title]})"
        rows.append({"id": key, "title": title, "text": str(passage["text"])})
    return rows
