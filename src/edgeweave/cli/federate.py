"""``edgeweave federate``: federated LoRA on Flower, embedded simulation by default,
``--deploy`` for a SuperLink + SuperNodes on loopback with TLS and node authentication."""

from __future__ import annotations

import typer

from edgeweave.cli.common import console, table
from edgeweave.models.catalog import DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    @app.command("federate")
    def federate_cmd(
        model: str = typer.Option(DEFAULT_MODEL, help="Model name, HF folder or .gguf."),
        task: str = typer.Option("iot", help="iot (activity + occupancy homes) or pattern."),
        clients: int = typer.Option(8, help="Number of clients (SuperNodes with --deploy)."),
        rounds: int = typer.Option(4),
        aggregation: str = typer.Option("pad", help="fedavg, pad (zero-pad/truncate) or svd."),
        server_opt: str = typer.Option("avg", help="avg (FedAvg/FedProx), adam (FedAdam), "
                                       "avgm (FedAvgM: server momentum) or fedexp (FedExP: "
                                       "an extrapolated server step)."),
        server_lr: float = typer.Option(0.0, help="Server learning rate (0 = the optimizer's "
                                        "default: adam 1e-3, avgm 1)."),
        server_momentum: float = typer.Option(0.0, help="avgm momentum / adam beta1 "
                                              "(0 = default 0.9)."),
        proximal_mu: float = typer.Option(0.0, help="FedProx proximal term (0 = off)."),
        client_opt: str = typer.Option("adamw", help="Local optimizer: adamw or sgd."),
        keep_optimizer: bool = typer.Option(True, "--keep-optimizer/--fresh-optimizer",
                                            help="Each client resumes its own optimizer state "
                                            "(AdamW moments) every round, kept in Flower's "
                                            "context.state; --fresh-optimizer restarts it."),
        local_steps: int = typer.Option(4), lr: float = typer.Option(3e-3),
        local_epochs: float = typer.Option(0.0, help="E > 0: each home takes ceil(E * its "
                                           "examples / batch) steps a round instead of "
                                           "--local-steps (FedAvg's E local epochs)."),
        lr_schedule: str = typer.Option("constant", help="Client lr over the rounds: "
                                        "constant, linear or cosine (down to lr * lr-final)."),
        lr_final: float = typer.Option(0.1, help="Last round's client lr as a fraction of lr."),
        region: str = typer.Option("", help="Blocks with adapters, half-open 'start-end'."),
        targets: str = typer.Option("q_proj,v_proj"),
        freeze_a: bool = typer.Option(False, "--freeze-a", help="LoRA-FA: clients train only "
                                      "B on a shared frozen A (exact update averaging)."),
        drift: str = typer.Option("none", help="Client-drift correction: none or scaffold "
                                  "(SCAFFOLD control variates; client state in Flower's "
                                  "context.state)."),
        logit_adjust: float = typer.Option(0.0, help="Against label skew: each home trains "
                                           "on its logits plus tau * log(K * its own label "
                                           "prior) (logit adjustment, as in FedLC); tau "
                                           "in [0, 4], 0 = off; task iot."),
        synthetic: int = typer.Option(0, help="GPT-FL warm-up: synthetic examples per label the "
                                      "base model writes, trained on by the server before "
                                      "round 1 (0 = off; task iot)."),
        dp_clip: float = typer.Option(0.0, help="Client-side DP (Flower LocalDpMod) clip norm."),
        dp_epsilon: float = typer.Option(1.0),
        deploy: bool = typer.Option(False, help="Run SuperLink + SuperNodes as processes."),
        workdir: str = typer.Option("", help="Deployment folder (certs, keys, logs)."),
        out: str = typer.Option("", help="Write the per-round results JSON here."),
        adapter_out: str = typer.Option("", help="Write the final global adapter folder here "
                                        "(serve it with `edgeweave serve --adapter NAME=DIR`)."),
    ) -> None:
        """Federated LoRA for heterogeneous clients (rank tiers + rolling block windows)."""
        import json
        import tempfile
        from pathlib import Path

        from edgeweave.federated.config import FedConfig
        from edgeweave.federated.run import simulate
        from edgeweave.paths import atomic_write_json

        reg = None
        if region:
            a, _, b = region.partition("-")
            reg = (int(a), int(b))
        cfg = FedConfig(model=model, task=task, num_clients=clients, rounds=rounds,
                        aggregation=aggregation, server_opt=server_opt, proximal_mu=proximal_mu,
                        server_lr=server_lr, server_momentum=server_momentum,
                        client_optimizer=client_opt, keep_optimizer=keep_optimizer,
                        local_steps=local_steps, local_epochs=local_epochs, lr=lr,
                        lr_schedule=lr_schedule,
                        lr_final=lr_final, region=reg,
                        targets=tuple(targets.split(",")), freeze_a=freeze_a, drift=drift,
                        logit_adjust=logit_adjust, synthetic_per_label=synthetic, dp_clip=dp_clip,
                        dp_epsilon=dp_epsilon, probe=not deploy)
        if deploy:
            from edgeweave.federated.deploy import Deployment

            wd = Path(workdir or tempfile.mkdtemp(prefix="edgeweave-fl-"))
            nodes = {f"node{i}": {"partition-id": i, "memory-mb": cfg.memory_of(i)}
                     for i in range(clients)}
            with Deployment(wd, cfg, nodes) as dep:
                res = dep.run(Path(out) if out else wd / "result.json", timeout=3600,
                              evaluate=True, adapter_out=Path(adapter_out) if adapter_out else None)
            console.print(f"deployment folder (certs, keys, logs): {wd}")
        else:
            res = simulate(cfg)
            final = res.pop("final_arrays", None)
            res.pop("final_control", None)
            if adapter_out and final is not None:
                from edgeweave.federated.run import save_global_adapter

                save_global_adapter(cfg, res["region"], final, adapter_out,
                                    {"final_eval": res.get("final_eval")})
                console.print(f"adapter: {adapter_out}")
            if out:
                atomic_write_json(out, res)
        rows = [[r["round"], r["replied"], r["sent"],
                 f"{r['eval']['loss']:.3f}" if r.get("eval") else "-",
                 f"{r['eval']['accuracy']:.3f}" if r.get("eval") else "-",
                 r["bytes_up"], r["bytes_down"], f"{r['seconds']:.1f}"] for r in res["rounds"]]
        console.print(table("Federated rounds", ["round", "replied", "sent", "loss", "accuracy",
                                                 "bytes up", "bytes down", "s"], rows))
        if res.get("initial_eval"):
            console.print(f"base model: {json.dumps(res['initial_eval'])}")
