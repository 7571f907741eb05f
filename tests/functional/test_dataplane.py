"""cloudcompute on the local cloud's real data plane.

The rig's Neutron runs the Linux-bridge L2 agent (security groups are
iptables rules on each node's tap) and the L3 agent (routers in namespaces,
floating IPs by NAT), so what a cluster's security group admits is what
reaches its nodes. Traffic stays on this machine: the outside source below
is a namespace this test makes on the rig's public bridge.
"""
import ipaddress
import os
import subprocess
import time

import pytest

from tests.functional.conftest import shared_cluster

PUBLIC = "public"
CONNECT = ("import socket, sys\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
           "    print('open')\n"
           "except OSError as exc:\n"
           "    print('closed', type(exc).__name__)\n")


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two clusters on the same network, each with its own security group."""
    with shared_cluster(tmp_path_factory, "dpa", 2) as a:
        with shared_cluster(tmp_path_factory, "dpb", 1) as b:
            yield a, b


def _reach(cluster, node, ip, port=22):
    r = cluster.connection(node.name).run(["python3", "-c", CONNECT, ip, str(port)])
    assert r.ok, r.stderr
    return r.stdout.split()[0] == "open"


def test_a_cluster_reaches_its_own_nodes_and_no_other_clusters(two):
    a, b = two
    a1, a2 = a.nodes
    (b1,) = b.nodes
    assert _reach(a, a1, a2.fixed_ip)        # the group admits its members
    assert not _reach(b, b1, a1.fixed_ip)    # but not another cluster's node
    assert not _reach(a, a2, b1.fixed_ip)    # in either direction


def _sh(*cmd):
    return subprocess.run(list(cmd), capture_output=True, text=True, check=True).stdout


@pytest.fixture
def outsider(admin_conn, unique):
    """A source on the public network that is not the client: a namespace on
    br-ex holding an address that a Neutron port reserves, routed to the
    private network through router1 as the host is."""
    public = admin_conn.network.find_network(PUBLIC)
    port = admin_conn.network.create_port(network_id=public.id, name=unique)
    ns, host_end = "cct-" + unique, "cctv" + unique[1:9]
    ip = port.fixed_ips[0]["ip_address"]
    prefix = ipaddress.ip_network(
        admin_conn.network.get_subnet(port.fixed_ips[0]["subnet_id"]).cidr).prefixlen
    state = os.environ.get("CC_AIO_STATE", "/var/lib/cloudcompute-aio")
    with open(os.path.join(state, "routes")) as f:
        cidr, via = f.read().split()[:2]
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % host_end)
        _sh("ip", "link", "set", host_end, "master", "br-ex", "up")
        nsx = ["ip", "netns", "exec", ns]
        _sh(*nsx, "ip", "link", "set", "eth0", "address", port.mac_address)
        _sh(*nsx, "ip", "addr", "add", "%s/%d" % (ip, prefix), "dev", "eth0")
        _sh(*nsx, "ip", "link", "set", "eth0", "up")
        _sh(*nsx, "ip", "route", "add", cidr, "via", via)
        yield ns, ip
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        admin_conn.network.delete_port(port, ignore_missing=True)
    assert not list(admin_conn.network.ports(name=unique))


def _reach_from(ns, ip, port=22):
    out = _sh("ip", "netns", "exec", ns, "python3", "-c", CONNECT, ip, str(port))
    return out.split()[0] == "open"


def test_ssh_is_refused_from_outside_ssh_cidr_while_the_client_gets_in(two, outsider, conn):
    a, _ = two
    ns, outside_ip = outsider
    node = a.nodes[0]
    sg = conn.network.find_security_group("cc-" + a.state.cluster_id)
    ssh_rules = [r["remote_ip_prefix"] for r in sg.security_group_rules
                 if r["protocol"] == "tcp" and r["port_range_min"] == 22]
    assert ssh_rules == ["172.24.4.1/32"]       # the client's address only
    assert not _reach_from(ns, node.fixed_ip)   # another address on its network
    assert a.connection(node.name).run(["true"]).ok
    # the path itself works: admitting the outsider's /32 lets it in
    rule = conn.network.create_security_group_rule(
        security_group_id=sg.id, direction="ingress", ethertype="IPv4", protocol="tcp",
        port_range_min=22, port_range_max=22, remote_ip_prefix=outside_ip + "/32")
    try:
        end = time.monotonic() + 30
        while not _reach_from(ns, node.fixed_ip):
            assert time.monotonic() < end, "the outsider's rule was not applied"
            time.sleep(0.3)
    finally:
        conn.network.delete_security_group_rule(rule, ignore_missing=True)
