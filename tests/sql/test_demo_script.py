"""examples/demo.sql (`make demo-sql`) on the test backend: it loads real 2Wiki passages with COPY, and each kind of
change costs what it should."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from deltamem.bench.datasets import default_data_dir
from deltamem.cli import app
from tests.helpers import scripted_db

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "demo.sql"


def _versions(transcript: str) -> dict[str, int]:
    """Each statement's first line -> the version its status line reports."""
    found = {}
    for block in transcript.split("deltamem=> ")[1:]:
        lines = block.splitlines()
        status = next((line for line in lines if re.search(r"\(version \d+\)$", line)), None)
        if status is not None:
            found[lines[0]] = int(re.search(r"\(version (\d+)\)$", status).group(1))
    return found


def _version_of(versions: dict[str, int], start: str) -> int:
    (version,) = [v for statement, v in versions.items() if statement.startswith(start)]
    return version


def test_the_demo_script_runs_on_real_data_and_pays_only_for_what_changed(tmp_path):
    db_path = tmp_path / "demo-sql.db"
    script = tmp_path / "demo.sql"  # the script as shipped, its data path made absolute (the checkout may be a clone)
    script.write_text(SCRIPT.read_text().replace("'../../shared/data/", f"'{default_data_dir()}/"))
    result = CliRunner().invoke(app, ["run", str(db_path), str(script), "--llm", "test", "--embedder", "test"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "COPY 30: 30 inserted, 0 updated, 0 deleted, 0 unchanged (version 2)" in out
    versions = _versions(out)
    tag_all = _version_of(versions, "UPDATE passages SET source = '2wiki';")
    retag = _version_of(versions, "UPDATE passages SET source = '2wiki-reviewed'")
    edit = _version_of(versions, "UPDATE passages SET text = 'Teutberga")
    delete = _version_of(versions, "DELETE FROM passages")
    reinsert = _version_of(versions, "INSERT INTO passages (title, text, source) VALUES ('Caspar Babypants'")

    db = scripted_db(str(db_path))
    ledger = db.store.get_ledger("people")
    for version in (tag_all, retag, delete):  # an unread column, or a retraction: not a single call
        assert [e for e in ledger if e.version == version] == [], version
    assert {e.outcome for e in ledger if e.version == reinsert} == {"memo"}  # asked again, answered by the memo
    assert [e.outcome for e in ledger if e.version == edit] == ["paid", "paid"]  # filter and map, for that row only

    people = db.view("people")
    history = people.history("Teutberga")
    assert [h.valid_from for h in history] == [2, edit] and history[0].row != history[1].row
    assert history[0].row["known_for"] in out and history[1].row["known_for"] in out  # AS OF 3, then now
    deleted = {"Caspar Babypants", "Kristian Leontiou", "Rakka (film)"}
    assert deleted <= {row["title"] for row in people.rows(as_of=delete - 1)}
    assert not deleted & {row["title"] for row in people.rows(as_of=delete)}
    assert "Caspar Babypants" in {row["title"] for row in people.rows()}  # re-inserted
    usage = db.usage()
    # A row-wise view pays for the prompts that changed, and so would a full recompute in this engine (its memo
    # answers the rest); without a memo, a full recompute would pay for every row at every refresh.
    assert 0 < usage.calls == usage.full_recompute_calls < usage.full_recompute_no_memo_calls / 4
    assert re.search(rf"│ total\s+│ {usage.calls}\s+│", out)  # SHOW USAGE printed the same numbers
    db.close()
