"""cloudcompute provisioning on a real cloud, checked by an independent listing."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cloudcompute import Cluster, ClusterSpec, NodeGroup, connect
from cloudcompute.exceptions import (CloudAuthError, ConfigError, PreflightError,
                                     ServerFault, StateError)
from cloudcompute.state import ClusterState
from tests.functional.conftest import CLOUD, keypairs_with, leftovers, sigint_default


def assert_nothing_left(conn, admin_conn, marker):
    assert leftovers(admin_conn, conn.current_project_id, marker) == []
    assert keypairs_with(conn, marker) == []


def test_three_nodes_up_ssh_down(conn, admin_conn, unique, state_dir):
    c = Cluster(ClusterSpec(name=unique, nodes=3), cloud=CLOUD)
    with c:
        assert len(c.nodes) == 3
        assert os.stat(c.state.record.ssh.key_file).st_mode & 0o777 == 0o600
        for n in c.nodes:
            r = c.connection(n.name).run(["python3", "-c", "import numpy, pandas; print('ok')"])
            assert r.ok and r.stdout == "ok\n"
        names = sorted(s.name for s in conn.compute.servers() if unique in s.name)
        assert len(names) == 3
        sg = conn.network.find_security_group("cc-" + c.state.cluster_id)
        rules = [r for r in sg.security_group_rules if r["protocol"] == "tcp"]
        # the host reaches the nodes from its public address (br-ex) through router1
        assert [r["remote_ip_prefix"] for r in rules] == ["172.24.4.1/32"]
        t = c.timings
        assert t["preflight"] <= t["total"] and t["active"] <= t["ssh"]
    assert c.timings["teardown"] > 0
    assert_nothing_left(conn, admin_conn, unique)
    assert os.listdir(state_dir) == []


def test_failed_spawn_is_replaced(conn, admin_conn, unique, state_dir, fault):
    fault("spawn ERROR once on 1 of 2 nodes", "compute",
          "the failed server is deleted and replaced; cluster comes up with 2 nodes")
    spec = ClusterSpec(name=unique, groups=[
        NodeGroup("ok", 1), NodeGroup("flaky", 1, metadata={
            "cc_fault": "spawn_error_once", "cc_fault_key": unique})])
    with Cluster(spec, cloud=CLOUD) as c:
        names = [n.name for n in c.nodes]
        assert any(n.endswith("-r1") for n in names) and len(names) == 2
        fault.observed = "up with %s" % ", ".join(sorted(names))
    assert_nothing_left(conn, admin_conn, unique)


def test_failed_spawn_without_replacements_rolls_back(conn, admin_conn, unique, state_dir,
                                                      fault):
    fault("spawn ERROR on 1 of 3 nodes, no replacements allowed", "compute",
          "ServerFault with Nova's fault text; all 3 rolled back")
    spec = ClusterSpec(name=unique, max_replacements=0, groups=[
        NodeGroup("ok", 2), NodeGroup("bad", 1, metadata={"cc_fault": "spawn_error"})])
    with fault.raises(ServerFault) as err:
        Cluster(spec, cloud=CLOUD).up()
    assert "spawn_error" in err.value.fault and err.value.rolled_back
    assert_nothing_left(conn, admin_conn, unique)
    assert os.listdir(state_dir) == []


def test_min_nodes_drops_the_failed_node(conn, admin_conn, unique, state_dir, fault):
    fault("spawn ERROR on 1 of 3 nodes with min_nodes=2", "compute",
          "the failed node is dropped; cluster comes up with 2")
    spec = ClusterSpec(name=unique, max_replacements=0, min_nodes=2, groups=[
        NodeGroup("ok", 2), NodeGroup("bad", 1, metadata={"cc_fault": "spawn_error"})])
    with Cluster(spec, cloud=CLOUD) as c:
        assert sorted(n.group for n in c.nodes) == ["ok", "ok"]
        fault.observed = "up with 2 nodes of group ok"
    assert_nothing_left(conn, admin_conn, unique)


def test_bad_input_fails_before_anything_is_created(conn, admin_conn, unique, state_dir):
    with pytest.raises(PreflightError) as err:
        Cluster(ClusterSpec(name=unique, nodes=2, flavor="no-such-flavor",
                            image="no-such-image", network="no-such-net"), cloud=CLOUD).up()
    text = str(err.value)
    assert ("unknown flavor 'no-such-flavor' (available: cirros256, ds1G, ds2G, ds4G, ds512M, "
            "m1.large, m1.medium, m1.micro, m1.nano, m1.small, m1.tiny, m1.xlarge)") in text
    assert "unknown image 'no-such-image'" in text and "unknown network 'no-such-net'" in text
    with pytest.raises(PreflightError, match="compute quota instances: need 500"):
        Cluster(ClusterSpec(name=unique, nodes=500), cloud=CLOUD).up()
    with pytest.raises(ConfigError, match="count must be an integer >= 1"):
        Cluster(ClusterSpec(name=unique, nodes=0), cloud=CLOUD)
    with pytest.raises(ConfigError, match="cloud 'no-such-cloud'"):
        Cluster(ClusterSpec(name=unique, nodes=1), cloud="no-such-cloud")
    assert_nothing_left(conn, admin_conn, unique)
    assert os.listdir(state_dir) == []


def test_bad_credentials_are_an_auth_error(conn, fault):
    fault("wrong password; auth URL nobody listens on", "input",
          "CloudAuthError: refused the credentials / cannot reach the auth URL")
    auth = dict(conn.config.config["auth"], password="wrong")
    with fault.raises(CloudAuthError, match="refused the credentials"):
        connect(auth=auth, auth_type="password", identity_api_version="3")
    with pytest.raises(CloudAuthError, match="cannot reach the auth URL"):
        connect(auth=dict(auth, auth_url="http://127.0.0.1:9/v3"), auth_type="password")


CHILD = textwrap.dedent("""
    import logging, sys, time
    logging.basicConfig(level=logging.INFO)
    from cloudcompute import Cluster, ClusterSpec
    c = Cluster(ClusterSpec(name=sys.argv[1], nodes=2), cloud=sys.argv[2])
    print("starting", flush=True)
    c.up()
    print("UP", flush=True)
    if sys.argv[3] == "detach":
        c.detach()
    else:
        time.sleep(600)
""")


def _child(name, mode):
    return subprocess.Popen([sys.executable, "-c", CHILD, name, CLOUD, mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=sigint_default)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_provisioning_leaves_nothing(conn, admin_conn, unique, state_dir, sig):
    proc = _child(unique, "wait")
    # wait until servers are being created, then interrupt
    end = time.monotonic() + 60
    while not any(unique in s.name for s in conn.compute.servers()):
        assert time.monotonic() < end and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert "rolling back" in out
    assert_nothing_left(conn, admin_conn, unique)
    assert os.listdir(state_dir) == []


def test_attach_from_another_process_and_down(conn, admin_conn, unique, state_dir):
    proc = _child(unique, "detach")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0 and "UP" in out, out
    c = Cluster.attach(unique, cloud=CLOUD)
    assert len(c.nodes) == 2
    assert c.connection(c.nodes[0].name).run(["true"]).ok
    c.down()
    assert_nothing_left(conn, admin_conn, unique)
    with pytest.raises(StateError):
        ClusterState.load(unique)


def test_two_clusters_from_two_processes(conn, admin_conn, unique, state_dir, fault):
    fault("two clusters from two processes; one torn down while the other runs",
          "concurrency", "disjoint servers; the other cluster keeps working")
    a, b = _child(unique + "a", "detach"), _child(unique + "b", "detach")
    for p in (a, b):
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out
    ca, cb = Cluster.attach(unique + "a", cloud=CLOUD), Cluster.attach(unique + "b", cloud=CLOUD)
    assert {n.server_id for n in ca.nodes}.isdisjoint({n.server_id for n in cb.nodes})
    ca.down()
    # b is untouched by a's teardown
    assert cb.connection(cb.nodes[0].name).run(["true"]).ok
    assert len([s for s in conn.compute.servers() if (unique + "b") in s.name]) == 2
    cb.down()
    assert_nothing_left(conn, admin_conn, unique)
    fault.observed = "a down, b still answered; then b down"
    assert json.dumps(os.listdir(state_dir)) == "[]"


@pytest.mark.cloudcompute(nodes=2, create_network=True, floating_ips="always",
                          cidr="10.42.200.0/24")
def test_created_network_and_floating_ips_are_made_and_removed(
        conn, admin_conn, unique, state_dir, cloudcompute_cluster, cloudcompute_leak_check):
    # the library creates network, subnet and router (the clouds.yaml default network
    # is ignored); floating_ips=always allocates one per node. The cluster comes
    # from the pytest plugin's factory, whose leak check runs after the test.
    c = cloudcompute_cluster(name=unique)
    cid = c.state.cluster_id
    tag = "cc-cluster=" + cid
    nets = list(conn.network.networks(tags=tag))
    assert len(nets) == 1 and len(list(conn.network.routers(tags=tag))) == 1
    fips = list(conn.network.ips(tags=tag))
    assert len(fips) == 2 and all(f.port_id for f in fips)
    assert sorted(n.floating_ip for n in c.nodes) == sorted(
        f.floating_ip_address for f in fips)
    # this host has no route to the new network: SSH goes through the floating
    # IPs, which the router's NAT (neutron-l3-agent) carries to the nodes
    assert all(n.address == n.floating_ip and n.fixed_ip.startswith("10.42.200.")
               for n in c.nodes)
    for n in c.nodes:
        r = c.connection(n.name).run(["sh", "-c", "hostname; ip -4 -o addr show dev eth0"])
        assert r.ok and n.fixed_ip in r.stdout and n.floating_ip not in r.stdout
    c.down()
    assert cloudcompute_leak_check == [unique]
    assert leftovers(admin_conn, conn.current_project_id, unique) == []
    assert list(conn.network.ips(tags=tag)) == []
    assert keypairs_with(conn, unique) == []


@pytest.mark.cloudcompute(nodes=1, user_data="#!/bin/sh\necho hello\n")
def test_console_log_keys_when_user_data_cannot_carry_them(
        conn, admin_conn, unique, state_dir, cloudcompute_cluster, cloudcompute_leak_check):
    # A shell-script user-data cannot carry ssh_keys: the host keys are then taken
    # from the console log (through the API), never trusted on first use.
    c = cloudcompute_cluster(name=unique)
    node = c.nodes[0]
    assert node.keys_injected is False and node.host_keys
    console = conn.compute.get_server_console_output(node.server_id)["output"]
    assert all(k.split()[1] in console for k in node.host_keys)
    assert c.connection(node.name).run(["true"]).ok
    c.down()
    assert leftovers(admin_conn, conn.current_project_id, unique) == []
