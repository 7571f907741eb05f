"""Dask on one cluster, as this process sees it: start, connect, stop.

:class:`DaskHandle` checks the environments, starts (or finds) the
scheduler on the first node and one worker per node, forwards the
scheduler's and the dashboard's ports to 127.0.0.1 over SSH, connects a
:class:`distributed.Client` there, and stops it all again. The cluster's
state file holds a ``dask`` record from before the first process starts
until the last one is stopped, so ``down()`` in any process (``attach``)
knows to stop them.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import json
import logging
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, TypeVar

from cloudcompute.daskcluster import remote, versions
from cloudcompute.daskcluster.client import client_class
from cloudcompute.daskcluster.forward import Forwarder, ssh_opener
from cloudcompute.exceptions import (CloudComputeError, EnvironmentMismatch, StateError)
from cloudcompute.record import DaskRecord, NodeInfo
from cloudcompute.ssh.client import NodeConnection

LOG = logging.getLogger("cloudcompute.dask")
T = TypeVar("T")
STOP_GRACE = 5.0
"""Seconds a stopped Dask process gets after SIGTERM before SIGKILL."""
DRAIN = 15.0
"""Seconds an interrupted start-up waits for remote steps already under way."""


class DaskStartError(CloudComputeError):
    """A Dask process did not come up. ``node``, ``role`` and the tail of its ``log``."""

    def __init__(self, node: str, role: str, problem: str, log: str = ""):
        self.node = node
        self.role = role
        self.log = log
        super().__init__("Dask %s on %s %s; the end of its log:\n%s"
                         % (role, node, problem, remote.log_excerpt(log)))


@dataclasses.dataclass
class DaskOptions:
    """What ``Cluster.dask(**options)`` accepts."""
    prepare: bool = True
    """Build the client's versions on the nodes (``Cluster.prepare``); False: use the
    pythons an earlier ``prepare`` recorded (or python3), checked all the same."""
    wheels: Optional[str] = None
    """A local directory of wheels for ``prepare`` instead of downloading them."""
    timeout: float = 120.0
    """Seconds for the processes to start and the workers to join (not ``prepare``)."""
    scheduler_port: int = 8786
    dashboard_port: int = 8787
    nthreads: Optional[int] = None
    """Threads per worker; default: the node's slots (the flavor's vCPUs)."""


def each(fn: Callable[[Any], T], items: Iterable[Any], key: Callable[[Any], str],
         ) -> Dict[str, T]:
    """``fn`` on every item at once; the first error is raised once all have ended.

    On an interrupt, what already runs may finish (each step is bounded), so
    that the cleanup that follows sees every process that was started."""
    items = list(items)
    if not items:
        return {}
    pool = cf.ThreadPoolExecutor(max_workers=min(16, len(items)))
    futures = {key(it): pool.submit(fn, it) for it in items}
    try:
        cf.wait(futures.values())
        return {k: f.result() for k, f in futures.items()}
    finally:
        cf.wait(futures.values(), timeout=DRAIN)
        pool.shutdown(wait=False, cancel_futures=True)


def tool(conn: NodeConnection, mode: str, *args: Any, timeout: float = 30.0) -> Dict[str, Any]:
    """Run the node tool (:func:`remote.tool_argv`); its JSON answer."""
    result = conn.run(remote.tool_argv(mode, *args), timeout=timeout)
    return json.loads(result.stdout)


def stop_processes(cluster: Any, names: Iterable[str]) -> Dict[str, Any]:
    """Stop every Dask process on the named nodes, bounded; node -> what the node
    tool stopped, or the exception (a node that cannot be reached is logged)."""
    def one(name: str) -> Any:
        try:
            return tool(cluster.connection(name), "stop", STOP_GRACE,
                        timeout=STOP_GRACE + 15)
        except Exception as exc:  # a lost node must not stop the rest of teardown
            LOG.warning("cannot stop Dask on %s: %s", name, exc)
            return exc
    known = set(cluster.node_names())
    return each(one, [n for n in names if n in known], key=lambda n: n)


class DaskHandle:
    """The Dask processes of one cluster, the SSH forwards to them and the Client."""

    def __init__(self, cluster: Any, options: DaskOptions):
        self.cluster = cluster
        self.options = options
        self.client: Any = None
        self.scheduler_node: Optional[NodeInfo] = None
        self.remote_scheduler = ""
        self.remote_dashboard_port = 0
        self.pythons: Dict[str, str] = {}
        self.workers: Dict[str, Dict[str, Any]] = {}
        self.warnings: List[str] = []
        self.timings: Dict[str, float] = {}
        self.reused = False
        self._conn: Optional[NodeConnection] = None
        self._forwards: Dict[str, Forwarder] = {}

    # -- what the caller sees ----------------------------------------------
    @property
    def scheduler_address(self) -> str:
        """The forwarded scheduler address the Client uses (tcp://127.0.0.1:PORT)."""
        fwd = self._forwards.get("scheduler")
        return "tcp://%s" % fwd.address if fwd else ""

    @property
    def dashboard_url(self) -> str:
        fwd = self._forwards.get("dashboard")
        return "http://%s/status" % fwd.address if fwd else ""

    def describe(self) -> Dict[str, Any]:
        """A JSON-able summary (what ``cloudcompute dask NAME -f json`` prints)."""
        return {"name": self.cluster.name, "scheduler": self.scheduler_address,
                "dashboard": self.dashboard_url,
                "scheduler_node": self.scheduler_node.name if self.scheduler_node else None,
                "remote_scheduler": self.remote_scheduler, "workers": self.workers,
                "reused": self.reused, "warnings": self.warnings, "timings": self.timings}

    def usable(self) -> bool:
        return self.client is not None and self.client.status not in ("closing", "closed")

    # -- start -------------------------------------------------------------
    def start(self) -> Any:
        """Check versions, start or find the processes, connect; the Client."""
        t0 = time.monotonic()
        nodes = list(self.cluster.nodes)
        if not nodes or self.cluster.state is None:
            raise StateError("cluster %s has no ready nodes" % self.cluster.name)
        client_v = versions.client_versions()
        versions.require_dask(client_v)
        self.pythons = self._environment(client_v, nodes)
        self.timings["environment"] = time.monotonic() - t0
        self._check_versions(client_v, nodes)
        found = each(lambda n: tool(self.cluster.connection(n.name), "status"), nodes,
                     key=lambda n: n.name)
        sched = self.scheduler_node = nodes[0]
        wanted = "tcp://%s:%d" % (sched.fixed_ip, self.options.scheduler_port)
        state = found[sched.name]["scheduler"]
        self.reused = bool(state["alive"] and (state.get("info") or {}).get("address")
                           == wanted)
        self._record(DaskRecord(scheduler_node=sched.name, nodes=[n.name for n in nodes],
                                scheduler=wanted))
        try:
            return self._start(nodes, found, t0)
        except BaseException:
            self.close(stop=not self.reused)
            raise

    def _start(self, nodes: List[NodeInfo], found: Dict[str, Any], t0: float) -> Any:
        sched = self.scheduler_node
        assert sched is not None
        stale = [n for n in nodes if not self.reused and (
            found[n.name]["scheduler"]["processes"] or found[n.name]["worker"]["processes"])]
        if stale:
            LOG.info("stopping Dask processes left on %s", ", ".join(n.name for n in stale))
            each(lambda n: tool(self.cluster.connection(n.name), "stop", STOP_GRACE,
                                timeout=STOP_GRACE + 15), stale, key=lambda n: n.name)
        deadline = time.monotonic() + self.options.timeout
        if self.reused:
            info = found[sched.name]["scheduler"]["info"]
            LOG.info("found the Dask scheduler running on %s", sched.name)
        else:
            info = self._start_scheduler(sched, deadline)
        self.remote_scheduler = info["address"]
        self.remote_dashboard_port = int((info.get("services") or {}).get(
            "dashboard", self.options.dashboard_port))
        self.timings["scheduler"] = time.monotonic() - t0
        for n in nodes:
            limit = self._worker_spec(n)["memory_limit"]
            if isinstance(limit, int) and limit < remote.SMALL_WORKER_MB * remote.MIB:
                LOG.warning("%s: the Dask worker gets %d MiB of the flavor's %d MiB; with "
                            "pandas it may be restarted for memory (choose a larger flavor)",
                            n.name, limit // remote.MIB, n.ram_mb)
        missing = [n for n in nodes if not (self.reused and found[n.name]["worker"]["alive"])]
        each(self._start_worker, missing, key=lambda n: n.name)
        for n in nodes:
            self.workers[n.name] = self._worker_spec(n)
        self._connect(sched)
        self._wait_for_workers(nodes, deadline)
        self.timings["total"] = time.monotonic() - t0
        LOG.info("Dask on %s: scheduler %s (forwarded to %s), %d workers; dashboard %s",
                 self.cluster.name, self.remote_scheduler, self.scheduler_address,
                 len(nodes), self.dashboard_url)
        return self.client

    def _environment(self, client_v: Dict[str, Optional[str]],
                     nodes: List[NodeInfo]) -> Dict[str, str]:
        """node -> the python that runs Dask there."""
        if not self.options.prepare:
            recorded = self.cluster.state.record.python
            return {n.name: recorded.get(n.name, "python3") for n in nodes}
        from cloudcompute.jobs import environment
        covered = set(environment.client_requirements())  # match_client pins these
        reqs = [r for r in versions.requirements(client_v) if r not in covered]
        try:
            return dict(self.cluster.prepare(reqs, match_client=True,
                                             wheels=self.options.wheels))
        except EnvironmentMismatch as exc:
            node = exc.node if exc.node in self.cluster.node_names() else nodes[0].name
            raise EnvironmentMismatch(node, self._both_sides(node, client_v, "python3") + [
                "the client's versions cannot be installed there: %s" % exc]) from exc

    def _both_sides(self, node: str, client_v: Dict[str, Optional[str]],
                    python: str) -> List[str]:
        from cloudcompute.jobs import environment
        try:
            info = environment.probe(self.cluster.connection(node), versions.MUST_MATCH,
                                     python)
            found = dict(info["packages"], python=info["python"])
        except (CloudComputeError, ValueError, KeyError):
            found = {}
        return ["%s: client %s, node %s" % (name, client_v.get(name) or "not installed",
                                            found.get(name) or "not installed")
                for name in ("python",) + versions.MUST_MATCH]

    def _check_versions(self, client_v: Dict[str, Optional[str]],
                        nodes: List[NodeInfo]) -> None:
        """EnvironmentMismatch (both sides' versions) before any process starts."""
        from cloudcompute.jobs import environment
        names = list(versions.MUST_MATCH + versions.SHOULD_MATCH)

        def one(n: NodeInfo) -> List[str]:
            python = self.pythons[n.name]
            try:
                info = environment.probe(self.cluster.connection(n.name), names, python)
            except (CloudComputeError, ValueError) as exc:
                raise EnvironmentMismatch(n.name, ["cannot run %s there: %s"
                                                   % (python, exc)]) from exc
            found = dict(info["packages"], python=info["python"])
            return versions.compare(n.name, client_v, found)
        for node, warned in each(one, nodes, key=lambda n: n.name).items():
            for w in warned:
                LOG.warning("%s: %s (only a warning: Dask needs the same dask, distributed, "
                            "cloudpickle and msgpack)", node, w)
                self.warnings.append("%s: %s" % (node, w))

    def _start_scheduler(self, sched: NodeInfo, deadline: float) -> Dict[str, Any]:
        conn = self.cluster.connection(sched.name)
        argv = remote.scheduler_argv(self.pythons[sched.name], sched.fixed_ip or "",
                                     self.options.scheduler_port, self.options.dashboard_port)
        LOG.info("starting the Dask scheduler on %s", sched.name)
        conn.run(remote.start_command("scheduler", argv), timeout=30)
        wait = max(1.0, deadline - time.monotonic())
        got = tool(conn, "wait", "scheduler", wait, timeout=wait + 15)
        if got["state"] != "ready":
            raise DaskStartError(sched.name, "scheduler", "died while starting"
                                 if got["state"] == "died" else
                                 "was not listening within %.0fs" % self.options.timeout,
                                 got.get("log", ""))
        return got["info"]

    def _worker_spec(self, n: NodeInfo) -> Dict[str, Any]:
        assert self.scheduler_node is not None
        return {"nthreads": self.options.nthreads or max(1, n.slots),
                "memory_limit": remote.memory_limit(n.ram_mb,
                                                    n.name == self.scheduler_node.name)}

    def _start_worker(self, n: NodeInfo) -> None:
        spec = self._worker_spec(n)
        argv = remote.worker_argv(self.pythons[n.name], self.remote_scheduler,
                                  n.fixed_ip or "", n.name, spec["nthreads"],
                                  spec["memory_limit"])
        LOG.info("starting a Dask worker on %s (%d threads, memory limit %s)", n.name,
                 spec["nthreads"], spec["memory_limit"])
        self.cluster.connection(n.name).run(remote.start_command("worker", argv), timeout=30)

    def _own_connection(self, n: NodeInfo) -> NodeConnection:
        """A connection of the forwards' own to ``n``, verified against the same
        recorded host key (the executor's and ``close_connections`` stay apart)."""
        return self.cluster.new_connection(n.name)

    def _connect(self, sched: NodeInfo) -> None:
        self._conn = self._own_connection(sched)
        self._conn.connect(time.monotonic() + 30)
        host = sched.fixed_ip or ""
        port = int(self.remote_scheduler.rsplit(":", 1)[1])
        transport = lambda: self._conn.client.get_transport()  # noqa: E731
        self._forwards["scheduler"] = Forwarder(ssh_opener(transport, host, port),
                                                "dask-scheduler")
        self._forwards["dashboard"] = Forwarder(
            ssh_opener(transport, host, self.remote_dashboard_port), "dask-dashboard")
        client = client_class()(self.scheduler_address, timeout=30, set_as_default=True)
        client.cloudcompute = self
        self.client = client

    def _wait_for_workers(self, nodes: List[NodeInfo], deadline: float) -> None:
        """Until every node's worker has joined; a worker that died fails at once."""
        while True:
            try:
                self.client.wait_for_workers(len(nodes), timeout=2.0)
                return
            except (TimeoutError, asyncio.TimeoutError):
                pass
            states = each(lambda n: tool(self.cluster.connection(n.name), "wait", "worker",
                                         0), nodes, key=lambda n: n.name)
            for name, got in states.items():
                if got["state"] == "died":
                    raise DaskStartError(name, "worker", "died while starting",
                                         got.get("log", ""))
            if time.monotonic() > deadline:
                joined = {w.get("name") for w in
                          self.client.scheduler_info()["workers"].values()}
                raise DaskStartError(", ".join(sorted({n.name for n in nodes} - joined)),
                                     "worker", "did not join the scheduler within %.0fs"
                                     % self.options.timeout)

    # -- loss and stop -------------------------------------------------------
    def scheduler_lost(self) -> Optional[str]:
        """Why the scheduler cannot be reached any more, or None if it runs."""
        assert self.scheduler_node is not None
        name = self.scheduler_node.name
        try:
            state = tool(self._conn or self.cluster.connection(name), "status",
                         timeout=15)["scheduler"]
        except Exception as exc:  # whatever stops the check is the answer
            return "the scheduler's node %s no longer answers SSH (%s)" % (name, exc)
        if not state["alive"]:
            return "the Dask scheduler process on %s is gone" % name
        return None

    def _record(self, dask: Optional[DaskRecord]) -> None:
        st = self.cluster.state
        if st is None:
            return
        with st.locked():
            st.record.dask = dask
            st.save()

    def close(self, stop: bool = True) -> None:
        """Close the Client and the forwards; with ``stop``, also stop the processes
        on every node (bounded) and drop the state's record of them."""
        if self.client is not None:
            try:
                self.client.close(timeout=5)
            except Exception as exc:  # a client whose scheduler is gone may complain
                LOG.debug("closing the Dask client: %s", exc)
            self.client = None
        for fwd in self._forwards.values():
            fwd.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if stop and self.cluster.state is not None:
            rec = self.cluster.state.record.dask
            stop_processes(self.cluster, rec.nodes if rec else self.cluster.node_names())
            self._record(None)
        if getattr(self.cluster, "_dask_handle", None) is self:
            self.cluster._dask_handle = None

