"""The control plane (an MQTT broker, or DNS-SD on the LAN): nodes announce, heartbeat and
report telemetry; a FleetMonitor on the coordinator side turns that into fleet events (device
joined/ready/gone/back, battery low, memory pressure, link degraded) and calls back into the
runtime.

Modules: ``messages`` (topics and versioned JSON payloads), ``client`` (paho client, broker
login: username/password, TLS), ``broker`` (start Debian's mosquitto on loopback), ``agent``
(the node side), ``announce`` (what a node says about itself, certificate checks), ``peers``
(a node's gRPC pings to its peers), ``monitor`` (the coordinator side), ``events`` (event
types and thresholds), ``discovered`` (announcements -> Fleet, pure), ``assemble`` (discover,
admit, re-plan on joins), ``snapshot`` (the fleet on a broker now: ``plan --mqtt``, ``fleet
status``), ``wiring`` and ``planner`` (monitor -> coordinator/planner), ``sources`` (where the monitor
hears the fleet from: the broker, or ``mdns``'s DNS-SD browser; ``mdns_txt`` is the TXT codec).
paho-mqtt and zeroconf are imported inside functions so ``import edgeweave`` stays light.
"""
