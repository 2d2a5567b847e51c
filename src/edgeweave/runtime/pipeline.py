"""Pipelined prefill: chunks of a prompt flow through the stages at the same time.

Sequentially, stage 1 waits for stage 0 to finish the whole prompt, so a prompt's first token
costs the sum of every stage's prefill. Cut into chunks, stage ``i`` runs chunk ``c`` as soon
as stage ``i - 1`` produced chunk ``c``'s hidden states and stage ``i`` itself finished chunk
``c - 1`` (its cache must hold the earlier positions), so with ``k`` chunks over ``S`` stages
of equal cost the step takes about ``(k + S - 1) / k`` of one stage's share instead of ``S``
shares: one thread per stage, each keeping one request in flight to its node.

Safe where the calls really run apart: every stage reaches its own node process over a link
that many threads may call at once (``Link.parallel``: the gRPC link matches answers to
requests by sequence number). Two stages of one node still work, their requests are answered
in order on the node's one stream. In-process stages (``embedded``) are not pipelined: they
share this process's cores through the engines' own intra-op threads, so there is no idle
core to fill, and their engines share one model whose lazily built buffers were never meant
for concurrent forwards.

Replay stays exact: each stage's records get exactly the chunks it received, in order, and
nothing (records, length) is committed until every chunk passed the last stage; a failed step
is truncated away on every stage that saw part of it (the coordinator's retry then finds the
step never taken). Only the last chunk's logits are returned (the last stage answers each
chunk with the logits of its last position).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgeweave.runtime import codec as codecs
from edgeweave.runtime.payload import Payload, x_tokens
from edgeweave.runtime.transport.base import NodeError, StageUnavailable
from edgeweave.runtime.transport.frame import ErrorCode

if TYPE_CHECKING:
    from edgeweave.runtime.coordinator import Coordinator
    from edgeweave.runtime.planstate import PlanView
    from edgeweave.runtime.session import Session

# Tokens per chunk (``Coordinator.pipeline_chunk``; 0 turns pipelining off). 512 tokens over
# 3 stages make 8 chunks: (8 + 2) / 8 of a stage's share, 0.42x of sequential on 3 free cores,
# while a 64-row matmul still runs near its full-prompt speed per token.
PIPELINE_CHUNK = 64


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """``n`` prompt tokens cut into the fewest near-equal pieces of at most ``chunk`` (equal
    pieces keep the stages in step). No piece is a single token: a one-token step takes the
    low-bit kernels' single-row path, which rounds unlike prefill (``sequence.next_input``),
    so ``chunk`` < 2 or ``n`` < 4 give one piece."""
    if chunk < 2 or n <= chunk:
        return [n]
    k = min(-(-n // chunk), n // 2)
    base, extra = divmod(n, k)
    return [base + 1] * extra + [base] * (k - extra)


def pipelines(coord: Coordinator, view: PlanView, tokens: int) -> bool:
    """Whether a step of ``tokens`` runs pipelined on ``view``: two stages or more on two
    nodes or more, all over links whose calls run apart, and more than one chunk."""
    stages = view.plan.stages
    if len(stages) < 2 or len(chunk_sizes(tokens, coord.pipeline_chunk)) < 2:
        return False
    if len({st.device for st in stages}) < 2:
        return False  # one node answers one stream in order: nothing would overlap
    return all(coord.link(st.device).parallel for st in stages)


@dataclass(frozen=True)
class Hop:
    """One chunk through one stage: its output and the frames' sizes on the wire."""

    out: Payload
    sent: int
    received: int


def split_ids(x: Payload, sizes: list[int]) -> list[Payload]:
    """A (1, T) ids payload cut along the token axis into pieces of ``sizes``."""
    ids = codecs.get(x.codec).decode(x.data, x.shape)
    cuts = np.cumsum(sizes)[:-1]
    return [Payload(codecs.IDS.id, (1, part.shape[1]), codecs.IDS.encode(part))
            for part in np.split(ids, cuts, axis=1)]


def forward_pipelined(s: Session, view: PlanView, x: Payload) -> Payload:
    """``Session._forward_all`` for a long step: ``x`` (prompt ids) through every stage in
    chunks, the stages working at once; returns the last stage's output for the last chunk.
    Runs under ``Coordinator.run`` (its read lock, failover and retry), like the step it
    replaces."""
    chunks = split_ids(x, chunk_sizes(x_tokens(x), s.coord.pipeline_chunk))
    run = _Run(s, view, chunks)
    threads = [threading.Thread(target=run.stage, args=(i,), name=f"prefill-stage-{i}",
                                daemon=True) for i in range(len(view.keys))]
    for t in threads:
        t.start()
    for t in threads:  # each ends: its calls have deadlines, its queue gets a sentinel
        t.join()
    return run.finish()


class _Run:
    """One pipelined step: per-stage input queues, what each stage received, the first
    errors. Worker threads touch only their own stage's slots; the session's state changes
    in :meth:`finish`, on the calling thread, after every worker ended."""

    def __init__(self, s: Session, view: PlanView, chunks: list[Payload]) -> None:
        self.s, self.view, self.chunks = s, view, chunks
        n = len(view.keys)
        self.queues: list[queue.SimpleQueue[Payload | None]] = [queue.SimpleQueue()
                                                                 for _ in range(n + 1)]
        for c in chunks:
            self.queues[0].put(c)
        self.received: list[list[Payload]] = [[] for _ in range(n)]
        self.hops: list[list[Hop]] = [[] for _ in range(n)]
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.restoring = threading.Lock()  # a restore updates the session's counters

    def stage(self, i: int) -> None:
        pos = self.s.length
        done = False
        try:
            for _ in self.chunks:
                x = self.queues[i].get()
                if x is None or self.stop.is_set():
                    return
                self.received[i].append(x)
                hop = self._hop(i, x, pos)
                self.hops[i].append(hop)
                pos += x_tokens(x)
                self.queues[i + 1].put(hop.out)
            done = True
        except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
            self.errors.append(e)
            self.stop.set()
        finally:
            if not done:
                self.queues[i + 1].put(None)  # the next stage stops waiting

    def _hop(self, i: int, x: Payload, pos: int) -> Hop:
        try:
            return _call(self.s, self.view, i, x, pos)
        except NodeError as e:
            if e.code != ErrorCode.SESSION_MISSING:
                raise
        # evicted under memory pressure: replay what the stage held (the committed records,
        # then this step's earlier chunks), then retry the chunk
        s, plan, key = self.s, self.view.plan, self.view.keys[i]
        with self.restoring:
            s._restore(plan, i, key)
        at = s.length
        for earlier in self.received[i][:-1]:
            _call(s, self.view, i, earlier, at)
            at += x_tokens(earlier)
        return _call(s, self.view, i, x, pos)

    def finish(self) -> Payload:
        s = self.s
        c = s.counters
        for i, hops in enumerate(self.hops):
            for h in hops:
                c.bytes_sent += h.sent
                c.bytes_received += h.received
                if i < len(self.hops) - 1:
                    c.hidden_bytes += len(h.out.data)
        if self.errors:
            touched = sum(1 for r in self.received if r)  # a prefix of the stages
            s._drop_step(self.view, touched)
            unavailable = [e for e in self.errors if isinstance(e, StageUnavailable)]
            raise (unavailable or self.errors)[0]  # a dead node first: that one fails over
        for rec, inp in zip(s.records, self.received, strict=True):
            rec.extend(inp)
        s.length += sum(x_tokens(x) for x in self.chunks)
        return self.hops[-1][-1].out


def _call(s: Session, view: PlanView, i: int, x: Payload, pos: int) -> Hop:
    """One FORWARD of ``x`` at position ``pos`` to stage ``i`` (``Session._forward`` without
    its side effects, which a worker thread must not have)."""
    req, timeout = s.request(view.plan, i, view.keys[i], x, pos)
    resp = s.coord.call(view.plan.stages[i].device, req, timeout)
    return Hop(Payload(resp.codec, resp.shape, resp.payload), req.wire_size, resp.wire_size)
