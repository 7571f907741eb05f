"""Fault campaign, bad input, concurrency and security checks on the local cloud."""
import glob
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cloudcompute import Cluster, ClusterSpec, Timeouts, connect, gc
from cloudcompute.exceptions import (CloudComputeError, ConfigError, EnvironmentMismatch,
                                     PreflightError, SerializationError)
from tests.functional import jobfuncs as jf
from tests.functional.conftest import CLOUD, shared_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    with shared_cluster(tmp_path_factory, "inpf", 1) as c:
        yield c


BAD_SPECS = [
    ("unknown image", dict(image="no-such-image"), PreflightError,
     "unknown image 'no-such-image'"),
    ("unknown flavor", dict(flavor="m9.huge"), PreflightError, "unknown flavor 'm9.huge'"),
    ("unknown network", dict(network="nowhere"), PreflightError, "unknown network 'nowhere'"),
    ("quota too small for 500 nodes", dict(nodes=500), PreflightError,
     "compute quota instances: need 500"),
    ("node count 0", dict(nodes=0), ConfigError, "count must be an integer >= 1"),
    ("negative timeout and bad SSH CIDR",
     dict(timeouts=Timeouts(ssh=-1), ssh_cidr="10.0.0.0/99"), ConfigError, "ssh_cidr"),
]


@pytest.mark.parametrize("case,kw,exc,match", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_fails_before_anything_is_created(case, kw, exc, match, fault, unique,
                                                   state_dir, conn):
    fault(case, "input", "%s naming it; nothing created" % exc.__name__)
    kw.setdefault("nodes", 1)
    with fault.raises(exc, match=match):
        Cluster(ClusterSpec(name=unique, **kw), cloud=CLOUD).up()
    assert os.listdir(state_dir) == []


def test_unknown_cloud_name(fault):
    fault("unknown cloud name", "input", "ConfigError naming the cloud")
    with fault.raises(ConfigError, match="no-such-cloud"):
        connect(cloud="no-such-cloud")


def test_cluster_name_with_shell_metacharacters(fault, state_dir):
    fault("cluster name with shell metacharacters", "input",
          "ConfigError before any API call")
    with fault.raises(ConfigError, match="name"):
        Cluster(ClusterSpec(name="x; rm -rf ~", nodes=1), cloud=CLOUD)


def test_hostile_remote_paths_are_quoted(one, fault, tmp_path):
    fault("remote paths and arguments with shell metacharacters", "security",
          "written and read literally; nothing executed")
    node = one.nodes[0].name
    hostile = "odd dir/$(touch PWNED1);`touch PWNED2`'\"; touch PWNED3 #.npy"
    a = np.arange(5)
    one.put(a, hostile)
    assert np.array_equal(one.get(hostile, node=node), a)
    r = one.connection(node).run(["ls", "-A", "odd dir"])
    assert r.stdout.strip().splitlines() == [hostile.split("/", 1)[1]]
    pwned = one.connection(node).run(["sh", "-c", "ls PWNED* 2>/dev/null | wc -l"])
    assert pwned.stdout.strip() == "0"
    assert one.connection(node).run(["echo", "$(id)", "`id`"]).stdout == "$(id) `id`\n"
    fault.observed = "file round-tripped under its literal name; no PWNED file; $(id) echoed"


def test_unserializable_function_is_refused_before_sending(one, fault):
    fault("function that cannot be sent (lambda without allow_pickle)", "input",
          "SerializationError before anything is sent")
    with fault.raises(SerializationError, match="allow_pickle=True"):
        one.map(lambda x: x, [1, 2])


def test_by_value_function_on_a_wrong_version_node(one, fault):
    fault("function by value on a node with other numpy/pandas and no cloudpickle",
          "input", "EnvironmentMismatch naming both versions")
    with fault.raises(EnvironmentMismatch, match="cloudpickle") as err:
        one.run(lambda: 1, allow_pickle=True)
    text = str(err.value)
    assert "numpy" in text and "here" in text and "on the node" in text


def test_result_that_needs_pickle_is_not_unpickled(one, fault):
    fault("remote result that only pickle can carry, caller did not opt in", "security",
          "an error; nothing unpickled on the client")
    with fault.raises(CloudComputeError, match="pickle"):
        one.run(jf.returns_set)


def test_huge_argument_goes_through_intact(one, fault):
    fault("512 MiB argument", "input", "staged as a file, checked end to end, correct result")
    big = np.random.default_rng(3).random(64 * 1024 * 1024)
    assert one.run(jf.checksum, big) == jf.checksum(big)
    fault.observed = "remote sha256 of the 512 MiB array equals the local one"


def test_two_live_clusters_and_gc_in_between(fault, unique, state_dir, conn):
    fault("two clusters in one project, gc --yes between their jobs", "concurrency",
          "gc deletes neither; both keep working and go down cleanly")
    a = Cluster(ClusterSpec(name=unique + "a", nodes=1), cloud=CLOUD).up()
    try:
        with Cluster(ClusterSpec(name=unique + "b", nodes=1), cloud=CLOUD) as b:
            report = gc.collect(conn, dry_run=False)
            mine = [o for o in report if unique in (o.found.name or "")]
            assert mine == []
            assert a.run(jf.echo, 1) == 1 and b.run(jf.echo, 2) == 2
    finally:
        a.down()
    fault.observed = "gc collected %d cluster(s), none of these two; both ran a task" % len(
        report)


SECRET_RUN = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.DEBUG, filename=sys.argv[2])
    from cloudcompute import Cluster, ClusterSpec
    from tests.functional import jobfuncs as jf
    with Cluster(ClusterSpec(name=sys.argv[1], nodes=1)) as c:
        assert c.run(jf.echo, 3) == 3
        open(sys.argv[3], "w").write(c.conn.auth_token)
""")


def test_no_secret_in_logs_or_state(fault, unique, state_dir, tmp_path, conn):
    fault("password, token or private key in DEBUG logs or state files", "security",
          "none of them appears; key and state files are 0600")
    log, token_file = tmp_path / "debug.log", tmp_path / "token"
    copies = tmp_path / "copies"
    env = dict(os.environ, OS_CLOUD=CLOUD)
    watcher = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, shutil, sys, time
        src, dst = sys.argv[1], sys.argv[2]
        os.makedirs(dst, exist_ok=True)
        end = time.time() + 120
        while time.time() < end:
            for f in os.listdir(src):
                try:
                    st = os.stat(os.path.join(src, f))
                    shutil.copy(os.path.join(src, f), os.path.join(dst, f))
                    open(os.path.join(dst, f + ".mode"), "w").write(oct(st.st_mode & 0o777))
                except OSError:
                    pass
            time.sleep(0.05)
    """), state_dir, str(copies)])
    try:
        r = subprocess.run([sys.executable, "-c", SECRET_RUN, unique, str(log),
                            str(token_file)], env=env, capture_output=True, text=True,
                           timeout=180, cwd=ROOT)
    finally:
        watcher.kill()
        watcher.wait()
    assert r.returncode == 0, r.stderr[-3000:]
    text = log.read_text() + r.stderr
    password = conn.config.config["auth"]["password"]
    token = token_file.read_text().strip()
    keys = glob.glob(str(copies / "*.key"))
    assert keys, "the key file was never seen"
    key_body = [ln for ln in open(keys[0]).read().splitlines() if "PRIVATE" not in ln][1]
    states = "".join(open(p).read() for p in glob.glob(str(copies / "*.json")))
    for secret, what in ((password, "password"), (token, "token"), (key_body, "private key")):
        assert secret and secret not in text, "%s in the log" % what
        assert secret not in states, "%s in a state file" % what
    modes = {os.path.basename(p)[:-5]: open(p).read()
             for p in glob.glob(str(copies / "*.mode"))}
    assert all(modes[f] == "0o600" for f in modes if f.endswith((".key", ".json"))), modes
    fault.observed = "%d log lines and %d state snapshots checked; modes %s" % (
        len(text.splitlines()), len(glob.glob(str(copies / "*.json"))),
        sorted(set(m for f, m in modes.items() if f.endswith((".key", ".json")))))


def test_security_group_opens_ssh_to_one_address(one, fault, conn):
    fault("security group rules of a new cluster", "security",
          "SSH only from the client's /32; no 0.0.0.0/0 rule")
    sg = conn.network.find_security_group("cc-" + one.state.cluster_id)
    rules = [(r["protocol"], r["port_range_min"], r["remote_ip_prefix"])
             for r in sg.security_group_rules if r["direction"] == "ingress"]
    assert ("tcp", 22, "172.24.4.1/32") in rules  # the host's address on br-ex
    assert not any(p == "0.0.0.0/0" or p == "::/0" for _, _, p in rules)
    fault.observed = "ingress rules: %s" % sorted(map(str, rules))


def test_private_key_file_mode(one, fault):
    fault("cluster private key on disk", "security", "mode 0600, ed25519, never uploaded")
    path = one.state.record.ssh.key_file
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    assert "OPENSSH PRIVATE KEY" in open(path).read()
    fault.observed = "mode %o" % mode

