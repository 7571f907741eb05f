"""A cluster closes the cloud connection it opened itself once it is deleted;
a connection given as ``conn=`` stays open (it is the caller's)."""
import types

from cloudcompute import config
from cloudcompute.cluster import Cluster
from cloudcompute.config import ClusterSpec


class Conn:
    def __init__(self, made):
        self.config = types.SimpleNamespace(name="x", config={})
        self.closed = 0
        made.append(self)

    def authorize(self):
        return "token"

    def close(self):
        self.closed += 1


def spec():
    return ClusterSpec(name="c", nodes=1, flavor="f", image="i")


def test_down_closes_the_connection_the_cluster_opened_and_reopens_on_use(
        monkeypatch, tmp_path):
    made = []
    monkeypatch.setattr(config.openstack, "connect", lambda **kw: Conn(made))
    c = Cluster(spec(), cloud="x", state_dir=str(tmp_path))
    first = c.conn
    c.down()  # nothing recorded: nothing to delete, the connection is let go
    assert first.closed == 1 and len(made) == 1
    assert c.conn is not first and len(made) == 2  # used again: opened again
    c.down()
    c.down()
    assert made[1].closed == 1  # closed once, not per call


def test_a_connection_given_by_the_caller_stays_open(tmp_path):
    made = []
    given = Conn(made)
    c = Cluster(spec(), conn=given, state_dir=str(tmp_path))
    c.down()
    assert given.closed == 0 and c.conn is given
