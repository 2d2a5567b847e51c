"""Logit adjustment by a home's own label prior, against label-skew drift.

Under Dirichlet label skew a home that holds mostly "walking" pulls the shared adapter
towards always answering "walking"; the average of such homes learns the homes' label
priors more than the sensor evidence, and on a balanced test split it answers one label per
task for many rounds. Logit adjustment (Menon et al., ICLR 2021; applied per client against
label skew in FedLC, Zhang et al., ICML 2022) trains each home on ``z + tau * log(K pi_h(y))``
at the answer's first token, with ``pi_h`` the home's own label frequencies (add-one
smoothed, so a label it never saw is unlikely, not impossible) and ``K`` the task's number of
labels: the adapter then only has to explain what the prior does not, which is the part
every home agrees on. A home with a uniform prior trains exactly as before (the bias is 0),
and so does centralized training on a balanced union. Evaluation uses the plain logits.
Label sets are public task metadata (the task's answer choices); the counts never leave
the home.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from edgeweave.errors import ConfigError
from edgeweave.finetune.data import Example


def label_prior_bias(examples: Sequence[Example], label_sets: Sequence[Sequence[int]],
                     tau: float = 1.0) -> dict[int, float]:
    """``{first token of a label: tau * log(K * pi(label))}`` for every label of every set.

    ``label_sets`` holds, per sub-task, the first tokens of its labels (disjoint sets); an
    example belongs to the set that holds its first answer token, and an example in none of
    them (free text) counts for none. A set the home has no example of gets bias 0.
    """
    if tau < 0:
        raise ConfigError(f"logit adjustment tau must be >= 0 (got {tau})")
    seen: set[int] = set()
    for i, labels in enumerate(label_sets):
        if len(set(labels)) != len(labels) or not labels:
            raise ConfigError(f"label set {i} must hold distinct first tokens: {labels}")
        for t in labels:
            if t in seen:
                raise ConfigError(f"token {t} is a label of two label sets; give each sub-task "
                                  "labels with distinct first tokens")
            seen.add(t)
    counts = Counter(int(e.ids[e.n_prompt]) for e in examples if int(e.ids[e.n_prompt]) in seen)
    bias: dict[int, float] = {}
    for labels in label_sets:
        n = sum(counts[t] for t in labels)
        k = len(labels)
        for t in labels:
            pi = (counts[t] + 1.0) / (n + k)  # add-one: uniform when the home has none
            bias[int(t)] = tau * math.log(k * pi)
    return bias
