"""Running work on a cluster: every slot of every node busy, every wait bounded.

Each node runs one warm worker (:mod:`.channel`, :mod:`.worker`) with a
number of *slots*, task processes that run side by side (by default one per
vCPU of the node's flavor). ``map`` hands the next task to a free slot on
whichever node has most free, so a slow node does not hold the others back.

A task that outlives its ``timeout`` is killed on its node and raises
:class:`TaskTimeout`. A node that breaks its channel or misses its
heartbeats is lost: its tasks run again elsewhere under one tenacity policy
(:func:`cloudcompute.retry.task_reexecution`), so tasks are at-least-once.
A failed ``map`` stops what is still queued or running and raises
:class:`MapError` with every finished value.
"""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import paramiko

from cloudcompute import retry
from cloudcompute.exceptions import (CloudComputeError, IntegrityError, MapError,
                                     NodeDataRefused, NodeLost, RemoteTaskError,
                                     SerializationError, SSHError, TaskKilled, TaskTimeout)
from cloudcompute.jobs import payload, project, wire
from cloudcompute.jobs import protocol as P
from cloudcompute.jobs import channel
from cloudcompute.jobs.channel import RemoteWorker
from cloudcompute.jobs.placement import (Cancelled, NoLiveNodes, SlotPool, Task, TaskResult,
                                         is_node_loss)
from cloudcompute.ssh import bulk
from cloudcompute.ssh.client import NodeConnection

LOG = logging.getLogger(__name__)
STAGE_DIR = P.NODE_DIR + "/stage"
STAGE_OVER = 16 << 20  # bytes; larger blobs travel as files through the bulk transfer
REEXECUTION_BOUND = 600.0  # seconds after a task's first start when no new run starts


class _OneNode:
    """Placement for ``run``: always the same node (reconnected after a loss)."""

    def __init__(self, executor: "Executor", node: str):
        self.executor, self.node = executor, node

    def acquire(self, previous: Optional[str] = None) -> str:
        return self.node

    def release(self, node: str) -> None:
        pass

    def lost(self, node: str, exc: BaseException) -> None:
        self.executor.drop_worker(node)


class Executor:
    """Runs functions on the nodes of a cluster."""

    def __init__(self, connections: Dict[str, NodeConnection],
                 python: Optional[Dict[str, str]] = None,
                 slots: Optional[Dict[str, int]] = None, task_retries: int = 2,
                 max_result_bytes: Optional[int] = None,
                 log_handler: Optional[Callable[[str, str, str], None]] = None,
                 silence: Optional[float] = None, start_timeout: Optional[float] = None):
        """``log_handler(node, task, text)`` receives the tasks' output; by default
        each line is logged at INFO. A node is lost after ``silence`` seconds
        without a byte, or ``start_timeout`` seconds without its worker's hello."""
        self.connections = connections
        self.log_handler = log_handler
        self.silence = silence or channel.SILENCE_LIMIT
        self.start_timeout = start_timeout or channel.START_LIMIT
        self.python = python or {}
        self.slots = slots or {}
        self.task_retries = task_retries
        self.max_result_bytes = max_result_bytes or wire.default_max_result_bytes()
        self.workers: Dict[str, RemoteWorker] = {}
        self.dead: Dict[str, str] = {}
        self.inflight: Dict[str, str] = {}  # task id -> node
        self.project_files_sent = 0
        self.project_bytes_sent = 0
        self._lock = threading.Lock()
        self._node_locks: Dict[str, threading.Lock] = {n: threading.Lock() for n in connections}
        self._ids = itertools.count(1)

    # -- workers -------------------------------------------------------
    def worker(self, node: str) -> RemoteWorker:
        """The node's running worker, started if needed."""
        with self._node_locks[node]:
            w = self.workers.get(node)
            if w is None:
                w = self.workers[node] = RemoteWorker(
                    self.connections[node], self.python.get(node, "python3"),
                    self.slots.get(node), self.max_result_bytes, self.log_handler,
                    self.silence, self.start_timeout)
            if not w.alive:
                w.start()
            return w

    def drop_worker(self, node: str) -> None:
        """Forget the node's worker and close its connection (reopened on next use)."""
        w = self.workers.pop(node, None)
        if w is not None:
            w.close()
        self.connections[node].close()

    def close(self) -> None:
        for w in list(self.workers.values()):
            w.close()
        self.workers = {}

    def abort(self, why: str) -> None:
        """Fail everything in flight at once (an interrupt): nothing waits on a node."""
        for w in list(self.workers.values()):
            w.abort(why)

    def _start_all(self, nodes: Sequence[str]) -> Dict[str, int]:
        """Start the workers of ``nodes`` side by side; their slots. A node that
        cannot be reached is marked dead; any other failure is raised."""
        out: Dict[str, int] = {}
        with cf.ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
            futures = {n: pool.submit(self.worker, n) for n in nodes}
            for n, f in futures.items():
                try:
                    out[n] = f.result().slots
                except (SSHError, NodeLost, OSError, EOFError, paramiko.SSHException) as exc:
                    if not is_node_loss(exc):
                        raise
                    self._mark_dead(n, exc)
        return out

    def _mark_dead(self, node: str, exc: BaseException) -> None:
        LOG.warning("node %s marked dead: %s", node, exc)
        self.dead[node] = str(exc)
        self.drop_worker(node)

    # -- one task ------------------------------------------------------
    def task(self, fn: Callable[..., Any], args: Sequence[Any] = (),
             kwargs: Optional[Dict[str, Any]] = None, allow_pickle: bool = False,
             timeout: Optional[float] = None, task_id: Optional[str] = None,
             shipped: Optional[project.Project] = None) -> Task:
        """A Task, checked: what cannot be sent is refused before anything is."""
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds, not %r"
                             % (timeout,))
        payload.function_spec(fn, payload.Blobs(), allow_pickle)
        return Task(task_id or "t%d" % next(self._ids), fn, args, kwargs or {},
                    allow_pickle, timeout,
                    shipped if shipped is not None else project.for_function(fn))

    def run_on(self, node: str, fn: Callable[..., Any], args: Sequence[Any] = (),
               kwargs: Optional[Dict[str, Any]] = None, allow_pickle: bool = False,
               task_id: Optional[str] = None, timeout: Optional[float] = None) -> TaskResult:
        """Run ``fn(*args, **kwargs)`` on ``node``; raise the task's error as ours.
        A dropped connection is reopened once and the task run again."""
        task = self.task(fn, args, kwargs, allow_pickle, timeout, task_id)
        return self._execute(task, _OneNode(self, node), attempts=2)

    def _execute(self, task: Task, placement: Union[SlotPool, _OneNode],
                 attempts: int) -> TaskResult:
        node: Optional[str] = None
        try:
            for attempt in retry.task_reexecution(attempts, REEXECUTION_BOUND, is_node_loss):
                with attempt:
                    node = placement.acquire(node)
                    try:
                        return self._attempt(node, task)
                    except BaseException as exc:
                        if is_node_loss(exc):
                            placement.lost(node, exc)
                        raise
                    finally:
                        placement.release(node)
        except (SSHError, OSError, EOFError, paramiko.SSHException) as exc:
            if not is_node_loss(exc):
                raise
            raise NodeLost(node or "?", "lost while running %s: %s" % (task.id, exc),
                           [task.id]) from exc
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _attempt(self, node: str, task: Task) -> TaskResult:
        w = self.worker(node)
        if task.project is not None and task.project.files:
            self._sync_project(w, task.project)
        request, blobs = self._request(w, task)
        sent = self._stage(w.conn, request, blobs) if bulk.available() else blobs
        self.inflight[task.id] = node
        try:
            future = w.request(request, sent)
            bound = None if task.timeout is None else task.timeout + self.silence + 5
            try:
                header, rblobs = future.result(timeout=bound)
            except cf.TimeoutError:
                w.cancel(task.id)
                raise TaskTimeout(node, task.id, task.timeout or 0) from None
        finally:
            self.inflight.pop(task.id, None)
        fn = request["fn"]
        if "blob" in fn and "sha256" in fn and str(fn["blob"]) not in request.get("staged", {}):
            w.modules.add(fn["sha256"])  # a staged one is read by its task alone
        return self._result(w, task, request, header, rblobs)

    def _request(self, w: RemoteWorker, task: Task):
        blobs = payload.Blobs()
        formats = [f for f in w.hello["formats"] if f != "pickle" or task.allow_pickle]
        fn_spec = payload.function_spec(task.fn, blobs, task.allow_pickle,
                                        w.hello["versions"], w.node, sent=w.modules,
                                        pickled=task.pickled)
        a, kw = payload.encode_args(task.args, task.kwargs, blobs, formats, task.allow_pickle)
        result_formats = [f for f in wire.formats_here() if f != "pickle" or task.allow_pickle]
        request: Dict[str, Any] = {
            "op": P.TASK, "id": task.id, "fn": fn_spec, "args": a, "kwargs": kw,
            "allow_pickle": task.allow_pickle, "result_formats": result_formats}
        if task.timeout is not None:
            request["timeout"] = task.timeout
        if task.project is not None and task.project.files:
            request["project"] = task.project.digest
        return request, blobs.items

    def _stage(self, conn: NodeConnection, request: Dict[str, Any],
               blobs: List[bytes]) -> List[bytes]:
        """Send blobs over STAGE_OVER bytes as files through the faster bulk transfer
        (OpenSSH), and ask the worker to leave large results the same way."""
        request["stage_over"] = STAGE_OVER
        request["stage_dir"] = STAGE_DIR
        out = list(blobs)
        for i, blob in enumerate(blobs):
            if len(blob) > STAGE_OVER:
                path = "%s/arg-%s-%d" % (STAGE_DIR, request["id"].replace("/", "_"), i)
                digest = conn.upload(path, blob)
                request.setdefault("staged", {})[str(i)] = {"path": path, "sha256": digest,
                                                           "size": len(blob)}
                out[i] = b""
        return out

    def _sync_project(self, w: RemoteWorker, shipped: project.Project) -> None:
        """Make sure the node holds the project; send only the files it lacks."""
        with w.project_lock:
            if shipped.digest in w.projects:
                return
            rid = "p%d" % next(self._ids)
            answer = self._answer(w, w.request({"op": P.PROJECT, "id": rid,
                                                "digest": shipped.digest,
                                                "files": shipped.files}))
            if answer.get("op") == P.NEED:
                missing = list(answer.get("missing", []))
                data = [shipped.read(sha) for sha in missing]
                answer = self._answer(w, w.request({"op": P.OBJECTS, "id": rid,
                                                    "digest": shipped.digest,
                                                    "shas": missing}, data))
                size = sum(len(d) for d in data)
                self.project_files_sent += len(data)
                self.project_bytes_sent += size
                LOG.info("shipped %d project file(s) (%d bytes) from %s to %s",
                         len(data), size, shipped.root, w.node)
            if answer.get("op") != P.READY:
                raise SerializationError("%s did not take the project at %s: %s"
                                         % (w.node, shipped.root, answer.get("message")))
            w.projects.add(shipped.digest)

    def _answer(self, w: RemoteWorker, future: cf.Future) -> Dict[str, Any]:
        header, _ = future.result(timeout=self.silence * 6)
        return header

    def _result(self, w: RemoteWorker, task: Task, request: Dict[str, Any],
                header: Dict[str, Any], rblobs: List[bytearray]) -> TaskResult:
        node = w.node
        if header.get("op") == P.WIRE_ERROR:
            raise IntegrityError(node, "payload of %s" % task.id, "sent sha256",
                                 str(header.get("message", "")))
        if not header.get("ok"):
            raise _task_error(node, task.id, header)
        desc = header["result"]
        for idx, st in (header.get("staged") or {}).items():
            if int(st.get("size", 0)) > self.max_result_bytes:
                raise NodeDataRefused(node, "staged result of %d bytes over the cap of %d"
                                   % (st["size"], self.max_result_bytes))
            rblobs[int(idx)] = w.conn.download(st["path"], sha256=st["sha256"], remove=True,
                                               max_bytes=self.max_result_bytes)
        try:
            value = wire.decode(desc, rblobs[desc["blob"]], task.allow_pickle,
                                offered=request["result_formats"])
        except (wire.WireError, IndexError, KeyError) as exc:
            raise NodeDataRefused(node, "result of %s: %s" % (task.id, exc)) from exc
        return TaskResult(node, task.id, value, header.get("duration", 0.0),
                          header.get("peak_rss_kb", 0))

    # -- many tasks ----------------------------------------------------
    def map(self, fn: Callable[..., Any], items: Iterable[Any], allow_pickle: bool = False,
            nodes: Optional[Sequence[str]] = None, star: bool = False,
            progress: Optional[Callable[[TaskResult], None]] = None,
            timeout: Optional[float] = None,
            return_exceptions: bool = False) -> List[Union[TaskResult, BaseException]]:
        """Run ``fn`` over ``items`` on every slot of the nodes, in order of position.

        A failure stops the rest and raises MapError (finished values kept),
        unless ``return_exceptions`` puts each exception in its position."""
        items = list(items)
        first = self.task(fn, allow_pickle=allow_pickle, timeout=timeout)
        # ids name the map too: two maps (or run_all) at once share the channels
        name = "%s#%s" % (getattr(fn, "__name__", "fn"), first.id)
        pickled: Dict[int, bytes] = {}  # the function pickled once for the whole map
        tasks = [Task("%s.%d" % (name, i), fn, item if star else (item,), {}, allow_pickle,
                      timeout, first.project, pickled) for i, item in enumerate(items)]
        live = [n for n in (nodes or list(self.connections)) if n not in self.dead]
        slots = self._start_all(live) if live and tasks else {}
        if tasks and not slots:
            raise NoLiveNodes(", ".join(sorted(self.dead)) or "?", "no live nodes to run on",
                              [t.id for t in tasks])
        for node in slots:  # what a node cannot run is refused before anything runs
            payload.function_spec(fn, payload.Blobs(), allow_pickle,
                                  self.workers[node].hello["versions"], node, pickled=pickled)
        pool = SlotPool(slots, on_lost=self._mark_dead)
        threads = cf.ThreadPoolExecutor(max_workers=max(1, min(len(tasks), sum(slots.values()),
                                                               256)),
                                        thread_name_prefix="cc-map")
        futures = {threads.submit(self._execute, t, pool, self.task_retries + 1): i
                   for i, t in enumerate(tasks)}
        done: Dict[int, TaskResult] = {}
        errors: Dict[int, BaseException] = {}
        try:
            for f in cf.as_completed(futures):
                i = futures[f]
                try:
                    done[i] = f.result()
                except (Cancelled, cf.CancelledError):
                    continue
                except CloudComputeError as exc:
                    errors[i] = exc
                    if not return_exceptions and not pool.closed:
                        self._stop(pool, futures, tasks)
                    continue
                if progress is not None:
                    progress(done[i])
        except BaseException:
            pool.close()
            self.abort("map interrupted")
            raise
        finally:
            threads.shutdown(wait=False, cancel_futures=True)
        if return_exceptions:
            return [done[i] if i in done else errors[i] for i in range(len(tasks))]
        if errors:
            raise MapError(len(tasks), {i: r.value for i, r in done.items()}, errors,
                           [i for i in range(len(tasks)) if i not in done and i not in errors])
        return [done[i] for i in range(len(tasks))]

    def _stop(self, pool: SlotPool, futures: Dict[cf.Future, int],
              tasks: Sequence[Task]) -> None:
        """After a failure: run nothing new, end what is running."""
        pool.close()
        for f in futures:
            f.cancel()
        ids = {t.id for t in tasks}
        for task_id, node in list(self.inflight.items()):
            w = self.workers.get(node)
            if task_id in ids and w is not None:
                w.cancel(task_id)


def _task_error(node: str, task_id: str, header: Dict[str, Any]) -> CloudComputeError:
    """The exception for a task that did not return a value."""
    if header.get("timed_out") is not None:
        return TaskTimeout(node, task_id, float(header["timed_out"]))
    if header.get("cancelled"):
        return Cancelled("task %s on %s was cancelled" % (task_id, node))
    if header.get("killed"):
        sig = header["killed"]
        return TaskKilled(node, task_id, sig, "signal %s%s" % (
            sig, " (SIGKILL: out of memory?)" if sig == 9 else ""))
    return RemoteTaskError(node, task_id, str(header.get("exc_type", "?")),
                           str(header.get("message", "")), str(header.get("traceback", "")))

