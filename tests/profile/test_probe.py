"""Host probe: microbenchmarks return sane figures; the profile is cached atomically."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from edgeweave.profile import microbench as mb
from edgeweave.profile import probe


def test_short_microbenchmarks_measure_something() -> None:
    assert 1e8 < mb.memory_bandwidth(mbytes=16) < 1e12
    assert 1e7 < mb.gemv_bandwidth(n_mats=4) < 1e12
    assert 1e-8 < mb.op_overhead(45) < 1e-2


def test_probe_caches_under_edgeweave_home(tmp_home: Path, monkeypatch) -> None:
    calls = []
    fake = probe.HostProfile(machine=probe._machine(), cpus=2, memory_available=8 * 10**9,
                             mem_bw=2e10, gemv_bw=1e10, matmul={"fp32": 5e10},
                             op_overhead_s=5e-6, probed_at=1.0)

    def measure(model=None, with_model=True, threads=None):
        calls.append(1)
        return fake

    monkeypatch.setattr(probe, "measure", measure)
    hp = probe.probe(with_model=False)
    path = tmp_home / "profile" / "host.json"
    assert path.is_file() and json.loads(path.read_text()) == asdict(fake)
    assert probe.probe(with_model=False) == hp and len(calls) == 1  # served from the cache
    probe.probe(refresh=True, with_model=False)
    assert len(calls) == 2
    assert hp.device().name == "host" and hp.calibration().bw_efficiency == 0.5
    path.write_text(json.dumps({**asdict(fake), "machine": "elsewhere"}))
    assert probe.load_cached() is None  # another machine's profile is not reused
