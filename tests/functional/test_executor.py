"""The executor on the local cloud: slots, timeouts, hung nodes, interrupts,
the shipped project, and nodes that answer with hostile bytes."""
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cloudcompute import Cluster, ClusterSpec
from cloudcompute.exceptions import NodeDataRefused, NodeLost, TaskTimeout
from tests.functional import jobfuncs as jf
from tests.functional.conftest import CLOUD, leftovers, shared_cluster, sigint_default

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with shared_cluster(tmp_path_factory, "exec", 2, flavor="m1.medium") as c:
        yield c


def test_slots_follow_the_flavor_and_run_side_by_side(cluster):
    node = cluster.node_names()[0]
    assert [n.slots for n in cluster.nodes] == [2, 2]
    assert cluster.executor().worker(node).slots == 2
    spans = cluster.executor().map(jf.span, [1.0, 1.0], nodes=[node])
    (p1, s1, e1), (p2, s2, e2) = [r.value for r in spans]
    assert p1 != p2 and s1 < e2 and s2 < e1  # two task processes, overlapping


def test_hung_task_times_out_and_its_node_carries_on(cluster, fault):
    fault("task sleeps forever with timeout=5", "ssh",
          "TaskTimeout within 5 s + 2 s; the next task on that node succeeds")
    node = cluster.node_names()[1]
    t0 = time.monotonic()
    with fault.raises(TaskTimeout) as err:
        cluster.run(jf.sleep_forever, node=node, timeout=5)
    took = time.monotonic() - t0
    assert err.value.seconds == 5 and err.value.node == node and took < 7
    fault.observed += " after %.1fs" % took
    assert cluster.run(jf.echo, 3, node=node) == 3


def test_the_callers_project_travels_once(cluster, tmp_path):
    """A module that imports a sibling module and a local package runs unchanged."""
    proj = tmp_path / "proj"
    (proj / "mylib").mkdir(parents=True)
    (proj / "helpers.py").write_text("def clean(x):\n    return abs(x)\n")
    (proj / "mylib" / "__init__.py").write_text("")
    (proj / "mylib" / "util.py").write_text("def double(x):\n    return 2 * x\n")
    (proj / "ccjob.py").write_text(textwrap.dedent("""\
        from helpers import clean
        from mylib.util import double


        def work(x):
            return double(clean(x))
        """))
    sys.path.insert(0, str(proj))
    try:
        import ccjob
        ex = cluster.executor()
        before = ex.project_files_sent
        assert cluster.map(ccjob.work, [-1, 2, -3, 4]) == [2, 4, 6, 8]
        # 4 files per node, less what a node already holds by content (an
        # empty __init__.py travelled with an earlier project)
        assert 3 * len(cluster.nodes) <= ex.project_files_sent - before <= 4 * len(cluster.nodes)
        cluster.close_connections()  # fresh workers: what the nodes hold is kept
        ex = cluster.executor()
        assert cluster.map(ccjob.work, [-5, 6]) == [10, 12]
        assert ex.project_files_sent == 0 and ex.project_bytes_sent == 0
        (proj / "helpers.py").write_text("def clean(x):\n    return abs(x) + 1\n")
        import importlib
        importlib.reload(ccjob)
        assert cluster.map(ccjob.work, [-5, 6]) == [12, 14]
        assert ex.project_files_sent == len(cluster.nodes)  # only the changed file
    finally:
        sys.path.remove(str(proj))
        sys.modules.pop("ccjob", None)
        sys.modules.pop("helpers", None)


# -- a node that hangs, a client that is interrupted --------------------------
def _netns_pids(server_id):
    out = subprocess.run(["ip", "netns", "pids", "cc-" + server_id], capture_output=True,
                         text=True).stdout.split()
    return [int(p) for p in out]


def test_hung_node_during_map_finishes_on_the_others(conn, fault, unique, state_dir):
    fault("every process of one node frozen (SIGSTOP) during map(16 tasks)", "ssh",
          "its tasks run on the other node within the 10 s silence bound; every result")
    with Cluster(ClusterSpec(name=unique, nodes=2), cloud=CLOUD) as c:
        c.map(jf.echo, [0, 1])  # workers up on both nodes
        victim = c.nodes[1]
        frozen = []

        def freeze():
            time.sleep(1.0)
            for pid in _netns_pids(victim.server_id):
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
        import threading
        t = threading.Thread(target=freeze)
        t.start()
        t0 = time.monotonic()
        try:
            results = c.map(jf.slow_square, range(16))
        finally:
            t.join()
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        took = time.monotonic() - t0
        assert results == [x * x for x in range(16)]
        assert victim.name in c.executor().dead
        # 16 x 0.3 s on one node, plus the silence bound and one backoff
        assert took < 16 * 0.3 + 10 + 8
        fault.observed = "map complete in %.1fs; %s marked dead" % (took, victim.name)


INTERRUPTED = """
import sys
from cloudcompute import Cluster, ClusterSpec
from tests.functional import jobfuncs as jf
with Cluster(ClusterSpec(name=sys.argv[1], nodes=2), cloud=sys.argv[2]) as c:
    print("mapping", flush=True)
    c.map(jf.sleep_forever, range(4))
"""


def test_sigint_while_a_task_hangs_leaves_nothing(conn, admin_conn, fault, unique, state_dir):
    fault("SIGINT to the client while its map's tasks hang", "process",
          "the process exits and the cluster is gone within 10 s")
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, unique, CLOUD],
                            stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(
                                os.path.dirname(HERE)), preexec_fn=sigint_default)
    try:
        assert proc.stdout.readline().strip() == "mapping"
        time.sleep(3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    left = leftovers(admin_conn, conn.current_project_id, unique)
    fault.observed = "exit %s after %.1fs; left: %s" % (proc.returncode, took, left)
    assert took < 10 and not left


# -- hostile nodes ----------------------------------------------------------------
def _forged_frames(tmp_path, unique):
    """Answers a node could forge, each a (format descriptor, blob) file."""
    import io

    import pyarrow as pa
    frames = {}
    buf = io.BytesIO()
    np.savez_compressed(buf, c0=np.zeros(200 << 17))  # 200 MiB of zeros, deflated
    frames["npz bomb"] = ({"format": "npcols", "columns": [{"name": "a", "dtype": "float64"}],
                          "index": {"kind": "range", "start": 0, "stop": 200 << 17,
                                    "step": 1}}, buf.getvalue())

    class Trap(pa.ExtensionType):
        def __init__(self):
            super().__init__(pa.int64(), "cc.trap")

        def __arrow_ext_serialize__(self):
            return b""

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type, serialized):
            open(os.path.join(str(tmp_path), "arrow-ran"), "w").close()
            return cls()
    table = pa.table({"x": pa.ExtensionArray.from_storage(Trap(), pa.array([1, 2]))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    frames["arrow extension type"] = ({"format": "arrow"}, sink.getvalue().to_pybytes())
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch %s" % shlex.quote(str(tmp_path / "pickle-ran")),))
    frames["pickle not offered"] = ({"format": "pickle"}, pickle.dumps(Boom()))
    return frames


@pytest.fixture(scope="module")
def hostile(cluster, tmp_path_factory):
    """Run a hostile worker in place of the real one on the first node."""
    node = cluster.node_names()[0]
    cluster.run(jf.echo, 0, node=node)  # one-time imports and buffers are not the case's
    conn = cluster.connection(node)
    conn.run(["mkdir", "-p", ".cloudcompute/hostile"])
    with open(os.path.join(HERE, "hostile_worker.py"), "rb") as f:
        conn.upload(".cloudcompute/hostile/stub.py", f.read())

    def run(mode, frame=None):
        script = ".cloudcompute/hostile/%s.sh" % mode.replace(" ", "-")
        argv = ["python3", ".cloudcompute/hostile/stub.py"]
        if frame is not None:
            spec, blob = frame
            conn.upload(script + ".frame", json.dumps(spec).encode() + b"\n" + blob)
            argv += ["frame", script + ".frame"]
        else:
            argv += [mode]
        conn.upload(script, ("#!/bin/sh\nexec %s\n" % " ".join(
            shlex.quote(a) for a in argv)).encode())
        conn.run(["chmod", "+x", script])
        case = {"name": node, "address": conn.address, "user": conn.user,
                "key_file": conn.key_file, "host_keys": conn.host_keys,
                "script": "./" + script}
        # its own process, so that the peak RSS measured is the case's alone
        out = subprocess.run([sys.executable, "-m", "tests.functional.hostile_client",
                              json.dumps(case)], cwd=os.path.dirname(os.path.dirname(HERE)),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        return "%s: %s" % (got["type"], got["message"]), got["grew_mib"], got["took"]
    return run


@pytest.mark.parametrize("mode,expected", [
    ("claim100g", NodeDataRefused), ("claim1g", NodeLost), ("endless", TaskTimeout)])
def test_hostile_sizes_and_streams_cost_the_client_nothing(hostile, fault, mode, expected):
    fault("hostile node: %s" % mode, "security",
          "%s with a clear message; client peak RSS under +64 MiB" % expected.__name__)
    raised, grew_mib, took = hostile(mode)
    fault.observed = "%s (peak +%d MiB, %.1fs)" % (raised[:200], grew_mib, took)
    assert raised.startswith(expected.__name__ + ": "), raised
    assert grew_mib < 64


@pytest.mark.parametrize("case", ["npz bomb", "arrow extension type", "pickle not offered"])
def test_hostile_results_are_refused_and_nothing_runs(hostile, fault, tmp_path, unique, case):
    fault("hostile node: %s" % case, "security",
          "NodeDataRefused naming the problem; nothing executes; peak RSS under +64 MiB")
    frame = _forged_frames(tmp_path, unique)[case]
    raised, grew_mib, took = hostile(case, frame)
    fault.observed = "%s (peak +%d MiB)" % (raised[:200], grew_mib)
    assert raised.startswith("NodeDataRefused: "), raised
    assert not (tmp_path / "arrow-ran").exists() and not (tmp_path / "pickle-ran").exists()
    assert grew_mib < 64
