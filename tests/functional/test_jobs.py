"""Jobs on a real cluster of the local cloud: results, integrity, failures."""
import glob
import hashlib
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import pytest

from cloudcompute import Cluster, ClusterSpec
from cloudcompute.exceptions import (HostKeyMismatch, MapError, RemoteTaskError,
                                     SerializationError, TaskKilled)
from tests.functional import jobfuncs as jf
from tests.functional.conftest import CLOUD, keypairs_with, leftovers, shared_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with shared_cluster(tmp_path_factory, "jobs", 3) as c:
        yield c


def test_monte_carlo_pi_on_three_nodes(cluster):
    hits = cluster.map(jf.pi_hits, range(12))
    pi = 4 * sum(hits) / (12 * 500_000)
    assert abs(pi - np.pi) < 0.01
    # deterministic per seed: same as computing it here
    assert hits[5] == jf.pi_hits(5)


def test_pandas_groupby_over_partitions_equals_local(cluster):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"key": rng.integers(0, 50, 200_000),
                       "value": rng.integers(0, 1000, 200_000)})
    parts = cluster.map_partitions(jf.group_sums, df, partitions=6)
    combined = parts.groupby(level=0).sum()
    expected = jf.group_sums(df)
    pd.testing.assert_frame_equal(combined.sort_index(), expected.sort_index(),
                                  check_dtype=False)


def test_200mib_round_trip_keeps_every_byte(cluster):
    a = np.random.default_rng(1).random(200 * 1024 * 1024 // 8)
    back = cluster.run(jf.echo, a)
    assert hashlib.sha256(back.tobytes()).hexdigest() == hashlib.sha256(a.tobytes()).hexdigest()
    assert cluster.run(jf.checksum, a[:1000]) == jf.checksum(a[:1000])


def test_remote_exception_carries_node_and_traceback(cluster, fault):
    fault("remote task raises KeyError during map", "ssh",
          "MapError holding each item's RemoteTaskError with node, task and remote traceback")
    with fault.raises(MapError) as err:
        cluster.map(jf.fails, [1, 2])
    assert set(err.value.errors) | set(err.value.pending) == {0, 1}
    e = next(iter(err.value.errors.values()))
    assert isinstance(e, RemoteTaskError)
    assert e.exc_type == "KeyError" and e.node in cluster.node_names()
    assert "jobfuncs.py" in e.traceback and "missing-" in e.traceback


def test_oom_kill_is_reported_as_such(cluster, fault):
    fault("remote task killed by SIGKILL as the OOM killer does", "ssh",
          "TaskKilled, signal 9, 'out of memory?'; worker survives")
    node = cluster.node_names()[0]
    # the OOM killer's signal, sent by the task to itself (a real OOM on the
    # shared rig host would hit other processes too)
    with fault.raises(TaskKilled) as err:
        cluster.run(jf.kill_self, node=node)
    assert err.value.signal == 9 and "out of memory" in str(err.value)
    # the worker survives a killed task
    assert cluster.run(jf.echo, 7, node=node) == 7


def test_unsendable_work_is_refused_before_sending(cluster):
    with pytest.raises(SerializationError, match="allow_pickle=True"):
        cluster.map(lambda x: x, [1])
    with pytest.raises(SerializationError, match="cannot be sent safely"):
        cluster.run(jf.echo, {1, 2})


def test_stock_node_versions_differ_from_the_client(cluster):
    remote = cluster.run(jf.versions)
    assert remote["numpy"].startswith("1.") and remote["pandas"].startswith("1.")


@pytest.mark.parametrize("bulk", ["openssh", "paramiko"])
def test_put_and_get_files_and_arrays(cluster, tmp_path, monkeypatch, bulk):
    monkeypatch.setenv("CLOUDCOMPUTE_BULK", bulk)
    cluster.close_connections()
    a = np.asfortranarray(np.arange(1000, dtype=np.int64).reshape(10, 100))
    cluster.put(a, "data/a.npy")
    assert np.array_equal(cluster.get("data/a.npy", node=cluster.node_names()[2]), a)
    src = tmp_path / "in.txt"
    src.write_text("hello")
    cluster.put(str(src), "data/in.txt")
    out = tmp_path / "out.txt"
    cluster.get("data/in.txt", str(out))
    assert out.read_text() == "hello"


def test_node_deleted_during_map_loses_and_duplicates_nothing(conn, admin_conn, unique,
                                                             state_dir, fault):
    fault("node deleted during map(30 tasks) on 3 nodes", "ssh",
          "its tasks move to the other nodes; every result once, in order")
    with Cluster(ClusterSpec(name=unique, nodes=3), cloud=CLOUD) as c:
        victim = c.nodes[1]
        timer = threading.Timer(1.0, lambda: conn.compute.delete_server(victim.server_id))
        timer.start()
        results = c.map(jf.slow_square, range(30))
        timer.join()
        assert results == [x * x for x in range(30)]
        assert victim.name in c.executor().dead
        fault.observed = "30 correct results; %s marked lost" % victim.name
    assert leftovers(admin_conn, conn.current_project_id, unique) == []
    assert keypairs_with(conn, unique) == []


def test_swapped_host_key_is_refused(conn, unique, state_dir, fault):
    fault("node's SSH host key replaced after boot", "security",
          "HostKeyMismatch, fatal, no command sent")
    with Cluster(ClusterSpec(name=unique, nodes=1), cloud=CLOUD) as c:
        node = c.nodes[0]
        c.close_connections()
        _swap_host_key_on_rig(node.server_id)
        with fault.raises(HostKeyMismatch) as err:
            c.run(jf.echo, 1)
        assert err.value.node == node.name and err.value.fatal


def _swap_host_key_on_rig(server_id):
    """Give the node's sshd a new host key (as an attacker in the middle would)."""
    state = os.environ.get("CC_AIO_STATE", "/var/lib/cloudcompute-aio")
    d = os.path.join(state, "instances", server_id)
    keys = glob.glob(os.path.join(d, "ssh_host_*_key"))
    assert keys, "rig instance directory not found: %s" % d
    for k in keys:
        os.unlink(k)
        os.unlink(k + ".pub")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True)
    pid = int(open(os.path.join(d, "sshd.pid")).read())
    os.kill(pid, signal.SIGHUP)
    time.sleep(1.0)
