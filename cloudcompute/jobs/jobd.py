"""Detached jobs on a node: the commands the client runs, and the job's files.

Shipped with the worker (:mod:`.channel`). A job's directory on the node,
``~/.cloudcompute/jobs/<job id>/``, holds everything about it, so any client
can attach later:

``job.json``                     the job's record (the same on every node)
``batches/<owner>.<tag>.frames`` the task requests (wire frames, sha256 each);
                                 a replica when ``owner`` is another node
``batches/<owner>.<tag>.json``   index, id, offset and length of each frame
``tasks/<i>/status.json``        state, times, error or result's sha256 and size
``tasks/<i>/result.bin``         the encoded value
``tasks/<i>/output.log``         what the task printed, as it printed it
``supervisor.lock``              held (flock) while a supervisor runs
``cancel``                       present once the job was cancelled

Commands: ``start`` (the supervisor, :mod:`.supervisor`, in a session of
its own), ``status``, ``logs``, ``cancel``, ``adopt``, ``list``; each prints
JSON or text on stdout. Stdlib only, Python 3.9 or newer.
"""
import json
import os
import sys
import time

from . import taskproc
from .supervisor import (NODE_NAME, POLL, TERMINAL, _read_json, _write_atomic, _write_json,
                         job_dir, own_tasks, start, supervisor_running, task_status)


TRACEBACKS_SHOWN = 4 << 20  # bytes of tracebacks in one status answer; the rest stay here


def status(jdir, node):
    """Every task of this node; tracebacks cut to their last 4 KiB, and left out
    once they add up to TRACEBACKS_SHOWN, so the answer stays small."""
    tasks = own_tasks(jdir, node)
    out = {}
    budget = TRACEBACKS_SHOWN
    for i, (_, entry) in sorted(tasks.items()):
        st = task_status(jdir, i) or {"state": "queued", "id": entry.get("id")}
        tb = str(st.get("traceback") or "")[-4096:]
        if len(tb) > budget:
            tb = "(not shown: see tasks/%d/status.json of job %s on %s)" % (
                i, os.path.basename(jdir), node)
        budget -= len(tb)
        if tb:
            st["traceback"] = tb
        out[str(i)] = st
    return {"node": node, "supervisor": supervisor_running(jdir),
            "cancelled": os.path.exists(os.path.join(jdir, "cancel")), "tasks": out}


def cancel(jdir, node, wait=10.0):
    with open(os.path.join(jdir, "cancel"), "ab"):
        pass
    deadline = time.monotonic() + wait
    while supervisor_running(jdir) and time.monotonic() < deadline:
        time.sleep(POLL)
    if not supervisor_running(jdir):  # no supervisor: what never started is cancelled
        for i in own_tasks(jdir, node):
            st = task_status(jdir, i)
            if st is None or st.get("state") not in TERMINAL:
                tdir = os.path.join(jdir, "tasks", str(i))
                os.makedirs(tdir, exist_ok=True)
                _write_json(os.path.join(tdir, "status.json"),
                            {"state": "cancelled", "cancelled": True, "index": i,
                             "node": node, "exc_type": "Cancelled", "message": ""})
    return status(jdir, node)


def adopt(jdir, node, owner):
    """Take over ``owner``'s tasks from the replica of its batches held here."""
    bdir = os.path.join(jdir, "batches")
    taken = []
    for name in sorted(os.listdir(bdir)):
        if not (name.startswith(owner + ".") and name.endswith(".json")):
            continue
        stem = name[:-5]
        new = "%s.from-%s" % (node, stem)
        if os.path.exists(os.path.join(bdir, new + ".json")):
            continue
        try:
            os.link(os.path.join(bdir, stem + ".frames"), os.path.join(bdir, new + ".frames"))
        except OSError:  # no hard links here: a copy does
            with open(os.path.join(bdir, stem + ".frames"), "rb") as f:
                _write_atomic(os.path.join(bdir, new + ".frames"), f.read())
        entries = _read_json(os.path.join(bdir, name), [])
        _write_json(os.path.join(bdir, new + ".json"), entries)
        taken += [e["index"] for e in entries]
    return {"node": node, "owner": owner, "adopted": sorted(taken)}


def logs(jdir, node, task=None, follow=False):
    """Print the tasks' output, each line prefixed ``[index]``; with ``follow``,
    until every task of this node has ended."""
    offsets, partial = {}, {}
    dead_since = None
    while True:
        tasks = sorted(own_tasks(jdir, node)) if task is None else [task]
        moved = False
        for i in tasks:
            path = os.path.join(jdir, "tasks", str(i), "output.log")
            try:
                with open(path, "rb") as f:
                    f.seek(offsets.get(i, 0))
                    chunk = f.read(1 << 20)
            except OSError:
                continue
            if not chunk:
                continue
            moved = True
            offsets[i] = offsets.get(i, 0) + len(chunk)
            text = partial.pop(i, b"") + chunk
            lines = text.split(b"\n")
            if lines[-1]:
                partial[i] = lines[-1]
            for line in lines[:-1]:
                sys.stdout.buffer.write(b"[%d] %s\n" % (i, line))
        sys.stdout.buffer.flush()
        if moved:
            continue
        if not follow:
            break
        ended = all((task_status(jdir, i) or {}).get("state") in TERMINAL for i in tasks)
        if ended:
            break
        if not supervisor_running(jdir):
            dead_since = dead_since or time.monotonic()
            if time.monotonic() - dead_since > 5:
                break
        else:
            dead_since = None
        time.sleep(POLL)
    for i, rest in sorted(partial.items()):
        sys.stdout.buffer.write(b"[%d] %s\n" % (i, rest))
    sys.stdout.buffer.flush()
    return 0


def list_jobs(only=None):
    root = taskproc.node_path("jobs")
    out = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if only is not None and name != only:
            continue
        record = _read_json(os.path.join(root, name, "job.json"), None)
        if isinstance(record, dict):
            out.append(record)
    return out


def _opt(argv, flag, default=None):
    return argv[argv.index(flag) + 1] if flag in argv else default


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[0] if argv else ""
    if cmd == "list":
        print(json.dumps(list_jobs(argv[1] if len(argv) > 1 else None)))
        return 0
    jdir = job_dir(argv[1] if len(argv) > 1 else "")
    node = _opt(argv, "--node", "")
    if not NODE_NAME.match(node):
        raise SystemExit("jobd: bad node name %r" % (node,))
    if not os.path.isdir(jdir):
        raise SystemExit("jobd: no job %s on this node" % argv[1])
    if cmd == "start":
        return start(jdir, node, int(_opt(argv, "--slots", os.cpu_count() or 1)))
    if cmd == "logs":
        task = _opt(argv, "--task")
        return logs(jdir, node, None if task is None else int(task), "--follow" in argv)
    if cmd == "status":
        answer = status(jdir, node)
    elif cmd == "cancel":
        answer = cancel(jdir, node)
    elif cmd == "adopt":
        owner = _opt(argv, "--from", "")
        if not NODE_NAME.match(owner):
            raise SystemExit("jobd: bad node name %r" % (owner,))
        answer = adopt(jdir, node, owner)
    else:
        raise SystemExit("jobd: unknown command %r" % cmd)
    print(json.dumps(answer))
    return 0
