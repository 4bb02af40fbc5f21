"""``auto`` with attention evidence: skips what the answer paid no attention to, shadow checks calibrate the share
threshold, and ``explain`` reports provenance, attribution and key spans. The backend is ``AttendingLLM``, whose
attention is known exactly (all of it on the sentence its answer copies)."""

from __future__ import annotations

import dataclasses

from deltamem.llm.base import Attribution
from deltamem.operators.generate import ATTENTION_THRESHOLD
from tests.helpers import AttendingLLM, scripted_db

QUESTIONS = {"qid": "text", "question": "text"}
DOCS = {"doc_id": "text", "title": "text", "text": "text"}


def make_db(questions: list[dict], docs: list[dict], shadow: float = 0.0):
    db = scripted_db(llm=AttendingLLM())
    db.table("questions", key="qid", columns=QUESTIONS).upsert(questions)
    db.table("docs", key="doc_id", columns=DOCS).upsert(docs)
    view = db.generate("answers", prompt="Answer from the documents.", context=db.table("questions"),
                       data_source=db.table("docs"), strategy="auto", shadow=shadow)
    view.rows(fresh=True)
    return db, view


def latest(db):
    return [d for d in db.store.get_decisions("answers") if d.version == db.version]


ALAN = {"doc_id": "alan", "title": "Alan Turing", "text": "Alan was born in 1912. Alan studied at Cambridge."}
TEA = {"doc_id": "tea", "title": "Tea", "text": "Tea is a drink. Tea grows on bushes."}


def test_an_edit_the_answer_paid_no_attention_to_is_skipped_with_its_share():
    db, view = make_db([{"qid": "q1", "question": "Where did Alan study?"}], [ALAN, TEA])
    assert view.rows()[0]["answer"] == "Alan studied at Cambridge."
    db.table("docs").upsert({**TEA, "text": "Tea is a drink. Tea grows on shrubs."})
    view.rows(fresh=True)
    (decision,) = latest(db)
    assert (decision.strategy, decision.evidence, decision.calls) == ("skip", 0.0, 0)
    assert "paid 0.0% of its attention" in decision.reason
    assert db.usage().calls == 1


def test_an_edit_of_an_attended_sentence_is_recomputed():
    db, view = make_db([{"qid": "q1", "question": "Where did Alan study?"}], [ALAN, TEA])
    db.table("docs").upsert({**ALAN, "text": "Alan was born in 1912. Alan studied maths at Cambridge."})
    view.rows(fresh=True)
    (decision,) = latest(db)  # no KV cache here to regenerate with: the delta goes in as a new turn
    assert (decision.strategy, decision.calls, decision.evidence) == ("append", 1, None)


def test_an_unattended_edit_that_touches_a_key_term_of_the_answer_is_not_skipped():
    db, view = make_db([{"qid": "q1", "question": "Where did Alan study?"}], [ALAN, TEA])
    db.table("docs").upsert({**TEA, "text": "Tea is a drink. Tea grows near Cambridge."})
    view.rows(fresh=True)
    assert latest(db)[0].strategy != "skip"


def test_disagreeing_shadow_checks_lower_the_attention_threshold():
    # Every answer copies Ada's sentence; a new sentence sharing more words with the question takes the answer over
    # although no attention was on anything that changed: the skips are wrong, and the shadow checks see it.
    questions = [{"qid": f"q{i}", "question": "where was the famous mathematician born?"} for i in range(5)]
    ada = {"doc_id": "ada", "title": "Ada", "text": "Ada Lovelace was born in London."}
    db, view = make_db(questions, [ada, TEA], shadow=1.0)
    db.table("docs").upsert({**TEA, "text": "Tea is a drink. Nobody knows where the famous mathematician was born."})
    rows = view.rows(fresh=True)
    decisions = latest(db)
    assert sorted(d.strategy for d in decisions) == ["shadow"] * 5 + ["skip"] * 5
    assert all(d.reason == "skip: disagrees with full recompute" and d.evidence == 0.0
               for d in decisions if d.strategy == "shadow")
    assert {r["answer"] for r in rows} == {"Nobody knows where the famous mathematician was born."}  # full's answer
    db.table("docs").upsert({**TEA, "text": "Tea is a hot drink. Nobody knows where the famous mathematician was born."})
    view.rows(fresh=True)
    assert "skip" not in {d.strategy for d in latest(db)}  # the threshold fell from ATTENTION_THRESHOLD to 0
    assert ATTENTION_THRESHOLD > 0


def test_explain_reports_provenance_attribution_and_key_spans():
    db, view = make_db([{"qid": "q1", "question": "Where did Alan study?"}], [ALAN, TEA])
    db.table("docs").upsert({**TEA, "text": "Tea is a drink. Tea grows on shrubs."})
    view.rows(fresh=True)
    (deps,) = view.explain("q1")["dependencies"].values()
    assert [(p["doc"], p["position"], p["doc_version"]) for p in deps["provenance"]] == [
        ("alan", 0, 2), ("alan", 1, 2), ("tea", 0, 3), ("tea", 1, 3)]  # keys as the table holds them
    assert all(p["current"] for p in deps["provenance"])
    attribution = deps["attribution"]
    assert attribution["output_sentences"] == ["Alan studied at Cambridge."]
    assert attribution["matrix"] == [[0.0, 1.0, 0.0, 0.0]]
    # the skip carried the attribution over: the rewritten tea sentence's column now names the sentence replacing it
    assert attribution["context"][1] == "Alan studied at Cambridge." and attribution["context"][3] == "Tea grows on shrubs."
    assert deps["key_spans"] == ["Alan", "Cambridge"]


def test_a_change_naming_an_entity_of_an_attended_sentence_is_not_skipped():
    from deltamem.memory.strategies import ChunkChanges, attention_skip

    old, new = ("d2", 0, "h1"), ("d2", 0, "h2")
    changes = ChunkChanges({old: "Xawery Zulawski was born in 1971."}, {new: "Xawery Zulawski was born in 1975."}, {})
    args = (0.01, 0.05, changes, {old}, "Who is the mother of the director of Wojna?", "Malgorzata Braunek")
    assert attention_skip(*args) is not None  # nothing of the question or the answer is touched
    assert attention_skip(*args, anchors=["Wojna is a film directed by Xawery Zulawski."]) is None


class GlancingLLM(AttendingLLM):
    """``AttendingLLM`` that glances around: 80% of its attention on what its answer copies, 4% on any sentence about
    kettles (below the 5% attention threshold), the rest spread evenly over the other context sentences."""

    def complete(self, request, attribute_to=None):
        completion = super().complete(request, attribute_to=attribute_to)
        if attribute_to is None:
            return completion
        (copied,) = completion.attribution.matrix
        kettles = [float("kettles" in s) for s in attribute_to]
        rest = [float(not c and not k) for c, k in zip(copied, kettles)]
        row = tuple(0.8 * c + 0.04 * k + (0.2 - 0.04 * sum(kettles)) * r / sum(rest)
                    for c, k, r in zip(copied, kettles, rest))
        return dataclasses.replace(completion, attribution=Attribution(completion.attribution.output_sentences, (row,)))


NOTE = {"doc_id": "note", "title": "Note", "text": "Rain fell in Leeds. Some kettles whistle loudly."}


def test_a_skipped_sentence_keeps_its_attention_when_it_is_edited_again():
    db = scripted_db(llm=GlancingLLM())
    db.table("questions", key="qid", columns=QUESTIONS).upsert({"qid": "q1", "question": "Where did Alan study?"})
    db.table("docs", key="doc_id", columns=DOCS).upsert([ALAN, NOTE])
    view = db.generate("answers", prompt="Answer from the documents.", context=db.table("questions"),
                       data_source=db.table("docs"), strategy="auto", shadow=0.0)
    view.rows(fresh=True)
    for text in ("Some kettles hum softly.", "Some kettles sing."):  # the same sentence, edited twice
        db.table("docs").upsert({**NOTE, "text": f"Rain fell in Leeds. {text}"})
        view.rows(fresh=True)
        (decision,) = latest(db)
        # the second edit reads the 4% the answer paid to the sentence the first edit replaced, not 0% for a
        # sentence its (kept) attribution never named
        assert decision.strategy == "skip" and abs(decision.evidence - 0.04) < 1e-9, decision


def test_after_three_approximate_answers_in_a_row_the_next_refresh_is_exact():
    db, view = make_db([{"qid": "q1", "question": "Where did Alan study?"}], [ALAN, TEA])
    decided = []
    for text in ("shrubs", "trees", "hills", "plains", "terraces"):
        db.table("docs").upsert({**TEA, "text": f"Tea is a drink. Tea grows on {text}."})
        view.rows(fresh=True)
        (decision,) = latest(db)
        decided.append(decision)
    assert [d.strategy for d in decided] == ["skip", "skip", "skip", "full", "skip"]
    assert "exact after 3 approximate answers" in decided[3].reason and decided[3].calls == 1
    assert view.rows()[0]["answer"] == "Alan studied at Cambridge."
