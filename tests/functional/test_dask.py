"""Dask on the local cloud: the example against pandas, submit/gather, the dashboard
over the SSH forward, the CLI, the security group, and the fault cases (a worker
node's processes killed, the scheduler's server deleted, a wrong Dask on the
nodes, SIGINT during start-up), each followed by an independent admin listing."""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import dask
import distributed
import numpy as np
import pandas as pd
import pytest

from cloudcompute import Cluster, ClusterSpec
from cloudcompute.cluster import Teardown
from cloudcompute.daskcluster import DaskStartError, remote
from cloudcompute.exceptions import EnvironmentMismatch, NodeLost
from tests.functional.conftest import CLOUD, leftovers, shared_cluster, sigint_default

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLE = os.path.join(ROOT, "examples", "dask_dataframe.py")
# Top-level names, as the scheduler and workers import them after upload_file.
sys.path[:0] = [HERE, os.path.dirname(EXAMPLE)]
import daskfuncs  # noqa: E402
import dask_dataframe as example  # noqa: E402
from daskfuncs import slow_square, square  # noqa: E402

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def uploaded(client):
    """The client, with this test's modules on the scheduler and every worker."""
    client.upload_file(daskfuncs.__file__)
    client.upload_file(EXAMPLE)
    return client


def dask_processes(server_id):
    """Pids in the node's network namespace that carry the Dask launch's mark."""
    out = subprocess.run(["ip", "netns", "pids", "cc-" + server_id], capture_output=True,
                         text=True).stdout.split()
    found = []
    for pid in out:
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(remote.ENV_MARK.encode() + b"=") for e in env):
            found.append(int(pid))
    return found


def http_get(url):
    with NO_PROXY.open(url, timeout=30) as r:
        return r.status, r.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with shared_cluster(tmp_path_factory, "dask", 3, flavor="m1.small") as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    return uploaded(cluster.dask())


def test_one_worker_per_node_with_the_flavors_slots_and_memory(cluster, client):
    assert cluster.dask() is client  # a second call: the same Client
    assert client.scheduler.address == client.cloudcompute.scheduler_address
    assert client.scheduler.address.startswith("tcp://127.0.0.1:")
    first = cluster.nodes[0]
    assert client.cloudcompute.remote_scheduler == "tcp://%s:8786" % first.fixed_ip
    workers = {w["name"]: w for w in client.scheduler_info(n_workers=-1)["workers"].values()}
    assert set(workers) == set(cluster.node_names())
    for n in cluster.nodes:
        w = workers[n.name]
        assert w["nthreads"] == n.slots == 1  # m1.small; Dask's own default would be 2 here
        assert w["memory_limit"] == remote.memory_limit(n.ram_mb, n is first)
        assert w["host"] == n.fixed_ip  # bound to the private address
    hosts = client.run(daskfuncs.hostname)
    assert len(set(hosts.values())) == 3
    versions = client.get_versions(check=False)
    for side in [versions["scheduler"]] + list(versions["workers"].values()):
        for pkg in ("dask", "distributed", "cloudpickle", "msgpack"):
            assert side["packages"][pkg] == versions["client"]["packages"][pkg]


def test_the_example_equals_the_pandas_reference(client):
    result = example.run(client, partitions=6, rows=50_000, sample=(0, 5))
    expected = example.reference(range(6), 50_000)
    pd.testing.assert_frame_equal(result["per_store"], expected["per_store"])
    pd.testing.assert_frame_equal(result["per_region"], expected["per_region"])
    assert result["per_store"]["count"].sum() == 300_000
    assert set(result["timings"]) == {"generate on the nodes", "groupby-aggregate",
                                      "join + groupby", "check against pandas"}


def test_submit_gather_and_scatter_round_trip(client):
    futures = client.map(square, range(20))
    assert client.gather(futures) == [x * x for x in range(20)]
    assert client.submit(lambda a, b: a - b, 10, 4).result() == 6  # a lambda, by value
    big = np.arange(2_000_000, dtype="float64")
    remote_big = client.scatter(big)
    assert client.submit(np.sum, remote_big).result() == big.sum()
    frame = pd.DataFrame({"k": list("abcab"), "v": range(5)})
    out = client.submit(lambda f: f.groupby("k").v.sum(), frame).result()
    pd.testing.assert_series_equal(out, frame.groupby("k").v.sum())


def test_the_dashboard_answers_over_the_forward(client):
    url = client.dashboard_link
    assert url.startswith("http://127.0.0.1:") and url.endswith("/status")
    assert url == client.cloudcompute.dashboard_url
    status, body = http_get(url)
    assert status == 200 and "Dask" in body
    base = url.rsplit("/", 1)[0]
    assert http_get(base + "/health") == (200, "ok")
    status, body = http_get(base + "/info/main/workers.html")
    assert status == 200 and all(n.fixed_ip in body for n in client.cloudcompute.cluster.nodes)


def test_security_group_admits_no_port_but_ssh_from_outside(cluster, client, conn, fault):
    fault("cluster security group rules listed through the API with Dask running",
          "security", "ingress from outside the cluster's own group: TCP 22 only")
    (sg,) = cluster.state.ids("security_groups")
    rules = list(conn.network.security_group_rules(security_group_id=sg))
    ingress = [r for r in rules if r.direction == "ingress"]
    internal = [r for r in ingress if r.remote_group_id == sg]
    outside = [r for r in ingress if r.remote_group_id != sg]
    assert internal and outside
    for r in outside:
        assert (r.protocol, r.port_range_min, r.port_range_max) == ("tcp", 22, 22), r
        assert r.remote_ip_prefix and not r.remote_ip_prefix.endswith("/0"), r
    fault.observed = "%d rules from outside, all TCP 22 from %s; %d within the group" % (
        len(outside), sorted({r.remote_ip_prefix for r in outside}), len(internal))


def _read_json_document(stream, timeout=180):
    """Lines up to a closing brace at column 0 (the CLI's indented JSON)."""
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    text, line, deadline = "", "", time.monotonic() + timeout
    while line != "}\n":
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        text += line
    return json.loads(text)


def test_cli_finds_dask_running_and_holds_its_own_forwards(cluster, client):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudcompute.cli", "--os-cloud", CLOUD, "-f", "json", "dask",
         cluster.name], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        preexec_fn=sigint_default)
    try:
        doc = _read_json_document(proc.stdout)
        assert doc["reused"] is True and doc["name"] == cluster.name
        assert doc["remote_scheduler"] == client.cloudcompute.remote_scheduler
        assert doc["scheduler"].startswith("tcp://127.0.0.1:")
        assert doc["scheduler"] != client.scheduler.address  # the CLI's own forward
        assert set(doc["workers"]) == set(cluster.node_names())
        with distributed.Client(doc["scheduler"], timeout=30, set_as_default=False) as other:
            assert other.submit(square, 7).result() == 49
        assert http_get(doc["dashboard"].rsplit("/", 1)[0] + "/health") == (200, "ok")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # Ctrl-C closed the CLI's forwards only: the processes and this client go on
    assert client.submit(square, 3).result() == 9


def test_a_worker_nodes_dask_killed_mid_computation_finishes_on_the_others(
        cluster, client, fault):
    fault("SIGKILL to a worker node's Dask processes (nanny and worker) during 40 tasks",
          "ssh", "every result, computed by the two other workers")
    victim = cluster.nodes[2]
    futures = client.map(slow_square, range(40), pure=False)
    time.sleep(1.5)
    killed = dask_processes(victim.server_id)
    assert len(killed) >= 2
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    assert client.gather(futures) == [x * x for x in range(40)]
    names = {w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values()}
    assert victim.name not in names and len(names) == 2
    fault.observed = "killed %d processes on %s; all 40 results %.1fs later from %s" % (
        len(killed), victim.name, time.monotonic() - t0, sorted(names))


def test_down_stops_dask_before_deleting_servers_and_leaves_nothing(
        cluster, client, conn, admin_conn, monkeypatch):
    servers = {n.name: n.server_id for n in cluster.nodes}
    before = {name: dask_processes(sid) for name, sid in servers.items()}
    assert before[cluster.nodes[0].name] and before[cluster.nodes[1].name]
    at_teardown = {}
    real = Teardown.run

    def spy(self):
        at_teardown.update({name: dask_processes(sid) for name, sid in servers.items()})
        return real(self)
    monkeypatch.setattr(Teardown, "run", spy)
    cid = cluster.state.cluster_id
    cluster.down()
    assert at_teardown == {name: [] for name in servers}  # stopped while the nodes ran
    assert not any(os.path.exists("/proc/%d" % p) for pids in before.values() for p in pids)
    assert client.status == "closed"
    assert leftovers(admin_conn, conn.current_project_id, cid) == []


# -- fault cases on clusters of their own ------------------------------------------
def test_a_node_environment_with_another_dask_is_refused_before_start(
        conn, fault, unique, state_dir):
    fault("node environment with dask and distributed 2024.12.1, dask(prepare=False)",
          "input", "EnvironmentMismatch naming both versions; no Dask process started")
    with Cluster(ClusterSpec(name=unique, nodes=1), cloud=CLOUD) as c:
        c.prepare(["dask==2024.12.1", "distributed==2024.12.1"])
        with fault.raises(EnvironmentMismatch, match="dask: client %s, node 2024.12.1"
                          % dask.__version__) as err:
            c.dask(prepare=False)
        assert "distributed: client %s, node 2024.12.1" % distributed.__version__ \
            in err.value.problems
        assert dask_processes(c.nodes[0].server_id) == []
        assert c.state.record.dask is None
        out = c.connection(c.node_names()[0]).run(["ls", "-A", ".cloudcompute"]).stdout
        assert "dask" not in out.split()  # not even its directory: nothing was started


def test_a_scheduler_that_dies_at_start_fails_fast_with_its_log(conn, fault, unique, state_dir):
    fault("dask(scheduler_port=22): a privileged port (and sshd's) on the node", "input",
          "DaskStartError at once with the scheduler log's tail; no Dask process, no record")
    with Cluster(ClusterSpec(name=unique, nodes=1, flavor="m1.small"), cloud=CLOUD) as c:
        with pytest.raises(DaskStartError):  # builds the environment; the retry is timed
            c.dask(scheduler_port=22, timeout=60)
        t0 = time.monotonic()
        with fault.raises(DaskStartError, match="died while starting") as err:
            c.dask(scheduler_port=22, timeout=60)
        took = time.monotonic() - t0
        assert err.value.role == "scheduler" and err.value.node == c.node_names()[0]
        assert "PermissionError: [Errno 13] Permission denied" in err.value.log
        assert "PermissionError" in str(err.value)  # the log's tail is in the message
        assert took < 10
        assert dask_processes(c.nodes[0].server_id) == []
        assert c.state.record.dask is None
        fault.observed += " (after %.1fs)" % took


def test_the_scheduler_servers_deletion_is_a_clear_error_and_down_leaves_nothing(
        conn, fault, unique, state_dir):
    fault("the scheduler's server deleted through the API during client.map(20)", "ssh",
          "NodeLost naming the scheduler's node from gather; down() leaves nothing")
    with Cluster(ClusterSpec(name=unique, nodes=2, flavor="m1.small"), cloud=CLOUD) as c:
        client = uploaded(c.dask())
        futures = client.map(slow_square, range(20), pure=False)
        time.sleep(1.0)
        conn.compute.delete_server(c.nodes[0].server_id)
        t0 = time.monotonic()
        with fault.raises(NodeLost, match=c.nodes[0].name) as err:
            client.gather(futures)
        assert "scheduler" in str(err.value)
        fault.observed += " (after %.1fs)" % (time.monotonic() - t0)
        t0 = time.monotonic()
    fault.observed += "; down() took %.1fs" % (time.monotonic() - t0)


INTERRUPTED = """
import json, logging, sys
from cloudcompute import Cluster, ClusterSpec
from cloudcompute.cluster import Teardown
from tests.functional.test_dask import dask_processes
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
logging.getLogger("cloudcompute.dask").setLevel(logging.INFO)
servers = []
real = Teardown.run


def spy(self):
    print("at teardown " + json.dumps([p for s in servers for p in dask_processes(s)]),
          flush=True)
    return real(self)


Teardown.run = spy
with Cluster(ClusterSpec(name=sys.argv[1], nodes=1), cloud=sys.argv[2]) as c:
    servers.extend(n.server_id for n in c.nodes)
    c.dask()
    print("started", flush=True)
"""


def test_sigint_during_dask_start_up_leaves_nothing(conn, admin_conn, fault, unique, state_dir):
    fault("SIGINT while dask() waits for the scheduler it started", "process",
          "exit within 30 s; no Dask process when teardown starts; no cloud resource left")
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, unique, CLOUD],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=sigint_default)
    err_lines = queue.Queue()
    threading.Thread(target=lambda: [err_lines.put(x) for x in proc.stderr],
                     daemon=True).start()
    try:
        deadline = time.monotonic() + 600  # the first prepare ships the environment
        while "starting the Dask scheduler" not in err_lines.get(
                timeout=max(0.1, deadline - time.monotonic())):
            pass
        time.sleep(0.5)  # the scheduler is launched; dask() waits for it
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "started" not in out
    at_teardown = json.loads(out.split("at teardown ", 1)[1].splitlines()[0])
    left = leftovers(admin_conn, conn.current_project_id, unique)
    fault.observed = "exit %s after %.1fs; Dask processes at teardown: %s; left: %s" % (
        proc.returncode, took, at_teardown, left)
    assert at_teardown == [] and not left and took < 30 and proc.returncode != 0

