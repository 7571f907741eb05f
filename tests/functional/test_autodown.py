"""Clusters that end themselves: the watchdog on the first node, on the real cloud.

Every check of "gone" is an independent admin listing: servers, their ports,
floating IPs, security groups, networks, the keypair and the application
credential. No test here runs gc unless it says so.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request

import pytest

from cloudcompute import Cluster, ClusterSpec, gc
from tests.functional import jobfuncs
from tests.functional.conftest import CLOUD, keypairs_with, leftovers

KEYSTONE = "http://127.0.0.1:5000/v3"
CHILD = textwrap.dedent("""
    import logging, sys, time
    logging.basicConfig(level=logging.INFO)
    from cloudcompute import Cluster, ClusterSpec
    c = Cluster(ClusterSpec(name=sys.argv[1], nodes=int(sys.argv[3]),
                            idle_minutes=float(sys.argv[4])), cloud=sys.argv[2]).up()
    print("UP", c.state.cluster_id, flush=True)
    time.sleep(600)
""")


@pytest.fixture(autouse=True, scope="module")
def _quick_watchdog():
    """The watchdogs of this module's clusters look every 3 s (production: 15 s),
    so that a deadline or an idle limit of seconds is kept to within seconds."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOUDCOMPUTE_WATCHDOG_POLL", "3")
        yield


def holdings(admin, conn, unique, server_ids=()):
    """What the cloud still holds of clusters named with ``unique``."""
    left = leftovers(admin, conn.current_project_id, unique)
    left += ["keypair " + k for k in keypairs_with(conn, unique)]
    for sid in server_ids:
        left += ["port %s of %s" % (p.id, sid) for p in admin.network.ports(device_id=sid)]
    left += ["application credential " + c.name for c in
             admin.identity.application_credentials(user=conn.current_user_id)
             if unique in c.name]
    return left


def wait_gone(admin, conn, unique, server_ids, within, credential_left=False):
    """Seconds until the cloud holds nothing of the clusters (with
    ``credential_left``: nothing but their application credentials, which a
    watchdog cannot delete)."""
    end = time.monotonic() + within
    while True:
        left = [x for x in holdings(admin, conn, unique, server_ids)
                if not (credential_left and x.startswith("application credential"))]
        if not left:
            return time.monotonic() - (end - within)
        assert time.monotonic() < end, "still there after %ds: %s" % (within, left)
        time.sleep(5)


def recorded_servers(state_dir, name):
    with open(os.path.join(state_dir, name + ".json")) as f:
        return [e["id"] for e in json.load(f)["resources"]["servers"].values()]


def client_up(name, nodes, idle_minutes):
    """A client process that brings the cluster up and waits; (process, its output
    up to its "UP" line)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, name, CLOUD, str(nodes),
                             str(idle_minutes)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("UP "):
            break
    return proc, out


def test_idle_cluster_of_a_killed_client_ends_itself(conn, admin_conn, unique, state_dir):
    proc, out = client_up(unique, 2, 0.5)
    assert proc.poll() is None, "".join(out)
    servers = recorded_servers(state_dir, unique)
    assert len(servers) == 2
    assert holdings(admin_conn, conn, unique)  # up, with its credential
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    took = wait_gone(admin_conn, conn, unique, servers, within=180, credential_left=True)
    assert took > 25  # the idle rule (30 s), not something sooner
    # what is left is the credential, which the watchdog cannot delete; gc does
    found = [o for o in gc.collect(conn, dry_run=False, state_dir=state_dir)
             if o.found.name == unique]
    assert found[0].found.reason == "ended by its watchdog" and found[0].deleted, found
    assert holdings(admin_conn, conn, unique, servers) == []


def test_deadline_is_kept_and_extend_moves_it(conn, admin_conn, unique, state_dir):
    c = Cluster(ClusterSpec(name=unique, nodes=1, ttl_hours=20 / 3600.0), cloud=CLOUD).up()
    servers = [n.server_id for n in c.nodes]
    first = c.state.record.expires_at
    new = c.extend(hours=20 / 3600.0)
    assert abs(new - (first + 20)) < 1
    meta = conn.compute.get_server_metadata(servers[0]).metadata
    assert int(meta["cc_expires"]) == int(new)
    time.sleep(max(0.0, first + 8 - time.time()))  # past the old deadline and a poll
    assert holdings(admin_conn, conn, unique, servers), "deleted at the old deadline"
    c.close_connections()
    wait_gone(admin_conn, conn, unique, servers, within=new + 45 - time.time(),
              credential_left=True)
    assert time.time() >= new
    c.down()  # the credential and the record are all that is left
    assert holdings(admin_conn, conn, unique, servers) == []


def test_a_running_task_keeps_an_idle_cluster(conn, admin_conn, unique, state_dir):
    c = Cluster(ClusterSpec(name=unique, nodes=1, idle_minutes=0.25), cloud=CLOUD).up()
    servers = [n.server_id for n in c.nodes]
    try:
        done = []
        t = threading.Thread(target=lambda: done.append(c.run(jobfuncs.span, 40)))
        t.start()
        t.join(timeout=90)
        assert done, "the task did not finish"
        assert holdings(admin_conn, conn, unique, servers), "deleted while busy"
        c.close_connections()
        wait_gone(admin_conn, conn, unique, servers, within=60, credential_left=True)
    finally:
        c.down()
    assert holdings(admin_conn, conn, unique, servers) == []


def _token(cred):
    """A token of the application credential, or the status Keystone refused it with."""
    body = {"auth": {"identity": {"methods": ["application_credential"],
                                  "application_credential": cred}}}
    req = urllib.request.Request(KEYSTONE + "/auth/tokens", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.headers["X-Subject-Token"]
    except urllib.error.HTTPError as exc:
        return exc.code


def _status(token, method, url):
    req = urllib.request.Request(url, method=method, headers={"X-Auth-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_credential_reaches_its_own_cluster_only_and_goes_with_it(
        conn, admin_conn, unique, state_dir, caplog):
    caplog.set_level(logging.DEBUG)
    a = Cluster(ClusterSpec(name=unique + "a", nodes=1), cloud=CLOUD).up()
    b = Cluster(ClusterSpec(name=unique + "b", nodes=1, autodown=False), cloud=CLOUD).up()
    try:
        node = a.connection(a.nodes[0].name)
        cred = json.loads(node.run(["cat", ".cloudcompute/autodown/credential.json"]).stdout)
        assert node.run(["stat", "-c", "%a", ".cloudcompute/autodown/credential.json"]
                        ).stdout.strip() == "600"
        token = _token(cred)
        assert isinstance(token, str)
        nova, neutron = conn.endpoint_for("compute"), conn.endpoint_for("network") + "/v2.0"
        assert _status(token, "GET", "%s/servers/%s" % (nova, a.nodes[0].server_id)) == 200
        (b_sg,) = b.state.ids("security_groups")
        public = admin_conn.network.find_network("public")
        router = admin_conn.network.find_router("router1")
        refused = {}
        for method, url in [
                ("GET", "%s/servers/%s" % (nova, b.nodes[0].server_id)),  # another cluster
                ("DELETE", "%s/servers/%s" % (nova, b.nodes[0].server_id)),
                ("GET", nova + "/servers/detail"), ("GET", nova + "/servers"),  # listing
                ("DELETE", "%s/security-groups/%s" % (neutron, b_sg)),
                ("GET", neutron + "/security-groups"),
                ("GET", "%s/networks/%s" % (neutron, public.id)),  # another project
                ("DELETE", "%s/routers/%s" % (neutron, router.id))]:
            refused[method + " " + url] = _status(token, method, url)
        assert all(code in (401, 403, 404) for code in refused.values()), refused
        # Keystone: it can make no credential, and cannot even delete itself
        creds = "%s/users/%s/application_credentials" % (KEYSTONE, conn.current_user_id)
        assert _status(token, "DELETE", "%s/%s" % (creds, cred["id"])) == 403
        req = urllib.request.Request(creds, json.dumps({"application_credential": {
            "name": unique + "child"}}).encode(), {"X-Auth-Token": token,
                                                   "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(req, timeout=30)
        assert denied.value.code == 403
        assert conn.compute.get_server(b.nodes[0].server_id).status == "ACTIVE"
        state_text = open(os.path.join(state_dir, unique + "a.json")).read()
        node_log = node.run(["cat", ".cloudcompute/autodown/watchdog.log",
                             ".cloudcompute/autodown/status.json"]).stdout
    finally:
        a.down()
        b.down()
    assert _token(cred) in (401, 404)  # deleted with its cluster: unknown to Keystone
    assert cred["id"] in state_text  # the state records the id ...
    for where, text in (("state", state_text), ("node log", node_log),
                        ("client log", caplog.text)):
        assert cred["secret"] not in text, where  # ... and never the secret
    assert holdings(admin_conn, conn, unique) == []


PROBE = textwrap.dedent("""
    import socket, sys
    gw = sys.argv[1]
    for port in map(int, sys.argv[2:]):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((gw, port))
            print(port, "open")
        except OSError as exc:
            print(port, type(exc).__name__)
        finally:
            s.close()
""")


def test_nodes_reach_the_api_ports_of_their_api_host_and_nothing_else(unique, state_dir):
    with Cluster(ClusterSpec(name=unique, nodes=1, autodown=False), cloud=CLOUD) as c:
        # the rig's clouds.yaml names the host's public address (through router1)
        api_host = c.spec.node_api_host
        assert api_host == "172.24.4.1"
        out = c.connection(c.nodes[0].name).run(
            ["python3", "-c", PROBE, api_host, "5000", "8774", "9696", "9292", "8778", "3306",
             "5672", "22", "25672"]).stdout
    got = dict(line.split() for line in out.splitlines())
    assert {p: got[p] for p in ("5000", "8774", "9696", "9292")} == dict.fromkeys(
        ("5000", "8774", "9696", "9292"), "open")
    assert all(got[p] != "open" for p in ("8778", "3306", "5672", "22", "25672")), got


def test_cli_extend_moves_the_deadline_in_the_servers_metadata(conn, unique, state_dir):
    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "cloudcompute.cli", "--os-cloud", CLOUD,
                              "-f", "json", *args], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    cli("up", unique, "--nodes", "1", "--idle-minutes", "30")
    try:
        server = next(s for s in conn.compute.servers() if unique in s.name)
        before = int(conn.compute.get_server_metadata(server).metadata["cc_expires"])
        got = cli("extend", unique, "--hours", "2")
        after = int(conn.compute.get_server_metadata(server).metadata["cc_expires"])
        # the state's deadline, which extend starts from, was taken a moment
        # before the servers' own (set as each was created)
        assert before + 7198 <= after <= before + 7200
        assert got["deadline"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(after))
    finally:
        cli("down", unique)
