"""A device class is one catalog entry: its figures and the ONNX Runtime providers it asks for."""

from __future__ import annotations

import pytest

from edgeweave.errors import ConfigError
from edgeweave.profile import catalog
from edgeweave.runtime.engines.onnx import SessionProfile, device_kind

ENTRY = {"tier": "edge", "memory_gb": 16, "mem_bw_gbs": 100, "compute_gops": {"fp32": 500},
         "providers": "cuda"}


def test_every_catalog_class_names_a_known_provider_family():
    for name, dev in catalog.devices().items():
        assert dev.providers in catalog.ONNX_PROVIDERS, name
        assert device_kind(name) == dev.providers
    assert device_kind("jetson-orin-nano-8gb") == "jetson"
    assert device_kind("this-host") == "cpu"  # the probed host is not a catalog class


def test_a_new_class_carries_its_providers_to_the_session():
    dev = catalog.device_from_dict("orin-agx-64gb", ENTRY)
    prof = SessionProfile.for_device(dev, threads=2)
    assert prof.device == "cuda" and prof.threads == 2
    assert prof.providers()[-1] == "CPUExecutionProvider"  # the wheel here has CPU only
    cpu = catalog.device_from_dict("plain", {k: v for k, v in ENTRY.items() if k != "providers"})
    assert cpu.providers == "cpu"


def test_an_unknown_provider_family_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="choose one of cpu, arm-cpu, cuda"):
        catalog.device_from_dict("x", {**ENTRY, "providers": "tpu"})
