"""Plan ``DROP TABLE | STREAM | VIEW``: which names go, checked against the catalog before anything is dropped.

    plan_drop(parse("DROP VIEW IF EXISTS digest CASCADE")[0].expression, Catalog(db))
    # DropPlan(kind='VIEW', names=('digest',), missing=(), cascade=True)

As in Postgres: ``RESTRICT`` (the default) refuses to drop what other views read and names them; ``CASCADE`` drops
those views too, transitively; ``IF EXISTS`` skips a missing name; several names may be listed. A stream is dropped
with ``DROP STREAM``, a table with ``DROP TABLE``, a view with ``DROP VIEW`` (or ``DROP CONTINUOUS VIEW``): the wrong
word is an error that names the right one. The executor runs a plan as one ``db.batch()`` holding the engine's drops
and the removal of the tables' ``_sql_catalog`` rows, so a DROP commits as one version or, when it fails, not at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from deltamem.errors import NoTable, NoView, did_you_mean
from deltamem.sql.catalog import Catalog
from deltamem.sql.errors import NotSupported

KINDS = ("TABLE", "STREAM", "VIEW")


@dataclass(frozen=True)
class DropPlan:
    kind: str  # TABLE | STREAM | VIEW
    names: tuple[str, ...]  # those that exist, in the order written
    missing: tuple[str, ...]  # skipped by IF EXISTS
    cascade: bool


def plan_drop(tree: exp.Drop, catalog: Catalog) -> DropPlan:
    """The plan of a DROP; raises ``NoTable``/``NoView`` for a missing name (without IF EXISTS) or the wrong kind."""
    kind = (tree.kind or "").upper()
    if kind not in KINDS:
        raise NotSupported(f"DROP {kind} is not supported; deltamem drops TABLE, STREAM and VIEW")
    for unsupported in ("temporary", "materialized", "cluster", "expressions", "purge", "concurrently"):
        if tree.args.get(unsupported):
            raise NotSupported(f"{tree.sql()!r}: {unsupported.upper()} is not part of deltamem's DROP")
    streams = catalog.streams()
    names: list[str] = []
    missing: list[str] = []
    for node in tree.args.get("tables") or []:
        if node.args.get("db") or node.args.get("catalog"):
            raise NotSupported(f"{node.sql()!r}: deltamem has one namespace; drop {node.name!r}")
        name = node.name
        if name in names or name in missing:
            continue
        actual = "VIEW" if name in catalog.views() else "STREAM" if name in streams else \
            "TABLE" if name in catalog.tables() else None
        if actual is None:
            if tree.args.get("exists"):
                missing.append(name)
                continue
            choices = catalog.views() if kind == "VIEW" else [t for t in catalog.tables() if (t in streams) ==
                                                                (kind == "STREAM")]
            error = NoView if kind == "VIEW" else NoTable
            raise error(f'{kind.capitalize()} "{name}" does not exist.' + did_you_mean(name, choices))
        if actual != kind:
            error = NoView if kind == "VIEW" else NoTable
            raise error(f'"{name}" is a {actual.lower()}, not a {kind.lower()}; drop it with DROP {actual}')
        names.append(name)
    return DropPlan(kind, tuple(names), tuple(missing), bool(tree.args.get("cascade")))
