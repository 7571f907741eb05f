import json

import pytest

from cloudcompute.config import ClusterSpec, NodeGroup, Timeouts, validate
from cloudcompute.exceptions import ConfigError


def test_shorthand_makes_one_group():
    spec = validate(ClusterSpec(name="c1", nodes=3, flavor="m1.tiny", image="img"))
    assert [(g.name, g.count, g.flavor, g.image) for g in spec.groups] == [
        ("node", 3, "m1.tiny", "img")]
    assert spec.total_nodes == 3


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate(ClusterSpec(name="Bad Name!", nodes=0, floating_ips="sometimes",
                             cidr="10.0.0.300/24", timeouts=Timeouts(active=-1)))
    text = str(err.value)
    for fragment in ("name 'Bad Name!'", "count must be an integer >= 1, got 0",
                     "floating_ips 'sometimes': allowed values are auto, always, never",
                     "cidr", "flavor is required", "image is required",
                     "timeouts.active"):
        assert fragment in text
    assert len(err.value.problems) >= 7


def test_groups_and_nodes_are_exclusive_and_names_unique():
    with pytest.raises(ConfigError, match="either nodes or groups"):
        validate(ClusterSpec(name="c", nodes=1, flavor="f", image="i",
                             groups=[NodeGroup("a", 1)]))
    with pytest.raises(ConfigError, match="used twice"):
        validate(ClusterSpec(name="c", flavor="f", image="i",
                             groups=[NodeGroup("a", 1), NodeGroup("a", 2)]))


def test_min_nodes_within_count():
    with pytest.raises(ConfigError, match="min_nodes 5"):
        validate(ClusterSpec(name="c", nodes=2, flavor="f", image="i", min_nodes=5))


def test_settings_fill_only_what_is_unset():
    spec = ClusterSpec(name="c", nodes=2, image="mine", floating_ips="always")
    filled = validate(spec.with_settings({"image": "theirs", "flavor": "m1.tiny",
                                          "network": "private", "floating_ips": "never"}))
    assert filled.groups[0].image == "mine"
    assert filled.groups[0].flavor == "m1.tiny"
    assert filled.network == "private"
    assert filled.floating_ips == "always"
    assert spec.network is None  # the caller's spec is not changed


def test_metadata_must_be_short_strings():
    with pytest.raises(ConfigError, match="metadata"):
        validate(ClusterSpec(name="c", nodes=1, flavor="f", image="i",
                             metadata={"k": "v" * 300}))


def test_create_network_ignores_the_default_network_and_excludes_network():
    spec = ClusterSpec(name="c", nodes=1, flavor="f", image="i", create_network=True)
    assert validate(spec.with_settings({"network": "private"})).network is None
    with pytest.raises(ConfigError, match="either network"):
        validate(ClusterSpec(name="c", nodes=1, flavor="f", image="i", network="n",
                             create_network=True))


HOSTILE_USERS = ["-oProxyCommand=touch /tmp/x", "Root", "a b", "", "x" * 33, "user@host",
                 "deb\nian", "-l", "9lives", "ü"]


@pytest.mark.parametrize("user", HOSTILE_USERS)
def test_ssh_user_must_be_a_posix_user_name(user):
    with pytest.raises(ConfigError, match="ssh_user"):
        validate(ClusterSpec(name="c", nodes=1, flavor="f", image="i", ssh_user=user))
    # the same value from clouds.yaml's cloudcompute section
    with pytest.raises(ConfigError, match="ssh_user"):
        validate(ClusterSpec(name="c", nodes=1, flavor="f", image="i").with_settings(
            {"ssh_user": user}))


@pytest.mark.parametrize("user", ["debian", "_svc", "ubuntu-2", "a" * 32, "cloud_user"])
def test_ordinary_user_names_pass(user):
    assert validate(ClusterSpec(name="c", nodes=1, flavor="f", image="i",
                                ssh_user=user)).ssh_user == user


def _preflight_conn(image_user):
    import types
    flavor = types.SimpleNamespace(id="f1", name="f", vcpus=1, ram=512)
    image = types.SimpleNamespace(id="i1", name="i", status="active",
                                  properties={"os_admin_user": image_user})
    net = types.SimpleNamespace(id="n1", name="n")
    quota = types.SimpleNamespace(usage={}, instances=-1, cores=-1, ram=-1)
    return types.SimpleNamespace(
        compute=types.SimpleNamespace(flavors=lambda: [flavor],
                                      get_quota_set=lambda p, usage: quota),
        image=types.SimpleNamespace(images=lambda name: [i for i in [image] if i.name == name]),
        network=types.SimpleNamespace(networks=lambda name: [n for n in [net] if n.name == name],
                                      get_quota=lambda p, details: types.SimpleNamespace()),
        current_project_id="p1")


def test_a_hostile_user_from_an_image_property_is_refused_by_preflight():
    from cloudcompute.exceptions import PreflightError
    from cloudcompute.provision import preflight
    spec = validate(ClusterSpec(name="c", nodes=1, flavor="f", image="i", network="n",
                                floating_ips="never"))
    with pytest.raises(PreflightError, match=r"os_admin_user '-oProxyCommand=touch /tmp/x'"):
        preflight.resolve(_preflight_conn("-oProxyCommand=touch /tmp/x"), spec)
    assert preflight.resolve(_preflight_conn("debian"), spec).ssh_user == "debian"
    # a user named in the spec wins, and the image's property is then not used at all
    spec.ssh_user = "admin"
    assert preflight.resolve(_preflight_conn("-oProxyCommand=x"), spec).ssh_user == "admin"


def test_attach_refuses_a_recorded_hostile_user(tmp_path):
    from cloudcompute.cluster import Cluster
    from cloudcompute.exceptions import StateError
    (tmp_path / "c.json").write_text(json.dumps(
        {"name": "c", "cluster_id": "c-1", "ssh": {"user": "-oProxyCommand=x"}}))
    with pytest.raises(StateError, match="ssh.user '-oProxyCommand=x' is not a user name"):
        Cluster.attach("c", conn=object(), state_dir=str(tmp_path))


def test_a_spec_survives_its_record():
    from cloudcompute.config import (ClusterSpec, NodeGroup, Timeouts, spec_from_dict,
                                     spec_to_dict)
    spec = ClusterSpec(name="rec", groups=[NodeGroup("a", 2, "m1.small", "img", slots=3)],
                       timeouts=Timeouts(ssh=42, node_silence=7), max_result_bytes=1 << 30)
    data = spec_to_dict(spec)
    data["a_field_from_a_later_version"] = 1
    back = spec_from_dict(data)
    assert back == spec and back.timeouts.ssh == 42 and back.groups[0].slots == 3


def test_attach_keeps_the_recorded_spec_and_its_timeouts(tmp_path):
    from cloudcompute.cluster import Cluster
    from cloudcompute.record import ClusterRecord
    from cloudcompute.state import ClusterState
    timeouts = Timeouts(ssh=42, active=77, node_silence=7)
    spec = validate(ClusterSpec(name="c", nodes=2, flavor="f", image="i", network="n",
                                floating_ips="never", timeouts=timeouts))
    ClusterState.create(ClusterRecord(name="c", cluster_id="c-1", cloud="there", spec=spec),
                        str(tmp_path))

    class Conn:  # what attach needs of a Connection: that it authorizes
        authorized = 0

        def authorize(self):
            self.authorized += 1

    conn = Conn()
    cluster = Cluster.attach("c", conn=conn, state_dir=str(tmp_path))
    assert cluster.conn is conn and conn.authorized == 1
    assert cluster.spec.timeouts == timeouts and cluster.spec.timeouts.ssh == 42
    assert cluster.spec == spec and cluster.spec is not spec  # read back from the file
    assert cluster.state.record.cloud == "there" and cluster.name == "c"
