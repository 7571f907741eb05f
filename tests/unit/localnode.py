"""A node that is a local process: the real worker, real pipes, no SSH.

``LocalNode`` stands where a ``NodeConnection`` stands for the executor: its
commands run here with ``HOME`` pointing at a directory of its own, and its
"channel" is the stdin/stdout of a local process. Killing that process is a
node that drops; stopping it (SIGSTOP) is a node that hangs. The worker's
process is forked from a zygote that has numpy and pandas imported
(:mod:`tests.unit.zygote`), so a test does not wait for those imports.
"""
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import types

from tests.unit.zygote import ZYGOTE, forkable


class LocalChannel:
    def __init__(self, home, hung=False):
        self.home = home
        self.hung = hung
        self.proc = None
        self.timeout = None

    def settimeout(self, seconds):
        self.timeout = seconds

    def exec_command(self, command):
        if self.hung:  # a node that accepts the session and never answers
            command = "exec sleep 600"
        found = forkable(shlex.split(command))
        if found is not None:  # the worker: forked with numpy and pandas imported
            env = dict(os.environ, HOME=self.home)
            self.proc = ZYGOTE.spawn(found[0], found[1], self.home, env)
            return
        self.proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=self.home, env=dict(os.environ, HOME=self.home),
                                     bufsize=0, start_new_session=True)

    def recv(self, n):
        ready = select.select([self.proc.stdout], [], [], self.timeout)[0]
        if not ready:
            raise socket.timeout("timed out")
        return os.read(self.proc.stdout.fileno(), n)

    def send(self, data):
        try:
            return os.write(self.proc.stdin.fileno(), data)
        except BrokenPipeError:
            return 0

    def recv_stderr_ready(self):
        return bool(select.select([self.proc.stderr], [], [], 0)[0])

    def recv_stderr(self, n):
        return os.read(self.proc.stderr.fileno(), n)

    def close(self):
        """As an SSH channel closes: the remote end sees EOF; nothing waits for it."""
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


class LocalNode:
    """What the executor needs of a NodeConnection, on this machine."""

    def __init__(self, name, home):
        self.name = name
        self.home = str(home)
        os.makedirs(self.home, exist_ok=True)
        self.channels = []
        transport = types.SimpleNamespace(open_session=self._open, is_active=lambda: True)
        self.client = types.SimpleNamespace(get_transport=lambda: transport)
        self.sftp = types.SimpleNamespace(open=self._open_file)
        self.uploads = 0
        self.hung = False
        self.sessions = []  # the session (and process group) id of every command run

    def _open(self, timeout=None):
        chan = LocalChannel(self.home, self.hung)
        self.channels.append(chan)
        return chan

    def _open_file(self, path, mode):
        return open(os.path.join(self.home, path), mode)

    def run(self, argv, warn=False, timeout=None):
        if self.hung:
            raise OSError("node %s does not answer" % self.name)
        # Each command in a session of its own, as sshd starts them.
        proc = subprocess.Popen(argv, cwd=self.home, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(os.environ, HOME=self.home),
                                start_new_session=True)
        self.sessions.append(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        result = types.SimpleNamespace(ok=proc.returncode == 0, stdout=out.decode(),
                                       stderr=err.decode(), truncated=False,
                                       exit_code=proc.returncode, node=self.name,
                                       command=" ".join(map(str, argv)))
        if not warn and not result.ok:
            from cloudcompute.exceptions import RemoteCommandError
            raise RemoteCommandError(result)
        return result

    def upload(self, path, data, progress=None):
        import hashlib
        full = os.path.join(self.home, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        raw = b"".join(bytes(p) for p in (data if isinstance(data, list) else [data]))
        with open(full, "wb") as f:
            f.write(raw)
        self.uploads += 1
        return hashlib.sha256(raw).hexdigest()

    def download(self, path, sha256=None, progress=None, remove=False, max_bytes=None):
        full = os.path.join(self.home, path) if not os.path.isabs(path) else path
        with open(full, "rb") as f:
            data = bytearray(f.read())
        if remove:
            os.unlink(full)
        return data

    def worker_pids(self):
        return [c.proc.pid for c in self.channels if c.proc and c.proc.poll() is None]

    def kill(self, sig=signal.SIGKILL):
        """The node drops (SIGKILL) or hangs (SIGSTOP, and new sessions hang too)."""
        self.hung = sig == signal.SIGSTOP
        for pid in self.worker_pids():
            os.killpg(pid, sig)

    def drop_sessions(self):
        """SIGKILL what is left in the process groups of the commands run here (in
        this node's home), as if their SSH sessions took their groups along."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                pgid = os.getpgid(int(entry))
                cwd = os.readlink("/proc/%s/cwd" % entry)
            except OSError:
                continue
            if pgid in self.sessions and cwd == self.home:
                os.kill(int(entry), signal.SIGKILL)

    def close(self):
        for c in self.channels:
            if c.proc and c.proc.poll() is None:
                os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.wait()
        self.channels = []

    def cleanup(self):
        self.close()
        shutil.rmtree(self.home, ignore_errors=True)


def quick_jobs(monkeypatch):
    """Detached jobs on local nodes, looked at often: the client's looks at a
    job's status, and the supervisors' (jobd reads its settings from the
    environment these nodes inherit). The tasks of these tests import no
    numpy, so the supervisors import none before them."""
    from cloudcompute.jobs import detached
    monkeypatch.setattr(detached, "WAIT_FIRST", 0.05)
    monkeypatch.setattr(detached, "WAIT_MAX", 0.2)
    monkeypatch.setenv("CLOUDCOMPUTE_JOBD_POLL", "0.02")
    monkeypatch.setenv("CLOUDCOMPUTE_JOBD_WARM", "")
