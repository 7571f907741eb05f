"""Jobs that outlive the client: ``submit``, then status, results, logs, cancel.

``submit`` encodes every task as ``map`` would (the same function and
payload rules, the caller's project shipped first), spreads the tasks over
the nodes' slots, uploads each node's share (and a replica of it to the next
node) and starts a supervisor on each node (:mod:`.jobd`) that no SSH session
holds. The job's record, results, output and status stay on the nodes, so a
:class:`Job` can be rebuilt from its id by any client that can attach to the
cluster. A node that stays unreachable for ``lost_after`` seconds is lost:
an attached client has the node holding its replica run its tasks again.
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import logging
import queue
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Set

from cloudcompute import retry
from cloudcompute.exceptions import (CloudComputeError, MapError, NodeDataRefused, NodeLost,
                                     RemoteCommandError, WaitTimeout)
from cloudcompute.jobs import payload, wire
from cloudcompute.jobs import protocol as P
from cloudcompute.jobs.jobclient import (COMMAND_TIMEOUT, JOBS_DIR, LOSS, check_job_id,
                                         launch, list_jobs, new_job_id, run_jobd,
                                         stream_logs)
from cloudcompute.jobs.executor import Executor, _task_error
from cloudcompute.jobs.jobstate import (LABEL, TERMINAL, JobRecord, JobStatus, NodeReport,
                                        TaskState, merge)
from cloudcompute.jobs.placement import Cancelled, NoLiveNodes, is_node_loss

LOG = logging.getLogger(__name__)
WAIT_FIRST = 0.2  # seconds between the first looks at a job's status while waiting
WAIT_MAX = 2.0  # the longest pause between looks (each pause 1.5 times the last)
RESTART_AFTER = 10.0  # seconds before a node's supervisor is restarted again


class _Frames(io.RawIOBase):
    """Collects the parts wire.write_frame writes, without joining them."""

    def __init__(self) -> None:
        self.parts: List[Any] = []
        self.size = 0

    def write(self, data: Any) -> int:
        self.parts.append(data)
        self.size += len(data)
        return len(data)


def _spread(count: int, slots: Dict[str, int]) -> Dict[str, List[int]]:
    """Task positions per node, in proportion to the nodes' slots, interleaved."""
    nodes = sorted(slots)
    cycle = [n for k in range(max(slots.values())) for n in nodes if slots[n] > k]
    out: Dict[str, List[int]] = {n: [] for n in nodes}
    for i in range(count):
        out[cycle[i % len(cycle)]].append(i)
    return {n: ix for n, ix in out.items() if ix}


def submit(ex: Executor, fn: Callable[..., Any], items: Iterable[Any],
           allow_pickle: bool = False, star: bool = False, timeout: Optional[float] = None,
           replicate: bool = True, labels: Optional[List[str]] = None) -> "Job":
    """Start ``fn`` over ``items`` on the nodes, detached; the Job at once.
    ``labels`` names each task (file-name-safe, kept in the record)."""
    items = list(items)
    if not items:
        raise ValueError("submit needs at least one item")
    labels = list(labels or [])
    if labels and (len(labels) != len(items) or not all(
            isinstance(x, str) and LABEL.match(x) for x in labels)):
        raise ValueError("labels must be one file-name-safe string per item")
    first = ex.task(fn, allow_pickle=allow_pickle, timeout=timeout)  # refuses what cannot go
    live = [n for n in ex.connections if n not in ex.dead]
    slots = ex._start_all(live) if live else {}
    if not slots:
        raise NoLiveNodes(", ".join(sorted(ex.dead)) or "?", "no live nodes to submit to")
    for node in slots:
        payload.function_spec(fn, payload.Blobs(), allow_pickle,
                              ex.workers[node].hello["versions"], node)
        if first.project is not None and first.project.files:
            ex._sync_project(ex.workers[node], first.project)
    job_id = new_job_id()
    assign = _spread(len(items), slots)
    nodes = sorted(assign)
    replicas = ({n: nodes[(k + 1) % len(nodes)] for k, n in enumerate(nodes)}
                if replicate and len(nodes) > 1 else {})
    record = JobRecord(job_id, "%s:%s" % (getattr(fn, "__module__", "?"),
                                          getattr(fn, "__qualname__", fn)),
                       len(items), assign, replicas, time.time(), timeout, allow_pickle,
                       socket.gethostname(), labels)
    # A replica runs on another node: arguments go in formats every node reads.
    formats = [f for f in ex.workers[nodes[0]].hello["formats"]
               if all(f in ex.workers[n].hello["formats"] for n in slots)
               and (f != "pickle" or allow_pickle)]
    batches = {n: _batch(ex, n, job_id, fn, [(i, items[i]) for i in ix], star,
                         allow_pickle, timeout, first.project, formats)
               for n, ix in assign.items()}
    job = Job(ex, job_id, record, allow_pickle=allow_pickle)
    try:
        with cf.ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
            list(pool.map(lambda n: job._upload(n, batches, record), sorted(slots)))
            list(pool.map(lambda n: job._start(n, slots[n]), nodes))
    except BaseException:
        job._remove_everywhere()
        raise
    LOG.info("job %s: %d tasks of %s on %s", job_id, len(items), record.function,
             ", ".join("%s (%d)" % (n, len(ix)) for n, ix in assign.items()))
    return job


def _batch(ex: Executor, node: str, job_id: str, fn: Callable[..., Any], items: List[Any],
           star: bool, allow_pickle: bool, timeout: Optional[float], shipped: Any,
           formats: List[str]):
    """(frame parts, index entries) of one node's tasks."""
    hello = ex.workers[node].hello
    result_formats = [f for f in wire.formats_here() if f != "pickle" or allow_pickle]
    out = _Frames()
    entries = []
    for i, item in items:
        blobs = payload.Blobs()
        spec = payload.function_spec(fn, blobs, allow_pickle, hello["versions"], node)
        a, kw = payload.encode_args(item if star else (item,), {}, blobs, formats,
                                    allow_pickle)
        req: Dict[str, Any] = {"op": P.TASK, "id": "%s.%d" % (job_id, i), "fn": spec,
                               "args": a, "kwargs": kw, "allow_pickle": allow_pickle,
                               "result_formats": result_formats}
        if shipped is not None and shipped.files:
            req["project"] = shipped.digest
        offset = out.size
        wire.write_frame(out, req, blobs.items)
        entries.append({"index": i, "id": req["id"], "offset": offset,
                        "length": out.size - offset, "timeout": timeout})
    return out.parts, entries


class Job:
    """A detached job on a cluster's nodes, found by its id."""

    def __init__(self, ex: Executor, job_id: str, record: Optional[JobRecord] = None,
                 allow_pickle: bool = False, lost_after: Optional[float] = None):
        """``allow_pickle``: results in pickle format may be unpickled here;
        ``lost_after``: seconds a node may not answer before its tasks run
        elsewhere (default: three times the cluster's node silence)."""
        self.ex = ex
        self.id = check_job_id(job_id)
        self.allow_pickle = allow_pickle
        self.lost_after = lost_after if lost_after is not None else 3 * ex.silence
        self._record = record
        self._unreachable: Dict[str, float] = {}  # node -> when it first failed to answer
        self._adopted: Set[str] = set()
        self._hopeless: Set[str] = set()
        self._restarted: Dict[str, float] = {}
        self._reports: Dict[str, NodeReport] = {}

    def __repr__(self) -> str:
        return "<Job %s>" % self.id

    # -- talking to jobd -----------------------------------------------
    def _dir(self, *parts: str) -> str:
        return "/".join((JOBS_DIR, self.id) + parts)

    def _jobd(self, node: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        return run_jobd(self.ex, node, *args, timeout=timeout)

    def _upload(self, node: str, batches: Dict[str, Any], record: JobRecord) -> None:
        import json
        conn = self.ex.connections[node]
        owners = [node] + [o for o, b in record.replicas.items() if b == node and o != node]
        for owner in owners:
            if owner not in batches:
                continue
            parts, entries = batches[owner]
            conn.upload(self._dir("batches", "%s.0.frames" % owner), parts)
            conn.upload(self._dir("batches", "%s.0.json" % owner),
                        json.dumps(entries).encode())
        conn.upload(self._dir("job.json"), json.dumps(record.to_dict()).encode())

    def _start(self, node: str, slots: Optional[int] = None) -> None:
        n = slots or self.ex.slots.get(node) or 1
        self._jobd(node, "start", self.id, "--node", node, "--slots", str(n))

    def _remove_everywhere(self) -> None:
        """A submit that failed half-way: stop what started, remove the files."""
        for node in self.ex.connections:
            try:  # jobd cancel: the cancel mark, then until the supervisor let go
                stop = launch(self.ex, node) + ["cancel", self.id, "--node", node]
                self.ex.connections[node].run(
                    ["sh", "-c", 'd=$1; shift; if [ -d "$d" ]; then "$@" >/dev/null 2>&1; '
                     'fi; rm -rf -- "$d"', "sh", self._dir()] + stop, warn=True, timeout=60)
            except LOSS + (CloudComputeError,) as exc:  # e.g. shipping jobd failed there
                LOG.warning("job %s: could not remove its files on %s: %s", self.id, node, exc)

    # -- the record ----------------------------------------------------
    @property
    def record(self) -> JobRecord:
        """The job's record, read from the first node that answers."""
        if self._record is None:
            found = list_jobs(self.ex, self.id)
            if not found:
                raise CloudComputeError("no job %s on the nodes of this cluster" % self.id)
            self._record = found[0]
        return self._record

    def _nodes(self) -> List[str]:
        rec = self.record
        return sorted((set(rec.nodes) | set(rec.replicas.values())) & set(self.ex.connections))

    # -- status --------------------------------------------------------
    def status(self) -> JobStatus:
        """Counts per state and every task's node, state and duration."""
        rec = self.record
        nodes = self._nodes()

        def one(node: str) -> Optional[NodeReport]:
            try:
                text = self._jobd(node, "status", self.id, "--node", node,
                                  timeout=3 * self.ex.silence + 10)
            except LOSS as exc:
                if not is_node_loss(exc):
                    raise
                self._unreachable.setdefault(node, time.monotonic())
                LOG.info("job %s: %s does not answer: %s", self.id, node, exc)
                self.ex.connections[node].close()
                return None
            except RemoteCommandError as exc:
                LOG.warning("job %s: %s: %s", self.id, node, exc)
                return None
            self._unreachable.pop(node, None)
            return NodeReport.parse(node, text, rec.tasks)

        with cf.ThreadPoolExecutor(max_workers=min(8, len(nodes) or 1)) as pool:
            found = dict(zip(nodes, pool.map(one, nodes), strict=True))
        self._reports = {n: r for n, r in found.items() if r is not None}
        return merge(rec, self._reports, set(self._unreachable))

    def _lost(self) -> Set[str]:
        now = time.monotonic()
        return {n for n, t0 in self._unreachable.items() if now - t0 >= self.lost_after}

    def _repair(self, st: JobStatus) -> None:
        """What an attached client does: restart a node's supervisor that is gone
        while work is left, and have the replica's node run a lost node's tasks."""
        now = time.monotonic()
        for node, rep in self._reports.items():
            unfinished = any(t.state not in TERMINAL for t in rep.tasks.values())
            if unfinished and not rep.supervisor and not rep.cancelled \
                    and now - self._restarted.get(node, -1e9) > RESTART_AFTER:
                LOG.warning("job %s: no supervisor on %s with work left; starting one",
                            self.id, node)
                self._restarted[node] = now
                self._try(node, self._start, node)
        for owner in self._lost() - self._adopted - self._hopeless:
            if not any(t.waiting_for == owner for t in st.tasks):
                continue
            buddy = self.record.replicas.get(owner)
            if buddy is None or buddy not in self._reports:
                LOG.warning("job %s: %s is lost and no replica of its tasks answers",
                            self.id, owner)
                self._hopeless.add(owner)
                continue
            LOG.warning("job %s: %s is lost; its tasks run again on %s", self.id, owner, buddy)
            if self._try(buddy, self._jobd, buddy, "adopt", self.id, "--node", buddy,
                         "--from", owner) and self._try(buddy, self._start, buddy):
                self._adopted.add(owner)

    def _try(self, node: str, call: Callable[..., Any], *args: Any) -> bool:
        """A repair step; a node that drops meanwhile is left for the next look."""
        try:
            call(*args)
            return True
        except LOSS as exc:
            if not is_node_loss(exc):
                raise
            LOG.info("job %s: %s: %s; trying again later", self.id, node, exc)
            return False

    # -- results -------------------------------------------------------
    def wait(self, timeout: Optional[float] = None,
             progress: Optional[Callable[[TaskState], None]] = None) -> JobStatus:
        """Until every task has ended (or cannot run again); WaitTimeout after
        ``timeout`` seconds. ``progress`` gets each task as it ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: Set[int] = set()
        delay = WAIT_FIRST
        while True:
            st = self.status()
            self._repair(st)
            for t in st.tasks:
                if t.state in TERMINAL and t.index not in seen:
                    seen.add(t.index)
                    if progress is not None:
                        progress(t)
            if all(t.state in TERMINAL or t.waiting_for in self._hopeless for t in st.tasks):
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout("the end of job %s" % self.id, timeout or 0,
                                  ["task %d (%s)" % (t.index, t.state) for t in st.tasks
                                   if t.state not in TERMINAL][:20])
            time.sleep(delay if deadline is None else
                       max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 1.5, WAIT_MAX)

    def results(self, timeout: Optional[float] = None, return_exceptions: bool = False,
                allow_pickle: Optional[bool] = None,
                progress: Optional[Callable[[TaskState], None]] = None) -> List[Any]:
        """Every task's value by position, once all have ended; as ``map``, a
        failure raises MapError (finished values kept) unless
        ``return_exceptions`` puts each exception in its place. Results stay
        on the nodes and can be read again. Pickled values are refused unless
        ``allow_pickle`` (default: as the job was submitted from this Job)."""
        st = self.wait(timeout, progress)
        pickle_ok = self.allow_pickle if allow_pickle is None else allow_pickle
        values: Dict[int, Any] = {}
        errors: Dict[int, BaseException] = {}
        done = [t for t in st.tasks if t.state == "done"]
        with cf.ThreadPoolExecutor(max_workers=min(8, len(done) or 1)) as pool:
            futures = {pool.submit(self._fetch, t, pickle_ok): t.index for t in done}
            for f, i in futures.items():
                try:
                    values[i] = f.result()
                except CloudComputeError as exc:
                    errors[i] = exc
        for t in st.tasks:
            if t.state in ("failed", "cancelled"):
                errors[t.index] = self._error(t)
            elif t.state not in TERMINAL:
                errors[t.index] = NodeLost(t.waiting_for or "?", "lost with task %d of job %s "
                                           "and no replica answers" % (t.index, self.id),
                                           ["%s.%d" % (self.id, t.index)])
        if return_exceptions:
            return [values[i] if i in values else errors[i] for i in range(len(st.tasks))]
        if errors:
            raise MapError(len(st.tasks), values, errors, [])
        return [values[i] for i in range(len(st.tasks))]

    def _error(self, t: TaskState) -> CloudComputeError:
        task_id = "%s.%d" % (self.id, t.index)
        if t.state == "cancelled":
            return Cancelled("task %s on %s was cancelled" % (task_id, t.node))
        return _task_error(t.node or "?", task_id, t.detail)

    def _fetch(self, t: TaskState, allow_pickle: bool) -> Any:
        node = t.node or "?"
        cap = self.ex.max_result_bytes
        size, sha, desc = t.detail.get("size"), t.detail.get("sha256"), t.detail.get("result")
        if not isinstance(size, int) or not isinstance(sha, str) or not isinstance(desc, dict):
            raise NodeDataRefused(node, "task %d has no result record" % t.index)
        if size > cap:
            raise NodeDataRefused(node, "result of task %d: %d bytes over the cap of %d"
                                  % (t.index, size, cap))
        conn = self.ex.connections[node]
        blob = retry.transfer()(conn.download)(self._dir("tasks", str(t.index), "result.bin"),
                                               sha256=sha, max_bytes=cap)
        offered = [f for f in wire.formats_here() if f != "pickle" or allow_pickle]
        try:
            return wire.decode(desc, blob, allow_pickle, offered=offered)
        except (wire.WireError, IndexError, KeyError) as exc:
            raise NodeDataRefused(node, "result of task %d: %s" % (t.index, exc)) from exc

    # -- logs and cancel -----------------------------------------------
    def logs(self, task: Optional[int] = None, follow: bool = False) -> Iterator[str]:
        """The tasks' output, line by line (``[position] text``), each node's in
        order; with ``follow``, as it is printed, until the tasks end."""
        lines: "queue.Queue[Optional[str]]" = queue.Queue(maxsize=10000)
        nodes = [n for n in self._nodes() if n not in self._lost()]
        args = ["--task", str(task)] if task is not None else []
        for node in nodes:
            threading.Thread(target=stream_logs, args=(self.ex, self.id, node, args, follow,
                                                       lines),
                             daemon=True, name="cc-logs-%s" % node).start()
        ended = 0
        while ended < len(nodes):
            line = lines.get()
            if line is None:
                ended += 1
            else:
                yield line

    def cancel(self) -> JobStatus:
        """Stop the job: running tasks are killed (their process groups), queued
        ones never start. Returns the status afterwards."""
        def one(node: str) -> None:
            try:
                self._jobd(node, "cancel", self.id, "--node", node, timeout=60)
            except LOSS as exc:
                LOG.warning("job %s: cancel on %s: %s", self.id, node, exc)
        nodes = [n for n in self._nodes() if n not in self._lost()]
        with cf.ThreadPoolExecutor(max_workers=min(8, len(nodes) or 1)) as pool:
            list(pool.map(one, nodes))
        return self.status()


