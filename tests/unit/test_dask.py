"""Dask on a cluster without a cloud: command lines, the node tool run here,
the version check, and the port forwarder against a local TCP echo server
(directly, and through a real paramiko ``direct-tcpip`` channel)."""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types

import paramiko
import pytest

from cloudcompute import daskcluster
from cloudcompute.daskcluster import remote, versions
from cloudcompute.daskcluster.forward import Forwarder, ssh_opener
from cloudcompute.exceptions import EnvironmentMismatch
from cloudcompute.record import NodeInfo

CLIENT = {"python": "3.11.7", "dask": "2026.8.0", "distributed": "2026.8.0",
          "cloudpickle": "3.1.3", "msgpack": "1.2.4", "numpy": "2.4.6", "pandas": "3.1.1",
          "pyarrow": None, "tornado": "6.6.1", "toolz": "1.2.0", "lz4": None,
          "bokeh": "3.9.2"}


# -- command lines -------------------------------------------------------------
def test_scheduler_binds_the_fixed_ip_and_writes_a_scheduler_file():
    argv = remote.scheduler_argv(".cloudcompute/env-ab/bin/python", "10.42.0.5", 8786, 8787)
    assert argv[:3] == [".cloudcompute/env-ab/bin/python", "-m",
                        "distributed.cli.dask_scheduler"]
    opts = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert opts == {"--host": "10.42.0.5", "--port": "8786",
                    "--dashboard-address": "10.42.0.5:8787",
                    "--scheduler-file": ".cloudcompute/dask/scheduler.json"}


def test_worker_has_the_slots_the_memory_and_no_dashboard():
    argv = remote.worker_argv("python3", "tcp://10.42.0.5:8786", "10.42.0.6", "n1", 2,
                              1234 << 20)
    assert argv[:4] == ["python3", "-m", "distributed.cli.dask_worker", "tcp://10.42.0.5:8786"]
    assert "--no-dashboard" in argv
    opts = dict(zip(argv[4::2], argv[5::2], strict=False))
    assert opts["--host"] == "10.42.0.6" and opts["--name"] == "n1"
    assert opts["--nthreads"] == "2" and opts["--nworkers"] == "1"
    assert opts["--memory-limit"] == str(1234 << 20)


def test_memory_limit_leaves_headroom():
    mib = 1 << 20
    assert remote.memory_limit(2048, False) == (2048 - 204) * mib  # a tenth
    assert remote.memory_limit(2048, True) == (2048 - 2 * 204) * mib  # and the scheduler
    assert remote.memory_limit(1024, False) == (1024 - 128) * mib  # at least 128 MiB
    assert remote.memory_limit(512, True) == 256 * mib  # never below 256 MiB
    assert remote.memory_limit(0, False) == "auto"  # flavor RAM unknown: Dask's own guess


def test_start_command_quotes_every_word_and_detaches():
    hostile = "env-x/bin/py thon;touch /tmp/pwned"
    cmd = remote.start_command("worker", [hostile, "-m", "distributed.cli.dask_worker",
                                          "$(reboot)"])
    assert cmd.endswith(" > .cloudcompute/dask/worker.log 2>&1 < /dev/null &")
    words = shlex.split(cmd.split(" > .cloudcompute/dask/worker.log")[0].split(" && ")[-1])
    assert words[:4] == ["setsid", "nohup", "env", "CLOUDCOMPUTE_DASK=worker"]
    assert words[-4:] == [hostile, "-m", "distributed.cli.dask_worker", "$(reboot)"]
    assert "'$(reboot)'" in cmd and "'env-x/bin/py thon;touch /tmp/pwned'" in cmd
    with pytest.raises(ValueError):
        remote.start_command("nanny", ["x"])


# -- the node tool, run on this machine -----------------------------------------
FAKE = textwrap.dedent("""\
    import json, os, subprocess, sys, time
    mode = sys.argv[1]
    if mode == "fail":
        print("OSError: [Errno 98] Address already in use: 10.42.0.5:8786", file=sys.stderr)
        sys.exit(1)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.3)
    if mode == "scheduler":
        with open(os.path.expanduser("~/.cloudcompute/dask/scheduler.json"), "w") as f:
            json.dump({"address": "tcp://10.42.0.5:8786", "services": {"dashboard": 8787}}, f)
    print("Scheduler at: tcp://10.42.0.5:8786", flush=True)
    time.sleep(60)
    """)


@pytest.fixture
def home(tmp_path):
    return tmp_path


def sh(home, command):
    return subprocess.run(["sh", "-c", command], cwd=home, env=dict(os.environ, HOME=str(home)),
                          capture_output=True, text=True, timeout=30)


def node_tool(home, *args):
    out = sh(home, " ".join(shlex.quote(a) for a in remote.tool_argv(
        *[str(a) for a in args], python=sys.executable)))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def fake_argv(mode):
    return [sys.executable, "-c", FAKE, mode, "distributed.cli.dask_" + mode]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def group(pgid):
    """Live (not zombie) processes of the process group ``pgid``."""
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


def test_node_tool_waits_finds_and_stops_a_detached_process_group(home):
    assert sh(home, remote.start_command("scheduler", fake_argv("scheduler"))).returncode == 0
    try:
        got = node_tool(home, "wait", "scheduler", 20)
        assert got["state"] == "ready"
        assert got["info"]["address"] == "tcp://10.42.0.5:8786"
        pid = got["pid"]
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # setsid: its own group
        status = node_tool(home, "status")
        assert status["scheduler"]["alive"] and status["scheduler"]["processes"] == 2
        assert status["worker"] == {"pid": None, "alive": False, "processes": 0}
        t0 = time.monotonic()
        stopped = node_tool(home, "stop", 5)
        assert stopped == {"stopped": ["scheduler"], "left": []}
        assert time.monotonic() - t0 < 5
        assert not alive(pid)
        assert not (home / ".cloudcompute/dask/scheduler.pid").exists()
        assert not (home / ".cloudcompute/dask/scheduler.json").exists()
        assert "Scheduler at" in (home / ".cloudcompute/dask/scheduler.log").read_text()
    finally:
        node_tool(home, "stop", 1)


def test_node_tool_stops_the_group_when_its_leader_died(home):
    sh(home, remote.start_command("worker", fake_argv("worker")))
    got = node_tool(home, "wait", "worker", 20)
    assert got["state"] == "ready"
    deadline = time.monotonic() + 10
    while len(group(got["pid"])) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the fake's child has started
    os.kill(got["pid"], signal.SIGKILL)  # a nanny gone, its worker still running
    deadline = time.monotonic() + 5
    while alive(got["pid"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    status = node_tool(home, "status")
    assert not status["worker"]["alive"] and status["worker"]["processes"] == 1
    assert node_tool(home, "stop", 5)["left"] == []
    assert node_tool(home, "status")["worker"]["processes"] == 0


def test_node_tool_reports_a_death_with_the_log(home):
    sh(home, remote.start_command("scheduler", fake_argv("fail")))
    t0 = time.monotonic()
    got = node_tool(home, "wait", "scheduler", 20)
    assert got["state"] == "died" and time.monotonic() - t0 < 6
    assert "Address already in use" in got["log"]


def test_log_excerpt_keeps_the_cause_of_a_chained_traceback():
    log = "\n".join(["INFO start", "Traceback (most recent call last):", '  File "x"',
                     "PermissionError: [Errno 13] Permission denied", "",
                     "The above exception was the direct cause of the following exception:"]
                    + ['  File "y%d"' % i for i in range(20)]
                    + ["RuntimeError: Scheduler failed to start."])
    text = remote.log_excerpt(log)
    assert text.startswith("PermissionError: [Errno 13] Permission denied\n...\n")
    assert text.endswith("RuntimeError: Scheduler failed to start.")
    assert remote.log_excerpt("") == "(the log is empty)"
    assert remote.log_excerpt("a\nb") == "a\nb"


def test_node_tool_never_signals_a_stranger_with_a_recorded_pid(home):
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)  # pid == pgid
    try:
        d = home / ".cloudcompute" / "dask"
        d.mkdir(parents=True)
        (d / "worker.pid").write_text("%d\n" % stranger.pid)
        assert node_tool(home, "status")["worker"] == {"pid": stranger.pid, "alive": False,
                                                       "processes": 0}
        assert node_tool(home, "stop", 1)["stopped"] == []
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


# -- versions ---------------------------------------------------------------------
def test_matching_versions_pass_and_numpy_only_warns():
    node = dict(CLIENT, python="3.11.2", numpy="1.26.4")
    assert versions.compare("n0", CLIENT, node) == ["numpy: client 2.4.6, node 1.26.4"]


@pytest.mark.parametrize("name,node_value,message", [
    ("distributed", "2024.12.1", "distributed: client 2026.8.0, node 2024.12.1"),
    ("dask", None, "dask: client 2026.8.0, node not installed"),
    ("msgpack", "1.0.5", "msgpack: client 1.2.4, node 1.0.5"),
    ("cloudpickle", "2.2.1", "cloudpickle: client 3.1.3, node 2.2.1"),
    ("python", "3.12.1", "python: client 3.11.7, node 3.12.1"),
])
def test_a_mismatch_names_both_sides(name, node_value, message):
    node = dict(CLIENT, **{name: node_value})
    with pytest.raises(EnvironmentMismatch) as err:
        versions.compare("n1", CLIENT, node)
    assert err.value.node == "n1" and message in err.value.problems[0]
    assert message in str(err.value)


def test_requirements_pin_what_the_client_has():
    reqs = versions.requirements(CLIENT)
    assert "dask==2026.8.0" in reqs and "msgpack==1.2.4" in reqs and "bokeh==3.9.2" in reqs
    assert not any(r.startswith(("pyarrow", "lz4", "python")) for r in reqs)


def test_without_the_extra_dask_says_what_to_install(monkeypatch):
    monkeypatch.setattr(versions, "client_versions",
                        lambda: dict(CLIENT, dask=None, distributed=None))
    cluster = types.SimpleNamespace(name="c", nodes=[NodeInfo("n0", "g", fixed_ip="10.0.0.1")],
                                    state=types.SimpleNamespace(data={}))
    with pytest.raises(daskcluster.DaskNotInstalled) as err:
        daskcluster.client(cluster)
    assert "pip install 'cloudcompute[dask]'" in str(err.value)
    assert "dask and distributed" in str(err.value)
    assert isinstance(err.value, ImportError)


def test_stop_without_a_record_touches_no_node():
    def no_ssh(name):
        raise AssertionError("no SSH expected")
    cluster = types.SimpleNamespace(name="c", state=types.SimpleNamespace(data={}),
                                    connection=no_ssh, node_names=lambda: ["n0"])
    daskcluster.stop(cluster)  # neither raises nor connects


# -- the forwarder ------------------------------------------------------------------
@pytest.fixture
def echo_server():
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn):
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    conn.shutdown(socket.SHUT_WR)  # echo the half-close back
                    return
                conn.sendall(data)

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            if stop.is_set():  # the teardown's wake-up call
                c.close()
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()
    stop.set()
    socket.create_connection(srv.getsockname(), timeout=10).close()  # wakes accept()
    t.join()
    srv.close()


def round_trip(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload),
                                                  s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:  # the half-close came back through the forward
                break
            got += chunk
        sender.join()
    return bytes(got)


def test_forwarder_carries_bytes_and_half_close_to_an_echo_server(echo_server):
    opened = []

    def open_channel(origin):
        opened.append(origin)
        return socket.create_connection(echo_server)
    with Forwarder(open_channel, "echo") as fwd:
        assert fwd.host == "127.0.0.1" and fwd.port > 0
        payload = os.urandom(3 << 20)
        assert round_trip(fwd.port, payload) == payload
        results = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, round_trip(fwd.port, bytes([i]) * 100_000))) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == {i: bytes([i]) * 100_000 for i in range(8)}
        assert fwd.connections == 9 and all(o[0] == "127.0.0.1" for o in opened)


def test_forwarder_close_ends_open_connections_and_refuses_new_ones(echo_server):
    fwd = Forwarder(lambda origin: socket.create_connection(echo_server), "echo")
    s = socket.create_connection(("127.0.0.1", fwd.port), timeout=10)
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"
    t0 = time.monotonic()
    fwd.close()
    assert time.monotonic() - t0 < 2
    assert s.recv(10) == b""  # the forwarded connection was closed
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", fwd.port), timeout=2)


def test_forwarder_refuses_one_connection_when_the_channel_cannot_open(echo_server, caplog):
    calls = []

    def flaky(origin):
        calls.append(origin)
        if len(calls) == 1:
            raise paramiko.ChannelException(2, "Connect failed")
        return socket.create_connection(echo_server)
    with Forwarder(flaky, "flaky") as fwd:
        with socket.create_connection(("127.0.0.1", fwd.port), timeout=10) as s:
            assert s.recv(10) == b""
        assert "cannot open a channel" in caplog.text
        assert round_trip(fwd.port, b"again") == b"again"


class _ForwardingServer(paramiko.ServerInterface):
    """An SSH server that allows direct-tcpip and nothing else."""

    def __init__(self):
        self.destinations = []

    def get_allowed_auths(self, username):
        return "none"

    def check_auth_none(self, username):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        self.destinations.append(destination)
        return paramiko.OPEN_SUCCEEDED


@pytest.fixture
def ssh_transport():
    """A client Transport to an in-process SSH server whose direct-tcpip channels
    are joined to real TCP connections by a forwarder-less pump."""
    server_sock, client_sock = socket.socketpair()
    server = _ForwardingServer()
    st = paramiko.Transport(server_sock)
    st.add_server_key(paramiko.ECDSAKey.generate())
    st.start_server(event=threading.Event(), server=server)  # negotiates in its thread
    ct = paramiko.Transport(client_sock)
    ct.start_client(timeout=10)
    ct.auth_none("cc")

    def join_channels():
        while st.is_active():
            chan = st.accept(0.2)
            if chan is None:
                continue
            upstream = socket.create_connection(server.destinations[-1])
            for a, b in ((chan, upstream), (upstream, chan)):
                threading.Thread(target=_copy, args=(a, b), daemon=True).start()
    threading.Thread(target=join_channels, daemon=True).start()
    yield ct, server
    ct.close()
    st.close()


def _copy(src, dst):
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            dst.sendall(data)
    except (OSError, EOFError):
        pass


def test_forwarder_over_a_paramiko_direct_tcpip_channel(echo_server, ssh_transport):
    ct, server = ssh_transport
    host, port = echo_server
    with Forwarder(ssh_opener(lambda: ct, host, port), "ssh") as fwd:
        payload = os.urandom(2 << 20)
        assert round_trip(fwd.port, payload) == payload
        assert round_trip(fwd.port, b"second") == b"second"
    assert server.destinations == [(host, port), (host, port)]


# -- the command --------------------------------------------------------------------
def test_cli_dask_prints_json_holds_until_ctrl_c_and_leaves_dask_running(monkeypatch, capsys):
    from cloudcompute import cli
    info = {"name": "c1", "scheduler": "tcp://127.0.0.1:40001",
            "dashboard": "http://127.0.0.1:40002/status", "scheduler_node": "n0",
            "remote_scheduler": "tcp://10.42.0.5:8786", "reused": True, "warnings": [],
            "workers": {"n0": {"nthreads": 2, "memory_limit": 1 << 30}}, "timings": {}}
    calls = []
    handle = types.SimpleNamespace(describe=lambda: info)
    fake = types.SimpleNamespace(
        dask=lambda **kw: calls.append(("dask", kw)) or types.SimpleNamespace(
            cloudcompute=handle),
        close_connections=lambda: calls.append(("close_connections",)))
    monkeypatch.setattr("cloudcompute.cli.nodecmds.attach", lambda args: fake)
    monkeypatch.setattr(daskcluster, "detach", lambda c: calls.append(("detach",)))

    def ctrl_c(self, timeout=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(threading.Event, "wait", ctrl_c)
    assert cli.main(["-f", "json", "dask", "c1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {k: info[k] for k in ("name", "scheduler", "dashboard", "scheduler_node",
                                        "remote_scheduler", "workers", "reused")}
    assert calls == [("dask", {"timeout": 120.0}), ("detach",), ("close_connections",)]


def test_cli_dask_stop(monkeypatch, capsys):
    from cloudcompute import cli
    stopped = []
    fake = types.SimpleNamespace(close_connections=lambda: None)
    monkeypatch.setattr("cloudcompute.cli.nodecmds.attach", lambda args: fake)
    monkeypatch.setattr(daskcluster, "stop", lambda c: stopped.append(c))
    assert cli.main(["-f", "json", "dask", "c1", "--stop"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "c1", "stopped": True}
    assert stopped == [fake]
