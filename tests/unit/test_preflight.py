"""Pre-flight against a stand-in cloud: names resolved, problems collected, quotas.

The stand-in connection offers the finders, listings and quota getters that
``preflight.resolve`` calls; what they return are openstacksdk's own resource
classes (Flavor, Image, Network, QuotaSet, QuotaDetails) built from the bodies
the APIs send, so attribute names are the SDK's, not guesses.
"""
import logging
import types
import warnings

import pytest
from openstack import exceptions as os_exc
from openstack import warnings as os_warnings
from openstack.compute.v2.flavor import Flavor
from openstack.compute.v2.quota_set import QuotaSet
from openstack.image.v2.image import Image
from openstack.network.v2.network import Network
from openstack.network.v2.quota import QuotaDetails

from cloudcompute import config, retry
from cloudcompute.config import ClusterSpec, NodeGroup
from cloudcompute.exceptions import PreflightError
from cloudcompute.provision import preflight

def sdk(cls, **body):
    """An openstacksdk resource as the SDK builds it from an API body. (The SDK
    warns about its own deprecated ``_compute_attributes`` on every one.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", os_warnings.RemovedInSDK50Warning)
        return cls(**body)


FLAVORS = [sdk(Flavor, id="f1", name="m1.small", vcpus=2, ram=2048),
           sdk(Flavor, id="f2", name="m1.large", vcpus=8, ram=16384),
           sdk(Flavor, id="f0", name="odd.novcpu", vcpus=0, ram=512)]
IMAGES = [sdk(Image, id="i1", name="ubuntu-22.04", status="active", os_admin_user="ubuntu"),
          sdk(Image, id="i2", name="debian-12", status="active",
              properties={"os_admin_user": "debian"}),
          sdk(Image, id="i3", name="bare", status="active"),
          sdk(Image, id="i4", name="uploading", status="queued", os_admin_user="ubuntu"),
          sdk(Image, id="i5", name="evil", status="active", os_admin_user="-oProxyCommand=x")]
NETWORKS = [sdk(Network, id="n1", name="private", is_router_external=False),
            sdk(Network, id="n2", name="public", is_router_external=True)]


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(retry, "SLEEP", lambda s: None)


def finder(items):
    def find(name_or_id, ignore_missing=True):
        found = [i for i in items if name_or_id in (i.id, i.name)]
        if len(found) > 1:
            raise os_exc.DuplicateResource("more than one %s" % name_or_id)
        if not found and not ignore_missing:
            raise os_exc.NotFoundException("no %s" % name_or_id)
        return found[0] if found else None
    return find


def lister(items):
    def listing(**filters):  # as the APIs filter: on the attribute of that name
        return iter([i for i in items
                     if all(getattr(i, k, None) == v for k, v in filters.items())])
    return listing


class Connection(types.SimpleNamespace):
    """Weakly referable and hashed by identity, as openstacksdk's Connection is
    (pre-flight's cache)."""
    __hash__ = object.__hash__
    __eq__ = object.__eq__


def cloud(flavors=FLAVORS, images=IMAGES, networks=NETWORKS, compute_quota=None,
          network_quota=None):
    """``compute_quota``: {key: (limit, in use)}; ``network_quota``: Neutron's
    details body, {resource: {"limit", "used", "reserved"}}. Unset: unlimited."""
    calls = []

    def get_quota_set(project_id, usage=False):
        calls.append(("compute quota", project_id, usage))
        q = compute_quota or {}
        return sdk(QuotaSet, instances=q.get("instances", (-1, 0))[0],
                        cores=q.get("cores", (-1, 0))[0], ram=q.get("ram", (-1, 0))[0],
                        usage={k: used for k, (_, used) in q.items()})

    def get_quota(project_id, details=False):
        calls.append(("network quota", project_id, details))
        if isinstance(network_quota, Exception):
            raise network_quota
        return sdk(QuotaDetails, project_id=project_id, **(network_quota or {}))

    conn = Connection(
        current_project_id="p1", calls=calls,
        compute=types.SimpleNamespace(find_flavor=finder(flavors), flavors=lister(flavors),
                                      get_quota_set=get_quota_set),
        image=types.SimpleNamespace(find_image=finder(images), images=lister(images)),
        network=types.SimpleNamespace(find_network=finder(networks),
                                      networks=lister(networks), get_quota=get_quota))
    return conn


def spec(**kw):
    """A spec as Cluster hands it to pre-flight: settings applied, validated."""
    kw.setdefault("network", "private")
    if "groups" not in kw:
        kw.setdefault("flavor", "m1.small")
        kw.setdefault("image", "ubuntu-22.04")
    return config.validate(ClusterSpec(name="c", **kw).with_settings({}))


def test_names_resolve_to_ids_and_the_images_user_is_the_login():
    plan = preflight.resolve(cloud(), spec(nodes=3))
    (g,) = plan.groups
    assert (g.name, g.count, g.flavor_id, g.flavor_name, g.vcpus, g.ram) == (
        "node", 3, "f1", "m1.small", 2, 2048)
    assert (g.image_id, g.image_name, g.image_user) == ("i1", "ubuntu-22.04", "ubuntu")
    assert (plan.network_id, plan.external_network_id, plan.project_id) == ("n1", None, "p1")
    assert plan.ssh_user == "ubuntu" and plan.total == 3


def test_slots_default_to_the_flavors_vcpus_and_a_groups_slots_win():
    plan = preflight.resolve(cloud(), spec(groups=[
        NodeGroup("big", 1, "m1.large", "ubuntu-22.04"),
        NodeGroup("pinned", 2, "m1.large", "ubuntu-22.04", slots=3),
        NodeGroup("small", 1, "m1.small", "ubuntu-22.04"),
        NodeGroup("odd", 1, "odd.novcpu", "ubuntu-22.04")]))
    assert {g.name: g.slots for g in plan.groups} == {"big": 8, "pinned": 3, "small": 2,
                                                      "odd": 1}


def test_every_problem_with_the_names_is_reported_at_once():
    conn = cloud()
    with pytest.raises(PreflightError) as err:
        preflight.resolve(conn, spec(network="nowhere", groups=[
            NodeGroup("a", 1, "m9.huge", "ubuntu-22.04"),
            NodeGroup("b", 1, "m1.small", "windows-11"),
            NodeGroup("c", 1, "m1.small", "uploading")]))
    assert err.value.problems == [
        "group a: unknown flavor 'm9.huge' (available: m1.large, m1.small, odd.novcpu)",
        "group b: unknown image 'windows-11' (available: bare, debian-12, evil, "
        "ubuntu-22.04, uploading)",
        "group c: image uploading is queued, not active",
        "unknown network 'nowhere' (available: private, public)"]
    assert str(err.value).startswith("pre-flight found 4 problem(s): group a: unknown flavor")


def test_the_images_ssh_user_is_validated_before_it_is_used():
    with pytest.raises(PreflightError) as err:
        preflight.resolve(cloud(), spec(image="evil"))
    assert any("image evil: os_admin_user '-oProxyCommand=x' is not a user name" in p
               for p in err.value.problems)
    assert any("ssh_user is not set" in p for p in err.value.problems)
    # Given a user, the image's is not used, so not a problem either; it is dropped.
    plan = preflight.resolve(cloud(), spec(image="evil", ssh_user="admin"))
    assert plan.ssh_user == "admin" and plan.groups[0].image_user is None


def test_the_user_comes_from_the_image_property_or_must_be_given():
    assert preflight.resolve(cloud(), spec(image="debian-12")).ssh_user == "debian"
    for images in (["bare"], ["ubuntu-22.04", "debian-12"]):  # none, or two that differ
        groups = [NodeGroup("g%d" % i, 1, "m1.small", im) for i, im in enumerate(images)]
        with pytest.raises(PreflightError, match="ssh_user is not set and the image"):
            preflight.resolve(cloud(), spec(groups=groups))
        assert preflight.resolve(cloud(), spec(groups=groups, ssh_user="me")).ssh_user == "me"


def test_a_name_that_matches_two_resources_asks_for_the_id():
    twins = FLAVORS + [sdk(Flavor, id="f9", name="m1.small", vcpus=2, ram=2048)]
    with pytest.raises(PreflightError, match="'m1.small' matches more than one resource; "
                                             "use its id"):
        preflight.resolve(cloud(flavors=twins), spec())
    assert preflight.resolve(cloud(flavors=twins), spec(flavor="f9")).groups[0].flavor_id == "f9"


def test_compute_quotas_exceeded_are_all_reported_together():
    conn = cloud(compute_quota={"instances": (10, 8), "cores": (8, 4), "ram": (-1, 99999)})
    with pytest.raises(PreflightError) as err:
        preflight.resolve(conn, spec(nodes=3))  # 3 x (2 vCPUs, 2048 MB)
    assert err.value.problems == ["compute quota instances: need 3, 2 of 10 left",
                                  "compute quota cores: need 6, 4 of 8 left"]
    assert ("compute quota", "p1", True) in conn.calls
    # Exactly what is left is enough.
    preflight.resolve(cloud(compute_quota={"instances": (10, 7), "cores": (8, 2),
                                           "ram": (6144, 0)}), spec(nodes=3))


def test_network_quotas_exceeded_are_reported():
    conn = cloud(network_quota={"port": {"limit": 10, "used": 8, "reserved": 0},
                                "floatingip": {"limit": 50, "used": 0, "reserved": 0}})
    with pytest.raises(PreflightError) as err:
        preflight.resolve(conn, spec(nodes=3))
    assert err.value.problems == ["network quota port: need 3, 2 of 10 left"]


def test_unreadable_quotas_are_skipped_with_a_warning(caplog):
    conn = cloud(network_quota=os_exc.ForbiddenException("policy does not allow"))
    with caplog.at_level(logging.WARNING, logger=preflight.LOG.name):
        plan = preflight.resolve(conn, spec())
    assert plan.groups[0].flavor_id == "f1"
    assert "cannot read network quotas, skipping that check" in caplog.text


@pytest.mark.parametrize("networks,external,problem", [
    (NETWORKS, "n2", None),
    (NETWORKS[:1], None, "no external network found"),
    (NETWORKS + [sdk(Network, id="n3", name="public2", is_router_external=True)], None,
     "several external networks (public, public2); set external_network"),
])
def test_a_cluster_network_needs_exactly_one_external_network(networks, external, problem):
    s = spec(network=None, create_network=True)
    if problem is None:
        assert preflight.resolve(cloud(networks=networks), s).external_network_id == external
    else:
        with pytest.raises(PreflightError) as err:
            preflight.resolve(cloud(networks=networks), s)
        assert any(problem in p for p in err.value.problems)


def counting(conn):
    """Wrap every lookup of ``conn`` to count the requests it stands for."""
    asked = []
    for service, names in (("compute", ("flavors", "find_flavor")),
                           ("image", ("images", "find_image")),
                           ("network", ("networks", "find_network"))):
        api = getattr(conn, service)
        for name in names:
            def wrapped(*a, _fn=getattr(api, name), _name=name, **kw):
                asked.append(_name)
                return _fn(*a, **kw)
            setattr(api, name, wrapped)
    return asked


def test_each_name_costs_one_listing_and_a_connection_remembers_them(monkeypatch):
    conn = cloud()
    asked = counting(conn)
    plan = preflight.resolve(conn, spec(nodes=2))
    assert (plan.groups[0].flavor_id, plan.groups[0].image_id, plan.network_id) == (
        "f1", "i1", "n1")
    assert sorted(asked) == ["flavors", "images", "networks"]
    preflight.resolve(conn, spec(nodes=5))  # the same connection: nothing asked again
    assert len(asked) == 3
    assert sorted(c[0] for c in conn.calls) == ["compute quota"] * 2 + ["network quota"] * 2
    monkeypatch.setattr(preflight, "CACHE_SECONDS", 0.0)  # remembered no longer
    preflight.resolve(conn, spec(nodes=5))
    assert len(asked) == 6


def test_an_id_is_found_after_the_name_listing_and_an_inactive_image_is_not_kept():
    conn = cloud()
    asked = counting(conn)
    plan = preflight.resolve(conn, spec(image="i2", network="n1", ssh_user="u"))
    assert (plan.groups[0].image_id, plan.network_id) == ("i2", "n1")
    assert sorted(asked) == ["find_image", "find_network", "flavors", "images", "networks"]
    for _ in range(2):
        with pytest.raises(PreflightError, match="image uploading is queued, not active"):
            preflight.resolve(conn, spec(image="uploading"))
    assert asked.count("images") == 3  # asked each time until it is active
