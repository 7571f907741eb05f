"""Unit tests of the control-plane benchmark's own logic: the fake compute host
is stopped whatever happens, a failed run is a row, targets and table."""
import os
import stat

import pytest

from benchmarks import controlplane as cp
from benchmarks.__main__ import target
from cloudcompute import config


def _aio(tmp_path, up_rc=0):
    """A stand-in for devstack/aio/cloud that logs its arguments."""
    log = tmp_path / "calls"
    script = tmp_path / "cloud"
    script.write_text("#!/bin/sh\necho \"$*\" >> %s\n[ \"$2\" = up ] && exit %d\nexit 0\n"
                      % (log, up_rc))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), log


def _row(n, **kw):
    row = dict(n=n, up_s=10.0, down_s=5.0, leftovers=[],
               **cp.per_server(n, 2 * n, 0.005 * n, n, 0.002 * n))
    row.update(kw)
    return row


def test_fake_compute_goes_down_after_every_size(tmp_path, monkeypatch):
    aio, log = _aio(tmp_path)
    seen = []
    monkeypatch.setattr(cp, "one_size", lambda cloud, n, log, raw: seen.append(n) or _row(n))
    rows = cp.run("c", [3, 5], lambda msg: None, aio=aio)
    assert seen == [3, 5] and sorted(rows) == [3, 5]
    assert log.read_text().split("\n")[:2] == ["fake-compute up", "fake-compute down"]


def test_fake_compute_goes_down_when_a_run_raises(tmp_path, monkeypatch):
    aio, log = _aio(tmp_path)

    def boom(cloud, n, log, raw):
        raise KeyboardInterrupt
    monkeypatch.setattr(cp, "one_size", boom)
    with pytest.raises(KeyboardInterrupt):
        cp.run("c", [3], lambda msg: None, aio=aio)
    assert log.read_text().split() == ["fake-compute", "up", "fake-compute", "down"]


def test_failed_fake_compute_up_is_a_failed_row_for_every_size(tmp_path, monkeypatch):
    aio, log = _aio(tmp_path, up_rc=3)
    monkeypatch.setattr(cp, "one_size", lambda *a: pytest.fail("ran without the host"))
    rows = cp.run("c", [100, 250], lambda msg: None, aio=aio)
    assert sorted(rows) == [100, 250]
    assert all(r["error"].startswith("fake-compute up failed") for r in rows.values())
    assert log.read_text().split() == ["fake-compute", "up"]  # nothing to take down
    ts = cp.targets(100, rows[100], target)
    assert len(ts) == 1 and not ts[0]["met"] and "failed" in ts[0]["name"]


def test_per_server_figures():
    f = cp.per_server(500, 750, 2.5, 1000, 1.0)
    assert f == {"requests_per_server": 1.5, "client_cpu_ms_per_server": 5.0,
                 "down_requests_per_server": 2.0, "down_client_cpu_ms_per_server": 2.0}


def test_targets_met_and_missed():
    good = {t["name"]: t for t in cp.targets(250, _row(250), target)}
    assert len(good) == 3 and all(t["met"] for t in good.values())
    bad = cp.targets(250, _row(250, leftovers=["x: server s"], requests_per_server=2.4,
                                client_cpu_ms_per_server=12.0), target)
    assert [t["met"] for t in bad] == [False, False, False]
    assert [t["measured"] for t in bad] == [1, 2.4, 12.0]


def test_table_rows_in_order_with_a_failure():
    rows = {"500": {"n": 500, "error": "boom | bang", "servers_left": ["a", "b"]},
            "100": _row(100)}
    lines = cp.table(rows)
    body = [ln for ln in lines if ln.startswith("| 1") or ln.startswith("| 5")]
    assert body[0].startswith("| 100 | 10.0 | 5.0 | 2.00 | 1.00 | 5.0 | 2.0 | 0 |")
    assert body[1].startswith("| 500 | failed: boom / bang") and "2 servers" in body[1]
    rows["100"]["raw_parallel"] = dict(up_s=30.0, down_s=20.0, requests=150,
                                       down_requests=300, client_cpu_s=0.2)
    raw = [ln for ln in cp.table(rows) if "raw parallel" in ln]
    assert raw == ["| 100, raw parallel per-server POSTs | 30.0 | 20.0 | 1.50 | 3.00 | 2.0 | | |"]
    assert cp.table({}) == []


def test_spec_is_valid_and_sized_for_n():
    spec = config.validate(cp.spec_for("cpabc", 500).with_settings(
        {"image": "img", "flavor": "m1.tiny", "network": "private"}))
    assert spec.create_network and spec.network is None  # the shared /24 is too small
    assert spec.groups[0].flavor == cp.FLAVOR and spec.total_nodes == 500
    assert spec.timeouts.active >= 1500 and spec.timeouts.teardown >= 1000


def test_plot_skips_failed_rows(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cp.plot({"100": {"error": "x", "servers_left": []}}, str(tmp_path), plt)
    assert not os.listdir(tmp_path)
    cp.plot({"100": _row(100), "250": _row(250)}, str(tmp_path), plt)
    assert os.listdir(tmp_path) == ["bench-control-plane.png"]
