"""Running work on a cluster: one warm worker per node, tasks balanced across them.

Each node runs :mod:`cloudcompute.jobs.worker` on one long-lived SSH
channel, so a small task costs a round trip, not a new SSH session and a
fresh ``import pandas``. ``map`` hands the next task to whichever node is
free, so a slow node does not hold the others back. A node that drops has
its task retried elsewhere (up to ``task_retries``); results are kept by
position, so none is lost or duplicated.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set

import paramiko

from cloudcompute.exceptions import (CloudComputeError, EnvironmentMismatch, IntegrityError,
                                     NodeLost,
                                     RemoteTaskError, SSHError, TaskKilled)
from cloudcompute.jobs import payload
from cloudcompute.jobs import worker as wire
from cloudcompute.ssh import bulk
from cloudcompute.ssh.client import NodeConnection, is_transient, quote_command, send_all

LOG = logging.getLogger(__name__)
WORKER_SOURCE = open(wire.__file__, "rb").read()
WORKER_SHA = hashlib.sha256(WORKER_SOURCE).hexdigest()
REMOTE_DIR = ".cloudcompute"
STAGE_DIR = REMOTE_DIR + "/stage"
STAGE_OVER = 16 << 20  # bytes; larger blobs travel as files through the bulk transfer


@dataclasses.dataclass
class TaskResult:
    """One finished task: its value and what it cost on the node."""
    node: str
    task: str
    value: Any
    duration: float
    peak_rss_kb: int


class _ChannelWriter:
    """File-like writes onto a channel without copying (sendall slices its input)."""

    def __init__(self, chan: paramiko.Channel):
        self.chan = chan

    def write(self, data: bytes) -> None:
        send_all(self.chan, data)

    def flush(self) -> None:
        pass


class _ChannelReader:
    """File-like reads from a channel (paramiko's makefile is slow for large reads)."""

    def __init__(self, chan: paramiko.Channel):
        self.chan = chan

    def read(self, n: int) -> bytes:
        return self.chan.recv(min(n, 4 << 20))


class RemoteWorker:
    """The warm worker process on one node, driven over one SSH channel."""

    def __init__(self, conn: NodeConnection, python: str = "python3",
                 log_handler: Optional[Callable[[str, str, str], None]] = None):
        self.conn = conn
        self.python = python
        self.log_handler = log_handler
        self.chan: Optional[paramiko.Channel] = None
        self.hello: Dict[str, Any] = {}
        self.modules: Set[str] = set()  # hashes of module sources this worker holds
        self._lock = threading.Lock()

    @property
    def node(self) -> str:
        return self.conn.name

    def ensure_shipped(self) -> str:
        """Upload the worker once per content hash; return its remote path."""
        path = "%s/%s/worker.py" % (REMOTE_DIR, WORKER_SHA[:16])
        check = self.conn.run(["sh", "-c", 'test -f "$1" && sha256sum "$1"', "sh", path],
                              warn=True)
        if check.ok and check.stdout.split()[0] == WORKER_SHA:
            return path
        self.conn.run(["mkdir", "-p", os.path.dirname(path)])
        tmp = path + ".tmp"
        with self.conn.sftp.open(tmp, "wb") as f:
            f.write(WORKER_SOURCE)
        self.conn.run(["mv", tmp, path])
        return path

    def start(self) -> Dict[str, Any]:
        path = self.ensure_shipped()
        self.modules = set()
        chan = self.conn.client.get_transport().open_session(timeout=30)
        chan.exec_command(quote_command([self.python, "-u", path]))
        self.chan = chan
        self._in = _ChannelReader(chan)
        self._out = _ChannelWriter(chan)
        try:
            header, _ = self._recv()
        except SSHError as exc:
            self.chan = None
            if not self.conn.client.get_transport().is_active():
                raise
            # The node answers, but its Python cannot run the worker.
            raise EnvironmentMismatch(self.node, ["the worker did not start with %s: %s"
                                                  % (self.python, exc)]) from exc
        if header.get("op") != "hello":
            raise SSHError(self.node, "worker did not start: %r" % header)
        self.hello = header
        LOG.debug("worker on %s: %s", self.node, header["versions"])
        return header

    def _recv(self):
        try:
            return wire.read_frame(self._in)
        except EOFError as exc:
            err = b""
            if self.chan is not None:
                while self.chan.recv_stderr_ready():
                    err += self.chan.recv_stderr(1 << 16)
            raise SSHError(self.node, "worker channel closed: %s %s"
                           % (exc, err.decode("utf-8", "replace")[-2000:])) from exc
        except (OSError, paramiko.SSHException) as exc:
            raise SSHError(self.node, "worker channel failed: %s" % exc) from exc

    def call(self, request: Dict[str, Any], blobs: Sequence[bytes]):
        """Send one request and wait for its answer, forwarding log frames."""
        with self._lock:
            if self.chan is None:
                self.start()
            try:
                wire.write_frame(self._out, request, blobs)
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise SSHError(self.node, "sending to worker failed: %s" % exc) from exc
            while True:
                try:
                    header, rblobs = self._recv()
                except wire.WireError as exc:
                    raise IntegrityError(self.node, "result of %s" % request.get("id"),
                                         "sha256 in header", str(exc)) from exc
                op = header.get("op")
                if op == "log":
                    if self.log_handler:
                        self.log_handler(self.node, header.get("id", ""), header["text"])
                    else:
                        for line in header["text"].rstrip("\n").splitlines():
                            LOG.info("[%s %s] %s", self.node, header.get("id"), line)
                    continue
                if op == "wire_error":
                    raise IntegrityError(self.node, "payload of %s" % request.get("id"),
                                         "sent sha256", header.get("message", ""))
                return header, rblobs

    def close(self) -> None:
        if self.chan is not None:
            try:
                wire.write_frame(self._out, {"op": "exit"})
            except (OSError, paramiko.SSHException, EOFError):
                pass
            self.chan.close()
            self.chan = None


class Executor:
    """Runs functions on the nodes of a cluster."""

    def __init__(self, connections: Dict[str, NodeConnection],
                 python: Optional[Dict[str, str]] = None, task_retries: int = 2):
        self.connections = connections
        self.python = python or {}
        self.task_retries = task_retries
        self.workers: Dict[str, RemoteWorker] = {}
        self.dead: Dict[str, str] = {}
        self._lock = threading.Lock()
        self._counter = 0

    def worker(self, node: str) -> RemoteWorker:
        with self._lock:
            w = self.workers.get(node)
            if w is None:
                w = self.workers[node] = RemoteWorker(self.connections[node],
                                                      self.python.get(node, "python3"))
        if w.chan is None:
            w.start()
        return w

    def close(self) -> None:
        for w in self.workers.values():
            w.close()
        self.workers = {}

    def _task_id(self) -> str:
        with self._lock:
            self._counter += 1
            return "t%d" % self._counter

    def _request(self, w: RemoteWorker, fn: Callable[..., Any], args: Sequence[Any],
                 kwargs: Dict[str, Any], allow_pickle: bool, task_id: str):
        blobs = payload.Blobs()
        formats = [f for f in w.hello["formats"] if f != "pickle" or allow_pickle]
        fn_spec = payload.function_spec(fn, blobs, allow_pickle, w.hello["versions"], w.node,
                                        sent=w.modules)
        a, kw = payload.encode_args(args, kwargs, blobs, formats, allow_pickle)
        result_formats = [f for f in wire.formats_here() if f != "pickle" or allow_pickle]
        return ({"op": "task", "id": task_id, "fn": fn_spec, "args": a, "kwargs": kw,
                 "allow_pickle": allow_pickle, "result_formats": result_formats},
                blobs.items)

    def run_on(self, node: str, fn: Callable[..., Any], args: Sequence[Any] = (),
               kwargs: Optional[Dict[str, Any]] = None, allow_pickle: bool = False,
               task_id: Optional[str] = None) -> TaskResult:
        """Run ``fn(*args, **kwargs)`` on ``node``; raise the task's error as ours."""
        task_id = task_id or self._task_id()
        conn = self.connections[node]
        for attempt in range(2):
            try:
                w = self.worker(node)
                request, blobs = self._request(w, fn, args, kwargs or {}, allow_pickle,
                                               task_id)
                sent = self._stage(conn, request, blobs) if bulk.available() else blobs
                header, rblobs = w.call(request, sent)
                if "blob" in request["fn"] and "sha256" in request["fn"]:
                    w.modules.add(request["fn"]["sha256"])
                break
            except IntegrityError:
                if attempt:
                    raise
                LOG.warning("checksum mismatch for %s on %s; sending again", task_id, node)
            except (SSHError, OSError, EOFError, paramiko.SSHException) as exc:
                if not is_transient(exc):
                    raise
                self._drop_worker(node)
                if attempt:
                    raise NodeLost(node, "connection lost twice during %s: %s"
                                   % (task_id, exc), [task_id]) from exc
                # At-least-once, as map's retries on another node: run it again.
                LOG.warning("connection to %s lost during %s (%s); reconnecting",
                            node, task_id, exc)
        if not header.get("ok"):
            if header.get("killed"):
                raise TaskKilled(node, task_id, header["killed"],
                                 "signal %d%s" % (header["killed"], " (SIGKILL: out of memory?)"
                                                  if header["killed"] == 9 else ""))
            raise RemoteTaskError(node, task_id, header.get("exc_type", "?"),
                                  header.get("message", ""), header.get("traceback", ""))
        desc = header["result"]
        for idx, st in header.get("staged", {}).items():
            rblobs[int(idx)] = conn.download(st["path"], sha256=st["sha256"], remove=True)
        try:
            value = wire.decode(desc, rblobs[desc["blob"]], allow_pickle)
        except wire.WireError as exc:
            raise CloudComputeError("result of %s on %s: %s" % (task_id, node, exc)) from exc
        return TaskResult(node, task_id, value, header.get("duration", 0.0),
                          header.get("peak_rss_kb", 0))

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

    def map(self, fn: Callable[..., Any], items: Iterable[Any], allow_pickle: bool = False,
            nodes: Optional[Sequence[str]] = None, star: bool = False,
            progress: Optional[Callable[[TaskResult], None]] = None) -> List[TaskResult]:
        """Run ``fn`` over ``items`` on all nodes, the next item to whichever node is free."""
        items = list(items)
        nodes = [n for n in (nodes or list(self.connections)) if n not in self.dead]
        if not nodes:
            raise CloudComputeError("no live nodes to run on")
        # Refuse what cannot be sent before anything is sent.
        payload.function_spec(fn, payload.Blobs(), allow_pickle)
        todo: "queue.Queue[int]" = queue.Queue()
        for i in range(len(items)):
            todo.put(i)
        results: Dict[int, TaskResult] = {}
        attempts: Dict[int, int] = {}
        failure: List[BaseException] = []
        stop = threading.Event()

        def drive(node: str) -> None:
            while not stop.is_set():
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    if len(results) + len(failure) >= len(items) or not alive_others(node):
                        return
                    time.sleep(0.005)
                    continue
                args = items[i] if star else (items[i],)
                try:
                    results[i] = self.run_on(node, fn, args, allow_pickle=allow_pickle,
                                             task_id="%s#%d" % (getattr(fn, "__name__", "fn"), i))
                    if progress is not None:
                        progress(results[i])
                except (SSHError, NodeLost, OSError, EOFError, paramiko.SSHException) as exc:
                    attempts[i] = attempts.get(i, 0) + 1
                    self._mark_dead(node, exc)
                    if attempts[i] > self.task_retries:
                        failure.append(NodeLost(node, str(exc), ["item %d" % i]))
                        stop.set()
                    else:
                        LOG.warning("node %s lost during item %d; retrying it elsewhere",
                                    node, i)
                        todo.put(i)
                    return
                except BaseException as exc:
                    failure.append(exc)
                    stop.set()
                    return

        def alive_others(node: str) -> bool:
            return not todo.empty() or any(n not in self.dead for n in nodes if n != node)

        with cf.ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            for f in [pool.submit(drive, n) for n in nodes]:
                f.result()
        if failure:
            raise failure[0]
        missing = [i for i in range(len(items)) if i not in results]
        if missing:
            raise NodeLost(", ".join(sorted(self.dead)) or "?", "every node failed",
                           ["item %d" % i for i in missing])
        return [results[i] for i in range(len(items))]

    def _mark_dead(self, node: str, exc: BaseException) -> None:
        LOG.warning("node %s marked dead: %s", node, exc)
        self.dead[node] = str(exc)
        self._drop_worker(node)

    def _drop_worker(self, node: str) -> None:
        """Forget the node's worker and close its connection (reopened on next use)."""
        w = self.workers.pop(node, None)
        if w is not None:
            try:
                w.close()
            except (OSError, paramiko.SSHException):
                pass
        self.connections[node].close()
