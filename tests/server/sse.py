"""A minimal server-sent-events reader for the tests: parses the wire format into ``Event``s, as a browser would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from deltamem.server.feed import parse_events


@dataclass(frozen=True)
class Event:
    event: str
    id: str | None
    data: Any


def events(response: httpx.Response) -> Iterator[Event]:
    """The events of a streaming response, in order, with their data decoded."""
    for event, event_id, data in parse_events(response.iter_lines()):
        yield Event(event, event_id, json.loads(data))


def take(client: httpx.Client, url: str, count: int, *, headers: dict[str, str] | None = None,
         params: dict[str, Any] | None = None, timeout: float = 20.0) -> list[Event]:
    """Open a subscription, read ``count`` events and disconnect."""
    found: list[Event] = []
    with client.stream("GET", url, headers=headers, params=params, timeout=timeout) as response:
        response.raise_for_status()
        for event in events(response):
            found.append(event)
            if len(found) == count:
                break
    return found
