"""`deltamem sql` driven through a pseudo-terminal, as a person types into it: prompts, multi-line statements,
tables, errors with carets, a streaming SUBSCRIBE stopped by Ctrl-C, history, and \\q."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time


import deltamem as dm
from deltamem.sql import execute

DELTAMEM = [sys.executable, "-m", "deltamem"]  # the command line, without depending on the installed script
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class Terminal:
    """A child process on a pseudo-terminal; ``expect`` reads its output until a pattern shows up."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal, so Ctrl-C becomes SIGINT
            os.execve(argv[0], argv, env)
        self.seen = ""

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: str, timeout: float = 60.0) -> str:
        """Everything read up to and including the first match of ``pattern`` (a regex); it is consumed."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.seen)
            if match:
                before, self.seen = self.seen[:match.end()], self.seen[match.end():]
                return before
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; the terminal shows:\n{self.seen}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the child exited and the pty closed
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the shell exited while waiting for {pattern!r}:\n{self.seen}")
                self.seen += ANSI.sub("", chunk.decode(errors="replace"))

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:  # keep draining, so the child never blocks on a full pty
                if select.select([self.fd], [], [], 0.1)[0]:
                    os.read(self.fd, 65536)
            except OSError:
                pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the shell did not exit")

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


def test_a_shell_session_through_a_pseudo_terminal(tmp_path):
    db_path = tmp_path / "shell.db"
    history = tmp_path / "history"
    env = {**os.environ, "HOME": str(tmp_path), "DELTAMEM_HISTORY": str(history), "TERM": "xterm",
           "COLUMNS": "100", "LINES": "40"}
    terminal = Terminal([*DELTAMEM, "sql", str(db_path), "--llm", "test", "--embedder", "test"], env)
    try:
        terminal.expect(r"deltamem=> ")

        def run(statement: str) -> str:
            """Type one statement; what the terminal shows up to the next prompt."""
            terminal.send(statement + "\n")
            return terminal.expect(r"deltamem=> ")

        assert "CREATE TABLE (version 1)" in run("CREATE TABLE notes (id INT PRIMARY KEY, body TEXT);")
        terminal.send("INSERT INTO notes VALUES\n")  # a statement ends at ';', not at the end of a line
        terminal.expect(r"deltamem-> ")
        assert "INSERT 1 (version 2)" in run("  (1, 'buy milk');")

        shown = run("SELEC * FROM notes;")
        assert "Error: syntax error at line 1, column 1: unknown statement 'SELEC'" in shown
        assert "Did you mean 'SELECT'?" in shown
        assert "  1 | SELEC * FROM notes;\n    | ^^^^^" in shown
        assert "Error: Table or view \"note\" does not exist. Did you mean 'notes'?" in run("SELECT * FROM note;")

        run("CREATE CONTINUOUS VIEW gists AS SELECT id, SEM_MAP('Summarise {body}') AS gist FROM notes;")
        shown = run("SELECT * FROM gists;")
        assert "SELECT 1 (version 2)" in shown and re.search(r"│ 1 +│ \w+ \w+ \w+ +│", shown), shown

        terminal.send("SUBSCRIBE TO gists;\n")
        terminal.expect(r"following gists after version 2; Ctrl-C stops")
        with dm.connect(str(db_path), llm="test", embedder="test", background=False) as writer:
            execute(writer, "INSERT INTO notes VALUES (2, 'call mum')")  # another process writes
        line = terminal.expect(r"3\t1\t2\t[^\n]+\n")  # version 3, diff +1, id 2, its gist
        assert line.splitlines()[-1].startswith("3\t1\t2\t")
        terminal.send("\x03")  # Ctrl-C stops the subscription, not the shell
        terminal.expect(r"stopped following gists at version 3")
        terminal.expect(r"deltamem=> ")

        assert re.search(r"│ 2 +│", run("SELECT count(*) FROM notes;"))
        terminal.send("\\q\n")
        assert terminal.wait() == 0
    finally:
        terminal.close()
    assert "SELECT * FROM gists;" in history.read_text()  # readline kept the history
