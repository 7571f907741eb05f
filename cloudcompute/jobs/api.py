"""The work a Cluster runs: run, run_all, map, map_partitions, put, get, prepare.

A :class:`Jobs` belongs to one cluster (``cluster.jobs``) and reaches it only
through the :class:`JobHost` protocol: its name, spec, record, nodes and
verified connections. The Cluster's own methods of the same names call it.
"""
from __future__ import annotations

import logging
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Protocol,
                    Sequence, Union)

from cloudcompute.exceptions import CloudComputeError, StateError
from cloudcompute.jobs import wire
from cloudcompute.jobs.executor import Executor, TaskResult
from cloudcompute.jobs.partition import concat, split

if TYPE_CHECKING:
    from cloudcompute.config import ClusterSpec
    from cloudcompute.jobs.detached import Job
    from cloudcompute.jobs.jobstate import JobRecord
    from cloudcompute.record import NodeInfo
    from cloudcompute.ssh.client import NodeConnection
    from cloudcompute.state import ClusterState

LOG = logging.getLogger(__name__)


class JobHost(Protocol):
    """What Jobs needs of a cluster."""
    spec: "ClusterSpec"
    state: Optional["ClusterState"]
    nodes: List["NodeInfo"]

    @property
    def name(self) -> str: ...

    def connection(self, node: str) -> "NodeConnection": ...


class GroupResult(dict):
    """node -> value or exception, for work that ran on every node."""

    @property
    def succeeded(self) -> Dict[str, Any]:
        return {k: v for k, v in self.items() if not isinstance(v, BaseException)}

    @property
    def failed(self) -> Dict[str, BaseException]:
        return {k: v for k, v in self.items() if isinstance(v, BaseException)}


class Jobs:
    """The work of one cluster, on its warm workers."""

    def __init__(self, host: JobHost):
        self.host = host
        self._executor: Optional[Executor] = None

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def nodes(self) -> List["NodeInfo"]:
        return self.host.nodes

    def connection(self, node: str) -> "NodeConnection":
        return self.host.connection(node)

    def executor(self) -> Executor:
        """The executor over this cluster's nodes (its workers start on first use)."""
        if not self.nodes:
            raise StateError("cluster %s has no ready nodes" % self.name)
        if self._executor is None:
            st, spec = self.host.state, self.host.spec
            pythons = st.record.python if st else {}
            self._executor = Executor({n.name: self.connection(n.name) for n in self.nodes},
                                      python=pythons,
                                      slots={n.name: n.slots for n in self.nodes},
                                      max_result_bytes=spec.max_result_bytes,
                                      silence=spec.timeouts.node_silence,
                                      start_timeout=spec.timeouts.worker_start)
        return self._executor

    def close(self) -> None:
        """Stop the workers (they start again on next use)."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def prepare(self, requirements: Sequence[str] = (), match_client: bool = False,
                wheels: Optional[str] = None) -> Dict[str, str]:
        """Make ``requirements`` (pip syntax) importable on every node.

        Nodes that lack them get a virtual environment built from wheels this
        machine downloads (or takes from ``wheels``) and ships over SSH.
        ``match_client=True`` adds pins of this machine's numpy, pandas,
        pyarrow and cloudpickle, so functions can be sent by value.
        Returns node -> the python that runs its tasks.
        """
        import concurrent.futures as cf

        from cloudcompute.jobs import environment
        reqs = list(requirements) + (environment.client_requirements() if match_client else [])
        names = self.node_names()
        if not names:
            raise StateError("cluster %s has no ready nodes" % self.name)
        pythons = {names[0]: environment.ensure(self.connection(names[0]), reqs, wheels)}
        with cf.ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
            futures = {n: pool.submit(environment.ensure, self.connection(n), reqs, wheels)
                       for n in names[1:]}
            pythons.update({n: f.result() for n, f in futures.items()})
        st = self.host.state
        if st is not None:
            with st.locked():
                st.record.python = dict(pythons)
                st.save()
        self.close()
        return pythons

    def node_names(self) -> List[str]:
        return [n.name for n in self.nodes]

    def run(self, fn: Callable[..., Any], *args: Any, node: Optional[str] = None,
            allow_pickle: bool = False, timeout: Optional[float] = None,
            **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on one node (the first by default); its return value.

        ``timeout`` (seconds) kills the task on its node and raises TaskTimeout;
        ``node``, ``allow_pickle`` and ``timeout`` are not passed to ``fn``."""
        return self.run_detailed(fn, *args, node=node, allow_pickle=allow_pickle,
                                 timeout=timeout, **kwargs).value

    def run_detailed(self, fn: Callable[..., Any], *args: Any, node: Optional[str] = None,
                     allow_pickle: bool = False, timeout: Optional[float] = None,
                     **kwargs: Any) -> TaskResult:
        """As ``run``, with the node, duration and peak memory of the task."""
        node = node or self.node_names()[0]
        return self.executor().run_on(node, fn, args, kwargs, allow_pickle, timeout=timeout)

    def run_all(self, fn: Callable[..., Any], *args: Any, allow_pickle: bool = False,
                timeout: Optional[float] = None, **kwargs: Any) -> GroupResult:
        """``fn`` on every node at once; a GroupResult of values or exceptions."""
        import concurrent.futures as cf
        ex = self.executor()
        out = GroupResult()
        with cf.ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            futures = {pool.submit(ex.run_on, n, fn, args, kwargs, allow_pickle,
                                   timeout=timeout): n
                       for n in self.node_names()}
            for f, n in futures.items():
                try:
                    out[n] = f.result().value
                except CloudComputeError as exc:
                    out[n] = exc
        return out

    def map(self, fn: Callable[..., Any], items: Iterable[Any],
            allow_pickle: bool = False, star: bool = False,
            progress: Optional[Callable[[TaskResult], None]] = None,
            timeout: Optional[float] = None, return_exceptions: bool = False) -> List[Any]:
        """``[fn(x) for x in items]`` across every slot of the cluster, in order.

        ``timeout`` bounds each task (seconds). The first failure stops the rest
        and raises MapError with every finished value, unless
        ``return_exceptions`` puts each task's exception in its place.
        ``progress`` is called with each TaskResult as it arrives.
        """
        return [r.value if isinstance(r, TaskResult) else r
                for r in self.executor().map(fn, items, allow_pickle, star=star,
                                             progress=progress, timeout=timeout,
                                             return_exceptions=return_exceptions)]

    def map_partitions(self, fn: Callable[..., Any], data: Any,
                       partitions: Optional[int] = None, allow_pickle: bool = False,
                       timeout: Optional[float] = None) -> Any:
        """Split an array or DataFrame into ``partitions`` row blocks (default: one
        per slot), apply ``fn`` to each on the cluster, and concatenate the
        results back in order."""
        parts = split(data, partitions or sum(n.slots for n in self.nodes))
        return concat(self.map(fn, parts, allow_pickle=allow_pickle, timeout=timeout))

    # -- detached jobs (cloudcompute.jobs.detached) ----------------------
    def submit(self, fn: Callable[..., Any], items: Iterable[Any], allow_pickle: bool = False,
               star: bool = False, timeout: Optional[float] = None) -> "Job":
        """Start ``fn`` over ``items`` as a detached job; the Job at once.

        The same function and payload rules as ``map``; the tasks run under a
        supervisor on each node that outlives this process and its SSH
        connections, and their results, output and status stay on the nodes."""
        from cloudcompute.jobs import detached
        return detached.submit(self.executor(), fn, items, allow_pickle, star, timeout)

    def job(self, job_id: str, allow_pickle: bool = False) -> "Job":
        """The detached job ``job_id`` (submitted by any process); its record is
        read from the nodes. ``allow_pickle`` lets ``results`` unpickle."""
        from cloudcompute.jobs import detached
        job = detached.Job(self.executor(), job_id, allow_pickle=allow_pickle)
        job.record  # noqa: B018 - an unknown id fails here, not later
        return job

    def __call__(self) -> List["JobRecord"]:
        """The detached jobs recorded on the nodes (``cluster.jobs()``), oldest first."""
        from cloudcompute.jobs import detached
        return detached.list_jobs(self.executor())

    # -- files and arrays ----------------------------------------------
    def put(self, data: Union[str, Any], remote_path: str,
            nodes: Optional[Sequence[str]] = None,
            progress: Optional[Callable[[int], None]] = None) -> None:
        """Copy a local file (path) or a NumPy array (saved as .npy) to the nodes
        (default: all), each copy checked against the client's sha256.

        The client streams it once, to one node; the nodes copy it among
        themselves (:mod:`cloudcompute.jobs.fanout`). ``progress(n)`` is called
        as each chunk of n bytes leaves the client (any thread). Raises
        FanOutError naming the nodes that did not get it."""
        from cloudcompute.jobs import fanout
        fanout.put(self.host, data, remote_path, nodes, progress)

    def get(self, remote_path: str, local_path: Optional[str] = None,
            node: Optional[str] = None,
            progress: Optional[Callable[[int], None]] = None,
            max_bytes: Optional[int] = None) -> Any:
        """Fetch a file from a node: saved to ``local_path``, or a .npy loaded as an array.

        ``progress(n)`` is called as each chunk of n bytes arrives. A file larger
        than ``max_bytes`` (default: the spec's ``max_result_bytes``, else a
        share of this machine's memory) is refused before it is read."""
        conn = self.connection(node or self.node_names()[0])
        if max_bytes is None:
            max_bytes = self.host.spec.max_result_bytes or wire.default_max_result_bytes()
        raw = _read_verified(conn, remote_path, progress, max_bytes)
        if local_path:
            with open(local_path, "wb") as f:
                f.write(raw)
            return local_path
        if remote_path.endswith(".npy"):
            return wire.load_npy(raw)
        return bytes(raw)


def _transfer_transient(exc: BaseException) -> bool:
    from cloudcompute.exceptions import IntegrityError
    from cloudcompute.ssh.client import is_transient
    return isinstance(exc, IntegrityError) or is_transient(exc)


def _read_verified(conn: Any, path: str, progress: Any = None,
                   max_bytes: Optional[int] = None) -> bytes:
    from cloudcompute import retry
    return retry.transfer(is_transient=_transfer_transient)(conn.download)(
        path, progress=progress, max_bytes=max_bytes)
