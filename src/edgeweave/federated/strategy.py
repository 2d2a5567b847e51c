"""``HeteroLoRA``: a Flower (Message API) strategy for clients that differ in memory.

Each round it asks new nodes for their profile (a ``query`` message), maps memory to a
:class:`~edgeweave.federated.hetero.Tier`, and sends every client only its share of the
global adapter: the first ``rank`` components of the blocks in its rolling window. Replies
are aggregated by a pure function of :mod:`edgeweave.federated.aggregate` (FedAvg,
zero-pad/truncate or SVD redistribution), optionally followed by a server optimizer
(FedAdam, FedAvgM, or FedExP's extrapolation). FedProx is the client-side proximal term,
sent as ``proximal-mu``.
Per-round records (bytes each way, per-client metrics, time) are kept in ``history``.

``HeteroLoRA`` subclasses Flower's ``Strategy`` as Flower's own ``FedProx(FedAvg)`` does,
so a variant is a subclass overriding one method. Importing this module imports Flower;
the rest of :mod:`edgeweave.federated` imports it only when a run starts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from edgeweave.federated.aggregate import (
    AGGREGATORS,
    SERVER_STEPS,
    extrapolation,
    truncate,
)
from edgeweave.federated.config import FedConfig
from edgeweave.federated.hetero import Assignment, Tier, assign, tier_for
from edgeweave.finetune.lora import parse_key

State = dict[str, np.ndarray]


class HeteroLoRA(Strategy):
    """Federated LoRA for heterogeneous clients.

    Parameters
    ----------
    cfg : FedConfig
        Tiers, aggregation (``fedavg``, ``pad``, ``svd``), server optimizer (``avg``,
        ``adam``), proximal mu, local steps and learning rate.
    region : tuple[int, ...]
        Absolute indices of the blocks that carry adapters; rolling windows move over
        this sequence.
    """

    def __init__(self, cfg: FedConfig, region: tuple[int, ...]) -> None:
        self.cfg, self.region = cfg, region
        self.profiles: dict[int, dict] = {}
        self.slots: dict[int, int] = {}
        self.server_state: Any = None  # the server optimizer's (moments, velocity)
        self.control: State | None = None  # SCAFFOLD's c (global rank)
        self.history: list[dict] = []
        self._global: State = {}
        self._sent: dict[int, dict] = {}
        self._t0 = 0.0

    def summary(self) -> None:
        log(INFO, "\t├──> HeteroLoRA: aggregation=%s server_opt=%s mu=%s tiers=%s",
            self.cfg.aggregation, self.cfg.server_opt, self.cfg.proximal_mu,
            [t.name for t in self.cfg.tiers])

    # -- node profiles ------------------------------------------------------------------
    def _discover(self, grid) -> list[int]:
        """The nodes to train this round: every connected node whose profile is known."""
        want = self.cfg.min_clients or self.cfg.num_clients
        deadline = time.monotonic() + self.cfg.timeout_s
        while len(list(grid.get_node_ids())) < want and time.monotonic() < deadline:
            time.sleep(0.2)
        nodes = sorted(grid.get_node_ids())
        new = [n for n in nodes if n not in self.profiles]
        if new and not self.cfg.probe:
            smallest = min(self.cfg.tiers, key=lambda t: t.memory_mb)
            for n in new:  # until its first reply says otherwise
                self.profiles[n] = {"memory-mb": smallest.memory_mb, "partition-id": -1}
        elif new:
            self._query_profiles(grid, new)
        for n in nodes:
            if n in self.profiles and n not in self.slots:
                pid = int(self.profiles[n].get("partition-id", -1))
                self.slots[n] = pid if pid >= 0 else len(self.slots)
        return [n for n in nodes if n in self.profiles]

    def _query_profiles(self, grid, nodes: list[int]) -> None:
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
                for n in nodes]
        for rep in grid.send_and_receive(msgs, timeout=self.cfg.timeout_s):
            if not rep.has_error():
                self.profiles[rep.metadata.src_node_id] = dict(rep.content["profile"])

    def assignment(self, node: int, server_round: int) -> tuple[Tier, Assignment]:
        tier = tier_for(float(self.profiles[node]["memory-mb"]), self.cfg.tiers)
        return tier, assign(tier, self.region, server_round)

    # -- training -----------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays, config, grid) -> Iterable:
        self._t0 = time.perf_counter()
        glob = dict(zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True))
        self._sent = {}
        return [self._train_message(node, server_round, glob) for node in self._discover(grid)]

    def _train_message(self, node: int, server_round: int, glob: State) -> Message:
        """The node's share of the global adapter (its tier's rank, its window's blocks)."""
        tier, a = self.assignment(node, server_round)
        keys = [k for k in glob if parse_key(k)[0] in a.layers]
        sub = truncate(glob, a.rank, keys)
        conf = ConfigRecord({
            "rank": a.rank, "layers": list(a.layers), "lr": self.cfg.client_lr(server_round),
            "steps": self.cfg.local_steps, "local-epochs": self.cfg.local_epochs,
            "batch-size": self.cfg.batch_size,
            "proximal-mu": self.cfg.proximal_mu, "server-round": server_round,
            "optimizer": self.cfg.client_optimizer,
            "keep-optimizer": self.cfg.keep_optimizer,
            "logit-adjust": self.cfg.logit_adjust,
            "tier": tier.name})
        self._sent[node] = {"tier": tier.name, "rank": a.rank, "blocks": len(a.layers),
                            "bytes_down": _nbytes(sub)}
        records = {"arrays": _record(sub), "config": conf}
        if self.cfg.drift == "scaffold":
            ctrl = truncate(self._control(glob), a.rank, keys)
            records["control"] = _record(ctrl)
            self._sent[node]["bytes_control_down"] = _nbytes(ctrl)
        return Message(RecordDict(records), dst_node_id=node, message_type=MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable):
        ok = [r for r in replies if not r.has_error()]
        states, weights, clients, deltas = [], [], [], []
        for r in ok:
            state, weight, client, delta = self._read_reply(r)
            states.append(state)
            weights.append(weight)
            clients.append(client)
            if delta is not None:
                deltas.append(delta)
        record = {"round": server_round, "sent": len(self._sent), "replied": len(ok),
                  "failed": len(self._sent) - len(ok),
                  "bytes_down": sum(s["bytes_down"] for s in self._sent.values()),
                  "bytes_up": sum(c["bytes_up"] for c in clients), "clients": clients}
        if not ok:
            record["seconds"] = time.perf_counter() - self._t0
            self.history.append(record)
            return None, None
        agg = self._aggregate(server_round, states, weights, deltas, record)
        record["seconds"] = time.perf_counter() - self._t0
        record["train_loss"] = float(np.average([c["train-loss"] for c in clients],
                                                weights=weights))
        self.history.append(record)
        self._global = agg
        return _record(agg), MetricRecord({"train-loss": record["train_loss"],
                                           "replied": len(ok)})

    def _read_reply(self, r: Message) -> tuple[State, float, dict, State | None]:
        """(adapter state, weight, the client's record, SCAFFOLD control delta or None)."""
        state = _state(r.content["arrays"])
        delta = _state(r.content["control-delta"]) if "control-delta" in r.content else None
        m = dict(r.content["metrics"])
        node = r.metadata.src_node_id
        if "memory-mb" in m:  # nodes report their profile with every reply
            self.profiles.setdefault(node, {})["memory-mb"] = m["memory-mb"]
        client = {"node": node, **self._sent.get(node, {}), **m, "bytes_up": _nbytes(state)}
        return state, float(m.get("num-examples", 1)), client, delta

    def _aggregate(self, server_round: int, states: list[State], weights: list[float],
                   deltas: list[State], record: dict) -> State:
        """The new global adapter: the configured aggregation, the SCAFFOLD variate update
        and the server optimizer's step, in that order."""
        glob = self._global
        agg = AGGREGATORS[self.cfg.aggregation](states, weights, glob)
        if self.cfg.drift == "scaffold":
            from edgeweave.federated.scaffold import server_update

            ranks = [self.assignment(n, server_round)[0].rank for n in self.profiles
                     if "memory-mb" in self.profiles[n]]
            self.control = server_update(self._control(glob), deltas, ranks)
            record["control_deltas"] = len(deltas)
            record["bytes_control_up"] = int(sum(_nbytes(d) for d in deltas))
            record["control_norm"] = float(np.sqrt(sum(float((v ** 2).sum())
                                                       for v in self.control.values())))
        if self.cfg.server_opt in SERVER_STEPS:
            agg, self.server_state = SERVER_STEPS[self.cfg.server_opt](
                glob, agg, self.server_state, self.cfg.server_lr, self.cfg.server_momentum)
        elif self.cfg.server_opt == "fedexp":  # its step size needs every client's update
            eta = extrapolation(glob, agg, states, weights, self.cfg.aggregation)
            agg = {k: (x + eta * (agg[k].astype(np.float64) - x)).astype(x.dtype)
                   for k, x in glob.items()}
            record["server_lr"] = eta
        return agg

    def _control(self, like: State) -> State:
        if self.control is None:
            from edgeweave.federated.scaffold import zeros_like

            self.control = zeros_like(like)  # SCAFFOLD starts every variate at 0
        return self.control

    # -- evaluation happens centrally (evaluate_fn); no client-side evaluation -----------
    def configure_evaluate(self, server_round: int, arrays, config, grid) -> Iterable:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable):
        return None

    def start(self, grid, initial_arrays, **kw):  # noqa: D102 - see Strategy.start
        self._global = _state(initial_arrays)
        return super().start(grid=grid, initial_arrays=initial_arrays, **kw)


def make_strategy(cfg: FedConfig, region: tuple[int, ...]) -> HeteroLoRA:
    """The strategy a federated run drives (see :func:`edgeweave.federated.run.run_strategy`)."""
    return HeteroLoRA(cfg, region)


def _state(record: ArrayRecord) -> State:
    return dict(zip(record.keys(), record.to_numpy_ndarrays(), strict=True))


def _record(state: State) -> ArrayRecord:
    return ArrayRecord({k: _arr(v) for k, v in state.items()})


def _nbytes(state: State) -> int:
    return int(sum(v.nbytes for v in state.values()))


def _arr(v: np.ndarray) -> Array:
    return Array(np.ascontiguousarray(v))
