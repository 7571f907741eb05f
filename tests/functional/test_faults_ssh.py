"""Fault campaign, SSH and node faults: connections cut mid-transfer and mid-task,
tasks that exit or are killed, nodes whose sshd never comes, boots that are too
slow. A cut is made by killing the node's sshd session processes (the listener
stays), as a dropped link or a restarted sshd would."""
import hashlib
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from cloudcompute import Cluster, ClusterSpec, NodeGroup, Timeouts
from cloudcompute.exceptions import (NodeLost, RemoteTaskError, ServerFault, TaskKilled,
                                     WaitTimeout)
from tests.functional import jobfuncs as jf
from tests.functional.conftest import CLOUD, node_processes, shared_cluster

RIG = os.environ.get("CC_AIO_STATE", "/var/lib/cloudcompute-aio")


def cut_ssh(server_id):
    """Kill every process of the node except its sshd listener (the pid in
    sshd.pid is the node's own: each node has a PID namespace of its own)."""
    listener = int(open(os.path.join(RIG, "instances", server_id, "sshd.pid")).read())
    killed = 0
    for pid, nspids in node_processes(server_id).items():
        # the listener, and the launcher that holds the node's PID namespace
        # (in the host's, so it has one pid only), stay
        if len(nspids) > 1 and nspids[-1] != listener:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def cut_later(server_id, delay, box):
    t = threading.Timer(delay, lambda: box.append(cut_ssh(server_id)))
    t.start()
    return t


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    with shared_cluster(tmp_path_factory, "sshf", 2) as c:
        yield c


BIG = np.random.default_rng(7).integers(0, 2**62, 48 * 1024 * 1024, dtype=np.int64)  # 384 MiB
BIG_SHA = hashlib.sha256(BIG.tobytes()).hexdigest()


@pytest.mark.parametrize("bulk", ["openssh", "paramiko"])
def test_cut_mid_upload_is_retried(bulk, pair, fault, monkeypatch):
    fault("SSH connection cut mid-upload (%s path)" % bulk, "ssh",
          "upload retried over a new connection; the file on the node is intact")
    monkeypatch.setenv("CLOUDCOMPUTE_BULK", bulk)
    pair.close_connections()
    node = pair.nodes[0]
    box = []
    t = cut_later(node.server_id, 1.0, box)
    t0 = time.monotonic()
    pair.put(BIG, "fault/up.npy", nodes=[node.name])
    took = time.monotonic() - t0
    t.join()
    assert box and box[0] > 0, "nothing was cut"
    assert pair.run(jf.file_sha256, "fault/up.npy", node=node.name) == _npy_sha(BIG)
    fault.observed = "cut %d process(es) at 1.0 s; put finished in %.1f s; sha256 matches" % (
        box[0], took)


@pytest.mark.parametrize("bulk", ["openssh", "paramiko"])
def test_cut_mid_download_is_retried(bulk, pair, fault, monkeypatch):
    fault("SSH connection cut mid-download (%s path)" % bulk, "ssh",
          "download retried; the array that comes back is intact")
    monkeypatch.setenv("CLOUDCOMPUTE_BULK", bulk)
    node = pair.nodes[1]
    pair.put(BIG, "fault/down.npy", nodes=[node.name])
    pair.close_connections()
    box = []
    t = cut_later(node.server_id, 1.0, box)
    back = pair.get("fault/down.npy", node=node.name)
    t.join()
    assert box and box[0] > 0, "nothing was cut"
    assert hashlib.sha256(back.tobytes()).hexdigest() == BIG_SHA
    fault.observed = "cut %d process(es) mid-download; array sha256 matches" % box[0]


def _npy_sha(a):
    import io
    buf = io.BytesIO()
    np.save(buf, a)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def test_task_that_exits_non_zero(pair, fault):
    fault("remote task calls os._exit(3)", "ssh",
          "RemoteTaskError naming node and exit status; the worker carries on")
    node = pair.nodes[0].name
    with fault.raises(RemoteTaskError, match="3") as err:
        pair.run(jf.exit_with, 3, node=node)
    assert err.value.node == node
    assert pair.run(jf.echo, 1, node=node) == 1


def test_task_killed_from_outside(pair, fault):
    fault("remote task killed with SIGKILL by another process", "ssh",
          "TaskKilled with signal 9; the worker carries on")
    node = pair.nodes[1]
    box = []

    def kill_task():
        time.sleep(1.5)
        out = subprocess.run(["ip", "netns", "pids", "cc-" + node.server_id],
                             capture_output=True, text=True).stdout.split()
        for pid in map(int, out):
            try:
                cmd = open("/proc/%d/cmdline" % pid, "rb").read()
            except OSError:
                continue
            if b"sleep" in cmd or _is_task(pid):
                os.kill(pid, signal.SIGKILL)
                box.append(pid)
    t = threading.Thread(target=kill_task)
    t.start()
    with fault.raises(TaskKilled) as err:
        pair.run(jf.slow_echo, 1, 20, node=node.name)
    t.join()
    assert err.value.signal == 9 and err.value.node == node.name
    assert pair.run(jf.echo, 2, node=node.name) == 2


def _is_task(pid):
    """A forked task: a python process whose parent is the node's worker."""
    try:
        ppid = int(open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[1])
        parent = open("/proc/%d/cmdline" % ppid, "rb").read()
        me = open("/proc/%d/cmdline" % pid, "rb").read()
    except (OSError, ValueError, IndexError):
        return False
    return b"python" in me and b"python" in parent and b"worker" in parent


def test_cut_during_map_finishes_elsewhere(conn, fault, unique, state_dir):
    fault("SSH connection cut on one node during map(30 tasks)", "ssh",
          "the node reconnects or its tasks move to the other node; every result, in order")
    with Cluster(ClusterSpec(name=unique, nodes=2), cloud=CLOUD) as c:
        victim = c.nodes[0]
        box = []
        t = cut_later(victim.server_id, 1.0, box)
        results = c.map(jf.slow_square, range(30))
        t.join()
        assert results == [x * x for x in range(30)]
        assert box[0] > 0
        fault.observed = "30 correct results; %s %s" % (victim.name, (
            "marked lost" if victim.name in c.executor().dead else "reconnected"))


def test_cut_during_run_reconnects_and_runs_again(conn, fault, unique, state_dir):
    fault("SSH connection cut while run() waits for a task", "ssh",
          "reconnects once and runs the task again (at-least-once); correct result")
    with Cluster(ClusterSpec(name=unique, nodes=1), cloud=CLOUD) as c:
        node = c.nodes[0]
        box = []
        t = cut_later(node.server_id, 1.5, box)
        t0 = time.monotonic()
        assert c.run(jf.slow_echo, 5, 3) == 5
        t.join()
        assert box[0] > 0
        fault.observed = "result 5 after %.1f s (task ran twice)" % (time.monotonic() - t0)


def test_node_deleted_during_run_is_node_lost(conn, fault, unique, state_dir):
    fault("node deleted while run() waits for a task", "ssh",
          "NodeLost naming the node and the task, never a wrong or missing result")
    with Cluster(ClusterSpec(name=unique, nodes=1), cloud=CLOUD) as c:
        node = c.nodes[0]
        t = threading.Timer(1.5, lambda: conn.compute.delete_server(node.server_id))
        t.start()
        with fault.raises(NodeLost) as err:
            c.run(jf.slow_echo, 5, 30)
        t.join()
        assert err.value.node == node.name and err.value.tasks


def test_sshd_that_never_starts_times_out(conn, fault, unique, state_dir):
    fault("sshd never starts on 1 of 2 nodes", "compute",
          "WaitTimeout naming that node; everything rolled back")
    spec = ClusterSpec(name=unique, timeouts=Timeouts(ssh=15), groups=[
        NodeGroup("ok", 1), NodeGroup("mute", 1, metadata={"cc_fault": "no_sshd"})])
    with fault.raises(WaitTimeout, match="mute") as err:
        Cluster(spec, cloud=CLOUD).up()
    assert any("mute" in w for w in err.value.waiting_for)
    assert os.listdir(state_dir) == []


def test_boot_slower_than_the_timeout(conn, fault, unique, state_dir):
    fault("server stays in BUILD past the ACTIVE timeout", "compute",
          "WaitTimeout naming the node; the building server is deleted")
    spec = ClusterSpec(name=unique, timeouts=Timeouts(active=6), nodes=1,
                       metadata={"cc_fault": "slow_boot", "cc_slow_boot_seconds": "20"})
    with fault.raises(WaitTimeout, match="ACTIVE") as err:
        Cluster(spec, cloud=CLOUD).up()
    assert err.value.waiting_for
    assert os.listdir(state_dir) == []


def test_every_spawn_fails_even_the_replacements(conn, fault, unique, state_dir):
    fault("spawn ERROR on every node, replacements included", "compute",
          "ServerFault with Nova's fault message after 2 replacements; rolled back")
    spec = ClusterSpec(name=unique, nodes=2, max_replacements=2,
                       metadata={"cc_fault": "spawn_error"})
    with fault.raises(ServerFault, match="spawn_error") as err:
        Cluster(spec, cloud=CLOUD).up()
    assert err.value.rolled_back
    assert os.listdir(state_dir) == []
