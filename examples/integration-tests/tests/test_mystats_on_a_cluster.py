"""mystats on real servers: clusters from cloudcompute's pytest plugin.

The cloud is OS_CLOUD (or --cc-cloud NAME); flavor and image come from the
marker, else from the ``cloudcompute:`` section of that cloud in clouds.yaml.
"""
import numpy as np
import pytest

import mystats

pytestmark = pytest.mark.cloudcompute(nodes=2)


@pytest.fixture(scope="module")
def cluster(cloudcompute_cluster_module):
    """Two nodes shared by the module's tests, deleted after the last one."""
    return cloudcompute_cluster_module()


def test_bootstrap_on_the_cluster_matches_a_local_run(cluster):
    seeds = range(8)
    remote = cluster.map(mystats.bootstrap_means, seeds)
    for got, seed in zip(remote, seeds, strict=True):
        np.testing.assert_array_equal(got, mystats.bootstrap_means(seed))


def test_interval_holds_the_sample_mean(cluster):
    low, high = mystats.confidence_interval(cluster.map(mystats.bootstrap_means, range(8)))
    assert low < mystats.sample().mean() < high


def test_a_cluster_of_its_own_leaves_nothing(cloudcompute_cluster, cloudcompute_leak_check):
    """A one-node cluster for this test alone; afterwards the leak check lists
    the cloud for anything tagged for it and fails the test if it finds some."""
    c = cloudcompute_cluster(nodes=1)
    assert c.run(mystats.bootstrap_means, 7, resamples=10).shape == (10,)
    assert cloudcompute_leak_check == [c.name]
