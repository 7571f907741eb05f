"""Teardown order, idempotency and leftovers, against a recording stand-in cloud.

The stand-in models only what teardown relies on (listing by tag, delete,
find); the real cloud is exercised by the functional tests.
"""
import threading
import time
import types

import pytest
from openstack import exceptions as os_exc

from cloudcompute import retry
from cloudcompute.exceptions import TeardownError
from cloudcompute.record import ClusterRecord
from cloudcompute.state import ClusterState
from cloudcompute.teardown import Teardown
from tests.unit.rawlist import RawServers


TAGS = ["cloudcompute", "cc-cluster=c-1"]


class Store:
    """One kind of resource. Items are tagged as the library tags them, except
    ``untagged`` ones (a create whose answer, and so whose tagging, was lost)."""

    def __init__(self, log, kind, items=(), undeletable=(), untagged=()):
        self.log, self.kind = log, kind
        self.items = {i: types.SimpleNamespace(id=i, name=i, device_owner="compute:nova",
                                               tags=[] if i in untagged else list(TAGS))
                      for i in items}
        self.undeletable = set(undeletable)

    def list(self, **kw):
        """As the APIs filter: ``tags`` (comma-separated, all must be present), and
        any other filter on the attribute of that name."""
        want = [t for t in str(kw.pop("tags", "")).split(",") if t]
        return [r for r in self.items.values() if all(t in r.tags for t in want)
                and all(getattr(r, k, None) == v for k, v in kw.items())]

    def delete(self, rid, ignore_missing=True, **kw):
        self.log.append((self.kind, rid))
        if rid in self.undeletable:
            raise os_exc.ConflictException("in use")
        if rid not in self.items and not ignore_missing:
            raise os_exc.NotFoundException("gone")
        self.items.pop(rid, None)

    def find(self, rid, ignore_missing=True):
        return self.items.get(rid)


def fake_conn(log, **stores):
    s = {k: Store(log, k, *v) if isinstance(v, tuple) else Store(log, k, v)
         for k, v in stores.items()}
    for k in ("server", "ip", "router", "network", "subnet", "security_group", "keypair", "port",
              "credential"):
        s.setdefault(k, Store(log, k))
    compute = types.SimpleNamespace(
        servers=s["server"].list, delete_server=s["server"].delete,
        find_server=s["server"].find, delete_keypair=s["keypair"].delete,
        find_keypair=s["keypair"].find)
    # cloudcompute.listing's GET, through whatever lister the test puts in
    compute.get = RawServers(lambda **query: compute.servers(**query))
    net = types.SimpleNamespace(
        ips=s["ip"].list, delete_ip=s["ip"].delete, find_ip=s["ip"].find,
        routers=s["router"].list, delete_router=s["router"].delete, find_router=s["router"].find,
        networks=s["network"].list, delete_network=s["network"].delete,
        find_network=s["network"].find, subnets=s["subnet"].list,
        delete_subnet=s["subnet"].delete, find_subnet=s["subnet"].find,
        security_groups=s["security_group"].list,
        delete_security_group=s["security_group"].delete,
        find_security_group=s["security_group"].find,
        ports=s["port"].list, delete_port=s["port"].delete,
        remove_interface_from_router=lambda r, subnet_id: log.append(("router_if", subnet_id)))
    creds = s["credential"]
    identity = types.SimpleNamespace(
        find_application_credential=lambda user, name_or_id, ignore_missing=True: next(
            (c for c in creds.items.values() if name_or_id in (c.id, c.name)), None),
        delete_application_credential=lambda user, cid, ignore_missing=True: creds.delete(
            cid, ignore_missing))
    return types.SimpleNamespace(compute=compute, network=net, identity=identity,
                                 current_user_id="u1")


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(retry, "SLEEP", lambda s: None)


def state(tmp_path):
    st = ClusterState.create(ClusterRecord(name="c", cluster_id="c-1"), str(tmp_path))
    st.created("servers", "s1", "s1")
    st.created("keypairs", "cc-c-1", "cc-c-1")
    st.created("router_interfaces", "cc-c-1", "sub1", router_id="r1", subnet_id="sub1")
    return st


class SlowServers(Store):
    """Servers that stay listed for ``polls`` lists after their delete, as
    Nova's do while the compute host tears them down; ``log`` gets a
    ("server gone", id) entry when one leaves the list.

    As Nova does, each server has an ``updated_at`` (a clock that advances a
    5 s per listing, set by the delete request and by the deletion), and
    ``changes_since`` lists those updated at or after it, deleted ones
    included (status DELETED, their tags gone); other filters still apply."""

    def __init__(self, log, items, polls=2, until=None):
        super().__init__(log, "server", items)
        self.polls, self.deleting, self.until = polls, {}, until
        self.clock, self.deleted, self.queries = 0, {}, []
        for r in self.items.values():
            self._touch(r, "ACTIVE")

    def _touch(self, r, status):
        r.status = status
        r.updated_at = "2026-01-01T00:%02d:%02dZ" % divmod(5 * self.clock, 60)

    def delete(self, rid, ignore_missing=True, **kw):
        self.log.append((self.kind, rid))
        if rid in self.items:
            self.deleting.setdefault(rid, self.polls)
            self._touch(self.items[rid], "ACTIVE")  # task_state deleting

    def list(self, **kw):
        self.queries.append(dict(kw))
        self.clock += 1
        for rid, left in list(self.deleting.items()):
            if left == 1:  # Nova saves vm_state DELETED, then removes the server
                self._touch(self.items[rid], "DELETED")
                self.log.append(("server DELETED", rid))
            if left == 0:
                if self.until is not None:
                    self.until.wait(timeout=2)  # a real deletion takes seconds
                r = self.items.pop(rid)
                r.tags = []  # its updated_at stays (a soft delete keeps it)
                self.deleted[rid] = r
                del self.deleting[rid]
                self.log.append(("server gone", rid))
            else:
                self.deleting[rid] = left - 1
        since = kw.pop("changes_since", None)
        if since is None:
            return super().list(**kw)
        everything = {**self.items, **self.deleted}
        saved, self.items = self.items, everything
        try:
            return [r for r in super().list(**kw) if r.updated_at >= since]
        finally:
            self.items = saved

    def find(self, rid, ignore_missing=True):
        self.log.append(("server find", rid))
        return super().find(rid, ignore_missing)


def test_dependency_order_and_state_removed(tmp_path):
    log = []
    conn = fake_conn(log, ip=["f1"], router=["r1"], network=["n1"],
                     subnet=["sub1"], security_group=["g1"], keypair=["cc-c-1"],
                     credential=["k1"])
    others = threading.Event()  # set once everything that need not wait went
    servers = SlowServers(log, ["s1"], until=others)
    conn.compute.servers, conn.compute.delete_server = servers.list, servers.delete
    conn.compute.find_server = servers.find
    st = state(tmp_path)
    st.created("application_credentials", "cc-c-1", "k1")

    def watch():
        while not others.is_set():
            if {"ip", "keypair", "credential"} <= {k for k, _ in log}:
                others.set()
            time.sleep(0.001)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        Teardown(conn, st).run()
    finally:
        others.set()
    kinds = [k for k, _ in log]
    gone = kinds.index("server gone")
    # what a server's port holds goes once the server shows DELETED (its
    # ports released), in dependency order
    after = ["router_if", "router", "subnet", "network", "security_group"]
    assert [k for k in kinds if k in after] == after
    assert min(kinds.index(k) for k in after) > kinds.index("server DELETED")
    # what waits for nothing went while the server was still being deleted
    for k in ("ip", "keypair", "credential"):
        assert kinds.index("server") < gone and kinds.index(k) < gone, (k, kinds)
    assert "server find" not in kinds  # a tagged server is followed by the list alone
    assert not (tmp_path / "c.json").exists()


def test_rerun_after_everything_is_gone_succeeds(tmp_path):
    log = []
    st = state(tmp_path)
    Teardown(fake_conn(log), st).run()  # nothing exists any more: 404s are success


def test_what_cannot_be_deleted_is_named_and_kept(tmp_path):
    log = []
    conn = fake_conn(log, security_group=(["g1"], ["g1"]))
    st = state(tmp_path)
    st.created("security_groups", "cc-c-1", "g1")
    with pytest.raises(TeardownError) as err:
        Teardown(conn, st).run()
    assert any("g1" in x for x in err.value.leftovers)
    assert "in use" in " ".join(err.value.errors)
    kept = ClusterState.load("c", str(tmp_path))
    assert kept.resources["security_groups"]["cc-c-1"].id == "g1"
    assert kept.resources["servers"] == {}


def test_a_create_whose_answer_was_lost_is_found_by_name(tmp_path):
    log = []
    conn = fake_conn(log, security_group=(["cc-c-1"], [], ["cc-c-1"]),
                     server=(["c-1-w-0"], [], ["c-1-w-0"]))
    st = state(tmp_path)
    st.intend("security_groups", "cc-c-1")  # created, but the id never came back
    st.intend("servers", "c-1-w-0")
    Teardown(conn, st).run()
    assert ("security_group", "cc-c-1") in log and ("server", "c-1-w-0") in log
    assert not (tmp_path / "c.json").exists()


def test_a_create_in_flight_that_lands_late_is_waited_for_and_deleted(tmp_path):
    log = []
    conn = fake_conn(log)
    late = Store(log, "security_group", ["cc-c-1"])
    calls = []

    def listing(**kw):  # carried out after teardown first looked; never tagged
        calls.append(kw)
        return late.list() if "name" in kw and len(calls) > 3 else []
    conn.network.security_groups = listing
    conn.network.delete_security_group = late.delete
    conn.network.find_security_group = late.find
    st = state(tmp_path)
    st.intend("security_groups", "cc-c-1")
    Teardown(conn, st, in_flight_grace=5).run()
    assert ("security_group", "cc-c-1") in log and late.items == {}
    assert not (tmp_path / "c.json").exists()


def test_a_create_in_flight_that_never_lands_is_forgotten_after_the_grace(tmp_path, caplog):
    log = []
    st = state(tmp_path)
    st.intend("security_groups", "cc-c-1")
    Teardown(fake_conn(log), st, in_flight_grace=0.05).run()
    assert not (tmp_path / "c.json").exists()
    assert "nothing appeared within the grace period" in caplog.text


def test_only_resources_with_the_library_mark_are_deleted(tmp_path):
    log = []
    conn = fake_conn(log, security_group=["g1", "other"])
    conn_tags = {r.id: r for r in conn.network.security_groups()}
    conn_tags["other"].tags = ["cc-cluster=c-1"]  # the cluster's tag, not the mark
    st = state(tmp_path)
    Teardown(conn, st).run()
    assert ("security_group", "g1") in log and ("security_group", "other") not in log


def test_the_server_wait_lists_only_what_changed_and_backs_off(tmp_path, monkeypatch):
    """After the deletes the wait lists the project's servers that changed
    (not the tag-filtered cluster): a deleted server is seen as DELETED there,
    since Nova drops its tags. Cycles start POLL apart and grow."""
    sleeps = []
    monkeypatch.setattr(retry, "SLEEP", sleeps.append)
    log = []
    conn = fake_conn(log)
    servers = SlowServers(log, ["s1", "s2", "s3"], polls=6)
    servers.items["s3"].tags = ["someone-else"]  # another server of the project
    servers.deleting["s3"] = 3  # deleted by its owner meanwhile
    conn.compute.servers, conn.compute.delete_server = servers.list, servers.delete
    conn.compute.find_server = servers.find
    st = state(tmp_path)
    st.created("servers", "s2", "s2")
    Teardown(conn, st, timeout=10).run()
    # the tagged listing before the deletes; the wait's changes; the tagged
    # listings once every server left showed DELETED; the final check's
    tagged = {"tags": "cloudcompute,cc-cluster=c-1"}
    first, *waits, last = servers.queries
    assert first == last == tagged
    changed = [q for q in waits if q != tagged]
    assert len(changed) >= 5 and all(list(q) == ["changes_since"] for q in changed)
    assert waits[len(changed):] and all(q == tagged for q in waits[len(changed):])
    since = [q["changes_since"] for q in changed]
    assert since == sorted(since) and since[0] < since[-1]  # the window moves on
    assert ("server gone", "s1") in log and ("server gone", "s2") in log
    assert ("server", "s3") not in log  # not the cluster's: never deleted
    assert sleeps[:3] == [0.2, pytest.approx(0.3), pytest.approx(0.45)]
    assert max(sleeps) == 0.5  # the first minute's cap (the clock here barely moves)
    assert not (tmp_path / "c.json").exists()


def test_recorded_servers_are_deleted_before_the_tagged_listing_answers(tmp_path):
    """The deletes of the servers the state records go at once; the tagged
    listing, which also finds servers whose create answer was lost, answers
    beside them, and what only it shows is deleted as it answers."""
    log = []
    conn = fake_conn(log)
    servers = SlowServers(log, ["s1", "lost"], polls=1)
    sent = threading.Event()
    real_list, real_delete = servers.list, servers.delete

    def slow_list(**kw):
        if "tags" in kw and not sent.is_set():
            assert sent.wait(timeout=5), "the listing was waited for before the deletes"
        return real_list(**kw)

    def delete(rid, **kw):
        real_delete(rid, **kw)
        if rid == "s1":
            sent.set()
    conn.compute.servers, conn.compute.delete_server = slow_list, delete
    conn.compute.find_server = servers.find
    st = state(tmp_path)
    Teardown(conn, st, timeout=10).run()
    deletes = [rid for kind, rid in log if kind == "server"]
    assert deletes == ["s1", "lost"]
    assert ("server gone", "lost") in log and not (tmp_path / "c.json").exists()


def test_the_network_side_goes_once_servers_show_deleted_before_they_are_gone(tmp_path):
    """Nova shows DELETED once a server's ports are released and removes it
    just after: the network side does not wait for the removal."""
    log = []
    conn = fake_conn(log, network=["n1"], subnet=["sub1"], security_group=["g1"])
    group_gone = threading.Event()
    servers = SlowServers(log, ["s1"], until=group_gone)  # removal held until then
    conn.compute.servers, conn.compute.delete_server = servers.list, servers.delete
    conn.compute.find_server = servers.find
    real = conn.network.delete_security_group

    def delete_group(rid, **kw):
        real(rid, **kw)
        group_gone.set()
    conn.network.delete_security_group = delete_group
    Teardown(conn, state(tmp_path)).run()
    kinds = [k for k, _ in log]
    assert kinds.index("server DELETED") < kinds.index("security_group") \
        < kinds.index("server gone")


def test_a_failed_server_wait_leaves_what_the_ports_hold(tmp_path):
    log = []
    conn = fake_conn(log, network=["n1"], subnet=["sub1"], security_group=["g1"],
                     keypair=["cc-c-1"])
    servers = SlowServers(log, ["s1"], polls=5)
    calls = []

    def failing(**kw):
        calls.append(kw)
        if "changes_since" in kw:
            raise os_exc.BadRequestException("the listing broke")
        return servers.list(**kw)
    conn.compute.servers, conn.compute.delete_server = failing, servers.delete
    conn.compute.find_server = servers.find
    st = state(tmp_path)
    with pytest.raises(os_exc.BadRequestException):
        Teardown(conn, st).run()
    kinds = {k for k, _ in log}
    assert "keypair" in kinds  # what waits for nothing went
    assert not kinds & {"router_if", "router", "subnet", "network", "security_group"}
    assert ClusterState.load("c", str(tmp_path)).ids("servers") == ["s1"]


def test_a_server_stuck_at_deleted_is_confirmed_with_growing_cycles(tmp_path, monkeypatch):
    """Nova may leave a server at DELETED without removing it (its compute
    host died in between): the confirming listings back off, not 5 a second."""
    sleeps = []
    monkeypatch.setattr(retry, "SLEEP", sleeps.append)
    log = []
    conn = fake_conn(log)
    servers = SlowServers(log, ["s1"], polls=1)

    def stuck(**kw):
        try:
            return servers.list(**kw)
        finally:
            if "s1" in servers.items:  # DELETED from its delete on, never removed
                servers.deleting["s1"] = 1
    conn.compute.servers, conn.compute.delete_server = stuck, servers.delete
    conn.compute.find_server = servers.find
    with pytest.raises(TeardownError, match="still deleting"):
        Teardown(conn, state(tmp_path), timeout=0.3).run()
    assert sleeps.count(0.2) <= 2 and max(sleeps) == 0.5


def test_a_recorded_server_already_gone_does_not_hold_the_wait(tmp_path):
    """A recorded server the tagged listing lacks is looked up once; gone, it
    is done with (no changes-since listing would ever show it)."""
    log = []
    conn = fake_conn(log, security_group=["g1"])
    servers = SlowServers(log, ["s1"], polls=2)
    conn.compute.servers, conn.compute.delete_server = servers.list, servers.delete
    conn.compute.find_server = servers.find
    st = state(tmp_path)
    st.created("servers", "s9", "s9")  # deleted earlier, by someone else
    Teardown(conn, st, timeout=60).run()
    assert ("server find", "s9") in log and len(servers.queries) < 10
