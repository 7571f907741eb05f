"""The node-side programs run here, and both file transports moving real bytes.

No cloud: each program of ``cloudcompute.nodeside`` runs under this machine's
python in a temporary "home"; the OpenSSH transport runs against a stand-in
``ssh`` that executes the remote command through ``sh`` in that home, and the
paramiko transport against a channel that is the pipes of the same command.
"""
import hashlib
import inspect
import json
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from cloudcompute import nodeside
from cloudcompute.daskcluster import remote
from cloudcompute.exceptions import IntegrityError, SSHError
from cloudcompute.ssh import bulk, client, intra
from cloudcompute.ssh.transport import ParamikoTransport, Transport

HERE = os.path.dirname(os.path.abspath(nodeside.__file__))


def run(program, *args, home, stdin=b"", script=False):
    """``program`` as the nodes run it (``python -c SOURCE``), or as a script file."""
    argv = ([sys.executable, os.path.join(HERE, program + ".py"), *args] if script
            else nodeside.command(program, *args, python=sys.executable))
    return subprocess.run(argv, input=stdin, cwd=home, capture_output=True, timeout=30,
                          env=dict(os.environ, HOME=str(home)))


def sha(data):
    return hashlib.sha256(data).hexdigest()


# -- the command line ----------------------------------------------------------
def test_command_is_python_c_the_modules_source_then_the_arguments():
    argv = nodeside.command("receive", "a b", "c" * 64, python="/opt/py")
    with open(os.path.join(HERE, "receive.py")) as f:
        assert argv == ["/opt/py", "-c", f.read(), "a b", "c" * 64]
    assert nodeside.source("receive") is nodeside.source("receive")  # read once
    assert nodeside.command("put", "x")[0] == "python3"


def test_an_unknown_program_is_named():
    with pytest.raises(ValueError, match="'nope'.*put, get"):
        nodeside.command("nope")


def test_callers_build_their_commands_from_the_modules():
    assert bulk.put_command("p") == nodeside.command("put", "p")
    assert bulk.get_command("p") == nodeside.command("get", "p")
    assert bulk.get_command("p", "a" * 64, remove=True) == nodeside.command("get", "p", "nr")
    assert intra.install_command() == nodeside.command("intra_install", intra.INTRA_DIR)
    assert remote.tool_argv("stop", 5.0, python="py") == nodeside.command(
        "dask_tool", remote.DASK_DIR, "stop", "5.0", python="py")


# -- put and get ---------------------------------------------------------------
@pytest.mark.parametrize("script", [False, True], ids=["python -c", "script"])
def test_put_then_get_round_trip(tmp_path, script):
    data = os.urandom((9 << 20) + 7)  # more than one 4 MiB read
    r = run("put", "a/b/x.bin", home=tmp_path, stdin=data, script=script)
    assert r.returncode == 0, r.stderr
    assert r.stdout == sha(data).encode() + b"\n"
    assert (tmp_path / "a/b/x.bin").read_bytes() == data
    r = run("get", "a/b/x.bin", home=tmp_path, script=script)
    assert r.returncode == 0, r.stderr
    assert r.stdout == len(data).to_bytes(8, "big") + data
    assert r.stderr == sha(data).encode()


def test_get_flags_skip_the_hash_and_remove_the_file(tmp_path):
    (tmp_path / "x").write_bytes(b"hello")
    r = run("get", "x", "nr", home=tmp_path)
    assert r.returncode == 0 and r.stdout == (5).to_bytes(8, "big") + b"hello"
    assert r.stderr == b"" and not (tmp_path / "x").exists()


def test_get_of_a_missing_file_fails_with_the_reason(tmp_path):
    r = run("get", "nothing-here", home=tmp_path)
    assert r.returncode == 1 and b"No such file" in r.stderr and r.stdout == b""


# -- receive ---------------------------------------------------------------------
def frame(data):
    return len(data).to_bytes(8, "big") + data + sha(data).encode()


def test_receive_renames_a_checked_copy_into_place(tmp_path):
    data = os.urandom(5 << 20)
    r = run("receive", "d/x.bin", home=tmp_path, stdin=frame(data))
    assert r.returncode == 0, r.stderr
    assert r.stdout == sha(data).encode() + b"\n"
    assert os.listdir(tmp_path / "d") == ["x.bin"]
    assert (tmp_path / "d/x.bin").read_bytes() == data
    r = run("receive", "d/y.bin", sha(data), home=tmp_path, stdin=data)  # a hop
    assert r.returncode == 0 and (tmp_path / "d/y.bin").read_bytes() == data


def test_receive_with_a_wrong_sha256_leaves_no_file(tmp_path):
    data = os.urandom(1 << 20)
    r = run("receive", "x.bin", "0" * 64, home=tmp_path, stdin=data)
    assert r.returncode == 3 and b"sha256 mismatch: " + sha(data).encode() in r.stderr
    assert r.stdout == sha(data).encode() + b"\n"
    assert os.listdir(tmp_path) == []


def test_receive_ended_by_sigterm_exits_4_and_leaves_no_temporary_file(tmp_path):
    proc = subprocess.Popen(nodeside.command("receive", "x.bin", python=sys.executable),
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        proc.stdin.write((100 << 20).to_bytes(8, "big") + b"x" * 1000)
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        while not [n for n in os.listdir(tmp_path) if ".cc-part-" in n]:
            assert time.monotonic() < deadline, "no temporary file appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 4
    finally:
        proc.kill()
        proc.wait()
    assert os.listdir(tmp_path) == []


# -- intra_install ---------------------------------------------------------------
def test_intra_install_writes_0600_files_in_the_directory_it_is_given(tmp_path):
    files = {"intra_key": "PRIVATE\n", "ssh_config": "Host x\n"}
    r = run("intra_install", "sub/dir", home=tmp_path, stdin=json.dumps(files).encode())
    assert r.returncode == 0, r.stderr
    d = tmp_path / "sub/dir"
    assert r.stdout.decode() == "%s\n" % d
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert sorted(os.listdir(d)) == sorted(files)  # no temporary file left
    for name, text in files.items():
        assert (d / name).read_text() == text
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600


# -- dask_tool -------------------------------------------------------------------
def test_dask_tool_without_processes(tmp_path):
    r = run("dask_tool", ".cloudcompute/dask", "status", home=tmp_path)
    assert r.returncode == 0, r.stderr
    nothing = {"pid": None, "alive": False, "processes": 0}
    assert json.loads(r.stdout) == {"scheduler": dict(nothing, info=None), "worker": nothing}
    r = run("dask_tool", ".cloudcompute/dask", "stop", "1", home=tmp_path)
    assert json.loads(r.stdout) == {"stopped": [], "left": []}
    r = run("dask_tool", ".cloudcompute/dask", "restart", home=tmp_path)
    assert r.returncode == 1 and b"unknown mode 'restart'" in r.stderr


def test_dask_tool_reads_the_directory_it_is_given(tmp_path):
    d = tmp_path / "elsewhere"
    d.mkdir()
    (d / "scheduler.json").write_text('{"address": "tcp://10.42.0.5:8786"}')
    (d / "worker.pid").write_text("%d\n" % os.getpid())  # not one of ours: not alive
    r = run("dask_tool", "elsewhere", "status", home=tmp_path)
    got = json.loads(r.stdout)
    assert got["scheduler"]["info"] == {"address": "tcp://10.42.0.5:8786"}
    assert got["worker"] == {"pid": os.getpid(), "alive": False, "processes": 0}


# -- both transports, moving real bytes ------------------------------------------
FAKE_SSH = """#!/bin/sh
# stand-in for ssh: "-O exit" succeeds; else the remote command (the last
# argument) runs through sh in the node's home
case " $* " in *" -O "*) exit 0;; esac
for last; do :; done
cd "$NODE_HOME" && HOME="$NODE_HOME" exec sh -c "$last"
"""


class PipeChannel:
    """What ParamikoTransport uses of a paramiko Channel, over a local ``sh -c``."""

    def __init__(self, home):
        self.home = home
        self.out, self.err = bytearray(), bytearray()
        self.cond = threading.Condition()
        self.eof = 0
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)  # a full pipe wakes the reader already
        self.wake_lock = threading.Lock()  # close() and _wake() never overlap

    def exec_command(self, command):
        self.proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=self.home, env=dict(os.environ, HOME=str(self.home)))
        for fd, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(fd, buf), daemon=True).start()

    def _pump(self, f, buf):
        for chunk in iter(lambda: os.read(f.fileno(), 1 << 20), b""):
            with self.cond:
                buf += chunk
                self.cond.notify_all()
            self._wake()
        with self.cond:
            self.eof += 1
            self.cond.notify_all()
        self._wake()

    def _wake(self):
        """One byte on the wake-up pipe, unless close() closed it already (a
        pump may still be draining a grandchild's output then)."""
        with self.wake_lock:
            if self.wake_w is not None:
                try:
                    os.write(self.wake_w, b".")
                except BlockingIOError:
                    pass

    def fileno(self):
        return self.wake_r

    def _take(self, buf, n):
        with self.cond:
            got = bytes(buf[:n])
            del buf[:n]
        if select.select([self.wake_r], [], [], 0)[0]:
            os.read(self.wake_r, 1 << 16)
        return got

    def send(self, data):
        try:
            return os.write(self.proc.stdin.fileno(), data)
        except BrokenPipeError:
            return 0

    def shutdown_write(self):
        self.proc.stdin.close()

    def recv(self, n):
        with self.cond:
            self.cond.wait_for(lambda: self.out or self.eof == 2, timeout=30)
        return self._take(self.out, n)

    def recv_ready(self):
        return bool(self.out)

    def recv_stderr_ready(self):
        return bool(self.err)

    def recv_stderr(self, n):
        return self._take(self.err, n)

    def exit_status_ready(self):
        return self.eof == 2 and self.proc.poll() is not None

    def recv_exit_status(self):
        return self.proc.wait()

    def close(self):
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait()
        with self.wake_lock:
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.wake_w = None


def fake_ssh(tmp_path, monkeypatch, script):
    """An ``ssh`` first on PATH that runs ``script`` (a shell script) instead."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ssh").write_text(script)
    (bindir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (bindir, os.pathsep, os.environ["PATH"]))


@pytest.fixture(params=["openssh", "paramiko"])
def transport(request, tmp_path, monkeypatch):
    """(a Transport to a "node" whose home is a local directory, that home)"""
    home = tmp_path / "node"
    home.mkdir()
    if request.param == "paramiko":
        yield ParamikoTransport("n1", lambda: PipeChannel(home)), home
        return
    fake_ssh(tmp_path, monkeypatch, FAKE_SSH)
    monkeypatch.setenv("NODE_HOME", str(home))
    t = bulk.OpenSSHBulk("n1", "192.0.2.1", "u", "/nonexistent", ["ssh-ed25519 AAAA"])
    yield t, home
    t.close()
    assert not os.path.exists(t.dir)


def parameters(fn):
    """Names, kinds and defaults (mypy checks the types)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_both_transports_satisfy_the_protocol():
    fast = bulk.OpenSSHBulk("n1", "192.0.2.1", "u", "/k", ["ssh-ed25519 AAAA"])
    try:
        for t in (fast, ParamikoTransport("n1", lambda: None)):
            assert isinstance(t, Transport)
            for name in ("upload", "download", "close"):
                assert parameters(getattr(type(t), name)) == parameters(
                    getattr(Transport, name)), (type(t).__name__, name)
    finally:
        fast.close()
    assert not isinstance(object(), Transport)


def test_node_connection_picks_openssh_unless_told_or_absent(monkeypatch):
    conn = client.NodeConnection("n1", "192.0.2.1", "u", "/k", ["ssh-ed25519 AAAA"])
    try:
        monkeypatch.setenv("CLOUDCOMPUTE_BULK", "paramiko")
        assert isinstance(conn.transport, ParamikoTransport)
        monkeypatch.delenv("CLOUDCOMPUTE_BULK")
        monkeypatch.setattr(bulk.shutil, "which", lambda name: "/usr/bin/" + name)
        assert isinstance(conn.transport, bulk.OpenSSHBulk)
        assert conn.transport is conn.transport  # one ControlMaster per connection
    finally:
        conn.close()


def test_upload_then_download_round_trip(transport):
    t, home = transport
    head, body = b"HEAD", memoryview(os.urandom(6 << 20))
    moved = []
    want = sha(head + bytes(body))
    assert t.upload("d/e/x.bin", [head, body], moved.append) == want
    assert sum(moved) == len(head) + len(body)
    assert (home / "d/e/x.bin").read_bytes() == head + bytes(body)
    moved.clear()
    assert t.download("d/e/x.bin", progress=moved.append) == head + bytes(body)
    assert sum(moved) == len(head) + len(body)
    assert t.download("d/e/x.bin", sha256=want, remove=True) == head + bytes(body)
    assert not (home / "d/e/x.bin").exists()


def test_download_errors(transport):
    t, home = transport
    with pytest.raises(SSHError, match="(?s)cannot read nothing.*No such file") as e:
        t.download("nothing")
    assert e.value.fatal
    (home / "x").write_bytes(b"data")
    with pytest.raises(IntegrityError, match="n1"):
        t.download("x", sha256="0" * 64)
    with pytest.raises(SSHError, match="the cap") as e:
        t.download("x", max_bytes=3)
    assert e.value.fatal


def test_upload_that_cannot_be_written_is_refused(transport):
    t, home = transport
    (home / "file").write_bytes(b"")
    with pytest.raises(IntegrityError, match="upload of file/x"):
        t.upload("file/x", b"data")  # a file where the directory should be


HOSTILE_SSH = """#!/bin/sh
# a node that answers every command with endless output on stdout and stderr
case " $* " in *" -O "*) exit 0;; esac
cat >/dev/null &
exec python3 -c 'import os, sys
chunk = b"x" * 65536
while True:
    os.write(1, chunk)
    os.write(2, chunk)'
"""


def test_openssh_transfers_cut_off_a_node_that_answers_without_end(tmp_path, monkeypatch):
    """The node's reply beside the file (hash, error) is capped: a node that
    floods it is cut off with a fatal error, not held in memory until it stops."""
    fake_ssh(tmp_path, monkeypatch, HOSTILE_SSH)
    t = bulk.OpenSSHBulk("n1", "192.0.2.1", "u", "/nonexistent", ["ssh-ed25519 AAAA"])
    try:
        with pytest.raises(SSHError, match="upload of x: the node sent more than 65536") as e:
            t.upload("x", b"data")
        assert e.value.fatal
        # the first 8 bytes ("xxxxxxxx") announce a size over the cap
        with pytest.raises(SSHError, match="the cap"):
            t.download("x", max_bytes=1 << 20)
    finally:
        t.close()


def test_openssh_close_gives_up_on_a_controlmaster_that_hangs(tmp_path, monkeypatch, caplog):
    fake_ssh(tmp_path, monkeypatch, "#!/bin/sh\nexec sleep 60\n")
    monkeypatch.setattr(bulk, "CLOSE_TIMEOUT", 0.1)
    t = bulk.OpenSSHBulk("n1", "192.0.2.1", "u", "/nonexistent", ["ssh-ed25519 AAAA"])
    t0 = time.monotonic()
    t.close()
    assert time.monotonic() - t0 < 10
    assert not os.path.exists(t.dir)
    assert "ControlMaster did not stop within 0.1s" in caplog.text
