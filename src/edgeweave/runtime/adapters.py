"""LoRA adapters served unmerged: read an adapter folder as it is, check it fits the model.

``edgeweave finetune`` and ``edgeweave federate --adapter-out`` write an adapter folder
(``adapter.safetensors`` with PEFT's A/B factors, ``manifest.json`` with the LoRAConfig and
the base's name and fingerprint). :func:`load_adapter` reads one without torch (a server
that runs only ONNX stages never imports it) and verifies its hash; :func:`check_base`
refuses an adapter trained on another model before the server starts. Each linear's factors
become one :class:`Factors` with LoRA's ``alpha / rank`` folded into ``B``, so every engine
adds ``delta = (x @ A^T) @ B^T`` beside the base layer and the base weights stay untouched.

A request picks an adapter by the name it is served under (``--adapter NAME=DIR``), the
``model`` field of the OpenAI API, as vLLM's ``--lora-modules`` does.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeweave.errors import ArtifactError, ConfigError
from edgeweave.finetune.config import (
    ADAPTER_KIND,
    ADAPTER_MANIFEST,
    ADAPTER_WEIGHTS,
    LoRAConfig,
    parse_key,
)

# what a request's `model` may be: no spaces, slashes or '=' (the CLI's NAME=DIR separator)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AdapterSpec:
    """What the user asks for: serve the adapter in ``folder`` under ``name``."""

    name: str
    folder: Path

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"adapter name {self.name!r} must be 1-64 letters, digits or "
                              "'._:-' (it is what a request sends as `model`): e.g. "
                              "--adapter home-a=./adapters/home-a")
        object.__setattr__(self, "folder", Path(self.folder))

    @classmethod
    def parse(cls, text: str) -> AdapterSpec:
        """``"NAME=DIR"`` as ``--adapter`` takes it."""
        name, sep, folder = text.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--adapter {text!r} must look like NAME=DIR (the name requests "
                              "send as `model`, and the folder `edgeweave finetune --out` wrote)")
        return cls(name.strip(), Path(folder.strip()))


def adapter_specs(adapters: Mapping[str, str | Path] | None) -> tuple[AdapterSpec, ...]:
    """``{name: folder}`` (the Python API) as specs."""
    return tuple(AdapterSpec(n, Path(f)) for n, f in (adapters or {}).items())


@dataclass(frozen=True, eq=False)
class Factors:
    """One linear's LoRA: ``a`` (r, in) and ``b`` (out, r) with ``alpha / r`` folded in."""

    a: np.ndarray
    b: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    def delta(self, x: np.ndarray) -> np.ndarray:
        """What the adapter adds to the layer's output for inputs ``x`` (..., in)."""
        return (x @ self.a.T) @ self.b.T


@dataclass(frozen=True, eq=False)
class Adapter:
    """A loaded adapter: its name, where it came from, and its factors per
    ``(block, module)``, e.g. ``(3, "q_proj")``."""

    name: str
    folder: Path
    lora: LoRAConfig
    base: str
    base_fingerprint: str
    sha256: str
    factors: Mapping[tuple[int, str], Factors]

    def blocks(self) -> tuple[int, ...]:
        return tuple(sorted({i for i, _ in self.factors}))

    def within(self, start: int, end: int) -> dict[tuple[int, str], Factors]:
        """The factors of blocks ``[start, end)`` (what one stage needs)."""
        return {k: f for k, f in self.factors.items() if start <= k[0] < end}

    @property
    def nbytes(self) -> int:
        return sum(f.a.nbytes + f.b.nbytes for f in self.factors.values())

    def info(self) -> dict[str, Any]:
        """What ``/v1/models`` says about it."""
        return {"folder": str(self.folder), "base": self.base, "rank": self.lora.rank,
                "alpha": self.lora.alpha, "target_modules": list(self.lora.target_modules),
                "blocks": len(self.blocks()), "sha256": self.sha256}


def load_adapter(spec: AdapterSpec) -> Adapter:
    """Read and verify the adapter folder of ``spec`` (no torch)."""
    from safetensors.numpy import load_file

    folder = spec.folder
    man_file, w_file = folder / ADAPTER_MANIFEST, folder / ADAPTER_WEIGHTS
    if not man_file.is_file() or not w_file.is_file():
        raise ConfigError(f"adapter {spec.name}: {folder} is not an adapter folder (needs "
                          f"{ADAPTER_MANIFEST} and {ADAPTER_WEIGHTS}); write one with "
                          "`edgeweave finetune --out DIR` or `edgeweave federate --adapter-out DIR`")
    try:
        manifest = json.loads(man_file.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"adapter {spec.name}: cannot read {man_file} ({e}): save the "
                            "adapter again") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != ADAPTER_KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        raise ConfigError(f"adapter {spec.name}: {man_file} describes a {kind!r}, not a LoRA "
                          "adapter (a merged model is served with --model instead)")
    data = w_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise ArtifactError(f"adapter {spec.name}: {w_file} does not match its manifest hash: "
                            "the file was changed or truncated; save the adapter again")
    try:
        lora = LoRAConfig.from_dict(manifest["lora"])
        state = load_file(str(w_file))
    except (KeyError, TypeError) as e:
        raise ArtifactError(f"adapter {spec.name}: {man_file} lacks a valid `lora` entry "
                            f"({e}): save the adapter again") from None
    return Adapter(spec.name, folder, lora, str(manifest.get("base") or ""),
                   str(manifest.get("base_fingerprint") or ""), digest,
                   _factors(spec.name, state, lora.scaling))


def _factors(name: str, state: Mapping[str, np.ndarray], scaling: float
             ) -> dict[tuple[int, str], Factors]:
    halves: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in state.items():
        block, _, module, which = parse_key(key)
        halves.setdefault((block, module), {})[which] = np.asarray(value, np.float32)
    out = {}
    for (block, module), ab in sorted(halves.items()):
        if set(ab) != {"A", "B"}:
            raise ArtifactError(f"adapter {name}: block {block} {module} has only lora_"
                                f"{''.join(ab)}: save the adapter again")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ArtifactError(f"adapter {name}: block {block} {module} has A {a.shape} and "
                                f"B {b.shape}, not (r, in) and (out, r)")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ArtifactError(f"adapter {name}: block {block} {module} holds NaN or inf "
                                "(a diverged training run): train it again with a lower lr")
        out[(block, module)] = Factors(np.ascontiguousarray(a),
                                       np.ascontiguousarray(b * np.float32(scaling)))
    if not out:
        raise ArtifactError(f"adapter {name} holds no LoRA tensors: save the adapter again")
    return out


def module_shape(cfg: Any, module: str) -> tuple[int, int]:
    """``(in, out)`` of a block's linear in a :class:`~edgeweave.models.config.ModelConfig`."""
    h, att, kv, inter = (cfg.hidden_size, cfg.num_heads * cfg.head_dim,
                         cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size)
    return {"q_proj": (h, att), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (att, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}[module]


def served_base(model: str) -> tuple[str, str, Any]:
    """``(name, fingerprint, ModelConfig)`` of the fp32 weights ``model`` stands for: a
    compression artifact records the fingerprint of the model it was made from."""
    given = Path(model)
    if (given / "manifest.json").is_file():
        from edgeweave.compress.manifest import manifest_config, read_manifest

        m = read_manifest(given)
        src = m.get("source") or {}
        return str(src.get("name") or given.name), str(src.get("fingerprint") or ""), \
            manifest_config(given, m)
    from edgeweave.models.catalog import resolve
    from edgeweave.models.config import read_config
    from edgeweave.models.fingerprint import checkpoint_fingerprint

    name, folder = resolve(model)
    return name, checkpoint_fingerprint(folder), read_config(folder)


def check_base(adapter: Adapter, model: str, base: tuple[str, str, Any] | None = None) -> None:
    """Refuse ``adapter`` unless it was trained on the weights ``model`` serves (same
    fingerprint when the adapter records one) and every factor fits the model's shapes."""
    name, fingerprint, cfg = base or served_base(model)
    if adapter.base_fingerprint and fingerprint and adapter.base_fingerprint != fingerprint:
        raise ConfigError(f"adapter {adapter.name} ({adapter.folder}) was trained on "
                          f"{adapter.base or 'another model'}, not on the served model {name} "
                          "(the base fingerprints differ): serve it with the model it was "
                          "trained on, or train it again on this one")
    for (block, module), f in adapter.factors.items():
        if block >= cfg.num_layers:
            raise ConfigError(f"adapter {adapter.name} has LoRA on block {block} but {name} "
                              f"has {cfg.num_layers} blocks: it was trained on another model")
        fan_in, fan_out = module_shape(cfg, module)
        if f.a.shape[1] != fan_in or f.b.shape[0] != fan_out:
            raise ConfigError(f"adapter {adapter.name}: block {block} {module} maps "
                              f"{f.a.shape[1]} -> {f.b.shape[0]} features but {name}'s maps "
                              f"{fan_in} -> {fan_out}: it was trained on another model")


def load_checked(specs: tuple[AdapterSpec, ...], model: str, served_id: str = ""
                 ) -> dict[str, Adapter]:
    """Load every adapter of ``specs`` and check it against ``model`` (names unique and
    different from the base's ``served_id``)."""
    out: dict[str, Adapter] = {}
    base = served_base(model) if specs else None
    for spec in specs:
        if spec.name in out or spec.name == served_id:
            raise ConfigError(f"adapter name {spec.name!r} is used twice (the base model is "
                              f"served as {served_id!r}): give every --adapter its own name")
        adapter = load_adapter(spec)
        check_base(adapter, model, base)
        out[spec.name] = adapter
    return out


# -- on the wire: one stage's share of an adapter, for a node (``Op.ADAPTER``) ----------------
def to_bytes(adapter: Adapter, start: int, end: int) -> bytes:
    """The factors of blocks ``[start, end)`` (scale folded in) and what identifies the
    adapter, as safetensors bytes: what a coordinator sends a node for one stage."""
    from safetensors.numpy import save

    tensors = {}
    for (i, m), f in adapter.within(start, end).items():
        tensors[f"layers.{i}.{m}.a"], tensors[f"layers.{i}.{m}.b"] = f.a, f.b
    meta = {"name": adapter.name, "lora": json.dumps(adapter.lora.to_dict()),
            "base": adapter.base, "base_fingerprint": adapter.base_fingerprint,
            "sha256": adapter.sha256, "folder": str(adapter.folder)}
    return save(tensors, metadata=meta)


def from_bytes(data: bytes) -> Adapter:
    """The inverse of :func:`to_bytes` (an adapter with no factors in the stage is valid)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + n])["__metadata__"]
        tensors = load(data)
        factors = {}
        for key in {k.rsplit(".", 1)[0] for k in tensors}:
            _, block, module = key.split(".")
            if module not in MODULES:
                raise ValueError(f"unknown module {module!r}")
            factors[(int(block), module)] = Factors(tensors[f"{key}.a"], tensors[f"{key}.b"])
        return Adapter(AdapterSpec(meta["name"], Path(".")).name, Path(meta["folder"]),
                       LoRAConfig.from_dict(json.loads(meta["lora"])), meta["base"],
                       meta["base_fingerprint"], meta["sha256"], factors)
    except (ValueError, KeyError, TypeError, IndexError, SafetensorError) as e:
        raise ConfigError(f"the ADAPTER payload is not an adapter ({type(e).__name__}: {e}): "
                          "send what runtime.adapters.to_bytes makes") from None
