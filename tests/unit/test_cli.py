import argparse
import json
import os

import numpy as np
import pandas as pd
import pytest

from cloudcompute import cli


def ns(**kw):
    base = dict(spec=None, nodes=None, flavor=None, image=None, network=None, ssh_user=None,
                ssh_cidr=None, floating_ips=None, key_file=None, ttl_hours=None, name="c1")
    base.update(kw)
    return argparse.Namespace(**base)


def test_spec_file_yaml_and_toml_flags_win(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("nodes: 2\nflavor: m1.small\ngroups: []\ntimeouts: {ssh: 30}\n")
    spec = cli.build_spec(ns(spec=str(y), flavor="m1.tiny"))
    assert spec.nodes == 2 and spec.flavor == "m1.tiny" and spec.timeouts.ssh == 30
    t = tmp_path / "s.toml"
    t.write_text('image = "img"\n[[groups]]\nname = "a"\ncount = 3\n')
    spec = cli.build_spec(ns(spec=str(t)))
    assert spec.groups[0].count == 3 and spec.image == "img"


@pytest.mark.parametrize("text,message", [
    ("nodes: [1\n", "not valid YAML"),
    ("- 1\n", "must hold a mapping"),
    ("nodez: 1\n", "unknown field(s) nodez"),
    ("groups: [{name: a, cnt: 1}]\n", "unexpected keyword argument 'cnt'"),
])
def test_bad_spec_files(tmp_path, text, message):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(cli.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cli.build_spec(ns(spec=str(p)))


def test_load_function_from_file_and_errors(tmp_path):
    f = tmp_path / "mod_for_cli.py"
    f.write_text("def f(x):\n    return x + 1\nvalue = 3\n")
    assert cli.load_function("%s:f" % f)(1) == 2
    with pytest.raises(cli.UsageError, match="has no function 'value'"):
        cli.load_function("%s:value" % f)
    with pytest.raises(cli.UsageError, match="no such file"):
        cli.load_function("/nonexistent.py:f")
    with pytest.raises(cli.UsageError, match="FILE.py:NAME"):
        cli.load_function("justaname")


def test_inputs_and_outputs_round_trip(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3))
    pd.DataFrame({"x": [1, 2]}).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "j.json").write_text(json.dumps({"k": 1}))
    assert list(cli.load_input(str(tmp_path / "a.npy"))) == [0, 1, 2]
    assert list(cli.load_input(str(tmp_path / "d.csv"))["x"]) == [1, 2]
    assert cli.load_input(str(tmp_path / "j.json")) == {"k": 1}
    with pytest.raises(cli.UsageError, match="use .npy, .parquet, .csv or .json"):
        (tmp_path / "x.bin").write_bytes(b"1")
        cli.load_input(str(tmp_path / "x.bin"))
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(cli.UsageError, match="cannot read"):
        cli.load_input(str(bad))
    out = tmp_path / "out"
    assert cli.save_output(np.ones(2), "r", str(out)).endswith("r.npy")
    assert cli.save_output(pd.DataFrame({"a": [1]}), "f", str(out)).endswith("f.parquet")
    assert cli.save_output({"a": 1}, "j", str(out)).endswith("j.json")


def test_main_maps_errors_to_exit_codes(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CLOUDCOMPUTE_STATE_DIR", str(tmp_path))
    monkeypatch.setattr("cloudcompute.config.connect", lambda *a, **k: None)
    assert cli.main(["status", "missing"]) == 2
    err = capsys.readouterr().err
    assert "no cluster named 'missing'" in err and "Traceback" not in err


def test_byte_progress_without_a_terminal_logs_every_tenth(caplog):
    from cloudcompute.cli.progress import byte_bar
    with caplog.at_level("INFO", logger="cloudcompute.cli.progress"):
        with byte_bar(1000, "put x") as moved:
            for _ in range(40):
                moved(25)
    assert {r.levelname for r in caplog.records} == {"INFO"}
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "put x: 10% (100 of 1000 bytes)"
    assert lines[-1] == "put x: 100% (1000 of 1000 bytes)" and len(lines) == 10


def test_put_of_a_missing_file_is_usage_error(capsys):
    assert cli.main(["put", "c1", "/no/such/file", "x"]) == 2
    assert "no such file: /no/such/file" in capsys.readouterr().err


FAKE_CLI = """
import sys
from cloudcompute import cli
from cloudcompute.cli import clustercmds, opscmds
from cloudcompute.cli.progress import progress_bar


def many(args):
    cli.emit(args, {"clusters": [{"name": "c%d" % i, "pad": "x" * 100} for i in range(5000)]})


def steps(args):
    with progress_bar(2, "steps") as tick:
        tick("n0 created")
        tick("n0 ssh")


opscmds.cmd_list = many
clustercmds.cmd_status = steps
sys.exit(cli.main(sys.argv[1:]))
"""


def test_output_into_a_closed_pipe_ends_quietly():
    import subprocess
    import sys
    # 500 kB of JSON: far more than a pipe holds, so writes meet the closed end.
    proc = subprocess.Popen([sys.executable, "-c", FAKE_CLI, "-f", "json", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(1) == b"{"
    proc.stdout.close()  # as `| head -c 1` does
    err = proc.stderr.read().decode()
    assert proc.wait(10) == 141, err
    assert err == ""


def test_progress_without_a_terminal_is_info_and_shown_by_default():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", FAKE_CLI, "status", "c1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert [ln.split(" ", 2)[2] for ln in lines] == [
        "INFO cloudcompute.cli.progress: [1/2] n0 created",
        "INFO cloudcompute.cli.progress: [2/2] n0 ssh"]


def test_ssh_verifies_the_host_by_its_recorded_key_only_and_cleans_up(monkeypatch, tmp_path):
    import types

    from cloudcompute.cluster import Cluster
    from cloudcompute.record import SSHAccess
    node = types.SimpleNamespace(name="n0", address="10.0.0.5", ssh_address="10.0.0.5",
                                 host_keys=["ssh-ed25519 AAAAC3Nz"])
    fake = types.SimpleNamespace(nodes=[node], node_names=lambda: ["n0"],
                                 close_connections=lambda: None,
                                 state=types.SimpleNamespace(record=types.SimpleNamespace(
                                     ssh=SSHAccess(user="debian", key_file="/k/c-1.key"))))
    monkeypatch.setattr(Cluster, "attach", classmethod(lambda cls, *a, **k: fake))
    seen = {}

    def call(argv):
        known = next(a for a in argv if a.startswith("UserKnownHostsFile="))
        seen["argv"], seen["known"] = argv, known.split("=", 1)[1]
        seen["text"] = open(seen["known"]).read()
        return 7
    from cloudcompute.cli import nodecmds
    monkeypatch.setattr(nodecmds.subprocess, "call", call)
    assert cli.main(["ssh", "c1"]) == 7
    argv = seen["argv"]
    assert argv[-4:] == ["-l", "debian", "--", "10.0.0.5"]
    assert not any("@" in a for a in argv)
    for opt in ("-F", "/dev/null"), ("-i", "/k/c-1.key"):
        assert argv[argv.index(opt[0]) + 1] == opt[1]
    for o in ("GlobalKnownHostsFile=/dev/null", "IdentitiesOnly=yes",
              "StrictHostKeyChecking=yes"):
        assert argv[argv.index(o) - 1] == "-o"
    assert seen["text"] == "10.0.0.5 ssh-ed25519 AAAAC3Nz\n"
    assert not os.path.exists(seen["known"]) and not os.path.exists(
        os.path.dirname(seen["known"]))


def test_bulk_ssh_passes_the_user_as_an_argument_never_as_an_option(tmp_path):
    from cloudcompute.ssh import bulk
    b = bulk.OpenSSHBulk("n0", "10.0.0.5", "-oProxyCommand=touch /tmp/x", "/k", ["ssh-ed25519 A"])
    try:
        assert b.dest == ["-l", "-oProxyCommand=touch /tmp/x", "--", "10.0.0.5"]
        assert b.base[1:len(bulk.openssh_options("/k", b.known)) + 1] == bulk.openssh_options(
            "/k", b.known)
        assert "-F" in b.base and "GlobalKnownHostsFile=/dev/null" in b.base
    finally:
        import shutil
        shutil.rmtree(b.dir)


def test_run_refuses_inputs_whose_results_would_share_a_name(tmp_path, capsys, monkeypatch):
    """a/x.npy and b/x.npy (or x.npy and x.csv) would write one result file
    over the other: refused before any cluster is reached."""
    from cloudcompute.cluster import Cluster

    def no_cloud(*a, **k):
        raise AssertionError("the cluster was reached")
    monkeypatch.setattr(Cluster, "attach", classmethod(no_cloud))
    f = tmp_path / "fn_for_cli_run.py"
    f.write_text("def f(x):\n    return x\n")
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        np.save(tmp_path / d / "x.npy", np.arange(2))
    (tmp_path / "a" / "x.json").write_text("1")
    for inputs in (["a/x.npy", "b/x.npy"], ["a/x.npy", "a/x.json"]):
        argv = ["run", "c1", "%s:f" % f] + [str(tmp_path / p) for p in inputs]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "two inputs share the name x" in err, err


def _fake_cluster(monkeypatch, stat_output="12\n"):
    import types

    from cloudcompute.cluster import Cluster
    from cloudcompute.ssh.client import CommandResult
    node = types.SimpleNamespace(name="n0", server_id="id-0", address="10.0.0.5",
                                 host_keys=[])
    console = types.SimpleNamespace(get_server_console_output=lambda sid: {"output": "boot"})
    fake = types.SimpleNamespace(
        name="c1", nodes=[node], node_names=lambda: ["n0"], close_connections=lambda: None,
        conn=types.SimpleNamespace(compute=console),
        connection=lambda n: types.SimpleNamespace(run=lambda argv, warn=False: CommandResult(
            node="n0", command="stat", exit_code=0, stdout=stat_output, stderr="", duration=0.0)),
        get=lambda *a, **k: None)
    monkeypatch.setattr(Cluster, "attach", classmethod(lambda cls, *a, **k: fake))
    return fake


def test_logs_of_an_unknown_node_is_usage_error(monkeypatch, capsys):
    _fake_cluster(monkeypatch)
    assert cli.main(["logs", "c1", "n0"]) == 0
    assert capsys.readouterr().out == "==> n0 <==\nboot\n"
    assert cli.main(["logs", "c1", "n9"]) == 2
    assert "cluster c1 has no node 'n9' (nodes: n0)" in capsys.readouterr().err


def test_get_of_a_size_the_node_garbles_is_one_line(monkeypatch, capsys, tmp_path):
    _fake_cluster(monkeypatch, stat_output="twelve\n")
    assert cli.main(["get", "c1", "f", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n0: stat f printed 'twelve'" in err, err


def test_status_table_shows_the_host_key_fingerprints(monkeypatch, capsys):
    from cloudcompute.record import ClusterSummary, NodeSummary
    fake = _fake_cluster(monkeypatch)
    fake.describe = lambda: ClusterSummary("c1", "c1-0badc0de", [
        NodeSummary("n0", "node", "id-0", "10.0.0.5", "10.0.0.5", None, ["SHA256:abc"], {}),
        NodeSummary("n1", "node", "id-1", None, None, None, [], {})], {"total": 9.5})
    assert cli.main(["status", "c1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["node", "group", "address", "server", "id", "host", "key"]
    assert out[1].split() == ["n0", "node", "10.0.0.5", "id-0", "SHA256:abc"]
    assert out[2].split() == ["n1", "node", "None", "id-1", "-"]
    assert cli.main(["-f", "json", "status", "c1"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "name": "c1", "cluster_id": "c1-0badc0de", "timings": {"total": 9.5}, "nodes": [
            {"name": "n0", "group": "node", "server_id": "id-0", "address": "10.0.0.5",
             "fixed_ip": "10.0.0.5", "floating_ip": None, "timings": {},
             "host_key_fingerprints": ["SHA256:abc"]},
            {"name": "n1", "group": "node", "server_id": "id-1", "address": None,
             "fixed_ip": None, "floating_ip": None, "timings": {},
             "host_key_fingerprints": []}]}


@pytest.mark.parametrize("name,raw,message", [
    ("s.toml", b"nodes = [1\n", "not valid TOML"),
    ("s.toml", b"nodes = 1\n\xff\n", "not valid TOML"),
    ("s.yaml", b"nodes: 1\n\xff\n", "not valid YAML"),
])
def test_spec_files_that_do_not_parse_are_usage_errors(tmp_path, name, raw, message):
    p = tmp_path / name
    p.write_bytes(raw)
    with pytest.raises(cli.UsageError, match=message):
        cli.build_spec(ns(spec=str(p)))


def test_ssh_to_a_node_without_an_address_is_one_line(monkeypatch, capsys):
    from cloudcompute.record import NodeInfo, SSHAccess
    fake = _fake_cluster(monkeypatch)
    fake.nodes = [NodeInfo(name="n0", group="node", host_keys=["ssh-ed25519 AAAA"])]
    fake.state = type("S", (), {"record": type("R", (), {"ssh": SSHAccess("debian", "/k")})})
    assert cli.main(["ssh", "c1"]) == 1
    err = capsys.readouterr().err
    assert err == "cloudcompute: error: n0: no IPv4 address, fixed or floating, to reach it by\n"
