"""Knowledge distillation into a shallower student (Hinton et al., 2015; layer-dropping init
as in DistilBERT): the student keeps ``student_layers`` evenly spaced teacher blocks plus the
embedding, final norm and head, then trains on the calibration text to match the teacher's
temperature-softened next-token distribution (``loss="kd"``) or, as the baseline, the text's
own next tokens (``loss="ce"``; same steps, same batches).

Progress (step, recent loss, seconds a step, time left) is logged about ten times a run at
INFO (``edgeweave compress`` prints it): a student of the bundled model trains for minutes.

Training checkpoints (student, optimizer, step) are written atomically every
``checkpoint_every`` steps under the work folder, keyed by recipe + source + data, and a later
run resumes from them; the checkpoint is removed once the student is finished.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeweave.compress.recipes import Distill, register_method
from edgeweave.errors import CheckpointError, ConfigError
from edgeweave.models.llama import BlockModel
from edgeweave.paths import atomic_write_bytes

log = logging.getLogger(__name__)


def pick_layers(n_teacher: int, n_student: int) -> list[int]:
    if n_student == 1:
        return [0]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def init_student(teacher: BlockModel, n_layers: int) -> BlockModel:
    if n_layers >= teacher.cfg.num_layers:
        raise ConfigError(f"student_layers={n_layers} must be below the teacher's "
                          f"{teacher.cfg.num_layers} blocks")
    picked = pick_layers(teacher.cfg.num_layers, n_layers)
    cfg = teacher.cfg.subset(picked)  # Gemma 3: each student block keeps its attention kind
    student = BlockModel(cfg)
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("layers.")}
    for j, i in enumerate(picked):
        for k, v in teacher.layers[str(i)].state_dict().items():
            state[f"layers.{j}.{k}"] = v
    student.load_state_dict({k: v.clone() for k, v in state.items()}, strict=False)
    if cfg.tie_word_embeddings:
        student.lm_head.weight = student.embed_tokens.weight
    return student


def _batch(ids: torch.Tensor, step: int, r: Distill) -> torch.Tensor:
    g = torch.Generator().manual_seed(r.seed * 1_000_003 + step)  # same batches on resume
    return ids[torch.randint(0, ids.shape[0], (r.batch,), generator=g)]


def loss_fn(r: Distill, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
            x: torch.Tensor) -> torch.Tensor:
    if r.loss == "ce":
        return F.cross_entropy(student_logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    t = r.temperature
    p = F.log_softmax(teacher_logits / t, -1)
    q = F.log_softmax(student_logits / t, -1)
    return F.kl_div(q.flatten(0, 1), p.flatten(0, 1), log_target=True,
                    reduction="batchmean") * t * t


def checkpoint_path(work_dir: Path, r: Distill, source: str, ids: torch.Tensor) -> Path:
    key = json.dumps([r.to_dict(), source, list(ids.shape), int(ids.sum())], sort_keys=True)
    return Path(work_dir) / f"distill-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def train_student(teacher: BlockModel, r: Distill, ids: torch.Tensor, ckpt: Path,
                  stop_after: int | None = None) -> tuple[BlockModel, dict[str, Any]]:
    """Train (or resume) the student; ``stop_after`` ends this call early (tests, budgets)."""
    student = init_student(teacher, r.student_layers).train()
    student.requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=r.lr, weight_decay=0.0)
    start, losses = 0, []
    if ckpt.is_file():
        try:
            saved = torch.load(ckpt, weights_only=False)
            student.load_state_dict(saved["student"])
            opt.load_state_dict(saved["optimizer"])
            start, losses = saved["step"], saved["losses"]
        except Exception as e:  # a damaged checkpoint would otherwise block every retry
            raise CheckpointError(f"cannot resume from {ckpt} ({e}): delete it to restart") from e
    teacher.eval()
    t0 = time.perf_counter()
    with torch.enable_grad():
        for step in range(start, r.steps):
            if stop_after is not None and step - start >= stop_after:
                break
            x = _batch(ids, step, r)
            with torch.no_grad():
                tl = teacher(x) if r.loss == "kd" else None
            loss = loss_fn(r, student(x), tl, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            done = step + 1
            if done % max(1, r.steps // 10) == 0 or done == r.steps:
                per = (time.perf_counter() - t0) / (done - start)
                recent = losses[-10:]
                log.info("distill: step %d/%d, loss %.3f (mean of the last %d), %.1f s a step, "
                         "about %.0f s left", done, r.steps, sum(recent) / len(recent),
                         len(recent), per, per * (r.steps - done))
            if done % r.checkpoint_every == 0 and done < r.steps:
                buf = io.BytesIO()
                torch.save({"student": student.state_dict(), "optimizer": opt.state_dict(),
                            "step": done, "losses": losses}, buf)
                atomic_write_bytes(ckpt, buf.getvalue())
    student.eval().requires_grad_(False)
    info = {"steps_done": len(losses), "resumed_from": start,
            "loss_first": losses[0] if losses else None,
            "loss_last": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "train_seconds": round(time.perf_counter() - t0, 1),
            "teacher_layers_kept": pick_layers(teacher.cfg.num_layers, r.student_layers)}
    return student, info


@register_method(Distill)
def apply_distill(r: Distill, model: BlockModel, ctx: Any, note: dict[str, Any]) -> nn.Module:
    ids = ctx.require_calib("distill")
    ckpt = checkpoint_path(ctx.work_dir, r, ctx.source_fingerprint, ids)
    teacher = copy.deepcopy(model)
    student, info = train_student(teacher, r, ids, ckpt)
    if info["steps_done"] >= r.steps:
        ckpt.unlink(missing_ok=True)
    note.update(info)
    return student
