"""gc's decisions, against a stand-in cloud whose listings honour their filters.

What gc may collect: expired clusters anywhere; clusters whose owner process
is gone only when the owner ran on this machine (machine-id, boot id, PID
namespace) as this user and did not detach, wherever the detach is recorded
(server metadata is enough). A server with bad metadata makes gc skip its
cluster alone.
"""
import copy
import subprocess
import time
import types

import pytest
from openstack import exceptions as os_exc

from cloudcompute import gc, retry, tags
from cloudcompute.cluster import Cluster
from cloudcompute.record import ClusterRecord, SSHAccess
from cloudcompute.state import ClusterState
from tests.unit.rawlist import RawServers

NOW = float(int(time.time()))
HOUR = 3600.0


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(retry, "SLEEP", lambda s: None)


class Coll:
    """One kind of resource; ``list`` filters as Nova and Neutron do."""
    FILTERS = {"tags", "name", "port_id", "network_id"}

    def __init__(self, cloud, kind):
        self.cloud, self.kind, self.items = cloud, kind, {}

    def add(self, rid, name=None, tag_list=(), **attrs):
        r = types.SimpleNamespace(id=rid, name=name or rid, tags=list(tag_list),
                                  metadata=dict(attrs.pop("metadata", {})),
                                  created_at=attrs.pop("created_at", "2023-11-14T22:13:20Z"),
                                  device_owner="compute:nova", **attrs)
        self.items[rid] = r
        return r

    def list(self, **filters):
        unknown = set(filters) - self.FILTERS
        if unknown:
            raise TypeError("filter not modelled: %s" % unknown)
        self.cloud.calls.append((self.kind, "list", dict(filters)))
        out = list(self.items.values())
        if "tags" in filters:
            want = filters["tags"]
            want = want.split(",") if isinstance(want, str) else list(want)
            out = [r for r in out if all(t in r.tags for t in want)]
        for key in ("name", "port_id", "network_id"):
            if key in filters:
                out = [r for r in out if getattr(r, key, None) == filters[key]]
        return [copy.deepcopy(r) for r in out]  # what the API answered, not live objects

    def delete(self, rid, ignore_missing=True):
        self.cloud.calls.append((self.kind, "delete", rid))
        self.items.pop(getattr(rid, "id", rid), None)

    def find(self, rid, ignore_missing=True):
        return self.items.get(rid)


class FakeCloud:
    def __init__(self, name="devstack"):
        self.calls = []
        self.servers, self.ips, self.routers, self.networks, self.subnets, self.sgs, \
            self.ports, self.keypairs, self.credentials = (Coll(self, k) for k in (
                "server", "ip", "router", "network", "subnet", "security_group", "port",
                "keypair", "credential"))
        self.current_user_id = "u1"
        self.identity = types.SimpleNamespace(
            find_application_credential=lambda user, name_or_id, ignore_missing=True: next(
                (c for c in self.credentials.items.values() if name_or_id in (c.id, c.name)),
                None),
            delete_application_credential=lambda user, cid, ignore_missing=True:
                self.credentials.delete(cid),
            application_credentials=lambda user: list(self.credentials.items.values()))
        self.config = types.SimpleNamespace(name=name, config={})
        self.on_server_list = None
        self.compute = types.SimpleNamespace(
            servers=self._servers, delete_server=self.servers.delete,
            find_server=self.servers.find, keypairs=lambda: list(self.keypairs.items.values()),
            delete_keypair=self.keypairs.delete, find_keypair=self.keypairs.find,
            get_keypair=self._get_keypair, set_server_metadata=self._set_metadata,
            get=RawServers(lambda **query: self._servers(**query)))
        self.network = types.SimpleNamespace(
            ips=self.ips.list, delete_ip=self.ips.delete, find_ip=self.ips.find,
            routers=self.routers.list, delete_router=self.routers.delete,
            find_router=self.routers.find, networks=self.networks.list,
            delete_network=self.networks.delete, find_network=self.networks.find,
            subnets=self.subnets.list, delete_subnet=self.subnets.delete,
            find_subnet=self.subnets.find, security_groups=self.sgs.list,
            delete_security_group=self.sgs.delete, find_security_group=self.sgs.find,
            ports=self.ports.list, delete_port=self.ports.delete,
            remove_interface_from_router=lambda r, subnet_id: None)

    def authorize(self):
        return "token"

    def _servers(self, **filters):
        out = self.servers.list(**filters)
        if self.on_server_list is not None:
            self.on_server_list(filters)
        return out

    def _get_keypair(self, name):
        self.calls.append(("keypair", "get", name))
        if name not in self.keypairs.items:
            raise os_exc.NotFoundException("keypair %s" % name)
        return copy.deepcopy(self.keypairs.items[name])

    def _set_metadata(self, server, **meta):
        self.calls.append(("server", "set_metadata", server, meta))
        self.servers.items[getattr(server, "id", server)].metadata.update(meta)

    def cluster(self, cid, servers=1, meta=None, sg=True, keypair=True, **meta_kw):
        """A cluster as ``up`` leaves it: tagged servers with metadata, an SG, a keypair."""
        name = cid.rsplit("-", 1)[0]
        for i in range(servers):
            m = {tags.META_CLUSTER: cid, tags.META_NAME: name,
                 tags.META_CREATED: "%d" % (NOW - HOUR), tags.META_EXPIRES: "%d" % (NOW + HOUR)}
            m.update(meta or {})
            m.update(meta_kw)
            self.servers.add("%s-s%d" % (cid, i), "cc-%s-node-%d" % (cid, i), tags.tags(cid),
                             metadata={k: v for k, v in m.items() if v is not None})
        if sg:
            self.sgs.add(cid + "-sg", "cc-" + cid, tags.tags(cid))
        if keypair:
            self.keypairs.add("cc-" + cid)

    def ids(self, coll):
        return sorted(coll.items)


def here(**over):
    """Owner metadata of a process on this machine, this user; dead pid by default."""
    me = tags.Owner.current()
    p = subprocess.Popen(["true"])
    p.wait()
    owner = dict(user=me.user, host=me.host, pid=p.pid, machine_id=me.machine_id,
                 boot_id=me.boot_id, pidns=me.pidns)
    owner.update(over)
    return {tags.META_OWNER: "%s@%s:%d" % (owner["user"], owner["host"], owner["pid"]),
            tags.META_MACHINE: owner["machine_id"], tags.META_BOOT: owner["boot_id"],
            tags.META_PIDNS: owner["pidns"]}


def reasons(cloud, tmp_path, now=NOW):
    return {r.cluster_id: (r.reason, r.problems) for r in gc.assess(
        cloud, str(tmp_path), now=now)}


def test_expired_is_collected_wherever_it_came_from(tmp_path):
    cloud = FakeCloud()
    cloud.cluster("old-00000001", cc_expires="%d" % (NOW - 60), cc_detached="1",
                  cc_owner="someone@elsewhere:1")
    cloud.cluster("fresh-00000002", cc_owner="someone@elsewhere:1")
    got = reasons(cloud, tmp_path)
    assert got["old-00000001"][0].startswith("expired")
    assert got["fresh-00000002"] == (None, [])


def test_owner_gone_on_this_machine_is_collected_unless_detached_in_metadata(tmp_path):
    cloud = FakeCloud()
    cloud.cluster("gone-00000001", meta=here())
    cloud.cluster("detached-00000002", meta=here(), cc_detached="1")
    cloud.cluster("alive-00000003", meta=here(pid=tags.Owner.current().pid))
    got = reasons(cloud, tmp_path, now=time.time())
    assert got["gone-00000001"][0].startswith("owner process")
    assert got["detached-00000002"] == (None, [])
    assert got["alive-00000003"] == (None, [])


@pytest.mark.parametrize("other", [
    dict(machine_id="f" * 32), dict(boot_id="00000000-0000-0000-0000-000000000000"),
    dict(pidns="1"), dict(user="someone-else"),
    dict(machine_id=None, boot_id=None, pidns=None),  # recorded by an older version
])
def test_owner_gone_counts_only_on_the_same_machine_boot_namespace_and_user(tmp_path, other):
    cloud = FakeCloud()
    cloud.cluster("c-00000001", meta=here(**other))
    assert reasons(cloud, tmp_path, now=time.time()) == {"c-00000001": (None, [])}


def test_bad_metadata_skips_only_that_cluster_and_is_reported(tmp_path):
    cloud = FakeCloud()
    cloud.cluster("bad-00000001", cc_expires="soon")
    cloud.cluster("slash-00000002", cc_name="../../etc/x", cc_expires="%d" % (NOW - 60))
    cloud.cluster("late-00000003", cc_expires="%d" % (NOW - 60))
    cloud.cluster("owner-00000004", cc_owner="-oProxyCommand=x", cc_expires="%d" % (NOW - 60))
    cloud.cluster("inf-00000005", cc_expires="inf")
    cloud.cluster("a" * 45 + "-00000006", cc_expires="%d" % (NOW - 60))  # name too long
    cloud.servers.add("weird", "weird", ["cloudcompute", "cc-cluster=../../x"])
    got = reasons(cloud, tmp_path)
    assert got["late-00000003"][0].startswith("expired")
    for cid, fragment in (("bad-00000001", "cc_expires 'soon'"),
                          ("slash-00000002", "cc_name '../../etc/x'"),
                          ("owner-00000004", "owner '-oProxyCommand=x'"),
                          ("inf-00000005", "cc_expires 'inf'"),
                          ("a" * 45 + "-00000006", "is not a cluster name"),
                          ("../../x", "not a cluster id")):
        reason, problems = got[cid]
        assert reason is None and fragment in " ".join(problems), (cid, problems)
    report = gc.collect(cloud, dry_run=False, state_dir=str(tmp_path))
    done = {o.found.cluster_id: o for o in report}
    assert done["late-00000003"].deleted is True
    assert "cc_expires 'soon'" in done["bad-00000001"].skipped
    assert not done["slash-00000002"].deleted
    assert cloud.ids(cloud.servers) == ["a" * 45 + "-00000006-s0", "bad-00000001-s0",
                                        "inf-00000005-s0", "owner-00000004-s0",
                                        "slash-00000002-s0", "weird"]


def test_a_tagged_id_that_starts_with_no_cluster_name_skips_that_cluster_alone(tmp_path):
    # Valid cluster ids, but no cluster name (40 characters at most) starts them,
    # and no server or state file names the cluster: gc has no name to record
    # them under for teardown.
    cloud = FakeCloud()
    for cid in ("a" * 50, "b" * 45 + "-00000002", "ok-00000001"):
        cloud.networks.add("net-" + cid, "cc-" + cid, tags.tags(cid) + ["cc-ended"])
    report = {o.found.cluster_id: o for o in gc.collect(cloud, dry_run=False,
                                                         state_dir=str(tmp_path))}
    assert report["ok-00000001"].deleted is True
    for cid in ("a" * 50, "b" * 45 + "-00000002"):
        assert (report[cid].deleted, report[cid].error) == (False, None)
        assert "does not start with a cluster name" in report[cid].skipped
        assert report[cid].to_dict()["problems"] == [report[cid].skipped]
    assert cloud.ids(cloud.networks) == ["net-" + "a" * 50, "net-" + "b" * 45 + "-00000002"]


def test_one_forged_server_among_good_ones_skips_the_cluster(tmp_path):
    cloud = FakeCloud()
    cloud.cluster("c-00000001", servers=3, cc_expires="%d" % (NOW - 60))
    cloud.servers.items["c-00000001-s1"].metadata[tags.META_NAME] = "a/b"
    assert gc.collect(cloud, dry_run=False, state_dir=str(tmp_path))[0].deleted is False
    assert len(cloud.servers.items) == 3


def test_collect_deletes_only_the_orphans_resources(tmp_path):
    cloud = FakeCloud()
    cloud.cluster("old-00000001", cc_expires="%d" % (NOW - 60))
    cloud.cluster("live-00000002")
    cloud.sgs.add("foreign", "cc-old-00000001")  # same name, not tagged
    cloud.servers.add("untagged", "cc-old-00000001-node-9")
    report = gc.collect(cloud, dry_run=False, state_dir=str(tmp_path))
    assert [(o.found.cluster_id, o.deleted) for o in report] == [("old-00000001", True)]
    assert cloud.ids(cloud.servers) == ["live-00000002-s0", "untagged"]
    assert cloud.ids(cloud.sgs) == ["foreign", "live-00000002-sg"]
    assert cloud.ids(cloud.keypairs) == ["cc-live-00000002"]


def test_the_outcome_as_json_names_error_and_skipped_only_when_set():
    found = gc.FoundCluster("c-00000001", name="c", resources=["server x"], reason="expired")
    assert gc.GcOutcome(found).to_dict() == dict(found.to_dict(), deleted=False)
    assert gc.GcOutcome(found, deleted=True).to_dict()["deleted"] is True
    failed = gc.GcOutcome(found, error="server x still there").to_dict()
    assert list(failed)[-2:] == ["deleted", "error"] and "skipped" not in failed
    skipped = gc.GcOutcome(found, skipped="no longer collectable").to_dict()
    assert skipped["skipped"] == "no longer collectable" and "error" not in skipped
    assert skipped["resources"] == ["server x"] and skipped["name"] == "c"


def test_dry_run_deletes_nothing(tmp_path):
    cloud = FakeCloud()
    cloud.cluster("old-00000001", cc_expires="%d" % (NOW - 60))
    report = gc.collect(cloud, dry_run=True, state_dir=str(tmp_path))
    assert [o.deleted for o in report] == [False]
    assert not [c for c in cloud.calls if c[1] == "delete"]


def test_detach_marks_every_server_and_gc_elsewhere_leaves_it(tmp_path):
    cloud = FakeCloud()
    cloud.cluster("c1-00000001", servers=2, meta=here())
    mine, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    mine.mkdir()
    elsewhere.mkdir()
    ClusterState.create(ClusterRecord(name="c1", cluster_id="c1-00000001", cloud="devstack",
                                      ssh=SSHAccess(user="debian")), str(mine)).created(
        "servers", "cc-c1-00000001-node-0", "c1-00000001-s0")
    assert reasons(cloud, elsewhere, now=time.time())["c1-00000001"][0].startswith("owner")
    Cluster.attach("c1", conn=cloud, state_dir=str(mine)).detach()
    assert sorted(c[2] for c in cloud.calls if c[1] == "set_metadata") == [
        "c1-00000001-s0", "c1-00000001-s1"]  # the recorded one and the one found by tag
    assert ClusterState.load("c1", str(mine)).record.detached is True
    assert gc.collect(cloud, dry_run=False, state_dir=str(elsewhere)) == []
    assert len(cloud.servers.items) == 2


def test_state_file_counts_whatever_cloud_name_recorded_it(tmp_path):
    # Detached before server metadata carried the mark: only the state file says so,
    # and it was written under another name for the same cloud (OS_* variables).
    cloud = FakeCloud(name="devstack")
    cloud.cluster("c1-00000001", meta=here())
    ClusterState.create(ClusterRecord(name="c1", cluster_id="c1-00000001", cloud="envvars",
                                      detached=True), str(tmp_path))
    assert reasons(cloud, tmp_path, now=time.time()) == {"c1-00000001": (None, [])}
    assert gc.collect(cloud, dry_run=False, state_dir=str(tmp_path)) == []


def test_a_state_file_of_another_cloud_with_nothing_tagged_here_is_left_alone(tmp_path):
    cloud = FakeCloud(name="devstack")
    ClusterState.create(ClusterRecord(name="c1", cluster_id="c1-00000001", cloud="other",
                                      expires_at=NOW - 60), str(tmp_path))
    ClusterState.create(ClusterRecord(name="c2", cluster_id="c2-00000002", cloud="devstack",
                                      expires_at=NOW - 60), str(tmp_path))
    got = reasons(cloud, tmp_path)
    assert list(got) == ["c2-00000002"] and got["c2-00000002"][0].startswith("expired")
    report = gc.collect(cloud, dry_run=False, state_dir=str(tmp_path))
    assert [(o.found.cluster_id, o.deleted) for o in report] == [("c2-00000002", True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1.json", "c1.json.lock"]


def test_the_owner_recorded_in_the_state_decides_for_a_cluster_without_servers(tmp_path):
    cloud = FakeCloud()
    cloud.cluster("c1-00000001", servers=0)  # killed while creating its security group
    meta = here()
    owner = tags.Owner.parse(meta[tags.META_OWNER], meta[tags.META_MACHINE],
                             meta[tags.META_BOOT], meta[tags.META_PIDNS])
    ClusterState.create(ClusterRecord(name="c1", cluster_id="c1-00000001", owner=str(owner),
                                      owner_id=owner, expires_at=NOW + HOUR), str(tmp_path))
    assert reasons(cloud, tmp_path, now=time.time())["c1-00000001"][0].startswith("owner")


def test_a_cluster_detached_after_the_survey_is_not_deleted(tmp_path):
    cloud = FakeCloud()
    cloud.cluster("c1-00000001", meta=here())
    listed = []

    def detach_after_first_survey(filters):
        listed.append(filters)
        if len(listed) == 1:
            cloud.servers.items["c1-00000001-s0"].metadata[tags.META_DETACHED] = "1"
    cloud.on_server_list = detach_after_first_survey
    report = gc.collect(cloud, dry_run=False, state_dir=str(tmp_path))
    assert [(o.deleted, o.skipped) for o in report] == [
        (False, "no longer collectable")]
    assert listed[1] == {"tags": "cc-cluster=c1-00000001"}
    assert len(cloud.servers.items) == 1


def test_owner_of_this_process_and_a_dead_one():
    me = tags.Owner.current()
    assert me.alive() is True
    dead = tags.Owner.parse(here()[tags.META_OWNER], me.machine_id, me.boot_id, me.pidns)
    assert dead.alive() is False
    assert tags.Owner.parse(str(dead)).alive() is None  # no machine ids: cannot be told
    with pytest.raises(ValueError, match="user@host:pid"):
        tags.Owner.parse("garbage")
    with pytest.raises(ValueError, match="machine id"):
        tags.Owner.parse(str(me), "not-hex")


@pytest.mark.parametrize("name, cluster_id", [
    ("cc-c-1a2b3c4d", "c-1a2b3c4d"), ("cc-" + "a" * 60, "a" * 60), ("cc-", None),
    ("c-1a2b3c4d", None), ("xcc-c-1", None), ("cc-C-1", None), ("cc-../x", None),
    ("cc-" + "a" * 61, None), ("cc-1-c", None), (None, None)])
def test_the_cluster_id_in_a_resource_name(name, cluster_id):
    assert tags.cluster_id_from_resource_name(name) == cluster_id
    if cluster_id is not None:  # the inverse of resource_name
        assert tags.resource_name(cluster_id) == name


def test_server_metadata_carries_this_machine_only_for_this_process():
    mine = tags.server_metadata("c-1", "c", "node", 1.0, tags.owner(), now=NOW)
    other = tags.server_metadata("c-1", "c", "node", 1.0, "u@h:1", now=NOW)
    me = tags.Owner.current()
    assert (mine[tags.META_MACHINE], mine[tags.META_BOOT]) == (me.machine_id, me.boot_id)
    assert tags.META_MACHINE not in other and other[tags.META_EXPIRES] == "%d" % (NOW + HOUR)
    parsed = tags.parse_server_metadata(mine, "c-1")
    assert parsed.owner == me and parsed.expires == NOW + HOUR and not parsed.detached


def test_what_a_watchdog_left_is_collected_at_once_and_only_without_servers(tmp_path):
    cloud = FakeCloud()
    ended = tags.tags("gone-00000001") + ["cc-ended"]
    cloud.networks.add("gone-net", "cc-gone-00000001", ended)
    cloud.subnets.add("gone-sub", "cc-gone-00000001", ended)
    cloud.credentials.add("cred-1", "cc-lost-00000002",  # all a watchdog left of it
                          description="cloudcompute watchdog of lost-00000002")
    cloud.credentials.add("cred-2", "cc-users-own", description=None)  # the user's own
    cloud.cluster("live-00000003", cc_detached="1")  # a live cluster: its servers stay
    cloud.networks.add("live-net", "cc-live-00000003", tags.tags("live-00000003") + ["cc-ended"])
    cloud.credentials.add("cred-3", "cc-live-00000003",
                          description="cloudcompute watchdog of live-00000003")
    got = reasons(cloud, tmp_path)
    assert got["gone-00000001"][0] == "ended by its watchdog"
    assert got["lost-00000002"][0] == "ended by its watchdog"
    assert got["live-00000003"] == (None, [])
    report = gc.collect(cloud, dry_run=False, state_dir=str(tmp_path))
    assert sorted(o.found.cluster_id for o in report if o.deleted) == [
        "gone-00000001", "lost-00000002"]
    assert cloud.ids(cloud.networks) == ["live-net"]
    assert cloud.ids(cloud.credentials) == ["cred-2", "cred-3"]


def nova_time(t):
    """A keypair's created_at as Nova writes it: UTC, without a zone."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime(t))


def test_a_keypair_left_alone_is_collected_once_older_than_the_grace(tmp_path):
    cloud = FakeCloud()
    cloud.keypairs.add("cc-old-00000001", created_at=nova_time(NOW - 2 * HOUR))
    cloud.keypairs.add("cc-new-00000002", created_at=nova_time(NOW - 60))  # up() under way
    cloud.keypairs.add("cc-not-a-cluster", created_at=nova_time(NOW - 9 * HOUR))
    cloud.keypairs.add("cc-laptop-2023", created_at=nova_time(NOW - 9 * HOUR))
    cloud.keypairs.add("mine", created_at=nova_time(NOW - 9 * HOUR))
    got = reasons(cloud, tmp_path)
    assert sorted(got) == ["new-00000002", "old-00000001"]
    assert got["old-00000001"][0].startswith("no servers and no state file")
    assert got["new-00000002"][0] is None
    report = gc.collect(cloud, dry_run=False, state_dir=str(tmp_path))
    assert [(o.found.cluster_id, o.deleted) for o in report] == [("old-00000001", True)]
    assert cloud.ids(cloud.keypairs) == ["cc-laptop-2023", "cc-new-00000002",
                                         "cc-not-a-cluster", "mine"]


def test_a_keypair_with_its_state_file_here_waits_for_its_owner(tmp_path):
    cloud = FakeCloud()
    cloud.keypairs.add("cc-c1-00000001", created_at=nova_time(NOW - 9 * HOUR))
    ClusterState.create(ClusterRecord(name="c1", cluster_id="c1-00000001", cloud="devstack",
                                      owner_id=tags.Owner.current(),
                                      expires_at=NOW + HOUR), str(tmp_path))
    assert reasons(cloud, tmp_path, now=time.time())["c1-00000001"][0] is None
    assert not [c for c in cloud.calls if c[:2] == ("keypair", "get")]
