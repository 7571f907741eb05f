"""The opt-in fake compute host of the AIO cloud, for ``cloud fake-compute``.

Run by ``devstack/aio/cloud`` with Debian's python3 and openstacksdk, the
environment of ``setup_cloud.py``:

    fake_compute.py up      map the host, wait for its resource provider and
                            trait, put it in its isolated aggregate, create
                            the flavor, raise the demo project's quotas
    fake_compute.py drain   delete every server on the host, wait until gone
    fake_compute.py remove  (the process stopped) delete its service record
                            (Nova then drops its provider, aggregate
                            membership and host mapping), the aggregate and
                            the flavor; the demo quotas back to setup_cloud's
    fake_compute.py status  the host's service, provider and servers

Isolation works both ways: only the fake host's provider has the trait
CUSTOM_CC_FAKE, which the flavor ``cc.fake`` requires, so its servers land
nowhere else; the host's aggregate carries ``trait:CUSTOM_CC_FAKE=required``
and nova.conf enables ``[scheduler] enable_isolated_aggregate_filtering``, so
a server whose flavor and image do not require the trait never lands there.
"""
import os
import subprocess
import sys
import time

import openstack

from setup_cloud import DEMO_QUOTAS, admin, log, wait_for

HOST = "aio-fake"
TRAIT = "CUSTOM_CC_FAKE"
AGGREGATE = "cc-fake"
FLAVOR = ("cc.fake", "cc-fake", 1, 64, 1)  # name, id, vcpus, ram MiB, disk GiB
# Enough for a 500-server cluster beside the demo project's ordinary use.
FAKE_QUOTAS = {
    "compute": dict(instances=700, cores=1400, ram=409600, key_pairs=100),
    "network": dict(port=900),
}
PLACEMENT = {"service_type": "placement"}
TRAITS_VERSION = {"OpenStack-API-Version": "placement 1.6"}


def fake_quotas():
    """The demo quotas while the fake host runs: setup_cloud's, raised."""
    return {kind: dict(DEMO_QUOTAS[kind], **FAKE_QUOTAS[kind]) for kind in DEMO_QUOTAS}


def _placement(conn, path):
    resp = conn.session.get(path, endpoint_filter=PLACEMENT, headers=TRAITS_VERSION,
                            raise_exc=True)
    return resp.json()


def provider(conn):
    """The fake host's resource provider (a dict), or None."""
    rps = _placement(conn, "/resource_providers?name=%s" % HOST)["resource_providers"]
    return rps[0] if rps else None


def provider_traits(conn, rp_uuid):
    return set(_placement(conn, "/resource_providers/%s/traits" % rp_uuid)["traits"])


def provider_aggregates(conn, rp_uuid):
    return set(_placement(conn, "/resource_providers/%s/aggregates" % rp_uuid)["aggregates"])


def service(conn):
    return next(iter(conn.compute.services(binary="nova-compute", host=HOST)), None)


def up():
    conn = admin()
    wait_for("service nova-compute on %s" % HOST,
             lambda: getattr(service(conn), "state", None) == "up", 120)
    # The provider comes after the compute node's record, which
    # discover_hosts maps into the cell (the aggregate needs the mapping).
    wait_for("resource provider %s with trait %s" % (HOST, TRAIT),
             lambda: provider(conn) is not None
             and TRAIT in provider_traits(conn, provider(conn)["uuid"]), 120)
    rp = provider(conn)
    subprocess.run(["nova-manage", "--config-file", os.environ["CC_AIO_NOVA_CONF"],
                    "cell_v2", "discover_hosts"], check=True, capture_output=True)
    agg = next((a for a in conn.compute.aggregates() if a.name == AGGREGATE), None)
    if agg is None:
        agg = conn.compute.create_aggregate(name=AGGREGATE)
    conn.compute.set_aggregate_metadata(agg, {"trait:%s" % TRAIT: "required"})
    agg = conn.compute.get_aggregate(agg.id)
    if HOST not in (agg.hosts or []):
        conn.compute.add_host_to_aggregate(agg, HOST)
    # nova-api mirrors the membership into Placement, where the scheduler's
    # isolation filter reads it (member_of=!in:<aggregate>).
    wait_for("aggregate %s in placement" % AGGREGATE,
             lambda: agg.uuid in provider_aggregates(conn, rp["uuid"]), 60)
    name, fid, vcpus, ram, disk = FLAVOR
    flavor = conn.compute.find_flavor(name, ignore_missing=True)
    if flavor is None:
        flavor = conn.compute.create_flavor(name=name, id=fid, vcpus=vcpus, ram=ram,
                                            disk=disk, is_public=True)
    conn.compute.create_flavor_extra_specs(flavor, {"trait:%s" % TRAIT: "required"})
    set_demo_quotas(conn, fake_quotas())
    log("fake compute host %s up: provider %s, aggregate %s, flavor %s"
        % (HOST, rp["uuid"], AGGREGATE, name))


def set_demo_quotas(conn, quotas):
    demo = conn.identity.find_project("demo", domain_id="default")
    conn.set_compute_quotas(demo.id, **quotas["compute"])
    conn.set_network_quotas(demo.id, **quotas["network"])


def servers_on_host(conn):
    return list(conn.compute.servers(all_projects=True, host=HOST))


def drain(timeout=600):
    conn = admin()
    servers = servers_on_host(conn)
    for s in servers:
        conn.compute.delete_server(s.id, ignore_missing=True)
    if servers:
        log("deleting %d servers on %s" % (len(servers), HOST))
    end = time.monotonic() + timeout
    while servers_on_host(conn):
        if time.monotonic() > end:
            sys.exit("[fake] ERROR: servers still on %s after %ss" % (HOST, timeout))
        time.sleep(1)


def remove():
    conn = admin()
    svc = service(conn)
    if svc is not None:
        conn.compute.delete_service(svc)
        log("service record of %s deleted (with its provider and host mapping)" % HOST)
    agg = next((a for a in conn.compute.aggregates() if a.name == AGGREGATE), None)
    if agg is not None:
        for host in agg.hosts or []:
            conn.compute.remove_host_from_aggregate(agg, host)
        conn.compute.delete_aggregate(agg)
    flavor = conn.compute.find_flavor(FLAVOR[0], ignore_missing=True)
    if flavor is not None:
        conn.compute.delete_flavor(flavor)
    set_demo_quotas(conn, DEMO_QUOTAS)
    rp = provider(conn)
    if rp is not None:  # Nova failed to delete it: do it here
        conn.session.delete("/resource_providers/%s" % rp["uuid"],
                            endpoint_filter=PLACEMENT, headers=TRAITS_VERSION)
    log("fake compute host %s removed" % HOST)


def status():
    conn = admin()
    svc = service(conn)
    rp = provider(conn)
    print("service: %s" % ("%s %s" % (svc.status, svc.state) if svc else "none"))
    print("provider: %s" % ("%s traits %s" % (rp["uuid"], TRAIT in provider_traits(
        conn, rp["uuid"])) if rp else "none"))
    print("servers on %s: %d" % (HOST, len(servers_on_host(conn)) if svc else 0))


if __name__ == "__main__":
    try:
        {"up": up, "drain": drain, "remove": remove, "status": status}[sys.argv[1]]()
    except openstack.exceptions.SDKException as exc:
        sys.exit("[fake] ERROR: %s" % exc)
