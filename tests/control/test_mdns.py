"""The control plane without a broker: DNS-SD on loopback (``control.mdns``).

* the TXT codec: any announcement round-trips through <= 255-byte TXT strings, and a record
  cut short or garbled is refused, never half-read;
* ``--discover`` values, and the CLI's one-line error for a bad one;
* a monitor over mDNS: nodes join, are admitted after heartbeats, report links and
  telemetry, leave with a goodbye; another fleet's node and a garbled record stay out;
* end to end: three `edgeweave node --discover mdns` processes with fleet certificates
  (mutual TLS on gRPC) and a fourth with another CA's, and the server assembled in-process
  (``serve.deploy.build(mdns=...)``, what `serve --discover mdns` runs): the embedded text,
  the foreign node never used, a SIGKILLed node mid-stream failed over.

Every fleet name carries this process id, so two test runs on one host never mix.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeweave.control.events import EventKind
from edgeweave.control.mdns import SERVICE_TYPE, MdnsAgent, MdnsOptions, instance_name, mdns_choice
from edgeweave.control.mdns_txt import CHUNK, decode_txt, encode_txt
from edgeweave.control.messages import Telemetry
from edgeweave.control.monitor import FleetMonitor
from edgeweave.errors import ConfigError
from edgeweave.runtime.generate import SamplingParams, generate, stream_generate
from edgeweave.runtime.launch import stop_processes, wait_ready
from edgeweave.security.certs import init_fleet
from tests.conftest import make_cfg, random_model, save_folder
from tests.helpers import embedded_tokens

LOOPBACK = MdnsOptions(("127.0.0.1",))
FLEET = f"mdns{os.getpid()}"
PARAMS = SamplingParams(max_tokens=20, ignore_eos=True)
PROMPT = "the sensor reads temperature in the kitchen"


def _as_received(props: dict[str, str]) -> dict[bytes, bytes | None]:
    """The properties as zeroconf hands a browser a TXT record."""
    return {k.encode(): v.encode() for k, v in props.items()}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25)
# a PEM-sized string makes most bodies span several pieces
_bodies = st.dictionaries(st.text(max_size=20), _json, max_size=6).flatmap(
    lambda d: st.text(min_size=0, max_size=1500).map(lambda pem: {**d, "cert_pem": pem}))


@settings(max_examples=60, deadline=None)
@given(_bodies)
def test_any_announcement_round_trips_through_txt_strings(body):
    props = encode_txt("lab", body)
    assert all(len(k) + 1 + len(v.encode()) <= 255 for k, v in props.items())
    assert decode_txt(_as_received(props)) == body


def _cut(props: dict[bytes, bytes | None], how: str, k: int) -> dict[bytes, bytes | None]:
    out = dict(props)
    n = int(out[b"n"] or b"0")
    piece = f"c{k % n:02d}".encode()
    if how == "drop":
        del out[piece]
    elif how == "shorten":
        out[piece] = (out[piece] or b"")[:-1]
    elif how == "flip":
        v = bytearray(out[piece] or b"")
        i = k % len(v)
        v[i] = ord("A") if v[i] != ord("A") else ord("B")
        out[piece] = bytes(v)
    elif how == "fewer":
        out[b"n"] = str(n - 1).encode()
    elif how == "version":
        out[b"v"] = b"9"
    elif how == "no-count":
        del out[b"n"]
    return out


@settings(max_examples=60, deadline=None)
@given(_bodies, st.sampled_from(["drop", "shorten", "flip", "fewer", "version", "no-count"]),
       st.integers(min_value=0, max_value=1000))
def test_a_record_cut_short_or_garbled_is_refused(body, how, k):
    props = _as_received(encode_txt("lab", body))
    with pytest.raises(ConfigError, match="TXT"):
        decode_txt(_cut(props, how, k))


def test_a_certificate_sized_announcement_spans_pieces():
    body = {"device": "node0", "profile": {"cert_pem": "M" * 1200}}
    props = encode_txt("lab", body)
    assert int(props["n"]) >= 1200 // CHUNK  # the PEM alone fills several pieces
    assert decode_txt(_as_received(props)) == body


def test_discover_values_are_checked():
    assert mdns_choice(None, None) is None and mdns_choice("mqtt", "127.0.0.1:1883") is None
    assert mdns_choice("mdns", None, ["127.0.0.1"]) == LOOPBACK
    assert mdns_choice("MDNS", None) == MdnsOptions()
    for args, match in [(("bonjour", None), "use mqtt .* or mdns"),
                        (("mdns", "127.0.0.1:1883"), "drop --mqtt"),
                        (("mqtt", None), "needs --mqtt"),
                        ((None, None, ["127.0.0.1"]), "--discover mdns"),
                        (("mdns", None, ["eth0"]), "not an IP address")]:
        with pytest.raises(ConfigError, match=match):
            mdns_choice(*args)
    with pytest.raises(ConfigError, match="63 bytes"):
        instance_name("n" * 40, "f" * 30)


def test_a_bad_discover_value_is_one_line_and_exit_2(capsys):
    from edgeweave.cli.app import main

    assert main(["serve", "--discover", "bonjour"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --discover 'bonjour'") and "\n" not in err


def test_a_monitor_over_mdns_sees_joins_links_telemetry_and_goodbyes(caplog):
    from zeroconf import ServiceInfo

    fleet = f"{FLEET}u"
    reading = Telemetry(free_memory_mb=900.0, battery=0.8)
    with FleetMonitor.over(fleet, mdns=LOOPBACK) as mon:
        a = MdnsAgent("a", fleet=fleet, profile={"address": "127.0.0.1:5001"},
                      telemetry_s=1.0, sampler=lambda: reading, options=LOOPBACK)
        seen: list[str] = []
        a.watch_peers(lambda d, p: seen.append(f"{d} {p['address']}"))
        b = MdnsAgent("b", fleet=fleet, profile={"address": "127.0.0.1:5002"},
                      options=LOOPBACK)
        # the same device name in another fleet, and a garbled record in this one
        stranger = MdnsAgent("a", fleet=f"{fleet}x", profile={"address": "127.0.0.1:5003"},
                             options=LOOPBACK)
        zc = LOOPBACK.zeroconf()
        bad = ServiceInfo(SERVICE_TYPE, instance_name("c", fleet), port=5004,
                          server="garbled.local.", addresses=[bytes([127, 0, 0, 1])],
                          properties={**encode_txt(fleet, {"device": "c"}), "sha": "0" * 16})
        with caplog.at_level(logging.WARNING, "edgeweave.control.mdns"):
            for agent in (a, b, stranger):
                agent.start()
            zc.register_service(bad)
            try:
                assert mon.wait_for(EventKind.READY, "a", timeout=15) is not None
                assert mon.wait_for(EventKind.READY, "b", timeout=15) is not None
                a.publish_links({"b": {"rtt_s": 0.001, "up_bps": 1e9}})
                deadline = time.monotonic() + 10
                while not mon.nodes()["a"].links and time.monotonic() < deadline:
                    time.sleep(0.1)
                node = mon.nodes()["a"]
                assert node.links == {"b": {"rtt_s": 0.001, "up_bps": 1e9}}
                assert node.telemetry == reading and node.heartbeat_s == 1.0
                assert node.profile["address"] == "127.0.0.1:5001"
                assert seen == ["b 127.0.0.1:5002"]  # once, not at every heartbeat
                b.stop()
                gone = mon.wait_for(EventKind.GONE, "b", timeout=10)
                assert gone is not None and gone.detail["reason"] == "clean"  # the goodbye
                assert set(mon.nodes()) == {"a", "b"}  # not the stranger, not "c"
                assert any("does not match its checksum" in r.getMessage()
                           for r in caplog.records)
            finally:
                a.stop()
                stranger.stop()
                zc.close()


# -- end to end ---------------------------------------------------------------------------
@dataclass
class Lan:
    root: Path
    model: Path
    certs: Path
    foreign: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_node(self, name: str, tls_dir: Path) -> None:
        cmd = [sys.executable, "-c", "from edgeweave.cli.app import entry; entry()", "node",
               "--model", str(self.model), "--host", "127.0.0.1", "--port", "0",
               "--variant", "fp32", "--backend", "torch", "--threads", "1", "--colocated",
               "--tls-dir", str(tls_dir), "--name", name, "--discover", "mdns",
               "--mdns-interface", "127.0.0.1", "--fleet", FLEET,
               "--device-class", "rpi5-8gb", "--zone", "lab", "--telemetry-s", "2"]
        with open(self.root / f"{name}.log", "wb") as err:
            self.procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    root = tmp_path_factory.mktemp("mdns")
    model = save_folder(random_model(make_cfg(), seed=3), root / "tiny-llama")
    certs, foreign = root / "certs", root / "foreign"
    init_fleet(certs, ("coordinator", "node0", "node1", "node2"))
    init_fleet(foreign, ("rogue",))  # another CA: its node must never be used
    lan = Lan(root, model, certs, foreign)
    try:
        for n in ("node0", "node1", "node2"):
            lan.start_node(n, certs)
        lan.start_node("rogue", foreign)
        for n in lan.procs:
            wait_ready(lan.procs[n], root / f"{n}.log", timeout=120)
        yield lan
    finally:
        stop_processes(lan.procs.values())


@pytest.fixture(scope="module")
def reference(lan: Lan) -> list[int]:
    """Greedy tokens of the embedded single process (same backend and variant)."""
    return embedded_tokens(lan.model, PROMPT, PARAMS)


@dataclass
class Served:
    dep: object
    first_token_s: float  # build() called -> first token of the first stream


@pytest.fixture(scope="module")
def served(lan: Lan) -> Iterator[Served]:
    from edgeweave.control.assemble import DiscoveryOptions
    from edgeweave.runtime.local import EngineChoice
    from edgeweave.serve.deploy import build

    t0 = time.perf_counter()
    dep = build(str(lan.model), mdns=LOOPBACK, fleet=FLEET, tls_dir=lan.certs,
                objective="throughput", choice=EngineChoice("torch", "fp32", 1),
                discovery=DiscoveryOptions(min_nodes=3, wait_s=60))
    try:
        first = next(stream_generate(dep.backend.new_session(64), dep.backend.tokenizer, PROMPT,
                                     SamplingParams(max_tokens=1, ignore_eos=True)))
        assert first.tokens
        elapsed = time.perf_counter() - t0
        print(f"\nmdns: serve start -> first token {elapsed:.2f} s")  # noqa: T201
        yield Served(dep, elapsed)
    finally:
        dep.close()


def _devices(dep) -> set[str]:  # noqa: ANN001
    return {s.device for s in dep.backend.coordinator.plan.stages}


def test_serve_discovers_the_nodes_over_mdns_and_gives_the_embedded_text(lan, served,
                                                                         reference):
    from edgeweave.cli.fleet import fleet_status
    from edgeweave.cli.plan import run_plan_mqtt

    dep, asm = served.dep, served.dep.assembler
    assert set(asm.admitted) == {"node0", "node1", "node2"}
    assert len(_devices(dep)) >= 2  # throughput: the blocks are pipelined over the nodes
    out = generate(dep.backend.new_session(64), dep.backend.tokenizer, PROMPT, PARAMS)
    assert out.token_ids == reference
    # the links the nodes measured to each other rode in their TXT records
    peers = {m["device"]: m["peers"] for m in asm.status()["members"]}
    assert {"node1", "node2"} <= set(peers["node0"]) and 0 < peers["node0"]["node1"]["rtt_s"] < 0.05
    assert all(len(m["cert_sha256"]) == 64 for m in asm.status()["members"])
    # `edgeweave fleet status --discover mdns` and `plan --discover mdns` see the same nodes
    fs = fleet_status(None, FLEET, listen_s=2.5, mdns=LOOPBACK)
    assert {n["device"] for n in fs["nodes"] if n["online"]} >= {"node0", "node1", "node2"}
    assert fs["server"] is None and fs["mdns"]
    r = run_plan_mqtt(None, None, "throughput", str(lan.model), FLEET, str(lan.certs),
                      min_nodes=3, wait_s=30, mdns=LOOPBACK)
    assert r["plans"]["planner"].stages == dep.backend.coordinator.plan.stages


def test_a_node_of_another_ca_is_never_used(served):
    asm = served.dep.assembler
    assert "rogue" not in asm.admitted and "rogue" not in _devices(served.dep)
    assert "not signed by the fleet CA" in asm.rejected["rogue"]


def test_sigkill_of_a_node_mid_stream_gives_identical_text(lan, served, reference):
    dep = served.dep
    victim = dep.backend.coordinator.plan.stages[-1].device
    stream = stream_generate(dep.backend.new_session(64), dep.backend.tokenizer, PROMPT,
                             PARAMS)
    pieces = [next(stream)]
    while sum(len(p.tokens) for p in pieces) < 5:
        pieces.append(next(stream))
    lan.procs[victim].kill()
    lan.procs[victim].wait(10)
    pieces += list(stream)
    assert [t for p in pieces for t in p.tokens] == reference
    assert victim not in _devices(dep) and "rogue" not in _devices(dep)
    # no goodbye from a killed node: heartbeat silence marks it gone (3 periods)
    gone = dep.assembler.monitor.wait_for(EventKind.GONE, victim, timeout=15)
    assert gone is not None and gone.detail["reason"] == "heartbeat_timeout"
