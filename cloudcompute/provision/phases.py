"""The phases of bringing a cluster up, each a function from typed values to
typed values, in the order ``Cluster.up`` runs them:

``record`` (the state file, before anything exists) -> ``base_resources``
(keys, security group, network) -> ``servers`` (created, ACTIVE) ->
``floating_ips`` -> ``open_ssh`` (the one inbound rule) -> ``wait_ssh``
(verified logins). ``servers_and_ssh`` runs the last four overlapped: a
node's login starts as it turns ACTIVE.

Every resource a phase creates is recorded in the cluster's state before the
call that creates it, so whatever phase fails, ``down()`` finds everything.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from cloudcompute import retry, tags
from cloudcompute.config import ClusterSpec
from cloudcompute.exceptions import HostKeyMismatch, WaitTimeout
from cloudcompute.provision import resources
from cloudcompute.provision.preflight import Plan
from cloudcompute.provision.servers import ServerBuilder
from cloudcompute.record import ClusterRecord, NodeInfo, SSHAccess, directly_routable
from cloudcompute.ssh.client import NodeConnection
from cloudcompute.ssh.readiness import banner_probe, wait_for_ssh
from cloudcompute.state import ClusterState

T = TypeVar("T")

LOG = logging.getLogger(__name__)
Progress = Callable[[str, str], None]
BANNER_POLL = 0.25


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


def wait_for_banner(node: NodeInfo, deadline: float, stop: threading.Event) -> None:
    """Until sshd on ``node`` sends its banner (no login, nothing trusted)."""
    t0 = time.monotonic()
    while not banner_probe(node.ssh_address, timeout=min(
            1.0, max(0.1, deadline - time.monotonic()))):
        if time.monotonic() >= deadline or stop.is_set():
            raise WaitTimeout("SSH banner of %s (%s)%s" % (
                node.name, node.ssh_address, " (stopped)" if stop.is_set() else ""),
                deadline - t0, [node.name])
        retry.SLEEP(BANNER_POLL)


def login(builder: ServerBuilder, node: NodeInfo, key_file: str, user: str,
          deadline: float, stop: threading.Event, progress: Progress) -> NodeConnection:
    """A logged-in connection to ``node``, its host key verified against the
    one recorded (from user-data, else the console log)."""
    if not node.keys_injected:
        # cloud-init prints the keys as sshd starts: ask for the console
        # log once sshd answers, not every second before.
        wait_for_banner(node, deadline, stop)
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
        conn = NodeConnection(node.name, node.ssh_address, user, key_file, node.host_keys)
        wait_for_ssh(conn, deadline, stop=stop)
    if stop.is_set():  # another node failed meanwhile: nobody takes this one
        conn.close()
    node.timings["ssh_ready"] = time.monotonic() - builder.t0
    progress("ssh", node.name)
    return conn


class Logins:
    """Logins to nodes started one by one (each may start before others are
    ACTIVE) and collected at the end; ``close`` stops those still running.

    No with-block around the pool: its exit would wait for every probe, and
    Ctrl-C must reach the rollback at once."""

    def __init__(self, builder: ServerBuilder, key_file: str, user: str, timeout: float,
                 progress: Progress):
        self.builder, self.key_file, self.user = builder, key_file, user
        self.timeout, self.progress = timeout, progress
        self.stop = threading.Event()
        self.pool = cf.ThreadPoolExecutor(max_workers=16)
        self.futures: Dict[str, "cf.Future[NodeConnection]"] = {}

    def start(self, node: NodeInfo, deadline: Optional[float] = None) -> None:
        """Probe and log in to ``node`` in the background, until ``deadline``
        (default: ``timeout`` seconds from now)."""
        deadline = deadline if deadline is not None else time.monotonic() + self.timeout
        self.futures[node.name] = self.pool.submit(
            login, self.builder, node, self.key_file, self.user, deadline, self.stop,
            self.progress)

    def collect(self, nodes: List[NodeInfo]) -> Dict[str, NodeConnection]:
        """The connection to each of ``nodes`` (started here if not yet); on
        the first failure every probe stops, what was opened is closed, and
        the failure is raised."""
        connections: Dict[str, NodeConnection] = {}
        try:
            for n in nodes:
                if n.name not in self.futures:
                    self.start(n)
            for n in nodes:
                connections[n.name] = self.futures[n.name].result()
        except BaseException:
            for c in connections.values():
                c.close()
            self.close()
            raise
        self.stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        return connections

    def close(self) -> None:
        """Stop every probe; close the connections already made."""
        self.stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for f in self.futures.values():  # now, or as each probe still running ends
            f.add_done_callback(_close_result)


def _close_result(f: "cf.Future[NodeConnection]") -> None:
    if not f.cancelled() and f.exception() is None:
        f.result().close()


def wait_ssh(builder: ServerBuilder, nodes: List[NodeInfo], key_file: str, user: str,
             timeout: float, progress: Progress) -> Dict[str, NodeConnection]:
    """A logged-in connection to every node, its host key verified against the
    one recorded (from user-data, else the console log); WaitTimeout after
    ``timeout`` seconds. Stops every probe at once when one fails."""
    deadline = time.monotonic() + timeout
    logins = Logins(builder, key_file, user, timeout, progress)
    for n in nodes:
        logins.start(n, deadline)
    return logins.collect(nodes)


def servers_and_ssh(conn: Any, st: ClusterState, spec: ClusterSpec, plan: Plan,
                    base: BaseResources, progress: Progress, timings: Dict[str, float],
                    since: float, while_ssh: Optional[Callable[[List[NodeInfo]], T]] = None,
                    ) -> Tuple[ServerBuilder, Dict[str, NodeConnection], Optional[T]]:
    """``servers``, ``floating_ips``, ``open_ssh`` and ``wait_ssh`` overlapped:
    each node gets its floating IP (if it needs one) and its SSH probe as it
    turns ACTIVE, while others still build; the SSH rule is added with the
    first. Each node has ``timeouts.ssh`` from its own ACTIVE. Once every
    node is ACTIVE, ``while_ssh(nodes)`` runs beside the SSH waits; its
    result is the third value (its error is raised after theirs). Adds
    ``create``, ``active`` and ``ssh`` to ``timings``."""
    builder = ServerBuilder(conn, st, spec, plan, base.network_id, base.security_group_name,
                            base.keypair, progress,
                            authorized_keys=[base.internal_public_key])
    logins = Logins(builder, base.key_file, plan.ssh_user, spec.timeouts.ssh, progress)
    opened: List[str] = []

    def on_active(node: NodeInfo) -> None:
        floating_ips(builder, spec, plan, [node])
        if not opened:
            opened.append(open_ssh(conn, spec, base, [node]))
        logins.start(node)

    try:
        builder.create_all()
        timings["create"] = time.monotonic() - since
        builder.wait_active(on_active=on_active)
        timings["active"] = time.monotonic() - since
    except BaseException:
        logins.close()
        raise
    if while_ssh is None:
        connections = logins.collect(builder.active_nodes())
        timings["ssh"] = time.monotonic() - since
        return builder, connections, None
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        beside = pool.submit(while_ssh, builder.active_nodes())
        try:
            connections = logins.collect(builder.active_nodes())
        finally:
            cf.wait([beside])
        timings["ssh"] = time.monotonic() - since
        try:
            return builder, connections, beside.result()
        except BaseException:
            for c in connections.values():
                c.close()
            raise
