import json
import os
import stat

import pytest

from cloudcompute.exceptions import StateError
from cloudcompute.record import ClusterRecord
from cloudcompute.state import ClusterState


def test_intent_is_on_disk_before_the_id(tmp_path):
    st = ClusterState.create(ClusterRecord(name="c1", cluster_id="c1-x"), str(tmp_path))
    st.intend("servers", "cc-c1-x-node-0", group="node")
    on_disk = json.load(open(st.path))
    assert on_disk["resources"]["servers"]["cc-c1-x-node-0"]["id"] is None
    st.created("servers", "cc-c1-x-node-0", "abc", fixed_ip="10.0.0.5")
    again = ClusterState.load("c1", str(tmp_path))
    entry = again.resources["servers"]["cc-c1-x-node-0"]
    assert entry.id == "abc" and entry.group == "node" and entry.fixed_ip == "10.0.0.5"
    assert stat.S_IMODE(os.stat(st.path).st_mode) == 0o600


def test_name_taken_and_missing_are_clear_errors(tmp_path):
    ClusterState.create(ClusterRecord(name="c1", cluster_id="a"), str(tmp_path))
    with pytest.raises(StateError, match="already recorded"):
        ClusterState.create(ClusterRecord(name="c1", cluster_id="b"), str(tmp_path))
    with pytest.raises(StateError, match="no cluster named 'nope'"):
        ClusterState.load("nope", str(tmp_path))


def test_listing_forget_remove(tmp_path):
    st = ClusterState.create(ClusterRecord(name="c1", cluster_id="a"), str(tmp_path))
    st.created("keypairs", "cc-a", "cc-a")
    st.intend("networks", "cc-a")
    assert st.listing() == ["network cc-a (id unknown)", "keypair cc-a (cc-a)"]
    st.forget("networks", "cc-a")
    assert st.count() == 1
    st.remove()
    assert ClusterState.all(str(tmp_path)) == []


def test_unreadable_file_is_skipped_in_all(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    ClusterState.create(ClusterRecord(name="ok", cluster_id="a"), str(tmp_path))
    assert [s.name for s in ClusterState.all(str(tmp_path))] == ["ok"]


def test_remove_also_deletes_what_a_killed_writer_left(tmp_path):
    st = ClusterState.create(ClusterRecord(name="c", cluster_id="c-1"), str(tmp_path))
    (tmp_path / ".c.tmp-abc123.json").write_text("{")  # SIGKILL between write and rename
    (tmp_path / ".other.tmp-x.json").write_text("{")
    st.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-x.json"]


def test_every_save_syncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    """The rename that replaces the record is durable only once the directory is
    synced: an intent must survive a crash of the machine, not only of the process."""
    from cloudcompute import state
    st = ClusterState.create(ClusterRecord(name="c1", cluster_id="c1-x"), str(tmp_path))
    synced = []
    real_replace = os.replace

    def replace(src, dst):
        synced.append(("rename", dst))
        real_replace(src, dst)
    monkeypatch.setattr(state.os, "replace", replace)
    monkeypatch.setattr(state, "_fsync_dir", lambda d: synced.append(("sync", d)))
    st.intend("servers", "cc-c1-x-node-0")
    assert synced == [("rename", st.path), ("sync", str(tmp_path))]


def test_entries_ids_and_creates_in_flight_read_the_typed_record(tmp_path):
    st = ClusterState.create(ClusterRecord(name="c1", cluster_id="c1-x"), str(tmp_path))
    st.intend("servers", "b", group="node", host_keys=[])
    st.created("servers", "a", "id-z", group="node")
    st.intend("floating_ips", "a", port_id="p0")
    st.created("servers", "b", "id-b", status="ACTIVE")  # keeps what the intent said
    assert sorted((e.name, e.id, e.group, e.status) for e in st.entries("servers")) == [
        ("a", "id-z", "node", None), ("b", "id-b", "node", "ACTIVE")]
    assert st.ids("servers") == ["id-b", "id-z"] and st.ids("floating_ips") == []
    assert st.in_flight() == ["floating_ips a"]
    frozen = st.snapshot()
    frozen["servers"]["b"].status = "ERROR"
    assert [e.status for e in st.entries("servers")] == [None, "ACTIVE"]
    st.forget("servers", "a")
    assert sorted(frozen["servers"]) == ["a", "b"] and st.ids("servers") == ["id-b"]
    with pytest.raises(TypeError):
        st.intend("servers", "c", no_such_field=1)


def test_the_record_is_read_again_only_when_the_file_changed(tmp_path, monkeypatch):
    """A change under the lock reloads the record only if another writer (or
    nobody: an unsaved change) left the file other than this object's save."""
    st = ClusterState.create(ClusterRecord(name="c1", cluster_id="c1-x"), str(tmp_path))
    reads = []
    real = ClusterState._read
    monkeypatch.setattr(ClusterState, "_read", staticmethod(
        lambda path, name: reads.append(path) or real(path, name)))
    st.created("servers", "a", "id-a")
    st.created("servers", "b", "id-b")
    assert len(reads) <= 1  # the first change may read; its own saves are not re-read
    other = ClusterState.load("c1", str(tmp_path))
    other.created("servers", "c", "id-c")  # another writer
    reads.clear()
    st.created("servers", "d", "id-d")
    assert reads and st.ids("servers") == ["id-a", "id-b", "id-c", "id-d"]
    with st.locked():
        st.record.resources["servers"]["a"].status = "ERROR"  # never saved
    st.created("servers", "e", "id-e")
    assert [e.status for e in st.entries("servers")][0] is None
    assert ClusterState.load("c1", str(tmp_path)).ids("servers") == [
        "id-a", "id-b", "id-c", "id-d", "id-e"]


def test_many_intents_and_creates_are_one_write_each(tmp_path, monkeypatch):
    st = ClusterState.create(ClusterRecord(name="c", cluster_id="c-1"), str(tmp_path))
    saves = []
    real = ClusterState.save
    monkeypatch.setattr(ClusterState, "save", lambda self: (saves.append(1), real(self)))
    st.intend_all("servers", ["a", "b", "c"], group="w", batch="a")
    assert len(saves) == 1
    st.created_all("servers", [("a", "id-a", {"status": "ACTIVE"}), ("b", "id-b", {}),
                               ("a", "id-a", {"fixed_ip": "10.0.0.5"})])
    st.created_all("servers", [])  # nothing changed: nothing written
    assert len(saves) == 2
    on_disk = ClusterState.load("c", str(tmp_path))
    a, b, c = on_disk.entries("servers")
    assert (a.id, a.group, a.batch, a.status, a.fixed_ip) == ("id-a", "w", "a", "ACTIVE",
                                                              "10.0.0.5")
    assert (b.id, b.status) == ("id-b", None) and c.id is None
    assert on_disk.in_flight() == ["servers c"]
