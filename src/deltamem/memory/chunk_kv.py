"""A lasting store of the KV of document chunks, so a chunk seen in an earlier prompt is loaded instead of recomputed.

    kv = ChunkKVStore(memory_bytes=512 * 2**20, disk_dir="kv-chunks").get("smollm2-135m", chunk_ids)  # or None

What it stores: for one model and one chunk (a paragraph's exact token ids), the keys and values one exact forward pass
computed for those tokens, [num_layers, num_kv_heads, length, head_dim] each, and the prompt position of the chunk's
first token in that pass (its keys are RoPE-rotated for it; the caller re-rotates them for wherever the chunk lands in
a new prompt, as ``deltamem.llm.kv_blend`` does). An entry is keyed by the model id and the SHA-256 of the token ids,
not by position: one entry per key, and a later ``put`` replaces it, because the newest computation is the best
approximation and re-rotation makes a KV computed at any position usable at any other.

The invariant: whatever ``get`` returns is exactly what some ``put`` stored under that model id and those token ids
(the same tensors and position, read back bit for bit from memory or disk), or None.

Two tiers. The memory tier is an LRU under a byte budget (keys plus values); an entry larger than the budget is not
kept there. The disk tier (when ``disk_dir`` is given) holds one safetensors file per entry, named by a hash of the
key, with its metadata (format version, model id, token hash, position, length) and a SHA-256 of the tensor bytes;
``put`` writes through to it atomically (a temp file in the same directory, fsync, ``os.replace``), so processes
sharing the directory never see half a file, and a ``get`` that misses memory reads it (and keeps the entry in memory).
The disk tier is an LRU by file mtime (a hit touches the file) under ``disk_bytes``; any process may delete a file at
any moment, and a file gone is a miss.

Faults are misses, never errors and never wrong KV: a file that is corrupt or truncated, or whose metadata, shapes or
format version do not match, is counted (``corrupt``), logged as a warning naming it, deleted, and treated as a miss. A
disk tier that cannot be written (permissions, a full disk, a read-only file system, a path that is a file) turns the
store memory-only with one warning; neither the constructor nor ``put`` raises for disk trouble.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = "deltamem.chunk_kv"
FORMAT_VERSION = 1
_SUFFIX = ".safetensors"
_TEMP_PREFIX = ".chunk_kv-"
_STALE_TEMP_SECONDS = 3600  # a temp file this old was left by a writer that died


@dataclass(frozen=True)
class ChunkKV:
    """The keys and values one exact forward pass computed for a chunk's tokens, and the prompt position of the chunk's
    first token in that pass (the keys are RoPE-rotated for it). The store keeps the tensors by reference and hands
    the same ones out: treat them as read-only (re-rotating keys makes new tensors)."""

    position: int
    keys: Any  # torch.Tensor [num_layers, num_kv_heads, length, head_dim]
    values: Any  # torch.Tensor, the same shape as keys

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])

    @property
    def num_bytes(self) -> int:
        return int(self.keys.nbytes) + int(self.values.nbytes)


@dataclass(frozen=True)
class _Entry:
    kv: ChunkKV
    num_bytes: int


class ChunkKVStore:
    """Chunk KV in memory (an LRU under ``memory_bytes``) over an optional shared directory (an LRU by mtime under
    ``disk_bytes``). Invariants: ``memory_num_bytes`` never exceeds ``memory_bytes``; every entry in memory holds KV
    that ``put`` accepted for exactly its key's tokens and is never mutated; a file is used only after its checksum and
    metadata match the key. A memory entry may be older than a file another process wrote since: both are exact KV of
    the same tokens. Memory and counters change under one lock; disk I/O runs outside it (files are written atomically
    and read whole, so threads and processes need no lock between them). All methods are thread-safe."""

    def __init__(self, memory_bytes: int, disk_dir: str | os.PathLike | None = None, disk_bytes: int = 4 * 2**30):
        if memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        if disk_bytes < 0:
            raise ValueError(f"disk_bytes must be >= 0, got {disk_bytes}")
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.memory_num_bytes = 0
        self.disk_num_bytes = 0  # the directory's total at the last scan (after every put)
        self.memory_hits = 0
        self.disk_hits = 0
        self.misses = 0
        self.memory_evictions = 0
        self.disk_evictions = 0
        self.corrupt = 0
        self._disk_ok = False
        self._disk_warned = False
        if self.disk_dir is not None:
            try:
                self.disk_dir.mkdir(parents=True, exist_ok=True)
                if not os.access(self.disk_dir, os.W_OK | os.X_OK):
                    raise PermissionError(f"{self.disk_dir} is not writable")
                self._disk_ok = True
                self._trim_disk(keep=None)
            except OSError as exc:
                self._disable_disk(exc)

    @property
    def disk_enabled(self) -> bool:
        """Whether the disk tier is in use (False without ``disk_dir``, or after disk trouble)."""
        return self._disk_ok

    def get(self, model_id: str, token_ids: Sequence[int]) -> ChunkKV | None:
        """The stored KV of exactly these tokens under this model, from memory or else from disk (tensors read from
        disk are on the CPU, in the dtype they were stored in), or None."""
        key = (model_id, token_hash(token_ids))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.memory_hits += 1
            disk_ok = self._disk_ok
        if not disk_ok:
            if entry is None:
                self._count_miss()
            return None if entry is None else entry.kv
        path = self._path(key)
        if entry is not None:
            _touch(path)  # keeps a chunk hot in memory from going cold on disk
            return entry.kv
        kv = self._load(path, key, len(token_ids))
        if kv is None:
            self._count_miss()
            return None
        _touch(path)
        with self._lock:
            self.disk_hits += 1
            current = self._entries.get(key)
            if current is not None:  # a put raced this read: its KV is the newer one
                self._entries.move_to_end(key)
                return current.kv
            self._insert(key, _Entry(kv, kv.num_bytes))
        return kv

    def put(self, model_id: str, token_ids: Sequence[int], kv: ChunkKV) -> None:
        """Store ``kv`` (computed for exactly ``token_ids``) under ``model_id``, replacing the key's old entry in both
        tiers. Raises ValueError for KV that does not fit the tokens; never raises for disk trouble."""
        problem = _shape_problem(kv, len(token_ids))
        if problem:
            raise ValueError(problem)
        key = (model_id, token_hash(token_ids))
        entry = _Entry(kv, kv.num_bytes)
        data = _serialize(kv, model_id, key[1]) if self._disk_ok else None  # before any change: it may raise
        with self._lock:
            self._drop(key)
            self._insert(key, entry)  # not kept if larger than the whole budget
        if data is not None and self._disk_ok:
            path = self._path(key)
            try:
                _write_atomically(path, data)
                self._trim_disk(keep=path)
            except OSError as exc:
                self._disable_disk(exc)

    def stats(self) -> dict[str, int | bool]:
        with self._lock:
            return {
                "memory_hits": self.memory_hits,
                "disk_hits": self.disk_hits,
                "misses": self.misses,
                "memory_evictions": self.memory_evictions,
                "disk_evictions": self.disk_evictions,
                "corrupt": self.corrupt,
                "memory_entries": len(self._entries),
                "memory_num_bytes": self.memory_num_bytes,
                "disk_num_bytes": self.disk_num_bytes,
                "disk_enabled": self._disk_ok,
            }

    def __len__(self) -> int:
        """How many entries the memory tier holds."""
        with self._lock:
            return len(self._entries)

    # -- memory tier (caller holds the lock) --

    def _insert(self, key: tuple[str, str], entry: _Entry) -> None:
        if entry.num_bytes > self.memory_bytes:
            return
        self._entries[key] = entry
        self.memory_num_bytes += entry.num_bytes
        while self.memory_num_bytes > self.memory_bytes:
            self._drop(next(iter(self._entries)))
            self.memory_evictions += 1

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.memory_num_bytes -= entry.num_bytes

    def _count_miss(self) -> None:
        with self._lock:
            self.misses += 1

    # -- disk tier (no lock held) --

    def _path(self, key: tuple[str, str]) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / (file_name(*key))

    def _load(self, path: Path, key: tuple[str, str], length: int) -> ChunkKV | None:
        """The entry in ``path`` if it is whole and is this key's, else None; a bad file is counted and deleted."""
        import safetensors.torch  # imported before the try: a missing package is not a corrupt file

        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("chunk KV file %s could not be read (%s): treated as a miss", path, exc)
            return None
        try:
            metadata = _read_metadata(data)
            tensors = safetensors.torch.load(data)
            kv = ChunkKV(int(metadata["position"]), tensors["keys"], tensors["values"])
            problem = _file_problem(kv, metadata, key, length, set(tensors))
        except Exception as exc:  # noqa: BLE001 - a malformed file can fail to parse in any way
            problem = f"it does not parse ({type(exc).__name__}: {exc})"
        if not problem:
            return kv
        log.warning("chunk KV file %s is corrupt: %s; deleted and treated as a miss", path, problem)
        with self._lock:
            self.corrupt += 1
        try:
            now = os.stat(path)
            if (now.st_dev, now.st_ino) == (stat.st_dev, stat.st_ino):  # not a good file another process just wrote
                os.remove(path)
        except OSError:
            pass
        return None

    def _trim_disk(self, keep: Path | None) -> None:
        """Delete the least recently used files until the directory fits ``disk_bytes``; ``keep`` (the file just
        written) goes last. Also removes temp files a dead writer left behind. Raises OSError if the directory is
        unusable."""
        assert self.disk_dir is not None
        files = []
        now = time.time()
        with os.scandir(self.disk_dir) as it:
            for item in it:
                try:
                    if item.name.endswith(_SUFFIX) and len(item.name) == 64 + len(_SUFFIX):
                        stat = item.stat()
                        files.append((item.path == str(keep), stat.st_mtime_ns, item.name, stat.st_size, item.path))
                    elif item.name.startswith(_TEMP_PREFIX) and now - item.stat().st_mtime > _STALE_TEMP_SECONDS:
                        os.remove(item.path)
                except OSError:  # removed by another process meanwhile, or not ours to remove
                    continue
        files.sort()
        total = sum(f[3] for f in files)
        evicted = 0
        for _, _, _, size, path in files:
            if total <= self.disk_bytes:
                break
            try:
                os.remove(path)
                evicted += 1
            except FileNotFoundError:
                pass
            except OSError:
                continue
            total -= size
        with self._lock:
            self.disk_evictions += evicted
            self.disk_num_bytes = total

    def _disable_disk(self, exc: OSError) -> None:
        with self._lock:
            warn = not self._disk_warned
            self._disk_ok = False
            self._disk_warned = True
        if warn:
            log.warning("chunk KV disk tier %s is unusable (%s): keeping chunk KV in memory only", self.disk_dir, exc)


def token_hash(token_ids: Sequence[int]) -> str:
    """The SHA-256 (hex) of token ids as little-endian int64s.

    >>> token_hash([1, 2, 3]) == token_hash((1, 2, 3)) != token_hash([1, 2])
    True
    """
    return hashlib.sha256(struct.pack(f"<{len(token_ids)}q", *(int(t) for t in token_ids))).hexdigest()


def file_name(model_id: str, tokens_hash: str) -> str:
    """The disk tier's file name for a key: the SHA-256 of the model id and the token hash.

    >>> file_name("m", token_hash([1]))[-12:], len(file_name("m", token_hash([1])))
    ('.safetensors', 76)
    """
    return hashlib.sha256(f"{model_id}\0{tokens_hash}".encode()).hexdigest() + _SUFFIX


def _shape_problem(kv: ChunkKV, length: int) -> str:
    """What is wrong with ``kv`` as the KV of ``length`` tokens, or ''."""
    if not isinstance(kv, ChunkKV):
        return f"expected a ChunkKV, got {type(kv).__name__}"
    keys, values = kv.keys, kv.values
    if not hasattr(keys, "shape") or not hasattr(values, "shape"):
        return "keys and values must be tensors"
    if len(keys.shape) != 4:
        return f"keys must be 4-D [num_layers, num_kv_heads, length, head_dim], got shape {tuple(keys.shape)}"
    if tuple(keys.shape) != tuple(values.shape):
        return f"keys have shape {tuple(keys.shape)} but values have shape {tuple(values.shape)}"
    if keys.dtype != values.dtype:
        return f"keys are {keys.dtype} but values are {values.dtype}"
    if length == 0:
        return "a chunk needs at least one token"
    if keys.shape[2] != length:
        return f"the KV covers {keys.shape[2]} tokens but {length} token ids were given"
    if not isinstance(kv.position, int) or isinstance(kv.position, bool) or kv.position < 0:
        return f"position must be an int >= 0, got {kv.position!r}"
    return ""


def _file_problem(kv: ChunkKV, metadata: dict[str, str], key: tuple[str, str], length: int, names: set[str]) -> str:
    """What makes a parsed file not this key's entry, or ''."""
    if metadata.get("format") != FORMAT or metadata.get("version") != str(FORMAT_VERSION):
        found = f"{metadata.get('format')!r} version {metadata.get('version')!r}"
        return f"its format is {found}, expected {FORMAT!r} version {FORMAT_VERSION}"
    if names != {"keys", "values"}:
        return f"it holds tensors {sorted(names)}"
    if metadata.get("model_id") != key[0]:
        return f"it is for model {metadata.get('model_id')!r}, not {key[0]!r}"
    if metadata.get("token_hash") != key[1]:
        return "its token hash is another chunk's"
    if metadata.get("length") != str(length):
        return f"its metadata says {metadata.get('length')} tokens, not {length}"
    problem = _shape_problem(kv, length)
    if problem:
        return problem
    if metadata.get("checksum") != _checksum(kv.keys, kv.values):
        return "the tensor checksum does not match"
    return ""


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (an 8-byte little-endian header size, then JSON)."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes is shorter than a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError(f"the header claims {size} bytes but the file has {len(data) - 8} after the size")
    metadata = json.loads(data[8 : 8 + size]).get("__metadata__")
    if not isinstance(metadata, dict):
        raise ValueError("no __metadata__")
    return metadata


def _checksum(keys: Any, values: Any) -> str:
    """The SHA-256 (hex) of the keys' bytes followed by the values' bytes (C order, native dtype)."""
    import torch

    digest = hashlib.sha256()
    for tensor in (keys, values):
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _serialize(kv: ChunkKV, model_id: str, tokens_hash: str) -> bytes:
    import safetensors.torch

    keys, values = kv.keys.detach().cpu().contiguous(), kv.values.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "version": str(FORMAT_VERSION),
        "model_id": model_id,
        "token_hash": tokens_hash,
        "position": str(kv.position),
        "length": str(kv.length),
        "checksum": _checksum(keys, values),
    }
    return safetensors.torch.save({"keys": keys, "values": values}, metadata=metadata)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.remove(temp)
        except OSError:
            pass
        raise


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # gone (another process evicted it) or not ours to touch: the LRU order is a hint
        pass


__all__ = ["ChunkKV", "ChunkKVStore", "FORMAT_VERSION", "file_name", "token_hash"]
