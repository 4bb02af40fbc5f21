"""``deltamem bench serve``: concurrent writers and subscribers against a real server on loopback.

    deltamem bench serve --writers 20 --changes 10000 --subscribers 5

The server runs in its own process (``deltamem serve`` on the test backend), so clients and server do not share a
GIL. Writers post batches of upserts, updates and deletes to one table; subscribers follow a view of it over SSE
from before the first write. The run then checks what the server claims: every subscriber received every change row
of the view's history exactly once and in order, and the view's final rows equal a from-scratch recompute of the
final table. It reports changes per second (posted changes over the writers' wall time) and the latency from a
version's commit (the store's commit time) to each subscriber's receipt of its change rows.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deltamem.bench.workers import worker_command
from deltamem.server.feed import parse_events

VIEW_SQL = "CREATE CONTINUOUS VIEW digest AS SELECT id, writer, SEM_MAP('Summarise {text}') AS gist FROM events"
TABLE_SQL = "CREATE TABLE events (id TEXT PRIMARY KEY, writer INT, n INT, text TEXT)"


@dataclass
class Received:
    """What one subscriber got: each event's (id, payload) and when it arrived."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    error: BaseException | None = None


@dataclass(frozen=True)
class LoadReport:
    rate: float | None  # the cap on changes per second, if any
    writers: int
    subscribers: int
    changes: int
    requests: int
    versions: int
    write_seconds: float
    changes_per_second: float
    delivered_rows: int  # per subscriber
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    exactly_once: bool
    equals_recompute: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_worker(db: str) -> subprocess.Popen:
    return subprocess.Popen(worker_command(db, "--poll-interval", "0.05"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _start_server(db: str, port: int, *, maintain: bool = True) -> subprocess.Popen:
    command = [sys.executable, "-m", "deltamem", "serve", db, "--port", str(port), "--llm", "test",
               "--embedder", "test", "--maintain" if maintain else "--no-maintain"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "DELTAMEM_TOKEN": ""})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/views", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the server did not answer within 60 s")


def _subscribe(url: str, after: int, expected: threading.Event, stop: threading.Event, into: Received) -> None:
    """Follow the view until ``stop``; reconnects with Last-Event-ID if the stream ends early."""
    headers: dict[str, str] = {}
    try:
        while not stop.is_set():
            params = {} if headers else {"after": after}
            with httpx.stream("GET", f"{url}/views/digest/subscribe", params=params, headers=headers,
                              timeout=httpx.Timeout(5.0, read=1.0)) as response:
                response.raise_for_status()
                expected.set()
                try:
                    for _event, event_id, data in parse_events(response.iter_lines()):
                        into.arrived.append(time.time())
                        into.events.append((event_id, json.loads(data)))
                        headers = {"Last-Event-ID": event_id}
                except httpx.ReadTimeout:
                    pass  # idle for a second: look at `stop`, then resume from the last id
    except BaseException as exc:  # reported by the run, not lost in a thread
        into.error = exc


def _writer(url: str, writer: int, changes: int, batch: int, seed: int, interval: float,
            latencies: list[float]) -> int:
    """Post ``changes`` changes in batches, one batch every ``interval`` seconds at most: inserts of new keys,
    updates and deletes of this writer's keys."""
    rng = random.Random(seed * 1000 + writer)
    due = time.perf_counter()
    live: list[str] = []
    posted = requests = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        while posted < changes:
            body, touched = [], set()
            for _ in range(min(batch, changes - posted)):
                roll = rng.random()
                candidates = [k for k in live if k not in touched]
                if roll < 0.2 and candidates:
                    key = rng.choice(candidates)
                    body.append({"op": "upsert", "row": {"id": key, "writer": writer, "n": posted,
                                                         "text": f"edited {key} at {posted}"}})
                elif roll < 0.3 and candidates:
                    key = rng.choice(candidates)
                    live.remove(key)
                    body.append({"op": "delete", "key": key})
                else:
                    key = f"w{writer}-{posted}"
                    live.append(key)
                    body.append({"op": "upsert", "row": {"id": key, "writer": writer, "n": posted,
                                                         "text": f"event {posted} of writer {writer}"}})
                touched.add(key)
                posted += 1
            due += interval
            time.sleep(max(0.0, due - time.perf_counter()))
            began = time.perf_counter()
            answer = client.post("/tables/events/changes", json=body)
            latencies.append(time.perf_counter() - began)
            answer.raise_for_status()
            requests += 1
    return requests


def run_load(*, writers: int = 20, changes: int = 10_000, subscribers: int = 5, batch: int = 10,
             rate: float | None = None, seed: int = 0, workdir: str | None = None, db: str | None = None,
             workers: int = 0) -> LoadReport:
    """Run the load against a fresh database and check it (see the module docstring). ``rate`` caps the changes
    posted per second by all writers together; without it they post as fast as the server answers. ``db`` is a
    ``postgresql://`` DSN of an empty database to run on instead of a new SQLite file. With ``workers``, that many
    ``deltamem worker`` processes maintain the view and the server only serves (``--no-maintain``)."""
    import deltamem as dm

    folder = Path(workdir or tempfile.mkdtemp(prefix="deltamem-load-"))
    db_path = db or str(folder / "load.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start_server(db_path, port, maintain=not workers)
    maintainers = [_start_worker(db_path) for _ in range(workers)]
    try:
        for statement in (TABLE_SQL, VIEW_SQL):
            httpx.post(f"{url}/sql", json={"sql": statement}, timeout=30).raise_for_status()
        start = httpx.get(f"{url}/views/digest", timeout=30).json()["version"]
        stop = threading.Event()
        received = [Received() for _ in range(subscribers)]
        ready = [threading.Event() for _ in range(subscribers)]
        followers = [threading.Thread(target=_subscribe, args=(url, start, ready[i], stop, received[i]), daemon=True)
                     for i in range(subscribers)]
        for follower in followers:
            follower.start()
        for flag in ready:
            flag.wait(30)

        interval = 0.0 if rate is None else batch * writers / rate  # seconds between one writer's batches
        per_writer = [changes // writers + (1 if w < changes % writers else 0) for w in range(writers)]
        request_seconds: list[float] = []
        counts: list[int] = [0] * writers

        def write(w: int) -> None:
            counts[w] = _writer(url, w, per_writer[w], batch, seed, interval, request_seconds)

        began = time.perf_counter()
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        write_seconds = time.perf_counter() - began

        latest = httpx.get(f"{url}/log", params={"limit": 1}, timeout=30).json()[0]["version"]
        # Every version of this run changes the view, so a subscriber is done once it has a row of `latest`. The
        # run watches the subscribers, not the server: polling a view's rows would load the server it measures.
        deadline = time.monotonic() + 600
        while any(not r.events or r.events[-1][1]["version"] < latest for r in received if r.error is None):
            if time.monotonic() > deadline:
                raise RuntimeError("the subscribers did not reach the last version within 600 s")
            time.sleep(0.05)
        time.sleep(0.5)  # anything after the last version's first rows would be a repeat: give it time to show
        stop.set()
        with dm.connect(db_path, llm="test", embedder="test", background=False) as reader:
            history = reader.view("digest").changes(start + 1, latest)
            expected_rows = [(c.version, c.diff, c.key, c.row) for c in history]
            for follower in followers:
                follower.join(10)
            for r in received:
                if r.error is not None:
                    raise RuntimeError(f"a subscriber failed: {r.error!r}") from r.error
            exactly_once = all(
                [(p["version"], p["diff"], p["key"], p["row"]) for _, p in r.events] == expected_rows
                and len({event_id for event_id, _ in r.events}) == len(r.events)
                for r in received
            )
            commit_time = reader.store.get_commit_times(start + 1, latest)
            final_table = reader.table("events").rows()
            final_view = reader.view("digest").rows().rows
        latencies = sorted(
            arrived - commit_time[payload["version"]]
            for r in received for (_, payload), arrived in zip(r.events, r.arrived)
        )
    finally:
        for process in (server, *maintainers):
            process.terminate()
        for process in (server, *maintainers):
            process.wait(30)

    equals_recompute = final_view == _recompute(final_table)

    def quantile(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return LoadReport(
        rate=rate, writers=writers, subscribers=subscribers, changes=sum(per_writer), requests=sum(counts),
        versions=latest - start, write_seconds=write_seconds, changes_per_second=sum(per_writer) / write_seconds,
        delivered_rows=len(expected_rows), latency_p50_ms=quantile(0.5), latency_p99_ms=quantile(0.99),
        latency_max_ms=1000 * latencies[-1] if latencies else 0.0, exactly_once=exactly_once,
        equals_recompute=equals_recompute,
    )


def _recompute(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The view from scratch: the final table in a fresh database, the same SQL, one build."""
    import deltamem as dm
    from deltamem.sql.executor import execute

    with dm.connect(":memory:", llm="test", embedder="test", background=False) as fresh:
        execute(fresh, TABLE_SQL)
        if rows:
            fresh.table("events").upsert(rows)
        execute(fresh, VIEW_SQL)
        return fresh.view("digest").rows(fresh=True).rows
