"""The examples and the CLI, run as a user would run them."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.functional.conftest import CLOUD, keypairs_with, leftovers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, cwd=kw.pop("cwd", ROOT),
                          timeout=kw.pop("timeout", 600), **kw)


def cli(*args):
    return run([sys.executable, "-m", "cloudcompute.cli", "--os-cloud", CLOUD] + list(args))


def test_quickstart_example(state_dir):
    r = run([sys.executable, "examples/quickstart.py", "--samples", "3000000"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pi ~= 3.1" in r.stdout and "| SSH ready" in r.stdout
    assert r.stdout.strip().endswith(": 0")


def test_pandas_example_matches_local(state_dir, tmp_path):
    r = run([sys.executable, "examples/pandas_groupby.py"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "equal to the local computation: yes" in r.stdout


def test_scipy_example_draws_png(state_dir, tmp_path):
    png = tmp_path / "sweep.png"
    r = run([sys.executable, "examples/scipy_sweep.py", "--grid", "3", "--png", str(png)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "9 of 9 starts converged" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ops_example_lists_and_dry_runs(state_dir):
    r = run([sys.executable, "examples/ops/list_and_gc.py"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "gc would delete" in r.stdout


def test_cli_up_run_ssh_logs_down(conn, admin_conn, unique, state_dir, tmp_path):
    up = cli("-f", "json", "up", unique, "--nodes", "2")
    assert up.returncode == 0, up.stderr[-3000:]
    doc = json.loads(up.stdout)
    assert [n["name"] for n in doc["nodes"]] and doc["cluster_id"].startswith(unique)
    try:
        status = json.loads(cli("-f", "json", "status", unique).stdout)
        assert len(status["nodes"]) == 2
        np.save(tmp_path / "a.npy", np.arange(10.0))
        np.save(tmp_path / "b.npy", np.ones(3))
        fn = tmp_path / "work.py"
        fn.write_text("def double(x):\n    return x * 2\n")
        out = tmp_path / "out"
        r = cli("run", unique, "%s:double" % fn, str(tmp_path / "a.npy"),
                str(tmp_path / "b.npy"), "-o", str(out))
        assert r.returncode == 0, r.stderr[-3000:]
        assert np.array_equal(np.load(out / "a.npy"), np.arange(10.0) * 2)
        blob = tmp_path / "blob.bin"
        blob.write_bytes(os.urandom(3 << 20))
        r = cli("-f", "json", "put", unique, str(blob), "in/blob.bin")
        assert r.returncode == 0 and json.loads(r.stdout)["bytes"] == 3 << 20, r.stderr
        assert "100%% (%d of %d bytes)" % (6 << 20, 6 << 20) in r.stderr  # 2 nodes, no tty
        back = tmp_path / "back.bin"
        r = cli("get", unique, "in/blob.bin", str(back), "--node", doc["nodes"][1]["name"])
        assert r.returncode == 0 and back.read_bytes() == blob.read_bytes(), r.stderr
        r = cli("get", unique, "in/nothing", str(back))
        assert r.returncode == 2 and "no file in/nothing" in r.stderr
        r = cli("ssh", unique, "--", "sh", "-c", "echo $((6*7)); exit 3")
        assert r.stdout == "42\n" and r.returncode == 3
        logs = json.loads(cli("-f", "json", "logs", unique).stdout)
        assert all("SSH HOST KEY KEYS" in text for text in logs.values())
        listing = json.loads(cli("-f", "json", "list").stdout)
        assert any(c["name"] == unique and c["orphan_reason"] is None
                   for c in listing["clusters"])
    finally:
        down = cli("down", unique)
    assert down.returncode == 0, down.stderr[-3000:]
    assert leftovers(admin_conn, conn.current_project_id, unique) == []
    assert keypairs_with(conn, unique) == []


@pytest.mark.parametrize("args,message", [
    (["status", "no-such-cluster"], "no cluster named 'no-such-cluster'"),
    (["up", "x1", "--spec", "/nonexistent.yaml"], "cannot read spec file"),
    (["up", "x1", "--nodes", "0"], "count must be an integer >= 1"),
    (["up", "x1", "--flavor", "nope"], "unknown flavor 'nope'"),
    (["run", "x1", "nofunction"], "FILE.py:NAME"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, state_dir, tmp_path, fault):
    fault("CLI: cloudcompute %s" % " ".join(args), "input",
          "exit 2, one-line error containing %r, no traceback" % message)
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    fault.observed = "exit 2: " + r.stderr.strip().splitlines()[0]


def test_cli_unknown_cloud_and_malformed_spec(state_dir, tmp_path, fault):
    fault("CLI: unknown --os-cloud; spec file that is not YAML; unknown spec field",
          "input", "exit 2 and a one-line error each")
    r = run([sys.executable, "-m", "cloudcompute.cli", "--os-cloud", "no-such-cloud", "list"])
    assert r.returncode == 2 and "cloud 'no-such-cloud'" in r.stderr
    bad = tmp_path / "spec.yaml"
    bad.write_text("nodes: [1\n")
    r = cli("up", "x1", "--spec", str(bad))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr
    bad.write_text("nodez: 3\n")
    r = cli("up", "x1", "--spec", str(bad))
    assert r.returncode == 2 and "unknown field(s) nodez" in r.stderr
    fault.observed = "exit 2 each: unknown cloud, not valid YAML, unknown field(s) nodez"


def readme_blocks(lang):
    text = open(os.path.join(ROOT, "README.md")).read()
    return [b.split("```", 1)[0] for b in text.split("```%s\n" % lang)[1:]]


def test_readme_python_blocks_run(state_dir, tmp_path):
    blocks = readme_blocks("python")
    assert len(blocks) == 4
    outputs = []
    for i, block in enumerate(blocks):
        script = tmp_path / ("readme_%d.py" % i)
        script.write_text(block)
        r = run([sys.executable, str(script)], env=dict(os.environ, PYTHONPATH=ROOT))
        assert r.returncode == 0, r.stderr[-3000:]
        outputs.append(r.stdout)
    assert abs(float(outputs[0].strip()) - 3.14159) < 0.01
    assert "[0. 1. 2. 3. 4.]" in outputs[1] and "SHA256:" in outputs[1]
    assert "http://127.0.0.1:" in outputs[2] and "10 stores" in outputs[2]  # Dask
    assert "deadline in 10.0 hours" in outputs[3]  # Clusters that end themselves


def test_readme_cli_block_runs(state_dir, tmp_path):
    block = [b for b in readme_blocks("sh") if "cloudcompute --os-cloud" in b][0]
    (tmp_path / "work.py").write_text("def double(x):\n    return x * 2\n")
    np.save(tmp_path / "a.npy", np.arange(3.0))
    import pandas as pd
    pd.DataFrame({"v": [1.0, 2.0]}).to_parquet(tmp_path / "b.parquet")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "cloudcompute").write_text("#!/bin/sh\nexec %s -m cloudcompute.cli \"$@\"\n"
                                         % sys.executable)
    (bindir / "cloudcompute").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=ROOT, PATH="%s:%s" % (bindir, os.environ["PATH"]))
    try:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    finally:  # the block's own `down` may not have run
        subprocess.run(["bash", "-c", "cloudcompute --os-cloud %s down demo" % CLOUD],
                       env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert np.array_equal(np.load(tmp_path / "out" / "a.npy"), np.arange(3.0) * 2)
    assert np.array_equal(np.load(tmp_path / "a-back.npy"), np.arange(3.0))
    assert '"cluster_id": "demo-' in r.stdout


def test_readme_quick_start_demo_runs(state_dir):
    """The first Quick start command, as written. (The second, tools/test.sh, is
    the command that runs this suite: .ci/run runs it verbatim.)"""
    block = [b for b in readme_blocks("sh") if "tools/demo.sh" in b][0]
    lines = [ln.split("#", 1)[0].strip() for ln in block.strip().splitlines()]
    assert lines == ["./tools/demo.sh", "./tools/test.sh"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TOX_", "VIRTUAL_ENV", "PYTEST_")) and k != "PYTHONPATH"}
    r = run(["bash", "-c", lines[0]], env=env, timeout=1200)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "pi ~= 3.14" in r.stdout and "| teardown           |" in r.stdout
    left = [ln for ln in r.stdout.splitlines()
            if ln.startswith("resources left in the cloud for cluster quickstart-")]
    assert len(left) == 1 and left[0].endswith(": 0"), r.stdout[-2000:]


def test_readme_local_cloud_block_runs():
    block = [b for b in readme_blocks("sh") if "openstack server list" in b][0]
    r = run(["bash", "-euo", "pipefail", "-c", block])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "" or "ID" in r.stdout


def test_readme_clouds_yaml_block_is_valid(tmp_path, monkeypatch):
    import openstack.config
    import yaml

    from cloudcompute.config import cloud_settings
    block = readme_blocks("yaml")[0]
    path = tmp_path / "clouds.yaml"
    path.write_text(block)
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE", raising=False)
    assert "mycloud" in yaml.safe_load(block)["clouds"]
    region = openstack.config.OpenStackConfig(config_files=[str(path)]).get_one("mycloud")
    assert region.config["auth_type"] == "v3applicationcredential"
    settings = cloud_settings(type("Conn", (), {"config": region})())
    assert settings["floating_ips"] == "auto" and settings["ssh_user"] == "debian"
