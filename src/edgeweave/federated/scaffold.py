"""SCAFFOLD control variates (Karimireddy et al., ICML 2020) for heterogeneous LoRA clients.

Under label skew every client's local steps pull the adapter towards its own labels (client
drift), and the average swings between rounds. SCAFFOLD keeps a control variate per client,
``c_i`` (its own gradient direction), and one on the server, ``c`` (the mean of the ``c_i``);
each local step follows ``g - c_i + c``, i.e. the client's gradient with its own bias replaced
by the federation's.

Choices here, and why:

* **New ``c_i`` = the mean raw gradient along the local trajectory.** With plain SGD this is
  exactly the paper's option II, ``c_i - c + (x - y_i) / (K lr)`` (the K corrected steps sum to
  ``K lr (mean g - c_i + c)``); unlike option II it does not assume SGD, so it stays right with
  AdamW clients and a learning-rate schedule, and it costs no extra pass (option I).
* **Rank heterogeneity and windows.** A client trains the first ``r`` components (A rows,
  B columns) of the blocks in its window; its ``c_i`` has exactly those entries, and
  components it never trained are 0 for it, as SCAFFOLD starts every ``c_i`` at 0.
  ``c`` stays the mean over the clients that can train a component: component ``j`` is
  divided by the number of clients whose rank exceeds ``j`` (zero-pad aggregation counts the
  same way). Clients that sit a round out (or whose window is elsewhere) keep their ``c_i``,
  which is the paper's rule for partial participation.
* **Client state in Flower's ``context.state``** (persists across rounds on a SuperNode and
  in our simulation), so a client's ``c_i`` never leaves it; only ``c`` and ``delta c_i``
  travel, doubling the bytes of a round.

Pure functions over ``{key: ndarray}`` dicts, like :mod:`edgeweave.federated.aggregate`, plus
:class:`GradientControl`, the hook that corrects gradients during local training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgeweave.federated.aggregate import State, is_a

DRIFT_CORRECTIONS = ("none", "scaffold")


def zeros_like(state: Mapping[str, np.ndarray]) -> State:
    return {k: np.zeros_like(v, dtype=np.float32) for k, v in state.items()}


def local_slice(local: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]) -> State:
    """The client's ``c_i`` for the keys (and shapes) it trains this round; 0 where it has
    none yet (a block entering its window for the first time)."""
    out = {}
    for k, v in like.items():
        old = local.get(k)
        out[k] = (np.asarray(old, dtype=np.float32) if old is not None and old.shape == v.shape
                  else np.zeros(v.shape, dtype=np.float32))
    return out


def client_update(local: Mapping[str, np.ndarray], mean_grads: Mapping[str, np.ndarray]
                  ) -> tuple[State, State]:
    """``(new c_i for the trained keys, delta c_i)``; ``local`` is the old ``c_i`` slice."""
    new = {k: np.asarray(g, dtype=np.float32) for k, g in mean_grads.items()}
    delta = {k: new[k] - np.asarray(local[k], dtype=np.float32) for k in new}
    return new, delta


def merge_local(stored: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> State:
    """The client's whole ``c_i`` after a round: updated keys replaced, others kept."""
    out = {k: np.asarray(v, dtype=np.float32) for k, v in stored.items()}
    out.update({k: np.asarray(v, dtype=np.float32) for k, v in new.items()})
    return out


def server_update(control: Mapping[str, np.ndarray], deltas: Sequence[Mapping[str, np.ndarray]],
                  client_ranks: Sequence[int]) -> State:
    """``c += sum_i delta c_i / N_j`` per rank component ``j``, ``N_j`` = the clients (all
    known ones, not only this round's) whose rank exceeds ``j``: ``c`` stays the mean of the
    ``c_i`` that can hold that component."""
    out = {k: np.array(v, dtype=np.float32, copy=True) for k, v in control.items()}
    for k, c in control.items():
        r_axis = 0 if is_a(k) else 1
        big = c.shape[r_axis]
        count = np.array([sum(r > j for r in client_ranks) for j in range(big)], dtype=np.float64)
        total = np.zeros(c.shape, dtype=np.float64)
        for d in deltas:
            if k not in d:
                continue
            v = np.asarray(d[k], dtype=np.float64)
            r = v.shape[r_axis]
            if r > big:
                raise ValueError(f"{k}: client rank {r} exceeds the global rank {big}")
            if r_axis == 0:
                total[:r] += v
            else:
                total[:, :r] += v
        div = np.maximum(count, 1.0)
        step = total / (div[:, None] if r_axis == 0 else div[None, :])
        out[k] = (c + step).astype(np.float32)
    return out


class GradientControl:
    """Called once per local step (``train(on_gradients=...)``): records the raw gradient and
    replaces it with ``g - c_i + c``.

    ``params`` maps adapter keys to the live parameters; ``global_c`` and ``local_c`` hold the
    same keys and shapes (the client's slice). Frozen parameters (LoRA-FA's A) have no
    gradient and are skipped.
    """

    def __init__(self, params: Mapping[str, object], global_c: Mapping[str, np.ndarray],
                 local_c: Mapping[str, np.ndarray]) -> None:
        import torch

        self.params = dict(params)
        self.shift = {k: torch.from_numpy(np.asarray(global_c[k], dtype=np.float32)
                                          - np.asarray(local_c[k], dtype=np.float32))
                      for k in self.params}
        self.sums = {k: torch.zeros_like(self.shift[k], dtype=torch.float64) for k in self.params}
        self.steps = 0

    def __call__(self) -> None:
        import torch

        with torch.no_grad():
            for k, p in self.params.items():
                if p.grad is None:
                    continue
                self.sums[k] += p.grad.detach().to(torch.float64)
                p.grad += self.shift[k].to(p.grad.dtype)
        self.steps += 1

    def mean_gradients(self) -> State:
        n = max(self.steps, 1)
        return {k: (s / n).numpy().astype(np.float32) for k, s in self.sums.items()}
