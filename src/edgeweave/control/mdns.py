"""The control plane without a broker: DNS-SD over multicast DNS on the LAN (``zeroconf``).

A node (``edgeweave node --discover mdns``) registers a ``_edgeweave._tcp.local.`` service,
instance ``<device> @ <fleet>``, SRV port its gRPC port, whose TXT record carries what the
MQTT path publishes (``control.mdns_txt``: the same profile, :class:`~edgeweave.control.
announce.Announcement` included, its heartbeat period, its measured links and telemetry):

* heartbeat: the TXT record re-announced every ``heartbeat_s`` with a new sequence number
  (a browser sees an *update*); heartbeat silence makes the node ``gone`` after the same
  number of periods as over MQTT (``MonitorConfig.heartbeat_misses``);
* departure: a goodbye (records with TTL 0) when it stops cleanly, seen ~1 s later; a node
  killed outright just falls silent, and the coordinator's gRPC failover covers a stream it
  was serving;
* fleets: the TXT ``fleet`` key, so two fleets (or two test runs) on one LAN never mix;
* trust: none from the network (anyone on the LAN can announce); a server with the fleet CA
  admits only nodes whose certificate it signed, and gRPC's mutual TLS proves the key.

:class:`MdnsSource` is the server's side, a ``control.sources.Source`` for
:class:`~edgeweave.control.monitor.FleetMonitor`. It keeps no server status anywhere
(``/v1/fleet`` serves it). ``zeroconf`` is imported inside functions.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edgeweave.control.mdns_txt import decode_txt, encode_txt, txt_fleet
from edgeweave.control.messages import SCHEMA_VERSION, Telemetry, check_name, profile_dict
from edgeweave.control.sources import Deliver
from edgeweave.errors import ConfigError

log = logging.getLogger(__name__)

SERVICE_TYPE = "_edgeweave._tcp.local."
# records live 2 minutes in caches: a node killed without a goodbye vanishes from browsers
# by then (heartbeat silence marks it gone long before); zeroconf's default is 75 minutes
RECORD_TTL_S = 120


@dataclass(frozen=True)
class MdnsOptions:
    """Which interfaces to announce and browse on: IP addresses of this host's interfaces
    (``127.0.0.1``: loopback only, as tests do); empty = every interface."""

    interfaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for ip in self.interfaces:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ConfigError(f"--mdns-interface {ip!r} is not an IP address: pass the "
                                  "address of one of this host's interfaces, e.g. "
                                  "192.168.1.20 (or 127.0.0.1 for loopback)") from None

    def zeroconf(self) -> Any:
        from zeroconf import InterfaceChoice, IPVersion, Zeroconf

        if not self.interfaces:
            return Zeroconf(interfaces=InterfaceChoice.All)
        v6 = [":" in ip for ip in self.interfaces]
        version = (IPVersion.V6Only if all(v6) else IPVersion.All if any(v6)
                   else IPVersion.V4Only)
        return Zeroconf(interfaces=list(self.interfaces), ip_version=version)


def instance_name(device: str, fleet: str) -> str:
    """The DNS-SD service name of ``device`` in ``fleet``."""
    instance = f"{check_name('device', device)} @ {check_name('fleet', fleet)}"
    if len(instance.encode()) > 63:  # one DNS label (RFC 6763 s4.1.1)
        raise ConfigError(f"{instance!r} is longer than the 63 bytes of a DNS-SD instance "
                          "name: use a shorter --name or --fleet")
    return f"{instance}.{SERVICE_TYPE}"


class _Browser:
    """Every announcement of ``fleet`` on the LAN: ``on_body(device, body)`` for each new or
    updated TXT record (checked: complete, right fleet, instance name matching its device),
    ``on_removed(device)`` for a goodbye. Calls come on zeroconf's browser thread."""

    def __init__(self, zc: Any, fleet: str, on_body: Callable[[str, dict[str, Any]], None],
                 on_removed: Callable[[str], None]) -> None:
        from zeroconf import ServiceBrowser

        self.zc, self.fleet = zc, fleet
        self.on_body, self.on_removed = on_body, on_removed
        self._devices: dict[str, str] = {}  # service name -> device
        self._warned: dict[str, str] = {}
        self._browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._handle])

    def _handle(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            device = self._devices.pop(name, None)
            if device is not None:
                self.on_removed(device)
            return
        info = zeroconf.get_service_info(service_type, name, timeout=1000)
        if info is None or txt_fleet(info.properties) != self.fleet:
            return  # gone already, or another fleet's node
        try:
            body = decode_txt(info.properties)
            device = check_name("device", str(body.get("device")))
            if instance_name(device, self.fleet) != name:
                raise ConfigError(f"it announces device {device!r} under another name")
        except ConfigError as e:
            if self._warned.get(name) != str(e):  # once per reason, not every heartbeat
                log.warning("ignoring the mDNS announcement %r: %s", name, e)
                self._warned[name] = str(e)
            return
        self._warned.pop(name, None)
        self._devices[name] = device
        self.on_body(device, body)

    def cancel(self) -> None:
        self._browser.cancel()


class MdnsAgent:
    """The node side over mDNS, with :class:`~edgeweave.control.agent.NodeAgent`'s interface
    (``watch_peers``, ``publish_links``, ``start``, ``stop``): announce ``profile`` (its
    ``address`` gives the SRV port and, when an IP, the A record), heartbeat, telemetry."""

    def __init__(self, device: str, *, fleet: str = "default", profile: Any = None,
                 heartbeat_s: float = 1.0, telemetry_s: float | None = None,
                 sampler: Callable[[], Telemetry] = Telemetry.sample,
                 options: MdnsOptions | None = None) -> None:
        if heartbeat_s <= 0 or (telemetry_s is not None and telemetry_s <= 0):
            raise ConfigError("heartbeat_s and telemetry_s must be > 0")
        self.device, self.fleet = device, fleet
        self.name = instance_name(device, fleet)
        # the SRV target: a host-name label (letters, digits, '-') of its own per node
        self.host_name = re.sub(r"[^A-Za-z0-9-]+", "-", f"edgeweave-{fleet}-{device}")[:63] \
            + ".local."
        self.profile = profile_dict(profile)
        self.heartbeat_s, self.telemetry_s, self.sampler = heartbeat_s, telemetry_s, sampler
        self.options = options or MdnsOptions()
        self._boot = secrets.token_hex(4)  # tells a restarted node from one that went on
        self._seq = 0
        self._links: dict[str, Any] = {}
        self._telemetry: Telemetry | None = None
        self._peer_cb: Callable[[str, dict[str, Any]], None] | None = None
        self._peers: dict[str, str] = {}  # device -> the profile JSON last passed on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._zc: Any = None
        self._browser: _Browser | None = None

    def watch_peers(self, callback: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``callback(device, profile)`` for each other node of the fleet when it is
        first seen or its profile changes (on zeroconf's thread). Call before :meth:`start`."""
        self._peer_cb = callback

    def publish_links(self, peers: dict[str, dict[str, Any]]) -> None:
        """What this node measured to its peers: sent with the next heartbeat."""
        self._links = dict(peers)

    def publish_telemetry(self, t: Telemetry, wait: bool = True, timeout: float = 5.0) -> None:
        self._telemetry = t
        if wait:
            self._update()

    def body(self) -> dict[str, Any]:
        t = self._telemetry
        return {"v": SCHEMA_VERSION, "device": self.device, "boot": self._boot,
                "seq": self._seq, "heartbeat_s": self.heartbeat_s, "profile": self.profile,
                "links": self._links, "telemetry": None if t is None else {
                    "free_memory_mb": round(t.free_memory_mb, 1), "battery": t.battery,
                    "charging": t.charging, "link_quality": t.link_quality}}

    def _info(self) -> Any:
        from zeroconf import ServiceInfo

        from edgeweave.netaddr import parse_hostport

        host, port = parse_hostport(str(self.profile.get("address") or "127.0.0.1:0"),
                                    flag="the announced address")
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
            addresses = [] if ip.is_unspecified else [ip.packed]
        except ValueError:  # a host name: the server resolves the announced address itself
            addresses = []
        return ServiceInfo(SERVICE_TYPE, self.name, port=port, server=self.host_name,
                           properties=encode_txt(self.fleet, self.body()), addresses=addresses,
                           host_ttl=RECORD_TTL_S, other_ttl=RECORD_TTL_S)

    def _on_peer(self, device: str, body: dict[str, Any]) -> None:
        profile = body.get("profile")
        if device == self.device or self._peer_cb is None or not isinstance(profile, dict):
            return
        key = json.dumps(profile, sort_keys=True, default=str)
        if self._peers.get(device) != key:
            self._peers[device] = key
            self._peer_cb(device, profile)

    def start(self, timeout: float = 10.0) -> MdnsAgent:
        from zeroconf import NonUniqueNameException

        self._telemetry = self.sampler() if self.telemetry_s is not None else None
        self._zc = self.options.zeroconf()
        try:
            self._zc.register_service(self._info())  # probes the name first (~1.7 s)
        except NonUniqueNameException:
            self._zc.close()
            raise ConfigError(f"another node already announces {self.device!r} in fleet "
                              f"{self.fleet!r} on this network: give this one another "
                              "--name") from None
        if self._peer_cb is not None:
            self._browser = _Browser(self._zc, self.fleet, self._on_peer,
                                     lambda d: self._peers.pop(d, None))
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.device}",
                                        daemon=True)
        self._thread.start()
        return self

    def _update(self) -> None:
        try:
            self._zc.update_service(self._info())
        except Exception as e:  # noqa: BLE001 - one missed beat; the next one retries
            log.warning("mDNS heartbeat of %s failed: %s", self.device, e)

    def _beat(self) -> None:
        # a fixed rate: an update takes ~0.45 s (zeroconf sends it three times)
        start, since_telemetry = time.monotonic(), 0.0
        while not self._stop.wait(max(0.0, start + (self._seq + 1) * self.heartbeat_s
                                      - time.monotonic())):
            self._seq += 1
            since_telemetry += self.heartbeat_s
            if self.telemetry_s is not None and since_telemetry >= self.telemetry_s:
                since_telemetry = 0.0
                self._telemetry = self.sampler()
            self._update()

    def stop(self, timeout: float = 5.0) -> None:
        """Leave cleanly: a goodbye for the service, so browsers drop it at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._browser is not None:
            self._browser.cancel()
        if self._zc is not None:
            try:
                self._zc.unregister_service(self._info())
            finally:
                self._zc.close()

    def __enter__(self) -> MdnsAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class _Heard:
    """What the server last passed on of one node (compared to tell what changed)."""

    boot: Any
    seq: Any
    profile: str
    links: str
    telemetry: str
    present: bool = True


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


class MdnsSource:
    """The fleet's announcements on the LAN as monitor messages: a new node (or a restarted
    one: a new ``boot``) gives ``profile`` and ``status online``; every update after that a
    ``heartbeat``, plus ``profile``/``links``/``telemetry`` when they changed; a goodbye
    ``status offline`` (reason ``clean``)."""

    def __init__(self, fleet: str, options: MdnsOptions | None = None) -> None:
        self.fleet, self.options = check_name("fleet", fleet), options or MdnsOptions()
        self._zc: Any = None
        self._browser: _Browser | None = None
        self._deliver: Deliver | None = None
        self._heard: dict[str, _Heard] = {}

    @property
    def join_hint(self) -> str:
        return f"edgeweave node --discover mdns --fleet {self.fleet}"

    def start(self, deliver: Deliver, timeout: float) -> None:
        self._deliver = deliver
        self._zc = self.options.zeroconf()
        self._browser = _Browser(self._zc, self.fleet, self._on_body, self._on_removed)

    def stop(self) -> None:
        if self._browser is not None:
            self._browser.cancel()
        if self._zc is not None:
            self._zc.close()

    def publish_status(self, body: bytes) -> None:
        """Nowhere to keep it without a broker: ``/v1/fleet`` on the server serves it."""

    def _on_body(self, device: str, body: dict[str, Any]) -> None:
        deliver = self._deliver
        profile = body.get("profile")
        if deliver is None or not isinstance(profile, dict):
            return
        links, telemetry = body.get("links") or {}, body.get("telemetry")
        now = _Heard(body.get("boot"), body.get("seq"), _key([profile, body.get("heartbeat_s")]),
                     _key(links), _key(telemetry))
        was = self._heard.get(device)
        self._heard[device] = now
        new = was is None or not was.present or was.boot != now.boot

        def changed(what: str) -> bool:
            return new or getattr(was, what) != getattr(now, what)

        if changed("profile"):
            deliver(device, "profile", {"profile": profile,
                                        "heartbeat_s": body.get("heartbeat_s")}, False)
        if new:
            deliver(device, "status", {"state": "online", "reason": "start"}, False)
        if isinstance(links, dict) and changed("links"):
            deliver(device, "links", {"peers": links}, False)
        if isinstance(telemetry, dict) and changed("telemetry"):
            deliver(device, "telemetry", telemetry, False)
        if not new and changed("seq"):
            deliver(device, "heartbeat", {"seq": now.seq}, False)

    def _on_removed(self, device: str) -> None:
        if device in self._heard:
            self._heard[device].present = False
        if self._deliver is not None:
            self._deliver(device, "status", {"state": "offline", "reason": "clean"}, False)


class DiscoverKind(StrEnum):
    MQTT = "mqtt"  # the fleet's broker (--mqtt HOST:PORT)
    MDNS = "mdns"  # DNS-SD on the LAN, no broker


def mdns_choice(discover: str | None, mqtt: str | None,
                interfaces: Sequence[str] = ()) -> MdnsOptions | None:
    """The CLI's ``--discover`` (``mqtt``, the default with ``--mqtt``, or ``mdns``) and
    ``--mdns-interface``: the :class:`MdnsOptions` for mDNS, None for the broker (or
    no control plane); a bad value or combination raises :class:`ConfigError`."""
    try:
        kind = DiscoverKind((discover or DiscoverKind.MQTT).strip().lower())
    except ValueError:
        raise ConfigError(f"--discover {discover!r}: use mqtt (with --mqtt HOST:PORT) or "
                          "mdns (the LAN, no broker)") from None
    if kind is DiscoverKind.MQTT:
        if interfaces:
            raise ConfigError("--mdns-interface works with --discover mdns: add it, or drop "
                              "--mdns-interface")
        if discover is not None and not mqtt:
            raise ConfigError("--discover mqtt needs --mqtt HOST:PORT (the fleet's broker); "
                              "without a broker use --discover mdns")
        return None
    if mqtt:
        raise ConfigError("--discover mdns needs no broker: drop --mqtt, or use "
                          "--discover mqtt")
    return MdnsOptions(tuple(interfaces))
