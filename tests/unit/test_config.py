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
