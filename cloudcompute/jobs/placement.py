"""Tasks and where they run: the slots of the live nodes, and the loss rule.

A :class:`SlotPool` holds the free slots of the nodes a ``map`` runs on;
threads wait on it for a slot (a condition variable, no polling), and a lost
node's slots leave it. :func:`is_node_loss` says which failures re-run a task.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Dict, Optional, Sequence

from cloudcompute.exceptions import CloudComputeError, IntegrityError, NodeLost, SSHError
from cloudcompute.jobs import project
from cloudcompute.ssh.client import is_transient


@dataclasses.dataclass
class TaskResult:
    """One finished task: its value and what it cost on the node."""
    node: str
    task: str
    value: Any
    duration: float
    peak_rss_kb: int


@dataclasses.dataclass
class Task:
    """One call to run: ``fn(*args, **kwargs)``, with its limits."""
    id: str
    fn: Callable[..., Any]
    args: Sequence[Any]
    kwargs: Dict[str, Any]
    allow_pickle: bool = False
    timeout: Optional[float] = None
    project: Optional[project.Project] = None
    # the function's pickle, shared by the tasks of one call (id(fn) -> bytes)
    pickled: Dict[int, bytes] = dataclasses.field(default_factory=dict)


class Cancelled(CloudComputeError):
    """A task was stopped because its map had already failed."""


class NoLiveNodes(NodeLost):
    """Every node of a map was lost."""


def is_node_loss(exc: BaseException) -> bool:
    """Faults after which a task runs again: a lost node or a damaged payload."""
    if isinstance(exc, NoLiveNodes):
        return False
    if isinstance(exc, (NodeLost, IntegrityError)):
        return True
    if isinstance(exc, CloudComputeError) and not isinstance(exc, SSHError):
        return False
    return is_transient(exc)


class SlotPool:
    """The free slots of the live nodes; ``acquire`` waits for one (no polling)."""

    def __init__(self, slots: Dict[str, int],
                 on_lost: Optional[Callable[[str, BaseException], None]] = None):
        self.free = dict(slots)
        self.on_lost = on_lost
        self.closed = False
        self.cond = threading.Condition()

    def acquire(self, previous: Optional[str] = None) -> str:
        with self.cond:
            while True:
                if self.closed:
                    raise Cancelled("map stopped")
                if not self.free:
                    raise NoLiveNodes(previous or "?", "no live node left to run on")
                node = max(self.free, key=lambda n: self.free[n])
                if self.free[node] > 0:
                    self.free[node] -= 1
                    return node
                self.cond.wait()

    def release(self, node: str) -> None:
        with self.cond:
            if node in self.free:
                self.free[node] += 1
                self.cond.notify()

    def lost(self, node: str, exc: BaseException) -> None:
        with self.cond:
            known = self.free.pop(node, None) is not None
            self.cond.notify_all()
        if known and self.on_lost is not None:
            self.on_lost(node, exc)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
