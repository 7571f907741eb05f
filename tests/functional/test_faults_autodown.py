"""Fault campaign cases of the watchdog (cloudcompute.autodown).

A fault proxy inside the first node's network namespace stands between the
watchdog and the cloud's API; a node deleted under the watchdog; a network
the watchdog cannot delete. Each case ends with the ``fault`` fixture's
admin listing: nothing of the cluster is left.
"""
import json
import os
import signal
import subprocess
import sys
import time

from cloudcompute import Cluster, ClusterSpec, gc
from tests.functional.conftest import CLOUD
from tests.functional.test_autodown import (client_up, holdings, recorded_servers,
                                             wait_gone)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_PORTS = ("5000", "8774", "9696")


# Where the local cloud answers its nodes' API calls: the host's public
# address, which a node reaches through its router (clouds.yaml node_api_host).
RIG_API_HOST = "172.24.4.1"


def test_watchdog_retries_503s_and_still_deletes_everything(fault, conn, admin_conn, unique,
                                                            state_dir, tmp_path):
    fault("watchdog's API calls answered 503 (every second one)", "autodown",
          "the watchdog retries each call and deletes the whole cluster at its deadline")
    c = Cluster(ClusterSpec(name=unique, nodes=2, ttl_hours=40 / 3600.0,
                            node_api_host="127.0.0.1"), cloud=CLOUD).up()
    servers = [n.server_id for n in c.nodes]
    c.close_connections()
    log = tmp_path / "faults.jsonl"
    proxy = subprocess.Popen(
        ["ip", "netns", "exec", "cc-" + servers[0], sys.executable, "-m",
         "tests.functional.nodeproxy", RIG_API_HOST, str(log), *API_PORTS, "--",
         json.dumps({"action": "status", "status": 503, "every": 2})], cwd=ROOT)
    try:
        wait_gone(admin_conn, conn, unique, servers, within=180, credential_left=True)
    finally:
        proxy.kill()  # gone with its namespace already, as a rule
        proxy.wait()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    failed = [c for c in calls if c[3] == "503"]
    deletes = [c for c in failed if c[0] == "DELETE"]
    assert failed and deletes, calls
    fault.observed = ("%d of %d calls answered 503 (%d deletes); all of it deleted but the "
                      "credential, which down() deletes" % (len(failed), len(calls),
                                                            len(deletes)))
    c.down()  # the credential and the state file are left
    assert holdings(admin_conn, conn, unique, servers) == []


def test_a_watchdog_node_deleted_first_leaves_the_rest_to_gc(fault, conn, admin_conn, unique,
                                                             state_dir):
    fault("the watchdog's node deleted under it; client SIGKILLed", "autodown",
          "gc finds the rest by its tags and name and deletes it, credential included")
    proc, out = client_up(unique, 2, 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    servers = recorded_servers(state_dir, unique)
    conn.compute.delete_server(servers[0])
    conn.compute.wait_for_delete(conn.compute.get_server(servers[0]), wait=60)
    left = holdings(admin_conn, conn, unique)
    assert any(x.startswith("application credential") for x in left), left
    assert any(x.startswith("server") for x in left), left
    found = [o.found for o in gc.collect(conn, dry_run=True, state_dir=state_dir)
             if o.found.name == unique]
    assert found and "owner process" in (found[0].reason or ""), found
    assert any(r.startswith("application credential") for r in found[0].resources)
    done = [o for o in gc.collect(conn, dry_run=False, state_dir=state_dir)
            if o.found.name == unique]
    assert done and done[0].deleted, done
    assert holdings(admin_conn, conn, unique, servers) == []
    fault.observed = "gc found %d resources and deleted them" % len(found[0].resources)


def test_a_network_the_watchdog_cannot_delete_is_tagged_and_gc_takes_it(
        fault, conn, admin_conn, unique, state_dir):
    fault("cluster on its own network ends itself", "autodown",
          "watchdog deletes servers, SG, keypair; network, subnet, router are tagged "
          "cc-ended and gc deletes them and the credential at once")
    c = Cluster(ClusterSpec(name=unique, nodes=1, create_network=True, network=None,
                            ttl_hours=30 / 3600.0), cloud=CLOUD).up()
    servers = [n.server_id for n in c.nodes]
    c.close_connections()
    end = time.monotonic() + 150  # gc, below, also removes the state file
    while True:
        left = holdings(admin_conn, conn, unique, servers)
        kinds = sorted({x.split()[0] for x in left})
        if kinds == ["application", "network", "router", "subnet"]:
            break
        assert time.monotonic() < end, left
        time.sleep(3)
    tagged = [n for n in conn.network.networks(tags="cc-ended") if unique in n.name]
    assert tagged
    found = [o for o in gc.collect(conn, dry_run=False) if o.found.name == unique]
    assert found and found[0].found.reason == "ended by its watchdog" and found[0].deleted
    assert holdings(admin_conn, conn, unique, servers) == []
    fault.observed = "watchdog left %s (tagged); gc: %s" % (", ".join(kinds),
                                                            found[0].found.reason)
