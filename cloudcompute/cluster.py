"""The Cluster facade: ``up()`` -> run work -> ``down()``, as a context manager.

``up()`` runs pre-flight, creates keypair, security group, (network) and
servers, waits for ACTIVE and SSH, and rolls everything back on any
failure, Ctrl-C or SIGTERM included. ``Cluster.attach(name)`` picks up a
cluster recorded by another process.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as os_exc

from cloudcompute import config, retry, tags
from cloudcompute.autodown import launch as autodown
from cloudcompute.config import ClusterSpec
from cloudcompute.exceptions import (CloudComputeError, ProvisioningError,
                                     StateError)
from cloudcompute.jobs.api import GroupResult, Jobs
from cloudcompute.jobs.detached import Job
from cloudcompute.jobs.executor import Executor, TaskResult
from cloudcompute.provision import phases, preflight
from cloudcompute.record import ClusterSummary, NodeInfo, NodeSummary
from cloudcompute.ssh import hostkeys
from cloudcompute.ssh.client import NodeConnection
from cloudcompute.state import ClusterState
from cloudcompute.teardown import Teardown

LOG = logging.getLogger(__name__)


class Terminated(BaseException):
    """SIGTERM arrived; raised so that cleanup runs as for Ctrl-C."""


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM into an exception (SIGINT already is one) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        raise Terminated("SIGTERM")
    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Cluster:
    """A cluster of servers reachable over SSH, with its own cloud resources."""

    def __init__(self, spec: ClusterSpec, cloud: Optional[str] = None, conn: Any = None,
                 state_dir: Optional[str] = None,
                 progress: Optional[Callable[[str, str], None]] = None,
                 record: Optional[ClusterState] = None):
        """``progress(phase, node)`` is called as each node is created, goes ACTIVE
        and answers SSH (phases ``created``, ``active``, ``ssh``), from any thread.
        ``record``: a cluster's state, whose spec was validated when it was made
        (``attach`` passes it)."""
        self.progress = progress or (lambda phase, node: None)
        self._cloud = cloud
        self._owns_conn = conn is None
        self._conn: Optional[Any] = config.connect(cloud, conn)
        self.spec = spec if record is not None else config.validate(
            spec.with_settings(config.cloud_settings(self.conn)))
        self.state_dir = state_dir
        self.state: Optional[ClusterState] = None
        self.nodes: List[NodeInfo] = []
        self.timings: Dict[str, Any] = {}
        self._connections: Dict[str, NodeConnection] = {}
        self.jobs = Jobs(self)
        if record is not None:  # attach: the cluster as another process recorded it
            self.state = record
            self.nodes = list(record.record.nodes)
            self.timings = dict(record.record.timings)

    @property
    def conn(self) -> Any:
        """The cloud connection (opened again if :meth:`release_cloud` closed it)."""
        if self._conn is None:
            self._conn = config.connect(self._cloud)
        return self._conn

    def release_cloud(self) -> None:
        """Close the HTTP connections of a cloud connection this cluster opened
        itself (one given as ``conn=`` is the caller's). Idle keep-alive
        connections otherwise stay open until garbage collection, and an
        eventlet API server gives each one of its limited green threads."""
        if self._owns_conn and self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    # -- lifecycle -----------------------------------------------------
    def __enter__(self) -> "Cluster":
        # SIGTERM inside the with-block must reach __exit__ as Ctrl-C does.
        self._signals = _signals_raise()
        self._signals.__enter__()
        try:
            if self.state is None:
                self.up()
        except BaseException:
            self._signals.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.down()
        finally:
            self._signals.__exit__(None, None, None)

    @property
    def name(self) -> str:
        return self.spec.name

    def up(self) -> "Cluster":
        """Create the cluster and wait until every node answers SSH.

        A name already recorded in the state directory is a StateError before
        anything is done; of two ``up`` racing for one name, exactly one gets
        the record (created exclusively) and the other a StateError."""
        if ClusterState.exists(self.spec.name, self.state_dir):
            raise StateError("a cluster named %r is already recorded in %s; attach to it, "
                             "or run down/gc first" % (self.spec.name, ClusterState.path_for(
                                 self.spec.name, self.state_dir)))
        with _signals_raise():
            try:
                self._up()
            except BaseException as exc:
                LOG.error("bringing up %s failed (%s); rolling back", self.name,
                          exc.__class__.__name__)
                err = exc
                if isinstance(exc, (os_exc.SDKException, ks_exc.ClientException)):
                    err = ProvisioningError("cloud API error while bringing up %s: %s"
                                            % (self.name, exc))
                self._rollback(err)
                if err is exc:
                    raise
                raise err from exc
        return self

    def _up(self) -> None:
        """The phases of :mod:`cloudcompute.provision.phases`, timed."""
        t0 = time.monotonic()
        plan = preflight.resolve(self.conn, self.spec)
        self.timings["preflight"] = time.monotonic() - t0
        st = self.state = phases.record(self.conn, self.spec, plan, self.state_dir)
        t1 = time.monotonic()
        base = phases.base_resources(self.conn, st, self.spec, plan)
        # servers, floating IPs, the SSH rule and logins, each node's login
        # starting as it turns ACTIVE
        # the watchdog's credential is made while the nodes boot
        prepare = functools.partial(autodown.prepare, self.conn, st, self.spec) \
            if self.spec.autodown else None
        builder, connections, prepared = phases.servers_and_ssh(
            self.conn, st, self.spec, plan, base, self.progress, self.timings, since=t1,
            while_ssh=prepare)
        nodes = builder.active_nodes()
        self._connections.update(connections)
        self.timings["total"] = time.monotonic() - t0
        self.nodes = sorted(nodes, key=lambda n: n.name)
        with st.locked():
            st.record.nodes = list(self.nodes)
            st.record.timings = dict(self.timings)
            st.save()
        if self.spec.autodown:
            autodown.start(self, prepared)
        LOG.info("cluster %s up: %d nodes in %.1fs (%s)", self.name, len(self.nodes),
                 self.timings["total"], ", ".join("%s %.2fs" % kv for kv in
                                                  self.timings.items()))

    def _rollback(self, cause: BaseException) -> None:
        if self.state is None:
            if isinstance(cause, ProvisioningError):
                cause.rolled_back = True  # nothing had been created
            self.release_cloud()
            return
        try:
            self.down()
        except CloudComputeError as exc:
            LOG.error("rollback of %s incomplete: %s (kept in %s)", self.name, exc,
                      self.state.path)
            if isinstance(cause, ProvisioningError):
                cause.resources = self.state.snapshot()
            return
        if isinstance(cause, ProvisioningError):
            cause.rolled_back = True

    def down(self) -> Dict[str, float]:
        """Delete everything this cluster created; raise TeardownError if anything is left."""
        from cloudcompute import daskcluster
        daskcluster.stop(self)  # Dask's processes first, while their nodes still answer
        self.close_connections()
        if self.state is None:
            self.release_cloud()
            return {}
        try:
            timings = Teardown(self.conn, self.state, self.spec.timeouts.teardown).run()
        finally:
            self.release_cloud()
        self.timings["teardown"] = timings["total"]
        self.state = None
        self.nodes = []
        return timings

    def detach(self) -> None:
        """Leave the cluster running after this process exits: gc then only uses
        its expiry (``ttl_hours``), on this machine and on any other.

        The mark goes into every server's metadata (``cc_detached``), where gc
        looks wherever it runs, and into the state file. Raises
        CloudComputeError naming the servers it could not mark."""
        if self.state is not None:
            with self.state.locked():
                self.state.record.detached = True
                self.state.save()
            failed = []
            for sid in self._server_ids():
                try:
                    # partial: the metadata's keys are not retry.call's own (attempts)
                    retry.call(functools.partial(self.conn.compute.set_server_metadata, sid,
                                                 **{tags.META_DETACHED: "1"}))
                except os_exc.NotFoundException:
                    pass  # deleted meanwhile: nothing left to protect
                except os_exc.SDKException as exc:
                    failed.append("%s (%s)" % (sid, exc))
            if failed:
                raise CloudComputeError("cluster %s: could not mark as detached: %s; gc may "
                                        "take these servers once their owner is gone"
                                        % (self.name, ", ".join(failed)))
        self.close_connections()

    def extend(self, hours: float) -> float:
        """Move the deadline (``ttl_hours``) to ``max(deadline, now) + hours`` on every
        server, where the watchdog and gc read it; return it in epoch seconds."""
        return autodown.extend(self, hours)

    def _server_ids(self) -> List[str]:
        """The servers of this cluster: recorded, or found by its tag."""
        assert self.state is not None
        cluster_id = self.state.cluster_id
        ids = set(self.state.ids("servers"))
        ids.update(s.id for s in retry.call(lambda: list(self.conn.compute.servers(
            tags=tags.CLUSTER_TAG + cluster_id))))
        return sorted(ids)

    @classmethod
    def attach(cls, name: str, cloud: Optional[str] = None, conn: Any = None,
               state_dir: Optional[str] = None) -> "Cluster":
        """A Cluster object for a cluster another process created."""
        st = ClusterState.load(name, state_dir)  # its ssh user is checked as it is read
        spec = st.record.spec or ClusterSpec(name=name)
        self = cls(spec, cloud=cloud or st.record.cloud, conn=conn, state_dir=state_dir,
                   record=st)
        if not self.nodes and st.count() and not st.record.detached:
            LOG.warning("cluster %s has no ready nodes recorded (still coming up or "
                        "failed); down() will still delete its resources", name)
        return self

    def dask(self, **options: Any) -> Any:
        """A connected ``distributed.Client`` for Dask on this cluster (extra ``dask``).

        The scheduler runs on the first node, one worker per node; the client
        reaches them through SSH port forwards. The same Client comes back on
        a second call; its ``with`` block, and ``down()``, stop the Dask
        processes. Options: :class:`cloudcompute.daskcluster.DaskOptions`."""
        from cloudcompute import daskcluster
        return daskcluster.client(self, **options)

    # -- SSH -----------------------------------------------------------
    def connection(self, node: str) -> NodeConnection:
        """The verified SSH connection to ``node`` (opened on first use)."""
        if node not in self._connections:
            self._connections[node] = self.new_connection(node)
        return self._connections[node]

    def new_connection(self, node: str) -> NodeConnection:
        """A verified SSH connection to ``node`` of the caller's own (not shared,
        not closed by ``close_connections``; connects on first use)."""
        info = next((n for n in self.nodes if n.name == node), None)
        if info is None or self.state is None:
            raise StateError("no node %r in cluster %s" % (node, self.name))
        ssh = self.state.record.ssh
        if ssh.user is None or ssh.key_file is None:
            raise StateError("cluster %s: its record names no SSH user or key (%s)"
                             % (self.name, self.state.path))
        return NodeConnection(info.name, info.ssh_address, ssh.user, ssh.key_file,
                              info.host_keys)

    def close_connections(self) -> None:
        self.jobs.close()
        for c in self._connections.values():
            c.close()
        self._connections = {}

    def describe(self) -> ClusterSummary:
        """The nodes, their addresses and host key fingerprints, and the timings
        (``.to_dict()``: the same as JSON-able data)."""
        return ClusterSummary(
            self.name, self.state.cluster_id if self.state else None,
            [NodeSummary(n.name, n.group, n.server_id, n.address, n.fixed_ip, n.floating_ip,
                         [hostkeys.fingerprint(k) for k in n.host_keys], dict(n.timings))
             for n in self.nodes], dict(self.timings))

    # -- work (cloudcompute.jobs.api.Jobs runs it) ------------------------
    def executor(self) -> Executor:
        """The executor over the nodes (see :class:`cloudcompute.jobs.executor.Executor`)."""
        return self.jobs.executor()

    def node_names(self) -> List[str]:
        return self.jobs.node_names()

    def prepare(self, requirements: Sequence[str] = (), match_client: bool = False,
                wheels: Optional[str] = None) -> Dict[str, str]:
        """Make ``requirements`` importable on every node (:meth:`Jobs.prepare`)."""
        return self.jobs.prepare(requirements, match_client, wheels)

    def run(self, fn: Callable[..., Any], *args: Any, node: Optional[str] = None,
            allow_pickle: bool = False, timeout: Optional[float] = None,
            **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on one node; its return value (:meth:`Jobs.run`)."""
        return self.jobs.run(fn, *args, node=node, allow_pickle=allow_pickle,
                             timeout=timeout, **kwargs)

    def run_detailed(self, fn: Callable[..., Any], *args: Any, node: Optional[str] = None,
                     allow_pickle: bool = False, timeout: Optional[float] = None,
                     **kwargs: Any) -> TaskResult:
        """As ``run``, with the node, duration and peak memory of the task."""
        return self.jobs.run_detailed(fn, *args, node=node, allow_pickle=allow_pickle,
                                      timeout=timeout, **kwargs)

    def run_all(self, fn: Callable[..., Any], *args: Any, allow_pickle: bool = False,
                timeout: Optional[float] = None, **kwargs: Any) -> GroupResult:
        """``fn`` on every node at once; node -> value or exception."""
        return self.jobs.run_all(fn, *args, allow_pickle=allow_pickle, timeout=timeout,
                                 **kwargs)

    def map(self, fn: Callable[..., Any], items: Iterable[Any], allow_pickle: bool = False,
            star: bool = False, progress: Optional[Callable[[TaskResult], None]] = None,
            timeout: Optional[float] = None, return_exceptions: bool = False) -> List[Any]:
        """``[fn(x) for x in items]`` across every slot, in order (:meth:`Jobs.map`)."""
        return self.jobs.map(fn, items, allow_pickle, star, progress, timeout,
                             return_exceptions)

    def map_partitions(self, fn: Callable[..., Any], data: Any,
                       partitions: Optional[int] = None, allow_pickle: bool = False,
                       timeout: Optional[float] = None) -> Any:
        """Split, apply ``fn`` on the cluster, concatenate (:meth:`Jobs.map_partitions`)."""
        return self.jobs.map_partitions(fn, data, partitions, allow_pickle, timeout)

    def put(self, data: Any, remote_path: str, nodes: Optional[Sequence[str]] = None,
            progress: Optional[Callable[[int], None]] = None) -> None:
        """A file or array to the nodes, sent once by the client (:meth:`Jobs.put`)."""
        self.jobs.put(data, remote_path, nodes, progress)

    def get(self, remote_path: str, local_path: Optional[str] = None,
            node: Optional[str] = None,
            progress: Optional[Callable[[int], None]] = None,
            max_bytes: Optional[int] = None) -> Any:
        """A file from a node, saved or loaded, size-capped (:meth:`Jobs.get`)."""
        return self.jobs.get(remote_path, local_path, node, progress, max_bytes)

    # -- detached jobs: ``cluster.jobs()`` lists them (:meth:`Jobs.__call__`) -------
    def submit(self, fn: Callable[..., Any], items: Iterable[Any], allow_pickle: bool = False,
               star: bool = False, timeout: Optional[float] = None) -> Job:
        """A detached job of ``fn`` over ``items``, returned at once (:meth:`Jobs.submit`);
        it outlives this process."""
        return self.jobs.submit(fn, items, allow_pickle, star, timeout)

    def job(self, job_id: str, allow_pickle: bool = False) -> Job:
        """The detached job ``job_id``, from any process (:meth:`Jobs.job`)."""
        return self.jobs.job(job_id, allow_pickle)
