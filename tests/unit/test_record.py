"""The cluster record: typed fields, checked on reading, versioned on disk."""
import copy
import json

import pytest

from cloudcompute import tags
from cloudcompute.config import ClusterSpec, NodeGroup, Timeouts
from cloudcompute.exceptions import StateError
from cloudcompute.record import (SCHEMA_VERSION, ClusterRecord, DaskRecord, NodeInfo,
                                 ResourceEntry, SSHAccess)
from cloudcompute.state import ClusterState

# A record as a version before the schema number wrote it (taken from a state file).
SCHEMA_1 = {
    "name": "c", "cluster_id": "c-1a2b3c4d", "cloud": "devstack", "owner": "me@here:42",
    "owner_id": {"user": "me", "host": "here", "pid": 42, "machine_id": None,
                 "boot_id": None, "pidns": None},
    "detached": False, "created_at": 1700000000.5, "expires_at": 1700086400.5,
    "ssh": {"user": "debian", "key_file": "/s/c-1a2b3c4d.key", "generated_key": True,
            "internal_key_file": "/s/c-1a2b3c4d.internal.key"},
    "nodes": {"cc-c-1a2b3c4d-node-0": {
        "name": "cc-c-1a2b3c4d-node-0", "group": "node", "server_id": "s0",
        "fixed_ip": "10.0.0.5", "floating_ip": None, "host_keys": ["ssh-ed25519 AAAA"],
        "keys_injected": True, "status": "ACTIVE", "timings": {"active": 2.5}}},
    "timings": {"total": 9.5},
    "spec": {"name": "c", "nodes": 1, "timeouts": {"ssh": 42}},
    "python": {"cc-c-1a2b3c4d-node-0": "/home/debian/.cloudcompute/env/bin/python"},
    "dask": {"scheduler_node": "cc-c-1a2b3c4d-node-0", "nodes": ["cc-c-1a2b3c4d-node-0"],
             "scheduler": "tcp://10.0.0.5:8786"},
    "resources": {"keypairs": {"cc-c-1a2b3c4d": {"name": "cc-c-1a2b3c4d", "id": "k"}}},
}


def test_a_schema_1_record_is_read_with_defaults_and_written_back_as_the_current_one(
        tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(SCHEMA_1))
    st = ClusterState.load("c", str(tmp_path))
    r = st.record
    assert r.owner_id == tags.Owner("me", "here", 42)
    assert r.ssh == SSHAccess("debian", "/s/c-1a2b3c4d.key", True,
                              "/s/c-1a2b3c4d.internal.key")
    (node,) = r.nodes
    assert node.fixed_ip == "10.0.0.5" and node.slots == 1 and node.ram_mb == 0  # defaults
    assert r.spec is not None and r.spec.timeouts.ssh == 42 and r.spec.nodes == 1
    assert r.dask == DaskRecord("cc-c-1a2b3c4d-node-0", ["cc-c-1a2b3c4d-node-0"],
                                "tcp://10.0.0.5:8786")
    assert r.resources["servers"] == {} and r.resources["keypairs"]["cc-c-1a2b3c4d"].id == "k"
    with st.locked():
        st.save()
    on_disk = json.loads((tmp_path / "c.json").read_text())
    assert on_disk["schema"] == SCHEMA_VERSION
    assert ClusterRecord.from_json(on_disk, "again") == r


def test_a_record_survives_its_round_trip():
    spec = ClusterSpec(name="c", groups=[NodeGroup("a", 2, "m1.small", "img", slots=3)],
                       timeouts=Timeouts(ssh=42))
    r = ClusterRecord(name="c", cluster_id="c-1", owner_id=tags.Owner.current(), spec=spec,
                      nodes=[NodeInfo("n0", "a", slots=3, host_keys=["ssh-ed25519 A"])],
                      ssh=SSHAccess(user="ubuntu"), python={"n0": "python3"})
    back = ClusterRecord.from_json(json.loads(json.dumps(r.to_json())), "here")
    assert back == r and back.spec is not None and back.spec.groups[0].slots == 3


def test_a_record_of_a_newer_version_is_refused_not_half_read():
    with pytest.raises(StateError, match="newer cloudcompute .*schema 3"):
        ClusterRecord.from_json(dict(SCHEMA_1, schema=SCHEMA_VERSION + 1), "f.json")


@pytest.mark.parametrize("field, value, message", [
    ("schema", "2", "schema is '2', not a version number"),
    ("cluster_id", "../../etc", "not a cluster record"),
    ("name", None, "not a cluster record"),
    ("detached", "yes", "detached is 'yes', not bool"),
    ("expires_at", True, "expires_at is True, not int or float"),
    ("ssh", {"user": "-oProxyCommand=x"}, "ssh.user '-oProxyCommand=x' is not a user name"),
    ("nodes", {"n0": {"name": "other", "group": "g"}}, "nodes.n0 is not a node record"),
    ("nodes", {"n0": {"name": "n0", "group": "g", "slots": "x"}}, "slots is 'x', not int"),
    ("nodes", {"n0": {"name": "n0", "group": "g", "host_keys": [5]}}, "n0.host_keys must"),
    ("nodes", {"n0": {"name": "n0", "group": "g", "slots": 4, "a_later_field": 1}}, None),
    ("python", {"n0": 3}, "python must map names to strings"),
    ("timings", {"total": "9.5"}, "timings must map names to seconds"),
    ("nodes", {"n0": {"name": "n0", "group": "g", "timings": {"ssh": None}}},
     "nodes.n0.timings must map names to seconds"),
    ("dask", {"scheduler_node": "n0", "nodes": "n0", "scheduler": "tcp://x:1"},
     "dask is not a Dask record"),
    ("resources", {"volumes": {}}, "unknown kind 'volumes'"),
    ("resources", {"servers": {"a": {"name": "b"}}}, "resources.servers is not"),
    ("resources", {"servers": {"a": {"name": "a", "id": 5}}},
     "resources.servers.a.id is 5, not str"),
    ("resources", {"floating_ips": {"a": {"name": "a", "id": None, "port_id": ["p"]}}},
     "resources.floating_ips.a.port_id is"),
    ("resources", {"servers": {"a": {"name": "a", "id": None, "host_keys": [1]}}},
     "resources.servers.a.host_keys must be a list of key lines"),
    ("spec", {"name": "c", "groups": "abc"}, "spec is not a cluster spec"),
])
def test_each_damaged_field_is_named(field, value, message):
    data = dict(SCHEMA_1, **{field: value})
    if message is None:  # a field of a later version is dropped, the rest kept
        (node,) = ClusterRecord.from_json(data, "f.json").nodes
        assert node.slots == 4 and not hasattr(node, "a_later_field")
        return
    with pytest.raises(StateError, match=message):
        ClusterRecord.from_json(data, "f.json")


# Each kind's entries as the library writes them (one state file of each era).
RESOURCES = {
    "servers": {
        "n0": {"name": "n0", "id": "s0", "group": "node", "host_keys": ["ssh-ed25519 A"],
               "fixed_ip": "10.0.0.5", "status": "ACTIVE"},
        "n1": {"name": "n1", "id": None, "group": "node", "host_keys": [], "batch": "b"},
        "n2": {"name": "n2", "id": "s2", "status": "ERROR", "dropped": True,
               "fixed_ip": None}},
    "floating_ips": {"n0": {"name": "n0", "id": "f0", "address": "172.24.4.9",
                            "port_id": "p0"}},
    "subnets": {"c": {"name": "c", "id": "sn", "network_id": "net"}},
    "router_interfaces": {"c": {"name": "c", "id": "sn", "router_id": "r",
                                "subnet_id": "sn"}},
    "keypairs": {"cc-c": {"name": "cc-c", "id": "cc-c", "a_later_field": {"x": 1}}},
}


def test_resource_entries_are_typed_and_written_back_as_they_were_read():
    r = ClusterRecord.from_json(dict(SCHEMA_1, resources=RESOURCES), "f.json")
    n0 = r.resources["servers"]["n0"]
    assert n0 == ResourceEntry("n0", "s0", group="node", host_keys=["ssh-ed25519 A"],
                               fixed_ip="10.0.0.5", status="ACTIVE")
    assert r.resources["servers"]["n2"].dropped is True
    assert r.resources["router_interfaces"]["c"].router_id == "r"
    assert r.resources["keypairs"]["cc-c"].extra == {"a_later_field": {"x": 1}}
    written = r.to_json()["resources"]
    # what a version without the typed entries wrote is written back the same
    # (a key set to null reads as unset, and is left out)
    want = copy.deepcopy(RESOURCES)
    del want["servers"]["n2"]["fixed_ip"]
    assert {k: v for k, v in written.items() if v} == want
    assert ClusterRecord.from_json(json.loads(json.dumps(r.to_json())), "again") == r


def test_an_unreadable_owner_counts_as_unknown():
    r = ClusterRecord.from_json(dict(SCHEMA_1, owner_id={"user": "x"}), "f.json")
    assert r.owner_id is None and r.owner == "me@here:42"


def test_create_refuses_what_it_could_not_read_back(tmp_path):
    with pytest.raises(StateError, match="not a cluster record"):
        ClusterState.create(ClusterRecord(name="c", cluster_id="../k"), str(tmp_path))
    with pytest.raises(StateError, match="ssh.user"):
        ClusterState.create(ClusterRecord(name="c", cluster_id="c-1",
                                          ssh=SSHAccess(user="root;x")), str(tmp_path))
    assert list(tmp_path.iterdir()) == [] or all(
        p.name.endswith(".lock") for p in tmp_path.iterdir())


def test_describe_is_a_typed_summary_whose_dict_is_the_json(tmp_path):
    import types

    from cloudcompute.cluster import Cluster
    from cloudcompute.ssh import hostkeys
    conn = types.SimpleNamespace(config=types.SimpleNamespace(name="x", config={}),
                                 authorize=lambda: "token")
    c = Cluster(ClusterSpec(name="c", nodes=1, flavor="f", image="i"), conn=conn,
                state_dir=str(tmp_path))
    _, public = hostkeys.generate_ed25519()
    node = NodeInfo("n0", "node", server_id="s0", fixed_ip="10.1.2.3",
                    floating_ip="172.24.4.5", host_keys=[public], timings={"active": 1.5})
    c.nodes, c.timings = [node], {"total": 3.0}
    d = c.describe()
    assert d.cluster_id is None and d.nodes[0].host_key_fingerprints == [
        hostkeys.fingerprint(public)]
    assert d.to_dict() == {
        "name": "c", "cluster_id": None, "timings": {"total": 3.0},
        "nodes": [{"name": "n0", "group": "node", "server_id": "s0", "address": node.address,
                   "fixed_ip": "10.1.2.3", "floating_ip": "172.24.4.5",
                   "host_key_fingerprints": [hostkeys.fingerprint(public)],
                   "timings": {"active": 1.5}}]}
    assert json.loads(json.dumps(d.to_dict())) == d.to_dict()
