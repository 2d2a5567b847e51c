"""Nodes and the monitor over a real mosquitto broker on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from edgeweave.control.agent import NodeAgent
from edgeweave.control.events import EventKind, MonitorConfig
from edgeweave.control.messages import Telemetry
from edgeweave.control.monitor import FleetMonitor

DEADLINE_S = 5.0  # a vanished node must be reported within this


def test_announce_and_telemetry_reach_the_monitor_as_events(broker, fleet):
    got = []
    with FleetMonitor(broker.host, broker.port, fleet=fleet) as mon:
        mon.subscribe(got.append)
        with NodeAgent("pi-1", broker.host, broker.port, fleet=fleet, heartbeat_s=0.2,
                       profile={"tier": "sbc", "memory": 4 << 30}) as node:
            assert mon.wait_for(EventKind.JOINED, "pi-1", 5)
            assert mon.nodes()["pi-1"].profile == {"tier": "sbc", "memory": 4 << 30}
            assert mon.nodes()["pi-1"].heartbeat_s == 0.2
            for reading in (Telemetry(2048, battery=0.50, link_quality=0.9),
                            Telemetry(2048, battery=0.10, charging=True),  # charging: fine
                            Telemetry(2048, battery=0.15),  # low
                            Telemetry(2048, battery=0.22),  # within hysteresis: still low
                            Telemetry(100, battery=0.30, link_quality=0.1)):  # recovered
                node.publish_telemetry(reading)
            assert mon.wait_for(EventKind.LINK_DEGRADED, "pi-1", 5)
            assert mon.nodes()["pi-1"].telemetry == Telemetry(100, battery=0.30,
                                                              link_quality=0.1)
        gone = mon.wait_for(EventKind.GONE, "pi-1", 5)  # a clean stop is also a departure
        assert gone and gone.detail["reason"] == "clean"
        time.sleep(0.2)  # let the dispatcher deliver the last events
    kinds = [e.kind for e in got]
    assert kinds == [EventKind.JOINED, EventKind.BATTERY_LOW, EventKind.BATTERY_OK,
                     EventKind.MEMORY_PRESSURE, EventKind.LINK_DEGRADED, EventKind.GONE]
    low = got[1]
    assert low.detail == {"value": 0.15, "threshold": 0.2}


def test_a_late_monitor_learns_the_fleet_from_retained_messages(broker, fleet):
    with NodeAgent("gw", broker.host, broker.port, fleet=fleet, profile={"tier": "gateway"}), \
            FleetMonitor(broker.host, broker.port, fleet=fleet) as mon:
        joined = mon.wait_for(EventKind.JOINED, "gw", 5)
        assert joined and joined.detail["retained"] is True
        assert mon.online() == ["gw"] and mon.nodes()["gw"].profile == {"tier": "gateway"}


def _agent_process(broker, fleet: str, device: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeweave.control.agent", "--host", broker.host,
         "--port", str(broker.port), "--fleet", fleet, "--device", device,
         "--heartbeat", "0.2"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == f"agent {device} online"
    return proc


def test_killed_node_fires_its_last_will_and_the_gone_callback(broker, fleet):
    gone_devices: list[tuple[str, float]] = []
    with FleetMonitor(broker.host, broker.port, fleet=fleet) as mon:
        mon.on_device_gone(lambda d: gone_devices.append((d, time.monotonic())))
        proc = _agent_process(broker, fleet, "jetson-2")
        try:
            assert mon.wait_for(EventKind.JOINED, "jetson-2", 10)
            killed = time.monotonic()
            proc.kill()  # SIGKILL: no clean DISCONNECT, the broker publishes the will
            ev = mon.wait_for(EventKind.GONE, "jetson-2", DEADLINE_S)
        finally:
            proc.kill()
            proc.wait(5)
        assert ev is not None and ev.detail["reason"] == "lost"
        for _ in range(50):
            if gone_devices:
                break
            time.sleep(0.02)
        assert [d for d, _ in gone_devices] == ["jetson-2"]
        assert gone_devices[0][1] - killed < DEADLINE_S
        assert mon.online() == []


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX job control")
def test_a_silent_node_times_out_on_heartbeats_and_comes_back(broker, fleet):
    cfg = MonitorConfig(heartbeat_misses=3)
    with FleetMonitor(broker.host, broker.port, fleet=fleet, config=cfg) as mon:
        proc = _agent_process(broker, fleet, "esp-3")
        try:
            assert mon.wait_for(EventKind.JOINED, "esp-3", 10)
            os.kill(proc.pid, signal.SIGSTOP)  # frozen: the socket stays open, no will
            stopped = time.monotonic()
            gone = mon.wait_for(EventKind.GONE, "esp-3", DEADLINE_S)
            assert gone and gone.detail["reason"] == "heartbeat_timeout"
            assert gone.at - stopped >= 0.5  # not before 3 missed 0.2 s heartbeats
            os.kill(proc.pid, signal.SIGCONT)
            assert mon.wait_for(EventKind.BACK, "esp-3", DEADLINE_S)
            proc.terminate()  # SIGTERM: the agent leaves cleanly
            proc.wait(10)
            gone2 = mon.wait_for(EventKind.GONE, "esp-3", DEADLINE_S, after=gone.at + 1e-9)
            assert gone2 and gone2.detail["reason"] == "clean"
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(5)


def test_edgeweave_node_joins_the_control_plane_and_its_death_fires_the_will(
        broker, fleet, tiny_folder):
    """`edgeweave node --mqtt` runs the agent in the node's own process: the profile names
    the gRPC address, and a SIGKILL of the node (not a separate agent) is a departure."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeweave", "node", "--model", str(tiny_folder),
         "--name", "pi-7", "--fleet", fleet, "--mqtt", f"{broker.host}:{broker.port}",
         "--telemetry-s", "0.5"], stdout=subprocess.PIPE, text=True)
    try:
        with FleetMonitor(broker.host, broker.port, fleet=fleet) as mon:
            line = proc.stdout.readline().strip()
            assert line.startswith("EDGEWEAVE-NODE READY 127.0.0.1:"), line
            assert mon.wait_for(EventKind.JOINED, "pi-7", 10)
            assert mon.nodes()["pi-7"].profile["address"] == line.split()[-1]
            for _ in range(40):  # telemetry follows the announce within a second
                if mon.nodes()["pi-7"].telemetry is not None:
                    break
                time.sleep(0.1)
            assert mon.nodes()["pi-7"].telemetry is not None
            proc.kill()
            ev = mon.wait_for(EventKind.GONE, "pi-7", DEADLINE_S)
            assert ev is not None and ev.detail["reason"] == "lost"
    finally:
        proc.kill()
        proc.wait(5)


def test_edgeweave_node_with_a_bad_mqtt_address_fails_clearly(tiny_folder):
    r = subprocess.run([sys.executable, "-m", "edgeweave", "node", "--model", str(tiny_folder),
                        "--mqtt", "nohostport"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "HOST:PORT" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
