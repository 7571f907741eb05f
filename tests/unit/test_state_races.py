"""The state record under concurrency: exclusive create, reload under the lock,
a lock file that is never pulled from under a waiter, keys named by cluster id."""
import multiprocessing
import os
import threading
import time
import types

import pytest

from cloudcompute import state as state_mod
from cloudcompute.cluster import Cluster
from cloudcompute.config import ClusterSpec
from cloudcompute.exceptions import StateError
from cloudcompute.record import ClusterRecord
from cloudcompute.state import ClusterState


def _race(directory, name, racers=2):
    """``racers`` threads create ``name`` at the same instant; their outcomes."""
    barrier = threading.Barrier(racers)
    out = [None] * racers

    def one(i):
        barrier.wait()
        try:
            ClusterState.create(ClusterRecord(name=name, cluster_id="%s-%08x" % (name, i)),
                                directory)
            out[i] = "won"
        except StateError as exc:
            out[i] = exc
    threads = [threading.Thread(target=one, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_two_threads_creating_one_name_exactly_one_wins_200_times(tmp_path):
    for trial in range(200):
        out = _race(str(tmp_path), "c%d" % trial)
        assert sorted(map(str, out)).count("won") == 1, out
        loser = next(o for o in out if o != "won")
        assert "already recorded" in str(loser)
        winner = out.index("won")
        assert ClusterState.load("c%d" % trial, str(tmp_path)).cluster_id == \
            "c%d-%08x" % (trial, winner)


def _create_in_child(directory, name, cid, go, results):
    go.wait()
    try:
        ClusterState.create(ClusterRecord(name=name, cluster_id=cid), directory)
        results.put((cid, "won"))
    except StateError:
        results.put((cid, "lost"))


def test_two_processes_creating_one_name_exactly_one_wins(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(25):
        go, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_create_in_child, args=(
            str(tmp_path), "p%d" % trial, "p%d-%08x" % (trial, i), go, results))
            for i in range(2)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(10)
        outcomes = dict(results.get(timeout=5) for _ in procs)
        assert sorted(outcomes.values()) == ["lost", "won"]
        winner = next(c for c, o in outcomes.items() if o == "won")
        assert ClusterState.load("p%d" % trial, str(tmp_path)).cluster_id == winner


def test_create_never_follows_a_symlink(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious")
    os.symlink(target, tmp_path / "c.json")
    with pytest.raises(StateError, match="already recorded"):
        ClusterState.create(ClusterRecord(name="c", cluster_id="c-1"), str(tmp_path))
    assert target.read_text() == "precious"


def test_names_keep_their_pattern(tmp_path):
    for bad in ("../x", "a/b", "Upper", "", ".hidden"):
        with pytest.raises(StateError, match="not a cluster name"):
            ClusterState.create(ClusterRecord(name=bad, cluster_id="x-1"), str(tmp_path))
        with pytest.raises(StateError, match="not a cluster name"):
            ClusterState.load(bad, str(tmp_path))
    with pytest.raises(StateError, match="valid cluster id"):
        ClusterState.create(ClusterRecord(name="c", cluster_id="../../k"), str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_changes_are_made_on_the_record_reloaded_under_the_lock(tmp_path):
    ClusterState.create(ClusterRecord(name="c", cluster_id="c-1"), str(tmp_path))
    a = ClusterState.load("c", str(tmp_path))  # two processes' views of one record
    b = ClusterState.load("c", str(tmp_path))
    a.created("servers", "s1", "id1")
    b.created("servers", "s2", "id2")
    with a.locked():
        a.record.detached = True
        a.save()
    b.intend("keypairs", "cc-c-1")
    final = ClusterState.load("c", str(tmp_path))
    assert sorted(final.resources["servers"]) == ["s1", "s2"]
    assert final.record.detached is True and "cc-c-1" in final.resources["keypairs"]
    assert b.record.detached is True  # b saw a's change when it took the lock


def test_concurrent_writers_lose_nothing(tmp_path):
    ClusterState.create(ClusterRecord(name="c", cluster_id="c-1"), str(tmp_path))

    def writer(w):
        st = ClusterState.load("c", str(tmp_path))
        for i in range(10):
            st.created("servers", "w%d-%d" % (w, i), "id")
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ClusterState.load("c", str(tmp_path)).resources["servers"]) == 80


def test_locked_is_reentrant_and_refuses_a_record_replaced_by_another_cluster(tmp_path):
    st = ClusterState.create(ClusterRecord(name="c", cluster_id="c-1"), str(tmp_path))
    with st.locked():
        st.created("servers", "s1", "id1")  # takes the lock again: must not deadlock
    st.remove()
    ClusterState.create(ClusterRecord(name="c", cluster_id="c-2"), str(tmp_path))
    with pytest.raises(StateError, match="another cluster"):
        st.created("servers", "s2", "id2")
    st.remove()  # the stale view removes nothing of the new cluster
    assert ClusterState.load("c", str(tmp_path)).cluster_id == "c-2"


def test_a_waiter_never_holds_a_lock_file_that_remove_unlinked(tmp_path):
    """A holds the lock; B waits on it; A's remove unlinks the lock file; C
    creates the name anew and holds the new lock. B must wait for C."""
    path = str(tmp_path / "c.json.lock")
    inside = []
    a_holds, c_holds, c_release = threading.Event(), threading.Event(), threading.Event()
    a_release = threading.Event()

    def holder(tag, holding, release, before_release=None):
        with state_mod._flock(path):
            inside.append((tag, "in"))
            holding.set()
            release.wait(10)
            if before_release:
                before_release()
            inside.append((tag, "out"))

    def b():
        with state_mod._flock(path):
            inside.append(("B", "in"))
            time.sleep(0.5)  # C arrives meanwhile
            inside.append(("B", "out"))

    ta = threading.Thread(target=holder, args=("A", a_holds, a_release,
                                               lambda: os.unlink(path)))
    ta.start()
    a_holds.wait(5)
    tb = threading.Thread(target=b)
    tb.start()
    time.sleep(0.2)  # B is blocked in flock on A's file
    a_release.set()
    ta.join(5)
    tc = threading.Thread(target=holder, args=("C", c_holds, c_release))
    tc.start()
    c_holds.wait(5)
    time.sleep(0.2)
    c_release.set()
    tb.join(5)
    tc.join(5)
    # B and C never overlap: whichever came first left before the other entered.
    b_in, b_out = inside.index(("B", "in")), inside.index(("B", "out"))
    c_in, c_out = inside.index(("C", "in")), inside.index(("C", "out"))
    assert b_out < c_in or c_out < b_in, inside


def test_keys_are_named_by_cluster_id_and_created_exclusively(tmp_path):
    one = ClusterState.create(ClusterRecord(name="c", cluster_id="c-00000001"), str(tmp_path))
    assert one.key_path("key") == str(tmp_path / "c-00000001.key")
    ClusterState.write_key(one.key_path("key"), "PRIVATE 1")
    assert oct(os.stat(one.key_path("key")).st_mode & 0o777) == "0o600"
    with pytest.raises(StateError, match="not overwriting"):
        ClusterState.write_key(one.key_path("key"), "PRIVATE 2")
    assert open(one.key_path("key")).read() == "PRIVATE 1"
    target = tmp_path / "target"
    target.write_text("precious")
    os.symlink(target, tmp_path / "link.key")
    with pytest.raises(StateError, match="not overwriting"):
        ClusterState.write_key(str(tmp_path / "link.key"), "PRIVATE 3")
    assert target.read_text() == "precious"


def test_second_up_of_a_recorded_name_is_a_state_error_before_any_api_call(tmp_path):
    ClusterState.create(ClusterRecord(name="c", cluster_id="c-1"), str(tmp_path))
    calls = []

    class Conn:
        config = types.SimpleNamespace(name="x", config={})

        def authorize(self):
            return "t"

        def __getattr__(self, name):  # any API use is recorded, and fails
            calls.append(name)
            raise AssertionError("API call %s" % name)
    c = Cluster(ClusterSpec(name="c", nodes=1, flavor="f", image="i"), conn=Conn(),
                state_dir=str(tmp_path))
    with pytest.raises(StateError, match="already recorded"):
        c.up()
    assert calls == [] and c.state is None
