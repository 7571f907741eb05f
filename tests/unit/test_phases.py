"""The provisioning phases' decisions, against stand-ins for the builder and cloud."""
import types

import pytest

from cloudcompute.config import ClusterSpec
from cloudcompute.provision import phases, resources
from cloudcompute.provision.preflight import Plan
from cloudcompute.record import NodeInfo

BASE = phases.BaseResources("kp", "/k/key", "ssh-ed25519 AAAA", "sg-1", "cc-sg", "net-1")


def plan(external):
    return Plan([], "net-1", external, "p1", "ubuntu")


class Builder:
    def __init__(self):
        self.attached = []

    def attach_floating_ip(self, node):
        self.attached.append(node.name)


@pytest.fixture
def routes(monkeypatch):
    """Which fixed IPs this host reaches directly (the rest only by floating IP)."""
    direct = set()
    monkeypatch.setattr(phases, "directly_routable", lambda ip: ip in direct)
    return direct


@pytest.mark.parametrize("mode, external, want", [
    ("always", "ext", ["a", "b"]),
    ("always", None, ["a", "b"]),  # asked for: the builder reports what is missing
    ("never", "ext", []),
    ("auto", "ext", ["b"]),        # a is routed directly
    ("auto", None, []),            # no external network: nothing to allocate from
])
def test_floating_ips_go_where_the_spec_and_the_routes_say(routes, mode, external, want):
    routes.add("10.0.0.1")
    nodes = [NodeInfo("a", "g", fixed_ip="10.0.0.1"), NodeInfo("b", "g", fixed_ip="10.9.0.2")]
    b = Builder()
    phases.floating_ips(b, ClusterSpec(name="c", floating_ips=mode), plan(external), nodes)
    assert b.attached == want


def test_ssh_is_opened_to_the_spec_cidr_or_to_this_host_only(monkeypatch):
    rules = []
    monkeypatch.setattr(resources, "allow_ssh", lambda conn, sg, cidr: rules.append((sg, cidr)))
    monkeypatch.setattr(resources, "caller_cidr", lambda address: "192.0.2.7/32")
    node = NodeInfo("a", "g", fixed_ip="10.0.0.1")
    assert phases.open_ssh(None, ClusterSpec(name="c"), BASE, [node]) == "192.0.2.7/32"
    assert phases.open_ssh(None, ClusterSpec(name="c", ssh_cidr="10.1.0.0/16"), BASE,
                           [node]) == "10.1.0.0/16"
    assert rules == [("sg-1", "192.0.2.7/32"), ("sg-1", "10.1.0.0/16")]


def test_base_resources_uses_the_planned_network_or_creates_one(monkeypatch, tmp_path):
    made = []
    monkeypatch.setattr(resources, "create_keypair", lambda conn, st, key: ("kp", "/k"))
    monkeypatch.setattr(resources, "create_internal_key", lambda st: "ssh-ed25519 B")
    monkeypatch.setattr(resources, "create_security_group",
                        lambda conn, st: types.SimpleNamespace(id="sg-1", name="cc-sg"))
    monkeypatch.setattr(resources, "create_network",
                        lambda conn, st, cidr, ext: made.append((cidr, ext)) or "net-new")
    spec = ClusterSpec(name="c", cidr="10.77.0.0/24")
    assert phases.base_resources(None, None, spec, plan("ext")).network_id == "net-1"
    assert made == []
    new = phases.base_resources(None, None, spec, Plan([], None, "ext", "p1", "ubuntu"))
    assert new == phases.BaseResources("kp", "/k", "ssh-ed25519 B", "sg-1", "cc-sg",
                                       "net-new")
    assert made == [("10.77.0.0/24", "ext")]
