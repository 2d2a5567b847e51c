"""Topic layout and payload schema of the control plane."""

from __future__ import annotations

import json

import pytest

from edgeweave.control.messages import (
    SCHEMA_VERSION,
    Telemetry,
    decode,
    encode,
    parse_topic,
    subscription,
    topic,
)
from edgeweave.errors import ConfigError


def test_topics_round_trip_and_refuse_wildcards():
    t = topic("lab", "pi-1", "status")
    assert t == "edgeweave/lab/node/pi-1/status" and parse_topic(t) == ("lab", "pi-1", "status")
    assert subscription("lab") == "edgeweave/lab/node/+/+"
    assert parse_topic("edgeweave/lab/node/pi-1/unknown") is None
    for bad in ("a/b", "+", "#", "", " x"):
        with pytest.raises(ConfigError, match="MQTT topics"):
            topic("lab", bad, "status")
    with pytest.raises(ConfigError, match="unknown control message kind"):
        topic("lab", "pi", "gossip")


def test_payloads_are_versioned_and_foreign_ones_ignored():
    msg = decode(encode("pi-1", state="online"))
    assert msg["v"] == SCHEMA_VERSION and msg["device"] == "pi-1" and msg["state"] == "online"
    assert decode(json.dumps({"v": 99, "state": "online"}).encode()) is None
    assert decode(b"\xff\xfe not json") is None
    t = Telemetry.from_msg(decode(encode("pi", free_memory_mb=512, battery=0.4)))
    assert t == Telemetry(free_memory_mb=512.0, battery=0.4)
    assert Telemetry.from_msg({"battery": 2.0, "free_memory_mb": 1}) is None  # out of range
    with pytest.raises(ConfigError, match=r"battery must be in \[0, 1\]"):
        Telemetry(free_memory_mb=1, battery=1.5)
    assert Telemetry.sample().free_memory_mb > 0
