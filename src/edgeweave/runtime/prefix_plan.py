"""The prefix cache of a distributed plan: donors on every stage, indexed by the coordinator.

A donor of a plan is one id with a cache at every stage (SAVE_PREFIX to each; the nodes
count it against their memory caps and evict donors first). The coordinator's
:class:`~edgeweave.runtime.prefix.PrefixIndex` maps prompts to donors and keeps, beside
each, the inputs every stage received for the donor's tokens (the session's records, cut
at its length): a session filled from a donor (LOAD_PREFIX at every stage) inherits them,
so replay after a failover or an eviction rebuilds its stages just as for a session that
computed its prompt itself.

Donors belong to one plan generation: a plan change drops them all (their stages moved or
their nodes are gone). A node that evicted a donor answers LOAD_PREFIX with
SESSION_MISSING; the donor leaves the index and the session prefills in full. Saving is
best effort: a node without room refuses it, and the request goes on unaffected.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgeweave.errors import EdgeweaveError
from edgeweave.runtime.payload import Payload, cut_records
from edgeweave.runtime.prefix import BLOCK_TOKENS, PrefixIndex, PrefixUsage, donor_id
from edgeweave.runtime.transport.frame import Frame, Op

if TYPE_CHECKING:
    from edgeweave.runtime.coordinator import Coordinator
    from edgeweave.runtime.planstate import PlanView
    from edgeweave.runtime.session import Session
    from edgeweave.types import Plan

log = logging.getLogger(__name__)


class _Stale(Exception):
    """The plan changed between the lookup and the copy: the donor is gone with it."""


class PlanPrefixes:
    """Prefix donors across the stages of ``coord``'s plan (see module docstring)."""

    def __init__(self, coord: Coordinator, budget_bytes: int,
                 block_tokens: int = BLOCK_TOKENS) -> None:
        self.coord = coord
        self.index = PrefixIndex(budget_bytes, block_tokens)
        self._lock = threading.Lock()

    def usage(self) -> PrefixUsage:
        with self._lock:
            return self.index.usage()

    # -- what sessions call ----------------------------------------------------------------
    def reuse(self, session: Session, ids: Sequence[int]) -> int:
        """Open ``session`` at every stage filled with the longest cached prefix of ``ids``;
        return its length (0: none, the session starts afresh)."""
        with self._lock:
            hit = self.index.lookup(ids, session.adapter or "")
            if hit is None:
                return 0
            generation, records = self.index.data(hit.donor)
        coord = self.coord
        spec = Frame.json_bytes({"prefix": hit.donor})

        def load(view: PlanView) -> None:
            if view.generation != generation:
                raise _Stale
            session._open_all(view)
            for st, key in zip(view.plan.stages, view.keys, strict=True):
                coord.call(st.device, Frame(Op.LOAD_PREFIX, key, session.id, arg=hit.length,
                                            payload=spec), coord.deadline_s)

        try:
            coord.run(load, session.counters)
        except (_Stale, EdgeweaveError) as e:  # evicted on a node, or its plan is gone
            log.info("prefix %s unusable (%s): prefilling in full", hit.donor, e)
            self.forget(hit.donor)
            return 0
        session.adopt_prefix(hit.length, [cut_records(r, hit.length) for r in records])
        with self._lock:
            self.index.hit(hit.length)
        return hit.length

    def keep(self, session: Session, ids: Sequence[int]) -> None:
        """``session`` holds exactly ``ids`` (a prompt just prefilled): keep it as a donor
        at every stage when it adds to what is cached and the nodes have room."""
        namespace = session.adapter or ""
        with self._lock:
            if session.length != len(ids) or not self.index.worth(ids, namespace):
                return
        coord = self.coord
        donor = donor_id()
        spec = Frame.json_bytes({"prefix": donor})

        def save(view: PlanView) -> tuple[int, int, list[list[Payload]]]:
            nbytes = 0
            for st, key in zip(view.plan.stages, view.keys, strict=True):
                resp = coord.call(st.device, Frame(Op.SAVE_PREFIX, key, session.id,
                                                   arg=len(ids), payload=spec),
                                  coord.deadline_s)
                nbytes += int((resp.json() or {}).get("bytes", 0))
            return view.generation, nbytes, [list(r) for r in session.records]

        try:
            generation, nbytes, records = coord.run(save)
        except EdgeweaveError as e:  # no room on a node, or it failed: nothing is cached
            log.info("prefix of %d tokens not kept (%s)", len(ids), e)
            self._close(donor)
            return
        with self._lock:
            if generation != coord.state.generation:
                freed = [donor]
            else:
                freed = self.index.insert(ids, donor, nbytes, namespace, (generation, records))
        for d in freed:
            self._close(d)

    # -- what the coordinator calls --------------------------------------------------------
    def forget(self, donor: str) -> None:
        with self._lock:
            self.index.remove(donor)
        self._close(donor)

    def drop_all(self, plan: Plan) -> None:
        """Free every donor on the nodes of ``plan`` (a plan change; call it under the
        coordinator's write lock, before the new plan is installed)."""
        with self._lock:
            donors = self.index.clear()
        devices = {st.device for st in plan.stages} - self.coord.failed
        for donor in donors:
            self._close_on(donor, devices)

    def _close(self, donor: str) -> None:
        with self.coord.state.reading() as view:
            self._close_on(donor, {st.device for st in view.plan.stages})

    def _close_on(self, donor: str, devices: set[str]) -> None:
        for dev in devices:  # CLOSE without a stage frees it at every stage of the node
            with contextlib.suppress(EdgeweaveError):  # a dead node holds nothing
                self.coord.call(dev, Frame(Op.CLOSE, session=donor), self.coord.deadline_s)
