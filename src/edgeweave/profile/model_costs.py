"""The costs of a named model, from its config only: a plan-only model card or a loadable
checkpoint. Apart from :mod:`edgeweave.profile.cost` because it reads the model catalog,
which itself builds on the cost model (``models.cards`` prices its cards with ``ModelCosts``):
the cost model stays below the catalog, and nothing imports in a circle.
"""

from __future__ import annotations

from pathlib import Path

from edgeweave.profile.cost import ModelCosts, check_shape


def model_costs(name: str | None = None, prompt_len: int = 128, context: int = 512,
                batch: int = 1) -> ModelCosts:
    """Costs of a model from its config only: a plan-only model card
    (:mod:`edgeweave.models.cards`, no weights needed) or a loadable model (bundled name, HF
    folder or .gguf)."""
    from edgeweave.models import cards

    check_shape(prompt_len, context, batch)
    if name in cards.CARDS and not Path(name).exists():  # a local folder of that name wins
        return cards.CARDS[name].costs(prompt_len, context, batch)
    from edgeweave.models import DEFAULT_MODEL, resolve
    from edgeweave.models.config import read_config

    label, folder = resolve(name or DEFAULT_MODEL)
    cfg = read_config(folder)
    return ModelCosts.from_config(cfg, label, prompt_len, context, batch)
