"""Commands for detached jobs: ``submit``, ``jobs``, ``results``, ``cancel``, and
``logs NAME JOB`` (the ``logs`` command's job form)."""
from __future__ import annotations

import argparse
import re
import sys
import textwrap
import time
from typing import Any, Callable, Dict, List, Optional

from cloudcompute.cli.common import (FUNCTION_HELP, INPUTS_HELP, NAME_HELP,
                                     add_allow_pickle, attach, emit)
from cloudcompute.cli.parser import UsageError, add_command, option
from cloudcompute.cli.progress import progress_bar

JOB_HELP = "The job's id, as submit printed it."
_JOB_SHAPE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]+$")


def register(sub: Any) -> None:
    submit = add_command(sub, "submit", cmd_submit,
                         "Start a function over input files as a detached job; print its id.",
                         """\
Start a function on the cluster once per input file, as a job that outlives
this command: the nodes keep running it and keep its output and results when
this machine disconnects. Prints the job id at once; with -o, then waits and
writes the results as `results` does.""")
    submit.add_argument("name", metavar="NAME", help=NAME_HELP)
    submit.add_argument("function", metavar="FUNCTION", help=FUNCTION_HELP)
    submit.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUTS_HELP + ".")
    option(submit, "-o", "--output-dir", metavar="DIR", shown="do not wait",
           help="Wait for the job and write its results to this directory")
    add_allow_pickle(submit)
    option(submit, "--timeout", type=float, metavar="SECONDS", shown="none",
           help="Kill a task that runs longer than this on its node")

    jobs = add_command(sub, "jobs", cmd_jobs, "List the detached jobs on a cluster's nodes.")
    jobs.add_argument("name", metavar="NAME", help=NAME_HELP)

    results = add_command(sub, "results", cmd_results,
                          "Wait for a job and write its results to a directory.", """\
Wait for a detached job and write each task's value to the output directory,
named after its input file (.npy, .parquet or .csv, .json). Results stay on
the nodes and can be fetched again. A failed task is reported and the exit
code is 1; the others' values are still written.""")
    results.add_argument("name", metavar="NAME", help=NAME_HELP)
    results.add_argument("job", metavar="JOB", help=JOB_HELP)
    option(results, "-o", "--output-dir", metavar="DIR", default="results",
           help="The directory the results are written to")
    add_allow_pickle(results)
    option(results, "--wait", type=float, metavar="SECONDS", shown="no limit",
           help="Seconds to wait for the job before giving up with exit code 1")

    cancel = add_command(sub, "cancel", cmd_cancel,
                         "Cancel a detached job: kill its running tasks, start no more.")
    cancel.add_argument("name", metavar="NAME", help=NAME_HELP)
    cancel.add_argument("job", metavar="JOB", help=JOB_HELP)

    logs = sub.choices.get("logs")
    if logs is not None:  # `logs NAME JOB`: a job's output instead of console logs
        console = logs.get_default("func")
        logs.set_defaults(func=lambda args: cmd_logs(args, console))
        for action in logs._actions:
            if action.dest == "node":
                action.metavar = "NODE|JOB"
                action.help = ("Only this node's console log (default: every node's); "
                               "or a job id: that job's output.")
        logs.description = (logs.description or "") + "\n\n" + textwrap.fill(
            "With a job id instead of a node: the job's output, each line prefixed "
            "with its task's position (0 is the first); -f follows it as it is "
            "printed.", 79)
        option(logs, "-f", "--follow", action="store_true", default=False,
               help="With JOB: print the output as it comes, until the job ends")
        option(logs, "--task", type=int, metavar="N", shown="every task",
               help="With JOB: only the output of the task at this position")


def _job(c: Any, job_id: str, allow_pickle: bool = False) -> Any:
    try:
        return c.jobs.job(job_id, allow_pickle=allow_pickle)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def cmd_submit(args: argparse.Namespace) -> int:
    from cloudcompute.cli.transfercmds import load_function, load_input, output_stems
    from cloudcompute.jobs import detached
    fn = load_function(args.function)
    labels = output_stems(args.inputs)
    inputs = [load_input(p) for p in args.inputs]
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    c = attach(args)
    try:
        job = detached.submit(c.executor(), fn, inputs, allow_pickle=args.allow_pickle,
                              timeout=args.timeout, labels=labels)
        if not args.output_dir:
            emit(args, {"job": job.id, "tasks": len(inputs)})
            return 0
        if args.format != "json":
            sys.stdout.write("job %s\n" % job.id)
            sys.stdout.flush()
        return _collect(args, job, None)
    finally:
        c.close_connections()


def _collect(args: argparse.Namespace, job: Any, wait: Optional[float]) -> int:
    from cloudcompute.cli.transfercmds import save_output
    rec = job.record
    with progress_bar(rec.tasks, "tasks") as tick:
        values = job.results(timeout=wait, return_exceptions=True,
                             progress=_ticker(tick))
    outputs, failed = [], {}
    for i, value in enumerate(values):
        if isinstance(value, BaseException):
            failed[i] = "%s: %s" % (type(value).__name__, str(value).splitlines()[0])
        else:
            label = rec.labels[i] if rec.labels else "task-%d" % i
            outputs.append(save_output(value, label, args.output_dir))
    emit(args, {"job": job.id, "outputs": outputs,
                "failed": {str(i): e for i, e in failed.items()}},
         [[p, "ok"] for p in outputs] + [["task %d" % i, e] for i, e in failed.items()],
         ["output", "status"])
    return 1 if failed else 0


def _ticker(tick: Callable[[str], None]) -> Callable[[Any], None]:
    def progress(t: Any) -> None:
        tick("task %d on %s: %s%s" % (t.index, t.node, t.state,
                                      "" if t.duration is None else " in %.2fs" % t.duration))
    return progress


def cmd_results(args: argparse.Namespace) -> int:
    c = attach(args)
    try:
        return _collect(args, _job(c, args.job, args.allow_pickle), args.wait)
    finally:
        c.close_connections()


def cmd_jobs(args: argparse.Namespace) -> None:
    from cloudcompute.jobs import detached
    c = attach(args)
    try:
        rows: List[Dict[str, Any]] = []
        for rec in c.jobs():
            counts = detached.Job(c.executor(), rec.id, rec).status().counts
            rows.append({"job": rec.id, "function": rec.function, "tasks": rec.tasks,
                         "created_at": rec.created_at, "client": rec.client,
                         "counts": counts})
    finally:
        c.close_connections()
    emit(args, {"jobs": rows}, [[r["job"], r["function"], r["tasks"], _counts(r["counts"]),
                                 time.strftime("%Y-%m-%d %H:%M:%S",
                                               time.localtime(r["created_at"]))]
                                for r in rows],
         ["job", "function", "tasks", "state", "created"])


def _counts(counts: Dict[str, int]) -> str:
    return ", ".join("%d %s" % (n, s) for s, n in counts.items() if n) or "-"


def cmd_cancel(args: argparse.Namespace) -> None:
    c = attach(args)
    try:
        st = _job(c, args.job).cancel()
    finally:
        c.close_connections()
    emit(args, {"job": st.job_id, "counts": st.counts}, [[st.job_id, _counts(st.counts)]],
         ["job", "state"])


def cmd_logs(args: argparse.Namespace, console: Callable[[argparse.Namespace], Any]) -> Any:
    """``logs NAME JOB``: the job's output; ``logs NAME [NODE]``: console logs."""
    if not args.node or not _JOB_SHAPE.match(args.node):
        if args.follow or args.task is not None:
            raise UsageError("-f and --task go with a job id (logs NAME JOB)")
        return console(args)
    c = attach(args)
    try:
        job = _job(c, args.node)
        lines = job.logs(task=args.task, follow=args.follow)
        if args.format == "json":
            emit(args, {"job": job.id, "lines": list(lines)})
            return 0
        for line in lines:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    finally:
        c.close_connections()
    return 0
