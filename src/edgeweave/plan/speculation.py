"""Speculative decoding's cost model: is a draft on the entry device worth it, and for how
many tokens per round (pure, no hardware).

One round: the draft proposes ``k`` tokens (``k`` draft steps), the verifier scores them in
one multi-token pass (one set of network round trips), and the longest agreeing prefix plus
one corrected token is kept. With each draft token accepted independently with probability
``alpha`` (the i.i.d. model of Leviathan et al. 2023, section 3.1) a round yields

    E[tokens] = (1 - alpha**(k+1)) / (1 - alpha)        (k + 1 at alpha = 1)

and costs ``k*draft + verify + k*verify_extra + rtt`` seconds, against ``verify + rtt`` per
token for plain decoding. The round trips are what speculation amortises: behind a WAN link
it pays even with a mediocre draft; on a LAN with a slow draft it does not.
``runtime.speculative`` calls :func:`best_k` with measured figures to adapt ``k`` online;
``edgeweave plan --draft-acceptance`` with the planner's predictions
(:func:`plan_costs`, :func:`draft_token_s`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeweave.errors import ConfigError
from edgeweave.validate import is_int, is_number

if TYPE_CHECKING:
    from edgeweave.plan.tables import CostTables
    from edgeweave.profile.cost import Calibration
    from edgeweave.types import Plan

# Speculation must beat plain decoding by this much to be switched on: the model ignores the
# draft's memory, its KV cache upkeep and the rewinds after a rejection.
DEFAULT_MARGIN = 0.05
DEFAULT_K_MAX = 8


@dataclass(frozen=True)
class SpecCosts:
    """Seconds of one speculative round's parts.

    ``draft_token_s``: one draft decode step on the entry device; ``verify_token_s``: the
    verifier's one-token step, compute summed over its stages; ``verify_extra_token_s``: the
    extra compute of each further token in a multi-token verify pass; ``rtt_s``: the network
    round trips of one pass, summed over the plan's links.
    """

    draft_token_s: float
    verify_token_s: float
    verify_extra_token_s: float
    rtt_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("draft_token_s", "verify_token_s", "verify_extra_token_s", "rtt_s"):
            v = getattr(self, name)
            if not (is_number(v) and v >= 0):
                raise ConfigError(f"SpecCosts.{name} must be a finite number of seconds >= 0 "
                                  f"(got {v!r}): pass a measured or predicted time")
        if self.plain_token_s <= 0:
            raise ConfigError("SpecCosts: verify_token_s + rtt_s must be > 0 (plain decoding "
                              "cannot be free): give the verifier's step time")

    @property
    def plain_token_s(self) -> float:
        """Seconds per token without speculation: one verifier step and its round trips."""
        return self.verify_token_s + self.rtt_s

    def round_s(self, k: int) -> float:
        """Seconds of one round with ``k`` draft tokens (k = 0: a plain step)."""
        _check_k(k, "k")
        return (k * self.draft_token_s + self.verify_token_s
                + k * self.verify_extra_token_s + self.rtt_s)


@dataclass(frozen=True)
class SpecChoice:
    """What :func:`best_k` chose: ``k`` draft tokens per round (0: speculation off), the
    predicted tokens/s and speed-up over plain decoding of that choice (1.0 when off), and
    the best ``k >= 1`` considered with its speed-up (what "off" was measured against)."""

    k: int
    tokens_per_s: float
    speedup: float
    considered_k: int
    considered_speedup: float

    @property
    def on(self) -> bool:
        return self.k > 0


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one round yields: the accepted prefix of ``k`` drafts plus the verifier's own."""
    _check_alpha(alpha)
    _check_k(k, "k")
    if alpha == 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def tokens_per_s(alpha: float, k: int, costs: SpecCosts) -> float:
    """Predicted decode rate with ``k`` draft tokens per round (k = 0: plain decoding)."""
    return expected_tokens(alpha, k) / costs.round_s(k)


def speedup(alpha: float, k: int, costs: SpecCosts) -> float:
    """Predicted rate with ``k`` drafts over plain decoding's (1.0 at k = 0)."""
    return tokens_per_s(alpha, k, costs) * costs.plain_token_s


def best_k(alpha: float, costs: SpecCosts, k_max: int = DEFAULT_K_MAX,
           margin: float = DEFAULT_MARGIN) -> SpecChoice:
    """The ``k`` in ``[1, k_max]`` with the highest predicted speed-up (the smallest on a
    tie), or ``k = 0`` (off) when even that does not beat plain decoding by ``margin``."""
    _check_k(k_max, "k_max", minimum=1)
    if not (is_number(margin) and margin >= 0):
        raise ConfigError(f"margin must be a number >= 0 (got {margin!r}): 0.05 asks "
                          "speculation to be 5% faster than plain decoding")
    gains = [(speedup(alpha, k, costs), k) for k in range(1, k_max + 1)]
    best_gain, k = max(gains, key=lambda g: (g[0], -g[1]))
    if best_gain < 1.0 + margin:
        return SpecChoice(0, 1.0 / costs.plain_token_s, 1.0, k, best_gain)
    return SpecChoice(k, tokens_per_s(alpha, k, costs), best_gain, k, best_gain)


# -- a plan's figures ------------------------------------------------------------------------
DRAFT_VARIANT = "int4"  # the default draft: the served model in 4 bits (runtime.drafts)


def plan_costs(plan: Plan, t: CostTables, draft_s: float) -> SpecCosts:
    """A plan's :class:`SpecCosts` from the planner's predictions, with the draft (and so
    the coordinator) on the fleet's entry device, where the user is.

    The verifier's step is the plan's compute per token. Its round trips are a pass's way
    from the entry through every stage and back: the plan's hops, plus the token ids from
    the entry to the first stage and from the last stage to the entry (the planner's own
    per-token figure loops last -> first stage instead: the same when the entry holds the
    first stage). Each further token of a verify pass adds its compute (the roofline's
    compute term: the weights are read once per pass) and its hidden state's bytes on every
    hop."""
    q = plan.predicted
    entry, first, last = t.entry, t.index[plan.stages[0].device], t.index[plan.stages[-1].device]
    rtt = (q["transfer_s"] - t.tok("decode_s", last, first)
           + t.tok("decode_s", entry, first) + t.tok("decode_s", last, entry))
    return SpecCosts(draft_token_s=draft_s, verify_token_s=q["compute_s"],
                     verify_extra_token_s=_extra_token_s(plan, t), rtt_s=max(rtt, 0.0))


def _extra_token_s(plan: Plan, t: CostTables) -> float:
    from edgeweave.plan.routes import Routes

    m, by_name = t.model, {v.name: v for v in t.variants}
    out = 0.0
    for k, s in enumerate(plan.stages):
        dev, v = t.fleet.device(s.device).profile, by_name[s.variant]
        flops = (s.shard.end - s.shard.start) * m.block_flops_decode()
        flops += 2.0 * m.head_params * m.batch if s.shard.end == m.n_layers else 0.0
        out += flops / dev.ops_per_s(v.precision)
        key = f"decode:{s.codec}"
        if k + 1 < len(plan.stages) and key in t.routes:
            a, b = t.index[s.device], t.index[plan.stages[k + 1].device]
            one = t.routes[key]
            two = Routes(one.g, m.activation_bytes(s.codec, 2 * m.batch))
            out += two.pair(a, b)[0] - one.pair(a, b)[0]  # the bytes, not the latency again
    return out


@dataclass(frozen=True)
class DraftEstimate:
    """The cost model's draft (a variant of the served model) on the entry device: seconds
    per token, and whether the whole model in that variant fits the device's free memory."""

    token_s: float
    device: str
    fits: bool
    variant: str = DRAFT_VARIANT


def draft_estimate(t: CostTables, calibration: Calibration | None = None,
                   variant: str = DRAFT_VARIANT) -> DraftEstimate:
    """Predicted decode step of a ``variant`` draft (the served model, whole, in that
    variant: ``runtime.drafts``) on the fleet's entry device, calibrated like the plan's
    figures."""
    from edgeweave.profile import cost as C
    from edgeweave.profile.variants import DEFAULT_VARIANTS

    v = {x.name: x for x in t.variants}.get(variant, DEFAULT_VARIANTS.get(variant))
    if v is None:
        known = sorted({*(x.name for x in t.variants), *DEFAULT_VARIANTS})
        raise ConfigError(f"the cost model knows no {variant!r} variant to price a draft "
                          f"with: choose one of {', '.join(known)}, or give the draft's time "
                          "with --draft-token-ms MS")
    dev = t.fleet.devices[t.entry]
    token_s = C.decode_token_s(t.model, dev.profile, v, calibration or C.UNCALIBRATED)
    return DraftEstimate(token_s, dev.id, C.model_memory(t.model, v) <= float(t.cap[t.entry]),
                         variant)


def _check_alpha(alpha: float) -> None:
    if not (is_number(alpha) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"acceptance rate alpha must be in [0, 1] (got {alpha!r}): the "
                          "share of draft tokens the verifier keeps, e.g. 0.7")


def _check_k(k: int, name: str, minimum: int = 0) -> None:
    if not (is_int(k) and k >= minimum):
        raise ConfigError(f"{name} must be an integer >= {minimum} (got {k!r}): the number "
                          "of draft tokens per round")

