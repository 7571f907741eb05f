"""Fault campaign, API faults: the cloud's endpoints answer through a fault-injecting
proxy (tests/functional/faultproxy.py). Each case brings a cluster up and down
(or fails cleanly) and the ``fault`` fixture then lists the cloud as admin."""
import os

import pytest

from cloudcompute import Cluster, ClusterSpec, connect, gc
from cloudcompute.exceptions import CloudAuthError, ProvisioningError, TeardownError

NOVA, NEUTRON, KEYSTONE = 8774, 9696, 5000
# (case, expected, rules); every case must end with the cluster up, used and down.
RECOVERED = [
    ("server create answers 503 once", "retried after checking by name; one server",
     [dict(method="POST", port=NOVA, path=r"/servers$", status=503, nth=1)]),
    ("server create succeeds but its answer is a 500",
     "found by name on retry, not created twice",
     [dict(method="POST", port=NOVA, path=r"/servers$", status=500, forward=True, nth=1)]),
    ("server create succeeds but the connection is reset",
     "found by name on retry, not created twice",
     [dict(method="POST", port=NOVA, path=r"/servers$", action="reset", forward=True,
           nth=1)]),
    ("server create connection reset before it reaches Nova", "retried; one server",
     [dict(method="POST", port=NOVA, path=r"/servers$", action="reset", nth=1)]),
    ("keypair create succeeds but its answer is a 503", "found by name on retry",
     [dict(method="POST", port=NOVA, path=r"/os-keypairs$", status=503, forward=True,
           nth=1)]),
    ("security group create succeeds but the connection is reset",
     "found by name on retry, tagged, deleted at the end",
     [dict(method="POST", port=NEUTRON, path=r"/security-groups$", action="reset",
           forward=True, nth=1)]),
    ("security group rule create answers 409", "retried; rule made once",
     [dict(method="POST", port=NEUTRON, path=r"/security-group-rules$", status=409, nth=1)]),
    ("group rules bulk create succeeds but its answer is a 500",
     "found on retry, not duplicated",
     [dict(method="POST", port=NEUTRON, path=r"/security-group-rules$", status=500,
           forward=True, nth=1)]),
    ("SSH rule create succeeds but its answer is a 500", "found on retry, not duplicated",
     [dict(method="POST", port=NEUTRON, path=r"/security-group-rules$", status=500,
           forward=True, nth=2)]),
    ("status polls answer 429 with Retry-After: 1", "waits as asked and comes up",
     [dict(method="GET", port=NOVA, path=r"/servers/detail", status=429, retry_after=1,
           every=2, times=3)]),
    ("every 3rd GET to any service answers 500", "retried; comes up and goes down",
     [dict(method="GET", path=r"", status=500, every=3)]),
    ("every Nova GET delayed 1.5 s (slow API)", "slower but complete",
     [dict(method="GET", port=NOVA, path=r"", action="delay", delay=1.5, times=6)]),
    ("server DELETE answers 503 once", "teardown retries; nothing left",
     [dict(method="DELETE", port=NOVA, path=r"/servers/", status=503, nth=1)]),
    ("security group DELETE connection reset once", "teardown retries; nothing left",
     [dict(method="DELETE", port=NEUTRON, path=r"/security-groups/", action="reset",
           nth=1)]),
    ("keystone token request answers 503 once", "authentication retried",
     [dict(method="POST", port=KEYSTONE, path=r"/auth/tokens", status=503, nth=1)]),
    ("10% of Nova and Neutron calls fail at random (seed 20261126)",
     "503s and resets retried; up, run and down complete",
     [dict(port=NOVA, path=r"", status=503, probability=0.05),
      dict(port=NEUTRON, path=r"", action="reset", probability=0.05)]),
    ("20% of Neutron calls answer 502 at random", "retried; nothing left",
     [dict(port=NEUTRON, path=r"", status=502, probability=0.2)]),
]


@pytest.mark.parametrize("case,expected,rules", RECOVERED, ids=[r[0] for r in RECOVERED])
def test_api_fault_is_survived(case, expected, rules, proxied, fault, unique, state_dir, conn):
    fault(case, "api", expected)
    cloud, proxy = proxied
    for r in rules:
        proxy.add(**r)
    with Cluster(ClusterSpec(name=unique, nodes=1), cloud=cloud) as c:
        assert c.connection(c.nodes[0].name).run(["true"]).ok
        sid = c.nodes[0].server_id
        (sg,) = c.state.ids("security_groups")
        made = [(r.direction, r.ether_type, r.protocol, r.port_range_min,
                 r.remote_ip_prefix, r.remote_group_id)
                for r in conn.network.security_group_rules(security_group_id=sg)]
    injected = proxy.faults()
    assert injected, "the rule never fired"
    assert len(made) == len(set(made)) and len(made) == 5, made  # 2 egress, 2 group, SSH
    creates = [e for e in proxy.log if e[0] == "POST" and e[2].endswith("/servers")
               and e[3] in ("ok", "500+forwarded", "reset+forwarded")]
    assert len(creates) == 1, creates  # a server is never created twice
    assert conn.compute.find_server(sid, ignore_missing=True) is None
    assert os.listdir(state_dir) == []
    fault.observed = "up and down; %d fault(s) injected: %s" % (
        len(injected), ", ".join(sorted({"%s %s" % (e[0], e[3]) for e in injected})))


def test_persistent_server_create_500_rolls_back(proxied, fault, unique, state_dir):
    fault("server create answers 500 every time", "api",
          "ProvisioningError after 4 attempts; keypair and security group rolled back")
    cloud, proxy = proxied
    proxy.add(method="POST", port=NOVA, path=r"/servers$", status=500)
    with fault.raises(ProvisioningError, match="injected fault") as err:
        Cluster(ClusterSpec(name=unique, nodes=2), cloud=cloud).up()
    assert err.value.rolled_back
    assert os.listdir(state_dir) == []


def test_quota_413_on_create_is_not_retried_blindly(proxied, fault, unique, state_dir):
    fault("server create answers 413 (over limit) with Retry-After", "api",
          "ProvisioningError naming the API error; rolled back")
    cloud, proxy = proxied
    rule = proxy.add(method="POST", port=NOVA, path=r"/servers$", status=413,
                     retry_after=1)
    with fault.raises(ProvisioningError, match="413") as err:
        Cluster(ClusterSpec(name=unique, nodes=1), cloud=cloud).up()
    assert err.value.rolled_back and rule.fired == 1


def test_teardown_that_keeps_failing_is_named_then_finished(proxied, fault, unique,
                                                            state_dir):
    fault("security group DELETE answers 500 every time", "api",
          "TeardownError names the group, state file keeps it; a later down() removes it")
    cloud, proxy = proxied
    c = Cluster(ClusterSpec(name=unique, nodes=1), cloud=cloud).up()
    proxy.add(method="DELETE", port=NEUTRON, path=r"/security-groups/", status=500)
    try:
        with fault.raises(TeardownError, match="security group") as err:
            c.down()
        assert unique + ".json" in os.listdir(state_dir)
        assert any("security group" in x for x in err.value.leftovers)
    finally:
        proxy.reset()
        observed = fault.observed
        Cluster.attach(unique, cloud=cloud).down()
    assert os.listdir(state_dir) == []
    fault.observed = observed + "; then attach + down removed it"


def test_keystone_down_is_an_auth_error(proxied, fault):
    fault("keystone answers 503 to every token request", "api",
          "CloudAuthError after 3 attempts, nothing created")
    cloud, proxy = proxied
    proxy.add(method="POST", port=KEYSTONE, path=r"/auth/tokens", status=503)
    with fault.raises(CloudAuthError, match="503"):
        connect(cloud=cloud)
    assert len(proxy.faults()) == 3


def test_gc_survives_failing_listings(proxied, fault):
    fault("gc while every other GET answers 503", "api",
          "gc retries its listings and reports")
    cloud, proxy = proxied
    proxy.add(method="GET", path=r"", status=503, every=2)
    report = gc.collect(connect(cloud=cloud), dry_run=True)
    assert proxy.faults()
    fault.observed = "dry run completed with %d candidate(s) after %d fault(s)" % (
        len(report), len(proxy.faults()))
