"""Plan ``COPY t FROM 'path' [WITH (format = ..., limit = n)]``: load a file into a table, as ``deltamem load`` does.

    COPY passages FROM '../data/corpus.json' WITH (format = 'json', limit = 40);

The file is read by ``deltamem.ingest`` and applied as one version, every record or none; a bad record is an error
naming its line. Formats are ``jsonl``, ``json`` (one array of row objects), ``csv`` (with a header line) and
``debezium``; without ``format`` the extension decides, as for ``deltamem load``. Within the file the last record of a
key wins, and the status line counts the records that a later one replaced. ``limit = n`` loads the first n records.
Postgres's spelling without ``=`` (``WITH (FORMAT csv, HEADER true)``) reads the same.

A relative path is read from the folder of the script that ``deltamem run`` runs, and from the working directory in
the shell (the executor's ``base_dir``). The table must exist (``CREATE TABLE`` first), and the file's records name
its columns; into a stream keyed by its implicit sequence, records without ``seq`` get the next numbers, as INSERT
gives them.

NOTE(sql): COPY reads any file this process can read, as Postgres's server-side COPY does for a superuser; a caller
that runs SQL from others (an HTTP endpoint) passes ``read_files=False`` and COPY is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlglot import exp

from deltamem.errors import ConfigError, SchemaError, did_you_mean
from deltamem.ingest import FileFormat, detect_format
from deltamem.sql.catalog import SEQUENCE_COLUMN, Catalog
from deltamem.sql.errors import NotSupported
from deltamem.sql.evaluate import constant

COPY_OPTIONS = ("format", "limit", "header")


@dataclass(frozen=True)
class CopyPlan:
    table: str
    path: Path  # absolute
    format: str | None  # None: from the extension (and the content), as ``deltamem load`` decides
    limit: int | None
    numbered: bool  # a stream keyed by its implicit sequence: records without ``seq`` are numbered


def plan_copy(tree: exp.Copy, catalog: Catalog, *, base_dir: Path | None, read_files: bool) -> CopyPlan:
    """The plan of a COPY ... FROM; raises for a missing table or file, an unknown option or format."""
    if not tree.args.get("kind"):
        raise NotSupported("COPY ... TO is not supported; read a view with SELECT or SUBSCRIBE, or `deltamem "
                           "subscribe DB VIEW --json`")
    target = tree.this
    if isinstance(target, exp.Schema):
        raise NotSupported("COPY with a column list is not supported yet; the file's records name their columns")
    name = catalog.resolve(target.name, kinds=("table",)).name
    files = tree.args.get("files") or []
    if len(files) != 1 or not (isinstance(files[0], exp.Literal) and files[0].is_string):
        raise NotSupported("COPY reads one file named by a string, e.g. COPY docs FROM 'docs.jsonl'; FROM STDIN "
                           "and PROGRAM are not supported")
    if not read_files:
        raise ConfigError("COPY ... FROM a file is switched off here; load files with `deltamem load` or a script")
    written = Path(files[0].name).expanduser()
    path = written if written.is_absolute() else (base_dir or Path.cwd()) / written
    if not path.is_file():
        where = "" if written.is_absolute() else \
            f" (a relative path is read from {'the folder of the script' if base_dir else 'the working directory'})"
        raise ConfigError(f"COPY {name}: file {str(path)!r} does not exist{where}")
    options = _options(tree.args.get("params") or [])
    fmt = options.get("format")
    if fmt is not None:
        fmt = detect_format(path, str(fmt).lower()).value  # an unknown name fails here, with the closest one
    if "header" in options:
        if options["header"] is not True:
            raise NotSupported("COPY reads a CSV file's first line as its header (HEADER true); HEADER false is "
                               "not supported")
        if (fmt or detect_format(path).value) != FileFormat.CSV.value:
            raise ConfigError("HEADER applies to format csv")
    limit = options.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise SchemaError(f"COPY's limit takes a whole number of records, not {limit!r}")
    numbered = name in catalog.streams() and catalog.table_def(name).key == SEQUENCE_COLUMN
    return CopyPlan(name, path.resolve(), fmt, limit, numbered)


def _options(params: list[exp.Expr]) -> dict[str, object]:
    found: dict[str, object] = {}
    for param in params:
        name = param.name.lower()
        if name not in COPY_OPTIONS:
            raise ConfigError(f"COPY has no option {name!r}." + did_you_mean(name, COPY_OPTIONS))
        if name in found:
            raise ConfigError(f"COPY option {name!r} is given twice")
        value = param.args.get("expression")
        if value is None:
            raise ConfigError(f"COPY option {name!r} needs a value, e.g. format = 'jsonl'")
        found[name] = value.name if isinstance(value, (exp.Var, exp.Column)) else \
            constant(value, what=f"COPY option {name}")
    return found
