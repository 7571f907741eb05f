"""Talking to the supervisor's commands (:mod:`.jobd`) on the nodes.

Each command runs over the node's verified SSH connection, every argument
quoted; what a node prints is capped (the command output keeps its last
16 MiB, and a truncated answer is refused), and a log stream is passed on
line by line, a line without end in 1 MiB pieces.
"""
from __future__ import annotations

import json
import logging
import queue
import secrets
import socket
import time
import weakref
from typing import Any, List, Optional

import paramiko

from cloudcompute.exceptions import CloudComputeError, NodeDataRefused, NodeLost, SSHError
from cloudcompute.jobs import protocol as P
from cloudcompute.jobs.channel import LAUNCH_JOBD, RemoteWorker
from cloudcompute.jobs.executor import Executor
from cloudcompute.jobs.jobstate import JOB_ID, JobRecord
from cloudcompute.jobs.placement import is_node_loss
from cloudcompute.ssh.client import quote_command

LOG = logging.getLogger(__name__)
JOBS_DIR = P.NODE_DIR + "/jobs"
COMMAND_TIMEOUT = 120.0  # seconds for one jobd command on a node
LOSS = (SSHError, NodeLost, OSError, EOFError, paramiko.SSHException, socket.timeout)


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise ValueError("%r is not a job id (lowercase letters, digits and '-')" % (job_id,))
    return job_id


_PACKAGES: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def launch(ex: Executor, node: str) -> List[str]:
    """The argv that runs jobd on ``node`` (the node package shipped once)."""
    conn = ex.connections[node]
    if conn not in _PACKAGES:
        _PACKAGES[conn] = RemoteWorker(conn).ensure_shipped()
    return [ex.python.get(node, "python3"), "-c", LAUNCH_JOBD, _PACKAGES[conn]]


def run_jobd(ex: Executor, node: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """What a jobd command printed on ``node``; its output is capped. A
    connection that broke (a dropped session) is reopened once."""
    conn = ex.connections[node]
    try:
        result = conn.run(launch(ex, node) + list(args), timeout=timeout)
    except LOSS as exc:
        if not is_node_loss(exc):
            raise
        LOG.info("%s: %s; reconnecting once", node, exc)
        conn.close()
        result = conn.run(launch(ex, node) + list(args), timeout=timeout)
    if result.truncated:
        raise NodeDataRefused(node, "jobd %s answered over the output cap" % args[0])
    return result.stdout


def stream_logs(ex: Executor, job_id: str, node: str, args: List[str], follow: bool,
                out: "queue.Queue[Optional[str]]") -> None:
    """Put ``node``'s output lines of the job on ``out``, then None."""
    try:
        conn = ex.connections[node]
        argv = launch(ex, node) + ["logs", job_id, "--node", node] + args
        chan = conn.client.get_transport().open_session(timeout=30)
        chan.settimeout(None if follow else COMMAND_TIMEOUT)
        chan.exec_command(quote_command(argv + (["--follow"] if follow else [])))
        partial = b""
        while True:
            chunk = chan.recv(1 << 16)
            if not chunk:
                break
            partial += chunk
            *complete, partial = partial.split(b"\n")
            for line in complete:
                out.put(line.decode("utf-8", "replace"))
            if len(partial) > 1 << 20:  # a line without end: passed on in pieces
                out.put(partial.decode("utf-8", "replace"))
                partial = b""
        if partial:
            out.put(partial.decode("utf-8", "replace"))
        chan.close()
    except LOSS + (CloudComputeError,) as exc:  # this thread's end is the caller's None
        LOG.warning("job %s: logs of %s: %s", job_id, node, exc)
    finally:
        out.put(None)


def list_jobs(ex: Executor, job_id: Optional[str] = None) -> List[JobRecord]:
    """The jobs recorded on the cluster's nodes (each node holds every record of
    its jobs; the first that answers is asked), oldest first."""
    for node in sorted(ex.connections):
        if node in ex.dead:
            continue
        try:
            text = run_jobd(ex, node, "list", *([check_job_id(job_id)] if job_id else []))
        except LOSS as exc:
            LOG.info("jobs: %s does not answer: %s", node, exc)
            continue
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise NodeDataRefused(node, "job list is not JSON: %s" % exc) from None
        if not isinstance(data, list):
            raise NodeDataRefused(node, "job list is not a JSON list")
        out = []
        for raw in data:
            try:
                out.append(JobRecord.parse(raw, node))
            except NodeDataRefused as exc:
                LOG.warning("%s", exc)
        return sorted(out, key=lambda r: (r.created_at, r.id))
    raise NodeLost(", ".join(sorted(ex.connections)), "no node answers")
