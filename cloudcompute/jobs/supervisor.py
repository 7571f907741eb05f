"""The supervisor of a detached job on a node, and the job's files.

Shipped with the worker; :mod:`.jobd` holds the commands the client runs and
describes the job's directory. ``start`` forks a supervisor that has its own
session (``setsid``, then a second fork) and no tie to the SSH connection;
it runs this node's tasks, up to its slots at once, each in its own process
group, and records each task's state, output and result as it goes. Stdlib
only, Python 3.9 or newer.
"""
import fcntl
import hashlib
import json
import os
import re
import select
import signal
import sys
import threading
import time

from . import taskproc
from .wire import read_frame

JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TERMINAL = ("done", "failed", "cancelled")
TRACEBACK_KEEP = 16 << 10  # characters of a traceback kept in a status


def _poll_seconds(default=0.1):
    """Seconds between the supervisor's looks at its markers and task deadlines:
    ``CLOUDCOMPUTE_JOBD_POLL`` (0.01 to 10) where it is set, else ``default``."""
    try:
        value = float(os.environ.get("CLOUDCOMPUTE_JOBD_POLL", default))
    except ValueError:
        return default
    return min(max(value, 0.01), 10.0) if value == value else default


POLL = _poll_seconds()
# Modules the supervisor imports before its first task, so that no task imports
# them again: ``CLOUDCOMPUTE_JOBD_WARM`` (comma-separated; empty for none) where set.
WARM = tuple(m for m in os.environ.get("CLOUDCOMPUTE_JOBD_WARM",
                                       "numpy,pandas,pyarrow").split(",") if m)


def job_dir(job_id):
    if not JOB_ID.match(job_id or ""):
        raise SystemExit("jobd: bad job id %r" % (job_id,))
    return taskproc.node_path("jobs", job_id)


def _write_atomic(path, data):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path, value):
    _write_atomic(path, json.dumps(value, sort_keys=True).encode())


def _read_json(path, default=None):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return default


def own_tasks(jdir, node):
    """index -> (batch frames path, entry) of the tasks this node runs."""
    out = {}
    bdir = os.path.join(jdir, "batches")
    for name in sorted(os.listdir(bdir)) if os.path.isdir(bdir) else []:
        if name.startswith(node + ".") and name.endswith(".json"):
            for entry in _read_json(os.path.join(bdir, name), []):
                out[int(entry["index"])] = (os.path.join(bdir, name[:-5] + ".frames"), entry)
    return out


def task_status(jdir, index):
    return _read_json(os.path.join(jdir, "tasks", str(index), "status.json"), None)


def supervisor_running(jdir):
    """Whether a supervisor holds this job's lock."""
    try:
        fd = os.open(os.path.join(jdir, "supervisor.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


# ---------------------------------------------------------------- the supervisor
class Supervisor:
    """Runs this node's tasks of one job, ``slots`` at a time."""

    def __init__(self, jdir, node, slots, lock=None):
        self.jdir, self.node, self.slots = jdir, node, max(1, slots)
        self.lock = lock  # the job's lock: held by this process alone, not its tasks
        self.running = {}  # pid -> [index, t0 (monotonic), deadline, why killed]
        self.batches = None
        self.wake = None  # (read, write) end of the pipe a task's end (SIGCHLD) writes to

    def _listen(self):
        """Have SIGCHLD wake the supervisor's nap (main thread of its process)."""
        r, w = os.pipe()
        for fd in (r, w):
            os.set_blocking(fd, False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self.wake = (r, w)

    def _nap(self, seconds):
        """Sleep up to ``seconds``; sooner when a task ends."""
        if self.wake is None:
            time.sleep(seconds)
            return
        if select.select([self.wake[0]], [], [], seconds)[0]:
            try:
                while os.read(self.wake[0], 4096):
                    pass
            except BlockingIOError:
                pass

    def serve(self):
        """Run until no task of this node is left (the caller holds the lock)."""
        if self.wake is None and threading.current_thread() is threading.main_thread():
            self._listen()
        tasks, todo = {}, []
        while True:
            names = sorted(os.listdir(os.path.join(self.jdir, "batches")))
            if names != self.batches:  # new (or adopted) batches: look again
                self.batches, tasks = names, own_tasks(self.jdir, self.node)
                busy = {r[0] for r in self.running.values()}
                todo = [i for i in sorted(tasks) if i not in busy and not self._ended(i)]
            if os.path.exists(os.path.join(self.jdir, "cancel")):
                for pid in list(self.running):
                    if self.running[pid][3] is None:
                        self._kill(pid, "cancelled")
                for i in todo:
                    self._record(i, {"state": "cancelled", "cancelled": True,
                                     "exc_type": "Cancelled", "message": "", "traceback": ""})
                todo = []
            self._reap()  # first: a slot that just came free takes the next task now
            while todo and len(self.running) < self.slots:
                self._start(todo.pop(0), tasks)
            now = time.monotonic()
            for pid, run in list(self.running.items()):
                if run[2] is not None and now >= run[2] and run[3] is None:
                    self._kill(pid, "timed_out")
            if not self.running and not todo:
                return 0
            nap = POLL  # the cancel mark and new batches are looked for this often
            for run in self.running.values():
                if run[2] is not None and run[3] is None:
                    nap = min(nap, run[2] - now)
            self._nap(max(nap, 0.0))

    def _ended(self, index):
        st = task_status(self.jdir, index)
        return st is not None and st.get("state") in TERMINAL

    def _tdir(self, index):
        path = os.path.join(self.jdir, "tasks", str(index))
        os.makedirs(path, exist_ok=True)
        return path

    def _record(self, index, status):
        status.setdefault("node", self.node)
        status["index"] = index
        _write_json(os.path.join(self._tdir(index), "status.json"), status)

    def _start(self, index, tasks):
        path, entry = tasks[index]
        tdir = self._tdir(index)
        old = task_status(self.jdir, index) or {}
        if old.get("state") == "running":  # its supervisor died: so does that run
            _kill_stale(old.get("pid"), os.path.basename(self.jdir))
        for name in ("answer.json", "result.bin"):
            if os.path.exists(os.path.join(tdir, name)):
                os.unlink(os.path.join(tdir, name))
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if self.lock is not None:  # a task outliving us must not hold it
                    os.close(self.lock)
                if self.wake is not None:  # the task's children are its own business
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for fd in self.wake:
                        os.close(fd)
                _run_task(tdir, path, entry)
            except BaseException:  # noqa: B036 - its output log is the only witness
                import traceback
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        timeout = entry.get("timeout")
        t0 = time.monotonic()
        self.running[pid] = [index, t0, t0 + timeout if timeout else None, None]
        self._record(index, {"state": "running", "pid": pid, "started": time.time(),
                             "id": entry.get("id")})

    def _kill(self, pid, why):
        self.running[pid][3] = why
        try:
            os.killpg(pid, signal.SIGKILL)  # the task and whatever it started
        except ProcessLookupError:
            pass

    def _reap(self):
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.running.pop(pid, None)
            if run is not None:
                self._finish(run, status)

    def _finish(self, run, status):
        index, t0, _, why = run
        tdir = self._tdir(index)
        old = task_status(self.jdir, index) or {}
        out = {"started": old.get("started"), "ended": time.time(), "id": old.get("id"),
               "duration": time.monotonic() - t0, "peak_rss_kb": 0}
        answer = _read_json(os.path.join(tdir, "answer.json"), None)
        if why == "timed_out":
            out.update(state="failed", timed_out=(run[2] or t0) - t0, exc_type="TaskTimeout")
        elif why == "cancelled":
            out.update(state="cancelled", cancelled=True, exc_type="Cancelled")
        elif isinstance(answer, dict):
            out.update({k: answer[k] for k in ("result", "sha256", "size", "exc_type",
                                               "message", "traceback", "peak_rss_kb")
                        if k in answer})
            out["state"] = "done" if answer.get("ok") else "failed"
        elif os.WIFSIGNALED(status):
            out.update(state="failed", killed=os.WTERMSIG(status))
        else:
            out.update(state="failed", exc_type="WorkerError", traceback="",
                       message="task exited (%d) without a result" % os.WEXITSTATUS(status))
        out.setdefault("message", "")
        out["traceback"] = str(out.get("traceback", ""))[-TRACEBACK_KEEP:]
        self._record(index, out)


def _kill_stale(pid, job_id):
    """End the process group of a run a dead supervisor left, if it is still
    that run: a group leader forked from jobd for this job."""
    if type(pid) is not int or pid <= 1:
        return
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        if b"ccnode.jobd" in b" ".join(argv) and job_id.encode() in argv \
                and os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass  # gone already


def _run_task(tdir, path, entry):
    """In the task's own process (group): run it, leave its value and answer."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    log = os.open(os.path.join(tdir, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                  0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    with open(path, "rb") as f:
        f.seek(int(entry["offset"]))
        req, blobs = read_frame(f, verify=True)  # the sha256 the client wrote
    taskproc._peak_rss_kb(reset=True)
    header, rblobs = taskproc.run_one(req, blobs)
    sys.stdout.flush()
    sys.stderr.flush()
    header["peak_rss_kb"] = taskproc._peak_rss_kb()
    if header.get("ok"):
        blob = rblobs[0]
        header["sha256"] = hashlib.sha256(blob).hexdigest()
        header["size"] = len(blob)
        _write_atomic(os.path.join(tdir, "result.bin"), blob)
    _write_json(os.path.join(tdir, "answer.json"), header)


def _announce(jdir, node):
    _write_json(os.path.join(jdir, "supervisor.json"),
                {"pid": os.getpid(), "node": node, "started": time.time()})


def start(jdir, node, slots):
    """Fork the supervisor into its own session; return once it holds the job's
    lock (or waits behind the supervisor that does)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        os.waitpid(pid, 0)
        os.read(ready_r, 1)  # EOF: the supervisor has its lock, or waits in line
        os.close(ready_r)
        return 0
    code = 1
    try:
        os.close(ready_r)
        os.setsid()  # no controlling terminal, no tie to the SSH session
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        log = os.open(os.path.join(jdir, "supervisor.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        lock = os.open(os.path.join(jdir, "supervisor.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        keep = sorted((lock, ready_w))
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 256)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            first = True
        except OSError:
            first = False
        if first:
            _announce(jdir, node)
        os.close(ready_w)
        if not first:
            fcntl.flock(lock, fcntl.LOCK_EX)  # after the running one, for what it left
            _announce(jdir, node)
        sys.meta_path.append(taskproc.ClientOnlyFinder())
        for mod in WARM:  # each task forks with them
            try:
                __import__(mod)
            except ImportError:
                pass
        code = Supervisor(jdir, node, slots, lock).serve()
    except BaseException:  # noqa: B036 - the log is the only witness here
        import traceback
        traceback.print_exc()
    os._exit(code)
