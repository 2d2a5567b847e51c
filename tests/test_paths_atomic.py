"""paths.atomic_dir / atomic_write_bytes: leftovers of killed writers are swept (and only
those), and concurrent writers of one folder do not crash each other. Real processes, real
signals."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from edgeweave.paths import atomic_dir, atomic_write_bytes, entry_lock

# Enters atomic_dir, writes 3 MB, says where, then waits for a line on stdin before finishing.
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edgeweave.paths import atomic_dir
    with atomic_dir(Path(sys.argv[1])) as tmp:
        (tmp / "weights.bin").write_bytes(b"w" * 3_000_000)
        print(tmp, flush=True)
        sys.stdin.readline()
""")


def start_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "the writer did not start"
    return proc, Path(line)


def leftovers(target: Path) -> list[Path]:
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def test_a_killed_writers_partial_is_swept_by_the_next_write(tmp_path, caplog) -> None:
    target = tmp_path / "model"
    proc, partial = start_writer(target)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.is_dir() and (partial / "weights.bin").stat().st_size == 3_000_000
    with caplog.at_level(logging.WARNING, logger="edgeweave.paths"), atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"new")
    assert not partial.exists()
    assert leftovers(target) == []
    assert (target / "weights.bin").read_bytes() == b"new"
    said = " ".join(r.getMessage() for r in caplog.records)
    assert str(partial) in said and "3.0 MB" in said and "gone" in said


def test_a_live_writers_partial_is_left_alone(tmp_path) -> None:
    target = tmp_path / "model"
    proc, partial = start_writer(target)
    try:
        with atomic_dir(target) as tmp:  # a second writer of the same folder
            (tmp / "weights.bin").write_bytes(b"second")
        assert partial.is_dir() and (partial / "weights.bin").stat().st_size == 3_000_000
    finally:
        proc.communicate("go\n", timeout=30)
    assert proc.returncode == 0
    assert (target / "weights.bin").stat().st_size == 3_000_000  # the last writer wins
    assert leftovers(target) == []


def test_a_reused_pid_does_not_protect_a_leftover(tmp_path) -> None:
    """The owner is PID + start time: a live process with the same PID but another start
    time (the PID was reused) does not own it."""
    target = tmp_path / "model"
    stale = tmp_path / f".model.{os.getpid()}-1.abcd1234.partial"
    stale.mkdir()
    other = tmp_path / f".other.{os.getpid()}-1.abcd1234.partial"  # not this target's
    other.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "f").write_text("x")
    assert not stale.exists() and other.exists()


def test_leftovers_without_an_owner(tmp_path, caplog) -> None:
    """Written by versions that recorded no owner: removed when they predate this boot,
    otherwise kept (nothing tells them from a live write) with a warning naming them."""
    target = tmp_path / "model"
    old, recent = tmp_path / ".model.k3j_9x0q.partial", tmp_path / ".model.zz81mm0a.partial"
    for d in (old, recent):
        d.mkdir()
        (d / "w").write_bytes(b"w" * 10)
    for p in (old / "w", old):
        os.utime(p, (1_000_000, 1_000_000))  # 1970: before any boot
    with caplog.at_level(logging.WARNING, logger="edgeweave.paths"), atomic_dir(target):
        pass
    assert not old.exists() and recent.exists()
    assert any(str(recent) in r.getMessage() and "delete it" in r.getMessage() for r in caplog.records)


FILE_WRITER = textwrap.dedent("""
    import sys
    from edgeweave.paths import atomic_write_bytes
    data = b"x" * (24 << 20)
    print("go", flush=True)
    while True:
        atomic_write_bytes(sys.argv[1], data)
""")


def test_a_killed_file_writers_tmp_is_swept(tmp_path) -> None:
    target = tmp_path / "kd.pt"
    for _ in range(10):  # the kill lands inside write+fsync nearly always; retry if it did not
        proc = subprocess.Popen([sys.executable, "-c", FILE_WRITER, str(target)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = [p for p in leftovers(target) if p.suffix == ".tmp"]
        if left:
            break
    else:
        pytest.fail("no kill landed inside atomic_write_bytes in 10 tries")
    atomic_write_bytes(target, b"fresh")
    assert leftovers(target) == [] and target.read_bytes() == b"fresh"


RACER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edgeweave.paths import atomic_dir
    target, me = Path(sys.argv[1]), sys.argv[2]
    for i in range(40):
        with atomic_dir(target) as tmp:
            for name in ("a", "b", "c"):
                (tmp / name).write_text(f"{me}-{i}")
""")


def test_concurrent_writers_of_one_folder_all_succeed(tmp_path) -> None:
    """No lock here on purpose: atomic_dir's own replace must survive ``final`` appearing and
    disappearing under it (the FileNotFoundError seen with three ``models --load``)."""
    target = tmp_path / "entry"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(target), str(k)],
                              stderr=subprocess.PIPE, text=True) for k in range(4)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errs
    contents = {(target / n).read_text() for n in ("a", "b", "c")}
    assert len(contents) == 1  # one writer's complete folder, not a mixture
    assert leftovers(target) == []


def test_entry_lock_is_reentrant_in_a_thread_and_exclusive_between_threads(tmp_path) -> None:
    target = tmp_path / "entry"
    order: list[str] = []
    with entry_lock(target):
        with entry_lock(target):  # nested use by one thread must not deadlock
            order.append("nested")

        def other() -> None:
            with entry_lock(target):
                order.append("other")

        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(10)
    assert order == ["nested", "first done", "other"]
    assert (tmp_path / "entry.lock").is_file()
