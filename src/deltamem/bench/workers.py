"""The worker scale-out benchmark: calls/s paid by 1, 2, 4 ``deltamem worker`` processes sharing one store, the
calls paid twice (must be none), and one worker killed with SIGKILL mid-stream.

    report = run_workers_bench("postgresql://bench@localhost/bench", workers=[1, 2, 4], views=8, changes=100)

Each run gets a fresh store (a new PostgreSQL database on the DSN's server, or a new SQLite file), one table and
``views`` ``sem_map`` views over it, each with its own instruction, so one change costs one call per view; or, with
``shards``, one ``LLM_GENERATE`` view in that many shards (``deltamem.bench.worker_loads``). This process only writes
(``background=False``, it never maintains). The workers run the test backend with a fixed
``latency`` per call and ``max_concurrency`` calls at once each (1 by default, so that one worker's throughput is
bounded by the latency and the scale-out is measurable); a worker maintains its views one after another.

A scale-out run waits until the workers hold their fair shares of the views, commits ``changes`` versions (one row
each) at once, and times the backlog's drain: calls/s is the calls paid in the stream over the seconds from its first
commit until every view reflects its last. The kill run commits a paced stream (below what the surviving workers can
pay, so passes stay short), kills the first worker with SIGKILL a third of the way in (or stops it with SIGSTOP: how
a worker killed on another machine looks), and times until each of its views applied a newer version. Every run then
checks the ledger (no call hash ``paid`` twice; calls the kill left ``interrupted``: possibly paid, never recorded as
paid) and every view against a from-scratch recompute on a fresh in-memory database with the same final rows.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import deltamem as dm
from deltamem.bench.worker_loads import SemMapViews, ShardedAnswers, Workload
from deltamem.engine import check_max_concurrency
from deltamem.leases import is_member_lease
from deltamem.llm.embedding_runs import is_embedding_operator
from deltamem.store import is_postgres_dsn

Progress = Callable[[str, int, int], None]
KILL_PACE = 0.75  # the kill run's stream rate, as a share of what the surviving workers can pay
BALANCE_TIMEOUT = 60.0  # seconds for the workers to take their shares of the views before a stream starts


def run_workers_bench(
    db: str | None = None, *, workers: list[int], views: int = 8, changes: int = 100, latency: float = 0.1,
    max_concurrency: int = 1, lease_timeout: float = 10.0, claim_timeout: float = 10.0, poll_interval: float = 0.1,
    kill_workers: int | None = None, kill_signal: str = "KILL", shards: int = 0, partitions: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the scale-out for each count in ``workers``, then the kill run with ``kill_workers`` (default: the largest
    count, when at least 2; 0 skips it), whose worker gets ``kill_signal``: ``KILL``, or ``STOP`` for one that stops
    answering, as a worker killed on another machine looks (its pid cannot be checked). ``db``: a ``postgresql://``
    DSN (fresh databases are created on its server and dropped after), a SQLite path prefix (``<db>-w<N>.db`` files,
    replaced), or None (temporary SQLite files). ``shards``: instead of ``views`` views, one ``LLM_GENERATE`` view
    partitioned into that many shards, over ``partitions`` partitions (``ShardedAnswers``)."""
    if views < 1 or changes < 3 or min(workers, default=1) < 1 or not (workers or kill_workers):
        raise dm.ConfigError("--views must be at least 1, --changes at least 3, and --workers positive counts")
    if kill_signal not in ("KILL", "STOP"):
        raise dm.ConfigError(f"--kill-signal must be KILL or STOP, got {kill_signal!r}")
    check_max_concurrency(max_concurrency)
    if kill_workers is None:
        kill_workers = max(workers) if max(workers) >= 2 else 0
    kill_with = signal.SIGKILL if kill_signal == "KILL" else signal.SIGSTOP
    if partitions is not None and partitions < 1:
        raise dm.ConfigError(f"--partitions must be a positive count, got {partitions}")
    workload: Workload = ShardedAnswers(shards, partitions) if shards else SemMapViews(views)
    settings = dict(changes=changes, latency=latency, max_concurrency=max_concurrency, lease_timeout=lease_timeout,
                    claim_timeout=claim_timeout, poll_interval=poll_interval)
    report: dict[str, Any] = {"store": _store_kind(db), "workload": workload.describe(), "views": views,
                              "shards": shards, **settings, "runs": [], "kill": None}
    with tempfile.TemporaryDirectory(prefix="deltamem-workers-") as scratch:
        for count in workers:
            with _fresh_store(db, f"w{count}", Path(scratch)) as store:
                report["runs"].append(_run(store, count, Path(scratch), f"w{count}", workload, kill=None,
                                           progress=progress, **settings))
        if kill_workers >= 2:
            with _fresh_store(db, f"kill{kill_workers}", Path(scratch)) as store:
                report["kill"] = _run(store, kill_workers, Path(scratch), f"kill{kill_workers}", workload,
                                      kill=kill_with, progress=progress, **settings)
    base = next((r for r in report["runs"] if r["workers"] == 1), None)
    for run in report["runs"]:
        run["speedup"] = None if base is None else run["calls_per_second"] / base["calls_per_second"]
    return report


def worker_command(store: str, *options: str) -> list[str]:
    """The command line of a ``deltamem worker`` process for ``store`` on the test backends, then ``options``."""
    return [sys.executable, "-m", "deltamem", "worker", store, "--llm", "test", "--embedder", "test", *options]


def _run(store: str, count: int, scratch: Path, name: str, workload: "Workload", *, kill: signal.Signals | None,
         changes: int, latency: float, max_concurrency: int, lease_timeout: float, claim_timeout: float,
         poll_interval: float, progress: Progress | None) -> dict:
    names = workload.view_names()
    writer = dm.connect(store, llm="test", embedder="test", background=False)  # writes only: it never maintains
    try:
        docs = workload.create(writer)
        command = worker_command(store, "--llm-option", f"latency={latency}", "--max-concurrency",
                                 str(max_concurrency), "--lease-timeout", str(lease_timeout), "--claim-timeout",
                                 str(claim_timeout), "--poll-interval", str(poll_interval), "--status-every", "3600")
        logs = [scratch / f"{name}-worker{n}.log" for n in range(count)]
        procs = [_start(command, log) for log in logs]
        killed: dict[str, Any] | None = None
        try:
            held = _wait_for_shares(writer.store, names, workload.light_names(), procs, logs)
            start_version = writer.store.get_latest_version()
            _wait_until(writer.store, names, start_version, procs, logs)  # built: the stream's calls come after
            started = time.time()
            pace = None if kill is None else KILL_PACE * (count - 1) * max_concurrency / latency / workload.calls
            label = f"{count} worker{'s' if count != 1 else ''}" + ("" if kill is None else f", one {kill.name}ed")
            for j in range(changes):
                if pace is not None:
                    time.sleep(max(0.0, started + j / pace - time.time()))
                version = docs.upsert(workload.change(j, changes)).version
                if kill is not None and killed is None and j >= changes // 3:
                    killed = _kill(writer.store, procs[0], kill)
                if killed is not None:
                    _note_continued(writer.store, killed)
                if j % 10 == 0:  # the progress bar reads every view's version: not at each commit
                    _report(progress, label, writer.store, names, start_version, version, changes)
            last = writer.store.get_latest_version()
            deadline = time.time() + 120 + 3 * changes * workload.calls * latency / max_concurrency
            while True:
                _report(progress, label, writer.store, names, start_version, last, changes)
                if killed is not None:
                    _note_continued(writer.store, killed)
                if min(_applied(writer.store, n) for n in names) >= last and \
                        (killed is None or len(killed["continued_after"]) == len(killed["views"])):
                    break
                if time.time() > deadline:
                    raise dm.DeltamemError(f"the views did not reach version {last} in time.{_tails(logs)}")
                time.sleep(0.05)
            drained = time.time() - started
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM if killed is None or proc is not procs[0] else signal.SIGKILL)
            exits = [proc.wait(60) for proc in procs]
    finally:
        writer.close()
    shares = [len(views) for views in held]
    run = {"workers": count, "shares_at_start": shares, "versions": changes, **_check(store, workload, started),
           "speedup_bound": workload.speedup_bound(held, changes),
           "seconds": drained, "worker_exits": exits}
    run["calls_per_second"] = run["calls"] / drained
    if killed is not None:
        continued = killed["continued_after"]
        run["kill"] = {"signal": kill.name, "views": killed["views"],
                       "seconds_to_continue": max(continued.values(), default=None),
                       "per_view": continued, "lease_timeout": lease_timeout, "claim_timeout": claim_timeout,
                       "stream_changes_per_second": pace}
    return run


def _check(store: str, workload: "Workload", started: float) -> dict[str, Any]:
    """What the ledger says of the run (calls paid in the stream, call hashes paid more than once, calls left
    interrupted) and whether every view equals a from-scratch recompute."""
    log = logging.getLogger("deltamem")
    level = log.level
    log.setLevel(logging.ERROR)  # the interrupted calls this open takes off the store are counted, not warned about
    try:
        checker = dm.connect(store, llm="test", embedder="test", background=False)
    finally:
        log.setLevel(level)
    try:
        ledger = checker.store.get_ledger()
        paid = [e for e in ledger if e.outcome == "paid" and not is_embedding_operator(e.operator)]
        times = Counter(e.call_hash for e in paid)
        return {"calls": sum(1 for e in paid if e.ts >= started),
                "paid_twice": sum(1 for n in times.values() if n > 1), "paid_twice_share": _share(times),
                "interrupted": sum(1 for e in ledger if e.outcome == "interrupted"),
                "equal_to_recompute": workload.equals_recompute(checker)}
    finally:
        checker.close()


def _start(command: list[str], log: Path) -> subprocess.Popen:
    package_root = str(Path(dm.__file__).resolve().parents[1])  # the children import this very deltamem
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def _wait_for_shares(store, names: list[str], light: list[str], procs: list[subprocess.Popen],
                     logs: list[Path]) -> list[list[str]]:
    """Wait until every view is leased and each worker holds its fair share of the views with calls to pay (at most
    ``ceil(views / workers)``, and so at least one each when there are enough; ``light``: those without, shared
    apart); return the views with calls each worker holds."""
    share = math.ceil((len(names) - len(light)) / len(procs))
    deadline = time.time() + BALANCE_TIMEOUT
    while True:
        leases = [lease for lease in store.get_leases() if not is_member_lease(lease)]
        held = [sorted(lease.view for lease in leases if lease.pid == proc.pid and lease.view not in light)
                for proc in procs]
        counts = [len(views) for views in held]
        if len(leases) == len(names) and max(counts) <= share:
            return held
        dead = [proc.args for proc in procs if proc.poll() is not None]
        if dead or time.time() > deadline:
            raise dm.DeltamemError(f"the workers did not share the {len(names)} views out within {BALANCE_TIMEOUT:g} "
                                   f"s (views held per worker: {counts}; exited: {len(dead)}).{_tails(logs)}")
        time.sleep(0.05)


def _wait_until(store, names: list[str], version: int, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    """Wait until every view reflects ``version``."""
    deadline = time.time() + BALANCE_TIMEOUT
    while min(_applied(store, n) for n in names) < version:
        if any(proc.poll() is not None for proc in procs) or time.time() > deadline:
            raise dm.DeltamemError(f"the views were not built within {BALANCE_TIMEOUT:g} s.{_tails(logs)}")
        time.sleep(0.05)


def _applied(store, view: str) -> int:
    applied = store.get_applied_version(view)
    return -1 if applied is None else applied


def _tails(logs: list[Path]) -> str:
    """The last lines of each worker's output, for an error message (the logs go with the scratch folder)."""
    return "".join(f"\n--- {log.name}:\n{log.read_text()[-1500:]}" for log in logs if log.exists())


def _kill(store, proc: subprocess.Popen, kill: signal.Signals) -> dict[str, Any]:
    """Send ``kill`` to ``proc``; return its views with their applied versions at that moment. A stopped worker is
    killed at the end of the run."""
    views = sorted(lease.view for lease in store.get_leases() if lease.pid == proc.pid and not is_member_lease(lease))
    proc.send_signal(kill)
    at = time.time()
    if kill is signal.SIGKILL:
        proc.wait()  # reaped at once: a zombie's pid would still look alive
    return {"views": views, "at": at, "applied": {v: _applied(store, v) for v in views},
            "continued_after": {}}


def _note_continued(store, killed: dict[str, Any]) -> None:
    for view in killed["views"]:
        if view not in killed["continued_after"] and _applied(store, view) > killed["applied"][view]:
            killed["continued_after"][view] = time.time() - killed["at"]


def _report(progress: Progress | None, label: str, store, names: list[str], start: int, last: int,
            changes: int) -> None:
    if progress is not None:
        done = sum(max(0, min(last, _applied(store, n)) - start) for n in names)
        progress(label, min(done, changes * len(names)), changes * len(names))


def _share(times: Counter) -> float:
    return 0.0 if not times else sum(1 for n in times.values() if n > 1) / len(times)


def _store_kind(db: str | None) -> str:
    if db is None:
        return "sqlite (temporary files)"
    return "postgresql" if is_postgres_dsn(db) else "sqlite"


@contextmanager
def _fresh_store(db: str | None, label: str, scratch: Path) -> Iterator[str]:
    """A new, empty store for one run: a database created on the DSN's server (dropped after), else a SQLite file."""
    if db is None or not is_postgres_dsn(db):
        path = scratch / f"workers-{label}.db" if db is None else Path(f"{db}-{label}.db")
        for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            stale.unlink(missing_ok=True)
        yield str(path)
        return
    import psycopg

    parts = urlsplit(db)
    name = f"{(parts.path.lstrip('/') or 'deltamem')[:40]}_bench_{label}_{os.getpid()}"
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise dm.ConfigError(f"bench workers creates a fresh database per run on the DSN's server, and could not: "
                             f"{exc}".strip()) from exc
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
