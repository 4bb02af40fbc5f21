"""The deltamem dialect: round trips of what it adds to Postgres, and syntax errors that point at the fault."""

from __future__ import annotations

import pytest

from deltamem.sql.dialect import ContinuousView, Deltamem, ExplainView, ShowObjects, Subscribe, is_complete, parse
from deltamem.sql.errors import SQLSyntaxError


def validate_identity(sql: str, canonical: str | None = None):
    """Parse then print gives back ``canonical`` (default: the input), like sqlglot's own dialect tests."""
    (statement,) = parse(sql)
    assert statement.expression.sql(dialect=Deltamem) == (canonical or sql)
    return statement.expression


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t (id TEXT PRIMARY KEY, ts INT) WITH (ttl='7 days', ttl_column='ts', expire='retract')",
    "CREATE STREAM IF NOT EXISTS s (msg TEXT) WITH (ttl='1 day')",
    "CREATE CONTINUOUS VIEW v AS SELECT id, SEM_MAP('Sum up {text}') AS gist FROM t WHERE SEM_FILTER('{text} is x')",
    "CREATE CONTINUOUS VIEW a AS LLM_GENERATE(PROMPT = 'p', CONTEXT = STREAM(q), DATA_SOURCE = STREAM(d)) "
    "WITH (strategy='auto', retrieve=5, refresh='on_change')",
    "SELECT * FROM v AS OF VERSION 3",
    "SUBSCRIBE TO v AS OF VERSION 2",
    "EXPLAIN VIEW v KEY 'q1'",
    "SHOW USAGE",
    "REFRESH VIEW v",
    "SELECT * FROM a JOIN b ON SEM_MATCH('{x:left} is {y:right}', candidates => 5)",
    "DROP TABLE IF EXISTS a, b CASCADE",
    "DROP STREAM s RESTRICT",
    "DROP VIEW v",
    "COPY docs FROM 'docs.json' WITH (format 'json', limit 40)",
])
def test_round_trip(sql):
    validate_identity(sql)


def test_seed_statement_parses_with_double_quoted_prompt_and_comments():
    expression = validate_identity(
        'CREATE CONTINUOUS VIEW r AS\nLLM_GENERATE(\nPROMPT="Be helpful.",\nCONTEXT=STREAM(c), -- user\n'
        'DATA_SOURCE=STREAM(d) -- docs\n);',
        "CREATE CONTINUOUS VIEW r AS LLM_GENERATE(PROMPT = 'Be helpful.', CONTEXT = STREAM(c), "
        "DATA_SOURCE = STREAM(d) /* docs */)")
    assert isinstance(expression, ContinuousView)
    assert expression.expression.expressions[0].args["value"].is_string  # the double-quoted prompt is text


def test_postgres_spellings_read_into_the_same_nodes():
    validate_identity("SELECT * FROM v FOR VERSION AS OF 3", "SELECT * FROM v AS OF VERSION 3")
    validate_identity("SUBSCRIBE v", "SUBSCRIBE TO v")
    validate_identity("REFRESH CONTINUOUS VIEW v", "REFRESH VIEW v")
    assert [type(s.expression) for s in parse("SUBSCRIBE v; EXPLAIN VIEW v; SHOW VIEWS")] == \
        [Subscribe, ExplainView, ShowObjects]
    drop = validate_identity("DROP CONTINUOUS VIEW IF EXISTS v, w", "DROP VIEW IF EXISTS v, w")
    assert drop.kind == "VIEW" and [t.name for t in drop.args["tables"]] == ["v", "w"]
    assert validate_identity("DROP STREAM s").kind == "STREAM"
    validate_identity("COPY docs FROM 'd.csv' WITH (format = 'csv', HEADER true)",
                      "COPY docs FROM 'd.csv' WITH (format 'csv', HEADER TRUE)")


def test_statements_keep_their_text_and_offsets():
    statements = parse("SHOW TABLES;\n  SELECT ';' FROM t ;")
    assert [s.text for s in statements] == ["SHOW TABLES", "SELECT ';' FROM t"]
    assert statements[1].start == 15


def syntax_error(sql: str) -> SQLSyntaxError:
    with pytest.raises(SQLSyntaxError) as caught:
        parse(sql)
    return caught.value


def test_syntax_error_shows_line_column_and_caret_under_the_fault():
    error = syntax_error("SHOW TABLES;\nCREATE CONTINUOUS VIEW v AS\n  LLM_GENERATE(PROMPT = 'p' CONTEXT = STREAM(q));")
    assert str(error) == (
        "syntax error at line 3, column 29: expected ',' or ')' in LLM_GENERATE(NAME = value, ...)\n"
        "  3 |   LLM_GENERATE(PROMPT = 'p' CONTEXT = STREAM(q));\n"
        "    |                             ^^^^^^^")
    assert (error.line, error.column) == (3, 29)


@pytest.mark.parametrize("sql, message, caret", [
    ("SELEC * FROM t", "unknown statement 'SELEC'; expected one of CREATE, DROP, INSERT, UPDATE, DELETE, COPY, SELECT, "
                       "WITH, SUBSCRIBE, EXPLAIN, SHOW, REFRESH. Did you mean 'SELECT'?", "^^^^^"),
    ("DROP INDEX i", "expected TABLE, STREAM, VIEW or CONTINUOUS VIEW after DROP", "     ^^^^^"),
    ("REFRESH TABLE t", "expected VIEW after REFRESH (REFRESH VIEW name)", "        ^^^^^"),
    ("DROP TABLE IF EXISTS", "expected table name but the statement ended", "              ^^^^^^"),
    ("SELECT * FROM t WHERE", "expected a condition after WHERE", "                ^^^^^"),
    ("SHOW TABLE", "expected TABLES, VIEWS, USAGE after SHOW. Did you mean 'TABLES'?", "     ^^^^^"),
    ("CREATE VIEWX v", "expected TABLE, STREAM or CONTINUOUS VIEW after CREATE", "       ^^^^^"),
    ("EXPLAIN v", "expected VIEW after EXPLAIN (EXPLAIN VIEW name [KEY key])", "        ^"),
    ("SELECT 'abc FROM t", "string that starts here is never closed", "       ^"),
    ("CREATE CONTINUOUS VIEW v SELECT 1", "expected AS, then SELECT ... or LLM_GENERATE(...)",
     "                         ^^^^^^"),
])
def test_syntax_errors_say_what_was_expected(sql, message, caret):
    error = syntax_error(sql)
    assert error.description == message
    assert error.excerpt.splitlines()[1] == "    | " + caret


def test_is_complete_waits_for_a_semicolon_outside_strings_and_comments():
    assert not is_complete("SELECT 'a;b'")
    assert not is_complete("SELECT 1 -- ;")
    assert not is_complete("SELECT 'unterminated;")
    assert is_complete("SELECT 1;")
    assert is_complete("CREATE TABLE t (id INT PRIMARY KEY);  -- done")
