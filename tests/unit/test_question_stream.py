"""The question stream of ``deltamem bench context-stream``, built from the real 2Wiki and HotpotQA files."""

from __future__ import annotations

import re
from collections import Counter

import pytest

import deltamem.bench.question_stream as qs
import deltamem.bench.stream_facts as sf
from deltamem.bench.answer_quality import normalize_answer
from deltamem.bench.datasets import default_data_dir
from deltamem.bench.question_stream import ContextStream, base_questions, build_context_stream, pattern_regex

WIKI = default_data_dir() / "2wikimultihopqa" / "dev_000_099.json"
HOTPOT = default_data_dir() / "hotpotqa" / "dev_000_099.json"


@pytest.fixture(scope="module")
def wiki() -> ContextStream:
    return build_context_stream(WIKI, originals=20)


@pytest.fixture(scope="module")
def hotpot() -> ContextStream:
    return build_context_stream(HOTPOT, originals=20)


@pytest.fixture(scope="module", params=["wiki20", "wiki40", "hotpot"])
def stream(request, wiki, hotpot) -> ContextStream:
    return {"wiki20": wiki, "hotpot": hotpot}.get(request.param) or build_context_stream(WIKI, originals=40, seed=3)


def _by_key(stream: ContextStream) -> dict:
    return {q.key: q for q in stream.questions}


def test_the_stream_is_deterministic_for_a_seed_and_changes_with_it(wiki):
    assert build_context_stream(WIKI, originals=20) == wiki
    other = build_context_stream(WIKI, originals=20, seed=1)
    assert [q.question for q in other.questions] != [q.question for q in wiki.questions]
    assert {q.question for q in other.questions if q.kind == "original"} == \
        {q.question for q in wiki.questions if q.kind == "original"}  # the originals do not depend on the seed


def test_every_kind_is_there_on_2wiki_with_twenty_originals(wiki):
    kinds = Counter(q.kind for q in wiki.questions)
    assert set(kinds) == set(qs.KINDS)
    assert kinds["original"] == kinds["repeat"] == 20
    assert kinds["paraphrase"] >= 20 and kinds["near_direction"] >= 15
    assert len({q.part for q in wiki.questions}) == 20
    assert len(wiki.documents) == 10 * 20


def test_keys_are_unique_and_each_derived_question_arrives_after_its_original(stream):
    keys = [q.key for q in stream.questions]
    assert keys == [f"q{i:03d}" for i in range(len(keys))]
    position, by_key = {k: i for i, k in enumerate(keys)}, _by_key(stream)
    for q in stream.questions:
        origin = by_key[q.origin]
        assert origin.kind == "original" and origin.part == q.part
        assert (q.origin == q.key) == (q.kind == "original")
        assert position[q.origin] <= position[q.key]


def test_repeats_and_paraphrases_keep_the_gold_and_near_direction_flips_it(stream):
    by_key = _by_key(stream)
    for q in stream.questions:
        origin = by_key[q.origin]
        if q.kind == "repeat":
            assert (q.question, q.gold, q.entities) == (origin.question, origin.gold, origin.entities)
        elif q.kind == "paraphrase":
            assert q.gold == origin.gold and q.relation == origin.relation and q.question != origin.question
            assert {e.lower() for e in q.entities} == {e.lower() for e in origin.entities}
        elif q.kind == "near_direction":
            assert q.relation != origin.relation and q.entities == origin.entities
            assert not {normalize_answer(g) for g in q.gold} & {normalize_answer(g) for g in origin.gold}
            if q.gold[0] in ("yes", "no"):
                assert {q.gold[0], origin.gold[0]} == {"yes", "no"}
            else:
                assert normalize_answer(q.gold[0]) in {normalize_answer(e) for e in q.entities}
        elif q.kind == "near_entity":
            assert q.relation == origin.relation and len(set(q.entities) & set(origin.entities)) == 1
        elif q.kind in ("near_relation", "shared"):
            assert q.relation != origin.relation and q.entities == origin.entities
        if q.kind == "shared":
            assert q.relation.endswith("_gap") and q.gold[0].isdigit()


def test_supporting_paragraphs_are_documents_of_the_questions_part(stream):
    documents = {d.doc_id: d for d in stream.documents}
    assert len(documents) == len(stream.documents)
    for q in stream.questions:
        assert q.supporting and all(documents[d].part == q.part for d in q.supporting)
        titles = {documents[d].title.lower() for d in q.supporting}
        assert {normalize_answer(e) for e in q.entities} <= {normalize_answer(t) for t in titles}
        if q.relation.startswith("director_"):
            assert len(q.supporting) == 4  # the two films and their directors


def test_every_question_matches_exactly_one_pattern_with_its_entities_as_slots(stream):
    used = set()
    for q in stream.questions:
        matches = [(p, m) for p in stream.decompose if (m := pattern_regex(p).fullmatch(q.question))]
        assert len(matches) == 1, (q.question, [p for p, _ in matches])
        pattern, m = matches[0]
        assert (m["a"].lower(), m["b"].lower()) == tuple(e.lower() for e in q.entities)
        used.add(pattern)
    assert used == set(stream.decompose)  # one pattern per phrasing the stream uses, and no other


def test_films_stay_films_and_songs_songs(stream):
    nouns: dict[str, set[str]] = {}
    for q in stream.questions:
        if q.relation.startswith("released_"):
            said = re.findall(r"\b(film|song)s? ", q.question)
            assert len(said) == 1 and all(f"the {said[0]} " in b for b in base_questions(stream, q))
            nouns.setdefault(q.part, set()).add(said[0])
    assert all(len(n) == 1 for n in nouns.values())


def test_base_questions_are_the_same_whatever_composite_asks_for_them(wiki):
    by_key = _by_key(wiki)
    bases = {q.key: {b.lower() for b in base_questions(wiki, q)} for q in wiki.questions}
    for q in wiki.questions:
        if q.kind in ("repeat", "paraphrase", "near_direction"):
            assert bases[q.key] == bases[q.origin]  # e.g. released_first and released_last share their facts
        if q.kind == "near_entity":
            assert len(bases[q.key] & bases[q.origin]) >= 1
    uses = Counter(b for key_bases in bases.values() for b in key_bases)
    for q in (q for q in wiki.questions if q.kind == "original"):
        assert max(uses[b] for b in bases[q.key]) >= 3, q.question  # several questions need the same fact
    assert len(uses) < len(wiki.questions)
    assert "when was the film blind shaft released?" in uses
    assert by_key["q000"].kind == "original"


def test_relevant_edits_flip_the_comparison_and_list_every_dependent_question(stream):
    documents, by_key = {d.doc_id: d for d in stream.documents}, _by_key(stream)
    assert len({e.doc_id for e in stream.edits}) == len(stream.edits)
    relevant = [e for e in stream.edits if e.kind == "flip_date"]
    for edit in relevant:
        old = documents[edit.doc_id].text
        assert edit.text != old and len(edit.text) == len(old)
        assert set(edit.relevant_to) == {q.key for q in stream.questions if edit.doc_id in q.supporting}
        assert edit.new_gold and set(edit.new_gold) <= set(edit.relevant_to)
        flipped = [by_key[k] for k in edit.new_gold if by_key[k].kind == "original"]
        assert len(flipped) == 1
        original = flipped[0]
        assert edit.new_gold[original.key] != original.gold
        for q in (by_key[k] for k in edit.new_gold):
            if q.origin == original.key and q.kind in ("repeat", "paraphrase"):
                assert edit.new_gold[q.key] == edit.new_gold[original.key]
            if q.origin == original.key and q.kind == "near_direction":
                assert edit.new_gold[q.key] == original.gold  # the winner and the loser swap
                assert {normalize_answer(g) for g in edit.new_gold[original.key]} & \
                    {normalize_answer(g) for g in q.gold}


def test_irrelevant_edits_touch_no_supporting_paragraph(stream):
    supporting = {d for q in stream.questions for d in q.supporting}
    documents = {d.doc_id: d for d in stream.documents}
    for edit in (e for e in stream.edits if e.kind != "flip_date"):
        assert edit.kind == "irrelevant_sentence" and edit.doc_id not in supporting
        assert edit.relevant_to == () and edit.new_gold == {}
        assert edit.text and edit.text != documents[edit.doc_id].text


def test_2wiki_gets_about_half_relevant_edits(wiki):
    assert Counter(e.kind for e in wiki.edits) == {"flip_date": 5, "irrelevant_sentence": 5}
    assert len(build_context_stream(WIKI, originals=5, edits=3).edits) == 3


def test_hotpotqa_builds_with_the_kinds_its_data_allows(hotpot):
    # only 26 of its 100 records hold their supporting paragraphs; of its comparison questions only
    # "Are the Laleli Mosque and Esma Sultan Mansion located in the same neighborhood?" parses and has them
    kinds = Counter(q.kind for q in hotpot.questions)
    assert kinds == {"original": 1, "repeat": 1, "paraphrase": kinds["paraphrase"], "near_direction": 1}
    assert kinds["paraphrase"] >= 1 and hotpot.questions[0].relation == "same_neighborhood"
    assert len(hotpot.documents) == 10 and hotpot.edits and all(e.kind == "irrelevant_sentence" for e in hotpot.edits)


def test_the_rules_are_the_docstrings_numbered_rules():
    doc = " ".join(qs.__doc__.split())
    assert len(qs.RULES) == 19 and all(rule in doc for rule in qs.RULES)
    assert build_context_stream(WIKI, originals=2).rules == qs.RULES


@pytest.mark.parametrize("first, facts", [
    ("Lew Landers( born Louis Friedlander, January 2, 1901 – December 16, 1962) was a director.",
     {"birth": (1901, 1, 2), "death": (1962, 12, 16)}),
    ("W. Augustus Barratt( 1873- 1947) was a songwriter.", {"birth": (1873, 0, 0), "death": (1947, 0, 0)}),
    ("Dani Kouyaté( born June 4, 1961) is a film director.", {"birth": (1961, 6, 4)}),
    ("Lee Mantle( December 13, 1851 November 18, 1934) was a Senator.",
     {"birth": (1851, 12, 13), "death": (1934, 11, 18)}),
    ("Nicholas Sheppard( or Shepherd)( died 1587) was a churchman.", {"death": (1587, 0, 0)}),
    ("Jakob Abbadie( 25 September 1727), also known as James, was a minister.", {}),
    ("The Mask of Fu Manchu is a 1932 pre-Code adventure film directed by Charles Brabin.", {"release": (1932, 0, 0)}),
    ("Boum sur Paris, is a French comedy film from 1953, directed by Maurice de Canonge.", {"release": (1953, 0, 0)}),
])
def test_facts_are_read_from_the_first_sentence(first, facts):
    found, _ = sf.paragraph_facts(first, len(first))
    assert {k: v.when for k, v in found.items()} == facts
    for fact in found.values():
        assert first[fact.span[0]:fact.span[1]] == str(fact.when[0])
