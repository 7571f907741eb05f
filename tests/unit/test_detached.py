"""Detached jobs with nodes that are local processes: the real supervisor (jobd),
its files on "disk", and clients that come and go."""
import glob
import json
import os
import signal
import sys
import time

import pytest

from cloudcompute.exceptions import (MapError, NodeDataRefused, RemoteTaskError,
                                     SerializationError, TaskTimeout, WaitTimeout)
from cloudcompute.jobs import detached
from cloudcompute.jobs.executor import Executor
from cloudcompute.jobs.jobstate import JobRecord, NodeReport, merge
from cloudcompute.jobs.placement import Cancelled
from tests.unit import nodefuncs as nf
from tests.unit.localnode import LocalNode, quick_jobs


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """make(count, slots) -> (executor, nodes); fresh() -> a second client's executor."""
    made, executors = [], []
    quick_jobs(monkeypatch)

    def executor(nodes, slots):
        ex = Executor(nodes, python={n: sys.executable for n in nodes},
                      slots={n: slots for n in nodes},
                      silence=5.0)  # a loaded machine starts workers slowly
        executors.append(ex)
        return ex

    def make(count=1, slots=2):
        nodes = {}
        for i in range(count):
            node = LocalNode("n%d" % i, tmp_path / ("n%d" % i))
            made.append(node)
            nodes[node.name] = node
        return executor(nodes, slots), nodes

    def fresh(nodes, slots=2):
        """Another client: new connections to the same nodes, nothing shared."""
        return executor({n: LocalNode(n, node.home) for n, node in nodes.items()}, slots)

    make.fresh = fresh
    yield make
    for ex in executors:
        ex.close()
    for path in glob.glob(str(tmp_path / "*" / ".cloudcompute" / "jobs" / "*" /
                              "supervisor.json")):
        pid = json.load(open(path))["pid"]
        if _alive(pid):  # a supervisor this test started and left running
            os.kill(pid, signal.SIGKILL)
    for node in made:
        for pid in _jobd_processes(node.home):  # tasks a failed test left running
            os.kill(pid, signal.SIGKILL)
        node.cleanup()


def _job_dir(node, job):
    return os.path.join(node.home, ".cloudcompute", "jobs", job.id)


def test_results_equal_local_execution_and_can_be_read_again(cluster):
    ex, nodes = cluster(2, slots=2)
    job = detached.submit(ex, nf.square_slowly, range(12))
    assert job.results(timeout=30) == [x * x for x in range(12)]
    assert job.results() == [x * x for x in range(12)]  # still on the nodes
    st = job.status()
    assert st.counts["done"] == 12 and st.finished
    assert {t.node for t in st.tasks} == {"n0", "n1"}
    assert all(t.duration is not None and t.duration >= 0.05 for t in st.tasks)


def test_another_client_attaches_by_id_and_lists_the_jobs(cluster):
    ex, nodes = cluster(2, slots=1)
    job = detached.submit(ex, nf.square_slowly, range(6), timeout=30)
    ex.close()
    other = cluster.fresh(nodes)
    found = detached.list_jobs(other)
    assert [r.id for r in found] == [job.id]
    assert found[0].tasks == 6 and found[0].function.endswith("nodefuncs:square_slowly")
    assert found[0].timeout == 30
    again = detached.Job(other, job.id)
    assert again.results(timeout=30) == [x * x for x in range(6)]


def test_a_failed_task_raises_as_map_does_with_every_finished_value(cluster):
    ex, _ = cluster(1, slots=2)
    job = detached.submit(ex, nf.fail_on, range(8))
    with pytest.raises(MapError) as err:
        job.results(timeout=30)
    e = err.value
    assert isinstance(e.errors[3], RemoteTaskError) and e.errors[3].exc_type == "KeyError"
    assert "bad item 3" in e.errors[3].traceback
    assert e.results == {i: i * 10 for i in range(8) if i != 3}
    values = job.results(return_exceptions=True)
    assert isinstance(values[3], RemoteTaskError) and values[4] == 40


def test_timeout_kills_the_task_and_what_it_started(cluster, tmp_path):
    ex, _ = cluster(1, slots=1)
    pidfile = str(tmp_path / "child.pid")
    job = detached.submit(ex, nf.sleep_forever, [pidfile], timeout=0.5)
    (value,) = job.results(timeout=20, return_exceptions=True)
    assert isinstance(value, TaskTimeout) and value.seconds == 0.5
    time.sleep(0.2)
    assert not _alive(int(open(pidfile).read()))


def test_cancel_kills_running_tasks_and_starts_no_more(cluster, tmp_path):
    ex, nodes = cluster(1, slots=1)
    pidfile = str(tmp_path / "child.pid")
    job = detached.submit(ex, nf.sleep_forever, [pidfile, pidfile + "2"])
    deadline = time.monotonic() + 15
    while not os.path.exists(pidfile) and time.monotonic() < deadline:
        time.sleep(0.05)
    task_pid = job.status().tasks[0]
    st = job.cancel()
    assert st.counts["cancelled"] == 2 and st.cancelled, st.counts
    assert task_pid.state == "running"
    assert not _alive(int(open(pidfile).read()))  # the task's process group went
    assert not os.path.exists(pidfile + "2")  # the second never started
    values = job.results(return_exceptions=True)
    assert all(isinstance(v, Cancelled) for v in values)


def test_logs_follow_streams_prints_as_they_happen(cluster):
    ex, _ = cluster(1, slots=1)
    job = detached.submit(ex, nf.ticker, [4])
    got = []
    for line in job.logs(follow=True):
        got.append((time.time(), line))
    ticks = [(t, line) for t, line in got if "tick" in line]
    assert [line.split()[:3] for _, line in ticks] == [["[0]", "tick", str(k)]
                                                       for k in range(4)]
    for seen, line in ticks:  # each line arrived within a second of its print
        assert seen - float(line.split()[3]) < 1.0
    assert ticks[-1][0] - ticks[0][0] > 0.6  # not all at the end
    assert [line for line in job.logs()] == [line for _, line in ticks]


def test_the_job_outlives_the_clients_connections(cluster):
    ex, nodes = cluster(2, slots=2)
    job = detached.submit(ex, nf.span, [0.5] * 8)
    sups = [os.path.join(_job_dir(node, job), "supervisor.json") for node in nodes.values()]
    for node in nodes.values():
        node.close()  # every channel's process group killed, as when SSH drops
        node.drop_sessions()  # and what is left of the commands' sessions
    ex.close()
    time.sleep(0.3)
    assert all(_alive(json.load(open(p))["pid"]) for p in sups)  # detached: still there
    assert len(detached.Job(cluster.fresh(nodes), job.id).results(timeout=30)) == 8


def test_a_dead_supervisor_is_restarted_by_an_attached_client(cluster):
    ex, nodes = cluster(1, slots=1)
    job = detached.submit(ex, nf.span, [0.3] * 4)
    sup = os.path.join(_job_dir(nodes["n0"], job), "supervisor.json")
    deadline = time.monotonic() + 10
    while not os.path.exists(sup) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(json.load(open(sup))["pid"], signal.SIGKILL)
    assert len(job.results(timeout=30)) == 4


def test_a_lost_node_s_tasks_run_again_on_its_replica(cluster):
    ex, nodes = cluster(2, slots=1)
    job = detached.submit(ex, nf.span, [0.3] * 6)
    job.lost_after = 0.5
    sup = os.path.join(_job_dir(nodes["n1"], job), "supervisor.json")
    deadline = time.monotonic() + 10
    while not os.path.exists(sup) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(json.load(open(sup))["pid"], signal.SIGKILL)  # n1 goes away with its work
    nodes["n1"].hung = True
    st = job.status()
    assert st.unreachable == ["n1"]
    waiting = [t for t in st.tasks if t.state == "lost"]
    assert [t.index for t in waiting] == [1, 3, 5] and {t.waiting_for for t in waiting} == {"n1"}
    assert len(job.results(timeout=40)) == 6
    assert {t.node for t in job.status().tasks} == {"n0"}


def test_pickled_results_need_the_callers_consent(cluster):
    ex, nodes = cluster(1, slots=1)
    with pytest.raises(SerializationError):
        detached.submit(ex, lambda x: x, [1])
    job = detached.submit(ex, nf.as_set, [[1, 2]], allow_pickle=True)
    assert job.results(timeout=20) == [{1, 2}]
    other = detached.Job(cluster.fresh(nodes), job.id)
    with pytest.raises(MapError) as err:
        other.results(timeout=20)
    assert isinstance(err.value.errors[0], NodeDataRefused)
    assert other.results(allow_pickle=True) == [{1, 2}]


def test_a_result_over_the_cap_is_refused_before_it_is_read(cluster):
    ex, _ = cluster(1, slots=1)
    job = detached.submit(ex, nf.add_one, [1])
    job.wait(timeout=20)
    ex.max_result_bytes = 0
    (value,) = job.results(return_exceptions=True)
    assert isinstance(value, NodeDataRefused) and "over the cap" in str(value)


def test_wait_is_bounded(cluster):
    ex, _ = cluster(1, slots=1)
    job = detached.submit(ex, nf.span, [5])
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout):
        job.results(timeout=0.5)
    assert time.monotonic() - t0 < 3
    job.cancel()


def test_bad_job_ids_are_refused_before_any_command():
    with pytest.raises(ValueError, match="not a job id"):
        detached.Job(Executor({}), "../../etc")


def test_hostile_node_answers_are_refused():
    with pytest.raises(NodeDataRefused):
        NodeReport.parse("n0", "not json", 3)
    with pytest.raises(NodeDataRefused):
        NodeReport.parse("n0", json.dumps({"tasks": {"7": {"state": "done"}}}), 3)
    with pytest.raises(NodeDataRefused):
        NodeReport.parse("n0", json.dumps({"tasks": {"0": {"state": "rm -rf"}}}), 3)
    with pytest.raises(NodeDataRefused):
        JobRecord.parse({"id": "x", "tasks": 2, "nodes": {"n0": [0, 5]}}, "n0")
    rep = NodeReport.parse("n0", json.dumps({"tasks": {"0": {
        "state": "failed", "traceback": "x" * (1 << 20), "size": "big", "killed": True}}}), 1)
    detail = rep.tasks[0].detail
    assert len(detail["traceback"]) == 16 << 10 and "size" not in detail
    assert "killed" not in detail


def test_merge_prefers_the_most_advanced_state_and_names_lost_work():
    rec = JobRecord("j1", "m:f", 3, {"a": [0, 2], "b": [1]}, {"a": "b", "b": "a"})
    a = NodeReport.parse("a", json.dumps({"tasks": {"0": {"state": "running"},
                                                    "2": {"state": "done", "ended": 5}}}), 3)
    b = NodeReport.parse("b", json.dumps({"tasks": {"0": {"state": "done", "ended": 9}}}), 3)
    st = merge(rec, {"a": a, "b": b}, set())
    assert [t.state for t in st.tasks] == ["done", "lost", "done"]
    assert st.tasks[0].node == "b" and st.tasks[1].waiting_for == "b"
    assert st.counts["done"] == 2 and st.counts["lost"] == 1 and not st.finished


def test_a_failed_submit_stops_what_started_and_leaves_no_files(cluster, monkeypatch):
    ex, nodes = cluster(2, slots=1)
    real = detached.Job._start

    def start(self, node, slots=None):
        if node == "n1":
            raise OSError("n1 went away while the job started")
        real(self, node, slots)
    monkeypatch.setattr(detached.Job, "_start", start)
    with pytest.raises(OSError):
        detached.submit(ex, nf.span, [30] * 4)
    for node in nodes.values():
        assert os.listdir(os.path.join(node.home, ".cloudcompute", "jobs")) == []
    deadline = time.monotonic() + 5
    while _jobd_processes(nodes["n0"].home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _jobd_processes(nodes["n0"].home) == []  # n0's supervisor saw the cancel mark


def _jobd_processes(home):
    """Live processes of jobd (a supervisor, or a task forked from it) in ``home``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink("/proc/%s/cwd" % entry) != home or not _alive(int(entry)):
                continue
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                if b"ccnode.jobd" in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_a_lost_node_without_a_replica_ends_its_tasks_in_node_lost(cluster):
    from cloudcompute.exceptions import NodeLost
    ex, nodes = cluster(2, slots=1)
    job = detached.submit(ex, nf.span, [0.3] * 4, replicate=False)
    assert job.record.replicas == {}
    job.lost_after = 0.3
    sup = os.path.join(_job_dir(nodes["n1"], job), "supervisor.json")
    deadline = time.monotonic() + 10
    while not os.path.exists(sup) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(json.load(open(sup))["pid"], signal.SIGKILL)
    nodes["n1"].hung = True
    values = job.results(timeout=30, return_exceptions=True)
    assert [type(v).__name__ for v in values] == ["list", "NodeLost"] * 2
    assert isinstance(values[1], NodeLost) and values[1].node == "n1"


def test_a_restarted_supervisor_ends_the_run_its_predecessor_left(cluster, tmp_path):
    ex, nodes = cluster(1, slots=1)
    marker = str(tmp_path / "first.pid")
    job = detached.submit(ex, nf.slow_first_time, [marker])
    sup = os.path.join(_job_dir(nodes["n0"], job), "supervisor.json")
    deadline = time.monotonic() + 10
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    first = int(open(marker).read())
    os.kill(json.load(open(sup))["pid"], signal.SIGKILL)  # the task runs on, orphaned
    assert job.results(timeout=30) == [first]  # run again after the restart
    assert not _alive(first)


def test_a_status_answer_keeps_tracebacks_within_its_budget(tmp_path, monkeypatch):
    from cloudcompute.jobs import jobd
    jdir = tmp_path / "job"
    (jdir / "batches").mkdir(parents=True)
    (jdir / "batches" / "n0.0.json").write_text(json.dumps(
        [{"index": i, "id": "j.%d" % i, "offset": 0, "length": 0} for i in range(3)]))
    for i in range(3):
        (jdir / "tasks" / str(i)).mkdir(parents=True)
        (jdir / "tasks" / str(i) / "status.json").write_text(json.dumps(
            {"state": "failed", "traceback": "x" * 100_000 + "line %d" % i}))
    monkeypatch.setattr(jobd, "TRACEBACKS_SHOWN", 5000)
    tasks = jobd.status(str(jdir), "n0")["tasks"]
    assert len(tasks["0"]["traceback"]) == 4096 and tasks["0"]["traceback"].endswith("line 0")
    assert tasks["1"]["traceback"].startswith("(not shown: see tasks/1/status.json")
    assert tasks["2"]["state"] == "failed"


def test_the_supervisor_wakes_when_a_task_ends_not_at_its_next_look(cluster, monkeypatch,
                                                                     tmp_path):
    monkeypatch.setenv("CLOUDCOMPUTE_JOBD_POLL", "5")  # looks at its marks every 5 s
    ex, _ = cluster(1, slots=1)
    spans = detached.submit(ex, nf.span, [0.05] * 3).results(timeout=30)
    for k in range(1, 3):  # one slot: each task starts as the one before it ends
        assert spans[k][1] - spans[k - 1][2] < 1.0, spans
    t0 = time.monotonic()
    job = detached.submit(ex, nf.sleep_forever, [str(tmp_path / "pid")], timeout=0.3)
    (value,) = job.results(timeout=30, return_exceptions=True)
    assert isinstance(value, TaskTimeout) and time.monotonic() - t0 < 4  # not at 5 s


def test_the_supervisor_settings_come_from_the_node_s_environment(monkeypatch):
    from cloudcompute.jobs import supervisor
    for raw, want in (("0.02", 0.02), ("0", 0.01), ("99", 10.0), ("nan", 0.1), ("x", 0.1)):
        monkeypatch.setenv("CLOUDCOMPUTE_JOBD_POLL", raw)
        assert supervisor._poll_seconds() == want, raw
    monkeypatch.delenv("CLOUDCOMPUTE_JOBD_POLL")
    assert supervisor._poll_seconds() == 0.1
