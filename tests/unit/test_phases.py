"""The provisioning phases' decisions, against stand-ins for the builder and cloud."""
import time
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


class Overlapped:
    """A ServerBuilder stand-in whose nodes turn ACTIVE one per poll; ``events``
    is shared with the stand-in login, so the order of both can be checked."""

    def __init__(self, events, fail_after=None):
        self.events = events
        self.fail_after = fail_after
        self.nodes = [NodeInfo(n, "g", fixed_ip="10.0.0.%d" % i, status="BUILD")
                      for i, n in enumerate(("a", "b", "c"), 1)]
        self.attached = []

    def create_all(self):
        self.events.append("create")

    def wait_active(self, on_active):
        for i, node in enumerate(self.nodes):
            if i == self.fail_after:
                raise RuntimeError("server c went to ERROR")
            node.status = "ACTIVE"
            self.events.append("active " + node.name)
            on_active(node)
            # the login of an ACTIVE node runs while the others still build
            for _ in range(200):
                if "login " + node.name in self.events:
                    break
                time.sleep(0.005)

    def active_nodes(self):
        return [n for n in self.nodes if n.status == "ACTIVE"]

    def attach_floating_ip(self, node):
        self.attached.append(node.name)


class Connection:
    def __init__(self, name):
        self.name, self.closed = name, False

    def close(self):
        self.closed = True


@pytest.fixture
def overlapped(monkeypatch):
    events, rules, made = [], [], []

    def make(fail_after=None, login_fails=None):
        b = Overlapped(events, fail_after)
        monkeypatch.setattr(phases, "ServerBuilder", lambda *a, **kw: b)
        monkeypatch.setattr(resources, "allow_ssh",
                            lambda conn, sg, cidr: rules.append(cidr))
        monkeypatch.setattr(resources, "caller_cidr", lambda address: "192.0.2.7/32")

        def login(builder, node, key_file, user, deadline, stop, progress):
            assert (key_file, user) == ("/k/key", "ubuntu") and deadline > time.monotonic()
            events.append("login " + node.name)
            if node.name == login_fails:
                raise phases.HostKeyMismatch(node.name, "ssh-ed25519 A", "ssh-ed25519 B")
            made.append(Connection(node.name))
            return made[-1]
        monkeypatch.setattr(phases, "login", login)
        return b
    return make, events, rules, made


def test_each_login_starts_as_its_node_turns_active(overlapped):
    make, events, rules, made = overlapped
    b = make()
    timings = {}
    spec = ClusterSpec(name="c", floating_ips="always")
    builder, conns, beside = phases.servers_and_ssh(None, None, spec, plan("ext"), BASE,
                                                    lambda p, n: None, timings,
                                                    time.monotonic())
    assert beside is None
    assert builder is b and sorted(conns) == ["a", "b", "c"]
    assert events.index("login a") < events.index("active b")
    assert events.index("login b") < events.index("active c")
    assert rules == ["192.0.2.7/32"]  # the SSH rule once, with the first node
    assert b.attached == ["a", "b", "c"]
    assert set(timings) == {"create", "active", "ssh"} and not any(c.closed for c in made)


def test_what_runs_beside_the_ssh_waits_gets_every_active_node(overlapped):
    make, events, rules, made = overlapped
    make()

    def beside(nodes):
        events.append("beside " + ",".join(n.name for n in nodes))
        return "prepared"
    _, conns, got = phases.servers_and_ssh(None, None, ClusterSpec(name="c"), plan(None),
                                           BASE, lambda p, n: None, {}, time.monotonic(),
                                           while_ssh=beside)
    assert got == "prepared" and sorted(conns) == ["a", "b", "c"]
    assert events.index("beside a,b,c") > events.index("active c")


def test_a_failure_beside_the_ssh_waits_closes_the_logins_and_is_raised(overlapped):
    make, events, rules, made = overlapped
    make()

    def beside(nodes):
        raise RuntimeError("credential refused")
    with pytest.raises(RuntimeError, match="credential refused"):
        phases.servers_and_ssh(None, None, ClusterSpec(name="c"), plan(None), BASE,
                               lambda p, n: None, {}, time.monotonic(), while_ssh=beside)
    assert [c.name for c in made] == ["a", "b", "c"] and all(c.closed for c in made)


def test_a_failure_while_others_build_closes_the_logins_made(overlapped):
    make, events, rules, made = overlapped
    make(fail_after=2)
    with pytest.raises(RuntimeError, match="went to ERROR"):
        phases.servers_and_ssh(None, None, ClusterSpec(name="c"), plan(None), BASE,
                               lambda p, n: None, {}, time.monotonic())
    assert [c.name for c in made] == ["a", "b"] and all(c.closed for c in made)


def test_a_failed_login_closes_the_others_and_is_raised(overlapped):
    make, events, rules, made = overlapped
    make(login_fails="b")
    with pytest.raises(phases.HostKeyMismatch):
        phases.servers_and_ssh(None, None, ClusterSpec(name="c"), plan(None), BASE,
                               lambda p, n: None, {}, time.monotonic())
    assert [c.name for c in made] == ["a", "c"]
    for _ in range(200):  # c's login may end after the failure: closed as it ends
        if all(c.closed for c in made):
            break
        time.sleep(0.005)
    assert all(c.closed for c in made)
