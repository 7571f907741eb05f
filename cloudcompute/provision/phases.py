"""The phases of bringing a cluster up, each a function from typed values to
typed values, in the order ``Cluster.up`` runs them:

``record`` (the state file, before anything exists) -> ``base_resources``
(keys, security group, network) -> ``servers`` (created, ACTIVE) ->
``floating_ips`` -> ``open_ssh`` (the one inbound rule) -> ``wait_ssh``
(verified logins).

Every resource a phase creates is recorded in the cluster's state before the
call that creates it, so whatever phase fails, ``down()`` finds everything.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Dict, List

from cloudcompute import tags
from cloudcompute.config import ClusterSpec
from cloudcompute.exceptions import HostKeyMismatch
from cloudcompute.provision import resources
from cloudcompute.provision.preflight import Plan
from cloudcompute.provision.servers import ServerBuilder
from cloudcompute.record import ClusterRecord, NodeInfo, SSHAccess, directly_routable
from cloudcompute.ssh.client import NodeConnection
from cloudcompute.ssh.readiness import wait_for_ssh
from cloudcompute.state import ClusterState

LOG = logging.getLogger(__name__)
Progress = Callable[[str, str], None]


@dataclasses.dataclass(frozen=True)
class BaseResources:
    """What every server of the cluster is created with."""
    keypair: str
    key_file: str  # the client's private key for it
    internal_public_key: str  # the nodes' key to each other, authorized by user-data
    security_group_id: str
    security_group_name: str
    network_id: str


def record(conn: Any, spec: ClusterSpec, plan: Plan, state_dir: Any) -> ClusterState:
    """The cluster's new state file (created exclusively: a taken name is a
    StateError)."""
    now = time.time()
    return ClusterState.create(ClusterRecord(
        name=spec.name, cluster_id=tags.new_cluster_id(spec.name), cloud=conn.config.name,
        owner=tags.owner(), owner_id=tags.Owner.current(), created_at=now,
        expires_at=now + spec.ttl_hours * 3600, ssh=SSHAccess(user=plan.ssh_user),
        spec=spec), state_dir)


def base_resources(conn: Any, st: ClusterState, spec: ClusterSpec,
                   plan: Plan) -> BaseResources:
    """Keypair, internal key, security group and (unless the plan names one) a
    network with its subnet and router."""
    keypair, key_file = resources.create_keypair(conn, st, spec.key_file)
    internal_public = resources.create_internal_key(st)
    sg = resources.create_security_group(conn, st)
    network_id = plan.network_id or resources.create_network(
        conn, st, spec.cidr, plan.external_network_id)
    return BaseResources(keypair, key_file, internal_public, sg.id, sg.name, network_id)


def servers(conn: Any, st: ClusterState, spec: ClusterSpec, plan: Plan,
            base: BaseResources, progress: Progress, timings: Dict[str, float],
            since: float) -> ServerBuilder:
    """Create every server and wait until enough are ACTIVE (replacing or
    dropping failed ones as the spec allows); ``builder.active_nodes()`` are
    the cluster's nodes. Adds ``create`` and ``active`` to ``timings``, in
    seconds from ``since`` (a ``time.monotonic()``)."""
    builder = ServerBuilder(conn, st, spec, plan, base.network_id, base.security_group_name,
                            base.keypair, progress,
                            authorized_keys=[base.internal_public_key])
    builder.create_all()
    timings["create"] = time.monotonic() - since
    builder.wait_active()
    timings["active"] = time.monotonic() - since
    return builder


def floating_ips(builder: ServerBuilder, spec: ClusterSpec, plan: Plan,
                 nodes: List[NodeInfo]) -> None:
    """A floating IP for each node that needs one: always, or (``auto``) where
    this host has no direct route to the node's fixed IP."""
    for node in nodes:
        if spec.floating_ips == "always" or (
                spec.floating_ips == "auto" and plan.external_network_id
                and not directly_routable(node.fixed_ip or "")):
            builder.attach_floating_ip(node)


def open_ssh(conn: Any, spec: ClusterSpec, base: BaseResources,
             nodes: List[NodeInfo]) -> str:
    """Admit SSH from ``spec.ssh_cidr``, else from this host's own address as
    the nodes see it; return the CIDR admitted."""
    cidr = spec.ssh_cidr or resources.caller_cidr(nodes[0].ssh_address)
    resources.allow_ssh(conn, base.security_group_id, cidr)
    return cidr


def wait_ssh(builder: ServerBuilder, nodes: List[NodeInfo], key_file: str, user: str,
             timeout: float, progress: Progress) -> Dict[str, NodeConnection]:
    """A logged-in connection to every node, its host key verified against the
    one recorded (from user-data, else the console log); WaitTimeout after
    ``timeout`` seconds. Stops every probe at once when one fails."""
    deadline = time.monotonic() + timeout
    stop = threading.Event()

    def one(node: NodeInfo) -> NodeConnection:
        if not node.keys_injected:
            builder.console_host_keys(node, deadline)
        conn = NodeConnection(node.name, node.ssh_address, user, key_file, node.host_keys)
        try:
            wait_for_ssh(conn, deadline, stop=stop)
        except HostKeyMismatch:
            # The cloud may have ignored user-data: trust the console log only.
            conn.close()
            builder.console_host_keys(node, min(deadline, time.monotonic() + 30))
            if node.host_keys == conn.host_keys:
                raise
            conn = NodeConnection(node.name, node.ssh_address, user, key_file,
                                  node.host_keys)
            wait_for_ssh(conn, deadline, stop=stop)
        if stop.is_set():  # another node failed meanwhile: nobody takes this one
            conn.close()
        node.timings["ssh_ready"] = time.monotonic() - builder.t0
        progress("ssh", node.name)
        return conn

    # No with-block: its exit would wait for every probe, and Ctrl-C must
    # reach the rollback at once.
    pool = cf.ThreadPoolExecutor(max_workers=min(16, len(nodes)))
    connections: Dict[str, NodeConnection] = {}
    try:
        futures = {n.name: pool.submit(one, n) for n in nodes}
        for name, f in futures.items():
            connections[name] = f.result()
    except BaseException:
        for c in connections.values():
            c.close()
        raise
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
    return connections
