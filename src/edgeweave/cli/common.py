"""Small helpers shared by CLI verbs (tables, metric formatting)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


def metrics_line(m: Any) -> str:
    return (f"prompt {m.prompt_tokens} tok · generated {m.generated_tokens} tok · "
            f"TTFT {m.ttft_s * 1000:.0f} ms · prefill {m.prefill_tps:.0f} tok/s · "
            f"decode {m.decode_tps:.1f} tok/s · peak RSS {m.peak_rss_mb:.0f} MB")


# The engine options of every verb that runs the model: one definition, one help text.
def backend_option() -> Any:
    import typer

    return typer.Option("", "--backend", help="onnx (default: ONNX Runtime) or torch (the "
                        "reference).")


def batch_invariant_option() -> Any:
    import typer

    return typer.Option(False, "--batch-invariant", help="A request's tokens do not depend on "
                        "what else runs: a lone decode step takes the kernels a batch takes "
                        "(ONNX backend; a single stream decodes about 1.3x slower).")


def keep_in_option() -> Any:
    import typer

    return typer.Option(None, "--keep-in", help="Zone that prompts and tokens never leave "
                        "(first and last stages run there), e.g. home.")


def hidden_states_option() -> Any:
    import typer

    return typer.Option(None, "--hidden-states-in-zone/--hidden-states-may-leave",
                        help="With --keep-in: keep every stage in the zone too (default: the "
                             "fleet file's policy).")


def max_cost_option() -> Any:
    import typer

    return typer.Option(None, "--max-cost", help="Most the plan may cost per million tokens.")


def variant_option() -> Any:
    import typer

    return typer.Option("int4", "--variant", help="Weights: int4 (default, built once and "
                        "cached), int8, fp32, int4-fast, int4-sym, ... (an artifact folder "
                        "given as the model is its own variant).")


def threads_option() -> Any:
    import typer

    return typer.Option(0, "--threads", help="Compute threads (0 = every core this process "
                        "may use).")


# The MQTT broker's login, shared by `node`, `serve`, `plan` and `fleet`.
def mqtt_user_option() -> Any:
    import typer

    return typer.Option(None, "--mqtt-user", help="Username on the MQTT broker (mosquitto "
                        "password_file); the password from --mqtt-password-file or "
                        "$EDGEWEAVE_MQTT_PASSWORD.")


def mqtt_password_file_option() -> Any:
    import typer

    return typer.Option(None, "--mqtt-password-file", help="File holding the MQTT password "
                        "(kept out of `ps`).")


def mqtt_ca_option() -> Any:
    import typer

    return typer.Option(None, "--mqtt-ca", help="CA certificate (PEM) of the broker's TLS "
                        "listener: turns TLS to the broker on.")


def fleet_name_option(default: str | None = "default") -> Any:
    import typer

    return typer.Option(default, "--fleet", help="Fleet name on the broker.")


# How `node`, `serve`, `plan` and `fleet` find the fleet: a broker, or DNS-SD on the LAN.
def discover_option() -> Any:
    import typer

    return typer.Option(None, "--discover", help="mqtt (the broker at --mqtt; the default "
                        "with --mqtt) or mdns (DNS-SD on the LAN, no broker).")


def mdns_interface_option() -> Any:
    import typer

    return typer.Option([], "--mdns-interface", help="With --discover mdns: IP address of an "
                        "interface to use (repeatable; default: every interface; 127.0.0.1 "
                        "keeps it on this host).")


def draft_option() -> Any:
    import typer

    return typer.Option("", "--draft", help="Speculative decoding: a draft in this process "
                        "proposes tokens the model verifies several at a time: a variant "
                        "(int8 or int4), early-exit:K (the first K blocks) or a compressed artifact "
                        "folder (a distilled student). Greedy output is unchanged.")


def draft_k_option() -> Any:
    import typer

    return typer.Option(0, "--draft-k", help="Draft tokens per verify step (0 = adaptive: "
                        "from the acceptance rate and the measured round trip; off where it "
                        "does not pay).")
