"""Announcements -> Fleet, pure: classes, measured figures, measured links, a fleet file on
top, certificates checked against the fleet CA. No broker, no nodes."""

from __future__ import annotations

import pytest

from edgeweave.control.announce import Announcement, cert_fingerprint, verify_certificate
from edgeweave.control.discovered import fleet_from_announcements, overlay_from_dict
from edgeweave.errors import ConfigError
from edgeweave.plan.partition import place_tables, tables_for
from edgeweave.security.certs import init_fleet, issue
from tests.conftest import make_cfg

MEASURED = {"memory": 8 << 30, "mem_bw": 20e9, "compute": {"fp32": 50e9}, "cpus": 4,
            "source": "quick probe (numpy)"}


def ann(device: str, **kw) -> Announcement:
    base = {"address": f"127.0.0.1:{5000 + int(device[-1])}", "variants": ("fp32",),
            "device_class": "rpi5-8gb"}
    base.update(kw)
    if "measured" in kw:
        base["device_class"] = None
    return Announcement(device, **base)


def test_announcement_round_trips_and_refuses_bad_input():
    a = ann("n1", zone="home", battery=0.5, measured=MEASURED)
    back = Announcement.from_profile("n1", a.to_profile())
    assert back == a and back.profile().memory == 8 << 30
    assert back.profile().name == "measured:n1"
    with pytest.raises(ConfigError, match="device class .* or measured"):
        Announcement("n1", "127.0.0.1:1", ("fp32",))
    with pytest.raises(ConfigError, match="no gRPC address"):
        Announcement.from_profile("n1", {"cpus": 2})  # an announcement of an older node
    with pytest.raises(ConfigError, match="battery"):
        ann("n1", battery=1.5)
    with pytest.raises(ConfigError, match="unknown device class"):
        ann("n1", device_class="toaster").profile()


def test_fleet_from_announcements_uses_classes_measurements_and_links():
    anns = [ann("n2", measured=MEASURED), ann("n0"), ann("n1", zone="home")]
    meas = {"n0": {"n1": {"rtt_s": 0.002, "up_bps": 80e6}},
            "n1": {"n0": {"rtt_s": 0.004, "up_bps": 40e6}}}
    d = fleet_from_announcements(anns, meas, name="lab")
    f = d.fleet
    assert f.name == "lab" and f.ids == ("n0", "n1", "n2") and f.entry == f.exit == "n0"
    assert f.device("n2").profile.mem_bw == 20e9 and f.device("n0").profile.name == "rpi5-8gb"
    assert f.device("n1").zone == "home" and f.device("n0").artifacts == ("fp32",)
    links = {frozenset((ln.a, ln.b)): ln for ln in f.links}
    assert len(links) == 3  # every pair: nodes of one fleet reach each other
    m = links[frozenset(("n0", "n1"))]
    assert (m.a, m.b, m.profile.up_bps, m.profile.down_bps) == ("n0", "n1", 80e6, 40e6)
    assert m.profile.latency_s == pytest.approx(0.001)  # the better round trip, one way
    assert links[frozenset(("n0", "n2"))].profile.name == "wifi5"  # not measured yet
    assert any("not measured" in n for n in d.notes)
    assert set(d.variants) == {"fp32"}
    # the planner runs on it as on any fleet
    plan = place_tables(tables_for(make_cfg(), f, variants=d.variants), "latency")
    assert {s.device for s in plan.stages} <= set(f.ids)


def test_fleet_file_overlay_pins_classes_links_policy_and_entry():
    doc = {"name": "home", "entry": "n1", "policy": {"keep_in": "home"},
           "devices": {"n0": {"class": "rpi-zero-2w", "zone": "home", "battery": 0.9},
                       "n1": {"zone": "home"}, "ghost": {"class": "rpi4-4gb"}},
           "links": [["n0", "n1", "ethernet"], ["n1", "ghost", "wifi4"]]}
    ov = overlay_from_dict(doc)
    meas = {"n0": {"n1": {"rtt_s": 0.01, "up_bps": 1e6}}}
    d = fleet_from_announcements([ann("n0"), ann("n1"), ann("n2", zone="cloud")], meas, ov)
    f = d.fleet
    assert f.name == "home" and f.entry == f.exit == "n1"
    assert f.policy.keep_in == "home"
    assert f.device("n0").profile.name == "rpi-zero-2w" and f.device("n0").battery == 0.9
    assert f.device("n2").zone == "cloud"
    link = next(ln for ln in f.links if {ln.a, ln.b} == {"n0", "n1"})
    assert link.profile.name == "ethernet"  # the file's link beats the measurement
    assert any("ghost" in n for n in d.notes)  # named in the file, not announced
    with pytest.raises(ConfigError, match="unknown keys|not allowed|unknown"):
        overlay_from_dict({"devices": {"n0": {"colour": "red"}}})
    with pytest.raises(ConfigError, match="no node has announced"):
        fleet_from_announcements([], {})
    with pytest.raises(ConfigError, match="unknown variant"):
        fleet_from_announcements([ann("n0", variants=("int5",))])


def test_certificates_verify_only_against_the_fleet_ca(tmp_path):
    init_fleet(tmp_path / "ours", ("n0",))
    issue(tmp_path / "ours", "n1")
    init_fleet(tmp_path / "theirs", ("n0",))
    ca = (tmp_path / "ours" / "ca.pem").read_bytes()
    mine = (tmp_path / "ours" / "n0.pem").read_text()
    foreign = (tmp_path / "theirs" / "n0.pem").read_text()
    assert verify_certificate(mine, ca, "n0") is None
    assert "not signed by the fleet CA" in verify_certificate(foreign, ca, "n0")
    assert "issued to 'n0', not 'n1'" in verify_certificate(mine, ca, "n1")  # a borrowed cert
    assert "no certificate" in verify_certificate(None, ca, "n0")
    assert "does not parse" in verify_certificate("junk", ca, "n0")
    assert len(cert_fingerprint(mine)) == 64 and cert_fingerprint(mine) != cert_fingerprint(
        foreign)


def test_a_node_without_a_class_announces_this_hosts_measured_figures():
    from edgeweave.control.announce import quick_probe

    m = quick_probe()
    assert m["memory"] > 0 and m["mem_bw"] > 1e8 and m["compute"]["fp32"] > 1e8
    a = Announcement.from_profile("n0", Announcement("n0", "127.0.0.1:1", ("int4",),
                                                     measured=m).to_profile())
    prof = a.profile()
    assert prof.mem_bw == m["mem_bw"] and a.device_class is None
    d = fleet_from_announcements([a])
    assert d.fleet.device("n0").profile is not None and set(d.variants) == {"int4"}
