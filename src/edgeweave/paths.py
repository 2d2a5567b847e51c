"""Where edgeweave keeps its caches, and atomic writes so a crash never leaves half a file.

Writers never touch the final name until their output is complete: files and folders are
written under a hidden sibling (``.NAME.<pid>-<start>.<random>.partial`` / ``.tmp``) and
renamed into place. The owner's PID and process start time are in that name, so the next
writer of the same NAME can tell a leftover of a killed process (removed, with a warning) from
the work of one still running (left alone), even after the PID was reused.

Cache entries that several processes may build at once (a converted model, a compressed
variant) go through :func:`build_once`: an ``flock`` on ``NAME.lock`` beside the entry makes
the first process build it while the others wait and then reuse it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def home() -> Path:
    """``$EDGEWEAVE_HOME`` or ``~/.cache/edgeweave``, created on first use."""
    p = Path(os.environ.get("EDGEWEAVE_HOME") or Path.home() / ".cache" / "edgeweave")
    p.mkdir(parents=True, exist_ok=True)
    return p


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (weights can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# ---- owners of partial writes ---------------------------------------------------------------
# ``.NAME.<pid>-<start>.<random>.partial|tmp``; start is the process start time in 1/100 s
# since the epoch (psutil's create_time, which has jiffy resolution on Linux).
_OWNED = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<start>\d+)\.[^.]+\.(?P<kind>partial|tmp)$")
# What tempfile made before owners were recorded: ``.NAME.<8 random chars>.partial|tmp``.
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<kind>partial|tmp)$")


def _start_time(pid: int) -> int | None:
    import psutil  # lazy: `import edgeweave` stays light

    try:
        return round(psutil.Process(pid).create_time() * 100)
    except psutil.Error:
        return None


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}"


def _owner_alive(pid: int, start: int) -> bool:
    import psutil

    if start == 0:  # the owner could not read its own start time: trust the PID alone
        return psutil.pid_exists(pid)
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped: it writes no more
            return False
        # a different start time means the PID was reused by an unrelated process
        return abs(round(p.create_time() * 100) - start) <= 1
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's live process: not ours to judge
        return True


def _walk(path: Path) -> Iterator[os.stat_result]:
    """Stats of ``path`` and, for a folder, of everything in it; entries that vanish meanwhile
    (another sweeper removing the same leftover) are skipped."""
    with contextlib.suppress(OSError):
        yield path.stat()
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    yield os.stat(os.path.join(root, name))


def _size(path: Path) -> int:
    return sum(st.st_size for st in _walk(path) if stat.S_ISREG(st.st_mode))


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep_partials(final: str | os.PathLike[str]) -> list[Path]:
    """Remove what interrupted writes of ``final`` left beside it, if their writer is gone.

    Only leftovers of this exact NAME are considered. One whose owner (PID + start time in
    its name) is still running is left alone; one from before owners were recorded is removed
    only if it was last written before this boot (otherwise nothing can tell it from a live
    write). Each removal is logged as a warning with its size. Returns what was removed.
    """
    final = Path(final)
    try:
        siblings = [p for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.")]
    except FileNotFoundError:
        return []
    removed = []
    for p in siblings:
        m = _OWNED.match(p.name)
        if m and m["name"] == final.name:
            pid, start = int(m["pid"]), int(m["start"])
            if _owner_alive(pid, start):
                continue
            why = f"process {pid} that was writing it is gone"
        else:
            m = _LEGACY.match(p.name)
            if not (m and m["name"] == final.name):
                continue
            import psutil

            if max((st.st_mtime for st in _walk(p)), default=0.0) >= psutil.boot_time():
                log.warning("%s looks like an interrupted write of %s (%s) but records no owner: "
                            "delete it if no edgeweave process is writing %s", p, final,
                            _human(_size(p)), final.name)
                continue
            why = "it was written before the last reboot"
        size = _size(p)
        _remove(p)
        if not p.exists():
            log.warning("removed %s (%s), left by an interrupted write of %s: %s", p, _human(size),
                        final, why)
            removed.append(p)
    return removed


# ---- atomic files and folders ----------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final`` while other processes may create, replace or delete it.

    A folder cannot be renamed over a non-empty one, so an existing ``final`` is first renamed
    aside (one atomic step: either we moved it or someone else already did) and removed after.
    Readers see the old folder, nothing, or the new one; never a mixture.
    """
    aside: list[Path] = []
    try:
        for _ in range(100):  # each retry means another writer landed in between; 100 is plenty
            try:
                os.replace(tmp, final)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
            old = final.parent / f".{final.name}.{_owner_tag()}.{secrets.token_hex(4)}.partial"
            try:
                os.rename(final, old)
                aside.append(old)
            except FileNotFoundError:
                pass  # another writer moved it first: try our rename again
        raise OSError(errno.EBUSY, f"could not replace {final}: other processes keep writing it")
    finally:
        for old in aside:
            _remove(old)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` in one rename,
    on any failure it is removed, so readers see either nothing or a complete folder.

    Leftovers of killed writers of the same ``final`` are swept first (:func:`sweep_partials`).
    Concurrent writers do not crash each other, the last one wins; to build an entry only
    once, wrap the check and the write in :func:`build_once` (or :func:`entry_lock`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{_owner_tag()}.", suffix=".partial",
                                dir=final.parent))
    try:
        yield tmp
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- one builder per cache entry ---------------------------------------------------------------
class _Held:
    """The flock of one entry in this process: re-entrant per thread (an flock taken twice by
    one process on two descriptors would deadlock), exclusive between threads and processes."""

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.fd = -1
        self.depth = 0


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def lock_path(final: str | os.PathLike[str]) -> Path:
    final = Path(final)
    return final.parent / f"{final.name}.lock"


@contextlib.contextmanager
def entry_lock(final: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock of the cache entry ``final`` (an ``flock`` on ``NAME.lock``).

    The kernel drops the lock when its holder dies, so a killed builder never blocks the
    next one. The lock file stays: deleting it would let two processes lock two different
    files of the same name.
    """
    path = lock_path(final)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _held_guard:
        held = _held.setdefault(key, _Held())
    with held.rlock:
        if held.depth == 0:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    log.info("waiting for process %s, which is writing %s", holder, final)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above
            except BaseException:
                os.close(fd)
                raise
            held.fd = fd
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                os.close(held.fd)  # releases the flock
                held.fd = -1


def build_once(final: str | os.PathLike[str], ready: Callable[[Path], bool],
               build: Callable[[Path], object]) -> bool:
    """Make sure the cache entry ``final`` exists, building it at most once across processes.

    ``ready(final)`` says whether a complete, usable entry is there; ``build(final)`` writes
    one (atomically, e.g. through :func:`atomic_dir`). The first process to find it missing
    builds it under :func:`entry_lock`; the others wait, see it ready and reuse it. Stale
    leftovers of killed builders are swept either way. Returns whether this call built it.
    """
    final = Path(final)
    if ready(final):
        sweep_partials(final)
        return False
    with entry_lock(final):
        if ready(final):  # built by another process while we waited
            sweep_partials(final)
            return False
        log.info("building %s", final)
        build(final)
        return True
