"""The local all-in-one cloud, proven with openstacksdk and paramiko directly.

These tests do not use cloudcompute: they check that the rig behaves like
a cloud whose servers are VMs (SSH, console log host keys, user-data, a
private filesystem, no way out), and that its fault knobs work.
"""
import base64
import os
import re
import socket
import subprocess
import time

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.functional.conftest import keypairs_with, leftovers

IMAGE = "debian-12-cc"
FLAVOR = "m1.tiny"
NETWORK = "private"
# The host's address on the public network (br-ex): it reaches the private
# network through router1, and nodes reach the API there.
HOST = "172.24.4.1"


def _keypair(conn, tmp_path, name):
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "id"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH).decode()
    conn.compute.create_keypair(name=name, public_key=pub)
    return str(path)


@pytest.fixture
def rig(conn, admin_conn, unique, tmp_path):
    """Keypair + security group; everything created is deleted and checked."""
    created = {"servers": []}
    key_file = _keypair(conn, tmp_path, unique)
    sg = conn.network.create_security_group(name=unique)
    conn.network.create_security_group_rule(
        security_group_id=sg.id, direction="ingress", ethertype="IPv4",
        protocol="tcp", port_range_min=22, port_range_max=22,
        remote_ip_prefix=HOST + "/32")
    net = conn.network.find_network(NETWORK)
    image = conn.image.find_image(IMAGE)
    flavor = conn.compute.find_flavor(FLAVOR)

    def boot(suffix="", wait=True, flavor_name=None, **kw):
        fid = conn.compute.find_flavor(flavor_name).id if flavor_name else flavor.id
        server = conn.compute.create_server(
            name="%s-%s" % (unique, suffix), image_id=image.id, flavor_id=fid,
            networks=[{"uuid": net.id}], key_name=unique,
            security_groups=[{"name": unique}], **kw)
        created["servers"].append(server.id)
        if wait:
            server = conn.compute.wait_for_server(server, wait=30, interval=0.2)
        return server

    yield {"boot": boot, "key_file": key_file, "conn": conn, "sg": sg}

    for sid in created["servers"]:
        conn.compute.delete_server(sid, ignore_missing=True)
    end = time.monotonic() + 90  # a slow_boot spawn holds the instance lock
    while any(conn.compute.find_server(sid) for sid in created["servers"]):
        assert time.monotonic() < end, "servers not deleted within 90s"
        time.sleep(0.3)
    conn.network.delete_security_group(sg, ignore_missing=True)
    conn.compute.delete_keypair(unique, ignore_missing=True)
    project = conn.current_project_id
    assert leftovers(admin_conn, project, unique) == []
    assert keypairs_with(conn, unique) == []


def fixed_ip(server):
    return next(a["addr"] for addrs in server.addresses.values() for a in addrs)


def console_keys(conn, server, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = conn.compute.get_server_console_output(server)["output"]
        m = re.search(r"-----BEGIN SSH HOST KEY KEYS-----\n(.*?)-----END SSH HOST KEY KEYS-----",
                      out, re.S)
        if m:
            return out, [" ".join(line.split()[:2]) for line in m.group(1).splitlines()]
        time.sleep(0.3)
    raise AssertionError("no host keys on the console of %s" % server.name)


def banner(ip, timeout=1.0):
    try:
        with socket.create_connection((ip, 22), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4) == b"SSH-"
    except OSError:
        return False


def ssh(ip, key_file, host_keys, user="debian", timeout=20):
    client = paramiko.SSHClient()
    for line in host_keys:
        kt, b64 = line.split()[:2]
        client.get_host_keys().add(ip, kt, paramiko.PKey.from_type_string(
            kt, base64.b64decode(b64)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    end = time.monotonic() + timeout
    while True:
        try:
            client.connect(ip, username=user, key_filename=key_file, timeout=5,
                           allow_agent=False, look_for_keys=False)
            return client
        except (OSError, paramiko.SSHException) as exc:
            if isinstance(exc, (paramiko.AuthenticationException,
                                paramiko.BadHostKeyException)) or time.monotonic() > end:
                raise
            time.sleep(0.3)


def run(client, cmd):
    _, out, err = client.exec_command(cmd)
    code = out.channel.recv_exit_status()
    return code, out.read().decode(), err.read().decode()


def test_server_answers_ssh_with_console_keys_and_stock_python(rig):
    t0 = time.monotonic()
    server = rig["boot"]("a")
    active = time.monotonic() - t0
    assert server.status == "ACTIVE" and active < 15
    ip = fixed_ip(server)
    console, keys = console_keys(rig["conn"], server)
    assert "-----BEGIN SSH HOST KEY FINGERPRINTS-----" in console
    client = ssh(ip, rig["key_file"], keys)
    presented = client.get_transport().get_remote_server_key()
    assert "%s %s" % (presented.get_name(), presented.get_base64()) in keys
    fp = "SHA256:" + base64.b64encode(__import__("hashlib").sha256(
        presented.asbytes()).digest()).decode().rstrip("=")
    assert fp in console
    code, out, _ = run(client, "id -un; hostname; python3 -c 'import numpy, pandas, sys; "
                               "print(sys.executable, numpy.__version__, pandas.__version__)'")
    assert code == 0, out
    user, hostname, py = out.split("\n")[:3]
    assert user == "debian"
    assert hostname == server.name
    assert py.startswith("/usr/bin/python3 1.")
    code, out, _ = run(client, "python3 -c 'import pyarrow'")
    assert code != 0
    client.close()


def _allow_group(conn, sg):
    """Admit all IPv4 traffic from members of the group; return the rule."""
    return conn.network.create_security_group_rule(
        security_group_id=sg.id, direction="ingress", ethertype="IPv4",
        remote_group_id=sg.id)


def _tcp(client, ip, port):
    return run(client, "timeout 3 bash -c 'echo > /dev/tcp/%s/%d'" % (ip, port))[0]


def test_security_groups_are_enforced_between_nodes(rig):
    """The L2 agent's iptables firewall applies each port's groups: a rule
    added or removed through the API opens or closes the path within
    seconds, and a port outside every rule stays closed."""
    conn, sg = rig["conn"], rig["sg"]
    a, b = rig["boot"]("a"), rig["boot"]("b")
    ca = ssh(fixed_ip(a), rig["key_file"], console_keys(conn, a)[1])
    cb = ssh(fixed_ip(b), rig["key_file"], console_keys(conn, b)[1])
    # the group admits SSH from the host alone: node a is refused by b
    assert _tcp(ca, fixed_ip(b), 22) != 0
    rule = _allow_group(conn, sg)
    _until(lambda: _tcp(ca, fixed_ip(b), 22) == 0, "group rule not applied")
    # a listener on b is reachable from a (a group member), not from the host
    assert run(cb, "nohup python3 -c \"import socket; s = socket.create_server(('', 8000)); "
                   "[s.accept() for _ in range(3)]\" >/dev/null 2>&1 & sleep 0.5")[0] == 0
    assert _tcp(ca, fixed_ip(b), 8000) == 0
    with pytest.raises(OSError):
        socket.create_connection((fixed_ip(b), 8000), timeout=2).close()
    conn.network.delete_security_group_rule(rule)
    _until(lambda: _tcp(ca, fixed_ip(b), 8000) != 0, "group rule not withdrawn")
    # the host's own rule still lets it in
    assert banner(fixed_ip(b), timeout=3)
    ca.close()
    cb.close()


def test_nodes_have_private_files_and_no_way_out(rig):
    a, b = rig["boot"]("a"), rig["boot"]("b")
    ca = ssh(fixed_ip(a), rig["key_file"], console_keys(rig["conn"], a)[1])
    cb = ssh(fixed_ip(b), rig["key_file"], console_keys(rig["conn"], b)[1])
    assert run(ca, "echo a > /tmp/only-a && echo a > ~/only-a")[0] == 0
    assert run(cb, "ls /tmp/only-a ~/only-a")[0] != 0
    assert run(ca, "cat /tmp/only-a ~/only-a")[1] == "a\na\n"
    # the default route is router1, in its namespace, not the host
    assert run(ca, "ip -4 route show default")[1].split()[:3] == ["default", "via", "10.42.0.1"]
    # of the host, only the cloud's API ports, on its public address through the
    # router, as VMs reach a real cloud's API: Placement, the database and
    # RabbitMQ stay refused
    for port in (8778, 3306, 5672):
        assert _tcp(ca, HOST, port) != 0, "port %d of the host answered a node" % port
    assert _tcp(ca, HOST, 5000) == 0  # Keystone, for the watchdog
    # ... and nothing beyond it: the host neither forwards nor routes for them
    # (checked on the host, without sending anything off this machine)
    assert open("/proc/sys/net/ipv4/ip_forward").read().strip() == "0"
    rules = subprocess.run(["iptables", "-S", "CC-AIO-FORWARD"], capture_output=True,
                           text=True, check=True).stdout
    assert rules.strip().splitlines()[-1] == "-A CC-AIO-FORWARD -j DROP"
    ca.close()
    cb.close()


def test_nodes_cannot_see_or_signal_each_others_processes(rig):
    conn = rig["conn"]
    a, b = rig["boot"]("pa"), rig["boot"]("pb")
    ca = ssh(fixed_ip(a), rig["key_file"], console_keys(conn, a)[1])
    cb = ssh(fixed_ip(b), rig["key_file"], console_keys(conn, b)[1])
    assert run(ca, "nohup sleep 600 >/dev/null 2>&1 & echo started")[1] == "started\n"
    # the host's pids of node a's processes (its network namespace's)
    host_pids = subprocess.run(["ip", "netns", "pids", "cc-" + a.id], capture_output=True,
                               text=True, check=True).stdout.split()
    assert host_pids
    # node b sees its own processes only: sshd is its PID 1, no sleep of a's
    code, out, _ = run(cb, "cat /proc/1/comm; ps -e -o comm=")
    assert code == 0 and out.split("\n")[0] == "sshd" and "sleep" not in out.split()
    for pid in host_pids:
        code, out, err = run(cb, "kill -0 %s; ls /proc/%s/root" % (pid, pid))
        assert code != 0 and "No such process" in err, (pid, out, err)
    # while node a sees its sleep
    assert "sleep" in run(ca, "ps -e -o comm=")[1].split()
    ca.close()
    cb.close()


def test_user_data_host_keys_are_served(rig):
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH).decode()
    extra = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    import yaml
    ud = "#cloud-config\n" + yaml.safe_dump({
        "ssh_keys": {"ed25519_private": priv, "ed25519_public": pub},
        "ssh_authorized_keys": [extra]})
    server = rig["boot"]("ud", user_data=base64.b64encode(ud.encode()).decode())
    # known before first contact: no console read needed
    client = ssh(fixed_ip(server), rig["key_file"], [pub])
    assert run(client, "true")[0] == 0
    client.close()
    assert console_keys(rig["conn"], server)[1] == [" ".join(pub.split()[:2])]


def test_sshd_starts_after_the_boot_delay(rig):
    server = rig["boot"]("slow-sshd", metadata={"cc_boot_delay": "4"})
    ip = fixed_ip(server)
    assert not banner(ip)
    t0 = time.monotonic()
    while not banner(ip):
        assert time.monotonic() - t0 < 10
        time.sleep(0.2)
    assert time.monotonic() - t0 > 2


def test_fault_spawn_error_goes_error_with_fault(rig):
    server = rig["boot"]("err", wait=False, metadata={"cc_fault": "spawn_error"})
    conn = rig["conn"]
    end = time.monotonic() + 30
    while True:
        s = conn.compute.get_server(server.id)
        if s.status == "ERROR":
            break
        assert s.status == "BUILD" and time.monotonic() < end
        time.sleep(0.3)
    assert "spawn_error" in s.fault["message"]


def test_fault_no_sshd_and_slow_boot(rig):
    nossh = rig["boot"]("nossh", metadata={"cc_fault": "no_sshd", "cc_boot_delay": "0"})
    slow = rig["boot"]("slow", wait=False, metadata={"cc_fault": "slow_boot",
                                                     "cc_slow_boot_seconds": "15"})
    time.sleep(3)
    assert not banner(fixed_ip(nossh))
    assert "not started" in rig["conn"].compute.get_server_console_output(nossh)["output"]
    assert rig["conn"].compute.get_server(slow.id).status == "BUILD"


AIO_LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                       "devstack", "aio", "lib")


def test_neutron_loads_networks_with_selectin_and_ports_with_subquery():
    """cc_neutron_speedup changes exactly the relationships it names."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import cc_neutron_speedup\n"
            "from neutron.db import models_v2\n"
            "from neutron.db.migration.models import head\n"
            "from sqlalchemy.orm import configure_mappers\n"
            "configure_mappers()\n"
            "for m in (models_v2.Network, models_v2.Subnet, models_v2.Port):\n"
            "    for r in m.__mapper__.relationships:\n"
            "        print(m.__name__, r.key, r.lazy)\n" % AIO_LIB)
    out = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    lazy = {tuple(line.split()[:2]): line.split()[2] for line in out.splitlines()}
    for rel in (("Network", "subnets"), ("Network", "segments"), ("Network", "rbac_entries"),
                ("Subnet", "allocation_pools"), ("Subnet", "routes")):
        assert lazy[rel] == "selectin", rel
    for rel in (("Port", "fixed_ips"), ("Port", "allowed_address_pairs"),
                ("Port", "binding_levels")):
        assert lazy[rel] == "subquery", rel
    assert "subquery" not in {v for (cls, _), v in lazy.items() if cls == "Network"}


def test_neutron_network_router_and_port_flows(conn, admin_conn, unique):
    """The flows a cluster and the fault campaign use, on the tuned Neutron."""
    net = conn.network.create_network(name=unique)
    try:
        sub = conn.network.create_subnet(network_id=net.id, cidr="10.42.251.0/24",
                                         ip_version=4, name=unique)
        public = conn.network.find_network("public")
        router = conn.network.create_router(
            name=unique, external_gateway_info={"network_id": public.id})
        conn.network.add_interface_to_router(router, sub.id)
        port = conn.network.create_port(
            network_id=net.id, name=unique,
            allowed_address_pairs=[{"ip_address": "10.42.251.200"}])
        conn.network.set_tags(port, [unique])
        fip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id)

        assert port.allowed_address_pairs[0]["ip_address"] == "10.42.251.200"
        assert conn.network.get_port(port.id).tags == [unique]
        assert conn.network.get_network(net.id).subnet_ids == [sub.id]
        assert fip.port_id == port.id
        gw = conn.network.get_router(router.id).external_gateway_info
        assert gw["network_id"] == public.id and gw["external_fixed_ips"]

        conn.network.delete_ip(fip)
        conn.network.delete_port(port)
        conn.network.remove_interface_from_router(router, sub.id)
        conn.network.delete_router(router)
        conn.network.delete_subnet(sub)
    finally:
        conn.network.delete_network(net, ignore_missing=True)
    assert leftovers(admin_conn, conn.current_project_id, unique) == []


# -- DevStack parity ---------------------------------------------------------
# Written out here rather than read from the rig: DevStack's lib/nova
# create_flavors and lib/tempest (m1.nano, m1.micro), name: (id, vcpus, MiB, GiB).
DEVSTACK_FLAVORS = {
    "m1.nano": ("42", 1, 192, 1), "m1.micro": ("84", 1, 256, 1),
    "cirros256": ("c1", 1, 256, 1), "ds512M": ("d1", 1, 512, 5),
    "ds1G": ("d2", 1, 1024, 10), "ds2G": ("d3", 2, 2048, 10), "ds4G": ("d4", 4, 4096, 20),
    "m1.tiny": ("1", 1, 512, 1), "m1.small": ("2", 1, 2048, 20),
    "m1.medium": ("3", 2, 4096, 40), "m1.large": ("4", 4, 8192, 80),
    "m1.xlarge": ("5", 8, 16384, 160),
}


def test_neutron_agents_report_alive_and_router1_is_hosted(admin_conn):
    """`openstack network agent list`, as an operator would check it."""
    agents = {(a.agent_type, a.host): a for a in admin_conn.network.agents()}
    for kind in ("Linux bridge agent", "L3 agent"):
        agent = agents[(kind, "cc-aio")]
        assert agent.is_alive and agent.is_admin_state_up, kind
    l3 = agents[("L3 agent", "cc-aio")]
    router = admin_conn.network.find_router("router1")
    hosting = [a.id for a in admin_conn.network.routers_hosting_l3_agents(router)]
    assert hosting == [l3.id]
    # router1 is a namespace on this host, holding the private subnet's gateway
    ns = "qrouter-" + router.id
    assert ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout
    addrs = subprocess.run(["ip", "netns", "exec", ns, "ip", "-4", "-o", "addr"],
                           capture_output=True, text=True, check=True).stdout
    assert " 10.42.0.1/24 " in addrs


def test_devstack_flavors_with_devstacks_ids(admin_conn):
    found = {f.name: (f.id, f.vcpus, f.ram, f.disk)
             for f in admin_conn.compute.flavors(is_public=None)}
    assert found == DEVSTACK_FLAVORS
    for name in DEVSTACK_FLAVORS:
        specs = admin_conn.compute.fetch_flavor_extra_specs(
            admin_conn.compute.get_flavor(DEVSTACK_FLAVORS[name][0])).extra_specs
        assert specs == {"hw_rng:allowed": "True"}, name


def test_the_largest_devstack_flavor_schedules(rig):
    """Placement's inventory of the compute host takes m1.xlarge (8 vCPU, 16 GiB)."""
    server = rig["boot"]("xl", flavor_name="m1.xlarge")
    assert server.status == "ACTIVE"
    assert server.flavor.original_name == "m1.xlarge" and server.flavor.vcpus == 8


def _clouds_yaml():
    import yaml
    with open(os.environ["OS_CLIENT_CONFIG_FILE"]) as f:
        return yaml.safe_load(f)["clouds"]


def test_devstack_alt_and_system_admin_clouds(rig, admin_conn):
    import openstack
    clouds = _clouds_yaml()
    # the shape DevStack's tools/update_clouds_yaml.py writes
    assert clouds["devstack-alt"]["auth"]["project_name"] == "alt_demo"
    system = clouds["devstack-system-admin"]["auth"]
    assert system["system_scope"] == "all" and system["username"] == "admin"
    assert "project_name" not in system

    demo_server = rig["boot"]("seen-by-demo-only")
    alt = openstack.connect(cloud="devstack-alt")
    alt_project = admin_conn.identity.find_project("alt_demo", domain_id="default")
    assert alt.current_project_id == alt_project.id != rig["conn"].current_project_id
    roles = {admin_conn.identity.get_role(a.role["id"]).name
             for a in admin_conn.identity.role_assignments(
                 user_id=alt.current_user_id, scope_project_id=alt_project.id)}
    assert roles == {"member"}
    assert demo_server.id not in {s.id for s in alt.compute.servers()}
    with pytest.raises(openstack.exceptions.NotFoundException):
        alt.compute.get_server(demo_server.id)
    # alt_demo gets demo's quotas
    demo_q = admin_conn.get_compute_quotas(rig["conn"].current_project_id)
    alt_q = admin_conn.get_compute_quotas(alt_project.id)
    for key in ("instances", "cores", "ram", "key_pairs"):
        assert alt_q[key] == demo_q[key], key
    assert admin_conn.get_network_quotas(alt_project.id)["port"] == \
        admin_conn.get_network_quotas(rig["conn"].current_project_id)["port"]

    sysadm = openstack.connect(cloud="devstack-system-admin")
    access = sysadm.session.auth.get_access(sysadm.session)
    assert access.system == {"all": True} and access.project_id is None
    assert "alt_demo" in {p.name for p in sysadm.identity.projects()}


def test_server_snapshot_becomes_an_active_image_of_the_nodes_files(rig, tmp_path):
    import tarfile
    conn = rig["conn"]
    server = rig["boot"]("snap")
    client = ssh(fixed_ip(server), rig["key_file"], console_keys(conn, server)[1])
    assert run(client, "echo kept > ~/result.txt && echo scratch > /var/tmp/s")[0] == 0
    client.close()
    name = server.name + "-image"
    try:
        image = conn.compute.create_server_image(server, name, wait=True, timeout=60)
        image = conn.image.get_image(image.id)
        assert image.status == "active" and image.size > 0
        assert image.properties["image_type"] == "snapshot"
        assert image.instance_uuid == server.id
        after = conn.compute.get_server(server.id)
        assert after.status == "ACTIVE" and after.task_state is None
        path = tmp_path / "snap.tar.gz"
        conn.image.download_image(image, output=str(path))
        with tarfile.open(path) as tar:
            assert tar.extractfile("home/result.txt").read() == b"kept\n"
            assert tar.extractfile("var/tmp/s").read() == b"scratch\n"
        conn.image.delete_image(image)
        end = time.monotonic() + 10
        while conn.image.find_image(image.id) is not None:
            assert time.monotonic() < end, "snapshot image not deleted within 10s"
            time.sleep(0.2)
    finally:
        for img in conn.image.images(name=name):
            conn.image.delete_image(img, ignore_missing=True)
    assert list(conn.image.images(name=name)) == []


def _link_local(mac):
    """The EUI-64 link-local address an interface with this MAC would take."""
    b = [int(x, 16) for x in mac.split(":")]
    e = [b[0] ^ 2] + b[1:3] + [0xff, 0xfe] + b[3:]
    return "fe80::" + ":".join("%x" % (e[i] << 8 | e[i + 1]) for i in range(0, 8, 2))


LISTEN6 = ("nohup python3 -c \"import socket; s = socket.socket(socket.AF_INET6); "
           "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::', 2222)); "
           "s.listen(); s.settimeout(20); s.accept()\" >/dev/null 2>&1 & sleep 0.5")
CONNECT6 = ("python3 -c \"import socket, sys; "
            "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\" %s %d")


def test_ipv6_is_no_way_around_the_firewall(rig):
    """No IPv6 between nodes, nor from a node to the host; IPv4 still works."""
    conn = rig["conn"]
    a, b = rig["boot"]("v6a"), rig["boot"]("v6b")
    ca = ssh(fixed_ip(a), rig["key_file"], console_keys(conn, a)[1])
    cb = ssh(fixed_ip(b), rig["key_file"], console_keys(conn, b)[1])
    b_mac = next(iter(conn.network.ports(device_id=b.id))).mac_address
    net = conn.network.find_network(NETWORK)
    bridge = "brq" + net.id[:11]
    _allow_group(conn, rig["sg"])
    # the bridge's link-local address if it has one, else the one it would take
    shown = subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", bridge, "scope", "link"],
                           capture_output=True, text=True, check=True).stdout.split()
    if "inet6" in shown:
        bridge_ll = shown[shown.index("inet6") + 1].split("/")[0]
    else:
        with open("/sys/class/net/%s/address" % bridge) as f:
            bridge_ll = _link_local(f.read().strip())
    # a listener on node b (all its addresses) and one on the host, bound to
    # the nodes' bridge only: over IPv6, node a reaches neither
    assert run(cb, LISTEN6)[0] == 0
    host = socket.socket(socket.AF_INET6)
    host.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bridge.encode())
    host.bind(("::", 0))
    host.listen()
    try:
        code, _, err = run(ca, CONNECT6 % (_link_local(b_mac) + "%eth0", 2222))
        assert code != 0, "node a reached node b over IPv6"
        code, _, err = run(ca, CONNECT6 % (bridge_ll + "%eth0", host.getsockname()[1]))
        assert code != 0, "node a reached the host over IPv6"
    finally:
        host.close()
    # IPv4 between the nodes is untouched
    assert run(ca, "timeout 3 bash -c 'echo > /dev/tcp/%s/22'" % fixed_ip(b))[0] == 0
    # no IPv6 address on either side of any node's link, and the host drops
    # IPv6 that comes in from the nodes' bridges
    for client in (ca, cb):
        assert run(client, "ip -6 -o addr show dev eth0")[1] == ""
    ports = ["tap" + p.id[:11] for s in (a, b) for p in conn.network.ports(device_id=s.id)]
    assert len(ports) == 2
    for dev in [bridge] + ports:
        assert subprocess.run(["ip", "-6", "-o", "addr", "show", "dev", dev], capture_output=True,
                              text=True, check=True).stdout == "", dev
        with open("/proc/sys/net/ipv6/conf/%s/disable_ipv6" % dev) as f:
            assert f.read().strip() == "1", dev
    rules = subprocess.run(["ip6tables", "-S"], capture_output=True, text=True,
                           check=True).stdout
    for chain in ("INPUT", "FORWARD"):
        for dev in ("brq+", "br-ex"):
            assert "-A %s -i %s -j CC-AIO-DROP6" % (chain, dev) in rules
    assert "-A CC-AIO-DROP6 -j DROP" in rules
    ca.close()
    cb.close()


def _status(conn, server, want, timeout=60):
    end = time.monotonic() + timeout
    while True:
        s = conn.compute.get_server(server.id)
        if s.status == want and s.task_state is None:
            return s
        assert s.status != "ERROR" and time.monotonic() < end, (s.status, s.task_state,
                                                                s.fault)
        time.sleep(0.3)


def _until(check, what, timeout=30):
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.3)


def test_server_actions_stop_start_reboot_resize_rebuild(rig):
    """What a VM workflow does to a server: each action ends in the state a
    VM would be in, and sshd answers (with the node's own host keys) exactly
    when the server is ACTIVE; the node's files survive all but the rebuild."""
    conn = rig["conn"]
    server = rig["boot"]("act")
    ip = fixed_ip(server)
    keys = console_keys(conn, server)[1]
    client = ssh(ip, rig["key_file"], keys)
    assert run(client, "echo kept > ~/f")[0] == 0
    client.close()

    conn.compute.stop_server(server)
    _status(conn, server, "SHUTOFF")
    assert not banner(ip)  # powered off: nothing answers
    conn.compute.start_server(server)
    _status(conn, server, "ACTIVE")
    client = ssh(ip, rig["key_file"], keys)  # same host keys
    assert run(client, "cat ~/f")[1] == "kept\n"
    client.close()

    for kind in ("SOFT", "HARD"):
        before = conn.compute.get_server_console_output(server)["output"].count(
            "cc-netns boot:")
        conn.compute.reboot_server(server, kind)
        _status(conn, server, "ACTIVE")
        _until(lambda before=before: conn.compute.get_server_console_output(server)[
            "output"].count("cc-netns boot:") > before,
            "no new boot on the console after a %s reboot" % kind)
        client = ssh(ip, rig["key_file"], keys)
        assert run(client, "cat ~/f")[1] == "kept\n"
        client.close()

    conn.compute.resize_server(server, conn.compute.find_flavor("m1.small").id)
    _status(conn, server, "VERIFY_RESIZE")
    conn.compute.confirm_server_resize(server)
    after = _status(conn, server, "ACTIVE")
    assert after.flavor["original_name"] == "m1.small"
    client = ssh(ip, rig["key_file"], keys)
    assert run(client, "cat ~/f")[1] == "kept\n"
    client.close()

    conn.compute.rebuild_server(server, image=server.image.id)
    _status(conn, server, "ACTIVE")
    rebuilt = console_keys(conn, server)[1]  # a new disk: new host keys
    client = ssh(ip, rig["key_file"], rebuilt)
    assert run(client, "test -e ~/f || echo gone")[1] == "gone\n"
    client.close()


@pytest.mark.parametrize("port", [9696, 8774])
def test_idle_keep_alive_connections_do_not_starve_the_api(conn, port):
    """Each open connection holds one of an eventlet API server's green threads
    until it closes or times out; 150 idle ones (more than neutron-server's
    default pool of 100) must not keep a new request waiting."""
    idle = []
    try:
        for _ in range(150):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
        assert head.startswith(b"HTTP/1.1 "), head
        assert time.monotonic() - t0 < 5
    finally:
        for s in idle:
            s.close()
