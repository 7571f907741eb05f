"""The benchmark harness works end to end (a smoke run, not the figures)."""
import json
import subprocess
import sys

from tests.functional.test_examples_and_cli import ROOT


def test_bench_quick_writes_results(tmp_path, state_dir):
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((tmp_path / "bench-results.json").read_text())
    assert len(data["targets"]) >= 10
    for t in data["targets"]:
        assert set(t) == {"name", "measured", "target", "unit", "better", "met"}
        assert t["better"] in ("lower", "higher") and isinstance(t["met"], bool)
    row = data["provisioning"]["1"]
    assert row["cloudcompute"]["requests"] > 0 and len(row["cloudcompute"]["runs"]) == 1
    for name in ("cloudcompute", "sdk_ssh_first_task"):  # both timed to a first task
        assert 0 < row[name]["up_s"] <= row[name]["first_task_s"]
    assert any(t["name"].startswith("provision N=1: time to first task") for t in
               data["targets"])
    own = data["cloud_figures"]
    assert len(own["runs"]) == own["reps"] == 3
    for key in ("active_s", "ssh_after_active_s", "delete_s"):
        assert 0 < own[key]["min"] <= own[key]["median"] <= own[key]["max"]
    assert own["rss_mib"] is None or own["rss_mib"] > 500
    assert any(t["name"].startswith("cloud: create -> ACTIVE") for t in data["targets"])
    for png in ("bench-provisioning.png", "bench-payload.png", "bench-tasks.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "| target | measured |" in (tmp_path / "bench-results.md").read_text()
