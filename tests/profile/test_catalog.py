"""The device catalog: enough real classes across tiers, every figure sourced, validated."""

from __future__ import annotations

import re

import pytest

from edgeweave.errors import ConfigError
from edgeweave.profile import catalog

FIGURES = re.compile(r"^\s+(memory_gb|mem_bw_gbs|fp32|fp16|int8|int4|power_w|battery_wh|"
                     r"up_mbps|latency_ms|energy_nj_per_byte):")


def test_at_least_ten_device_classes_across_tiers() -> None:
    devs = catalog.devices()
    assert len(devs) >= 10
    assert {d.tier for d in devs.values()} >= {"mcu", "sbc", "phone", "gateway", "edge", "cloud"}
    assert {"ble", "wifi4", "wifi5", "wifi6", "ethernet", "lte", "5g"} <= set(catalog.links())


@pytest.mark.parametrize("name", ["devices.yaml", "links.yaml"])
def test_every_figure_has_a_source_comment(name: str) -> None:
    lines = (catalog.CATALOG_DIR / name).read_text().splitlines()
    figures = [ln for ln in lines if FIGURES.match(ln)]
    assert len(figures) > 20
    unsourced = [ln for ln in figures if "#" not in ln]
    assert not unsourced, unsourced


def test_units_are_converted_and_precisions_fall_back() -> None:
    pi4 = catalog.device("rpi4-4gb")
    assert pi4.memory == 3_500_000_000 and pi4.mem_bw == 4.5e9
    assert pi4.ops_per_s("int4") == pi4.compute["int8"]  # no int4 kernel: int8 rate
    assert pi4.ops_per_s("fp16") == pi4.compute["fp32"]
    ble = catalog.link("ble")
    assert ble.up_bps == 1.4e6 and ble.latency_s == pytest.approx(7.5e-3)


def test_unknown_class_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown device class 'pi9'; known classes: .*esp32-s3"):
        catalog.device("pi9")
    with pytest.raises(ConfigError, match="unknown link class 'smoke'"):
        catalog.link("smoke")


def test_bad_device_entries() -> None:
    good = {"tier": "sbc", "memory_gb": 1, "mem_bw_gbs": 1, "compute_gops": {"fp32": 1}}
    assert catalog.device_from_dict("x", good).memory == 1e9
    with pytest.raises(ConfigError, match="misses 'mem_bw_gbs'"):
        catalog.device_from_dict("x", {k: v for k, v in good.items() if k != "mem_bw_gbs"})
    with pytest.raises(ConfigError, match="compute needs fp32"):
        catalog.device_from_dict("x", {**good, "compute_gops": {"int8": 4}})
    with pytest.raises(ConfigError, match="unknown keys"):
        catalog.device_from_dict("x", {**good, "gpu": True})
