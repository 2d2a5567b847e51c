"""Speculative decoding's cost model (``plan.speculation``) and ``edgeweave plan
--draft-acceptance``: known values, when speculation is off, k growing with the round trip,
a plan's costs from the planner's tables, and the CLI line and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgeweave.cli.app import main
from edgeweave.errors import ConfigError
from edgeweave.plan.speculation import (
    SpecCosts,
    best_k,
    draft_estimate,
    expected_tokens,
    plan_costs,
    speedup,
    tokens_per_s,
)

FLEETS = Path(__file__).resolve().parents[2] / "examples" / "fleets"
COSTS = SpecCosts(draft_token_s=0.005, verify_token_s=0.030, verify_extra_token_s=0.002,
                  rtt_s=0.020)


def test_known_values():
    assert expected_tokens(0.8, 4) == pytest.approx((1 - 0.8**5) / 0.2)  # 3.3616
    assert expected_tokens(0.0, 5) == 1.0 and expected_tokens(1.0, 5) == 6.0
    assert expected_tokens(0.3, 0) == 1.0
    assert COSTS.round_s(4) == pytest.approx(4 * 0.005 + 0.030 + 4 * 0.002 + 0.020)  # 0.078
    assert COSTS.plain_token_s == pytest.approx(0.050)
    assert tokens_per_s(0.8, 4, COSTS) == pytest.approx(3.3616 / 0.078)
    assert speedup(0.8, 4, COSTS) == pytest.approx(3.3616 * 0.050 / 0.078)  # 2.155
    assert speedup(0.8, 0, COSTS) == pytest.approx(1.0)  # k = 0 is plain decoding


def test_best_k_is_the_argmax_over_k():
    c = best_k(0.8, COSTS)
    want = max(range(1, 9), key=lambda k: speedup(0.8, k, COSTS))
    assert (c.k, c.considered_k) == (want, want)
    assert c.speedup == pytest.approx(speedup(0.8, want, COSTS)) and c.on
    assert c.tokens_per_s == pytest.approx(tokens_per_s(0.8, want, COSTS))


def test_alpha_zero_switches_speculation_off():
    c = best_k(0.0, COSTS)
    assert c.k == 0 and not c.on and c.speedup == 1.0
    assert c.tokens_per_s == pytest.approx(1 / COSTS.plain_token_s)
    # every draft is wasted: the best k considered is 1, and it loses
    assert c.considered_k == 1 and c.considered_speedup < 1.0


def test_alpha_one_behind_a_big_rtt_drafts_k_max():
    costs = SpecCosts(draft_token_s=0.002, verify_token_s=0.010, verify_extra_token_s=0.0005,
                      rtt_s=0.200)
    assert best_k(1.0, costs).k == 8
    assert best_k(1.0, costs, k_max=3).k == 3


def test_the_margin_keeps_a_marginal_gain_off():
    # a 3 % gain: below the default 5 % margin, taken with no margin
    # k = 1 at alpha 0.5 yields 1.5 tokens a round: a draft of 0.01 * (1.5/1.03 - 1) s
    # makes the round 1.5/1.03 plain steps long
    slow = SpecCosts(draft_token_s=0.010 * (1.5 / 1.03 - 1),
                     verify_token_s=0.010, verify_extra_token_s=0.0)
    assert best_k(0.5, slow, k_max=1).considered_speedup == pytest.approx(1.03)
    assert best_k(0.5, slow, k_max=1).k == 0
    assert best_k(0.5, slow, k_max=1, margin=0.0).k == 1


def test_k_and_the_gain_grow_with_the_round_trip():
    ks, gains = [], []
    for rtt in (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0):
        c = best_k(0.7, SpecCosts(0.004, 0.015, 0.001, rtt), k_max=16)
        ks.append(c.considered_k)
        gains.append(c.considered_speedup)
    assert ks == sorted(ks) and ks[-1] > ks[0]
    assert all(b >= a for a, b in zip(gains, gains[1:], strict=False)) and gains[-1] > 2


@pytest.mark.parametrize("bad", [
    dict(draft_token_s=-0.001), dict(verify_token_s=math.nan), dict(rtt_s=math.inf),
    dict(verify_token_s=0.0, rtt_s=0.0), dict(draft_token_s=True),
])
def test_bad_costs_are_refused_with_the_fix(bad):
    args = dict(draft_token_s=0.005, verify_token_s=0.03, verify_extra_token_s=0.0, rtt_s=0.0)
    with pytest.raises(ConfigError, match="seconds|verifier's step"):
        SpecCosts(**{**args, **bad})


def test_bad_alpha_and_k_are_refused_with_the_fix():
    for alpha in (-0.1, 1.5, math.nan):
        with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\]"):
            best_k(alpha, COSTS)
    with pytest.raises(ConfigError, match="k_max must be an integer >= 1"):
        best_k(0.5, COSTS, k_max=0)
    with pytest.raises(ConfigError, match="k must be an integer >= 0"):
        expected_tokens(0.5, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="margin"):
        best_k(0.5, COSTS, margin=-1)


# -- a plan's costs and the CLI --------------------------------------------------------------
def _campus():
    from edgeweave.cli.plan import run_plan

    return run_plan(str(FLEETS / "campus.yaml"))


def test_plan_costs_add_the_entry_legs_to_the_plan_transfer(tmp_home):
    r = _campus()
    plan, t = r["plans"]["planner"], r["tables"]
    costs = plan_costs(plan, t, 0.01)
    first, last = t.index[plan.stages[0].device], t.index[plan.stages[-1].device]
    legs = t.tok("decode_s", t.entry, first) + t.tok("decode_s", last, t.entry)
    back = t.tok("decode_s", last, first)
    assert t.devices[t.entry] != plan.stages[0].device  # the verifier is away from the user
    assert costs.rtt_s == pytest.approx(plan.predicted["transfer_s"] - back + legs)
    assert costs.rtt_s > 0.005  # the campus entry reaches the cloud over a WAN
    assert costs.verify_token_s == pytest.approx(plan.predicted["compute_s"])
    assert 0 < costs.verify_extra_token_s < costs.verify_token_s  # weights read once a pass
    est = draft_estimate(t, r["cal"])
    assert est.device == t.fleet.entry and est.token_s > 0 and est.fits


@pytest.fixture
def wide_console(monkeypatch):
    from edgeweave.cli.common import console

    monkeypatch.setattr(console, "width", 240)  # one line per line, as a terminal shows it


def test_plan_prints_the_speculation_line(capsys, wide_console, tmp_home):
    campus = str(FLEETS / "campus.yaml")
    assert main(["plan", "--fleet", campus, "--draft-acceptance", "0.8",
                 "--draft-token-ms", "2"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("speculation:"))
    assert line.startswith("speculation: k=") and "x (alpha 0.80, rtt " in line
    assert line.endswith("ms, draft 2 ms/token)")

    assert main(["plan", "--fleet", campus, "--draft-acceptance", "0.8",
                 "--draft-token-ms", "500"]) == 0
    assert "speculation: off (predicted 0." in capsys.readouterr().out

    assert main(["plan", "--fleet", campus, "--draft-acceptance", "0.8"]) == 0
    assert "int4 est. on phone" in capsys.readouterr().out  # campus's entry device

    assert main(["plan", "--fleet", campus]) == 0
    assert "speculation" not in capsys.readouterr().out  # no option, no line


def test_plan_prices_the_draft_variant_it_is_given(capsys, tmp_home):
    campus = str(FLEETS / "campus.yaml")
    ms = {}
    for variant in ("int4", "int8"):
        assert main(["plan", "--fleet", campus, "--json", "--draft-acceptance", "0.9",
                     "--draft-variant", variant]) == 0
        spec = json.loads(capsys.readouterr().out)["speculation"]
        assert spec["draft_estimated"] and spec["draft_variant"] == variant
        ms[variant] = spec["draft_ms"]
    # the roofline reads twice the bytes of weights a token in 8 bits as in 4
    assert ms["int8"] > ms["int4"]
    assert main(["plan", "--fleet", campus, "--draft-acceptance", "0.9",
                 "--draft-variant", "int3"]) == 2
    assert "no 'int3' variant to price a draft" in capsys.readouterr().err


def test_plan_json_carries_the_prediction(capsys, tmp_home):
    campus = str(FLEETS / "campus.yaml")
    assert main(["plan", "--fleet", campus, "--json"]) == 0
    assert "speculation" not in json.loads(capsys.readouterr().out)
    assert main(["plan", "--fleet", campus, "--json", "--draft-acceptance", "0.9",
                 "--draft-token-ms", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    spec = doc["speculation"]
    assert "planner" in doc and spec["k"] >= 1 and spec["speedup"] > 1.05
    assert spec["alpha"] == 0.9 and spec["draft_ms"] == 2.0 and not spec["draft_estimated"]


@pytest.mark.parametrize("args, msg", [
    (["--draft-acceptance", "0"], "must be in (0, 1]"),
    (["--draft-acceptance", "1.2"], "must be in (0, 1]"),
    (["--draft-acceptance", "0.8", "--draft-token-ms", "-1"], "milliseconds > 0"),
    (["--draft-token-ms", "3"], "only with --draft-acceptance"),
])
def test_bad_speculation_options_are_refused(capsys, tmp_home, args, msg):
    assert main(["plan", "--fleet", str(FLEETS / "campus.yaml"), *args]) == 2
    assert msg in capsys.readouterr().err
