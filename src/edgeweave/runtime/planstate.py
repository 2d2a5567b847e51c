"""The plan a coordinator runs on, owned by one object: plan, stage keys, generation, lock.

Sessions step under the read lock (many at once); a plan change (failover, ``apply_plan``)
takes the write lock alone and installs the new plan with :meth:`PlanState.install`, which
advances the integer ``generation``. A step that waited for the lock while the plan changed
sees a newer generation than the one it started from and runs again on the new plan; a step
never reads statistics to decide that (counters are reports, not control state).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from edgeweave.types import Plan


class RWLock:
    """Many session steps at once, or one plan change alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._writer = True
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass(frozen=True)
class PlanView:
    """One generation of the plan: the stages and their keys on the nodes, as a step sees
    them for its whole duration (under the read lock)."""

    plan: Plan
    keys: tuple[str, ...]
    generation: int


class PlanState:
    """The current :class:`PlanView` and the lock that guards it."""

    def __init__(self, plan: Plan, keys: list[str] | tuple[str, ...]) -> None:
        self._lock = RWLock()
        self._view = PlanView(plan, tuple(keys), 0)

    @property
    def view(self) -> PlanView:
        return self._view

    @property
    def generation(self) -> int:
        return self._view.generation

    @contextmanager
    def reading(self) -> Iterator[PlanView]:
        """Hold the plan still (shared with other steps) and yield it."""
        with self._lock.read():
            yield self._view

    @contextmanager
    def changing(self) -> Iterator[PlanView]:
        """Hold the plan alone (no step runs) to change it; yields the current one."""
        with self._lock.write():
            yield self._view

    def install(self, plan: Plan, keys: list[str] | tuple[str, ...]) -> PlanView:
        """Make ``plan`` current (call inside :meth:`changing`); the generation advances."""
        self._view = PlanView(plan, tuple(keys), self._view.generation + 1)
        return self._view
