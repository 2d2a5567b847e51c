"""MQTT control plane: nodes announce, heartbeat and report telemetry; a FleetMonitor on the
coordinator side turns that into fleet events (device gone/back, battery low, memory
pressure, link degraded) and calls back into the runtime.

Modules: ``messages`` (topics and versioned JSON payloads), ``broker`` (start Debian's
mosquitto on loopback), ``agent`` (the node side), ``monitor`` (the coordinator side),
``events`` (event types and thresholds), ``wiring`` (monitor -> coordinator/planner).
paho-mqtt is imported inside functions so ``import edgeweave`` stays light.
"""
