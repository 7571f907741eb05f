"""Keypair, security group and network of a cluster, against a stand-in cloud.

The stand-in keeps what was created as openstacksdk's own resource objects
(built from the request body, as the SDK builds them from Neutron's answer),
lists them honouring the filters asked for, and can fail a create with a
503, before or after making the resource (an answer lost on the way back).
"""
import logging
import os
import socket
import stat
import types
import warnings

import pytest
from cryptography.hazmat.primitives import serialization
from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as os_exc
from openstack import warnings as os_warnings
from openstack.compute.v2.keypair import Keypair
from openstack.network.v2.network import Network
from openstack.network.v2.port import Port
from openstack.network.v2.router import Router
from openstack.network.v2.security_group import SecurityGroup
from openstack.network.v2.security_group_rule import SecurityGroupRule
from openstack.network.v2.subnet import Subnet

from cloudcompute import retry, tags
from cloudcompute.exceptions import StateError
from cloudcompute.provision import resources
from cloudcompute.record import ClusterRecord
from cloudcompute.state import ClusterState
from cloudcompute.teardown import Teardown

CID = "c-1"
NAME = "cc-" + CID


def sdk(cls, **body):
    """An openstacksdk resource as the SDK builds it from an API body. (The SDK
    warns about its own deprecated ``_compute_attributes`` on every one.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", os_warnings.RemovedInSDK50Warning)
        return cls(**body)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(retry, "SLEEP", lambda s: None)


@pytest.fixture
def st(tmp_path):
    return ClusterState.create(ClusterRecord(name="c", cluster_id=CID, owner=tags.owner()),
                               str(tmp_path))


class Kind:
    """One kind of resource; ``fail``: "before" or "after" per coming create."""

    def __init__(self, cloud, cls, prefix):
        self.cloud, self.cls, self.prefix = cloud, cls, prefix
        self.items = []
        self.fail = []
        self.creates = 0

    def create(self, **args):
        self.creates += 1
        mode = self.fail.pop(0) if self.fail else None
        if mode == "before":
            raise ks_exc.ServiceUnavailable("try again")
        body = dict(args)
        body.setdefault("id", "%s%d" % (self.prefix, len(self.items) + 1))
        item = sdk(self.cls, **body)
        self.items.append(item)
        if mode == "after":
            raise ks_exc.ServiceUnavailable("the answer was lost")
        return item

    def create_many(self, data):
        """Neutron's bulk create: all or nothing; ``bulk_refused`` as a cloud
        without the bulk form answers."""
        self.bulk_calls = getattr(self, "bulk_calls", 0) + 1
        if getattr(self, "bulk_refused", False):
            raise os_exc.BadRequestException("bulk create is not supported")
        mode = self.fail.pop(0) if self.fail else None
        if mode == "before":
            raise ks_exc.ServiceUnavailable("try again")
        made = []
        for args in data:
            made.append(sdk(self.cls, **dict(args, id="%s%d" % (self.prefix,
                                                                 len(self.items) + 1))))
            self.items.append(made[-1])
        if mode == "after":
            raise ks_exc.ServiceUnavailable("the answer was lost")
        return iter(made)

    def list(self, **filters):
        return iter([i for i in self.items
                     if all(getattr(i, k, None) == v for k, v in filters.items())])

    def find(self, name_or_id, ignore_missing=True):
        return next((i for i in self.items if name_or_id in (i.id, i.name)), None)


def fake_cloud():
    c = types.SimpleNamespace(tagged={}, interfaces=[])
    c.keypairs = Kind(c, Keypair, "kp")
    c.groups = Kind(c, SecurityGroup, "sg")
    c.rules = Kind(c, SecurityGroupRule, "rule")
    c.networks = Kind(c, Network, "net")
    c.subnets = Kind(c, Subnet, "sub")
    c.routers = Kind(c, Router, "r")
    c.ports = Kind(c, Port, "port")

    def set_tags(resource, tag_list):
        c.tagged[resource.id] = list(tag_list)

    def add_interface_to_router(router, subnet_id):
        c.interfaces.append((router.id, subnet_id))
        c.ports.items.append(sdk(Port, id="port-%s" % subnet_id, device_id=router.id,
                                 fixed_ips="subnet_id=%s" % subnet_id))
    c.compute = types.SimpleNamespace(create_keypair=c.keypairs.create,
                                      find_keypair=c.keypairs.find)
    c.network = types.SimpleNamespace(
        set_tags=set_tags,
        create_security_group=c.groups.create, security_groups=c.groups.list,
        create_security_group_rule=c.rules.create, security_group_rules=c.rules.list,
        create_security_group_rules=c.rules.create_many,
        create_network=c.networks.create, networks=c.networks.list,
        create_subnet=c.subnets.create, subnets=c.subnets.list,
        create_router=c.routers.create, routers=c.routers.list,
        add_interface_to_router=add_interface_to_router, ports=c.ports.list)
    return c


def on_disk(st):
    return ClusterState.load(st.name, os.path.dirname(st.path)).record.to_json()


# ------------------------------------------------------------ caller_cidr
def test_caller_cidr_is_the_source_address_as_a_host_network():
    assert resources.caller_cidr("127.0.0.1") == "127.0.0.1/32"
    assert resources.caller_cidr("127.0.0.9") == "127.0.0.1/32"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.connect(("::1", 22))
    except OSError:
        return  # no IPv6 loopback here
    assert resources.caller_cidr("::1") == "::1/128"


# ------------------------------------------------------------ keypair
def public_of(private_pem):
    key = serialization.load_ssh_private_key(private_pem.encode(), None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def test_a_generated_key_is_written_0600_and_only_its_public_half_uploaded(st):
    cloud = fake_cloud()
    old = os.umask(0)  # 0600 even when the umask would allow more
    try:
        name, path = resources.create_keypair(cloud, st, None)
    finally:
        os.umask(old)
    assert (name, path) == (NAME, st.key_path("key"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    (kp,) = cloud.keypairs.items
    with open(path) as f:
        private = f.read()
    assert kp.name == NAME and kp.public_key == public_of(private)
    assert "PRIVATE" not in kp.public_key
    data = on_disk(st)
    assert data["ssh"] == {"key_file": path, "generated_key": True, "user": None,
                           "internal_key_file": None}
    assert data["resources"]["keypairs"][NAME]["id"] == NAME


def test_the_key_is_recorded_before_the_upload_that_fails(st):
    cloud = fake_cloud()

    def refuse(**args):
        raise os_exc.BadRequestException("quota of keypairs")
    cloud.compute.create_keypair = refuse
    with pytest.raises(os_exc.BadRequestException):
        resources.create_keypair(cloud, st, None)
    data = on_disk(st)  # what a rollback reads: the key to remove, the keypair intended
    assert data["ssh"] == {"key_file": st.key_path("key"), "generated_key": True,
                           "user": None, "internal_key_file": None}
    assert os.path.exists(st.key_path("key"))
    assert data["resources"]["keypairs"][NAME]["id"] is None


def test_a_lost_answer_does_not_upload_the_keypair_twice(st):
    cloud = fake_cloud()
    cloud.keypairs.fail = ["after"]
    assert resources.create_keypair(cloud, st, None)[0] == NAME
    assert len(cloud.keypairs.items) == 1 and cloud.keypairs.creates == 1


def test_a_given_key_is_uploaded_and_left_alone(st, tmp_path):
    cloud = fake_cloud()
    mine = tmp_path / "mykey"
    mine.write_text("PRIVATE, NOT READ")
    (tmp_path / "mykey.pub").write_text("ssh-ed25519 AAAAmine me@here\n")
    name, path = resources.create_keypair(cloud, st, str(mine))
    assert path == str(mine) and name == NAME
    assert cloud.keypairs.items[0].public_key == "ssh-ed25519 AAAAmine me@here"
    assert on_disk(st)["ssh"] == {"key_file": str(mine), "generated_key": False,
                                  "user": None, "internal_key_file": None}
    assert not os.path.exists(st.key_path("key")) and mine.read_text() == "PRIVATE, NOT READ"


def empty_cloud():
    """A cloud where everything is already gone, for teardown."""
    from tests.unit.test_teardown import fake_conn
    return fake_conn([])


def test_an_existing_file_at_the_key_path_is_not_overwritten(st):
    with open(st.key_path("key"), "w") as f:
        f.write("someone else's")
    cloud = fake_cloud()
    with pytest.raises(StateError, match="already exists; not overwriting"):
        resources.create_keypair(cloud, st, None)
    with open(st.key_path("key")) as f:
        assert f.read() == "someone else's"
    assert cloud.keypairs.items == []
    # ... and the record lets go of it: the rollback that follows leaves it alone
    assert on_disk(st)["ssh"] == {"key_file": None, "generated_key": False, "user": None,
                                  "internal_key_file": None}
    Teardown(empty_cloud(), st, timeout=5).run()
    assert open(st.key_path("key")).read() == "someone else's"


def test_an_existing_file_at_the_internal_key_path_is_kept_by_the_rollback(st):
    with open(st.key_path("internal.key"), "w") as f:
        f.write("someone else's")
    with pytest.raises(StateError, match="already exists; not overwriting"):
        resources.create_internal_key(st)
    assert on_disk(st)["ssh"]["internal_key_file"] is None
    Teardown(empty_cloud(), st, timeout=5).run()
    assert open(st.key_path("internal.key")).read() == "someone else's"


# ------------------------------------------------------------ security group
def rules(cloud):
    return sorted(((r.direction, r.ether_type, r.protocol, r.port_range_min,
                    r.port_range_max, r.remote_ip_prefix, r.remote_group_id)
                   for r in cloud.rules.items), key=repr)


def test_the_group_admits_its_members_and_ssh_from_one_address_only(st):
    cloud = fake_cloud()
    sg = resources.create_security_group(cloud, st)
    resources.allow_ssh(cloud, sg.id, resources.caller_cidr("127.0.0.1"))
    assert (sg.name, sg.id) == (NAME, "sg1")
    assert rules(cloud) == [
        ("ingress", "IPv4", "tcp", 22, 22, "127.0.0.1/32", None),
        ("ingress", "IPv4", None, None, None, None, "sg1"),
        ("ingress", "IPv6", None, None, None, None, "sg1")]
    assert all(r.security_group_id == "sg1" for r in cloud.rules.items)
    assert cloud.tagged == {"sg1": tags.tags(CID)}
    assert on_disk(st)["resources"]["security_groups"][NAME]["id"] == "sg1"


def test_ssh_from_an_ipv6_address_is_an_ipv6_rule():
    cloud = fake_cloud()
    resources.allow_ssh(cloud, "sg1", "2001:db8::5/128")
    assert rules(cloud) == [("ingress", "IPv6", "tcp", 22, 22, "2001:db8::5/128", None)]


def test_the_groups_rules_go_in_one_request(st):
    cloud = fake_cloud()
    resources.create_security_group(cloud, st)
    assert cloud.rules.bulk_calls == 1 and cloud.rules.creates == 0
    assert [r[1] for r in rules(cloud)] == ["IPv4", "IPv6"]


def test_rules_whose_answer_was_lost_are_found_not_made_twice(st):
    cloud = fake_cloud()
    cloud.rules.fail = ["after"]  # both rules were made; the answer lost
    resources.create_security_group(cloud, st)
    assert len(cloud.rules.items) == 2 and cloud.rules.bulk_calls == 1


def test_rules_that_failed_are_made_on_the_retry(st):
    cloud = fake_cloud()
    cloud.rules.fail = ["before"]  # nothing was made
    resources.create_security_group(cloud, st)
    assert [r[1] for r in rules(cloud)] == ["IPv4", "IPv6"] and cloud.rules.bulk_calls == 2


def test_a_cloud_without_bulk_create_gets_the_rules_one_by_one(st, caplog):
    cloud = fake_cloud()
    cloud.rules.bulk_refused = True
    cloud.rules.fail = [None, "after"]  # the IPv6 rule was made; its answer lost
    with caplog.at_level(logging.INFO):
        resources.create_security_group(cloud, st)
    assert [r[1] for r in rules(cloud)] == ["IPv4", "IPv6"] and cloud.rules.creates == 2
    assert "one by one" in caplog.text


def test_a_rule_that_failed_is_made_even_when_a_similar_one_exists(st):
    cloud = fake_cloud()
    sg = resources.create_security_group(cloud, st)
    cloud.rules.fail = ["before"]  # the SSH rule was not made: the others are no match
    resources.allow_ssh(cloud, sg.id, "10.0.0.5/32")
    assert [r[5] for r in rules(cloud)] == ["10.0.0.5/32", None, None]
    assert cloud.rules.creates == 2


# ------------------------------------------------------------ network
@pytest.mark.parametrize("external", ["ext-net", None])
def test_network_subnet_and_router_are_recorded_and_tagged(st, external):
    cloud = fake_cloud()
    assert resources.create_network(cloud, st, "10.42.128.0/24", external) == "net1"
    (subnet,) = cloud.subnets.items
    assert (subnet.network_id, subnet.cidr, subnet.ip_version) == ("net1", "10.42.128.0/24", 4)
    made = {"networks": "net1", "subnets": "sub1"}
    if external:
        (router,) = cloud.routers.items
        assert router.external_gateway_info == {"network_id": "ext-net"}
        assert cloud.interfaces == [("r1", "sub1")]
        made["routers"] = "r1"
    else:
        assert cloud.routers.items == [] and cloud.interfaces == []
    assert cloud.tagged == {i: tags.tags(CID) for i in made.values()}
    recorded = on_disk(st)["resources"]
    assert {k: recorded[k][NAME]["id"] for k in made} == made
    if external:
        assert recorded["router_interfaces"][NAME] == {
            "name": NAME, "id": "sub1", "router_id": "r1", "subnet_id": "sub1"}
    assert all(i.description == "cloudcompute cluster %s" % CID
               for i in cloud.networks.items + cloud.subnets.items + cloud.routers.items)
