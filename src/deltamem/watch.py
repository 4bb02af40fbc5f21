"""A folder of text files as a table: creating, editing and deleting files become inserts, updates and deletes.

    result = FolderTable(db, "docs", "docs/", glob="**/*.md").sync()   # SyncResult(inserted=['a.md'], version=4)

Invariant: when ``sync()`` returns, the table holds one row per matching text file, ``{"path": its path relative to
the folder (POSIX), "text": its content, "mtime": epoch seconds of its last change seen}``, and everything a sync
changed was committed as one version; a sync that finds nothing changed commits nothing. So a docs folder or a code
base can be the DATA_SOURCE of ``db.generate`` or the input of any operator, and its views refresh per sync.

How a change is found (NOTE(watch): polling, not ``watchdog``): each sync stats every matching file and reads only
those whose (mtime, size) moved since the last sync; a file is rewritten in the table only when the SHA-256 of its
content differs from what the table holds, so touching or re-saving a file unchanged costs nothing: no write, no
version, no model call. Polling needs no dependency, works where inotify does not (network and container mounts,
editors that replace files by rename), and makes ``--once`` and the loop the same code; its cost is one ``stat`` per
file per interval, a few milliseconds per thousand files, and a change is seen up to ``interval`` seconds late.

What is not a row: hidden files and folders (a name starting with ``.``, e.g. ``.git``) unless ``hidden=True``,
files that are not UTF-8 text (binary files, the database itself), and files over ``max_bytes``. The table is a
mirror: this object assumes it is the table's only writer, and a row whose file is gone, or no longer matches the
glob, is deleted.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deltamem.changes import ColumnType
from deltamem.errors import ConfigError, SchemaError

if TYPE_CHECKING:
    from deltamem.engine import Database

COLUMNS = {"path": "text", "text": "text", "mtime": "float"}
KEY = "path"

Signature = tuple[int, int]  # (st_mtime_ns, st_size): when equal to the last sync's, the file is not read again


@dataclass
class _Known:
    """What the table holds for one path: the SHA-256 of its text, and the stat signature it was last seen with
    (``None`` until this process has seen the file, e.g. rows loaded from the table at start)."""

    digest: str
    signature: Signature | None


@dataclass(frozen=True)
class SyncResult:
    """One sync: the paths it inserted, updated and deleted (sorted), how many matching files were unchanged, the
    files skipped since the last sync saw them (path, reason), and the version committed (``None``: nothing changed).
    """

    inserted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    version: int | None = None

    @property
    def changed(self) -> bool:
        return self.version is not None

    def summary(self) -> str:
        """``"version 4: 1 inserted, 2 updated, 0 deleted, 7 unchanged"``, or ``"no change (9 files)"``."""
        if self.version is None:
            return f"no change ({self.unchanged} files)"
        return (f"version {self.version}: {len(self.inserted)} inserted, {len(self.updated)} updated, "
                f"{len(self.deleted)} deleted, {self.unchanged} unchanged")


class FolderTable:
    """Mirrors the files under ``folder`` that match ``glob`` into table ``table`` (created if missing).

    ``_known`` maps each path the table holds to its ``_Known`` entry; it is filled from the table on the first
    sync (so a restart over an unchanged folder commits nothing) and changed only after a sync's commit succeeded,
    so an interrupted sync (Ctrl-C, a failed commit) is simply redone by the next one.
    """

    def __init__(self, db: Database, table: str, folder: str | Path, *, glob: str = "**/*", hidden: bool = False,
                 max_bytes: int = 1_000_000):
        self.db = db
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConfigError(f"Folder {str(folder)!r} does not exist or is not a folder")
        if not glob or Path(glob).is_absolute() or ".." in Path(glob).parts:
            raise ConfigError(f"Glob {glob!r} must be a relative pattern such as '**/*.md'")
        self.glob = glob
        self.hidden = hidden
        self.max_bytes = max_bytes
        # Opens it when it exists (its columns checked below, with a message that says what a folder table is).
        self.table = db.table(table, key=KEY, columns=None if table in db.tables() else COLUMNS)
        self._check_table()
        self._known: dict[str, _Known] | None = None  # None: not loaded from the table yet
        self._skipped: dict[str, Signature] = {}  # skipped files, so that they are not read again while unchanged

    def _check_table(self) -> None:
        definition = self.db._table_def(self.table.name)
        expected = {c: ColumnType(t) for c, t in COLUMNS.items()}
        if definition.key != KEY or (definition.columns is not None and definition.columns != expected):
            have = ", ".join(definition.columns or {}) or "no columns yet"
            raise SchemaError(f'Table "{self.table.name}" (key {definition.key!r}; {have}) is not a folder table: '
                              f"a folder table has key 'path' and columns path, text, mtime. Pick another name")

    # --- public ---------------------------------------------------------------------------------------------------
    def sync(self) -> SyncResult:
        """Bring the table in line with the folder as one commit (none if nothing changed); see the module doc."""
        known = self._load_known()
        seen: set[str] = set()
        rows: list[dict] = []
        pending: dict[str, _Known] = {}
        unchanged = 0
        skipped: list[tuple[str, str]] = []
        for path, file in self._scan():
            try:
                stat = file.stat()
            except FileNotFoundError:
                continue  # deleted while we scanned: absent from this sync
            signature: Signature = (stat.st_mtime_ns, stat.st_size)
            entry = known.get(path)
            if entry is not None and entry.signature == signature:
                seen.add(path)
                unchanged += 1
                continue
            if self._skipped.get(path) == signature:
                continue
            reason, text, data = self._read(file, stat.st_size)
            if reason == "gone":
                continue
            if reason is not None:
                self._skipped[path] = signature
                skipped.append((path, reason))
                continue
            self._skipped.pop(path, None)
            seen.add(path)
            digest = hashlib.sha256(data).hexdigest()
            if entry is not None and entry.digest == digest:
                entry.signature = signature  # touched, not edited: nothing to write
                unchanged += 1
                continue
            rows.append({"path": path, "text": text, "mtime": stat.st_mtime})
            pending[path] = _Known(digest, signature)
        gone = sorted(path for path in known if path not in seen)
        if not rows and not gone:
            return SyncResult(unchanged=unchanged, skipped=skipped)
        with self.db.batch() as batch:
            if rows:
                self.table.upsert(rows)
            if gone:
                self.table.delete(gone)
        inserted = sorted(p for p in pending if p not in known)
        updated = sorted(p for p in pending if p in known)
        known.update(pending)  # only now: an interrupted commit leaves the cache as the table is
        for path in gone:
            del known[path]
        return SyncResult(inserted, updated, gone, unchanged, skipped, batch.version)

    def watch(self, interval: float = 2.0, *, on_sync: Callable[[SyncResult], None] | None = None,
              stop: threading.Event | None = None) -> None:
        """Sync every ``interval`` seconds until ``stop`` is set (or KeyboardInterrupt), calling ``on_sync`` after
        each sync; a sync runs whole or not at all, so stopping never leaves a half-applied folder."""
        stop = stop or threading.Event()
        while not stop.is_set():
            result = self.sync()
            if on_sync is not None:
                on_sync(result)
            stop.wait(interval)

    # --- internals --------------------------------------------------------------------------------------------------
    def _load_known(self) -> dict[str, _Known]:
        if self._known is None:
            self._known = {
                row["path"]: _Known(hashlib.sha256((row["text"] or "").encode("utf-8")).hexdigest(), None)
                for row in self.table.rows()
            }
        return self._known

    def _scan(self) -> list[tuple[str, Path]]:
        found = []
        for file in self.folder.glob(self.glob):
            relative = file.relative_to(self.folder)
            if not self.hidden and any(part.startswith(".") for part in relative.parts):
                continue
            if file.is_file():
                found.append((relative.as_posix(), file))
        return sorted(found)

    def _read(self, file: Path, size: int) -> tuple[str | None, str, bytes]:
        """``(None, text, bytes)``, or ``(reason, "", b"")`` for a file that is not a row; reason ``"gone"`` for a
        file deleted since the scan."""
        if size > self.max_bytes:
            return f"larger than {self.max_bytes:,} bytes", "", b""
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            return "gone", "", b""
        except OSError as exc:
            return f"unreadable: {exc.strerror}", "", b""
        if b"\0" in data:
            return "binary", "", b""
        try:
            return None, data.decode("utf-8"), data
        except UnicodeDecodeError:
            return "not UTF-8 text", "", b""
