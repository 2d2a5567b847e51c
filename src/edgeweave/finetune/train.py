"""The LoRA training loop: micro-batches with accumulation, per-block gradient
checkpointing, a frozen prefix that never enters autograd, FedProx's proximal term, and a
checkpoint that makes an interrupted run resume to the very same result.

Determinism is by construction: step ``s`` draws its batch and seeds dropout from
``(seed, s)``, so resuming at step ``s`` needs only the adapter, the optimizer state and
the loss history, which the checkpoint holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from edgeweave.errors import CheckpointError, ConfigError
from edgeweave.finetune.config import TrainConfig
from edgeweave.finetune.data import IGNORE, Example, collate
from edgeweave.finetune.lora import (
    adapter_parameters,
    adapter_state,
    lora_layers,
    parse_key,
    trainable_parameters,
)
from edgeweave.finetune.memory import MemoryMeter
from edgeweave.finetune.quantbase import base_bytes
from edgeweave.paths import atomic_dir


@dataclass
class TrainResult:
    """What a run did and cost; benchmarks and the CLI read these, never re-time."""

    steps: int
    losses: list[float]
    seconds: float
    peak_rss_mb: float
    saved_activations_mb: float
    trainable_params: int
    base_mb: float
    resumed_from: int = 0
    options: dict = field(default_factory=dict)
    # the optimizer's per-parameter state at the end, keyed like adapter_state (only when
    # train() was given ``moments``: a federated client keeps it for its next round)
    moments: dict[str, dict[str, torch.Tensor]] | None = None

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")

    def to_dict(self) -> dict:
        out = asdict(replace(self, moments=None))  # tensors are not a report
        del out["moments"]
        return out


def first_trainable_block(model: nn.Module) -> int:
    """Lowest block holding a trainable adapter; blocks below it run without autograd."""
    idx = [parse_key(f"{n}.lora_A.weight")[0] for n, m in lora_layers(model).items()
           if any(p.requires_grad for p in m.parameters())]
    return min(idx) if idx else model.shard.start


class PrefixCache:
    """Hidden states entering block ``start`` per example; valid while the blocks below
    ``start`` are frozen and adapter-free, so each example's prefix is computed once."""

    def __init__(self, start: int) -> None:
        self.start = start
        self._h: dict[Example, torch.Tensor] = {}

    @torch.no_grad()
    def batch(self, model: nn.Module, examples: Sequence[Example],
              idx: Sequence[int]) -> torch.Tensor:
        # Keyed by the (frozen, hashable) example itself, so one cache serves many lists.
        chosen = [examples[i] for i in idx]
        for ex in chosen:
            if ex not in self._h:
                h = model.embed(torch.tensor([ex.ids]))
                for b in range(model.shard.start, self.start):
                    h = model.block(b, h)
                self._h[ex] = h[0]
        t = max(self._h[ex].shape[0] for ex in chosen)
        first = self._h[chosen[0]]
        out = torch.zeros(len(chosen), t, first.shape[-1], dtype=first.dtype)
        for row, ex in enumerate(chosen):
            out[row, :self._h[ex].shape[0]] = self._h[ex]
        return out


def _frozen(model: nn.Module, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Adapter-free blocks ``[start, stop)`` without autograd."""
    with torch.no_grad():
        return run_from(model, h, start, stop)


def hidden_in(model: nn.Module, ids: torch.Tensor, start: int) -> torch.Tensor:
    with torch.no_grad():
        h = model.embed(ids)
        for b in range(model.shard.start, start):
            h = model.block(b, h)
    return h


def run_from(model: nn.Module, h: torch.Tensor, start: int, stop: int | None = None,
             grad_checkpointing: bool = False) -> torch.Tensor:
    """Blocks ``[start, stop)`` (default: to the end) on hidden states ``h``."""
    for b in range(start, model.shard.end if stop is None else stop):
        if grad_checkpointing and torch.is_grad_enabled():
            h = checkpoint(model.block, b, h, None, use_reentrant=False)
        else:
            h = model.block(b, h)
    return h


def loss_from(model: nn.Module, h: torch.Tensor, labels: torch.Tensor, start: int,
              grad_checkpointing: bool = False,
              answer_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token loss of blocks ``[start, end)`` + head on hidden states ``h``.

    The vocabulary projection runs only at target positions: with short answers after
    long prompts that is most of the compute of a small model. ``answer_bias`` (a
    ``(vocab,)`` tensor) is added to the logits of each row's first target, the answer's
    first token (a federated home's logit adjustment, :mod:`edgeweave.federated.prior`).
    """
    h = run_from(model, h, start, grad_checkpointing=grad_checkpointing)
    mask = labels != IGNORE
    logits = model.head(h[mask]).float()  # (targets, vocab)
    if answer_bias is not None:
        # a row's first target: masked here and not at the position before
        first = mask & ~F.pad(mask[:, :-1], (1, 0), value=False)
        logits = logits + first[mask].unsqueeze(1).float() * answer_bias.to(logits.dtype)
    return F.cross_entropy(logits, labels[mask])


def _bias_vector(answer_bias: Mapping[int, float], vocab: int | None) -> torch.Tensor:
    if vocab is None or any(not 0 <= int(t) < vocab for t in answer_bias):
        raise ConfigError(f"answer_bias names tokens outside the vocabulary ({vocab})")
    out = torch.zeros(vocab)
    for t, b in answer_bias.items():
        out[int(t)] = float(b)
    return out


def batch_indices(n: int, step: int, cfg: TrainConfig) -> list[int]:
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    reps = -(-cfg.batch_size // n)
    perm = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])
    return perm[:cfg.batch_size].tolist()


_OPTIMIZERS = {
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr,
                                                   weight_decay=cfg.weight_decay),
    "sgd": lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
}


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return _OPTIMIZERS[cfg.optimizer](params, cfg)


Moments = dict[str, dict[str, torch.Tensor]]


def load_moments(opt: torch.optim.Optimizer, named: Mapping[str, nn.Parameter],
                 moments: Mapping[str, Mapping[str, torch.Tensor]]) -> int:
    """Put saved per-parameter optimizer state back (AdamW's step and moments).

    A key with no saved state, or state of another shape (the client's rank changed),
    starts fresh. Returns how many parameters resumed."""
    n = 0
    for k, p in named.items():
        st = moments.get(k)
        if not st or not p.requires_grad:
            continue
        if any(t.dim() and t.shape != p.shape for t in st.values()):
            continue
        opt.state[p] = {name: t.detach().clone().to(p.device) for name, t in st.items()}
        n += 1
    return n


def save_moments(opt: torch.optim.Optimizer, named: Mapping[str, nn.Parameter]) -> Moments:
    """Per-parameter optimizer state, keyed like :func:`adapter_state` (copies)."""
    return {k: {name: t.detach().clone() for name, t in opt.state[p].items()
                if torch.is_tensor(t)}
            for k, p in named.items() if opt.state.get(p)}


def _save_checkpoint(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int,
                     losses: list[float], cfg: TrainConfig) -> None:
    from safetensors.torch import save_file

    with atomic_dir(folder) as tmp:
        save_file(adapter_state(model), str(tmp / "adapter.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "losses": losses,
                                                    "train": cfg.to_dict()}))


def _load_checkpoint(folder: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     cfg: TrainConfig) -> tuple[int, list[float]]:
    from safetensors.torch import load_file

    from edgeweave.finetune.lora import load_adapter_state

    state_file = folder / "state.json"
    if not state_file.is_file():
        return 0, []
    state = json.loads(state_file.read_text())
    if state["train"] != cfg.to_dict():
        raise CheckpointError(f"{folder} was written by a different TrainConfig: delete it or "
                              "resume with the same settings")
    load_adapter_state(model, load_file(str(folder / "adapter.safetensors")))
    opt.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return int(state["step"]), list(state["losses"])


def train(model: nn.Module, examples: Sequence[Example], cfg: TrainConfig, *,
          checkpoint_dir: str | Path | None = None, stop_after: int | None = None,
          prefix_cache: PrefixCache | None = None,
          on_step: Callable[[int, float], None] | None = None,
          on_gradients: Callable[[], None] | None = None,
          moments: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
          answer_bias: Mapping[int, float] | None = None) -> TrainResult:
    """Train the adapters already injected in ``model`` (see :func:`apply_lora`).

    ``on_gradients`` runs once per step with the step's whole gradient in ``.grad`` (all
    micro-batches accumulated), before clipping and the optimizer: SCAFFOLD's control variates
    read and correct it there.

    ``stop_after`` ends the run after that many steps *of this call* (a simulated
    interruption); calling again with the same ``checkpoint_dir`` resumes.

    ``moments`` (from an earlier result's ``moments``) resumes the optimizer's state instead of
    starting it fresh: a federated client's few local steps per round then keep the second
    moments of all its earlier rounds, where a fresh AdamW takes sign-like steps of ``lr`` on
    every coordinate, noise included. The result carries the state at the end.

    ``answer_bias`` (``{token: bias}``) is added to the logits of every example's first
    answer token in the training loss only (see :func:`loss_from`).
    """
    if not examples:
        raise CheckpointError("no training examples: give the run some data")
    params = trainable_parameters(model)
    if not params:
        raise CheckpointError("the model has no trainable adapter: call apply_lora first")
    model.train()
    start = first_trainable_block(model)
    if prefix_cache is not None and prefix_cache.start > start:
        raise CheckpointError(f"prefix cache reaches block {prefix_cache.start}, past the "
                              f"first adapter at block {start}")
    opt = make_optimizer(params, cfg)
    named = adapter_parameters(model) if moments is not None else {}
    if moments is not None:
        load_moments(opt, named, moments)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    step, losses = _load_checkpoint(ckpt, model, opt, cfg) if ckpt else (0, [])
    resumed_from = step
    bias = None
    if answer_bias:
        bias = _bias_vector(answer_bias, getattr(getattr(model, "cfg", None), "vocab_size", None))
    reference = ([p.detach().clone() for p in params] if cfg.proximal_mu > 0 else None)
    meter = MemoryMeter()
    t0 = time.perf_counter()
    done_here = 0
    with meter:
        while step < cfg.steps and (stop_after is None or done_here < stop_after):
            torch.manual_seed(cfg.seed * 7919 + step)  # dropout, reproducible on resume
            idx = batch_indices(len(examples), step, cfg)
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for m0 in range(0, cfg.batch_size, cfg.micro_batch_size):
                micro = idx[m0:m0 + cfg.micro_batch_size]
                ids, labels = collate([examples[i] for i in micro])
                with meter.saved_tensors(model):
                    h = (_frozen(model, prefix_cache.batch(model, examples, micro),
                                 prefix_cache.start, start) if prefix_cache
                         else hidden_in(model, ids, start))
                    loss = loss_from(model, h, labels, start, cfg.grad_checkpointing, bias)
                    loss = loss / cfg.accumulation
                    if reference is not None and m0 == 0:
                        prox = sum(((p - r) ** 2).sum() for p, r in zip(params, reference,
                                                                        strict=True))
                        loss = loss + cfg.proximal_mu / 2 * prox
                meter.end_forward()
                loss.backward()
                total += float(loss.detach())
            if on_gradients is not None:
                on_gradients()
            if cfg.max_grad_norm > 0:  # 0 = no clipping (clipping to 0 would zero every step)
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            step += 1
            done_here += 1
            losses.append(total)
            if on_step:
                on_step(step, total)
            if ckpt and cfg.checkpoint_every and (step % cfg.checkpoint_every == 0
                                                  or step == cfg.steps):
                _save_checkpoint(ckpt, model, opt, step, losses, cfg)
    if ckpt and step > resumed_from and not (cfg.checkpoint_every
                                             and step % cfg.checkpoint_every == 0):
        _save_checkpoint(ckpt, model, opt, step, losses, cfg)
    model.eval()
    return TrainResult(
        steps=step, losses=losses, seconds=time.perf_counter() - t0,
        peak_rss_mb=meter.report.peak_rss_mb, saved_activations_mb=meter.report.saved_mb,
        trainable_params=sum(p.numel() for p in params), base_mb=base_bytes(model) / 2**20,
        resumed_from=resumed_from,
        options={"grad_checkpointing": cfg.grad_checkpointing,
                 "micro_batch_size": cfg.micro_batch_size, "base_dtype": cfg.base_dtype},
        moments=save_moments(opt, named) if moments is not None else None,
    )


@torch.no_grad()
def evaluate_loss(model: nn.Module, examples: Sequence[Example], batch_size: int = 8,
                  prefix_cache: PrefixCache | None = None) -> float:
    """Token-weighted mean loss of ``examples`` (targets only)."""
    was = model.training
    model.eval()
    start = prefix_cache.start if prefix_cache else model.shard.start
    tot, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        idx = list(range(i, min(i + batch_size, len(examples))))
        ids, labels = collate([examples[j] for j in idx])
        h = (prefix_cache.batch(model, examples, idx) if prefix_cache
             else hidden_in(model, ids, start))
        k = int((labels != IGNORE).sum())
        tot += float(loss_from(model, h, labels, start)) * k
        n += k
    model.train(was)
    return tot / max(n, 1)
