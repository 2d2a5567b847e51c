"""Run a federated job: the initial global adapter, central held-out evaluation, the
embedded simulation entry point and the ``ServerApp`` used in deployment.

Results are plain dicts (per round: held-out loss/accuracy, bytes up/down, per-client
peak memory and time) that the CLI prints and the benchmark writes to JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgeweave.federated.config import FedConfig, global_lora, region_blocks


@dataclass
class Evaluator:
    """Held-out evaluation of a global adapter on the server's copy of the base."""

    cfg: FedConfig
    region: tuple[int, ...]
    model: Any = None
    cache: Any = None
    items: tuple = ()
    log: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        from edgeweave.federated.client import client_model, prefix_cache, shared_base
        from edgeweave.federated.tasks import cached_task

        base = shared_base(self.cfg.model, self.cfg.base_dtype)
        self.model = client_model(base, global_lora(self.cfg, self.region), self.cfg.base_dtype)
        # The frozen prefix of held-out items is shared by every run in this process.
        self.cache = prefix_cache((self.cfg.model, self.cfg.base_dtype, self.cfg.task,
                                   "heldout", self.region[0]), self.region[0])
        self.items = cached_task(self.cfg.task, self.cfg.model, self.cfg.num_clients,
                                 self.cfg.seq_len, self.cfg.dirichlet_alpha, self.cfg.seed).heldout

    def state(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        from edgeweave.federated.tasks import evaluate
        from edgeweave.finetune.lora import load_adapter_state

        load_adapter_state(self.model,
                           {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        return evaluate(self.model, self.items, self.region[0], self.cache)

    def __call__(self, server_round: int, arrays) -> Any:
        from flwr.app import MetricRecord

        res = self.state(dict(zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True)))
        self.log.append({"round": server_round, **res})
        return MetricRecord(res)


def initial_arrays(cfg: FedConfig, region: tuple[int, ...]) -> dict[str, np.ndarray]:
    from edgeweave.federated.client import client_model, shared_base
    from edgeweave.finetune.lora import adapter_state

    model = client_model(shared_base(cfg.model, cfg.base_dtype), global_lora(cfg, region),
                         cfg.base_dtype)
    return {k: v.numpy() for k, v in adapter_state(model).items()}


def full_model_bytes(cfg: FedConfig) -> int:
    from edgeweave.federated.client import shared_base

    base = shared_base(cfg.model, cfg.base_dtype)
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in base.parameters()}
    return int(sum(seen.values()))


def run_strategy(cfg: FedConfig, grid, evaluate: bool = True,
                 strategy: Callable[[FedConfig, tuple[int, ...]], Any] | None = None
                 ) -> dict[str, Any]:
    """Drive the strategy on any Flower ``Grid`` (local or a SuperLink's). ``strategy``
    builds it from (cfg, region): :class:`~edgeweave.federated.strategy.HeteroLoRA` or a
    subclass (the default is :func:`~edgeweave.federated.strategy.make_strategy`)."""
    from flwr.app import ArrayRecord

    from edgeweave.federated.client import shared_base
    from edgeweave.federated.strategy import _arr, make_strategy

    num_layers = shared_base(cfg.model, cfg.base_dtype).cfg.num_layers
    region = region_blocks(cfg, num_layers)
    init = initial_arrays(cfg, region)
    warmup = None
    if cfg.synthetic_per_label:
        from edgeweave.federated.synthetic import warm_start

        init, warmup = warm_start(cfg, region, init)
    strategy = (strategy or make_strategy)(cfg, region)
    evaluator = Evaluator(cfg, region) if evaluate else None
    t0 = time.perf_counter()
    start_arrays = ArrayRecord({k: _arr(v) for k, v in init.items()})
    result = strategy.start(grid=grid, initial_arrays=start_arrays,
                            num_rounds=cfg.rounds, timeout=cfg.timeout_s, evaluate_fn=evaluator)
    final = dict(zip(result.arrays.keys(), result.arrays.to_numpy_ndarrays(), strict=True)) \
        if result.arrays is not None else init
    rounds = strategy.history
    evals = {e["round"]: e for e in (evaluator.log if evaluator else [])}
    for r in rounds:
        r["eval"] = evals.get(r["round"])
    return {"config": cfg.to_dict(), "region": list(region), "rounds": rounds,
            "initial_eval": evals.get(0), "final_eval": evals.get(cfg.rounds),
            "full_model_bytes": full_model_bytes(cfg), "seconds": time.perf_counter() - t0,
            "warmup": warmup, "final_arrays": final, "final_control": strategy.control}


def save_global_adapter(cfg: FedConfig, region: tuple[int, ...] | list[int],
                        arrays: dict[str, np.ndarray], folder: str, metrics: dict | None = None
                        ) -> str:
    """Write the run's final global adapter as an adapter folder (what ``edgeweave serve
    --adapter`` and ``merge_to_folder`` read). It has the global rank (the largest tier's:
    smaller clients' factors were zero-padded into it) on every block of the region (a
    rolling window only limits what one client trains per round)."""
    from edgeweave.finetune.adapter import save_adapter_state
    from edgeweave.models.catalog import resolve
    from edgeweave.models.fingerprint import checkpoint_fingerprint

    name, model_folder = resolve(cfg.model)
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in arrays.items()}
    save_adapter_state(folder, state, global_lora(cfg, tuple(region)), base=name,
                       base_fingerprint=checkpoint_fingerprint(model_folder),
                       metrics={"federated": True, "rounds": cfg.rounds, **(metrics or {})})
    return folder


def client_mods(cfg: FedConfig) -> list:
    if cfg.dp_clip <= 0:
        return []
    from edgeweave.federated.client import local_dp

    return [local_dp(cfg.dp_clip, cfg.dp_epsilon, cfg.dp_delta)]


def simulate(cfg: FedConfig, *, workers: int = 1, apps: dict[int, Any] | None = None,
             evaluate: bool = True,
             strategy: Callable[[FedConfig, tuple[int, ...]], Any] | None = None
             ) -> dict[str, Any]:
    """Embedded simulation: ``cfg.num_clients`` ClientApps in-process (one command).
    ``strategy`` as in :func:`run_strategy`."""
    from edgeweave.federated.client import make_client_app
    from edgeweave.federated.simulation import make_local_grid

    nodes = list(range(1, cfg.num_clients + 1))
    app = make_client_app(client_mods(cfg))
    apps = apps or {n: app for n in nodes}
    node_cfg = {n: {"partition-id": i, "memory-mb": cfg.memory_of(i)} for i, n in enumerate(apps)}
    grid = make_local_grid(apps, node_cfg, cfg.to_run_config(), workers=workers)
    try:
        return run_strategy(cfg, grid, evaluate=evaluate, strategy=strategy)
    finally:
        grid.shutdown()


def make_server_app():
    """The deployment ``ServerApp``: reads the FedConfig from the run config and writes the
    result JSON to run config ``out`` (when set)."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from edgeweave.paths import atomic_write_json

        rc = dict(context.run_config)
        cfg = FedConfig.from_run_config(rc)
        res = run_strategy(cfg, grid, evaluate=bool(rc.get("evaluate", False)))
        final = res.pop("final_arrays")
        res.pop("final_control", None)
        if rc.get("adapter_out"):
            save_global_adapter(cfg, res["region"], final, str(rc["adapter_out"]),
                                {"final_eval": res.get("final_eval")})
        if rc.get("out"):
            atomic_write_json(str(rc["out"]), res)

    return app
