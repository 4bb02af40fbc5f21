"""ChunkKVStore on small random tensors (no model): round trips through memory and disk, LRU by bytes in memory and by
mtime on disk, replacement, corrupt/truncated/foreign files as counted misses, a disk tier that cannot be written, two
stores sharing a directory, validation, and a hypothesis run of random puts and gets."""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltamem.memory import chunk_kv
from deltamem.memory.chunk_kv import ChunkKV, ChunkKVStore, file_name, token_hash

torch = pytest.importorskip("torch")

LAYERS, HEADS, DIM = 2, 3, 4
BYTES_PER_TOKEN = LAYERS * HEADS * DIM * 4 * 2  # keys + values, float32
MODEL = "smollm2-135m"


def make_kv(length: int, seed: int = 0, position: int = 0) -> ChunkKV:
    generator = torch.Generator().manual_seed(seed)
    shape = (LAYERS, HEADS, length, DIM)
    return ChunkKV(position, torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))


def ids(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def same(a: ChunkKV | None, b: ChunkKV) -> bool:
    return (a is not None and a.position == b.position
            and torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values))


def files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == ".safetensors")


def path_of(directory: Path, model_id: str, token_ids) -> Path:
    return directory / file_name(model_id, token_hash(token_ids))


def test_round_trip_in_memory():
    store = ChunkKVStore(memory_bytes=100 * BYTES_PER_TOKEN)
    kv = make_kv(5, position=17)
    store.put(MODEL, ids(5), kv)
    assert store.get(MODEL, ids(5)) is kv  # memory hands back the stored object
    assert store.get(MODEL, ids(5, start=1)) is None
    assert store.memory_num_bytes == 5 * BYTES_PER_TOKEN == kv.num_bytes and kv.length == 5
    assert store.stats() == {
        "memory_hits": 1, "disk_hits": 0, "misses": 1, "memory_evictions": 0, "disk_evictions": 0, "corrupt": 0,
        "memory_entries": 1, "memory_num_bytes": 5 * BYTES_PER_TOKEN, "disk_num_bytes": 0, "disk_enabled": False,
    }


def test_round_trip_through_disk_across_a_restart(tmp_path):
    kv = make_kv(6, seed=3, position=42)
    ChunkKVStore(10**6, tmp_path).put(MODEL, ids(6), kv)
    (path,) = files(tmp_path)
    assert path == path_of(tmp_path, MODEL, ids(6))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind

    fresh = ChunkKVStore(10**6, tmp_path)
    assert fresh.disk_num_bytes == path.stat().st_size
    loaded = fresh.get(MODEL, ids(6))
    assert same(loaded, kv) and loaded.keys.dtype == torch.float32
    assert (fresh.disk_hits, fresh.memory_hits, fresh.misses, len(fresh)) == (1, 0, 0, 1)
    assert fresh.get(MODEL, ids(6)) is loaded  # now served from memory
    assert fresh.memory_hits == 1


def test_memory_is_an_lru_by_bytes():
    store = ChunkKVStore(memory_bytes=30 * BYTES_PER_TOKEN)
    for n, seed in ((10, 1), (10, 2), (10, 3)):
        store.put(MODEL, ids(10, start=seed * 100), make_kv(n, seed))
    assert store.get(MODEL, ids(10, start=100)) is not None  # 1 becomes the most recently used
    store.put(MODEL, ids(10, start=400), make_kv(10, 4))  # evicts 2
    assert store.get(MODEL, ids(10, start=200)) is None and store.memory_evictions == 1
    store.put(MODEL, ids(25, start=500), make_kv(25, 5))  # needs the room of all three others
    assert len(store) == 1 and store.memory_evictions == 4
    assert store.memory_num_bytes == 25 * BYTES_PER_TOKEN <= store.memory_bytes
    store.put(MODEL, ids(31, start=600), make_kv(31, 6))  # larger than the budget: not kept, and evicts nothing
    assert store.get(MODEL, ids(31, start=600)) is None and len(store) == 1


def test_an_entry_larger_than_memory_still_goes_to_disk(tmp_path):
    store = ChunkKVStore(memory_bytes=BYTES_PER_TOKEN, disk_dir=tmp_path)
    kv = make_kv(4)
    store.put(MODEL, ids(4), kv)
    assert len(store) == 0 and len(files(tmp_path)) == 1
    assert same(store.get(MODEL, ids(4)), kv) and store.disk_hits == 1 and len(store) == 0


def test_disk_is_an_lru_by_mtime_under_its_byte_budget(tmp_path):
    size = len(chunk_kv._serialize(make_kv(8), MODEL, token_hash(ids(8))))
    store = ChunkKVStore(memory_bytes=0, disk_dir=tmp_path, disk_bytes=2 * size)
    a, b, c = ids(8), ids(8, start=100), ids(8, start=200)
    store.put(MODEL, a, make_kv(8, 1))
    store.put(MODEL, b, make_kv(8, 2))
    assert path_of(tmp_path, MODEL, a).stat().st_size == size and store.disk_num_bytes == 2 * size
    os.utime(path_of(tmp_path, MODEL, a), (1000, 1000))  # a is older than b ...
    os.utime(path_of(tmp_path, MODEL, b), (2000, 2000))
    assert store.get(MODEL, a) is not None  # ... until a read touches it
    store.put(MODEL, c, make_kv(8, 3))
    assert not path_of(tmp_path, MODEL, b).exists() and store.disk_evictions == 1
    assert store.get(MODEL, b) is None
    assert same(store.get(MODEL, a), make_kv(8, 1)) and same(store.get(MODEL, c), make_kv(8, 3))
    assert store.disk_num_bytes == 2 * size

    tiny = ChunkKVStore(memory_bytes=0, disk_dir=tmp_path, disk_bytes=size)  # a smaller budget trims at once
    assert len(files(tmp_path)) == 1 and tiny.disk_evictions == 1
    tiny.put(MODEL, ids(9, start=300), make_kv(9))  # larger than the whole budget: evicts everything, itself last
    assert files(tmp_path) == [] and tiny.disk_num_bytes == 0


def test_a_later_put_replaces_in_both_tiers(tmp_path):
    store = ChunkKVStore(10**6, tmp_path)
    store.put(MODEL, ids(5), make_kv(5, seed=1, position=0))
    newer = make_kv(5, seed=2, position=300)
    store.put(MODEL, ids(5), newer)
    assert store.get(MODEL, ids(5)) is newer and len(store) == 1 and store.memory_num_bytes == 5 * BYTES_PER_TOKEN
    assert len(files(tmp_path)) == 1 and same(ChunkKVStore(10**6, tmp_path).get(MODEL, ids(5)), newer)


def test_model_ids_do_not_collide(tmp_path):
    store = ChunkKVStore(10**6, tmp_path)
    store.put("model-a", ids(5), make_kv(5, 1))
    store.put("model-b", ids(5), make_kv(5, 2))
    assert len(files(tmp_path)) == 2
    fresh = ChunkKVStore(10**6, tmp_path)
    assert same(fresh.get("model-a", ids(5)), make_kv(5, 1)) and same(fresh.get("model-b", ids(5)), make_kv(5, 2))
    assert fresh.get("model-c", ids(5)) is None


def corrupt_case(tmp_path, damage, caplog) -> ChunkKVStore:
    """Write one entry, damage its file, and read it back through a fresh store."""
    ChunkKVStore(10**6, tmp_path).put(MODEL, ids(6), make_kv(6))
    path = path_of(tmp_path, MODEL, ids(6))
    damage(path)
    store = ChunkKVStore(10**6, tmp_path)
    with caplog.at_level(logging.WARNING, logger="deltamem.memory.chunk_kv"):
        assert store.get(MODEL, ids(6)) is None
    assert (store.corrupt, store.misses, store.disk_hits) == (1, 1, 0)
    assert not path.exists()
    assert path.name in caplog.text and "corrupt" in caplog.text
    return store


def test_flipped_bytes_in_the_tensor_data_are_a_counted_miss(tmp_path, caplog):
    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[-10] ^= 0xFF  # inside the values' bytes: the file still parses
        data[-11] ^= 0x01
        path.write_bytes(bytes(data))

    corrupt_case(tmp_path, flip, caplog)
    assert "checksum" in caplog.text


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_a_truncated_file_is_a_counted_miss(tmp_path, caplog, keep):
    def truncate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[:keep] if keep >= 0 else data[:keep])

    corrupt_case(tmp_path, truncate, caplog)


def test_a_file_naming_another_model_is_a_miss(tmp_path, caplog):
    ChunkKVStore(10**6, tmp_path).put("other-model", ids(6), make_kv(6))
    os.replace(path_of(tmp_path, "other-model", ids(6)), path_of(tmp_path, MODEL, ids(6)))
    store = ChunkKVStore(10**6, tmp_path)
    with caplog.at_level(logging.WARNING, logger="deltamem.memory.chunk_kv"):
        assert store.get(MODEL, ids(6)) is None
    assert store.corrupt == 1 and "other-model" in caplog.text and files(tmp_path) == []


def test_another_format_version_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setattr(chunk_kv, "FORMAT_VERSION", 0)
    ChunkKVStore(10**6, tmp_path).put(MODEL, ids(3), make_kv(3))
    monkeypatch.undo()
    store = ChunkKVStore(10**6, tmp_path)
    assert store.get(MODEL, ids(3)) is None and store.corrupt == 1 and files(tmp_path) == []


def test_a_file_deleted_by_another_process_is_a_plain_miss(tmp_path):
    store = ChunkKVStore(memory_bytes=0, disk_dir=tmp_path)
    store.put(MODEL, ids(4), make_kv(4))
    path_of(tmp_path, MODEL, ids(4)).unlink()
    assert store.get(MODEL, ids(4)) is None and (store.misses, store.corrupt) == (1, 0)


def test_a_disk_dir_that_is_a_file_means_memory_only(tmp_path, caplog):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with caplog.at_level(logging.WARNING, logger="deltamem.memory.chunk_kv"):
        store = ChunkKVStore(10**6, not_a_dir)  # does not raise
        store.put(MODEL, ids(3), make_kv(3))
    assert not store.disk_enabled and same(store.get(MODEL, ids(3)), make_kv(3))
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1 and str(not_a_dir) in caplog.text


@pytest.mark.parametrize(
    "where, code",
    [("fsync", errno.ENOSPC), ("replace", errno.EROFS), ("mkstemp", errno.EACCES)],  # chmod does not stop root
)
def test_a_disk_that_cannot_be_written_degrades_to_memory_with_one_warning(tmp_path, caplog, monkeypatch, where, code):
    store = ChunkKVStore(10**6, tmp_path)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(chunk_kv.tempfile if where == "mkstemp" else chunk_kv.os, where, fail)
    with caplog.at_level(logging.WARNING, logger="deltamem.memory.chunk_kv"):
        for i in range(3):
            store.put(MODEL, ids(3, start=i * 10), make_kv(3, seed=i))  # never raises
    assert not store.disk_enabled and store.stats()["disk_enabled"] is False
    assert len(caplog.records) == 1 and os.strerror(code) in caplog.text and str(tmp_path) in caplog.text
    assert os.listdir(tmp_path) == []  # no temp file left behind
    assert all(same(store.get(MODEL, ids(3, start=i * 10)), make_kv(3, seed=i)) for i in range(3))


def test_concurrent_writers_and_readers_never_see_half_a_file(tmp_path):
    writers = [ChunkKVStore(0, tmp_path) for _ in range(2)]
    reader = ChunkKVStore(0, tmp_path)  # memory_bytes=0: every get reads the file
    versions = [make_kv(64, seed=s, position=s) for s in range(4)]
    stop = threading.Event()
    seen: list[ChunkKV] = []

    def write(store: ChunkKVStore, offset: int) -> None:
        for i in range(30):
            store.put(MODEL, ids(64), versions[(i + offset) % len(versions)])

    def read() -> None:
        while not stop.is_set():
            kv = reader.get(MODEL, ids(64))
            if kv is not None:
                seen.append(kv)

    threads = [threading.Thread(target=read)] + [
        threading.Thread(target=write, args=(store, k)) for k, store in enumerate(writers)
    ]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert reader.corrupt == 0 and seen
    assert all(any(same(kv, v) for v in versions) for kv in seen)
    assert len(files(tmp_path)) == 1 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_two_stores_sharing_a_dir_see_each_others_puts(tmp_path):
    first, second = ChunkKVStore(10**6, tmp_path), ChunkKVStore(10**6, tmp_path)
    first.put(MODEL, ids(4), make_kv(4, 1))
    second.put(MODEL, ids(5), make_kv(5, 2))
    assert same(second.get(MODEL, ids(4)), make_kv(4, 1)) and second.disk_hits == 1
    assert same(first.get(MODEL, ids(5)), make_kv(5, 2)) and first.disk_hits == 1


def test_put_validates_the_kv():
    store = ChunkKVStore(10**6)
    kv = make_kv(4)
    with pytest.raises(ValueError, match="covers 4 tokens but 3"):
        store.put(MODEL, ids(3), kv)
    with pytest.raises(ValueError, match="values have shape"):
        store.put(MODEL, ids(4), ChunkKV(0, kv.keys, kv.values[:, :, :3]))
    with pytest.raises(ValueError, match="4-D"):
        store.put(MODEL, ids(4), ChunkKV(0, kv.keys[0], kv.values[0]))
    with pytest.raises(ValueError, match="position"):
        store.put(MODEL, ids(4), ChunkKV(-1, kv.keys, kv.values))
    with pytest.raises(ValueError, match="float64"):
        store.put(MODEL, ids(4), ChunkKV(0, kv.keys, kv.values.double()))
    with pytest.raises(ValueError, match="memory_bytes"):
        ChunkKVStore(-1)
    assert len(store) == 0


def test_shared_storage_views_round_trip_through_disk(tmp_path):
    both = torch.randn(2, LAYERS, HEADS, 7, DIM)  # keys and values as views of one tensor
    kv = ChunkKV(3, both[0], both[1])
    ChunkKVStore(10**6, tmp_path).put(MODEL, ids(7), kv)
    assert same(ChunkKVStore(10**6, tmp_path).get(MODEL, ids(7)), kv)


KEYS = st.integers(0, 4)
STEP = st.tuples(st.sampled_from(["put", "get"]), KEYS)  # key k: tokens k*1000 .. k*1000+k, so k+1 tokens


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=1, max_size=20), budget=st.integers(0, 12))
def test_any_puts_and_gets_keep_the_budget_and_return_the_last_put(tmp_path_factory, steps, budget):
    memory_only = ChunkKVStore(memory_bytes=budget * BYTES_PER_TOKEN)
    with_disk = ChunkKVStore(memory_bytes=budget * BYTES_PER_TOKEN, disk_dir=tmp_path_factory.mktemp("kv"))
    last: dict[int, ChunkKV] = {}
    for i, (op, key) in enumerate(steps):
        token_ids = ids(key + 1, start=key * 1000)  # each key has its own tokens and length
        if op == "put":
            kv = make_kv(key + 1, seed=i, position=i)
            last[key] = kv
            memory_only.put(MODEL, token_ids, kv)
            with_disk.put(MODEL, token_ids, kv)
        else:
            got = memory_only.get(MODEL, token_ids)
            assert got is None or got is last.get(key)
            if key not in last:
                assert got is None
            from_disk = with_disk.get(MODEL, token_ids)
            assert (from_disk is None) if key not in last else same(from_disk, last[key])
        for store in (memory_only, with_disk):
            assert store.memory_num_bytes <= store.memory_bytes
            assert store.memory_num_bytes == sum(e.num_bytes for e in store._entries.values())
