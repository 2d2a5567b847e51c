"""``edgeweave profile``: measure this host (cached) and show the device catalog."""

from __future__ import annotations

import typer

from edgeweave.cli.common import console, table


def run_profile(refresh: bool = False, model: str | None = None, with_model: bool = True,
                threads: int | None = None) -> dict:
    """Probe the host (cached) and predict the model's decode latency on every device class."""
    from edgeweave.profile import catalog, probe
    from edgeweave.profile import cost as C
    from edgeweave.profile.model_costs import model_costs
    from edgeweave.profile.variants import DEFAULT_VARIANTS

    hp = probe.probe(refresh=refresh, model=model, with_model=with_model, threads=threads)
    cal = hp.calibration()
    m = model_costs(model, prompt_len=hp.model_timing.get("prompt_len", 128),
                    context=hp.model_timing.get("context", 512)) if with_model else None
    out = {"host": hp, "calibration": cal, "model": m, "rows": []}
    for dev in [hp.device(), *catalog.devices().values()]:
        row = [dev.name, dev.tier, f"{dev.memory / 1e9:.2f}", f"{dev.mem_bw / 1e9:.3g}",
               f"{dev.ops_per_s('fp32') / 1e9:.3g}", f"{dev.ops_per_s('int8') / 1e9:.3g}",
               f"{dev.power_idle_w:g}/{dev.power_active_w:g}",
               "-" if dev.battery_wh is None else f"{dev.battery_wh:g}"]
        if m is not None:
            row += [f"{C.decode_token_s(m, dev, DEFAULT_VARIANTS[v], cal) * 1e3:.1f}"
                    for v in ("fp32", "int8", "int4")]
        out["rows"].append(row)
    return out


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_cmd(
        refresh: bool = typer.Option(False, "--refresh", help="Measure again (else cached)."),
        model: str = typer.Option(None, "--model", help="Model to time (default: bundled)."),
        no_model: bool = typer.Option(False, "--no-model", help="Skip the model timing."),
        threads: int = typer.Option(None, "--threads",
                                    help="Threads while measuring (default: torch's setting; "
                                         "1 is the stable choice on a busy machine)."),
    ) -> None:
        """Measure this host (bandwidth, matmul rates, per-block latency) and list devices."""
        from edgeweave.profile import cost as C
        from edgeweave.profile import probe
        from edgeweave.profile.variants import DEFAULT_VARIANTS

        r = run_profile(refresh, model, not no_model, threads)
        hp, cal = r["host"], r["calibration"]
        console.print(f"host {hp.machine}: {hp.cpus} CPUs ({hp.threads or '?'} threads used), "
                      f"{hp.memory_available / 1e9:.1f} GB free, copy bandwidth "
                      f"{hp.mem_bw / 1e9:.1f} GB/s, decode GEMV "
                      f"{hp.gemv_bw / 1e9:.1f} GB/s (calibration {cal.bw_efficiency:.2f}), "
                      f"operator overhead {hp.op_overhead_s * 1e6:.1f} us; matmul "
                      + ", ".join(f"{k} {v / 1e9:.1f} GOPS" for k, v in hp.matmul.items())
                      + f" [cache: {probe.cache_path()}]")
        mt = hp.model_timing
        if mt and r["model"] is not None:
            pred = C.decode_token_s(r["model"], hp.device(), DEFAULT_VARIANTS["fp32"], cal)
            console.print(
                f"{mt['model']}: measured decode {mt['decode_token_s'] * 1e3:.1f} ms/token "
                f"(blocks {sum(mt['block_decode_s']) * 1e3:.1f} ms, prefill of "
                f"{mt['prompt_len']} tokens {mt['prefill_s'] * 1e3:.0f} ms); cost model "
                f"predicts {pred * 1e3:.1f} ms/token (ratio {pred / mt['decode_token_s']:.2f})")
        cols = ["class", "tier", "mem GB", "bw GB/s", "fp32 GOPS", "int8 GOPS", "W idle/act",
                "battery Wh"]
        if r["model"] is not None:
            cols += ["fp32 ms/tok", "int8 ms/tok", "int4 ms/tok"]
        console.print(table("Device classes (predicted decode of "
                            f"{r['model'].name if r['model'] else '-'})", cols, r["rows"]))
