"""SQL for deltamem: a sqlglot dialect, a planner onto the Python API, and an executor.

    deltamem.sql.execute(db, "CREATE CONTINUOUS VIEW cats AS SELECT * FROM docs WHERE SEM_FILTER('{text} is on cats')")

Three layers, one module each: ``dialect`` parses (text to typed syntax trees, never touching a database),
``planner`` (with ``relations`` for continuous-view SELECTs, ``drop`` for DROP and ``copy_from`` for COPY) turns one
tree into a plan of Python API calls, reading only the catalog, and ``executor`` runs a plan. Invariant: a statement that fails changes nothing.
"""

from __future__ import annotations

from deltamem.sql.dialect import Deltamem, Statement, is_complete, parse
from deltamem.sql.errors import BindError, NotSupported, SQLSyntaxError
from deltamem.sql.executor import Result, execute, execute_script, follow

__all__ = [
    "BindError", "Deltamem", "NotSupported", "Result", "SQLSyntaxError", "Statement", "execute", "execute_script",
    "follow", "is_complete", "parse",
]
