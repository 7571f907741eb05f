"""cloudcompute: batch compute on any OpenStack cloud.

Provision a cluster, ship NumPy/pandas work to it over SSH, collect the
results and delete every resource again::

    from cloudcompute import Cluster, ClusterSpec

    def square(x):
        return x * x

    if __name__ == "__main__":
        with Cluster(ClusterSpec(name="demo", nodes=3), cloud="devstack") as c:
            squares = c.map(square, range(10))
"""
import logging

from cloudcompute import redact
from cloudcompute.cluster import Cluster
from cloudcompute.config import ClusterSpec, NodeGroup, Timeouts, connect
from cloudcompute.exceptions import *  # noqa: F401,F403
from cloudcompute.exceptions import CloudComputeError

__all__ = ["Cluster", "ClusterSpec", "NodeGroup", "Timeouts", "connect",
           "CloudComputeError"]
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
# keystoneauth and openstacksdk log request bodies at DEBUG: user_data (our nodes'
# private host keys), passwords, secrets. Redact them whoever configures logging.
redact.install()
