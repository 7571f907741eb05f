"""Jobs.get: what a node sends is capped before it is read."""
import types

import pytest

from cloudcompute.config import ClusterSpec
from cloudcompute.exceptions import SSHError
from cloudcompute.jobs import wire
from cloudcompute.jobs.api import Jobs
from cloudcompute.record import NodeInfo
from cloudcompute.ssh import bulk


class Node:
    """A connection whose download announces ``size`` bytes, read as the real one is."""

    def __init__(self, size):
        self.size, self.caps = size, []

    def download(self, path, sha256=None, progress=None, remove=False, max_bytes=None):
        self.caps.append(max_bytes)
        stream = iter([self.size.to_bytes(8, "big"), b"x" * min(self.size, 16)])

        def read_into(view):
            chunk = next(stream, b"")
            view[:len(chunk)] = chunk
            return len(chunk)
        return bulk.read_sized(read_into, "n0", path, progress, max_bytes)


def jobs(node, **spec):
    host = types.SimpleNamespace(spec=ClusterSpec(name="c", **spec), state=None,
                                 nodes=[NodeInfo("n0", "g")], name="c",
                                 connection=lambda name: node)
    return Jobs(host)


def test_get_refuses_a_file_over_the_spec_cap_before_reading_it():
    node = Node(1 << 40)  # a terabyte announced, 16 bytes sent
    with pytest.raises(SSHError, match="announced 1099511627776 bytes; the cap"):
        jobs(node, max_result_bytes=1 << 20).get("/data/big.bin")
    assert node.caps == [1 << 20]


def test_get_caps_by_memory_by_default_and_as_asked():
    node = Node(16)
    assert jobs(node).get("/data/small.bin") == b"x" * 16
    assert jobs(node).get("/data/small.bin", max_bytes=16) == b"x" * 16
    with pytest.raises(SSHError, match="the cap"):
        jobs(node).get("/data/small.bin", max_bytes=15)
    assert node.caps == [wire.default_max_result_bytes(), 16, 15]
