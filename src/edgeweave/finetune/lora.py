"""Put PEFT LoRA adapters on a :class:`BlockModel` and take them off again.

``models.load`` hands out a frozen model in eval mode; :func:`apply_lora` keeps the base
frozen, injects adapters (PEFT's ``inject_adapter_in_model`` on our HF-named Linears) and
makes exactly the adapter weights trainable. Adapter state dicts use PEFT's keys without the
adapter name, e.g. ``layers.3.self_attn.q_proj.lora_A.weight`` (A: ``(r, in)``, B:
``(out, r)``); the federated code sends these and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeweave.errors import ConfigError
from edgeweave.finetune.config import ADAPTER_KEY as _KEY
from edgeweave.finetune.config import LoRAConfig, parse_key  # noqa: F401 - re-exported

ADAPTER = "default"


def target_regex(cfg: LoRAConfig, num_layers: int) -> str:
    """PEFT full-match regex selecting the configured Linears of the configured blocks."""
    layers = cfg.layers if cfg.layers is not None else tuple(range(num_layers))
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise ConfigError(f"LoRA layers {bad} do not exist: the model has {num_layers} blocks")
    mods = "|".join(cfg.target_modules)
    return rf"layers\.({'|'.join(str(i) for i in sorted(layers))})\.(self_attn|mlp)\.({mods})"


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Inject adapters in place and return the model, base frozen, adapters trainable."""
    import peft

    if any(isinstance(m, peft.tuners.lora.LoraLayer) for m in model.modules()):
        raise ConfigError("the model already carries LoRA adapters: merge or reload it first")
    model.requires_grad_(False)
    num_layers = model.cfg.num_layers
    pcfg = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=target_regex(cfg, num_layers), bias="none")
    # PEFT draws A from the global RNG: seed it so every client/run starts identically.
    with torch.random.fork_rng():
        torch.manual_seed(cfg.init_seed)
        peft.inject_adapter_in_model(pcfg, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_B." in name or (".lora_A." in name and not cfg.freeze_a))
    return model


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    import peft

    return {n: m for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter weights themselves (not copies), keyed like :func:`adapter_state`."""
    out = {}
    for name, mod in lora_layers(model).items():
        out[f"{name}.lora_A.weight"] = mod.lora_A[ADAPTER].weight
        out[f"{name}.lora_B.weight"] = mod.lora_B[ADAPTER].weight
    return out


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copy of the adapter weights only (fp32, contiguous), keyed like PEFT without the name."""
    return {k: p.detach().float().clone() for k, p in adapter_parameters(model).items()}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor],
                       strict: bool = True) -> None:
    """Copy ``state`` into the model's adapters (shapes must match the injected ranks)."""
    layers = lora_layers(model)
    seen = set()
    for key, value in state.items():
        m = _KEY.match(key)
        if m is None:
            raise ConfigError(f"{key!r} is not a LoRA adapter key")
        mod_name = key.rsplit(".lora_", 1)[0]
        if mod_name not in layers:
            if strict:
                raise ConfigError(f"adapter has {mod_name} but the model has no LoRA there: "
                                  "apply the adapter's LoRAConfig first")
            continue
        param = getattr(layers[mod_name], f"lora_{m.group(4)}")[ADAPTER].weight
        if tuple(param.shape) != tuple(value.shape):
            raise ConfigError(f"{key}: adapter shape {tuple(value.shape)} != model "
                              f"{tuple(param.shape)} (different rank?)")
        with torch.no_grad():
            param.copy_(torch.as_tensor(value, dtype=param.dtype))
        seen.add(key)
    if strict:
        missing = sorted(set(adapter_state(model)) - seen)
        if missing:
            raise ConfigError(f"adapter lacks {len(missing)} tensors, e.g. {missing[:2]}")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base Linear and remove the LoRA wrappers (in place)."""
    for name, mod in lora_layers(model).items():
        base = mod.get_base_layer()
        if isinstance(base, nn.Linear) and base.weight.dtype.is_floating_point:
            mod.merge(safe_merge=True)
        else:
            raise ConfigError(f"{name}: cannot merge into a {type(base).__name__} base; "
                              "merge into a full-precision reload of the model")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, base)
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
