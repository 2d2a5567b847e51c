"""``edgeweave plan``: the optimal placement of a model on a fleet file, with baselines."""

from __future__ import annotations

import json

import typer

from edgeweave.cli.common import (
    console,
    discover_option,
    hidden_states_option,
    keep_in_option,
    max_cost_option,
    mdns_interface_option,
    mqtt_ca_option,
    mqtt_password_file_option,
    mqtt_user_option,
    table,
)
from edgeweave.errors import ConfigError
from edgeweave.plan.speculation import DRAFT_VARIANT


def run_plan(fleet: str, objective: str = "latency", model: str | None = None,
             baseline: str | None = None, min_quality: float = 0.0,
             battery_reserve: float = 0.2, prompt_len: int = 128, context: int = 512,
             batch: int = 1, keep_in: str | None = None, hidden_states: bool | None = None,
             max_cost: float | None = None) -> dict:
    """Plan (and optionally baselines) for a fleet file; host-calibrated when profiled."""
    from edgeweave.plan.baselines import BASELINES, baseline_tables
    from edgeweave.plan.fleet import load_fleet, with_policy
    from edgeweave.plan.partition import place_tables, tables_for
    from edgeweave.plan.tables import Constraints
    from edgeweave.profile import probe
    from edgeweave.profile.cost import UNCALIBRATED, check_shape
    from edgeweave.profile.model_costs import model_costs

    Constraints(min_quality, battery_reserve)  # refuse bad values before any file is read
    check_shape(prompt_len, context, batch)
    spec = load_fleet(fleet)
    the_fleet = with_policy(spec.fleet, keep_in, hidden_states, max_cost)
    hp = probe.load_cached()
    cal = hp.calibration() if hp else UNCALIBRATED
    t = tables_for(model_costs(model, prompt_len, context, batch), the_fleet,
                   variants=spec.variants, min_quality=min_quality,
                   battery_reserve=battery_reserve, calibration=cal)
    plans = {"planner": place_tables(t, objective)}
    names = list(BASELINES) if baseline == "all" else [baseline] if baseline else []
    for b in names:
        plans[b] = baseline_tables(t, b, objective)
    return {"fleet": the_fleet.name, "model": t.model.name, "calibration": cal.source,
            "plans": plans, "tables": t, "cal": cal}


def run_plan_mqtt(mqtt: str | None, fleet_file: str | None = None, objective: str = "latency",
                  model: str | None = None, fleet_name: str | None = None,
                  tls_dir: str | None = None, min_nodes: int = 1, wait_s: float = 10.0,
                  keep_in: str | None = None, hidden_states: bool | None = None,
                  max_cost: float | None = None, auth: object = None,
                  mdns: object = None) -> dict:
    """The plan ``edgeweave serve --mqtt`` would choose for the nodes announced now."""
    from edgeweave.control.assemble import DiscoveryOptions
    from edgeweave.control.snapshot import discover_plan
    from edgeweave.models.catalog import DEFAULT_MODEL
    from edgeweave.serve.deploy import PolicyOptions

    r = discover_plan(model or DEFAULT_MODEL, mqtt, fleet=fleet_name, fleet_file=fleet_file,
                      tls_dir=tls_dir, objective=objective,
                      policy=PolicyOptions(keep_in, hidden_states, max_cost),
                      options=DiscoveryOptions(min_nodes, wait_s), auth=auth,  # type: ignore[arg-type]
                      mdns=mdns)
    return {"fleet": r.discovered.fleet.name, "model": model or DEFAULT_MODEL,
            "calibration": "announced figures", "plans": {"planner": r.plan},
            "tables": None, "notes": r.discovered.notes, "rejected": r.rejected,
            "members": r.members}


# The options of `edgeweave plan`, by concept: where the fleet comes from (a file, or the
# nodes announced on a broker), what to plan for, and what to print or write.
_FLEET = typer.Option(None, "--fleet", help="Fleet YAML (see examples/fleets); "
                      "with --mqtt it adds links, zones, policy, pinned classes.")
_MQTT = typer.Option(None, "--mqtt", help="HOST:PORT of the fleet's broker: plan "
                     "on the nodes announced there now (what `serve --mqtt` "
                     "would serve).")
_FLEET_NAME = typer.Option(None, "--fleet-name", help="With --mqtt: the fleet's "
                           "name on the broker (default: the file's, or default).")
_TLS_DIR = typer.Option(None, "--tls-dir", help="With --mqtt: the fleet CA; nodes "
                        "whose certificate it did not sign are left out.")
_MIN_NODES = typer.Option(1, "--min-nodes", help="With --mqtt: nodes to wait for.")
_DISCOVER_WAIT = typer.Option(10.0, "--discover-wait",
                              help="With --mqtt: seconds to wait for them.")

_OBJECTIVE = typer.Option("latency", "--objective",
                          help="latency | ttft | energy | throughput | cost")
_BASELINE = typer.Option(None, "--baseline",
                         help="Also show a baseline: memory | neurosurgeon | "
                              "single | cloud | all")
_MODEL = typer.Option(None, "--model",
                      help="Model: bundled, HF folder, .gguf, or a plan-only card "
                           "(edgeweave models), e.g. llama-3.1-8b.")
_MIN_QUALITY = typer.Option(0.0, "--min-quality",
                            help="Minimum quality kept (0..1) per variant.")
_BATTERY_RESERVE = typer.Option(0.2, "--battery-reserve")
_PROMPT_LEN = typer.Option(128, "--prompt-len", help="Prompt tokens (prefill).")
_CONTEXT = typer.Option(512, "--context", help="Tokens of KV cache per sequence (memory).")
_BATCH = typer.Option(1, "--batch", help="Sequences decoded together.")

_OUT = typer.Option(None, "--out", help="Write the plan as JSON to this file "
                    "(serve --plan reads it).")
_EXPLAIN = typer.Option(False, "--explain",
                        help="Say what the policy excluded and each stage's "
                             "memory.")
_JSON = typer.Option(False, "--json", help="Print plans as JSON.")
_DRAFT_ACCEPTANCE = typer.Option(None, "--draft-acceptance",
                                 help="Predict speculative decoding: the share (0, 1] of "
                                      "draft tokens the model accepts, e.g. 0.7.")
_DRAFT_TOKEN_MS = typer.Option(None, "--draft-token-ms",
                               help="With --draft-acceptance: the draft's ms per token on "
                                    "the fleet's entry device (default: the cost model's "
                                    "estimate of --draft-variant).")
_DRAFT_VARIANT = typer.Option(DRAFT_VARIANT, "--draft-variant",
                              help="With --draft-acceptance: the variant of the model the "
                                   "cost model prices as the draft (int4, int8, ...).")


def plan_cmd(
    fleet: str = _FLEET, mqtt: str = _MQTT, fleet_name: str = _FLEET_NAME,
    tls_dir: str = _TLS_DIR, min_nodes: int = _MIN_NODES, discover_wait: float = _DISCOVER_WAIT,
    out: str = _OUT,
    mqtt_user: str = mqtt_user_option(), mqtt_password_file: str = mqtt_password_file_option(),
    mqtt_ca: str = mqtt_ca_option(),
    discover: str = discover_option(), mdns_interface: list[str] = mdns_interface_option(),
    objective: str = _OBJECTIVE, baseline: str = _BASELINE, model: str = _MODEL,
    min_quality: float = _MIN_QUALITY, battery_reserve: float = _BATTERY_RESERVE,
    prompt_len: int = _PROMPT_LEN, context: int = _CONTEXT, batch: int = _BATCH,
    keep_in: str = keep_in_option(), hidden_states: bool = hidden_states_option(),
    max_cost: float = max_cost_option(),
    show_explain: bool = _EXPLAIN, as_json: bool = _JSON,
    draft_acceptance: float = _DRAFT_ACCEPTANCE, draft_token_ms: float = _DRAFT_TOKEN_MS,
    draft_variant: str = _DRAFT_VARIANT,
) -> None:
    """Place the model's blocks on a fleet minimising an objective; print the breakdown."""
    from edgeweave.control.mdns import mdns_choice

    check_speculation_options(draft_acceptance, draft_token_ms)  # before any planning
    mdns = mdns_choice(discover, mqtt, mdns_interface)  # --discover mdns: the LAN
    if mqtt or mdns is not None:
        if baseline or show_explain:
            raise ConfigError("--baseline and --explain work on a fleet file: drop them "
                              "with --mqtt (or plan on --fleet FILE alone)")
        r = _plan_on_broker(mqtt, fleet, objective, model, fleet_name, tls_dir, min_nodes,
                            discover_wait, keep_in, hidden_states, max_cost,
                            (mqtt_user, mqtt_password_file, mqtt_ca), mdns)
    elif fleet is None:
        raise ConfigError("edgeweave plan needs --fleet FILE or --mqtt HOST:PORT (the "
                          "nodes announced on a broker) or --discover mdns")
    else:
        r = run_plan(fleet, objective, model, baseline, min_quality, battery_reserve,
                     prompt_len, context, batch, keep_in, hidden_states, max_cost)
    if out:
        from edgeweave.paths import atomic_write_json

        atomic_write_json(out, {"plan": r["plans"]["planner"].to_dict()})
        console.print(f"plan written to {out}")
    spec = (predict_speculation(r, draft_acceptance, draft_token_ms, draft_variant)
            if draft_acceptance is not None else None)
    if as_json:
        doc = {k: p.to_dict() for k, p in r["plans"].items()}
        console.print_json(json.dumps(doc if spec is None else {**doc, "speculation": spec}))
        return
    _print_plans(r, objective)
    if spec is not None:
        console.print(speculation_line(spec), highlight=False)
    _print_notes(r, show_explain)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)


def _plan_on_broker(mqtt: str | None, fleet: str | None, objective: str, model: str | None,
                    fleet_name: str | None, tls_dir: str | None, min_nodes: int,
                    discover_wait: float, keep_in: str | None, hidden_states: bool | None,
                    max_cost: float | None, login: tuple[str | None, str | None, str | None],
                    mdns: object = None) -> dict:
    """:func:`run_plan_mqtt` with the broker login from the options; prints the nodes."""
    from edgeweave.control.client import BrokerAuth

    r = run_plan_mqtt(mqtt, fleet, objective, model, fleet_name, tls_dir, min_nodes,
                      discover_wait, keep_in, hidden_states, max_cost,
                      BrokerAuth.from_options(*login), mdns)
    for d, why in sorted(r["rejected"].items()):
        console.print(f"- ignored {d}: {why}")
    console.print(table("Nodes", ["device", "address", "class", "zone", "variants"],
                        [(d, a.address, a.device_class or "measured", a.zone or "-",
                          ",".join(a.variants)) for d, a in sorted(r["members"].items())]))
    return r


def _print_plans(r: dict, objective: str) -> None:
    """The chosen plan's stages, then the predicted costs of it and every baseline."""
    best = r["plans"]["planner"]
    console.print(f"fleet {r['fleet']}, model {r['model']}, objective {objective} "
                  f"({r['calibration']})")
    console.print(table("Plan", ["stage", "device", "blocks", "variant", "codec out"],
                        [(k, s.device, str(s.shard), s.variant,
                          s.codec if k + 1 < len(best.stages) else "-")
                         for k, s in enumerate(best.stages)]))
    rows = []
    for name, p in r["plans"].items():
        q = p.predicted
        rows.append((name, len(p.stages), f"{q['per_token_s'] * 1e3:.3g}",
                     f"{q['ttft_s'] * 1e3:.3g}", f"{q['energy_per_token_j'] * 1e3:.3g}",
                     f"{q['throughput_tps']:.3g}", f"{q['compute_s'] * 1e3:.3g}",
                     f"{q['transfer_s'] * 1e3:.3g}", f"{q['max_memory_util']:.0%}",
                     f"{q['cost_per_mtok']:.3g}", f"{q['quality']:.3f}",
                     "yes" if q["feasible"] else "NO"))
    console.print(table("Predicted cost (ms, mJ per token; tok/s when pipelined; price "
                        "per million tokens)",
                        ["plan", "st", "ms/tok", "TTFT", "mJ/tok", "tok/s", "comp",
                         "xfer", "mem", "$/Mtok", "qual", "ok"], rows))


def check_speculation_options(alpha: float | None, draft_ms: float | None) -> None:
    """Refuse bad --draft-acceptance / --draft-token-ms values before any planning."""
    from edgeweave.validate import is_number

    if alpha is None:
        if draft_ms is not None:
            raise ConfigError("--draft-token-ms prices a draft only with --draft-acceptance A "
                              "(the share of draft tokens accepted, e.g. 0.7): add it")
        return
    if not (is_number(alpha) and 0 < alpha <= 1):
        raise ConfigError(f"--draft-acceptance must be in (0, 1] (got {alpha!r}): the share "
                          "of draft tokens the model accepts, e.g. 0.7")
    if draft_ms is not None and not (is_number(draft_ms) and draft_ms > 0):
        raise ConfigError(f"--draft-token-ms must be a number of milliseconds > 0 (got "
                          f"{draft_ms!r}): the draft's time per token, e.g. 5.5")


def predict_speculation(r: dict, alpha: float, draft_ms: float | None = None,
                        draft_variant: str = DRAFT_VARIANT) -> dict:
    """What speculative decoding would do on the chosen plan (``plan.speculation``), the
    draft and the coordinator on the fleet's entry: the best k (0: off), its predicted
    speed-up and the figures behind it, in milliseconds."""
    from edgeweave.plan.speculation import best_k, draft_estimate, plan_costs

    check_speculation_options(alpha, draft_ms)
    t, plan = r.get("tables"), r["plans"]["planner"]
    if t is None:
        raise ConfigError("--draft-acceptance prices speculation with a fleet file's cost "
                          "tables, which a plan of announced nodes lacks: plan on --fleet FILE "
                          "(without --mqtt / --discover) to see the prediction")
    est = draft_estimate(t, r.get("cal"), draft_variant) if draft_ms is None else None
    draft_s = draft_ms / 1e3 if est is None else est.token_s
    costs = plan_costs(plan, t, draft_s)
    c = best_k(alpha, costs)
    return {"k": c.k, "speedup": c.speedup, "tokens_per_s": c.tokens_per_s,
            "best_k": c.considered_k, "best_speedup": c.considered_speedup, "alpha": alpha,
            "draft_ms": draft_s * 1e3, "draft_estimated": est is not None,
            "draft_variant": est.variant if est is not None else None,
            "draft_device": t.fleet.entry, "draft_fits": est is None or est.fits,
            "verify_ms": costs.verify_token_s * 1e3,
            "verify_extra_ms": costs.verify_extra_token_s * 1e3, "rtt_ms": costs.rtt_s * 1e3}


def speculation_line(spec: dict) -> str:
    """One line: ``speculation: k=5 predicted 2.1x (alpha 0.80, rtt 20.0 ms, draft ...)``."""
    draft = f"draft {spec['draft_ms']:.3g} ms/token"
    if spec["draft_estimated"]:
        draft += f" {spec['draft_variant']} est. on {spec['draft_device']}"
    if not spec["draft_fits"]:
        draft += ", which does not fit its memory"
    why = f"alpha {spec['alpha']:.2f}, rtt {spec['rtt_ms']:.1f} ms, {draft}"
    if spec["k"]:
        return f"speculation: k={spec['k']} predicted {spec['speedup']:.2f}x ({why})"
    return (f"speculation: off (predicted {spec['best_speedup']:.2f}x at best "
            f"k={spec['best_k']}; {why})")


def _print_notes(r: dict, show_explain: bool) -> None:
    """With --explain, what the policy excluded and each stage's memory; then the plan's and
    the discovery's notes."""
    best = r["plans"]["planner"]
    if show_explain:
        from edgeweave.plan.explain import explain

        for line in explain(r["tables"], best):
            if line not in best.notes:
                console.print(f"- {line}")
    for n in (*best.notes, *r.get("notes", ())):
        console.print(f"- {n}")
