"""A :class:`~edgeweave.runtime.engine.LogitsEngine` over stage engines in this process.

``StageChain([stage])`` with one whole-model stage is the fast local engine that
``runtime.generate.generate`` runs unchanged; with several stages it is an in-process
pipeline (no transport), which is how the split overhead of the graphs themselves is measured.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeweave.errors import ConfigError
from edgeweave.runtime.engines.base import StageEngine


class StageChain:
    def __init__(self, stages: Sequence[StageEngine], max_len: int = 2048,
                 session_id: str = "local") -> None:
        if not stages:
            raise ConfigError("a stage chain needs at least one stage")
        pos = 0
        for st in stages:
            sh = st.config.shard
            if sh.start != pos:
                raise ConfigError(f"stages must tile the model in order: got {sh} after {pos}")
            pos = sh.end
        if pos != stages[0].config.shard.n_layers:
            raise ConfigError(f"stages end at block {pos}, not at the model's "
                              f"{stages[0].config.shard.n_layers}")
        self.stages = list(stages)
        self.max_len = max_len
        self.session_id = session_id
        for st in self.stages:
            st.open(session_id, max_len)

    def _run(self, ids: list[int]) -> np.ndarray:
        x = np.array([ids], dtype=np.int64)
        for st in self.stages:
            x = st.forward(self.session_id, x)
        return x[0]  # (vocab,) logits of the last position

    def prefill(self, ids: list[int]) -> np.ndarray:
        for st in self.stages:
            st.truncate(self.session_id, 0)
        return self._run(ids)

    def decode(self, token: int) -> np.ndarray:
        return self._run([token])

    def close(self) -> None:
        for st in self.stages:
            st.close(self.session_id)
