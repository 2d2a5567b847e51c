"""What :func:`~edgeweave.runtime.launch.embedded`, ``attach`` and ``launch`` return.

One :class:`Deployment` whatever runs the stages: the coordinator that steps sessions
through them, the model's tokenizer (generation needs it; the coordinator never does), the
in-process :class:`~edgeweave.runtime.stage.StageHost` of each device when the stages run
embedded (tests and benchmarks read their memory accounting), and the node processes this
host started when it launched them. ``close()`` (or leaving a ``with`` block) stops all of
it; ``kill(device)`` SIGKILLs one launched node, which is what failover has to survive.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeweave.errors import ConfigError

if TYPE_CHECKING:
    from edgeweave.models.tokenizer import Tokenizer
    from edgeweave.runtime.coordinator import Coordinator
    from edgeweave.runtime.stage import StageHost


@dataclass(frozen=True)
class Deployment:
    """A coordinator over its stages, with what it takes to generate text and to stop them.

    ``hosts`` is the coordinator's own table (a device joins it when a plan first puts a
    stage there), empty when the stages run on nodes; ``addresses`` is where each node
    listens (the coordinator's table, so ``add_device`` extends it), empty when embedded;
    ``processes`` and ``logs`` are the nodes ``launch`` started on this host and their
    stderr, empty otherwise. ``tokenizer`` is None only where the caller asked for none.
    """

    coordinator: Coordinator
    tokenizer: Tokenizer | None
    hosts: Mapping[str, StageHost] = field(default_factory=dict)
    addresses: Mapping[str, str] = field(default_factory=dict)
    processes: Mapping[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: Mapping[str, Path] = field(default_factory=dict)

    def kill(self, device: str) -> None:
        """SIGKILL the node ``launch`` started for ``device`` (what failover has to survive)."""
        proc = self.processes.get(device)
        if proc is None:
            started = ", ".join(sorted(self.processes)) or "none"
            raise ConfigError(f"{device!r} is not a node this deployment started (started: "
                              f"{started}): kill() is for nodes from launch(); stop a node "
                              "you started yourself through its own process")
        proc.kill()
        proc.wait(10)

    def close(self) -> None:
        """Close the coordinator's sessions and links, then stop the launched nodes."""
        try:
            self.coordinator.close()
        finally:
            stop_processes(self.processes.values())

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_processes(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process (a node says goodbye on the control plane), SIGKILL any that
    is still running 10 s later."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        if p.stdout is not None:
            p.stdout.close()
