"""Whose a call in flight is, and whether that process is gone: what lets a store report calls a crash interrupted.

    owner = this_process(); is_gone(*owner)   # False: this process is alive

A process is named by its host, its pid and ``PROCESS``, a random id drawn once per process. The pid alone is not
enough: a restarted container often runs as the same pid (1) as the process that died, so a row with this process's
pid and another id is an earlier process's. A pid on another host cannot be checked, and a pid that is running
is taken to be the same process (a reused pid delays a report until it ends; it never makes a false one).
"""

from __future__ import annotations

import os
import socket
import uuid

PROCESS = uuid.uuid4().hex


def this_process() -> tuple[str, int, str]:
    """``(host, pid, process id)`` of the calling process; the pid is read now, so a forked child gets its own."""
    return socket.gethostname(), os.getpid(), PROCESS


def is_gone(host: str, pid: int, process: str) -> bool:
    """True only when the process ``(host, pid, process)`` has certainly ended."""
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return process != PROCESS
    if os.name == "nt":
        return False  # os.kill(pid, 0) would terminate the process on Windows, not probe it
    try:
        os.kill(pid, 0)  # signal 0: delivers nothing, only checks that the pid exists
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, and belongs to another user
    return False
