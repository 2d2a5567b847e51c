"""The Flower ``ClientApp``: a device that fine-tunes the share of the adapter it is sent.

Only adapter tensors travel: the server sends exactly the keys (rank slice and blocks)
this client trains and gets the same keys back, which is also what Flower's
``LocalDpMod`` requires. The frozen base model is loaded once per process and shared by
every in-process client (their LoRA layers are separate module objects around the same
base tensors). Node config: ``partition-id``, ``memory-mb``.
Run config: see :class:`edgeweave.federated.config.FedConfig.to_run_config`.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgeweave.finetune.config import LoRAConfig, TrainConfig

_LOCK = threading.Lock()
LOCAL_CONTROL = "scaffold-local-control"  # this client's SCAFFOLD c_i in context.state
MOMENTS = "optimizer-moments"  # this client's optimizer state in context.state (keep_optimizer)
_BASES: dict[tuple[str, str], Any] = {}
_CACHES: dict[tuple, Any] = {}


def shared_base(model: str, base_dtype: str):
    """The frozen base model of this process (loaded and converted once)."""
    from edgeweave.finetune.quantbase import convert_base
    from edgeweave.models.catalog import load

    with _LOCK:
        key = (model, base_dtype)
        if key not in _BASES:
            lm = load(model)
            if base_dtype == "bfloat16":  # int8 is applied per client copy (new modules)
                convert_base(lm.model, base_dtype)
            _BASES[key] = lm.model
        return _BASES[key]


def client_model(base, lora: LoRAConfig, base_dtype: str):
    """A LoRA model sharing ``base``'s tensors (no copy of the weights)."""
    from edgeweave.finetune.lora import apply_lora
    from edgeweave.finetune.quantbase import convert_base

    memo = {id(t): t for t in [*base.parameters(), *base.buffers()]}
    model = apply_lora(copy.deepcopy(base, memo), lora)
    if base_dtype == "int8":
        convert_base(model, "int8")
    return model


def prefix_cache(key: tuple, start: int):
    from edgeweave.finetune.train import PrefixCache

    with _LOCK:
        if key not in _CACHES:
            _CACHES[key] = PrefixCache(start)
        return _CACHES[key]


def region_start(run: dict) -> int:
    """First block carrying adapters ('' = the whole model, block 0)."""
    a, _, _ = str(run.get("region", "")).partition("-")
    return int(a) if a else 0


@dataclass(frozen=True)
class ClientUpdate:
    """What one round of local training gives back."""

    arrays: dict[str, np.ndarray]  # the trained adapter share (the keys that were sent)
    metrics: dict[str, float]
    scaffold: dict | None = None  # {"local": new c_i, "delta": delta c_i} under SCAFFOLD
    moments: dict | None = None  # the optimizer state to keep for the next round


def train_on_message(arrays: dict[str, np.ndarray], cfg: dict, run: dict,
                     partition: int, control: dict[str, np.ndarray] | None = None,
                     local_control: dict[str, np.ndarray] | None = None,
                     moments: dict | None = None) -> ClientUpdate:
    """Pure-ish core of the client: one round of local training on the arrays sent.

    With ``control`` (the server's ``c`` for the keys sent), local steps are corrected with
    SCAFFOLD (``local_control`` is this client's stored ``c_i``, ``None`` before its first
    round) and ``scaffold`` is ``{"local": new c_i for these keys, "delta": delta c_i}``.
    With ``moments`` (this client's optimizer state from earlier rounds, ``{}`` before its
    first), the optimizer resumes it and ``moments`` of the update is the state to keep.
    """
    from edgeweave.federated.tasks import cached_task
    from edgeweave.finetune.lora import adapter_parameters, adapter_state, load_adapter_state
    from edgeweave.finetune.train import train

    rank, layers = int(cfg["rank"]), tuple(int(x) for x in cfg["layers"])
    lora = LoRAConfig(rank=rank, alpha=float(run["scale"]) * rank,
                      target_modules=tuple(str(run["targets"]).split(",")), layers=layers,
                      freeze_a=bool(run.get("freeze-a", False)))
    base = shared_base(str(run["model"]), str(run["base-dtype"]))
    model = client_model(base, lora, str(run["base-dtype"]))
    load_adapter_state(model, {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})
    data = cached_task(str(run["task"]), str(run["model"]), int(run["num-clients"]),
                       int(run["seq-len"]), float(run["alpha"]), int(run["seed"]))
    examples = data.clients[partition % len(data.clients)]
    start = region_start(run)
    cache = prefix_cache((run["model"], run["base-dtype"], run["task"], partition, start), start)
    tcfg = TrainConfig(steps=local_steps(cfg, len(examples)), lr=float(cfg["lr"]),
                       batch_size=int(cfg["batch-size"]), micro_batch_size=int(cfg["batch-size"]),
                       seq_len=int(run["seq-len"]), proximal_mu=float(cfg.get("proximal-mu", 0.0)),
                       base_dtype=str(run["base-dtype"]),
                       optimizer=str(cfg.get("optimizer", "adamw")),
                       seed=int(run["seed"]) * 1000 + int(cfg["server-round"]) * 37 + partition)
    bias = None
    tau = float(cfg.get("logit-adjust", 0.0))
    if tau > 0:  # FedConfig allows it only for tasks with label sets
        from edgeweave.federated.prior import label_prior_bias

        bias = label_prior_bias(examples, data.label_sets, tau)
    hook = None
    if control is not None:
        from edgeweave.federated.scaffold import GradientControl, local_slice

        old_local = local_slice(local_control or {}, control)
        params = {k: p for k, p in adapter_parameters(model).items() if k in control}
        hook = GradientControl(params, control, old_local)
    t0 = time.perf_counter()
    res = train(model, examples, tcfg, prefix_cache=cache, on_gradients=hook, moments=moments,
                answer_bias=bias)
    out = {k: v.numpy() for k, v in adapter_state(model).items()}
    scaffold = None
    if hook is not None:
        from edgeweave.federated.scaffold import client_update

        trained = hook.mean_gradients()
        # a frozen factor (LoRA-FA's A) has no gradient: its variate stays as it was
        trained.update({k: old_local[k] for k in old_local if k not in trained})
        new_local, delta = client_update(old_local, trained)
        scaffold = {"local": new_local, "delta": delta}
    metrics = {"num-examples": len(examples), "train-loss": float(np.mean(res.losses)),
               "peak-rss-mb": res.peak_rss_mb, "saved-act-mb": res.saved_activations_mb,
               "trainable-params": res.trainable_params, "train-s": time.perf_counter() - t0,
               "rank": rank, "blocks": len(layers), "lr": tcfg.lr,
               "bytes-up": int(sum(v.nbytes for v in out.values())),
               "bytes-down": int(sum(np.asarray(v).nbytes for v in arrays.values())),
               "partition-id": partition, "logit-adjust": tau,
               # steps the optimizer has taken, earlier rounds' too when its state is kept
               "optimizer-steps": max((int(st["step"]) for st in (res.moments or {}).values()
                                       if "step" in st), default=tcfg.steps)}
    return ClientUpdate(out, metrics, scaffold, res.moments)


def local_steps(cfg: dict, n_examples: int) -> int:
    """This round's step count: ``steps`` for every home, or with ``local-epochs`` E > 0
    ``ceil(E * n_examples / batch-size)`` (E passes over the home's own data, at least 1)."""
    epochs = float(cfg.get("local-epochs", 0.0))
    if epochs <= 0:
        return int(cfg["steps"])
    return max(1, math.ceil(epochs * n_examples / int(cfg["batch-size"])))


def train_only(mod):
    """Apply a Flower mod to train messages only (``LocalDpMod`` rejects the profile query,
    which carries no ArrayRecord)."""
    def wrapped(msg, ctx, call_next):
        if msg.metadata.message_type.split(".")[0] == "train":
            return mod(msg, ctx, call_next)
        return call_next(msg, ctx)
    return wrapped


def local_dp(clip: float, epsilon: float, delta: float):
    """Flower's ``LocalDpMod`` (clip the update to ``clip``, add Gaussian noise)."""
    from flwr.clientapp.mod import LocalDpMod

    return train_only(LocalDpMod(clip, sensitivity=clip, epsilon=epsilon, delta=delta))


def make_client_app(mods: list | None = None):
    """A Flower ``ClientApp`` (train + query), optionally wrapped in Flower mods."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=mods or [])

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config.get("partition-id", context.node_id))
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        keys = list(msg.content["arrays"].keys())
        cfg = dict(msg.content["config"])
        control = stored = None
        if "control" in msg.content:  # SCAFFOLD: the server's c; this client's c_i is state
            rec = msg.content["control"]
            control = dict(zip(rec.keys(), rec.to_numpy_ndarrays(), strict=True))
            if LOCAL_CONTROL in context.state:
                rec = context.state[LOCAL_CONTROL]
                stored = dict(zip(rec.keys(), rec.to_numpy_ndarrays(), strict=True))
        kept = None
        if bool(cfg.get("keep-optimizer", False)):
            kept = (unflatten_moments(context.state[MOMENTS]) if MOMENTS in context.state
                    else {})
        up = train_on_message(dict(zip(keys, arrays, strict=True)), cfg,
                              dict(context.run_config), partition, control, stored, kept)
        metrics = {**up.metrics, "memory-mb": int(context.node_config.get("memory-mb", 8192))}
        content = {"arrays": ArrayRecord({k: _array(up.arrays[k]) for k in keys}),
                   "metrics": MetricRecord(metrics)}
        if up.scaffold is not None:
            from edgeweave.federated.scaffold import merge_local

            merged = merge_local(stored or {}, up.scaffold["local"])
            context.state[LOCAL_CONTROL] = ArrayRecord({k: _array(v) for k, v in merged.items()})
            content["control-delta"] = ArrayRecord({k: _array(v)
                                                    for k, v in up.scaffold["delta"].items()})
        if up.moments is not None:  # blocks outside this round's window keep their old state
            context.state[MOMENTS] = ArrayRecord(flatten_moments({**kept, **up.moments}))
        return Message(RecordDict(content), reply_to=msg)

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        profile = {"partition-id": int(context.node_config.get("partition-id", -1)),
                   "memory-mb": int(context.node_config.get("memory-mb", 8192))}
        return Message(RecordDict({"profile": ConfigRecord(profile)}), reply_to=msg)

    return app


def flatten_moments(moments: dict[str, dict[str, torch.Tensor]]) -> dict:
    """``{key: {"exp_avg": t, ...}}`` -> ``{"key|exp_avg": Array}`` for an ArrayRecord."""
    return {f"{k}|{name}": _array(np.atleast_1d(t.numpy()))
            for k, st in moments.items() for name, t in st.items()}


def unflatten_moments(record) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for flat, arr in zip(record.keys(), record.to_numpy_ndarrays(), strict=True):
        k, _, name = flat.rpartition("|")
        t = torch.from_numpy(np.array(arr))
        out.setdefault(k, {})[name] = t.reshape(()) if name == "step" else t
    return out


def _array(v: np.ndarray):
    from flwr.app import Array

    return Array(np.ascontiguousarray(v))
