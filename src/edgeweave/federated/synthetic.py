"""Synthetic warm-up for federated LoRA (GPT-FL, Zhang et al. 2023).

Before the first round the server, which holds no client data, asks the base model itself
for labelled examples: for each label of each task it describes the sensor and the label in
words and lets the model write a window in the task's text format. Decoding is constrained to
that format's grammar (:class:`~edgeweave.runtime.constraints.OutputFormat` regex), so every
synthetic window parses as a real one would; the label comes from the request, not from the
model. The global adapter is then trained on these examples for a few steps and federation
starts from it instead of from the zero update.

What the server needs is only public knowledge: the task's text format and label names. How
much this helps depends on what the model knows about the sensors (a 135M model knows little:
the federated benchmark measures with and without, at equal client steps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeweave.errors import ConfigError

_NUM = r"-?[0-9]{1,2}"
_AXIS = _NUM + "±" + r"[0-9]{1,2}"
_DAY = "(Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_TEMP, _HUMIDITY, _CO2 = (r"[12][0-9](\.[0-9])?", r"[1-6][0-9](\.[0-9])?",
                          r"([3-9][0-9]{2}|[12][0-9]{3})(\.[0-9])?")


def _four(value: str) -> str:
    return value + "( " + value + "){3}"


@dataclass(frozen=True)
class SyntheticSpec:
    """How to ask for one task's windows: the words around a label and the window grammar."""

    task: str
    describe: str  # "{label}" is replaced by the label
    pattern: str  # the window's grammar (what the task's encoding writes)
    max_tokens: int


SPECS: dict[str, SyntheticSpec] = {
    "activity": SyntheticSpec(
        "activity",
        "Smartwatch readings over 10 seconds while a person is {label}: accelerometer ax, ay, "
        "az and gyroscope gx, gy, gz, each as mean±sd (larger and more varied when moving "
        "fast).\nReadings:",
        " " + "; ".join(f"{ax} {_AXIS}" for ax in ("ax", "ay", "az", "gx", "gy", "gz")),
        72),
    "occupancy": SyntheticSpec(
        "occupancy",
        "Office room sensors, four readings 16 minutes apart, while the room is {label}: time, "
        "temperature (C), humidity (%) and CO2 (ppm; people raise it).\nReadings:",
        f" {_DAY} [0-2][0-9]:[0-5][0-9]; temp {_four(_TEMP)}; humidity {_four(_HUMIDITY)}; "
        f"co2 {_four(_CO2)}",
        96),
}


@dataclass(frozen=True)
class Synthetic:
    task: str
    label: str
    window: str  # in the task's text format, like a real item's query


def synthesize(lm: Any, tasks: tuple[str, ...], per_label: int, seed: int = 0,
               temperature: float = 0.9) -> list[Synthetic]:
    """``per_label`` windows for every label of every task, sampled with a seed each."""
    from edgeweave.bench.tasks import get_task
    from edgeweave.bench.tasks.evaluate import default_engine
    from edgeweave.runtime.constraints import OutputFormat
    from edgeweave.runtime.generate import SamplingParams, generate

    if per_label < 1:
        raise ConfigError(f"synthetic examples per label must be >= 1 (got {per_label})")
    missing = [t for t in tasks if t not in SPECS]
    if missing:
        raise ConfigError(f"no synthetic spec for tasks {missing}: choose from {sorted(SPECS)}")
    engine = default_engine(lm)
    out = []
    for name in tasks:
        spec, labels = SPECS[name], get_task(name).template.choices
        fmt = OutputFormat("regex", pattern=spec.pattern)
        for li, label in enumerate(labels):
            for j in range(per_label):
                params = SamplingParams(max_tokens=spec.max_tokens, temperature=temperature,
                                        top_p=0.95, seed=seed * 100_003 + li * 1009 + j,
                                        output=fmt)
                text = generate(engine, lm.tokenizer, spec.describe.format(label=label),
                                params).text
                out.append(Synthetic(name, label, text.strip()))
    return out


def warm_start(cfg: Any, region: tuple[int, ...], initial: dict[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train the global adapter on synthetic examples; returns (arrays, record)."""
    import torch

    from edgeweave.federated.client import client_model, shared_base
    from edgeweave.federated.config import global_lora
    from edgeweave.federated.tasks import PROMPTS
    from edgeweave.finetune.config import TrainConfig
    from edgeweave.finetune.data import prompt_answer
    from edgeweave.finetune.lora import adapter_state, load_adapter_state
    from edgeweave.finetune.train import train
    from edgeweave.models.catalog import load

    t0 = time.perf_counter()
    lm = load(cfg.model)
    made = synthesize(lm, tuple(PROMPTS), cfg.synthetic_per_label, cfg.seed)
    examples = [prompt_answer(lm.tokenizer, PROMPTS[s.task][0].format(q=s.window),
                              " " + s.label, cfg.seq_len) for s in made]
    t_gen = time.perf_counter() - t0
    model = client_model(shared_base(cfg.model, cfg.base_dtype), global_lora(cfg, region),
                         cfg.base_dtype)
    load_adapter_state(model, {k: torch.from_numpy(np.array(v)) for k, v in initial.items()})
    tcfg = TrainConfig(steps=cfg.synthetic_steps, lr=cfg.lr, batch_size=cfg.batch_size,
                       micro_batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                       base_dtype=cfg.base_dtype, optimizer=cfg.client_optimizer,
                       seed=cfg.seed + 7)
    res = train(model, examples, tcfg)
    arrays = {k: v.numpy() for k, v in adapter_state(model).items()}
    record = {"examples": len(examples), "steps": cfg.synthetic_steps,
              "generate_s": t_gen, "train_s": res.seconds, "train_loss": res.final_loss,
              "samples": [{"task": s.task, "label": s.label, "window": s.window}
                          for s in made[:: max(1, len(made) // 6)]]}
    return arrays, record
