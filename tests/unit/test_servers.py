"""ServerBuilder.wait_active against a stand-in Nova: ACTIVE, ERROR (replace,
drop or fail) and the deadline.

The stand-in keeps servers as ``create_server`` made them (with their tags);
``servers(details=True, tags=...)`` returns only those carrying every tag
asked for, as openstacksdk's Server objects, and each listing moves every
listed server one step along its scripted statuses.
"""
import datetime
import logging
import time
import types
import warnings

import pytest
from openstack import warnings as os_warnings
from openstack.compute.v2.server import Server

from cloudcompute import retry, tags
from cloudcompute.config import ClusterSpec, Timeouts
from cloudcompute.exceptions import ServerFault, WaitTimeout
from cloudcompute.provision.preflight import Plan, ResolvedGroup
from cloudcompute.provision.servers import ServerBuilder
from cloudcompute.record import ClusterRecord
from cloudcompute.state import ClusterState
from tests.unit.rawlist import RawServers

CID = "c-1"
TAG = tags.CLUSTER_TAG + CID
W0, W1 = tags.resource_name(CID, "w", "0"), tags.resource_name(CID, "w", "1")
FAULT = {"code": 500, "message": "No valid host was found. There are not enough hosts "
                                 "available."}
EPOCH = datetime.datetime(2026, 1, 1)
MAX_LISTINGS = 1000
"""A wait that never ends would spin here (SLEEP is a no-op): fail instead."""


def sdk(cls, **body):
    """An openstacksdk resource as the SDK builds it from an API body. (The SDK
    warns about its own deprecated ``_compute_attributes`` on every one.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", os_warnings.RemovedInSDK50Warning)
        return cls(**body)


def addresses(n):
    """Nova's addresses: an IPv6 fixed and a floating address before the IPv4 fixed one."""
    return {"private": [
        {"addr": "fd00::%d" % n, "version": 6, "OS-EXT-IPS:type": "fixed"},
        {"addr": "203.0.113.%d" % n, "version": 4, "OS-EXT-IPS:type": "floating"},
        {"addr": "10.0.0.%d" % n, "version": 4, "OS-EXT-IPS:type": "fixed"}]}


class Nova:
    """``scripts``: server name -> statuses, one per listing (the last one stays);
    ``GONE`` takes the server out of the listings. Unscripted servers are ACTIVE."""

    def __init__(self, scripts):
        self.scripts = scripts
        self.servers_ = {}
        self.created = []
        self.deleted = []
        self.listings = []
        self.listed = []
        self.get = RawServers(self.servers)  # what cloudcompute.listing asks

    def create_server(self, **args):
        sid = "id-%d" % (len(self.created) + 1)
        self.created.append(args["name"])
        self.servers_[sid] = {"name": args["name"], "tags": list(args.get("tags") or []),
                              "steps": list(self.scripts.get(args["name"], ["ACTIVE"])),
                              "n": len(self.created)}
        return sdk(Server, id=sid, name=args["name"], status="BUILD")

    def servers(self, details=True, **query):
        """Each listing is a minute later than the one before; a server's
        ``updated`` is the listing at which its status last changed, and
        ``changes_since`` keeps those updated at or after it (as Nova does)."""
        self.listings.append(dict(query, details=details))
        if len(self.listings) > MAX_LISTINGS:
            raise AssertionError("wait_active kept polling")
        now = EPOCH + datetime.timedelta(minutes=len(self.listings))
        want = [t for t in str(query.pop("tags", "")).split(",") if t]
        since = query.pop("changes_since", None)
        if query:
            raise AssertionError("this stand-in does not filter by %s" % sorted(query))
        out = []
        for sid, s in list(self.servers_.items()):
            if not all(t in s["tags"] for t in want):
                continue
            status = s["steps"].pop(0) if len(s["steps"]) > 1 else s["steps"][0]
            if status != s.get("status"):
                s["status"], s["updated"] = status, now
            if since is not None and s["updated"] < datetime.datetime.strptime(
                    since, "%Y-%m-%dT%H:%M:%SZ"):
                continue
            if status == "GONE":  # deleted: Nova drops its tags, so no tag filter finds it
                continue
            out.append(sdk(Server, id=sid, name=s["name"], status=status, tags=s["tags"],
                           reservation_id=s.get("reservation_id"),
                           updated=s["updated"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                           fault=FAULT if status == "ERROR" else None,
                           addresses=addresses(s["n"]) if status == "ACTIVE" else {}))
        self.listed.append(len(out))
        return iter(out)

    def delete_server(self, sid, ignore_missing=True):
        self.deleted.append(sid)
        self.servers_.pop(sid, None)


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    slept = []
    monkeypatch.setattr(retry, "SLEEP", slept.append)
    return slept


@pytest.fixture
def build(tmp_path):
    """A builder whose two nodes (group ``w``) are created; -> (builder, nova, progress)."""
    def make(scripts, **spec_kw):
        spec_kw.setdefault("timeouts", Timeouts(active=30))
        spec_kw.setdefault("create_batch", 1)  # one request per server (test_multicreate: batches)
        spec = ClusterSpec(name="c", **spec_kw)
        plan = Plan([ResolvedGroup("w", 2, "f1", "m1.small", 2, 2048, "i1", "ubuntu",
                                   "ubuntu", {}, 2)], "n1", None, "p1", "ubuntu")
        st = ClusterState.create(ClusterRecord(name="c", cluster_id=CID, owner=tags.owner()),
                                 str(tmp_path))
        nova = Nova(scripts)
        progress = []
        b = ServerBuilder(types.SimpleNamespace(compute=nova), st, spec, plan, "n1", "sg",
                          "kp", progress=lambda phase, node: progress.append((phase, node)))
        b.create_all()
        assert sorted(nova.created) == [W0, W1]
        return b, nova, progress
    return make


def on_disk(b):
    return ClusterState.load("c", b.st.path.rsplit("/", 1)[0]).resources["servers"]


def test_active_servers_are_recorded_with_their_fixed_ipv4(build, sleeps):
    b, nova, progress = build({W0: ["BUILD", "BUILD", "ACTIVE"], W1: ["BUILD", "ACTIVE"]})
    b.wait_active()
    assert [(n.name, n.status) for n in b.active_nodes()] == [(W0, "ACTIVE"), (W1, "ACTIVE")]
    ips = {n.name: n.fixed_ip for n in b.nodes.values()}
    n0 = nova.created.index(W0) + 1
    assert ips[W0] == "10.0.0.%d" % n0 and ips[W1] == "10.0.0.%d" % (3 - n0)
    saved = on_disk(b)
    assert {k: (v.status, v.fixed_ip) for k, v in saved.items()} == {
        k: ("ACTIVE", ip) for k, ip in ips.items()}
    assert sorted(p for p in progress if p[0] == "active") == [("active", W0), ("active", W1)]
    # One listing per poll cycle for the whole cluster, filtered by its tag, each
    # after a wait (a server is never ACTIVE the moment it is created).
    # the whole cluster once, then what changed since a little before the newest change
    assert nova.listings == [{"details": True, "tags": TAG},
                             {"details": True, "tags": TAG,
                              "changes_since": "2026-01-01T00:00:50Z"},
                             {"details": True, "tags": TAG,
                              "changes_since": "2026-01-01T00:01:50Z"}] and len(sleeps) == 3


def test_the_nodes_a_listing_shows_active_are_recorded_in_one_write(build, monkeypatch):
    b, nova, _ = build({W0: ["BUILD", "ACTIVE"], W1: ["BUILD", "ACTIVE"]})
    writes, seen = [], []
    real = ClusterState.save
    monkeypatch.setattr(ClusterState, "save", lambda self: (writes.append(1), real(self)))
    # each node's callback runs after its ACTIVE record is on disk
    b.wait_active(on_active=lambda node: seen.append(on_disk(b)[node.name].status))
    assert len(writes) == 1 and seen == ["ACTIVE", "ACTIVE"]


def test_a_server_in_error_is_deleted_and_replaced_by_name_r1(build, caplog):
    b, nova, _ = build({W0: ["BUILD", "ERROR"], W1: ["BUILD", "BUILD", "ACTIVE"]})
    failed_id = b.nodes[W0].server_id
    with caplog.at_level(logging.WARNING):
        b.wait_active()
    assert sorted(n.name for n in b.active_nodes()) == [W0 + "-r1", W1]
    assert b.nodes[W0].status == "ERROR" and b.replacements == 1
    assert nova.deleted == [failed_id] and nova.created[2:] == [W0 + "-r1"]
    assert FAULT["message"] in caplog.text
    saved = on_disk(b)
    assert saved[W0].dropped and saved[W0].status == "ERROR"
    assert saved[W0 + "-r1"].status == "ACTIVE"


@pytest.mark.parametrize("failure", ["ERROR", "GONE"])
def test_a_failed_server_is_dropped_while_min_nodes_remain(build, failure, monkeypatch):
    from cloudcompute.provision import servers
    clock = [1000.0]  # a server gone is found missing by the next whole listing
    monkeypatch.setattr(servers.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(servers.retry, "SLEEP", lambda s: clock.__setitem__(0, clock[0] + s))
    b, nova, _ = build({W0: ["BUILD", failure]}, max_replacements=0, min_nodes=1,
                       timeouts=Timeouts(active=300))
    failed_id = b.nodes[W0].server_id
    b.wait_active()
    assert [n.name for n in b.active_nodes()] == [W1]
    assert nova.deleted == [failed_id] and len(nova.created) == 2  # nothing replaced it
    assert on_disk(b)[W0].dropped


@pytest.mark.parametrize("replacements,failed", [(0, W0), (1, W0 + "-r1")])
def test_a_failure_neither_replaced_nor_dropped_is_a_server_fault(build, replacements,
                                                                   failed):
    b, nova, _ = build({W0: ["ERROR"], W0 + "-r1": ["BUILD", "ERROR"]},
                       max_replacements=replacements)
    with pytest.raises(ServerFault) as err:
        b.wait_active()
    assert err.value.name == failed and err.value.fault == FAULT["message"]
    assert err.value.server_id == b.nodes[failed].server_id
    assert FAULT["message"] in str(err.value)
    assert set(err.value.resources["servers"]) >= {W0, W1}  # what teardown must delete
    failed_entry = err.value.resources["servers"][failed]  # typed, as recorded
    assert (failed_entry.id, failed_entry.status) == (b.nodes[failed].server_id, "ERROR")
    assert nova.deleted[-1] == b.nodes[failed].server_id


def test_the_deadline_names_the_nodes_still_pending(build):
    b, nova, _ = build({W0: ["BUILD", "ACTIVE"], W1: ["BUILD"]},
                       timeouts=Timeouts(active=0.05))
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as err:
        b.wait_active()
    assert time.monotonic() - t0 < 2
    assert err.value.waiting_for == [W1] and err.value.timeout == 0.05
    assert "still waiting for: %s" % W1 in str(err.value)
    assert b.nodes[W0].status == "ACTIVE" and not nova.deleted


def test_after_the_first_listing_only_changed_servers_are_listed(build, monkeypatch):
    """Servers that stay in BUILD are not sent again each cycle; a change comes
    through; the whole cluster is listed again every FULL_LIST_EVERY seconds."""
    from cloudcompute.provision import servers
    clock = [1000.0]
    monkeypatch.setattr(servers.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(servers.retry, "SLEEP", lambda s: clock.__setitem__(0, clock[0] + s))
    b, nova, _ = build({W0: ["BUILD"] * 40 + ["ACTIVE"], W1: ["BUILD"] * 3 + ["ACTIVE"]},
                       timeouts=Timeouts(active=300))
    b.wait_active()
    assert len(b.active_nodes()) == 2
    full = [i for i, q in enumerate(nova.listings) if "changes_since" not in q]
    assert full[0] == 0 and len(full) >= 2  # again after FULL_LIST_EVERY
    # a BUILD server unchanged for minutes is in no listing but the full ones
    # (only the one that changed last, within the margin, comes again)
    quiet = [n for i, n in enumerate(nova.listed[:-1]) if i not in full and i > 5]
    assert len(quiet) > 20 and max(quiet) == 1
    assert nova.listed[-1] == 2  # W0's ACTIVE came through
