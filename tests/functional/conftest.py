"""Functional tests run against a real cloud: OS_CLOUD (default devstack).

A missing or unreachable cloud fails the tests; it never skips them.
Every test that creates resources checks afterwards, through an admin
connection of its own, that none of them is left.
"""
import os
import uuid

import openstack
import pytest

CLOUD = os.environ.get("OS_CLOUD", "devstack")


def _connect(cloud):
    try:
        conn = openstack.connect(cloud=cloud)
        conn.authorize()
    except Exception as exc:  # a missing cloud must fail loudly, not skip
        pytest.fail("cloud %r is not usable (%s); start the local cloud with "
                    "devstack/aio/cloud up and set OS_CLIENT_CONFIG_FILE" % (cloud, exc))
    return conn


@pytest.fixture(scope="session")
def conn():
    return _connect(CLOUD)


@pytest.fixture(scope="session")
def admin_conn():
    return _connect(CLOUD + "-admin")


@pytest.fixture
def unique():
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    d = tmp_path / "state"
    d.mkdir()
    monkeypatch.setenv("CLOUDCOMPUTE_STATE_DIR", str(d))
    return str(d)


def leftovers(admin, project_id, marker):
    """Names of servers, ports, FIPs, SGs, keypairs, networks, routers holding marker."""
    found = []
    for s in admin.compute.servers(all_projects=True, project_id=project_id):
        if marker in s.name:
            found.append("server " + s.name)
    for kind, lister in (("port", admin.network.ports), ("floating ip", admin.network.ips),
                         ("security group", admin.network.security_groups),
                         ("network", admin.network.networks),
                         ("subnet", admin.network.subnets),
                         ("router", admin.network.routers)):
        for r in lister(project_id=project_id):
            text = " ".join(str(x) for x in (r.name, getattr(r, "description", ""),
                                             getattr(r, "tags", [])) if x)
            if marker in text:
                found.append("%s %s" % (kind, r.name or r.id))
    return found


def keypairs_with(conn, marker):
    return [k.name for k in conn.compute.keypairs() if marker in k.name]
