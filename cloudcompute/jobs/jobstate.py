"""What a detached job is, as the client reads it back from the nodes.

A node's answers (:mod:`.jobd`) are untrusted: each is parsed into the typed
records below with every field's type checked and every string shortened,
and :func:`merge` combines the nodes' views of one job into a
:class:`JobStatus`: per task its state, node and duration, and which tasks
wait for a lost node's work to be run again.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Set

from cloudcompute.exceptions import NodeDataRefused

JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
"""A task's label: usable as a file name's stem."""
STATES = ("queued", "running", "done", "failed", "cancelled", "lost")
TERMINAL = ("done", "failed", "cancelled")
MAX_TASKS = 1_000_000
_TEXT_KEEP = 16 << 10
_RANK = {"queued": 1, "running": 2, "cancelled": 3, "failed": 4, "done": 5}
_DETAIL: Dict[str, Any] = {"exc_type": str, "message": str, "traceback": str, "killed": int,
           "timed_out": (int, float), "cancelled": bool, "sha256": str, "size": int,
           "result": dict, "id": str}


@dataclasses.dataclass
class JobRecord:
    """A job as recorded on every one of its nodes (``job.json``)."""
    id: str
    function: str
    tasks: int
    nodes: Dict[str, List[int]]
    replicas: Dict[str, str] = dataclasses.field(default_factory=dict)
    created_at: float = 0.0
    timeout: Optional[float] = None
    allow_pickle: bool = False
    client: str = ""
    labels: List[str] = dataclasses.field(default_factory=list)
    """A name per task (e.g. its input file's stem), or none."""

    def to_dict(self) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self), version=1)

    def owner(self, index: int) -> Optional[str]:
        """The node the task was given to at submit."""
        for node, indices in self.nodes.items():
            if index in indices:
                return node
        return None

    @classmethod
    def parse(cls, data: Any, node: str = "?") -> "JobRecord":
        """A record read from a node; NodeDataRefused if it is not well formed."""
        def bad(why: str) -> NodeDataRefused:
            return NodeDataRefused(node, "job record: %s" % why)
        if not isinstance(data, dict):
            raise bad("not a JSON object")
        jid, n = data.get("id"), data.get("tasks")
        if not isinstance(jid, str) or not JOB_ID.match(jid):
            raise bad("bad id %r" % (jid,))
        if type(n) is not int or not 0 < n <= MAX_TASKS:
            raise bad("bad task count %r" % (n,))
        nodes = data.get("nodes")
        if not isinstance(nodes, dict) or not all(
                isinstance(k, str) and NODE_NAME.match(k) and isinstance(v, list)
                and all(type(i) is int and 0 <= i < n for i in v) for k, v in nodes.items()):
            raise bad("bad assignment")
        replicas = data.get("replicas") or {}
        if not isinstance(replicas, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and NODE_NAME.match(v)
                for k, v in replicas.items()):
            raise bad("bad replicas")
        timeout = data.get("timeout")
        if timeout is not None and not isinstance(timeout, (int, float)):
            raise bad("bad timeout")
        labels = data.get("labels") or []
        if not isinstance(labels, list) or (labels and len(labels) != n) or not all(
                isinstance(x, str) and LABEL.match(x) for x in labels):
            raise bad("bad labels")
        return cls(jid, str(data.get("function", "?"))[:512], n, nodes, dict(replicas),
                   float(data.get("created_at") or 0.0),
                   float(timeout) if timeout is not None else None,
                   data.get("allow_pickle") is True, str(data.get("client", ""))[:256],
                   list(labels))


@dataclasses.dataclass
class TaskState:
    """One task of a job: where it is, how long it took, how it ended."""
    index: int
    state: str
    node: Optional[str] = None
    duration: Optional[float] = None
    started: Optional[float] = None
    ended: Optional[float] = None
    peak_rss_kb: int = 0
    waiting_for: Optional[str] = None
    """For a ``lost`` task: the node that does not answer, whose work is to be
    run again elsewhere by a client that is attached."""
    detail: Dict[str, Any] = dataclasses.field(default_factory=dict)
    """The node's word on its end: exc_type, message, traceback, killed,
    timed_out, cancelled; or the result's sha256, size and format."""

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["detail"] = {k: v for k, v in self.detail.items() if k != "traceback"}
        return out


@dataclasses.dataclass
class NodeReport:
    """One node's answer to ``jobd status``."""
    node: str
    supervisor: bool
    cancelled: bool
    tasks: Dict[int, TaskState]

    @classmethod
    def parse(cls, node: str, text: str, total: int) -> "NodeReport":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise NodeDataRefused(node, "job status is not JSON: %s" % exc) from None
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
            raise NodeDataRefused(node, "job status is not a JSON object with tasks")
        tasks = {}
        for key, raw in data["tasks"].items():
            if not key.isdigit() or int(key) >= total or not isinstance(raw, dict):
                raise NodeDataRefused(node, "job status names task %r" % key[:40])
            tasks[int(key)] = _task(node, int(key), raw)
        return cls(node, data.get("supervisor") is True, data.get("cancelled") is True, tasks)


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _task(node: str, index: int, raw: Dict[str, Any]) -> TaskState:
    state = raw.get("state")
    if state not in _RANK:
        raise NodeDataRefused(node, "task %d has state %r" % (index, str(state)[:40]))
    detail: Dict[str, Any] = {}
    for key, kind in _DETAIL.items():
        value = raw.get(key)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            detail[key] = value[-_TEXT_KEEP:] if isinstance(value, str) else value
    rss = raw.get("peak_rss_kb")
    return TaskState(index, str(state), node, _number(raw.get("duration")),
                     _number(raw.get("started")), _number(raw.get("ended")),
                     int(rss) if type(rss) is int else 0, None, detail)


@dataclasses.dataclass
class JobStatus:
    """A job at one moment: counts per state and every task."""
    job_id: str
    counts: Dict[str, int]
    tasks: List[TaskState]
    unreachable: List[str]
    cancelled: bool = False

    @property
    def finished(self) -> bool:
        return all(t.state in TERMINAL for t in self.tasks)

    def to_dict(self) -> Dict[str, Any]:
        return {"job": self.job_id, "counts": self.counts, "unreachable": self.unreachable,
                "cancelled": self.cancelled, "tasks": [t.to_dict() for t in self.tasks]}


def merge(record: JobRecord, reports: Mapping[str, NodeReport],
          unreachable: Set[str]) -> JobStatus:
    """One status from every node's report. A task reported by several nodes
    (run again after a loss) counts in its most advanced state; a task no
    answering node reports is ``lost``, waiting for its node."""
    tasks: List[TaskState] = []
    for i in range(record.tasks):
        seen = [r.tasks[i] for r in reports.values() if i in r.tasks]
        if seen:
            tasks.append(max(seen, key=lambda t: (_RANK[t.state], t.ended or 0.0)))
            continue
        owner = record.owner(i)
        if owner in reports:  # it answers but does not know the task
            tasks.append(TaskState(i, "lost", owner, waiting_for=owner,
                                   detail={"message": "the node has no record of it"}))
        else:
            tasks.append(TaskState(i, "lost", owner, waiting_for=owner))
    counts = {s: 0 for s in STATES}
    for t in tasks:
        counts[t.state] += 1
    return JobStatus(record.id, counts, tasks, sorted(unreachable),
                     any(r.cancelled for r in reports.values()))
