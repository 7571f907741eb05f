"""The pytest plugin (cloudcompute_pytest) on the local cloud.

Each test runs a small test file in a pytest of its own (pytester), then
lists the cloud through an admin connection: servers, ports, floating IPs,
security groups, networks and keypairs whose names carry the test's marker.
The inner tests are named after the marker, and so are their clusters.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.functional.conftest import CLOUD, keypairs_with, leftovers

pytest_plugins = ["pytester"]


@pytest.fixture
def inner(pytester, tmp_path, monkeypatch, conn, admin_conn, unique):
    """Write an inner test file; afterwards, assert the cloud holds nothing of it."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("CLOUDCOMPUTE_STATE_DIR", str(state))
    monkeypatch.setenv("OS_CLOUD", CLOUD)
    monkeypatch.setenv("CC_NAME_FILE", str(tmp_path / "name"))

    def write(body):
        return pytester.makepyfile(**{"test_inner_" + unique: body.replace("UNIQUE", unique)})
    yield write
    names = (tmp_path / "name").read_text().split() if (tmp_path / "name").exists() else []
    assert names and all(unique in n for n in names), names  # a cluster was made
    left = (leftovers(admin_conn, conn.current_project_id, unique)
            + ["keypair " + k for k in keypairs_with(conn, unique)])
    assert left == [], "the inner test left %s" % left
    assert os.listdir(state) == [], "state files left: %s" % os.listdir(state)


CLUSTER_TEST = '''
import os

import pytest

pytestmark = pytest.mark.cloudcompute(nodes=1)


def made(cluster):
    with open(os.environ["CC_NAME_FILE"], "a") as f:
        f.write(cluster.name + "\\n")
'''


def test_passing_test_leaves_nothing(inner, pytester):
    # the function that runs remotely lives in a module of its own: the test
    # module imports pytest, which the nodes do not have
    pytester.makepyfile(squares="def square(x):\n    return x * x\n")
    path = inner(CLUSTER_TEST + '''
from squares import square


def test_UNIQUE(cloudcompute_cluster, cloudcompute_leak_check):
    c = cloudcompute_cluster()
    made(c)
    assert len(c.nodes) == 1
    assert c.map(square, range(4)) == [0, 1, 4, 9]
    assert cloudcompute_leak_check == [c.name]
''')
    result = pytester.runpytest_subprocess(path, "-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(passed=1)


def test_failing_test_leaves_nothing(inner, pytester):
    path = inner(CLUSTER_TEST + '''
def test_UNIQUE(cloudcompute_cluster, cloudcompute_leak_check):
    made(cloudcompute_cluster())
    assert 1 + 1 == 3, "fails on purpose"
''')
    result = pytester.runpytest_subprocess(path, "-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*fails on purpose*"])


def test_sigterm_during_a_test_leaves_nothing(inner, pytester, tmp_path):
    """SIGTERM (a CI job's timeout) while the test runs: pytest stops as for
    Ctrl-C, says so, and the cluster is deleted before it exits."""
    path = inner(CLUSTER_TEST + '''
import time


def test_UNIQUE(cloudcompute_cluster):
    made(cloudcompute_cluster())
    time.sleep(600)
''')
    out = tmp_path / "inner.out"
    with open(out, "wb") as f:
        proc = pytester.popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               str(path)], stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "name").exists():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, "no cluster came up:\n" + out.read_text()
            time.sleep(0.5)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    name = (tmp_path / "name").read_text().strip()
    assert rc == pytest.ExitCode.INTERRUPTED, text
    assert "SIGTERM: pytest stops" in text, text
    assert "cloudcompute: interrupted; deleted %s" % name in text, text


def test_leak_check_fails_the_test_that_leaks(inner, pytester, tmp_path, conn, unique,
                                              monkeypatch):
    """A security group with the cluster's tags that appears after the teardown
    (as a create that landed late would) fails the test at its teardown."""
    leak_file = tmp_path / "leaked"
    monkeypatch.setenv("CC_LEAK_FILE", str(leak_file))
    path = inner(CLUSTER_TEST + '''
import openstack

from cloudcompute import tags


@pytest.fixture
def leaky():
    # Torn down after cloudcompute_cluster (set up before it), so after the
    # cluster's teardown, which deletes whatever carries the cluster's tags.
    made = {}
    yield made
    conn = openstack.connect(cloud=os.environ["OS_CLOUD"])
    sg = conn.network.create_security_group(name="cc-%s-leak" % made["cid"])
    with open(os.environ["CC_LEAK_FILE"], "w") as f:
        f.write(sg.id)
    conn.network.set_tags(sg, tags.tags(made["cid"]))


def test_UNIQUE(cloudcompute_leak_check, leaky, cloudcompute_cluster):
    c = cloudcompute_cluster()
    made(c)
    leaky["cid"] = c.state.cluster_id
''')
    result = pytester.runpytest_subprocess(path, "-p", "no:cacheprovider", timeout=600)
    sg_id = leak_file.read_text() if leak_file.exists() else None
    try:
        assert sg_id, "the inner test made no security group:\n" + str(result.stdout)
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines([
            "*cloudcompute_leak_check: after *test_%s* the cloud still holds 1 "
            "resource(s) tagged*" % unique,
            "*: security group cc-*-leak"])
    finally:
        if sg_id:
            conn.network.delete_security_group(sg_id, ignore_missing=True)


def test_keep_leaves_a_detached_cluster_that_the_printed_commands_reach(inner, pytester,
                                                                         tmp_path):
    """--cc-keep: the cluster stays, detached, with an expiry --cc-keep-hours
    away; the summary's ssh command reaches it and its down command deletes
    it (the inner fixture then finds nothing left)."""
    path = inner(CLUSTER_TEST + '''
def test_UNIQUE(cloudcompute_cluster, cloudcompute_leak_check):
    made(cloudcompute_cluster(ttl_hours=24))
''')
    t0 = time.time()
    result = pytester.runpytest_subprocess(path, "-p", "no:cacheprovider", "--cc-keep",
                                           "--cc-keep-hours", "0.5", timeout=600)
    result.assert_outcomes(passed=1)
    name = (tmp_path / "name").read_text().strip()
    line = next(x for x in result.outlines if x.startswith("kept " + name))
    ssh_cmd = line.split("reach it with '")[1].split("'")[0]
    down_cmd = line.split("delete it with '")[1].split("'")[0]
    assert ssh_cmd.endswith("cloudcompute --os-cloud %s ssh %s" % (CLOUD, name)), line

    from cloudcompute import Cluster, tags
    c = Cluster.attach(name, state_dir=os.environ["CLOUDCOMPUTE_STATE_DIR"])
    servers = [c.conn.compute.get_server(n.server_id) for n in c.nodes]
    assert len(servers) == 1
    for s in servers:
        meta = tags.parse_server_metadata(s.metadata, c.state.cluster_id)
        assert meta.detached
        assert t0 + 1700 < meta.expires < time.time() + 1800 + 5
    cli = os.path.join(os.path.dirname(sys.executable), "cloudcompute")
    argv = ssh_cmd.split()
    env = dict(os.environ, **dict(a.split("=", 1) for a in argv if "=" in a))
    argv = [cli] + [a for a in argv if "=" not in a][1:]
    out = subprocess.run(argv + ["--", "echo", "kept-and-reached"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "kept-and-reached", out
    argv = [cli] + [a for a in down_cmd.split() if "=" not in a][1:]
    assert subprocess.run(argv, env=env, timeout=300).returncode == 0
