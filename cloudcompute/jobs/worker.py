"""The warm worker: the node side of the worker channel.

Shipped to each node with :mod:`.wire`, :mod:`.protocol` and :mod:`.taskproc`
(once: their sha256 names the directory) and started with ``--slots N``. It
keeps numpy and pandas imported, reads requests on stdin and answers on
stdout (:mod:`.protocol` lists every message). Each of its ``N`` slots is a
task process forked from the warm worker, which runs one task at a time and
is re-forked after a crash, a timeout or a cancel; a crash or the OOM
killer takes only that task. One ``select`` loop serves the channel and all
slots, so a task's timeout, the heartbeat and new requests never wait for
each other.

It must run on the node's own Python (3.9 or newer) and import nothing
beyond the standard library at module level.
"""
import collections
import hashlib
import os
import select
import signal
import sys
import time

from . import protocol as P
from . import taskproc
from .wire import WireError, frame_length, parse_frame, write_frame

LOG_CHUNK = 64 << 10  # bytes of task output per log frame


class Slot:
    """One task process and the task it is running, if any."""

    def __init__(self, index):
        self.index = index
        self.pid = None
        self.req = None  # the running task's request
        self.task_id = None  # the last task's id (its output may still be in the pipe)
        self.logs = []  # log frames drained when the task ended, to send before its result
        self.deadline = None
        self.t0 = 0.0
        self.result = bytearray()
        self.known = set()  # hashes of the functions its process holds

    @property
    def busy(self):
        return self.req is not None

    def _fork(self):
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)  # a timeout kills the task and whatever it started
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)  # not the worker's channel
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
                lo, hi = sorted((req_r, res_w))  # close everything else
                os.closerange(3, lo)
                os.closerange(lo + 1, hi)
                os.closerange(hi + 1, max(hi + 1, os.sysconf("SC_OPEN_MAX")))
                sys.stdout = os.fdopen(1, "w", buffering=1)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                taskproc.task_loop(req_r, res_w)
            finally:
                os._exit(0)
        for fd in (req_r, res_w, out_w):
            os.close(fd)
        self.pid = pid
        self.known = set(taskproc.SOURCES)  # what the worker held when it forked
        self.req_pipe = os.fdopen(req_w, "wb")
        self.res, self.out = res_r, out_r

    def start(self, req, blobs):
        if self.pid is None:
            self._fork()
        req, blobs = taskproc.with_function(req, blobs, self.known)
        if "sha256" in req.get("fn", {}):
            self.known.add(req["fn"]["sha256"])
        self.req, self.task_id, self.t0 = req, req["id"], time.monotonic()
        self.deadline = self.t0 + req["timeout"] if req.get("timeout") else None
        self.result = bytearray()
        try:
            write_frame(self.req_pipe, req, blobs, digests=False)
        except BrokenPipeError:
            pass  # it died; reading its result pipe says how

    def read_result(self):
        """Read what the task process wrote; its result frame once complete, else None."""
        chunk = os.read(self.res, 1 << 20)
        if not chunk:
            return self._ended(self._reap(), {})
        self.result += chunk
        need = frame_length(self.result)
        if need is None or len(self.result) < need:
            return None
        header, blobs = parse_frame(memoryview(self.result), verify=False)
        self._drain_output()
        return self._answer(dict(header, duration=time.monotonic() - self.t0)), blobs

    def read_output(self):
        """A log frame with the task's output, or None at the end of it."""
        chunk = os.read(self.out, LOG_CHUNK)
        if not chunk:
            return None
        return {"op": P.LOG, "id": self.task_id, "text": chunk.decode("utf-8", "replace")}

    def _drain_output(self):
        """Keep what the task wrote before it ended, to be sent before its result."""
        while select.select([self.out], [], [], 0)[0]:
            log = self.read_output()
            if log is None:
                return
            self.logs.append(log)

    def kill(self, **why):
        """End the running task now (timeout or cancel); its result frame."""
        self.close()
        return self._ended(None, why)

    def close(self):
        """End the task process (and its process group), if there is one."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap()

    def _reap(self):
        self._drain_output()
        try:
            self.req_pipe.close()
        except OSError:
            pass  # a write to the dead process may have failed half-way
        for fd in (self.res, self.out):
            os.close(fd)
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        return status

    def _ended(self, status, why):
        meta = dict({"op": P.RESULT, "ok": False, "peak_rss_kb": 0,
                     "duration": time.monotonic() - self.t0}, **why)
        if why:
            meta.update(exc_type="TaskTimeout" if "timed_out" in why else "Cancelled",
                        message="", traceback="")
        elif os.WIFSIGNALED(status):
            meta["killed"] = os.WTERMSIG(status)
        else:
            meta.update(exc_type="WorkerError", traceback="",
                        message="task exited (%d) without a result" % os.WEXITSTATUS(status))
        return self._answer(meta), []

    def _answer(self, header):
        header["id"] = self.req["id"]
        self.req = self.deadline = None
        return header


class Worker:
    """The select loop: the channel, every slot's pipes, timeouts and heartbeats."""

    def __init__(self, slots, inp, out, beat=P.BEAT_SECONDS):
        self.slots = [Slot(i) for i in range(slots)]
        self.beat = beat
        self.queue = collections.deque()
        self.inp, self.out = inp, out
        self.inbuf = bytearray()
        self.last_sent = time.monotonic()
        self.pending = {}  # project digest -> its manifest, until its objects arrive

    def send(self, header, blobs=()):
        write_frame(self.out, header, blobs)
        self.last_sent = time.monotonic()

    def serve(self):
        try:
            while self._step():
                pass
        finally:
            for slot in self.slots:
                slot.close()
        return 0

    def _step(self):
        busy = [s for s in self.slots if s.busy]
        wait = self.beat - (time.monotonic() - self.last_sent)
        for s in busy:
            if s.deadline is not None:
                wait = min(wait, s.deadline - time.monotonic())
        watch = [self.inp] + [fd for s in busy for fd in (s.res, s.out)]
        ready = set(select.select(watch, [], [], max(0.0, wait))[0])
        for s in busy:
            if s.out in ready:
                log = s.read_output()
                if log is not None:
                    self.send(log)
            if s.res in ready:
                self._finish(s, s.read_result())
            elif s.deadline is not None and time.monotonic() >= s.deadline:
                self._finish(s, s.kill(timed_out=s.req["timeout"]))
        if self.inp in ready:
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                return False
            self.inbuf += chunk
            if not self._handle_frames():
                return False
        if time.monotonic() - self.last_sent >= self.beat:
            self.send({"op": P.BEAT})
        return True

    def _finish(self, slot, answer):
        if answer is None:
            return
        for log in slot.logs:  # what the task wrote before its result goes first
            self.send(log)
        slot.logs = []
        self.send(*answer)
        self._schedule()

    def _handle_frames(self):
        while True:
            need = frame_length(self.inbuf)
            if need is None or len(self.inbuf) < need:
                return True
            frame = memoryview(self.inbuf)[:need]
            try:
                req, blobs = parse_frame(frame)
            except WireError as exc:
                self.send({"op": P.WIRE_ERROR, "id": getattr(exc, "id", None),
                           "message": str(exc)})
                req = None
            frame.release()
            del self.inbuf[:need]
            if req is not None and not self._dispatch(req, blobs):
                return False

    def _dispatch(self, req, blobs):
        op = req.get("op")
        if op == P.TASK:
            missing = taskproc.staged_missing(req)
            if missing:
                self.send({"op": P.WIRE_ERROR, "id": req.get("id"), "message": missing})
            else:
                taskproc.remember_module(req, blobs)
                self.queue.append((req, blobs))
                self._schedule()
        elif op == P.CANCEL:
            self._cancel(req["id"])
        elif op == P.PROJECT:
            self.send(self._project(req))
        elif op == P.OBJECTS:
            self.send(self._objects(req, blobs))
        elif op == P.EXIT:
            return False
        else:
            self.send({"op": P.WIRE_ERROR, "id": req.get("id"),
                       "message": "unknown op %r" % op})
        return True

    def _schedule(self):
        for slot in self.slots:
            if not self.queue:
                return
            if not slot.busy:
                slot.start(*self.queue.popleft())

    def _cancel(self, task_id):
        for i, (req, _) in enumerate(self.queue):
            if req["id"] == task_id:
                del self.queue[i]
                self.send({"op": P.RESULT, "id": task_id, "ok": False, "cancelled": True,
                           "exc_type": "Cancelled", "message": "", "traceback": "",
                           "duration": 0.0, "peak_rss_kb": 0})
                return
        for slot in self.slots:
            if slot.busy and slot.req["id"] == task_id:
                self._finish(slot, slot.kill(cancelled=True))
                return

    # -- the caller's project, by content hash --------------------------
    def _project(self, req):
        root = taskproc.node_path("projects", req["digest"])
        if os.path.isfile(os.path.join(root, ".complete")):
            return {"op": P.READY, "id": req["id"], "digest": req["digest"]}
        for rel in req["files"]:
            if rel.startswith("/") or ".." in rel.split("/") or "\\" in rel:
                return {"op": P.WIRE_ERROR, "id": req["id"],
                        "message": "refusing project path %r" % rel}
        self.pending[req["digest"]] = req["files"]
        missing = sorted({sha for sha in req["files"].values()
                          if not os.path.isfile(taskproc.node_path("objects", sha))})
        return {"op": P.NEED, "id": req["id"], "missing": missing}

    def _objects(self, req, blobs):
        files = self.pending.pop(req["digest"], None)
        if files is None:
            return {"op": P.WIRE_ERROR, "id": req["id"],
                    "message": "objects for an unknown project %s" % req["digest"][:12]}
        store = taskproc.node_path("objects")
        os.makedirs(store, exist_ok=True)
        if len(req["shas"]) != len(blobs):
            return {"op": P.WIRE_ERROR, "id": req["id"], "message": "objects without blobs"}
        for sha, blob in zip(req["shas"], blobs):  # noqa: B905 (zip strict: Python 3.10)
            if hashlib.sha256(blob).hexdigest() != sha:
                return {"op": P.WIRE_ERROR, "id": req["id"], "message": "object %s" % sha}
            _write_atomic(os.path.join(store, sha), blob)
        root = taskproc.node_path("projects", req["digest"])
        for rel, sha in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.link(os.path.join(store, sha), path)
            except FileExistsError:
                pass  # another worker on this node built the same project
            except OSError:  # no hard links here: a copy does
                with open(os.path.join(store, sha), "rb") as f:
                    _write_atomic(path, f.read())
        _write_atomic(os.path.join(root, ".complete"), b"")
        return {"op": P.READY, "id": req["id"], "digest": req["digest"]}


def _write_atomic(path, data):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    slots = int(argv[argv.index("--slots") + 1]) if "--slots" in argv else os.cpu_count()
    beat = float(argv[argv.index("--beat") + 1]) if "--beat" in argv else P.BEAT_SECONDS
    sys.meta_path.append(taskproc.ClientOnlyFinder())
    out = sys.stdout.buffer
    # Keep the protocol stream clean: stray prints go to stderr.
    sys.stdout = sys.stderr
    for mod in ("numpy", "pandas", "pyarrow"):
        try:
            __import__(mod)
        except ImportError:
            pass
        except Exception as exc:  # e.g. a binary built against another numpy
            sys.stderr.write("cloudcompute worker: importing %s failed: %r\n" % (mod, exc))
            raise
    from .wire import formats_here, versions
    worker = Worker(max(1, slots), sys.stdin.fileno(), out, beat)
    worker.send({"op": P.HELLO, "versions": versions(), "formats": formats_here(),
                 "pid": os.getpid(), "slots": len(worker.slots), "beat": beat})
    return worker.serve()


def run_here(req, blobs):
    """Run one task request in a fresh slot of this process (tests, benchmarks)."""
    slot = Slot(0)
    slot.start(req, blobs)
    logs = []
    while True:
        ready = select.select([slot.res, slot.out], [], [])[0]
        if slot.out in ready:
            log = slot.read_output()
            if log is not None:
                logs.append(log["text"])
        if slot.res in ready:
            answer = slot.read_result()
            if answer is not None:
                slot.close()
                logs += [log["text"] for log in slot.logs]
                return answer[0], answer[1], "".join(logs)

