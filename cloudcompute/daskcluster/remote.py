"""The Dask processes on a node: how they are started, found, waited for and stopped.

Each node runs at most one scheduler and one worker, each detached from the
SSH session that started it (``setsid nohup``: its own session and process
group, SIGHUP ignored, stdin from /dev/null, output to a log), with its
process-group id in a pid file:

    ~/.cloudcompute/dask/scheduler.pid   scheduler.log   scheduler.json
    ~/.cloudcompute/dask/worker.pid      worker.log      worker-space/

``scheduler.json`` is Dask's scheduler file: it appears once the scheduler
listens, so it is what the start-up waits for. Finding, waiting for and
stopping processes is the node tool (:mod:`cloudcompute.nodeside.dask_tool`,
:func:`tool_argv`), run by the node's own ``python3`` (no Dask needed); it acts
only on process groups whose leader was started by these commands, and every
wait in it is bounded.
"""
from __future__ import annotations

import posixpath
import re
from typing import List, Optional, Sequence, Union

from cloudcompute import nodeside
from cloudcompute.jobs.protocol import NODE_DIR
from cloudcompute.ssh.client import quote_command

DASK_DIR = NODE_DIR + "/dask"  # relative to the login user's home, as SSH commands start
ROLES = ("scheduler", "worker")
ENV_MARK = "CLOUDCOMPUTE_DASK"
"""Set in the environment of every process we start (children inherit it): the node
tool signals only processes that carry it, never a stranger that reused a pid."""
MIB = 1 << 20


def path(name: str) -> str:
    return posixpath.join(DASK_DIR, name)


def memory_limit(ram_mb: int, hosts_scheduler: bool) -> Union[int, str]:
    """Bytes a node's worker may use: the flavor's RAM less a tenth (at least
    128 MiB) for the system and, on the first node, as much again for the
    scheduler; never below 256 MiB. ``"auto"`` (Dask's own guess) when the
    flavor's RAM is unknown."""
    if ram_mb <= 0:
        return "auto"
    reserve = max(128, ram_mb // 10)
    usable = ram_mb - reserve - (reserve if hosts_scheduler else 0)
    return max(MIN_WORKER_MB, usable) * MIB


MIN_WORKER_MB = 256
SMALL_WORKER_MB = 512
"""Below this a worker that imports pandas and pyarrow is soon past Dask's 95%
line and restarted by its nanny: worth a warning."""


def scheduler_argv(python: str, host: str, port: int, dashboard_port: int) -> List[str]:
    """The scheduler, bound to the node's fixed IP (never 0.0.0.0)."""
    return [python, "-m", "distributed.cli.dask_scheduler",
            "--host", host, "--port", str(port),
            "--dashboard-address", "%s:%d" % (host, dashboard_port),
            "--scheduler-file", path("scheduler.json")]


def worker_argv(python: str, scheduler: str, host: str, name: str, nthreads: int,
                memory: Union[int, str]) -> List[str]:
    """One worker (under a nanny, which restarts it if it dies) bound to the fixed IP,
    without a dashboard of its own (the scheduler's shows every worker)."""
    return [python, "-m", "distributed.cli.dask_worker", scheduler,
            "--host", host, "--name", name, "--nthreads", str(nthreads), "--nworkers", "1",
            "--memory-limit", str(memory), "--no-dashboard",
            "--local-directory", path("worker-space")]


# The inner shell writes its own pid (which exec keeps) before becoming the
# Dask process; setsid made it the leader of a new process group, so the pid
# is also the group that stop() signals (the nanny and its worker together).
_LAUNCH = 'echo $$ > "$0"; exec "$@"'


def start_command(role: str, argv: Sequence[str]) -> str:
    """A shell command that starts ``argv`` detached and returns at once."""
    if role not in ROLES:
        raise ValueError("unknown Dask role %r" % role)
    prepare = ["rm", "-f", path(role + ".pid")]
    if role == "scheduler":
        prepare.append(path("scheduler.json"))
    launch = (["setsid", "nohup", "env", "%s=%s" % (ENV_MARK, role), "sh", "-c", _LAUNCH,
               path(role + ".pid")] + list(argv))
    return "%s && %s && %s && %s > %s 2>&1 < /dev/null &" % (
        quote_command(["mkdir", "-p", DASK_DIR]), quote_command(["chmod", "700", DASK_DIR]),
        quote_command(prepare), quote_command(launch), quote_command([path(role + ".log")]))


def tool_argv(mode: str, *args: Union[str, float], python: str = "python3") -> List[str]:
    """The node tool (:mod:`cloudcompute.nodeside.dask_tool`) on :data:`DASK_DIR`:
    ``status`` | ``wait ROLE TIMEOUT`` | ``stop GRACE``; it prints one JSON object."""
    return nodeside.command("dask_tool", DASK_DIR, mode, *[str(a) for a in args],
                            python=python)


def log_excerpt(text: Optional[str], lines: int = 15) -> str:
    """The last lines of a process log, for an error message, preceded by the
    exception lines of any earlier traceback in it (a chained traceback ends
    with the wrapper, e.g. "Scheduler failed to start", not with the cause)."""
    every = (text or "").strip().splitlines()
    if not every:
        return "(the log is empty)"
    causes = [line for line in every[:-lines] if _EXCEPTION_LINE.match(line)]
    return "\n".join(causes[-3:] + (["..."] if causes else []) + every[-lines:])


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")
