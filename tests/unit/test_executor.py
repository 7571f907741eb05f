"""The executor and the real worker, with nodes that are local processes."""
import os
import signal
import sys
import threading
import time

import pytest

from cloudcompute.exceptions import (EnvironmentMismatch, MapError, NodeLost,
                                     RemoteTaskError, TaskKilled, TaskTimeout)
from cloudcompute.jobs.executor import Executor, SlotPool, TaskResult
from tests.unit import nodefuncs as nf
from tests.unit.localnode import LocalNode


@pytest.fixture
def nodes(tmp_path, monkeypatch):
    made = []

    def make(count=1, slots=1, silence=5.0, start_timeout=None, python=sys.executable):
        out = {}
        for i in range(count):
            node = LocalNode("n%d" % i, tmp_path / ("n%d" % i))
            made.append(node)
            out[node.name] = node
        ex = Executor(out, python={n: python for n in out}, slots={n: slots for n in out},
                      silence=silence, start_timeout=start_timeout)
        return ex, out
    yield make
    for node in made:
        node.cleanup()


def test_slots_run_tasks_side_by_side(nodes):
    ex, _ = nodes(1, slots=2)
    spans = [r.value for r in ex.map(nf.span, [0.4, 0.4])]
    assert spans[0][0] != spans[1][0]  # two task processes
    assert spans[0][1] < spans[1][2] and spans[1][1] < spans[0][2]  # they overlapped
    ex.close()


def test_one_slot_runs_one_task_at_a_time(nodes):
    ex, _ = nodes(1, slots=1)
    a, b = [r.value for r in ex.map(nf.span, [0.2, 0.2])]
    assert a[0] == b[0] and (a[2] <= b[1] or b[2] <= a[1])
    ex.close()


def test_map_balances_over_every_slot_and_keeps_order(nodes):
    ex, _ = nodes(2, slots=2)
    results = ex.map(nf.add_one, range(40))
    assert [r.value for r in results] == list(range(1, 41))
    assert {r.node for r in results} == {"n0", "n1"}
    ex.close()


def test_timeout_kills_the_task_and_what_it_started(nodes, tmp_path):
    ex, _ = nodes(1, slots=1)
    pidfile = str(tmp_path / "child.pid")
    t0 = time.monotonic()
    with pytest.raises(TaskTimeout) as err:
        ex.run_on("n0", nf.sleep_forever, [pidfile], timeout=0.5)
    assert err.value.seconds == 0.5 and err.value.node == "n0"
    assert time.monotonic() - t0 < 0.5 + 2
    child = int(open(pidfile).read())
    time.sleep(0.2)
    assert not os.path.exists("/proc/%d" % child) or \
        open("/proc/%d/stat" % child).read().split()[2] == "Z"
    assert ex.run_on("n0", nf.add_one, [1]).value == 2  # the slot came back
    ex.close()


def test_failed_map_keeps_finished_values_and_stops_the_rest(nodes):
    ex, _ = nodes(1, slots=2)
    with pytest.raises(MapError) as err:
        ex.map(nf.fail_on, range(30))
    e = err.value
    assert isinstance(e.errors[3], RemoteTaskError) and e.errors[3].exc_type == "KeyError"
    assert all(e.results[i] == i * 10 for i in e.results) and e.results
    assert e.pending and len(e.results) + len(e.errors) + len(e.pending) == 30
    ex.close()


def test_return_exceptions_puts_each_in_its_place(nodes):
    ex, _ = nodes(1, slots=2)
    out = ex.map(nf.fail_on, range(6), return_exceptions=True)
    assert isinstance(out[3], RemoteTaskError)
    assert [r.value for i, r in enumerate(out) if i != 3] == [0, 10, 20, 40, 50]
    ex.close()


def test_a_crash_takes_only_its_task(nodes):
    ex, _ = nodes(1, slots=1)
    logs = []
    ex.worker("n0").log_handler = lambda node, task, text: logs.append(text)
    with pytest.raises(TaskKilled) as err:
        ex.run_on("n0", nf.crash, [1])
    assert err.value.signal == 9 and "going down" in "".join(logs)
    assert ex.run_on("n0", nf.add_one, [2]).value == 3
    ex.close()


def test_a_dropped_node_has_its_tasks_run_elsewhere(nodes):
    ex, local = nodes(2, slots=1)
    ex.map(nf.add_one, [0, 1])  # both workers up
    timer = threading.Timer(0.3, local["n1"].kill)
    timer.start()
    results = ex.map(nf.span, [0.1] * 12)
    timer.join()
    assert len(results) == 12 and all(isinstance(r, TaskResult) for r in results)
    assert "n1" in ex.dead and results[-1].node == "n0"
    ex.close()


def test_a_hung_node_is_lost_within_the_silence_bound(nodes):
    ex, local = nodes(1, slots=1, silence=1.5)
    ex.run_on("n0", nf.add_one, [0])
    local["n0"].kill(signal.SIGSTOP)
    t0 = time.monotonic()
    with pytest.raises(NodeLost):
        ex.run_on("n0", nf.add_one, [1])
    # two runs (reconnect once), each bounded by the silence limit
    assert time.monotonic() - t0 < 2 * ex.silence + 3
    local["n0"].kill(signal.SIGCONT)
    ex.close()


def test_task_output_arrives_before_its_result(nodes):
    ex, _ = nodes(1, slots=2)
    seen = []
    ex.worker("n0").log_handler = lambda node, task, text: seen.append((task, text))
    ex.map(nf.chatty, range(4))
    assert len({t for t, _ in seen}) == 4 and all(t.startswith("chatty#") for t, _ in seen)
    ex.close()


def test_slot_pool_waits_without_polling_and_fails_when_nodes_are_gone():
    pool = SlotPool({"a": 1, "b": 2})
    got = [pool.acquire() for _ in range(3)]
    assert sorted(got) == ["a", "b", "b"]
    waiter = []
    t = threading.Thread(target=lambda: waiter.append(pool.acquire()))
    t.start()
    time.sleep(0.1)
    assert not waiter
    pool.release("a")
    t.join(2)
    assert waiter == ["a"]
    lost = []
    pool.on_lost = lambda node, exc: lost.append(node)
    pool.lost("a", OSError())
    pool.lost("b", OSError())
    pool.lost("b", OSError())
    assert lost == ["a", "b"]
    with pytest.raises(NodeLost, match="no live node"):
        pool.acquire()


def test_two_maps_at_once_share_the_workers(nodes):
    ex, _ = nodes(2, slots=2)
    out = {}
    threads = [threading.Thread(target=lambda k=k: out.__setitem__(
        k, [r.value for r in ex.map(nf.add_one, range(k, k + 30))])) for k in (0, 100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out == {0: list(range(1, 31)), 100: list(range(101, 131))}
    ex.close()


def test_the_project_travels_by_content_once(nodes, tmp_path):
    proj = tmp_path / "proj"
    (proj / "pkgx").mkdir(parents=True)
    (proj / "sib.py").write_text("def clean(x):\n    return abs(x)\n")
    (proj / "pkgx" / "__init__.py").write_text("FACTOR = 3\n")
    (proj / "pkgx" / "mod.py").write_text("from . import FACTOR\n\n\n"
                                          "def scale(x):\n    return FACTOR * x\n")
    (proj / "jobmod.py").write_text("from sib import clean\nfrom pkgx.mod import scale\n\n\n"
                                    "def work(x):\n    return scale(clean(x))\n")
    sys.path.insert(0, str(proj))
    try:
        import jobmod
        ex, _ = nodes(1, slots=1)
        assert [r.value for r in ex.map(jobmod.work, [-1, 2])] == [3, 6]
        assert ex.project_files_sent == 4
        ex.close()
        ex2 = Executor(ex.connections, python=ex.python, slots=ex.slots, silence=ex.silence)
        assert [r.value for r in ex2.map(jobmod.work, [-4])] == [12]
        assert ex2.project_files_sent == 0  # the node kept what it had
        ex2.close()
    finally:
        sys.path.remove(str(proj))
        for name in ("jobmod", "sib", "pkgx", "pkgx.mod"):
            sys.modules.pop(name, None)


def test_a_function_sent_once_reaches_every_slot(nodes):
    """The worker holds what it was sent once and hands it to a task process
    that was forked before (here: slot 1 ran other work while slot 0 got it)."""
    import colorsys
    ex, _ = nodes(1, slots=2)
    assert [r.value for r in ex.map(nf.add_one, [1, 2, 3, 4])] == [2, 3, 4, 5]  # both forked
    assert ex.map(colorsys.rgb_to_hsv, [(0.1, 0.2, 0.3)], star=True)[0].value  # one slot
    scale = 7
    ex.map(lambda x: x * scale, [1], allow_pickle=True)
    many = ex.map(colorsys.rgb_to_hsv, [(0.1, 0.2, 0.3)] * 8, star=True)
    assert [r.value for r in many] == [list(colorsys.rgb_to_hsv(0.1, 0.2, 0.3))] * 8
    assert [r.value for r in ex.map(lambda x: x * scale, range(8), allow_pickle=True)] \
        == [x * 7 for x in range(8)]
    ex.close()


def test_a_closure_is_pickled_once_per_map_and_sent_once_per_worker(nodes, monkeypatch):
    import cloudpickle

    from cloudcompute.jobs import executor as executor_mod
    ex, _ = nodes(1, slots=2)
    dumps, carried = [], []
    real_dumps, real_request = cloudpickle.dumps, executor_mod.Executor._request
    monkeypatch.setattr(cloudpickle, "dumps", lambda *a, **k: dumps.append(1) or
                        real_dumps(*a, **k))

    def request(self, w, task):
        req, blobs = real_request(self, w, task)
        carried.append("blob" in req["fn"])
        return req, blobs
    monkeypatch.setattr(executor_mod.Executor, "_request", request)
    offset = 100
    out = ex.map(lambda x: x + offset, range(12), allow_pickle=True)
    assert [r.value for r in out] == list(range(100, 112))
    assert len(dumps) == 2  # the up-front check, then once for all twelve tasks
    assert carried[-4:] == [False] * 4 and 1 <= sum(carried) <= 3  # only until it is known
    offset = 200  # a new call pickles the closure's state afresh
    assert ex.map(lambda x: x + offset, [1], allow_pickle=True)[0].value == 201
    ex.close()


def test_a_slow_worker_start_is_bounded_by_the_start_timeout_not_the_silence(nodes, tmp_path):
    slow = tmp_path / "slowpython"  # a node whose Python takes 1 s to say hello
    slow.write_text('#!/bin/sh\nsleep 1\nexec %s "$@"\n' % sys.executable)
    slow.chmod(0o755)
    ex, _ = nodes(1, silence=0.5, start_timeout=30, python=str(slow))
    assert ex.run_on("n0", nf.add_one, [1]).value == 3 - 1
    ex.close()
    ex, _ = nodes(1, silence=0.5, start_timeout=0.6, python=str(slow))
    t0 = time.monotonic()
    with pytest.raises((NodeLost, EnvironmentMismatch)) as err:
        ex.run_on("n0", nf.add_one, [1])
    assert "no answer for 0.6s" in str(err.value) and time.monotonic() - t0 < 2 * 1 + 2
    ex.close()
