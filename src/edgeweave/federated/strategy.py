"""``HeteroLoRA``: a Flower (Message API) strategy for clients that differ in memory.

Each round it asks new nodes for their profile (a ``query`` message), maps memory to a
:class:`~edgeweave.federated.hetero.Tier`, and sends every client only its share of the
global adapter: the first ``rank`` components of the blocks in its rolling window. Replies
are aggregated by a pure function of :mod:`edgeweave.federated.aggregate` (FedAvg,
zero-pad/truncate or SVD redistribution), optionally followed by server-side Adam
(FedAdam). FedProx is the client-side proximal term, sent as ``proximal-mu``.
Per-round records (bytes each way, per-client metrics, time) are kept in ``history``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np

from edgeweave.federated.aggregate import AGGREGATORS, SERVER_STEPS, truncate
from edgeweave.federated.config import FedConfig
from edgeweave.federated.hetero import assign, tier_for
from edgeweave.finetune.lora import parse_key


def _flwr():
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.serverapp.strategy import Strategy

    return ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict, Strategy


def make_strategy(cfg: FedConfig, region: tuple[int, ...]):
    """Build the strategy (a subclass of Flower's ``Strategy``, created lazily so that
    importing this module does not import Flower)."""
    ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict, Strategy = _flwr()
    from flwr.supercore import log

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
            self.control: dict[str, np.ndarray] | None = None  # SCAFFOLD's c (global rank)
            self.history: list[dict] = []
            self._sent: dict[int, dict] = {}
            self._t0 = 0.0

        def summary(self) -> None:
            log(INFO, "\t├──> HeteroLoRA: aggregation=%s server_opt=%s mu=%s tiers=%s",
                self.cfg.aggregation, self.cfg.server_opt, self.cfg.proximal_mu,
                [t.name for t in self.cfg.tiers])

        # -- node profiles --------------------------------------------------------------
        def _discover(self, grid) -> list[int]:
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
                msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
                        for n in new]
                for rep in grid.send_and_receive(msgs, timeout=self.cfg.timeout_s):
                    if not rep.has_error():
                        prof = dict(rep.content["profile"])
                        self.profiles[rep.metadata.src_node_id] = prof
            for n in nodes:
                if n in self.profiles and n not in self.slots:
                    pid = int(self.profiles[n].get("partition-id", -1))
                    self.slots[n] = pid if pid >= 0 else len(self.slots)
            return [n for n in nodes if n in self.profiles]

        def assignment(self, node: int, server_round: int):
            tier = tier_for(float(self.profiles[node]["memory-mb"]), self.cfg.tiers)
            return tier, assign(tier, self.region, server_round)

        # -- training -------------------------------------------------------------------
        def configure_train(self, server_round: int, arrays, config, grid) -> Iterable:
            self._t0 = time.perf_counter()
            glob = dict(zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True))
            msgs, self._sent = [], {}
            for node in self._discover(grid):
                tier, a = self.assignment(node, server_round)
                keys = [k for k in glob if parse_key(k)[0] in a.layers]
                sub = truncate(glob, a.rank, keys)
                conf = ConfigRecord({
                    "rank": a.rank, "layers": list(a.layers), "lr": self.cfg.client_lr(server_round),
                    "steps": self.cfg.local_steps, "batch-size": self.cfg.batch_size,
                    "proximal-mu": self.cfg.proximal_mu, "server-round": server_round,
                    "optimizer": self.cfg.client_optimizer,
                    "tier": tier.name})
                self._sent[node] = {"tier": tier.name, "rank": a.rank, "blocks": len(a.layers),
                                    "bytes_down": int(sum(v.nbytes for v in sub.values()))}
                records = {"arrays": ArrayRecord({k: _arr(v) for k, v in sub.items()}),
                           "config": conf}
                if self.cfg.drift == "scaffold":
                    ctrl = truncate(self._control(glob), a.rank, keys)
                    records["control"] = ArrayRecord({k: _arr(v) for k, v in ctrl.items()})
                    self._sent[node]["bytes_control_down"] = int(sum(v.nbytes for v in
                                                                     ctrl.values()))
                content = RecordDict(records)
                msgs.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
            return msgs

        def aggregate_train(self, server_round: int, replies: Iterable):
            replies = list(replies)
            ok = [r for r in replies if not r.has_error()]
            glob = self._global
            states, weights, clients, deltas = [], [], [], []
            for r in ok:
                rec = r.content["arrays"]
                states.append(dict(zip(rec.keys(), rec.to_numpy_ndarrays(), strict=True)))
                if "control-delta" in r.content:
                    rec = r.content["control-delta"]
                    deltas.append(dict(zip(rec.keys(), rec.to_numpy_ndarrays(), strict=True)))
                m = dict(r.content["metrics"])
                weights.append(float(m.get("num-examples", 1)))
                node = r.metadata.src_node_id
                if "memory-mb" in m:  # nodes report their profile with every reply
                    self.profiles.setdefault(node, {})["memory-mb"] = m["memory-mb"]
                clients.append({"node": node, **self._sent.get(node, {}), **m,
                                "bytes_up": int(sum(v.nbytes for v in states[-1].values()))})
            record = {"round": server_round, "sent": len(self._sent), "replied": len(ok),
                      "failed": len(self._sent) - len(ok),
                      "bytes_down": sum(s["bytes_down"] for s in self._sent.values()),
                      "bytes_up": sum(c["bytes_up"] for c in clients), "clients": clients}
            if not ok:
                record["seconds"] = time.perf_counter() - self._t0
                self.history.append(record)
                return None, None
            agg = AGGREGATORS[self.cfg.aggregation](states, weights, glob)
            if self.cfg.drift == "scaffold":
                from edgeweave.federated.scaffold import server_update

                ranks = [self.assignment(n, server_round)[0].rank for n in self.profiles
                         if "memory-mb" in self.profiles[n]]
                self.control = server_update(self._control(glob), deltas, ranks)
                record["control_deltas"] = len(deltas)
                record["bytes_control_up"] = int(sum(v.nbytes for d in deltas
                                                     for v in d.values()))
                record["control_norm"] = float(np.sqrt(sum(float((v ** 2).sum())
                                                           for v in self.control.values())))
            if self.cfg.server_opt in SERVER_STEPS:
                agg, self.server_state = SERVER_STEPS[self.cfg.server_opt](
                    glob, agg, self.server_state, self.cfg.server_lr, self.cfg.server_momentum)
            record["seconds"] = time.perf_counter() - self._t0
            record["train_loss"] = float(np.average([c["train-loss"] for c in clients],
                                                    weights=weights))
            self.history.append(record)
            self._global = agg
            return (ArrayRecord({k: _arr(v) for k, v in agg.items()}),
                    MetricRecord({"train-loss": record["train_loss"],
                                  "replied": len(ok)}))

        def _control(self, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if self.control is None:
                from edgeweave.federated.scaffold import zeros_like

                self.control = zeros_like(like)  # SCAFFOLD starts every variate at 0
            return self.control

        # -- evaluation happens centrally (evaluate_fn); no client-side evaluation -------
        def configure_evaluate(self, server_round: int, arrays, config, grid) -> Iterable:
            return []

        def aggregate_evaluate(self, server_round: int, replies: Iterable):
            return None

        def start(self, grid, initial_arrays, **kw):  # noqa: D102 - see Strategy.start
            self._global = dict(zip(initial_arrays.keys(), initial_arrays.to_numpy_ndarrays(),
                                    strict=True))
            return super().start(grid=grid, initial_arrays=initial_arrays, **kw)

    return HeteroLoRA(cfg, region)


def _arr(v: np.ndarray):
    from flwr.app import Array

    return Array(np.ascontiguousarray(v))
