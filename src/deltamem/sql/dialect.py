"""The deltamem SQL dialect: Postgres, plus the statements that define and read continuous views.

    [s.expression.sql(dialect=Deltamem) for s in parse("SUBSCRIBE TO answers AS OF VERSION 3;")]
    # ['SUBSCRIBE TO answers AS OF VERSION 3']

What it adds to Postgres, and nothing else:

- ``CREATE STREAM name (col TYPE, ...) [WITH (...)]``: parsed into ``exp.Create`` with ``kind='STREAM'``;
- ``CREATE CONTINUOUS VIEW name [WITH (...)] AS {SELECT ... | LLM_GENERATE(NAME = value, ...)} [WITH (...)]``;
- ``SELECT ... FROM v AS OF VERSION n`` (also Postgres-style ``FOR VERSION AS OF n``);
- ``SUBSCRIBE [TO] v [AS OF VERSION n]``, ``EXPLAIN VIEW v [KEY k]``, ``SHOW TABLES | VIEWS | USAGE``;
- ``REFRESH [CONTINUOUS] VIEW v``: retry the view's failed rows now (a view is otherwise always fresh);
- ``DROP STREAM s`` and ``DROP CONTINUOUS VIEW v`` beside Postgres's ``DROP TABLE | VIEW``: ``exp.Drop`` with
  ``kind='STREAM'``, and ``kind='VIEW'`` (every deltamem view is continuous, so the word adds nothing);
- ``WITH (ttl = '7 days')`` reads as a plain option (ClickHouse's ``TTL`` clause is switched off).

Postgres's own ``COPY t FROM 'file' WITH (...)`` parses as sqlglot has it (``exp.Copy``).

Invariant: parsing never touches a database. Each statement comes back with its source text, and a syntax error is
an ``SQLSyntaxError`` that carries the offset of the token at fault.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ErrorLevel, ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from deltamem.errors import did_you_mean
from deltamem.sql.errors import SQLSyntaxError

# Through the dialect class, not sqlglot.parsers/generators: that module layout is recent; these names are not.
PostgresParser = Postgres.Parser
PostgresGenerator = Postgres.Generator

# --- nodes ------------------------------------------------------------------------------------------------------


class ContinuousView(exp.Expression):
    """``CREATE CONTINUOUS VIEW this AS expression``; ``expression`` is a ``Select`` or an ``LLMGenerate``."""

    arg_types = {"this": True, "expression": True, "properties": False, "exists": False}


class LLMGenerate(exp.Expression):
    """``LLM_GENERATE(PROMPT = ..., CONTEXT = STREAM(t), ...)``: ``expressions`` are ``exp.Property`` pairs."""

    arg_types = {"expressions": True}


class Subscribe(exp.Expression):
    """``SUBSCRIBE TO this [AS OF VERSION version]``."""

    arg_types = {"this": True, "version": False}


class ExplainView(exp.Expression):
    """``EXPLAIN VIEW this [KEY key]``: the operator graph, or one output's dependencies and decisions."""

    arg_types = {"this": True, "key": False}


class RefreshView(exp.Expression):
    """``REFRESH [CONTINUOUS] VIEW this``: retry the rows whose model calls failed, now."""

    arg_types = {"this": True}


class ShowObjects(exp.Expression):
    """``SHOW TABLES``, ``SHOW VIEWS`` or ``SHOW USAGE``; ``this`` is the upper-case word."""

    arg_types = {"this": True}


STATEMENT_WORDS = ("CREATE", "DROP", "INSERT", "UPDATE", "DELETE", "COPY", "SELECT", "WITH", "SUBSCRIBE", "EXPLAIN",
                   "SHOW", "REFRESH")
SHOW_WHAT = ("TABLES", "VIEWS", "USAGE")


# --- tokenizer --------------------------------------------------------------------------------------------------


class DeltamemTokenizer(Postgres.Tokenizer):
    # NOTE(sql): sqlglot reads the rest of an EXPLAIN, SHOW or REFRESH statement as one opaque string; ours have a
    # grammar.
    KEYWORDS = {k: v for k, v in Postgres.Tokenizer.KEYWORDS.items() if k not in ("EXPLAIN", "REFRESH")}
    COMMANDS = Postgres.Tokenizer.COMMANDS - {TokenType.SHOW}


# --- parser -----------------------------------------------------------------------------------------------------


class DeltamemParser(PostgresParser):
    # NOTE(sql): Postgres's parser reads ``WITH (ttl = ...)`` as ClickHouse's ``TTL`` clause; here it is an option.
    PROPERTY_PARSERS = {k: v for k, v in PostgresParser.PROPERTY_PARSERS.items() if k != "TTL"}


    # Statements that start with a plain word; Postgres would fall back to an opaque ``Command`` for them.
    DELTAMEM_STATEMENTS = {
        "SUBSCRIBE": lambda self: self._parse_subscribe(),
        "EXPLAIN": lambda self: self._parse_explain_view(),
        "SHOW": lambda self: self._parse_show_objects(),
        "REFRESH": lambda self: self._parse_refresh_view(),
    }

    def raise_error(self, message: str, token: Token | None = None) -> None:  # type: ignore[override]
        # Keep the token's offsets on the error: sqlglot keeps only a line and an end column.
        token = token or self._curr or self._prev or Token.string("")
        try:
            super().raise_error(message, token)
        except ParseError as error:
            error.errors[0].update(start=token.start, end=token.end, token=token.text)
            raise

    def _parse_version(self) -> exp.Version | None:
        # ``SELECT * FROM v AS OF VERSION 3``: read before the alias (see ``Deltamem.ALIAS_POST_VERSION``).
        if self._match_text_seq("AS", "OF", "VERSION"):
            return self.expression(exp.Version(this="VERSION", kind="AS OF", expression=self._parse_bitwise()))
        return super()._parse_version()

    def _parse_statement(self) -> exp.Expr | None:
        curr = self._curr
        if curr is None:
            return None
        word = curr.text.upper()
        if curr.token_type not in (TokenType.STRING, TokenType.IDENTIFIER) and word in self.DELTAMEM_STATEMENTS:
            self._advance()
            return self.DELTAMEM_STATEMENTS[word](self)
        if word not in STATEMENT_WORDS and curr.token_type != TokenType.L_PAREN:
            close = difflib.get_close_matches(word, STATEMENT_WORDS, n=1)
            self.raise_error(f"unknown statement {curr.text!r}; expected one of {', '.join(STATEMENT_WORDS)}"
                             + (f". Did you mean '{close[0]}'?" if close else ""))
        return super()._parse_statement()

    def _parse_create(self) -> exp.Expr:  # type: ignore[override]
        if self._match_text_seq("CONTINUOUS", "VIEW"):
            return self._parse_continuous_view()
        if self._match_text_seq("STREAM"):
            return self._parse_create_stream()
        if not self._match_set((TokenType.TABLE, TokenType.VIEW), advance=False):
            self.raise_error("expected TABLE, STREAM or CONTINUOUS VIEW after CREATE")
        return super()._parse_create()

    def _parse_drop(self, exists: bool = False, kind: str | None = None) -> exp.Drop | exp.Command:
        if kind is not None:  # a DROP inside another statement (ALTER ... DROP COLUMN): Postgres's own
            return super()._parse_drop(exists=exists, kind=kind)
        word = "STREAM" if self._match_text_seq("STREAM") else "VIEW" if self._match_text_seq("CONTINUOUS", "VIEW") \
            else self._prev.text.upper() if self._match_set((TokenType.TABLE, TokenType.VIEW)) else None
        if word is None:
            self.raise_error("expected TABLE, STREAM, VIEW or CONTINUOUS VIEW after DROP")
        # A stream is a table: parsed as one (a list of names), then marked.
        drop = super()._parse_drop(exists=exists, kind="TABLE" if word == "STREAM" else word)
        if word == "STREAM":
            drop.set("kind", "STREAM")
        return drop

    def _parse_as_command(self, start: Token) -> exp.Command:
        # sqlglot falls back to an opaque Command for syntax it does not know; deltamem runs no such statement.
        self.raise_error("this statement is not part of deltamem SQL", start)
        raise AssertionError("dialect: raise_error returns only below ErrorLevel.IMMEDIATE")

    def _parse_create_stream(self) -> exp.Create:
        exists = self._parse_exists(not_=True)
        this = self._parse_schema(self._parse_table_parts(schema=True))
        properties = self._parse_options()
        return self.expression(exp.Create(this=this, kind="STREAM", exists=exists, properties=properties))

    def _parse_continuous_view(self) -> ContinuousView:
        exists = self._parse_exists(not_=True)
        name = self._parse_table_parts(schema=True)
        if name is None:
            self.raise_error("expected the view's name after CREATE CONTINUOUS VIEW")
        properties = self._parse_options()
        if not self._match(TokenType.ALIAS):
            self.raise_error("expected AS, then SELECT ... or LLM_GENERATE(...)")
        if self._match_text_seq("LLM_GENERATE"):
            body: exp.Expr | None = self._parse_llm_generate()
        else:
            body = self._parse_select()
            if body is None:
                self.raise_error("expected SELECT ... or LLM_GENERATE(...) after AS")
        trailing = self._parse_options()
        if properties and trailing:
            self.raise_error("give the view's WITH (...) options once, before or after its body")
        return self.expression(ContinuousView(this=name, expression=body, properties=properties or trailing,
                                              exists=exists))

    def _parse_llm_generate(self) -> LLMGenerate:
        if not self._match(TokenType.L_PAREN):
            self.raise_error("expected '(' after LLM_GENERATE")
        arguments = self._parse_csv(self._parse_llm_generate_argument)
        if not self._match(TokenType.R_PAREN):
            self.raise_error("expected ',' or ')' in LLM_GENERATE(NAME = value, ...)")
        return self.expression(LLMGenerate(expressions=arguments))

    def _parse_llm_generate_argument(self) -> exp.Property:
        name = self._parse_id_var(any_token=True)
        if name is None or not self._match(TokenType.EQ):
            self.raise_error("expected NAME = value, e.g. PROMPT = 'Answer from the documents.'")
        value = self._parse_bitwise()
        if value is None:
            self.raise_error(f"expected a value after {name.name.upper()} =")
        if isinstance(value, exp.Column) and value.this.args.get("quoted") and not value.table:
            # NOTE(sql): LLM_GENERATE's canonical form writes PROMPT="..."; Postgres reads double quotes as an
            # identifier, but no argument names a column, so a quoted word here is text.
            value = exp.Literal.string(value.name)
        return self.expression(exp.Property(this=exp.var(name.name.lower()), value=value))

    def _parse_options(self) -> exp.Properties | None:
        """``WITH (name = value, ...)``, or None when no ``WITH (`` follows."""
        if not (self._curr and self._curr.token_type == TokenType.WITH and self._next
                and self._next.token_type == TokenType.L_PAREN):
            return None
        self._advance(2)
        options = self._parse_csv(self._parse_option)
        if not self._match(TokenType.R_PAREN):
            self.raise_error("expected ',' or ')' in WITH (name = value, ...)")
        return self.expression(exp.Properties(expressions=options))

    def _parse_option(self) -> exp.Property:
        name = self._parse_id_var(any_token=True)
        if name is None or not self._match(TokenType.EQ):
            self.raise_error("expected name = value, e.g. retrieve = 5")
        value = self._parse_bitwise() or self._parse_var(any_token=True)
        if value is None:
            self.raise_error(f"expected a value after {name.name} =")
        if isinstance(value, exp.Column):  # a bare word: strategy = auto
            value = exp.var(value.name)
        return self.expression(exp.Property(this=exp.var(name.name), value=value))

    def _parse_subscribe(self) -> Subscribe:
        self._match_text_seq("TO")
        view = self._parse_table_parts()
        if view is None:
            self.raise_error("expected a view name after SUBSCRIBE TO")
        return self.expression(Subscribe(this=view, version=self._parse_version()))

    def _parse_explain_view(self) -> ExplainView:
        if not self._match(TokenType.VIEW):
            self.raise_error("expected VIEW after EXPLAIN (EXPLAIN VIEW name [KEY key])")
        view = self._parse_table_parts()
        if view is None:
            self.raise_error("expected a view name after EXPLAIN VIEW")
        key = None
        if self._match_text_seq("KEY"):
            key = self._parse_bitwise()
            if key is None:
                self.raise_error("expected a key value after KEY, e.g. KEY 'q1' or KEY 7")
        return self.expression(ExplainView(this=view, key=key))

    def _parse_refresh_view(self) -> RefreshView:
        self._match_text_seq("CONTINUOUS")
        if not self._match(TokenType.VIEW):
            self.raise_error("expected VIEW after REFRESH (REFRESH VIEW name)")
        view = self._parse_table_parts()
        if view is None:
            self.raise_error("expected a view name after REFRESH VIEW")
        return self.expression(RefreshView(this=view))

    def _parse_show_objects(self) -> ShowObjects:
        word = self._curr.text.upper() if self._curr else ""
        if word not in SHOW_WHAT:
            self.raise_error(f"expected {', '.join(SHOW_WHAT)} after SHOW." + did_you_mean(word, SHOW_WHAT))
        self._advance()
        return self.expression(ShowObjects(this=word))


# --- generator --------------------------------------------------------------------------------------------------


class DeltamemGenerator(PostgresGenerator):
    # sqlglot finds ``<key>_sql`` methods only for its own node classes; ours are registered here by class.
    TRANSFORMS = {
        **PostgresGenerator.TRANSFORMS,
        ContinuousView: lambda self, e: self.continuousview_sql(e),
        LLMGenerate: lambda self, e: self.llmgenerate_sql(e),
        Subscribe: lambda self, e: self.subscribe_sql(e),
        ExplainView: lambda self, e: self.explainview_sql(e),
        ShowObjects: lambda self, e: self.showobjects_sql(e),
        RefreshView: lambda self, e: f"REFRESH VIEW {self.sql(e, 'this')}",
    }

    def options_sql(self, expression: exp.Properties | None) -> str:
        if not expression:
            return ""
        return f" WITH ({', '.join(self.sql(option) for option in expression.expressions)})"

    def continuousview_sql(self, expression: ContinuousView) -> str:
        exists = " IF NOT EXISTS" if expression.args.get("exists") else ""
        return (f"CREATE CONTINUOUS VIEW{exists} {self.sql(expression, 'this')} AS "
                f"{self.sql(expression, 'expression')}{self.options_sql(expression.args.get('properties'))}")

    def llmgenerate_sql(self, expression: LLMGenerate) -> str:
        arguments = ", ".join(f"{a.name.upper()} = {self.sql(a, 'value')}" for a in expression.expressions)
        return f"LLM_GENERATE({arguments})"

    def subscribe_sql(self, expression: Subscribe) -> str:
        version = self.sql(expression, "version")
        return f"SUBSCRIBE TO {self.sql(expression, 'this')}" + (f" {version}" if version else "")

    def explainview_sql(self, expression: ExplainView) -> str:
        key = expression.args.get("key")
        return f"EXPLAIN VIEW {self.sql(expression, 'this')}" + (f" KEY {self.sql(key)}" if key else "")

    def showobjects_sql(self, expression: ShowObjects) -> str:
        return f"SHOW {expression.name}"

    def version_sql(self, expression: exp.Version) -> str:
        if expression.name == "VERSION" and expression.text("kind") == "AS OF":
            return f"AS OF VERSION {self.sql(expression, 'expression')}"
        return super().version_sql(expression)

    def create_sql(self, expression: exp.Create) -> str:
        if expression.kind == "STREAM":  # the options print as WITH (...), as written
            exists = " IF NOT EXISTS" if expression.args.get("exists") else ""
            return (f"CREATE STREAM{exists} {self.sql(expression, 'this')}"
                    f"{self.options_sql(expression.args.get('properties'))}")
        return super().create_sql(expression)


class Deltamem(Postgres):
    ALIAS_POST_VERSION = True
    """A version clause comes before a table alias: ``FROM v AS OF VERSION 3 AS x``. Postgres reads ``AS OF`` as
    the alias ``OF`` otherwise."""

    Tokenizer = DeltamemTokenizer
    Parser = DeltamemParser
    Generator = DeltamemGenerator


# --- entry points -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One parsed statement: ``expression`` and its source ``text`` (without the ``;``) at offset ``start``."""

    text: str
    expression: exp.Expr
    start: int


def parse(sql: str) -> list[Statement]:
    """Every statement of ``sql`` (separated by ``;``), or ``SQLSyntaxError`` at the first fault.

    >>> [type(s.expression).__name__ for s in parse("SHOW TABLES; SELECT * FROM v AS OF VERSION 2")]
    ['ShowObjects', 'Select']
    """
    dialect = Deltamem()
    tokens = _tokenize(dialect, sql)
    chunks: list[list[Token]] = [[]]
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            chunks.append([])
        else:
            chunks[-1].append(token)
    statements = []
    for chunk in (c for c in chunks if c):
        parser = dialect.parser(error_level=ErrorLevel.IMMEDIATE)
        try:
            expressions = parser.parse(chunk, sql)
        except ParseError as error:
            raise _syntax_error(error, sql, chunk) from None
        expression = expressions[0]
        assert expression is not None and len(expressions) == 1, "dialect: one chunk must be one statement"
        start, end = chunk[0].start, chunk[-1].end
        statements.append(Statement(sql[start:end + 1], expression, start))
    return statements


def is_complete(sql: str) -> bool:
    """True when ``sql`` holds at least one statement and ends with ``;`` outside strings and comments (what the
    shell waits for before it runs what was typed).

    >>> is_complete("SELECT ';'"), is_complete("SELECT 1; -- done"), is_complete("-- nothing;")
    (False, True, False)
    """
    try:
        tokens = Deltamem().tokenize(sql)
    except TokenError:  # an unterminated string or comment: the statement goes on
        return False
    return bool(tokens) and tokens[-1].token_type == TokenType.SEMICOLON and len(tokens) > 1


def _tokenize(dialect: Deltamem, sql: str) -> list[Token]:
    try:
        return dialect.tokenize(sql)
    except TokenError:
        start, what = _unterminated(sql)
        raise SQLSyntaxError(f"{what} that starts here is never closed", sql, start=start) from None


def _unterminated(sql: str) -> tuple[int, str]:
    """Where the quote or comment that runs to the end of ``sql`` opens (sqlglot reports only a context window)."""
    closers = {"'": ("'", "string"), '"': ('"', "quoted name"), "/*": ("*/", "comment")}
    i = 0
    while i < len(sql):
        if sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = len(sql) if newline < 0 else newline + 1
            continue
        opener = "/*" if sql.startswith("/*", i) else sql[i] if sql[i] in "'\"" else None
        if opener is None:
            i += 1
            continue
        closer, what = closers[opener]
        end = sql.find(closer, i + len(opener))
        if end < 0:
            return i, what
        i = end + len(closer)
    return max(0, len(sql.rstrip()) - 1), "text"


_REQUIRED = re.compile(r"Required keyword: '(\w+)' missing for <class '[\w.]*\.(\w+)'>")


def _syntax_error(error: ParseError, sql: str, chunk: list[Token]) -> SQLSyntaxError:
    detail: dict[str, Any] = error.errors[0] if error.errors else {}
    start = detail.get("start", chunk[-1].start)
    end = detail.get("end", chunk[-1].end)
    token = detail.get("token", sql[start:end + 1])
    return SQLSyntaxError(_describe(str(detail.get("description") or error), token), sql, start=start, end=end)


def _describe(description: str, token: str) -> str:
    """sqlglot's message in the words of this dialect: what was expected where the caret is."""
    # sqlglot names its end-of-input marker: "expected table name but got <Token token_type: TokenType.SENTINEL ...>"
    description = re.sub(r"but got <Token token_type: TokenType\.SENTINEL[^>]*>", "but the statement ended",
                         description)
    if description.startswith("Expecting "):
        return "expected " + description[len("Expecting "):]
    if description == "Invalid expression / Unexpected token":
        return f"unexpected {token!r}; expected the end of the statement (a ';') or a clause that fits here"
    required = _REQUIRED.match(description)
    if required:
        node = required.group(2).upper()
        if node == "WHERE":
            return "expected a condition after WHERE"
        return f"expected an expression at {token!r} (to complete the {node.lower()} before it)"
    return description[0].lower() + description[1:] if description else "cannot parse this statement"
