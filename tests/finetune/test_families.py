"""The LoRA checks of ``test_finetune`` again on Qwen3 and Gemma 3 (QK-norm, Gemma's
sandwich norms and GeGLU): the same module names, so the same targets, merge and memory
options must hold. Importing the tests collects them here with this module's ``tiny_cfg``."""

from __future__ import annotations

import pytest

from tests.conftest import make_cfg
from tests.finetune.test_finetune import (  # noqa: F401 - collected here
    _one_thread,
    test_checkpointing_and_accumulation_do_not_change_the_maths,
    test_frozen_prefix_cache_matches_full_forward,
    test_merge_matches_adapter_forward,
    test_quantized_frozen_base_trains,
    test_subset_selection,
    test_training_lowers_loss_and_only_adapters_change,
)


@pytest.fixture(params=["qwen3", "gemma3"])
def tiny_cfg(request):
    return make_cfg(request.param)
