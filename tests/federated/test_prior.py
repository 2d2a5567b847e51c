"""Logit adjustment by a home's label prior: the bias is log(K * pi) per label set (0 for a
uniform or absent home), it enters only the answer's first-token logits of the training loss,
and the federated client applies it when the round config asks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgeweave.errors import ConfigError
from edgeweave.federated.config import FedConfig
from edgeweave.federated.prior import label_prior_bias
from edgeweave.finetune.config import LoRAConfig, TrainConfig
from edgeweave.finetune.data import IGNORE, Example, collate
from edgeweave.finetune.lora import adapter_state, apply_lora
from edgeweave.finetune.train import hidden_in, loss_from, run_from, train
from tests.conftest import random_model

SETS = ((40, 41, 42, 43), (50, 51))


def _ex(answer: int, prompt: tuple[int, ...] = (3, 4, 5)) -> Example:
    return Example((*prompt, answer, 2), n_prompt=len(prompt))


def test_bias_is_the_smoothed_log_prior_ratio_per_label_set():
    home = [_ex(40)] * 6 + [_ex(41)] * 2 + [_ex(99)]  # 99: free text, in no label set
    b = label_prior_bias(home, SETS)
    # activity-like set: counts 6, 2, 0, 0 -> add-one (7, 3, 1, 1) / 12, times K = 4
    assert b[40] == pytest.approx(math.log(4 * 7 / 12))
    assert b[41] == pytest.approx(math.log(4 * 3 / 12)) == pytest.approx(0.0)
    assert b[42] == b[43] == pytest.approx(math.log(4 / 12))
    # the home has no example of the second set: its prior is uniform, no adjustment
    assert b[50] == b[51] == 0.0
    assert set(b) == {40, 41, 42, 43, 50, 51}
    balanced = [_ex(t) for t in (40, 41, 42, 43, 50, 51)] * 3
    assert all(v == pytest.approx(0.0) for v in label_prior_bias(balanced, SETS).values())
    half = label_prior_bias(home, SETS, tau=0.5)
    assert half[40] == pytest.approx(0.5 * b[40])


def test_bias_refuses_overlapping_sets_and_negative_tau():
    with pytest.raises(ConfigError, match="two label sets"):
        label_prior_bias([_ex(40)], ((40, 41), (41, 42)))
    with pytest.raises(ConfigError, match="tau"):
        label_prior_bias([_ex(40)], SETS, tau=-1.0)
    with pytest.raises(ConfigError, match="task='iot'"):
        FedConfig(task="pattern", logit_adjust=1.0)
    with pytest.raises(ConfigError, match="logit_adjust"):
        FedConfig(logit_adjust=-0.5)


def test_answer_bias_enters_only_the_first_answer_token(tiny_cfg):
    torch.manual_seed(0)
    m = random_model(tiny_cfg).eval()
    exs = [Example((3, 4, 5, 40, 41, 2), n_prompt=3), Example((6, 7, 42, 43), n_prompt=2)]
    ids, labels = collate(exs)
    bias = torch.zeros(tiny_cfg.vocab_size)
    bias[[40, 41, 42, 43]] = torch.tensor([2.0, -1.0, 0.5, -3.0])
    with torch.no_grad():
        got = loss_from(m, hidden_in(m, ids, 0), labels, 0, answer_bias=bias)
        logits = m.head(run_from(m, hidden_in(m, ids, 0), 0)).float()
    # by hand: the bias on the first target of each row (positions 2 and 1), none after
    want, n = 0.0, 0
    for row, first in ((0, 2), (1, 1)):
        for pos in range(logits.shape[1]):
            if labels[row, pos] == IGNORE:
                continue
            z = logits[row, pos] + (bias if pos == first else 0.0)
            want += float(F.cross_entropy(z[None], labels[row, pos][None]))
            n += 1
    assert float(got) == pytest.approx(want / n, rel=1e-5)
    with torch.no_grad():
        plain = loss_from(m, hidden_in(m, ids, 0), labels, 0)
    assert float(plain) != pytest.approx(float(got), rel=1e-3)


def test_training_with_a_zero_bias_is_plain_training_and_a_prior_bias_changes_it(tiny_cfg):
    data = [_ex(40 + i % 2, (3 + i % 5, 4, 5)) for i in range(12)]
    lora = LoRAConfig(rank=2, alpha=4, target_modules=("q_proj", "v_proj"))
    cfg = TrainConfig(steps=3, lr=1e-2, batch_size=4, micro_batch_size=4, seq_len=8)

    def run(bias):
        torch.manual_seed(0)
        m = apply_lora(random_model(tiny_cfg), lora)
        res = train(m, data, cfg, answer_bias=bias)
        return res.losses, adapter_state(m)

    plain, zero, skew = run(None), run({40: 0.0, 41: 0.0}), run({40: 1.5, 41: -1.5})
    assert plain[0] == zero[0]
    assert all(torch.equal(plain[1][k], zero[1][k]) for k in plain[1])
    assert skew[0][0] != pytest.approx(plain[0][0])
    with pytest.raises(ConfigError, match="vocabulary"):
        run({tiny_cfg.vocab_size + 5: 1.0})


def test_the_client_adjusts_by_its_own_prior_when_the_round_asks(tmp_path, tmp_home):
    """Two real IoT homes (activity + occupancy windows, Dirichlet-skewed) on a tiny model
    with the bundled tokenizer: one round with and without the adjustment trains different
    adapters, and each client reports the tau it trained with."""
    from edgeweave.federated.hetero import Tier
    from edgeweave.federated.run import simulate
    from edgeweave.federated.tasks import cached_task
    from tests.conftest import bpe_folder

    folder = bpe_folder(tmp_path / "tiny-bpe")
    tier = (Tier("gateway", 8192, rank=2, window=None),)
    kw = dict(model=str(folder), task="iot", num_clients=2, rounds=1, aggregation="fedavg",
              local_steps=2, lr=1e-2, seq_len=96, timeout_s=120, tiers=tier,
              targets=("q_proj", "v_proj"))
    data = cached_task("iot", str(folder), 2, 96, 0.5, 0)
    assert [len(s) for s in data.label_sets] == [4, 2]
    biases = [label_prior_bias(c, data.label_sets) for c in data.clients]
    assert any(abs(v) > 0.1 for b in biases for v in b.values())  # the homes are skewed
    plain = simulate(FedConfig(**kw), workers=1)
    adjusted = simulate(FedConfig(**kw, logit_adjust=1.0), workers=1)
    assert {c["logit-adjust"] for c in adjusted["rounds"][0]["clients"]} == {1.0}
    assert {c["logit-adjust"] for c in plain["rounds"][0]["clients"]} == {0.0}
    assert any(not torch.equal(torch.from_numpy(plain["final_arrays"][k]),
                               torch.from_numpy(adjusted["final_arrays"][k]))
               for k in plain["final_arrays"])
