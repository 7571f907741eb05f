"""Batched creates (Nova's multi-create) against a stand-in Nova: one request
per chunk, the lost answer, a cloud that refuses multi-create, a partial
batch with servers in ERROR.

The stand-in extends test_servers' Nova with ``POST /servers`` as the raw
API takes it: ``min_count``/``max_count`` make that many servers named
``<name>-1`` ... ``<name>-k`` (one server keeps the plain name), all or none,
and the answer is the reservation id.
"""
import base64
import json
import logging
import time
import types

import pytest
import requests
import yaml
from keystoneauth1 import exceptions as ks_exc

from cloudcompute import retry, tags
from cloudcompute.config import ClusterSpec, Timeouts
from cloudcompute.exceptions import ProvisioningError
from cloudcompute.provision import multicreate
from cloudcompute.provision.preflight import Plan, ResolvedGroup
from cloudcompute.provision.servers import POLL_MAX, ServerBuilder
from cloudcompute.record import ClusterRecord
from cloudcompute.state import ClusterState
from tests.unit.test_servers import CID, Nova

BASE0 = tags.resource_name(CID, "w", "0")
BASE1 = tags.resource_name(CID, "w", "1")


def response(status, body):
    r = requests.Response()
    r.status_code = status
    r._content = json.dumps(body).encode()
    r.headers["Content-Type"] = "application/json"
    r.reason = "refused"
    r.url = "http://nova/v2.1/servers"
    r.request = requests.Request("POST", r.url).prepare()
    return r


class BatchNova(Nova):
    """``refuse``: (status, message) answered to every multi-create;
    ``lose``: how many answers to drop after the servers were made."""

    def __init__(self, scripts, refuse=None, lose=0):
        super().__init__(scripts)
        self.refuse = refuse
        self.lose = lose
        self.posts = []

    def post(self, url, json=None, microversion=None, raise_exc=True):
        assert url == "/servers" and raise_exc is False and microversion == "2.52"
        body = dict(json["server"])
        self.posts.append(body)
        if self.refuse:
            status, message = self.refuse
            return response(status, {"badRequest" if status == 400 else "forbidden":
                                     {"code": status, "message": message}})
        k = body["max_count"]
        assert body["min_count"] == k and body["return_reservation_id"] is True
        rid = "r-%d" % len(self.posts)
        for i in range(1, k + 1):
            name = body["name"] if k == 1 else "%s-%d" % (body["name"], i)
            self.create_server(**dict(body, name=name))
            self.servers_["id-%d" % len(self.created)]["reservation_id"] = rid
        if self.lose:
            self.lose -= 1
            raise ks_exc.ConnectFailure("connection reset by peer")
        return response(202, {"reservation_id": rid})


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    slept = []
    monkeypatch.setattr(retry, "SLEEP", slept.append)
    return slept


@pytest.fixture
def build(tmp_path):
    """A builder for ``count`` nodes of group ``w`` -> (builder, nova)."""
    def make(count, scripts=None, refuse=None, lose=0, **spec_kw):
        spec_kw.setdefault("timeouts", Timeouts(active=30))
        spec = ClusterSpec(name="c", user_data="#cloud-config\npackages: [htop]\n",
                           **spec_kw)
        plan = Plan([ResolvedGroup("w", count, "f1", "m1.small", 2, 2048, "i1", "ubuntu",
                                   "ubuntu", {}, 2)], "n1", None, "p1", "ubuntu")
        st = ClusterState.create(ClusterRecord(name="c", cluster_id=CID, owner=tags.owner()),
                                 str(tmp_path))
        nova = BatchNova(scripts or {}, refuse=refuse, lose=lose)
        b = ServerBuilder(types.SimpleNamespace(compute=nova), st, spec, plan, "n1", "sg",
                          "kp", authorized_keys=["ssh-ed25519 AAAAinternal"])
        return b, nova
    return make


def on_disk(b):
    return ClusterState.load("c", b.st.path.rsplit("/", 1)[0]).resources["servers"]


@pytest.mark.parametrize("count, size, want", [
    (1, 50, [1]), (16, 50, [16]), (16, 16, [16]), (17, 16, [9, 8]), (5, 2, [2, 2, 1]),
    (3, 1, [1, 1, 1])])
def test_chunks_split_a_group_evenly_within_the_size(count, size, want):
    assert multicreate.chunks(count, size) == want


def test_a_group_is_one_request_and_its_servers_are_found_by_the_first_listing(build):
    b, nova = build(3, {BASE0 + "-2": ["BUILD", "ACTIVE"]})
    b.create_all()
    assert len(nova.posts) == 1 and not nova.listings  # nothing looked up: the answer came
    body = nova.posts[0]
    assert (body["name"], body["min_count"], body["max_count"]) == (BASE0, 3, 3)
    assert (body["flavorRef"], body["imageRef"], body["key_name"]) == ("f1", "i1", "kp")
    assert body["tags"] == tags.tags(CID) and body["metadata"][tags.META_CLUSTER] == CID
    # One user-data for all: the caller's, with the internal key, and no host key.
    data = yaml.safe_load(base64.b64decode(body["user_data"]))
    assert data["packages"] == ["htop"] and "ssh_keys" not in data
    assert data["ssh_authorized_keys"] == ["ssh-ed25519 AAAAinternal"]
    names = ["%s-%d" % (BASE0, i) for i in (1, 2, 3)]
    assert sorted(b.nodes) == names and b.batches[0].reservation_id == "r-1"
    assert all(not n.keys_injected and n.host_keys == [] and n.server_id is None
               for n in b.nodes.values())
    assert all(on_disk(b)[n].id is None for n in names)  # intents, before the answer
    b.wait_active()
    assert [n.name for n in b.active_nodes()] == names
    saved = on_disk(b)
    assert {n: saved[n].id for n in names} == {n: b.nodes[n].server_id for n in names}
    assert all(saved[n].status == "ACTIVE" for n in names)
    assert len(nova.listings) == 2


def test_a_lost_answer_is_looked_up_and_never_created_twice(build, caplog):
    b, nova = build(4, lose=1)
    with caplog.at_level(logging.INFO):
        b.create_all()
    assert len(nova.posts) == 1 and len(nova.created) == 4
    assert nova.listings == [{"details": True, "tags": tags.CLUSTER_TAG + CID}]
    assert b.batches[0].reservation_id == "r-1"
    assert "an earlier request had made 4 of 4 servers" in caplog.text
    b.wait_active()
    assert len(b.active_nodes()) == 4


def test_a_lost_answer_for_a_request_that_made_nothing_is_sent_again(build, monkeypatch):
    b, nova = build(2)
    real = nova.post
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the request never reached Nova
            raise ks_exc.ConnectFailure("connection refused")
        return real(*args, **kwargs)
    monkeypatch.setattr(nova, "post", flaky)
    b.create_all()
    assert len(calls) == 2 and len(nova.created) == 2 and len(nova.listings) == 1


@pytest.mark.parametrize("status, message", [
    (403, "Policy doesn't allow os_compute_api:servers:create:multiple to be performed."),
    (413, "Maximum number of servers per request exceeded"),
    (400, "Invalid input for field/attribute max_count. Value: 30.")])
def test_a_refused_multi_create_falls_back_to_one_request_per_server(build, caplog, status,
                                                                     message):
    b, nova = build(4, refuse=(status, message), create_batch=2)
    with caplog.at_level(logging.WARNING):
        b.create_all()
    # Both chunks were refused (the second may have been sent before the first's
    # answer): every server was then created on its own, under the same name.
    assert 1 <= len(nova.posts) <= 2
    assert sorted(nova.created) == sorted("%s-%d" % (base, i) for base in (BASE0, BASE1)
                                          for i in (1, 2))
    assert all(n.keys_injected and len(n.host_keys) == 1 and n.server_id
               for n in b.nodes.values())
    assert caplog.text.count("creating servers one by one") == 1
    b.wait_active()
    assert len(b.active_nodes()) == 4


def test_a_bad_request_not_about_the_count_is_an_error_not_a_fallback(build):
    b, nova = build(2, refuse=(400, "Invalid key_name provided."))
    with pytest.raises(ProvisioningError, match="Invalid key_name"):
        b.create_all()
    assert not nova.created


def test_servers_in_error_in_a_batch_are_replaced_one_by_one(build):
    b, nova = build(3, {BASE0 + "-2": ["BUILD", "ERROR"]})
    b.create_all()
    failed = BASE0 + "-2"
    b.wait_active()
    assert sorted(n.name for n in b.active_nodes()) == sorted(
        [BASE0 + "-1", BASE0 + "-3", failed + "-r1"])
    assert nova.deleted == [b.nodes[failed].server_id] and len(nova.posts) == 1
    assert b.nodes[failed + "-r1"].keys_injected  # a server of its own: its key injected
    saved = on_disk(b)
    assert saved[failed].dropped and saved[failed].status == "ERROR"


def test_servers_in_error_in_a_batch_are_dropped_while_min_nodes_remain(build):
    b, nova = build(4, {BASE0 + "-1": ["ERROR"], BASE0 + "-4": ["BUILD", "ERROR"]},
                    max_replacements=0, min_nodes=2)
    b.create_all()
    b.wait_active()
    assert sorted(n.name for n in b.active_nodes()) == [BASE0 + "-2", BASE0 + "-3"]
    assert len(nova.deleted) == 2 and len(nova.created) == 4


def test_a_batch_member_never_listed_is_given_up_after_a_few_cycles(build, monkeypatch):
    from cloudcompute.provision import servers
    # only a whole listing tells that a server is missing: here each is one
    monkeypatch.setattr(servers, "FULL_LIST_EVERY", 0.0)
    b, nova = build(2, max_replacements=0, min_nodes=1)
    b.create_all()
    missing = BASE0 + "-2"
    sid = next(k for k, v in nova.servers_.items() if v["name"] == missing)
    del nova.servers_[sid]
    b.wait_active()
    assert [n.name for n in b.active_nodes()] == [BASE0 + "-1"]
    assert b.nodes[missing].status == "ERROR" and not nova.deleted
    assert len(nova.listings) == 3
    assert on_disk(b)[missing].id is None  # teardown looks it up by name


def test_chunks_are_one_request_each_and_a_single_server_its_own(build):
    b, nova = build(5, create_batch=2)
    b.create_all()
    assert sorted((p["name"], p["max_count"]) for p in nova.posts) == [(BASE0, 2),
                                                                      (BASE1, 2)]
    single = tags.resource_name(CID, "w", "2")
    assert single in nova.created and b.nodes[single].keys_injected
    b.wait_active()
    assert len(b.active_nodes()) == 5


def test_poll_cycles_back_off_up_to_the_cap(build, sleeps):
    b, nova = build(2, {BASE0 + "-1": ["BUILD"] * 12 + ["ACTIVE"]})
    b.create_all()
    b.wait_active()
    assert len(nova.listings) == 13 and len(sleeps) == 13  # a wait before each
    assert sleeps == sorted(sleeps) and sleeps[0] == 0.5 and sleeps[-1] == POLL_MAX


def test_a_batched_nodes_keys_come_from_its_console_log_polled_with_backoff(build, sleeps):
    b, nova = build(2)
    b.create_all()
    b.wait_active()
    node = b.nodes[BASE0 + "-1"]
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBatchedNodeKey"
    consoles = ["booting", "still booting", "still booting",
                "-----BEGIN SSH HOST KEY KEYS-----\n%s root@n\n"
                "-----END SSH HOST KEY KEYS-----\n" % key]
    asked = []

    def console(server_id):
        asked.append(server_id)
        return {"output": consoles[min(len(asked), len(consoles)) - 1]}
    nova.get_server_console_output = console
    del sleeps[:]
    b.console_host_keys(node, time.monotonic() + 60)
    assert node.host_keys == [key] and asked == [node.server_id] * 4
    assert sleeps == [1.0, 1.5, 2.25]
    assert on_disk(b)[node.name].host_keys == [key]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "50"])
def test_create_batch_must_be_a_positive_integer(bad):
    from cloudcompute.config import validate
    from cloudcompute.exceptions import ConfigError
    with pytest.raises(ConfigError, match="create_batch must be an integer >= 1"):
        validate(ClusterSpec(name="c", flavor="f", image="i", create_batch=bad))
    assert validate(ClusterSpec(name="c", flavor="f", image="i")).create_batch == 50


def test_what_a_cycle_saw_before_a_fatal_failure_is_recorded_and_carried(build):
    """The first member turns ACTIVE and the second ERROR in the same listing,
    with no replacement allowed: the fault carries, and the state file
    holds, the first member's id and ACTIVE status."""
    from cloudcompute.exceptions import ServerFault
    b, nova = build(3, {BASE0 + "-2": ["ERROR"]}, max_replacements=0)
    b.create_all()
    with pytest.raises(ServerFault) as e:
        b.wait_active()
    first = BASE0 + "-1"
    for entry in (on_disk(b)[first], e.value.resources["servers"][first]):
        assert entry.id == b.nodes[first].server_id and entry.status == "ACTIVE"
