"""Errors raised to callers of deltamem.

Every class here is a *caller* error or an expected failure: it says what is wrong and how to fix it, in one line.
Internal corruption is an ``assert`` that names the guilty component, never one of these.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DeltamemError(Exception):
    """Base class of every error deltamem raises on purpose."""


class NoTable(DeltamemError):
    """Raised when a table name does not exist."""


class NoView(DeltamemError):
    """Raised when a view name does not exist."""


class NoRow(DeltamemError):
    """Raised when a view has nothing for a key (no output, no stored state, no decision)."""


class AlreadyExists(DeltamemError):
    """Raised when a table or view is created under a name that is taken by a different definition."""


class DependentViews(DeltamemError):
    """Raised when a table or view that other views read is dropped without cascade; the message names those views.

    ``reason`` is the message without its last sentence, the advice, which is in the caller's language: Python's
    ``cascade=True`` from the API, SQL's ``CASCADE`` from SQL (which re-raises with its own)."""

    def __init__(self, reason: str, views: tuple[str, ...], advice: str = "Drop them first, or pass cascade=True to "
                                                                          "drop them too"):
        super().__init__(f"{reason}. {advice}")
        self.reason = reason
        self.views = views


class SchemaError(DeltamemError):
    """Raised when a row, template or definition does not fit a table's columns or types."""


class CatalogChanged(SchemaError):
    """Raised when a write was checked against a table definition that another process has changed since (dropped
    and re-created the table, or inferred its columns first); nothing was committed, and writing again checks anew."""


class PrimaryKeyError(DeltamemError):
    """Raised when a row's primary key is missing, duplicated in one batch, or of the wrong type."""


class TemplateError(SchemaError):
    """Raised when a prompt template names a column the input does not have, or is malformed."""


class ConfigError(DeltamemError):
    """Raised when a backend, option or setting is unknown or malformed."""


class StoreUnavailable(DeltamemError):
    """Raised when the store's server cannot be reached for a read or a write (a PostgreSQL restart, a network
    fault); what was committed before is kept. Try again once it is back: background maintenance does so itself."""


class CDCError(DeltamemError):
    """Raised when a PostgreSQL source cannot be followed (``deltamem.cdc``): a server setting, the role's rights,
    the table, its key or replica identity, or the replication slot; the message names what to change."""


class BackendError(DeltamemError):
    """Raised by a backend when one model call failed; the engine retries it and then records it on the row."""


class BackendUnavailable(ConfigError):
    """Raised when a backend cannot be loaded here (missing package, model file or endpoint settings)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or a list of the valid ones when none is close."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    if close:
        return f" Did you mean '{close[0]}'?"
    if choices:
        return " Valid names: " + ", ".join(f"'{c}'" for c in choices) + "."
    return ""


class MaintenanceError(DeltamemError):
    """Raised by a read that waits for freshness when view maintenance stopped on an error (the cause is chained)."""


class FreshnessTimeout(DeltamemError):
    """Raised when ``fresh=True`` waited ``timeout`` seconds and the view had still not caught up; ``view`` names it."""

    def __init__(self, message: str, view: str):
        super().__init__(message)
        self.view = view


class LoadError(DeltamemError):
    """Raised when a record of a loaded file is malformed or does not fit the table; nothing of the file is applied."""

    def __init__(self, path: str, line: int, problem: str):
        end = " " if problem.endswith((".", "?")) else ". "
        super().__init__(f"{path}, line {line}: {problem}{end}Nothing was loaded.")
        self.path = path
        self.line = line
        self.problem = problem
