"""Unit tests of the local cloud's setup: DevStack's flavors converge."""
import importlib
import os
import sys
import types

import pytest

AIO_LIB = os.path.join(os.path.dirname(__file__), "..", "..", "devstack", "aio", "lib")


@pytest.fixture
def setup_cloud(monkeypatch, tmp_path):
    monkeypatch.setenv("CC_AIO_STATE", str(tmp_path))
    monkeypatch.syspath_prepend(AIO_LIB)
    sys.modules.pop("setup_cloud", None)
    mod = importlib.import_module("setup_cloud")
    yield mod
    sys.modules.pop("setup_cloud", None)


class FakeCompute:
    """Flavors and servers as Nova keeps them (servers embed their flavor)."""

    def __init__(self, flavors, servers=()):
        self.flavors_ = {f.id: f for f in flavors}
        self.servers_ = list(servers)
        self.log = []

    def flavors(self, is_public=True):
        assert is_public is None  # private flavors must be seen too
        return list(self.flavors_.values())

    def servers(self, all_projects=False):
        assert all_projects
        return list(self.servers_)

    def delete_flavor(self, flavor):
        self.log.append(("delete", flavor.id))
        del self.flavors_[flavor.id]

    def create_flavor(self, name, id, vcpus, ram, disk, is_public):
        assert id not in self.flavors_ and is_public
        f = flavor(name, id, vcpus, ram, disk)
        self.flavors_[id] = f
        self.log.append(("create", id))
        return f

    def create_flavor_extra_specs(self, flavor, specs):
        flavor.extra_specs = dict(specs)


def flavor(name, fid, vcpus, ram, disk):
    return types.SimpleNamespace(name=name, id=fid, vcpus=vcpus, ram=ram, disk=disk,
                                 extra_specs={})


def server(flavor_name):
    return types.SimpleNamespace(flavor=types.SimpleNamespace(
        original_name=flavor_name, name=None, id=None))


def devstack(mod):
    return {f[0]: f[1:] for f in mod.FLAVORS}


def test_fresh_cloud_gets_devstacks_flavors(setup_cloud):
    compute = FakeCompute([])
    setup_cloud.ensure_flavors(types.SimpleNamespace(compute=compute))
    got = {f.name: (f.id, f.vcpus, f.ram, f.disk) for f in compute.flavors_.values()}
    assert got == devstack(setup_cloud)
    assert got["m1.nano"][0] == "42" and got["ds4G"] == ("d4", 4, 4096, 20)
    assert all(f.extra_specs == {"hw_rng:allowed": "True"} for f in compute.flavors_.values())


def test_second_run_changes_nothing(setup_cloud):
    compute = FakeCompute([])
    conn = types.SimpleNamespace(compute=compute)
    setup_cloud.ensure_flavors(conn)
    compute.log.clear()
    setup_cloud.ensure_flavors(conn)
    assert compute.log == []


def test_old_flavor_replaced_unless_a_server_uses_it(setup_cloud):
    compute = FakeCompute(
        [flavor("m1.tiny", "uuid-tiny", 1, 512, 1), flavor("m1.small", "uuid-small", 1, 2048, 20),
         flavor("m1.medium", "3", 2, 4096, 40)],
        servers=[server("m1.small")])
    setup_cloud.ensure_flavors(types.SimpleNamespace(compute=compute))
    by_name = {f.name: f.id for f in compute.flavors_.values()}
    assert by_name["m1.tiny"] == "1"             # unused: replaced by DevStack's id
    assert by_name["m1.small"] == "uuid-small"   # a server was built from it: kept
    assert ("delete", "uuid-tiny") in compute.log
    assert ("delete", "3") not in compute.log    # already DevStack's: untouched
    assert ("delete", "uuid-small") not in compute.log


def test_wrong_size_under_devstacks_id_is_replaced(setup_cloud):
    compute = FakeCompute([flavor("m1.nano", "42", 1, 64, 0)])
    setup_cloud.ensure_flavors(types.SimpleNamespace(compute=compute))
    assert (compute.flavors_["42"].ram, compute.flavors_["42"].disk) == (192, 1)
    assert compute.log[:2] == [("delete", "42"), ("create", "42")]
