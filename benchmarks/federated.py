"""Federated LoRA with heterogeneous IoT clients on the bundled SmolLM2-135M.

8 simulated clients (embedded simulation: Flower ClientApps behind an in-process Grid) in
three memory tiers, non-IID homes (Dirichlet over (task, label) of the activity and
occupancy tasks), held-out = the task suite's balanced test splits (48 items). Compared in
one run: the base model, each client's local-only training, centralized LoRA on the union
of the data, federated LoRA with rank/layer-heterogeneous tiers aggregated by zero-pad and
by SVD redistribution, zero-pad with LoRA-FA (frozen shared A: exact update averaging), and
"everyone uses the smallest tier". Adapters sit on the top
blocks (``--region``); the frozen blocks below are computed once per example and cached.

    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/federated.py [--rounds 4]
    flock /tmp/edgeweave-cpu.lock .venv/bin/python benchmarks/federated.py --finetune-options
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit_result, host_info, print_table, run_child, write_json  # noqa: E402

from edgeweave.federated.config import LR_SCHEDULES, SERVER_OPTS, FedConfig  # noqa: E402
from edgeweave.federated.hetero import Tier  # noqa: E402
from edgeweave.federated.run import Evaluator, region_blocks, simulate  # noqa: E402
from edgeweave.finetune.config import OPTIMIZERS  # noqa: E402


def tiers(region_len: int) -> tuple[Tier, ...]:
    return (Tier("micro", 512, rank=2, window=max(1, region_len // 3)),
            Tier("edge", 2048, rank=4, window=max(1, 2 * region_len // 3)),
            Tier("gateway", 8192, rank=8, window=None))


def local_and_central(cfg: FedConfig, region: tuple[int, ...], steps: int, lr: float) -> dict:
    """Each client alone (its own tier share, same total steps) and centralized LoRA, all
    with AdamW at ``lr`` (one long run each: no fresh-optimizer-per-round issue)."""
    from edgeweave.federated.client import client_model, prefix_cache, shared_base
    from edgeweave.federated.hetero import tier_for
    from edgeweave.federated.tasks import cached_task
    from edgeweave.finetune.config import LoRAConfig, TrainConfig
    from edgeweave.finetune.lora import adapter_state
    from edgeweave.finetune.train import train

    data = cached_task(cfg.task, cfg.model, cfg.num_clients, cfg.seq_len, cfg.dirichlet_alpha,
                       cfg.seed)
    ev = Evaluator(cfg, region)
    base = shared_base(cfg.model, cfg.base_dtype)
    out = {"local": []}
    for pid, examples in enumerate(data.clients):
        tier = tier_for(cfg.memory_of(pid), cfg.tiers)
        # Local-only gets the client's rank on every region block (more than its window).
        lora = LoRAConfig(rank=tier.rank, alpha=cfg.scale * tier.rank, target_modules=cfg.targets,
                          layers=region, init_seed=cfg.seed)
        m = client_model(base, lora, cfg.base_dtype)
        cache = prefix_cache((cfg.model, cfg.base_dtype, cfg.task, pid, region[0]), region[0])
        t0 = time.perf_counter()
        train(m, examples, TrainConfig(steps=steps, lr=lr, batch_size=cfg.batch_size,
                                       micro_batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                                       seed=pid), prefix_cache=cache)
        res = ev.state(_pad_to(adapter_state(m), ev))
        out["local"].append({"client": pid, "tier": tier.name, "n_train": len(examples),
                             "seconds": time.perf_counter() - t0, **res})
    cache = _union_cache(cfg, region)
    out["central"] = centralized(cfg, region, steps, lr, ev=ev, cache=cache)
    # The same examples in as many sequential steps as the federation takes (rounds x local
    # steps, each on every client's batch at once): IID federated averaging at its best. The
    # gap between this and "central" is what fewer, larger steps cost; the gap between this
    # and the federation is what non-IID clients and heterogeneity cost.
    union, m = _central(cfg, region)
    t0 = time.perf_counter()
    wide = cfg.batch_size * cfg.num_clients
    train(m, union, TrainConfig(steps=steps, lr=lr, batch_size=wide,
                                micro_batch_size=math.gcd(wide, 8), seq_len=cfg.seq_len),
          prefix_cache=cache)
    out["central_parallel"] = {"steps": steps, "batch": wide,
                               "seconds": time.perf_counter() - t0,
                               **ev.state(_pad_to(adapter_state(m), ev))}
    return out


def centralized(cfg: FedConfig, region: tuple[int, ...], steps: int, lr: float,
                ev: Evaluator | None = None, cache=None) -> dict:
    """Centralized LoRA at the largest rank on the union of the homes' examples, with one
    AdamW at a constant ``lr``: the same number of example passes as the whole federation
    (clients x steps x batch), in batches of 8."""
    from edgeweave.finetune.config import TrainConfig
    from edgeweave.finetune.lora import adapter_state
    from edgeweave.finetune.train import train

    ev = ev or Evaluator(cfg, region)
    union, m = _central(cfg, region)
    central_steps = max(1, steps * cfg.num_clients * cfg.batch_size // 8)
    t0 = time.perf_counter()
    train(m, union, TrainConfig(steps=central_steps, lr=lr, batch_size=8,
                                micro_batch_size=8, seq_len=cfg.seq_len),
          prefix_cache=cache or _union_cache(cfg, region))
    return {"steps": central_steps, "batch": 8, "n_train": len(union), "lr": lr,
            "seconds": time.perf_counter() - t0, **ev.state(_pad_to(adapter_state(m), ev))}


# what the local-only and centralized baselines depend on (not the federated runs' options)
BASELINE_ARGS = ("model", "task", "clients", "region", "rounds", "local_steps", "batch",
                 "seq_len", "lr", "seed")


def reused_baselines(path: str, args: argparse.Namespace) -> dict:
    """The baselines of an earlier run, refused unless it used the same settings."""
    import json
    from pathlib import Path

    old = json.loads(Path(path).read_text())

    def setting(a: dict, k: str):  # the centralized rows train at --baseline-lr or --lr
        if k in ("lr", "baseline_lr"):
            return a.get("baseline_lr") or a.get("lr")
        return a.get(k, 0 if k == "seed" else None)  # older files ran at seed 0

    differ = [k for k in BASELINE_ARGS if setting(old["args"], k) != setting(vars(args), k)]
    if differ:
        raise SystemExit(f"{path} has other baseline settings ({', '.join(differ)}): "
                         "run without --baselines-from")
    return {"local": old["local"], "central": old["central"],
            "central_parallel": old["central_parallel"], "reused_from": path,
            # central_rounds follows the clients' lr schedule: reused only under the same one
            **({"central_rounds": old["central_rounds"]} if "central_rounds" in old and all(
                old["args"].get(k) == getattr(args, k) for k in ("lr", "lr_schedule", "lr_final"))
               else {})}


def central_rounds(cfg: FedConfig, region: tuple[int, ...]) -> dict:
    """The federation's shape with one IID client holding everyone's data: ``rounds`` x
    ``local_steps`` steps of every home's batch at once, a fresh AdamW each round at the
    clients' scheduled lr. Against ``central_parallel`` (one AdamW throughout, constant lr)
    it prices the optimizer restarts alone; against the federation, what splitting each
    step's batch over eight homes (and their skew and tiers) costs."""
    from edgeweave.finetune.config import TrainConfig
    from edgeweave.finetune.lora import adapter_state
    from edgeweave.finetune.train import train

    ev = Evaluator(cfg, region)
    union, m = _central(cfg, region)
    cache = _union_cache(cfg, region)
    wide = cfg.batch_size * cfg.num_clients
    t0, per_round = time.perf_counter(), []
    for r in range(1, cfg.rounds + 1):
        train(m, union, TrainConfig(steps=cfg.local_steps, lr=cfg.client_lr(r), batch_size=wide,
                                    micro_batch_size=math.gcd(wide, 8), seq_len=cfg.seq_len,
                                    seed=r), prefix_cache=cache)
        per_round.append(ev.state(_pad_to(adapter_state(m), ev)))
    return {"rounds": cfg.rounds, "steps": cfg.local_steps, "batch": wide,
            "seconds": time.perf_counter() - t0, **per_round[-1],
            "per_round_accuracy": [r["accuracy"] for r in per_round],
            "last3_mean": {k: float(np.mean([r[k] for r in per_round[-3:]]))
                           for k in ("loss", "accuracy")}}


def _central(cfg: FedConfig, region: tuple[int, ...]):
    """Every home's examples in one list and a fresh max-rank adapter on the region: what
    each centralized baseline starts from."""
    from edgeweave.federated.client import client_model, shared_base
    from edgeweave.federated.tasks import cached_task
    from edgeweave.finetune.config import LoRAConfig

    data = cached_task(cfg.task, cfg.model, cfg.num_clients, cfg.seq_len, cfg.dirichlet_alpha,
                       cfg.seed)
    lora = LoRAConfig(rank=cfg.max_rank, alpha=cfg.scale * cfg.max_rank,
                      target_modules=cfg.targets, layers=region, init_seed=cfg.seed)
    return ([e for c in data.clients for e in c],
            client_model(shared_base(cfg.model, cfg.base_dtype), lora, cfg.base_dtype))


def _union_cache(cfg: FedConfig, region: tuple[int, ...]):
    """One frozen-prefix cache over every client's examples (filled as batches need it)."""
    from edgeweave.federated.client import prefix_cache
    from edgeweave.finetune.train import PrefixCache

    cache = PrefixCache(region[0])
    for pid in range(cfg.num_clients):  # the clients' cached prefixes cover the union
        cache._h.update(prefix_cache((cfg.model, cfg.base_dtype, cfg.task, pid, region[0]),
                                     region[0])._h)
    return cache


def _pad_to(state: dict, ev: Evaluator) -> dict:
    """A rank-r adapter placed in the evaluator's max-rank layout (zero extra components)."""
    from edgeweave.finetune.lora import adapter_state

    ref = adapter_state(ev.model)
    out = {}
    for k, v in ref.items():
        z = torch.zeros_like(v)
        s = state[k]
        if ".lora_A." in k:
            z[:s.shape[0]] = s
        else:
            z[:, :s.shape[1]] = s
        out[k] = z.numpy()
    return out


def summarize(name: str, res: dict) -> dict:
    rounds = []
    for r in res["rounds"]:
        per_tier: dict[str, list] = {}
        for c in r["clients"]:
            per_tier.setdefault(c["tier"], []).append(c)
        rounds.append({
            "round": r["round"], "replied": r["replied"], "loss": r["eval"]["loss"],
            "accuracy": r["eval"]["accuracy"], "bytes_up": r["bytes_up"],
            "bytes_down": r["bytes_down"], "seconds": r["seconds"],
            "server_lr": r.get("server_lr", 1.0),  # FedExP's step; 1 = the plain average
            "max_client_bytes_fraction": max(c["bytes_up"] for c in r["clients"])
            / res["full_model_bytes"],
            "tiers": {t: {"clients": len(cs), "rank": cs[0]["rank"], "blocks": cs[0]["blocks"],
                          "peak_rss_mb": max(c["peak-rss-mb"] for c in cs),
                          "saved_act_mb": max(c["saved-act-mb"] for c in cs),
                          "trainable_params": cs[0]["trainable-params"],
                          "train_s": float(np.mean([c["train-s"] for c in cs]))}
                      for t, cs in sorted(per_tier.items())}})
    tail = rounds[-3:]  # non-IID runs swing from round to round: the last rounds' mean too
    last3 = {k: float(np.mean([r[k] for r in tail])) for k in ("loss", "accuracy")}
    return {"name": name, "initial": res["initial_eval"], "final": res["final_eval"],
            "last3_mean": last3,
            "rounds": rounds, "seconds": res["seconds"], "warmup": res.get("warmup"),
            "full_model_bytes": res["full_model_bytes"]}


def finetune_options(steps: int, seq_len: int, only: str = "", skip: str = "") -> None:
    """On-device LoRA memory options on the real model: peak memory and time per option.

    Each option runs in a fresh child process (``--option``): freed memory stays with the
    allocator, so in one process every later option looked smaller than it is.
    """
    from edgeweave.finetune.config import LoRAConfig, TrainConfig
    from edgeweave.finetune.run import OPTIONS, compare_options

    lora = LoRAConfig(rank=8, alpha=16, target_modules=("q_proj", "v_proj"))
    tcfg = TrainConfig(steps=steps, lr=1e-3, batch_size=4, micro_batch_size=4, seq_len=seq_len)
    if only:  # the child
        row = compare_options("smollm2-135m-instruct", "wiki", lora, tcfg, [only], limit=60)
        emit_result(row[only])
        return
    rows = {}
    for name in OPTIONS:
        if name in skip.split(","):
            continue
        got, proc = run_child([__file__, "--finetune-options", "--option", name])
        if got is None:
            print(f"{name}: failed\n{proc.stderr[-1000:]}")
            continue
        rows[name] = got
        print(f"{name}: {rows[name]}", flush=True)
    print_table(f"LoRA r8 q,v on all 30 blocks, batch 4 x {seq_len} tokens, {steps} steps",
                ["option", "peak RSS +MB", "saved act MB", "base MB", "trainable", "s/step",
                 "loss before", "loss after"],
                [[k, r["peak_rss_mb"], r["saved_activations_mb"], r["base_mb"],
                  r["trainable_params"], r["s_per_step"], r["eval_loss_before"],
                  r["eval_loss_after"]] for k, r in rows.items()])
    write_json("finetune_options", {"lora": lora.to_dict(), "train": tcfg.to_dict(),
                                    "options": rows})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--finetune-options", action="store_true",
                    help="only the on-device memory-option sweep (results/finetune_options.json)")
    ap.add_argument("--option", default="", help=argparse.SUPPRESS)  # one option, child mode
    ap.add_argument("--skip-options", default="", help="comma-separated options to leave out "
                    "(bf16_base takes ~2 min a step on CPUs without bf16 instructions)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--local-steps", type=int, default=4)
    ap.add_argument("--local-epochs", type=float, default=0.0,
                    help="E > 0: each home takes ceil(E * its examples / batch) steps a round "
                    "instead of --local-steps")
    ap.add_argument("--batch", type=int, default=4, help="examples per local step")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--region", default="24-30", help="blocks with adapters, half-open")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lr-schedule", default="constant", choices=tuple(LR_SCHEDULES),
                    help="client lr over the rounds (down to lr * --lr-final)")
    ap.add_argument("--lr-final", type=float, default=0.1)
    ap.add_argument("--server-opt", default="avg", choices=SERVER_OPTS)
    ap.add_argument("--server-lr", type=float, default=0.0, help="0 = the optimizer's default")
    ap.add_argument("--server-momentum", type=float, default=0.0)
    ap.add_argument("--proximal-mu", type=float, default=0.0)
    ap.add_argument("--client-opt", default="adamw", choices=OPTIMIZERS)
    ap.add_argument("--sgd-lr", type=float, default=1.0,
                    help="client lr of the *_sgd runs (SGD clients; gradients are clipped to "
                    "norm 1, so a step moves at most this far)")
    ap.add_argument("--avgm-momenta", default="0.5,0.8",
                    help="server momenta of the fed_pad_avgm runs (one run each, FedAvgM at "
                    "server lr 1)")
    ap.add_argument("--logit-adjust", type=float, default=2.0,
                    help="tau of the *_la runs (each home's label-prior logit adjustment; "
                    "2 measured best of 1 and 2 on seeds 0-2, and of 1-4 on seed 2)")
    ap.add_argument("--baseline-lr", type=float, default=0.0,
                    help="AdamW lr of the local-only and centralized runs (0 = --lr)")
    ap.add_argument("--central-lrs", default="",
                    help="comma-separated extra AdamW lrs for centralized LoRA (about 2 min "
                    "each); the best of them and --baseline-lr is the reference the "
                    "federated runs' accuracy gain is a fraction of")
    ap.add_argument("--baselines-from", default="",
                    help="reuse the local-only and centralized rows of an earlier results JSON "
                    "written with the same data, schedule and lr (they do not depend on the "
                    "federated runs; 10 of a 16-round command's minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default="fed_pad,fed_svd,fed_pad_fa,fed_smallest,fed_pad_scaffold,"
                    "fed_pad_synthetic,fed_pad_scaffold_synthetic,fed_pad_sgd,fed_pad_sgd_scaffold",
                    help="federated runs to compare (fed_pad is always run: the reference)")
    ap.add_argument("--out", default="federated")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="iot")
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0,
                    help="the homes' Dirichlet split and the adapters' initialization")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.finetune_options:
        finetune_options(steps=4, seq_len=128, only=args.option, skip=args.skip_options)
        return
    a, b = (int(x) for x in args.region.split("-"))
    region_len = b - a
    base = FedConfig(model=args.model, task=args.task, num_clients=args.clients,
                     rounds=args.rounds, local_steps=args.local_steps,
                     local_epochs=args.local_epochs,
                     lr=args.lr, lr_schedule=args.lr_schedule, lr_final=args.lr_final,
                     region=(a, b), tiers=tiers(region_len), seq_len=args.seq_len,
                     targets=("q_proj", "v_proj"), batch_size=args.batch, timeout_s=900,
                     server_opt=args.server_opt, server_lr=args.server_lr,
                     server_momentum=args.server_momentum, proximal_mu=args.proximal_mu,
                     client_optimizer=args.client_opt, seed=args.seed,
                     # the reference is plain FedAvg (a fresh AdamW every round, as in the
                     # rows measured before keep_optimizer became the default); the *_keep
                     # runs resume it
                     keep_optimizer=False)
    t_all = time.perf_counter()
    from edgeweave.federated.client import shared_base

    region = region_blocks(base, shared_base(base.model, base.base_dtype).cfg.num_layers)
    runs = {}
    wanted = set(args.runs.split(",")) | {"fed_pad"}
    momenta = args.avgm_momenta.split(",")
    if "fed_pad_avgm" in wanted:  # one run per momentum
        wanted |= {f"fed_pad_avgm{m}" for m in momenta}
    for name, cfg in [
        ("fed_pad", base),
        ("fed_svd", replace(base, aggregation="svd", server_opt="avg")),  # no server state
        ("fed_pad_fa", replace(base, freeze_a=True)),
        ("fed_smallest", replace(base, aggregation="fedavg", tiers=(tiers(region_len)[0],))),
        ("fed_pad_scaffold", replace(base, drift="scaffold")),
        # GPT-FL: the server warms the adapter on 8 synthetic windows per label first
        ("fed_pad_synthetic", replace(base, synthetic_per_label=8)),
        ("fed_pad_scaffold_synthetic", replace(base, drift="scaffold", synthetic_per_label=8)),
        # SCAFFOLD's analysis assumes SGD clients: with AdamW the per-coordinate scaling
        # rescales the correction ``c - c_i`` differently on every client
        ("fed_pad_sgd", replace(base, client_optimizer="sgd", lr=args.sgd_lr)),
        ("fed_pad_sgd_scaffold", replace(base, client_optimizer="sgd", lr=args.sgd_lr,
                                         drift="scaffold")),
        # a control, not a method: the same tiers on near-IID homes (every home holds about
        # the same label mix); what it leaves of the gap to centralized is not label skew
        ("fed_pad_iid", replace(base, dirichlet_alpha=1000.0)),
        # the other control: the same non-IID homes, all in the largest tier (rank 8 on every
        # region block); its gap to fed_pad is what rank tiers and windows cost
        ("fed_largest", replace(base, aggregation="fedavg", tiers=(tiers(region_len)[-1],))),
        # the IID control with kept optimizers: against central_parallel (the same 64 steps of
        # every home's batch in one process) it shows what federating costs without skew
        ("fed_pad_keep_iid", replace(base, keep_optimizer=True, dirichlet_alpha=1000.0)),
        # every client resumes its own AdamW state each round (a fresh AdamW's first steps
        # are sign-like: about lr on every coordinate, noise included)
        ("fed_pad_keep", replace(base, keep_optimizer=True)),
        ("fed_pad_keep_fedexp", replace(base, keep_optimizer=True, server_opt="fedexp")),
        ("fed_pad_keep_scaffold", replace(base, keep_optimizer=True, drift="scaffold")),
        ("fed_pad_keep_synthetic", replace(base, keep_optimizer=True, synthetic_per_label=8)),
        # logit adjustment by each home's own label prior (FedLC-style, against label skew)
        ("fed_pad_keep_la", replace(base, keep_optimizer=True, logit_adjust=args.logit_adjust)),
        ("fed_pad_la", replace(base, logit_adjust=args.logit_adjust)),
        # FedExP (Jhunjhunwala et al. 2023): the server steps further along the average
        # when the homes' updates disagree (their mean is shorter than they are)
        ("fed_pad_fedexp", replace(base, server_opt="fedexp")),
        ("fed_pad_fedexp_scaffold", replace(base, server_opt="fedexp", drift="scaffold")),
        # FedAvgM (Hsu et al. 2019, proposed for exactly this Dirichlet label skew): the
        # velocity keeps the direction the homes agree on round after round
        *[(f"fed_pad_avgm{m}", replace(base, server_opt="avgm", server_lr=1.0,
                                        server_momentum=float(m)))
          for m in momenta],
    ]:
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        runs[name] = summarize(name, simulate(cfg))
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    steps = args.rounds * args.local_steps
    lc = (reused_baselines(args.baselines_from, args) if args.baselines_from
          else local_and_central(base, region, steps, args.baseline_lr or args.lr))
    if "central_rounds" not in lc:  # older results files lack it
        lc["central_rounds"] = central_rounds(base, region)
    base_eval = runs["fed_pad"]["initial"]
    lc["central"].setdefault("lr", args.baseline_lr or args.lr)  # older results files lack it
    extra = [float(x) for x in args.central_lrs.split(",") if x]
    ev = Evaluator(base, region) if extra else None
    sweep = [lc["central"]] + [centralized(base, region, steps, x, ev=ev)
                               for x in extra if x != lc["central"]["lr"]]
    # the most demanding reference: centralized LoRA at its best lr (first on a tie)
    lc["central"] = max(sweep, key=lambda r: r["accuracy"])

    rows = [["base model", base_eval["loss"], base_eval["accuracy"], "-", "-"]]
    for r in sweep:
        ref = " (reference)" if r is lc["central"] else ""
        rows.append([f"centralized LoRA r8, lr {r['lr']:g}{ref}", r["loss"], r["accuracy"],
                     "-", "-"])
    cp = lc["central_parallel"]
    rows.append([f"centralized, {cp['steps']} steps x batch {cp['batch']} (IID fed. bound)",
                 cp["loss"], cp["accuracy"], "-", "-"])
    cr = lc["central_rounds"]
    rows.append([f"centralized, {cr['rounds']} rounds x {cr['steps']} steps x batch {cr['batch']}, "
                 f"fresh AdamW per round (last-3 {cr['last3_mean']['accuracy']:.2f})",
                 cr["loss"], cr["accuracy"], "-", "-"])
    for r in lc["local"]:
        rows.append([f"local-only client {r['client']} ({r['tier']}, n={r['n_train']})",
                     r["loss"], r["accuracy"], "-", "-"])
    for name, s in runs.items():
        last = s["rounds"][-1]
        rows.append([f"{name} (last-3 mean {s['last3_mean']['loss']:.2f} / "
                     f"{s['last3_mean']['accuracy']:.2f})", s["final"]["loss"], s["final"]["accuracy"],
                     last["bytes_up"] + last["bytes_down"], last["max_client_bytes_fraction"]])
    print_table("Held-out (activity + occupancy test splits, 48 items)",
                ["system", "loss", "accuracy", "bytes/round", "client up / full"], rows)
    for name, s in runs.items():
        print_table(f"{name} per round", ["round", "loss", "acc", "up B", "down B",
                                           "server step", "s"],
                    [[r["round"], r["loss"], r["accuracy"], r["bytes_up"], r["bytes_down"],
                      r["server_lr"], r["seconds"]] for r in s["rounds"]])
    tier_rows = [[t, v["rank"], v["blocks"], v["trainable_params"], v["saved_act_mb"],
                  v["peak_rss_mb"], v["train_s"]]
                 for t, v in runs["fed_pad"]["rounds"][-1]["tiers"].items()]
    print_table("Client tiers (fed_pad, last round)", ["tier", "rank", "blocks", "params",
                                                       "saved act MB", "peak RSS MB", "train s"],
                tier_rows)

    # every run but the one-tier ones and the IID control has rank-heterogeneous homes
    hetero = tuple(n for n in runs if n not in ("fed_smallest", "fed_largest", "fed_pad_iid"))
    best = min(hetero, key=lambda n: runs[n]["final"]["loss"])
    acc_gain = lc["central"]["accuracy"] - base_eval["accuracy"]
    per_run = {n: {"final_accuracy_gain_fraction": (runs[n]["final"]["accuracy"]
                                                    - base_eval["accuracy"]) / acc_gain
                   if acc_gain else None,
                   "last3_accuracy_gain_fraction": (runs[n]["last3_mean"]["accuracy"]
                                                    - base_eval["accuracy"]) / acc_gain
                   if acc_gain else None,
                   "accuracy_swing": float(np.std([r["accuracy"] for r in runs[n]["rounds"][-4:]]))}
               for n in runs}
    print_table("Accuracy gain as a fraction of centralized LoRA's (same run)",
                ["run", "final", "last-3 mean", "std last 4 rounds"],
                [[n, v["final_accuracy_gain_fraction"], v["last3_accuracy_gain_fraction"],
                  v["accuracy_swing"]] for n, v in per_run.items()])
    fed = runs[best]["final"]
    gain_c = base_eval["loss"] - lc["central"]["loss"]
    targets = {
        "best_hetero": best,
        "beats_base_loss": fed["loss"] < base_eval["loss"],
        "beats_every_local_loss": all(fed["loss"] < r["loss"] for r in lc["local"]),
        "beats_every_local_accuracy": all(fed["accuracy"] >= r["accuracy"] for r in lc["local"]),
        "hetero_beats_smallest_loss": {
            n: runs[n]["final"]["loss"] < runs["fed_smallest"]["final"]["loss"]
            for n in hetero} if "fed_smallest" in runs else None,
        "per_run": per_run,
        "fraction_of_central_loss_gain": (base_eval["loss"] - fed["loss"]) / gain_c if gain_c else None,
        "fraction_of_central_accuracy_gain": (
            (fed["accuracy"] - base_eval["accuracy"])
            / (lc["central"]["accuracy"] - base_eval["accuracy"])
            if lc["central"]["accuracy"] != base_eval["accuracy"] else None),
        "fraction_of_central_accuracy_gain_last3": (
            (runs[best]["last3_mean"]["accuracy"] - base_eval["accuracy"])
            / (lc["central"]["accuracy"] - base_eval["accuracy"])
            if lc["central"]["accuracy"] != base_eval["accuracy"] else None),
        "max_client_bytes_fraction": max(r["max_client_bytes_fraction"]
                                         for s in runs.values() for r in s["rounds"]),
    }
    targets["reaches_90pct_central"] = (targets["fraction_of_central_loss_gain"] or 0) >= 0.9
    targets["bytes_under_5pct"] = targets["max_client_bytes_fraction"] <= 0.05
    print("\nTargets:", targets)
    write_json(args.out, {"host": host_info(), "args": vars(args), "region": list(region),
                          "base": base_eval, "central": lc["central"],
                          "central_sweep": sweep,
                          "central_parallel": lc["central_parallel"], "local": lc["local"],
                          "central_rounds": lc["central_rounds"],
                          "baselines_reused_from": lc.get("reused_from"),
                          "runs": runs, "targets": targets,
                          "seconds": time.perf_counter() - t_all})


if __name__ == "__main__":
    main()
