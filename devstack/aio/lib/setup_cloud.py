"""Identity, flavors, images, networks, quotas and clouds.yaml of the AIO cloud.

Run by ``devstack/aio/cloud up`` with Debian's python3 and openstacksdk:

    setup_cloud.py identity    service users, services, endpoints, the demo
                               and alt_demo projects and users
    setup_cloud.py resources   flavors, images, networks, router, quotas,
                               wait for the compute host, write clouds.yaml

Every step is find-or-create, so running it again changes nothing.
"""
import os
import subprocess
import sys
import time

import openstack
import yaml

KS = "http://127.0.0.1:5000/v3"
STATE = os.environ["CC_AIO_STATE"]
ENDPOINTS = {
    # service name: (type, url)
    "glance": ("image", "http://127.0.0.1:9292"),
    "placement": ("placement", "http://127.0.0.1:8778"),
    "nova": ("compute", "http://127.0.0.1:8774/v2.1"),
    "neutron": ("network", "http://127.0.0.1:9696"),
}
# DevStack's flavors with DevStack's ids: lib/nova create_flavors (c1, d1-d4,
# 1-5) and lib/tempest (42, 84: its TEMPEST_FLAVOR_RAM / _ALT_RAM defaults and
# the 1 GiB disk of its CirrOS image). Each carries hw_rng:allowed=True there.
FLAVORS = [  # name, id, vcpus, ram MiB, disk GiB
    ("m1.nano", "42", 1, 192, 1),
    ("m1.micro", "84", 1, 256, 1),
    ("cirros256", "c1", 1, 256, 1),
    ("ds512M", "d1", 1, 512, 5),
    ("ds1G", "d2", 1, 1024, 10),
    ("ds2G", "d3", 2, 2048, 10),
    ("ds4G", "d4", 4, 4096, 20),
    ("m1.tiny", "1", 1, 512, 1),
    ("m1.small", "2", 1, 2048, 20),
    ("m1.medium", "3", 2, 4096, 40),
    ("m1.large", "4", 4, 8192, 80),
    ("m1.xlarge", "5", 8, 16384, 160),
]
FLAVOR_SPECS = {"hw_rng:allowed": "True"}
IMAGE = "debian-12-cc"
DEMO_QUOTAS = {
    "compute": dict(instances=100, cores=200, ram=204800, key_pairs=100),
    "network": dict(floatingip=40, port=200, security_group=40,
                    security_group_rule=400, network=20, subnet=20, router=10),
}
PRIVATE_CIDR = "10.42.0.0/24"


AGENT_HOST = "cc-aio"


def log(msg):
    print("[setup] %s" % msg, flush=True)


def connect(user, password, project):
    # The caller's OS_CLOUD / clouds.yaml / OS_* must not leak into these connections.
    return openstack.connect(
        load_yaml_config=False, load_envvars=False,
        auth_url=KS, username=user, password=password, project_name=project,
        user_domain_id="default", project_domain_id="default",
        region_name="RegionOne", identity_api_version="3")


def admin():
    return connect("admin", os.environ["CC_AIO_ADMINPASS"], "admin")


def ensure_user(conn, name, password, project, roles):
    user = conn.identity.find_user(name, domain_id="default")
    if user is None:
        user = conn.identity.create_user(name=name, password=password,
                                         domain_id="default",
                                         default_project_id=project.id)
    else:
        conn.identity.update_user(user, password=password)
    for role_name in roles:
        role = conn.identity.find_role(role_name)
        conn.identity.assign_project_role_to_user(project, user, role)
    return user


def identity():
    conn = admin()
    for role in ("service", "member", "reader"):
        if conn.identity.find_role(role) is None:
            conn.identity.create_role(name=role)
    projects = {}
    for name in ("service", "demo", "alt_demo"):
        projects[name] = (conn.identity.find_project(name, domain_id="default")
                          or conn.identity.create_project(
                              name=name, domain_id="default"))
    for name in ENDPOINTS:
        ensure_user(conn, name, os.environ["CC_AIO_SVCPASS"],
                    projects["service"], ["admin", "service"])
    ensure_user(conn, "demo", os.environ["CC_AIO_DEMOPASS"], projects["demo"],
                ["member", "reader"])
    # DevStack's second tenant (lib/tempest create_tempest_accounts): a user
    # with the member role in a project of its own.
    ensure_user(conn, "alt_demo", os.environ["CC_AIO_ALTPASS"],
                projects["alt_demo"], ["member"])
    existing = {(e.service_id, e.interface) for e in conn.identity.endpoints()}
    for name, (stype, url) in ENDPOINTS.items():
        svc = conn.identity.find_service(name)
        if svc is None:
            svc = conn.identity.create_service(name=name, type=stype)
        for iface in ("public", "internal", "admin"):
            if (svc.id, iface) not in existing:
                conn.identity.create_endpoint(service_id=svc.id, interface=iface,
                                              url=url, region_id="RegionOne")
    log("identity: users, services and endpoints in place")


def wait_for(what, predicate, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except openstack.exceptions.SDKException as exc:
            log("waiting for %s: %s" % (what, exc))
        time.sleep(0.5)
    sys.exit("[setup] ERROR: %s not ready after %ss" % (what, timeout))


def resources():
    t0 = time.monotonic()
    conn = admin()
    demo = conn.identity.find_project("demo", domain_id="default")

    wait_for("nova-compute service",
             lambda: any(s.state == "up" and s.status == "enabled"
                         for s in conn.compute.services(binary="nova-compute")), 120)
    # Map the new compute host into its cell now rather than at the scheduler's
    # next periodic discovery.
    subprocess.run(["nova-manage", "--config-file", os.environ["CC_AIO_NOVA_CONF"],
                    "cell_v2", "discover_hosts"], check=True, capture_output=True)
    wait_for("hypervisor", lambda: any(True for _ in conn.compute.hypervisors()), 120)
    log("compute host up after %.1fs" % (time.monotonic() - t0))
    # Ports of cc-aio bind only while its L2 agent reports alive, and
    # routers are scheduled to a live L3 agent.
    for agent_type in ("Linux bridge agent", "L3 agent"):
        wait_for(agent_type, lambda kind=agent_type: any(
            a.is_alive for a in conn.network.agents(agent_type=kind, host=AGENT_HOST)), 90)
    log("Neutron agents alive after %.1fs" % (time.monotonic() - t0))

    ensure_flavors(conn)

    if conn.image.find_image(IMAGE) is None:
        path = os.path.join(STATE, "data", "image.raw")
        with open(path, "wb") as f:
            f.truncate(1024 * 1024)
        image = conn.image.create_image(
            name=IMAGE, filename=path, disk_format="raw",
            container_format="bare", visibility="public",
            os_admin_user="debian", os_distro="debian", os_version="12",
            allow_duplicates=True)
        log("image %s registered (%s)" % (IMAGE, image.id))

    public = conn.network.find_network("public")
    if public is None:
        public = conn.network.create_network(
            name="public", is_router_external=True,
            provider_network_type="flat", provider_physical_network="public")
    if not list(conn.network.subnets(network_id=public.id)):
        conn.network.create_subnet(
            network_id=public.id, name="public-subnet", ip_version=4,
            cidr=os.environ["CC_AIO_PUBLIC_RANGE"], is_dhcp_enabled=False)

    private = conn.network.find_network("private", project_id=demo.id)
    if private is None:
        private = conn.network.create_network(name="private",
                                              project_id=demo.id)
    subnets = list(conn.network.subnets(network_id=private.id))
    if not subnets:
        subnets = [conn.network.create_subnet(
            network_id=private.id, name="private-subnet", ip_version=4,
            cidr=PRIVATE_CIDR, is_dhcp_enabled=False, project_id=demo.id)]
    router = conn.network.find_router("router1", project_id=demo.id)
    if router is None:
        router = conn.network.create_router(
            name="router1", project_id=demo.id,
            external_gateway_info={"network_id": public.id})
        conn.network.add_interface_to_router(router, subnet_id=subnets[0].id)
    write_routes(conn.network.get_router(router.id), subnets[0].cidr)

    alt = conn.identity.find_project("alt_demo", domain_id="default")
    for project in (demo, alt):
        conn.set_compute_quotas(project.id, **DEMO_QUOTAS["compute"])
        conn.set_network_quotas(project.id, **DEMO_QUOTAS["network"])

    write_clouds_yaml()
    log("resources in place after %.1fs" % (time.monotonic() - t0))


def ensure_flavors(conn):
    """Create DevStack's flavors; converge older ones onto DevStack's ids.

    A flavor of the same name but another id or size is replaced only while
    no server was built from it (a server keeps its flavor's name); otherwise
    it is kept as it is, and says so in the log, until those servers are gone.
    """
    existing = list(conn.compute.flavors(is_public=None))
    used = set()
    for server in conn.compute.servers(all_projects=True):
        flavor = server.flavor
        if flavor is not None:
            used.add(getattr(flavor, "original_name", None) or flavor.name)
            used.add(flavor.id)
    for name, fid, vcpus, ram, disk in FLAVORS:
        same = [f for f in existing if f.name == name or f.id == fid]
        if any(f.name == name and f.id == fid and (f.vcpus, f.ram, f.disk)
               == (vcpus, ram, disk) for f in same):
            continue
        busy = [f for f in same if f.name in used or f.id in used]
        if busy:
            log("flavor %s: kept as id %s, servers use it"
                % (name, ", ".join(f.id for f in busy)))
            continue
        for f in same:
            log("flavor %s (id %s) replaced by DevStack's %s (id %s)"
                % (f.name, f.id, name, fid))
            conn.compute.delete_flavor(f)
        flavor = conn.compute.create_flavor(
            name=name, id=fid, vcpus=vcpus, ram=ram, disk=disk, is_public=True)
        conn.compute.create_flavor_extra_specs(flavor, FLAVOR_SPECS)


def write_routes(router, cidr):
    """Record the host's route to the demo project's private subnet.

    As DevStack does (``ip route replace $FIXED_RANGE via $ROUTER_GW_IP``),
    the host reaches router1's private subnet through the router's gateway
    address on the public network; `cloud up` installs the route from this
    file. Other tenant networks are reached through floating IPs.
    """
    fixed = (router.external_gateway_info or {}).get("external_fixed_ips") or []
    if not fixed:
        sys.exit("[setup] ERROR: router1 has no gateway address on public")
    path = os.path.join(STATE, "routes")
    with open(path + ".new", "w") as f:
        f.write("%s %s\n" % (cidr, fixed[0]["ip_address"]))
    os.replace(path + ".new", path)


def write_clouds_yaml():
    def entry(user, password, project):
        return {
            "auth": {"auth_url": KS, "username": user, "password": password,
                     "project_name": project, "user_domain_id": "default",
                     "project_domain_id": "default"},
            "region_name": "RegionOne",
            "identity_api_version": 3,
            # Library settings for this cloud: the host routes the private
            # network through router1 (nodes there are reached on their fixed
            # IPs, others through floating IPs), and nodes reach the API on
            # the host's public address (README.md, "The local cloud").
            "cloudcompute": {"network": "private", "floating_ips": "auto",
                             "image": IMAGE, "flavor": "m1.tiny",
                             # the host's address on br-ex (`cloud`)
                             "node_api_host": os.environ["CC_AIO_PUBLIC_GATEWAY"]},
        }
    def devstack_entry(user, password, project=None, system_scope=None):
        # The shape of DevStack's tools/update_clouds_yaml.py, which
        # functions-common write_clouds_yaml runs once per cloud.
        auth = {"auth_url": KS, "username": user, "password": password,
                "user_domain_id": "default"}
        if system_scope:
            auth["system_scope"] = system_scope
        else:
            auth.update(project_name=project, project_domain_id="default")
        return {"region_name": "RegionOne", "identity_api_version": "3",
                "volume_api_version": "3", "auth": auth}
    clouds = {"clouds": {
        "devstack": entry("demo", os.environ["CC_AIO_DEMOPASS"], "demo"),
        "devstack-admin": entry("admin", os.environ["CC_AIO_ADMINPASS"],
                                "admin"),
        "devstack-alt": devstack_entry(
            "alt_demo", os.environ["CC_AIO_ALTPASS"], project="alt_demo"),
        "devstack-system-admin": devstack_entry(
            "admin", os.environ["CC_AIO_ADMINPASS"], system_scope="all"),
    }}
    path = os.path.join(STATE, "clouds.yaml")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(clouds, f, default_flow_style=False)


if __name__ == "__main__":
    {"identity": identity, "resources": resources}[sys.argv[1]]()
