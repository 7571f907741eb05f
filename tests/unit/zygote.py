"""Worker processes for ``LocalNode`` forked from a process that has numpy,
pandas and pyarrow imported already, instead of each paying for the imports.

The zygote is a plain ``python -c`` process that imports those modules (and
nothing of cloudcompute), then, for each request on its socket, forks a child
that does what sshd and ``python -u -c CODE ARGS`` would: a session of its
own, the node's working directory and environment, the three pipe ends as
its stdin, stdout and stderr (unbuffered), and CODE run as ``__main__``. The
worker code that runs is the real one, from the node's shipped package.

The zygote reaps nothing: a child that ended stays a zombie until the
zygote ends, so its pid (and process group id) is never reused while a test
may still signal it.
"""
import atexit
import json
import os
import socket
import subprocess
import sys
import threading
import time

SERVER = r"""
import io, json, os, socket, sys, traceback
for name in ("numpy", "pandas", "pyarrow", "cloudpickle"):
    try:
        __import__(name)
    except ImportError:
        pass
sock = socket.socket(fileno=int(sys.argv[1]))
while True:
    msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
    if not msg:
        break
    req = json.loads(msg)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sock.close()
            os.setsid()
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r")))
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w"), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w"), write_through=True)
            sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
            sys.argv = ["-c"] + req["args"]
            sys.path[0] = ""
            try:
                exec(compile(req["code"], "<string>", "exec"), {"__name__": "__main__"})
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (exc.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except BaseException:
                    pass
            os._exit(code)
    for fd in fds:
        os.close(fd)
    sock.sendall(json.dumps({"pid": pid}).encode())
"""


class ForkedProcess:
    """What LocalChannel uses of a Popen, for a child of the zygote."""

    def __init__(self, pid, stdin, stdout, stderr):
        self.pid = pid
        self.stdin = os.fdopen(stdin, "wb", buffering=0)
        self.stdout = os.fdopen(stdout, "rb", buffering=0)
        self.stderr = os.fdopen(stderr, "rb", buffering=0)

    def poll(self):
        """None while it runs; 0 once it ended (its exit status stays with the zygote)."""
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return 0
        return 0 if state in ("Z", "X") else None

    def wait(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("zygote child %d" % self.pid, timeout)
            time.sleep(0.005)
        return 0


class Zygote:
    def __init__(self):
        self.lock = threading.Lock()
        self.sock = None
        self.proc = None

    def _start(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # whole messages
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self.sock = ours
        atexit.register(self.stop)

    def stop(self):
        with self.lock:
            if self.sock is not None:
                self.sock.close()  # the zygote reads EOF and ends
                self.sock = None
                self.proc.wait(10)

    def spawn(self, code, args, cwd, env):
        """A ForkedProcess running ``python -u -c code *args`` in ``cwd``."""
        pipes = [os.pipe() for _ in range(3)]
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
        try:
            with self.lock:
                if self.sock is None:
                    self._start()
                socket.send_fds(self.sock, [json.dumps(
                    {"code": code, "args": args, "cwd": cwd, "env": env}).encode()], theirs)
                answer = self.sock.recv(1 << 16)
        finally:
            for fd in theirs:
                os.close(fd)
        if not answer:
            raise OSError("the zygote ended")
        return ForkedProcess(json.loads(answer)["pid"], pipes[0][1], pipes[1][0],
                             pipes[2][0])


ZYGOTE = Zygote()


def forkable(argv):
    """The (code, args) of ``argv`` if it is ``<this python> -u -c CODE ARGS``."""
    if len(argv) >= 4 and argv[0] == sys.executable and argv[1:3] == ["-u", "-c"]:
        return argv[3], argv[4:]
    return None

