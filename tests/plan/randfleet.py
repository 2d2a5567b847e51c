"""Random small fleets and models for planner tests (and the benchmark's generator)."""

from __future__ import annotations

import random

from edgeweave.profile import catalog
from edgeweave.profile.cost import ModelCosts
from edgeweave.profile.variants import DEFAULT_VARIANTS
from edgeweave.types import DeviceProfile, Fleet, FleetDevice, Link

_FP32 = DEFAULT_VARIANTS["fp32"]


def tiny_costs(rng: random.Random, n_layers: int) -> ModelCosts:
    hidden = rng.choice([64, 128, 256])
    return ModelCosts(name="tiny", n_layers=n_layers, hidden=hidden,
                      block_params=rng.randint(20, 400) * 100_000, embed_params=rng.randint(1, 20) * 100_000,
                      head_params=rng.randint(1, 20) * 100_000, n_heads=4, head_dim=hidden // 4,
                      kv_dim=hidden // 2, prompt_len=rng.choice([16, 64]), context=128)


def random_device(rng: random.Random, name: str, memory: float | None = None) -> DeviceProfile:
    """A random device; ``memory`` (bytes) defaults to 2 MB .. 300 MB."""
    fp32 = 10 ** rng.uniform(8, 12)
    return DeviceProfile(
        name=name, tier=rng.choice(["sbc", "phone", "gateway", "edge", "cloud"]),
        memory=int(memory or 10 ** rng.uniform(6.3, 8.5)), mem_bw=10 ** rng.uniform(8.5, 11.5),
        compute={"fp32": fp32, "int8": fp32 * rng.uniform(1, 8)},
        power_idle_w=1.0, power_active_w=rng.uniform(1, 50),
        op_overhead_s=rng.uniform(1e-6, 3e-5))


def random_fleet(rng: random.Random, n: int, *, extra_links: float = 0.4,
                 variant_names: tuple[str, ...] = ("fp32", "int8"),
                 model: ModelCosts | None = None) -> Fleet:
    """``model`` sizes memories so that most devices hold only part of it (multi-stage)."""
    links_cat = list(catalog.links().values())
    ids = [f"d{k}" for k in range(n)]
    devices = []
    for k, i in enumerate(ids):
        arts = None
        if rng.random() < 0.25:
            arts = tuple(rng.sample(variant_names, rng.randint(1, len(variant_names))))
        battery = rng.choice([None, None, rng.uniform(0.0, 1.0)])
        mem = None
        if model is not None:
            fp32_bytes = model.n_layers * model.block_memory(_FP32) + model.head_params * 4.0
            mem = fp32_bytes * rng.uniform(0.1, 1.0)
        devices.append(FleetDevice(i, random_device(rng, f"class{k}", mem), battery, arts))
    links = []
    for k in range(1, n):  # a random spanning tree keeps the graph connected
        links.append(Link(ids[rng.randrange(k)], ids[k], rng.choice(links_cat),
                          rng.uniform(0.3, 1.5)))
    for a in range(n):
        for b in range(a + 1, n):
            if rng.random() < extra_links:
                links.append(Link(ids[a], ids[b], rng.choice(links_cat), rng.uniform(0.3, 1.5)))
    entry = rng.choice(ids)
    return Fleet("random", tuple(devices), tuple(links), entry, rng.choice([entry, rng.choice(ids)]))
