"""Detached jobs on the local cloud: a client SIGKILLed after submit, another
attaching later, logs that stream, cancel, and a dropped SSH connection."""
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.functional import jobfuncs as jf
from tests.functional.conftest import CLOUD, host_pid, shared_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with shared_cluster(tmp_path_factory, "det", 2) as c:
        yield c


def _python(code, *args):
    """A fresh Python process running ``code`` (the state directory is inherited)."""
    return subprocess.Popen([sys.executable, "-c", code] + list(args), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT))


SUBMIT = """
import sys, time
from cloudcompute import Cluster
from tests.functional import jobfuncs as jf
c = Cluster.attach(sys.argv[1], cloud=sys.argv[2])
job = c.submit(jf.slow_square, range(20))
print(job.id, flush=True)
time.sleep(600)
"""

COLLECT = """
import json, sys
from cloudcompute import Cluster
c = Cluster.attach(sys.argv[1], cloud=sys.argv[2])
job = c.job(sys.argv[3])
print(json.dumps({"jobs": [r.id for r in c.jobs()], "results": job.results(timeout=180),
                  "counts": job.status().counts}))
c.close_connections()
"""


def test_sigkilled_client_then_a_fresh_process_collects(cluster):
    proc = _python(SUBMIT, cluster.name, CLOUD)
    try:
        ready = select.select([proc.stdout], [], [], 180)[0]
        assert ready, "the submitting client printed no job id"
        job_id = proc.stdout.readline().decode().strip()
        assert job_id, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # right after submit: nothing is collected
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    collector = _python(COLLECT, cluster.name, CLOUD, job_id)
    out, err = collector.communicate(timeout=300)
    assert collector.returncode == 0, err.decode()[-3000:]
    got = json.loads(out)
    assert got["results"] == [jf.slow_square(x) for x in range(20)]
    assert job_id in got["jobs"] and got["counts"]["done"] == 20


def test_logs_follow_streams_prints_as_they_happen(cluster):
    job = cluster.submit(jf.ticker, [6])
    got = [(time.time(), line) for line in job.logs(follow=True)]
    ticks = [(t, line) for t, line in got if " tick " in line]
    assert [line.split()[2] for _, line in ticks] == [str(k) for k in range(6)]
    for seen, line in ticks:  # the node's clock is this machine's: the namespace shares it
        printed = float(line.split()[3])
        assert seen - printed < 1.5, (seen, line)
    assert ticks[-1][0] - ticks[0][0] > 2.0  # they came as printed, not at the end
    assert job.results(timeout=60) == [6]


def _pids(conn, path):
    out = conn.run(["cat", path], warn=True)
    return [int(p) for p in out.stdout.split()] if out.ok else []


def _gone(conn, pid):
    """No such process on the node, or only its zombie (this machine's PID 1,
    which the nodes share, does not reap orphans)."""
    r = conn.run(["sh", "-c", 'test ! -e /proc/"$1" || '
                  'sed "s/.*) //" /proc/"$1"/stat | cut -c1 | grep -qx Z', "sh", str(pid)],
                 warn=True)
    return r.ok


def test_cancel_stops_running_tasks_on_the_node(cluster, unique):
    node = cluster.node_names()[0]
    conn = cluster.connection(node)
    slots = sum(n.slots for n in cluster.nodes)
    paths = ["cc-cancel-%s-%d" % (unique, i) for i in range(slots + 2)]
    job = cluster.submit(jf.hang_recording, paths)
    by_node = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = job.status()
        running = [t for t in st.tasks if t.state == "running"]
        by_node = {t.index: t.node for t in running}
        if len(running) == slots and all(
                _pids(cluster.connection(t.node), paths[t.index]) for t in running):
            break
        time.sleep(0.5)
    assert len(by_node) == slots, job.status().counts
    pids = {i: _pids(cluster.connection(n), paths[i]) for i, n in by_node.items()}
    st = job.cancel()
    assert st.counts["cancelled"] == len(paths), st.counts
    for i, n in by_node.items():  # the task and the child it started are gone
        for pid in pids[i]:
            assert _gone(cluster.connection(n), pid), pid
    queued = [p for i, p in enumerate(paths) if i not in by_node]
    for n in cluster.node_names():
        cluster.connection(n).run(["rm", "-f"] + paths)
    assert conn.run(["ls"] + queued, warn=True).exit_code != 0  # never started


def test_a_job_survives_a_dropped_ssh_connection(cluster):
    job = cluster.submit(jf.slow_square, range(16))
    assert not job.status().finished  # the drop comes while the job runs
    sessions = []
    servers = {n.name: n.server_id for n in cluster.nodes}
    for n in cluster.node_names():
        # This command's parent is the sshd session process serving our
        # connection; its parent is that connection's privileged sshd.
        out = cluster.connection(n).run(["sh", "-c", 'echo $PPID; '
                                         'grep PPid /proc/$PPID/status']).stdout.split()
        sessions += [host_pid(servers[n], int(out[0])), host_pid(servers[n], int(out[2]))]
    for pid in sessions:  # all checked before any is killed: a privileged sshd
        with open("/proc/%d/cmdline" % pid, "rb") as f:  # exits with its session
            assert f.read().startswith(b"sshd"), pid  # only the session's processes
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # gone with the session process killed before it
            pass
    time.sleep(1)
    values = cluster.job(job.id).results(timeout=180)
    assert values == [x * x for x in range(16)]


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "cloudcompute.cli", "--os-cloud", CLOUD,
                        "-f", "json"] + list(args), capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    return r


def test_cli_submit_jobs_logs_results_cancel(cluster, tmp_path):
    import numpy as np
    (tmp_path / "cljob.py").write_text(
        "def total(x):\n    print('summing', len(x))\n    return sum(x) if isinstance(x, list) "
        "else x * 2\n")
    (tmp_path / "a.json").write_text("[1, 2, 3]")
    np.save(tmp_path / "b.npy", np.arange(4.0))
    r = _cli("submit", cluster.name, str(tmp_path / "cljob.py") + ":total",
             str(tmp_path / "a.json"), str(tmp_path / "b.npy"))
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["job"]
    out = tmp_path / "out"
    r = _cli("results", cluster.name, job_id, "-o", str(out))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert sorted(os.path.basename(p) for p in got["outputs"]) == ["a.json", "b.npy"]
    assert json.loads((out / "a.json").read_text()) == 6
    assert np.load(out / "b.npy").tolist() == [0.0, 2.0, 4.0, 6.0]
    r = _cli("jobs", cluster.name)
    assert r.returncode == 0, r.stderr
    mine = [j for j in json.loads(r.stdout)["jobs"] if j["job"] == job_id]
    assert mine and mine[0]["counts"]["done"] == 2 and mine[0]["function"] == "cljob:total"
    r = _cli("logs", cluster.name, job_id)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["lines"]) == ["[0] summing 3", "[1] summing 4"]
    r = _cli("cancel", cluster.name, job_id)  # nothing left to stop: the counts stay
    assert r.returncode == 0 and json.loads(r.stdout)["counts"]["done"] == 2, r.stderr
    r = _cli("results", cluster.name, "no-such-job-1", "-o", str(out))
    assert r.returncode == 1 and "no job no-such-job-1" in r.stderr
    r = _cli("results", cluster.name, "../etc", "-o", str(out))
    assert r.returncode == 2 and "not a job id" in r.stderr


def _power_off(conn, server_id):
    """Kill every process in the node's network namespace (its sshd, the job's
    supervisor and tasks): the node is gone as if switched off. Returns how many."""
    # the connection's session is one of the node's processes (seen from the
    # host, whose pids differ from the node's own)
    session = host_pid(server_id, int(conn.run(["sh", "-c", "echo $PPID"]).stdout.split()[0]))
    target = os.stat("/proc/%d/ns/net" % session).st_ino
    assert target != os.stat("/proc/self/ns/net").st_ino  # never this machine's own
    killed = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat("/proc/%s/ns/net" % entry).st_ino == target:
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
        except OSError:
            continue
    return killed


def test_a_lost_node_s_tasks_run_again_on_its_replica(tmp_path_factory):
    with shared_cluster(tmp_path_factory, "detlost", 2) as c:
        first, second = c.node_names()
        job = c.submit(jf.slow_echo, [(i, 1.0) for i in range(8)], star=True)
        job.lost_after = 5.0
        assert job.record.replicas == {first: second, second: first}
        time.sleep(1.5)
        server = {n.name: n.server_id for n in c.nodes}[second]
        assert _power_off(c.connection(second), server) >= 2
        st = job.status()
        waiting = [t for t in st.tasks if t.state == "lost"]
        assert waiting and {t.waiting_for for t in waiting} == {second}
        assert st.unreachable == [second]
        assert job.results(timeout=240) == list(range(8))
        assert {t.node for t in job.status().tasks} == {first}
