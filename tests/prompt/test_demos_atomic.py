"""DemonstrationStore writes are all or nothing in memory and on disk; bad numbers and
damaged or foreign database files are refused with our error type."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from edgeweave.errors import ConfigError, EdgeweaveError
from edgeweave.prompt.demos import DemonstrationStore, StoreConfig, StoreError
from edgeweave.prompt.policies import eviction_policies

DIM = 8
CFG = StoreConfig(dim=DIM, max_entries=3, max_bytes=1 << 20)


def snapshot(store: DemonstrationStore) -> dict:
    """Everything a caller can observe, keyed by id (slot order is an implementation detail)."""
    return {"ids": sorted(store.ids()), "n": len(store), "bytes": store.nbytes,
            "evicted": store.evicted,
            "rows": {i: (store.get(i).input, store.get(i).output, store.get(i).label,
                         store.get(i).embedding.tobytes()) for i in store.ids()}}


def on_disk(path: Path) -> list[int]:
    db = sqlite3.connect(str(path))
    try:
        return [r[0] for r in db.execute("SELECT id FROM demos ORDER BY id")]
    finally:
        db.close()


@pytest.fixture
def full(tmp_path: Path) -> tuple[DemonstrationStore, Path]:
    """A persistent store at its cap of 3 entries (ids 1, 2, 3): any insert evicts."""
    path = tmp_path / "demos.sqlite"
    store = DemonstrationStore(CFG, path)
    rng = np.random.default_rng(0)
    store.add_many((f"in{i}", f"out{i}", rng.normal(size=DIM), str(i % 2)) for i in range(3))
    return store, path


def test_a_bad_second_item_changes_nothing_anywhere(full) -> None:
    store, path = full
    before = snapshot(store)
    rng = np.random.default_rng(1)
    with pytest.raises(ConfigError, match="dims"):
        store.add_many([("ok", "o", rng.normal(size=DIM), None), ("bad", "o", np.ones(DIM + 1), None)])
    assert snapshot(store) == before  # memory: still [1, 2, 3], nothing evicted
    assert on_disk(path) == [1, 2, 3]
    store.close()
    assert snapshot(DemonstrationStore(CFG, path))["rows"] == before["rows"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_and_queries_are_refused(full, bad) -> None:
    store, path = full
    before = snapshot(store)
    vec = np.ones(DIM)
    vec[3] = bad
    with pytest.raises(ConfigError, match="NaN or infinite") as e:
        store.add_many([("fine", "o", np.ones(DIM), None), ("broken", "o", vec, None)])
    assert isinstance(e.value, EdgeweaveError) and "embedding model" in str(e.value)
    assert snapshot(store) == before and on_disk(path) == [1, 2, 3]
    with pytest.raises(ConfigError, match="NaN or infinite"):
        store.select(vec, 2)
    with pytest.raises(ConfigError, match="dims"):
        store.select(np.ones(DIM + 2), 2)
    assert len(store.select(np.ones(DIM), 2)) == 2


def test_items_that_are_not_demonstrations_are_refused(full) -> None:
    store, _ = full
    before = snapshot(store)
    for items in ([("a", "b", np.ones(DIM))], [("a", None, np.ones(DIM), None)],
                  [("a", "b", "not numbers", None)]):
        with pytest.raises(ConfigError):
            store.add_many(items)
    assert snapshot(store) == before


def test_a_write_the_database_refuses_leaves_memory_as_it_was(full) -> None:
    """Another writer took the next id on disk: the insert (and the evictions it made in
    memory, three of them here) must all be undone, and the error is ours."""
    store, path = full
    q = np.random.default_rng(9).normal(size=DIM)
    chosen = [s.demo.id for s in store.select(q, 3)]
    before = snapshot(store)
    other = sqlite3.connect(str(path))
    with other:
        other.execute("INSERT INTO demos VALUES (4, 'theirs', 'o', NULL, ?, 0.0, 99, 100)",
                      (np.ones(DIM, dtype=np.float32).tobytes(),))
    rng = np.random.default_rng(2)
    batch = [(f"new{i}", "o", rng.normal(size=DIM), None) for i in range(3)]
    with pytest.raises(StoreError, match="refused a write"):
        store.add_many(batch)
    assert snapshot(store) == before
    assert on_disk(path) == [1, 2, 3, 4]
    assert [s.demo.id for s in store.select(q, 3)] == chosen  # kNN sees the same rows
    # once the conflict is gone the same batch goes in, and memory matches disk again
    with other:
        other.execute("DELETE FROM demos WHERE id=4")
    other.close()
    ids = store.add_many(batch)
    assert sorted(store.ids()) == ids == on_disk(path)


def test_a_refused_delete_keeps_the_row(full) -> None:
    store, path = full
    other = sqlite3.connect(str(path))
    with other:
        other.execute("CREATE TRIGGER keep BEFORE DELETE ON demos BEGIN SELECT RAISE(ABORT, 'kept'); END")
    other.close()
    with pytest.raises(StoreError, match="kept"):
        store.remove(2)
    assert sorted(store.ids()) == on_disk(path) == [1, 2, 3]


def test_random_bytes_are_refused_and_left_alone(tmp_path) -> None:
    path = tmp_path / "demos.sqlite"
    junk = np.random.default_rng(3).bytes(8192)
    path.write_bytes(junk)
    with pytest.raises(StoreError, match="not a demonstration store") as e:
        DemonstrationStore(CFG, path)
    assert "move it aside" in str(e.value)
    assert path.read_bytes() == junk


@pytest.mark.parametrize("schema", [
    "CREATE TABLE users (name TEXT, email TEXT)",  # someone else's database
    "CREATE TABLE demos (a TEXT, b TEXT); CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
])
def test_a_foreign_schema_is_refused_and_left_alone(tmp_path, schema) -> None:
    path = tmp_path / "demos.sqlite"
    db = sqlite3.connect(str(path))
    db.executescript(schema)
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a demonstration store"):
        DemonstrationStore(CFG, path)
    assert path.read_bytes() == before  # no tables added, journal mode unchanged


@pytest.mark.parametrize("tamper,needle", [
    ("UPDATE demos SET emb = x'00112233' WHERE id = 2", "4-byte embedding"),
    ("UPDATE demos SET emb = ? WHERE id = 2", "NaN or infinite"),
    ("UPDATE demos SET last_used = 'yesterday' WHERE id = 2", "wrong types"),
    ("UPDATE meta SET value = 'not json' WHERE key = 'config'", "not a demonstration store"),
    ("UPDATE meta SET value = 'soon' WHERE key = 'clock'", "not a demonstration store"),
])
def test_tampered_rows_are_refused(full, tamper, needle) -> None:
    store, path = full
    store.close()
    db = sqlite3.connect(str(path))
    with db:
        args = (np.full(DIM, np.nan, dtype=np.float32).tobytes(),) if "?" in tamper else ()
        db.execute(tamper, args)
    db.close()
    with pytest.raises(StoreError, match=needle):
        DemonstrationStore(CFG, path)


@pytest.mark.parametrize("policy", eviction_policies())
def test_memory_matches_disk_through_a_stream_of_refused_and_accepted_writes(tmp_path, policy) -> None:
    """Random batches, some of which the database refuses (a trigger rejects inputs named
    'fail...'), with selections, feedback and removals in between: after every step the store
    in memory holds exactly what a fresh store reads back from the file."""
    path = tmp_path / "demos.sqlite"
    cfg = StoreConfig(dim=DIM, max_entries=5, max_bytes=700, eviction=policy)
    store = DemonstrationStore(cfg, path)
    db = sqlite3.connect(str(path))
    with db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON demos WHEN NEW.input LIKE 'fail%' "
                   "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    db.close()
    rng = np.random.default_rng(4)
    refused = 0
    for step in range(150):
        batch = [(("fail" if rng.random() < 0.15 else "ok") + f"{step}-{i}", "o" * int(rng.integers(1, 60)),
                  rng.normal(size=DIM), str(i % 2)) for i in range(int(rng.integers(1, 5)))]
        try:
            store.add_many(batch)
        except StoreError:
            refused += 1
        if store.ids() and rng.random() < 0.3:
            store.feedback([int(rng.choice(store.ids()))], float(rng.random()))
        if len(store) > 1 and rng.random() < 0.1:
            store.remove(int(rng.choice(store.ids())))
        store.select(rng.normal(size=DIM), 2)
        again = DemonstrationStore(cfg, path)
        mine, disk = snapshot(store), snapshot(again)
        again.close()
        assert (mine["ids"], mine["rows"], mine["bytes"]) == (disk["ids"], disk["rows"], disk["bytes"]), step
    assert refused > 10  # the undo path ran many times
