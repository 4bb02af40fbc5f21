"""sem_join: verdicts stored per pair, embedding blocking, deletes and unread updates for free, retries."""

from __future__ import annotations

import json

import pytest

import deltamem as dm
from deltamem.changes import encode_key
from deltamem.errors import SchemaError, TemplateError
from deltamem.llm.runner import RetryPolicy
from deltamem.llm.scripted import ScriptedLLM
from deltamem.operators.join import SemJoin, pair_key, right_names
from deltamem.operators.rowwise import SemFilter
from tests.helpers import num_requested_calls, paid_hashes, scripted_db

SEQUEL = "{title:left} is a sequel of {title:right}"
FILMS = {"id": "int", "title": "text", "year": "int"}
BOOKS = {"id": "int", "title": "text"}
WORDS = ["dragon", "castle", "river", "storm", "winter", "empire", "ghost", "garden", "night", "ocean"]


def title(kind: str, i: int) -> str:
    return f"{kind} {WORDS[i % len(WORDS)]} {WORDS[(i * 7 + 3) % len(WORDS)]} {i}"


def films_and_books(db: dm.Database, num_films: int, num_books: int) -> tuple[dm.Table, dm.Table]:
    films = db.table("films", key="id", columns=FILMS)
    books = db.table("books", key="id", columns=BOOKS)
    if num_films:
        films.upsert([{"id": i, "title": title("film", i), "year": 2000 + i} for i in range(num_films)])
    if num_books:
        books.upsert([{"id": i, "title": title("book", i)} for i in range(num_books)])
    return films, books


def true_pairs(films: list[dict], books: list[dict]) -> set[tuple[int, int]]:
    """What the test model says, pair by pair: the full join, computed without deltamem's maintenance."""
    llm, verdict = ScriptedLLM(), SemFilter("x", "{claim}")
    return {(f["id"], b["id"]) for f in films for b in books
            if verdict.parse(llm.answer(verdict.build_request(f"{f['title']} is a sequel of {b['title']}")))}


def pairs_in(view: dm.View) -> set[tuple[int, int]]:
    return {(row["id"], row["id_right"]) for row in view.rows(fresh=True)}


def asked_pairs(db: dm.Database, view: str) -> set[tuple[int, int]]:
    return {tuple(json.loads(json.loads(key))) for (op, key) in db.store.get_all_state(view) if op == "1:sem_join"}


def test_without_blocking_every_pair_is_asked_once_and_the_view_is_the_full_join():
    db = scripted_db()
    films, books = films_and_books(db, 6, 5)
    view = db.view("sequels", films.sem_join(books, SEQUEL))
    assert pairs_in(view) == true_pairs(films.rows(), books.rows())
    assert num_requested_calls(db) == 30
    assert db.usage().by_operator[("sequels", "1:sem_join")].calls == 30


def test_with_blocking_a_new_row_costs_at_most_m_calls():
    db = scripted_db()
    films, books = films_and_books(db, 100, 100)
    view = db.view("sequels", films.sem_join(books, SEQUEL, candidates=5))
    view.rows(fresh=True)
    built = num_requested_calls(db)
    assert 500 <= built <= 5 * 200  # every row's 5 nearest, a pair picked from both ends asked once
    films.upsert({"id": 100, "title": title("film", 100), "year": 2100})
    view.rows(fresh=True)
    assert num_requested_calls(db) - built == 5
    books.upsert({"id": 100, "title": title("book", 100)})
    view.rows(fresh=True)
    assert num_requested_calls(db) - built == 10
    assert len({b for f, b in asked_pairs(db, "sequels") if f == 100}) >= 5
    assert pairs_in(view) <= true_pairs(films.rows(), books.rows())  # blocking only leaves pairs out


def test_a_delete_costs_no_call_and_retracts_its_pairs():
    db = scripted_db()
    films, books = films_and_books(db, 8, 8)
    view = db.view("sequels", films.sem_join(books, SEQUEL, candidates=3))
    before = view.rows(fresh=True)
    calls = num_requested_calls(db)
    films.delete(2)
    after = view.rows(fresh=True)
    assert num_requested_calls(db) == calls
    assert [r for r in before if r["id"] != 2] == after.rows
    changes = view.changes(after.version, after.version)
    assert sorted((c.diff, c.row["id_right"]) for c in changes) == sorted((-1, r["id_right"]) for r in before
                                                                           if r["id"] == 2)
    assert all(f != 2 for f, _b in asked_pairs(db, "sequels"))  # the verdicts are dropped with the row
    assert not any(op.endswith("/left") and key == encode_key(2) for op, key in db.store.get_all_state("sequels"))


def test_an_update_of_an_unread_column_costs_nothing_and_updates_the_rows():
    db = scripted_db()
    films, books = films_and_books(db, 6, 6)
    view = db.view("sequels", films.sem_join(books, SEQUEL, candidates=3))
    rows = view.rows(fresh=True)
    film = next(r["id"] for r in rows)
    calls, embedded = num_requested_calls(db), db.embedder.num_texts
    films.upsert({**films.get(film), "year": 1999})
    rows = view.rows(fresh=True)
    assert (num_requested_calls(db), db.embedder.num_texts) == (calls, embedded)
    assert {r["year"] for r in rows if r["id"] == film} == {1999}


def test_an_update_of_a_read_column_asks_only_that_rows_new_pairs():
    db = scripted_db()
    films, books = films_and_books(db, 10, 10)
    view = db.view("sequels", films.sem_join(books, SEQUEL, candidates=3))
    view.rows(fresh=True)
    calls = num_requested_calls(db)
    films.upsert({"id": 4, "title": "film ghost garden sequel", "year": 2004})
    rows = view.rows(fresh=True)
    assert num_requested_calls(db) - calls == 3
    assert len({b for f, b in asked_pairs(db, "sequels") if f == 4}) == 3
    assert all(r["title"] == "film ghost garden sequel" for r in rows if r["id"] == 4)


def test_rows_arriving_on_both_sides_in_one_version_ask_each_new_pair_once():
    db = scripted_db()
    films, books = films_and_books(db, 4, 3)
    view = db.view("sequels", films.sem_join(books, SEQUEL))
    view.rows(fresh=True)
    calls = num_requested_calls(db)
    with db.batch():
        films.upsert([{"id": i, "title": title("film", i), "year": 2000} for i in (4, 5)])
        books.upsert([{"id": i, "title": title("book", i)} for i in (3, 4, 5)])
    assert pairs_in(view) == true_pairs(films.rows(), books.rows())
    assert num_requested_calls(db) - calls == 2 * 6 + 4 * 3  # new films x all books, old films x new books


def test_equal_scores_are_broken_by_key_order():
    db = scripted_db()
    films = db.table("films", key="id", columns=FILMS)
    books = db.table("books", key="id", columns=BOOKS)
    books.upsert([{"id": i, "title": "the same words"} for i in (10, 2, 7, 1)])
    db.view("sequels", films.sem_join(books, SEQUEL, candidates=2)).rows(fresh=True)
    films.upsert({"id": 1, "title": "entirely different", "year": 1})
    db.maintain()
    assert asked_pairs(db, "sequels") == {(1, 1), (1, 2)}  # numeric key order, not text order


def test_clashing_right_columns_get_the_right_suffix():
    db = scripted_db()
    films, books = films_and_books(db, 6, 6)
    relation = films.sem_join(books, SEQUEL)
    assert relation.columns == ("id", "title", "year", "id_right", "title_right")
    rows = db.view("sequels", relation).rows(fresh=True)
    assert rows.rows and all(set(r) == set(relation.columns) for r in rows)
    assert right_names(["x", "x_right"], ["x", "x_right"]) == {"x": "x_right_right", "x_right": "x_right_right_right"}
    assert pair_key(encode_key(1), encode_key("b")) == encode_key('[1, "b"]')


@pytest.mark.parametrize(("instruction", "message"), [
    ("{title} is a sequel of {title:right}", "{title} without a side; write {title:left} or {title:right}"),
    ("{title:lft} is a sequel of {title:right}", "unknown side 'lft'. Did you mean 'left'?"),
    ("{titel:left} is a sequel of {title:right}", "reads {titel:left}, a column the left side of"),
    ("{title:left} is a sequel of {name:right}", "reads {name:right}, a column the right side of"),
    ("{title:left} is a sequel", "reads no column of the right side"),
    ("{title:left} is a {sequel of {title:right}", "malformed"),
    ("{title!r:left} is a sequel of {title:right}", "placeholders are a column and its side"),
])
def test_template_errors_name_the_placeholder_and_the_fix(instruction, message):
    db = scripted_db()
    films, books = films_and_books(db, 0, 0)
    with pytest.raises(TemplateError) as raised:
        films.sem_join(books, instruction)
    assert message in str(raised.value)
    if "titel" in instruction:
        assert "Did you mean 'title'?" in str(raised.value)


@pytest.mark.parametrize("bad", [{"candidates": 0}, {"candidates": True}, {"candidates": 2.5}, {"max_tokens": 0}])
def test_parameters_are_checked_before_any_call(bad):
    with pytest.raises(SchemaError):
        SemJoin("1:sem_join", instruction=SEQUEL, **bad)


def test_a_sem_map_after_a_join_is_maintained_with_it():
    db = scripted_db()
    films, books = films_and_books(db, 5, 5)
    joined = films.sem_join(books, SEQUEL, candidates=3).sem_map("Why does {title} follow {title_right}?", out="why")
    view = db.view("why", joined)
    rows = view.rows(fresh=True)
    assert rows.rows and all(r["why"] for r in rows)
    assert db.usage().by_operator[("why", "2:sem_map")].calls == len(rows)
    gone = rows[0]["id"]
    calls = num_requested_calls(db)
    films.delete(gone)
    assert all(r["id"] != gone for r in view.rows(fresh=True))
    assert num_requested_calls(db) == calls


def test_a_failed_verdict_is_shown_as_an_error_and_retried_at_the_next_refresh():
    db = scripted_db(llm=ScriptedLLM(failures={"poison": 3}), retry=RetryPolicy(attempts=3, base_delay=0.0))
    films = db.table("films", key="id", columns=FILMS)
    books = db.table("books", key="id", columns=BOOKS)
    films.upsert({"id": 1, "title": "poison pill", "year": 1})
    books.upsert({"id": 1, "title": "antidote"})
    view = db.view("sequels", films.sem_join(books, SEQUEL))
    (row,) = view.rows(fresh=True)
    assert row["_error"].startswith("scripted failure") and row["title_right"] == "antidote"
    assert db.usage().failures == 1
    db.refresh()
    rows = view.rows(fresh=True)
    assert all("_error" not in r for r in rows)
    assert pairs_in(view) == true_pairs(films.rows(), books.rows())
    last = db.store.get_ledger()[-1]
    assert (last.reason, last.outcome) == ("retry", "paid")


def test_a_keep_expiry_frees_the_pairs_state_and_keeps_their_rows():
    clock = dm.ManualClock()
    db = scripted_db(clock=clock)
    films = db.table("films", key="id", columns=FILMS, ttl="1 day", expire="keep")
    books = db.table("books", key="id", columns=BOOKS)
    films.upsert([{"id": i, "title": title("film", i), "year": i} for i in range(4)])
    books.upsert([{"id": i, "title": title("book", i)} for i in range(4)])
    view = db.view("sequels", films.sem_join(books, SEQUEL))
    rows = view.rows(fresh=True).rows
    calls = num_requested_calls(db)
    clock.advance("2 days")
    db.expire()
    assert view.rows(fresh=True).rows == rows
    assert not [key for (op, key) in db.store.get_all_state("sequels") if not op.endswith("/right")]
    assert num_requested_calls(db) == calls


def test_no_verdict_is_paid_twice_across_deletes_and_reinserts():
    db = scripted_db()
    films, books = films_and_books(db, 5, 5)
    view = db.view("sequels", films.sem_join(books, SEQUEL, candidates=2))
    view.rows(fresh=True)
    row = films.get(3)
    films.delete(3)
    view.rows(fresh=True)
    films.upsert(row)  # the same pairs come back from the memo
    view.rows(fresh=True)
    paid = paid_hashes(db)
    assert len(paid) == len(set(paid))
    assert db.usage().memo_hits == 2


def test_a_self_join_sees_a_new_row_on_both_sides():
    db = scripted_db()
    films, _books = films_and_books(db, 3, 0)
    view = db.view("pairs", films.sem_join(films, "{title:left} is a remake of {title:right}"))
    view.rows(fresh=True)
    films.upsert({"id": 3, "title": title("film", 3), "year": 2003})
    view.rows(fresh=True)
    asked = asked_pairs(db, "pairs")
    assert {(3, i) for i in range(4)} <= asked and {(i, 3) for i in range(4)} <= asked
    assert len(asked) == 16  # every ordered pair of the four films, once


def test_a_join_can_read_views_on_both_sides():
    db = scripted_db()
    films, books = films_and_books(db, 4, 3)
    recent = db.view("recent", films.sem_filter("{title} is recent"))
    all_books = db.view("all_books", books.sem_map("Retitle {title}", out="retitled"))
    view = db.view("sequels", recent.sem_join(all_books, SEQUEL))
    assert pairs_in(view) == true_pairs(recent.rows(fresh=True).rows, books.rows())
    books.upsert({"id": 9, "title": title("book", 9)})
    assert pairs_in(view) == true_pairs(recent.rows(fresh=True).rows, books.rows())
