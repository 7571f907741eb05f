"""Fault campaign, batched creates (Nova's multi-create): a lost answer to the
batch's POST, a cloud that refuses multi-create, a batch some of whose
servers go to ERROR. Each case brings a three-node cluster up, logs in to
every node and takes it down; the ``fault`` fixture then lists the cloud as
admin for anything left."""
import logging
import os

import pytest

from cloudcompute import Cluster, ClusterSpec, NodeGroup
from tests.functional.conftest import CLOUD

NOVA = 8774


def _creates(proxy):
    """POSTs that reached Nova and made servers."""
    return [e for e in proxy.log if e[0] == "POST" and e[2].endswith("/servers")
            and e[3] in ("ok", "500+forwarded", "reset+forwarded")]


def _used(c):
    for n in c.nodes:
        assert c.connection(n.name).run(["true"]).ok


def test_lost_answer_to_a_batched_create_is_looked_up(proxied, fault, unique, state_dir):
    fault("batched server create succeeds but the connection is reset", "api",
          "the batch is found by tag and name on retry, never created twice")
    cloud, proxy = proxied
    proxy.add(method="POST", port=NOVA, path=r"/servers$", action="reset", forward=True,
              nth=1)
    with Cluster(ClusterSpec(name=unique, nodes=3), cloud=cloud) as c:
        assert len(c.nodes) == 3 and not any(n.keys_injected for n in c.nodes)
        _used(c)
    assert proxy.faults(), "the rule never fired"
    assert len(_creates(proxy)) == 1  # one request made all three; none made twice
    assert os.listdir(state_dir) == []
    fault.observed = "3 nodes from 1 forwarded create; up, used, down"


@pytest.mark.parametrize("status", [403, 413])
def test_a_refused_multi_create_falls_back_to_one_create_per_server(
        status, proxied, fault, unique, state_dir, caplog):
    fault("multi-create refused with %d" % status, "api",
          "logged once; each server created on its own with an injected host key")
    cloud, proxy = proxied
    proxy.add(method="POST", port=NOVA, path=r"/servers$", status=status, nth=1)
    with caplog.at_level(logging.WARNING, logger="cloudcompute.provision.servers"):
        with Cluster(ClusterSpec(name=unique, nodes=3), cloud=cloud) as c:
            assert len(c.nodes) == 3 and all(n.keys_injected for n in c.nodes)
            _used(c)
    assert caplog.text.count("creating servers one by one") == 1
    assert len(_creates(proxy)) == 3
    assert os.listdir(state_dir) == []
    fault.observed = "fell back: 3 single creates after the %d; up, used, down" % status


def test_servers_in_error_in_a_batch_are_replaced(fault, unique, state_dir):
    fault("one server of a batch of three goes to ERROR (cc_fault=spawn_error_once)",
          "server", "deleted and replaced by a server of its own; 3 nodes up")
    group = NodeGroup("w", 3, metadata={"cc_fault": "spawn_error_once",
                                        "cc_fault_key": unique})
    with Cluster(ClusterSpec(name=unique, groups=[group]), cloud=CLOUD) as c:
        names = sorted(n.name for n in c.nodes)
        assert len(names) == 3 and sum(n.endswith("-r1") for n in names) == 1
        _used(c)
    assert os.listdir(state_dir) == []
    fault.observed = "replaced %s; up, used, down" % [n for n in names if n.endswith("-r1")]
