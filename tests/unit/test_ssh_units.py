"""The SSH layer's small parts, without a node: sized reads, OpenSSH argv, command
quoting, draining a channel, and the readiness probe and wait (on loopback).

The caps and the tail kept of huge output are in test_untrusted.py.
"""
import io
import shutil
import socket
import subprocess
import threading
import time
import types

import pytest

from cloudcompute import retry
from cloudcompute.exceptions import SSHError, WaitTimeout
from cloudcompute.ssh import bulk, client, readiness

MiB = 1 << 20


# ------------------------------------------------------------ read_sized / _fill
class Reader:
    """``readinto`` over ``data`` that hands out at most ``step`` bytes per call and
    records how much each call asked for."""

    def __init__(self, data, step=None):
        self.stream = io.BytesIO(data)
        self.step = step
        self.asked = []

    def readinto(self, view):
        self.asked.append(len(view))
        n = len(view) if self.step is None else min(self.step, len(view))
        got = self.stream.read(n)
        view[:len(got)] = got
        return len(got)

    def rest(self):
        return self.stream.read()


def sized(data):
    return len(data).to_bytes(8, "big") + data


def test_an_empty_file_reads_the_size_only():
    r = Reader(sized(b"") + b"NEXT")
    moved = []
    assert bulk.read_sized(r.readinto, "n1", "/p", moved.append) == bytearray()
    assert r.asked == [8] and moved == [] and r.rest() == b"NEXT"


def test_short_reads_are_assembled_and_counted_without_the_size_prefix():
    data = bytes(range(256)) * 40
    r = Reader(sized(data), step=3)
    moved = []
    got = bulk.read_sized(r.readinto, "n1", "/p", moved.append)
    assert got == data and sum(moved) == len(data) and max(moved) == 3


@pytest.mark.parametrize("size", [10, 4 * MiB + 1])  # one buffer, and one that grows
def test_no_byte_past_the_announced_size_is_consumed(size):
    data = b"x" * size
    r = Reader(sized(data) + b"THE NODE'S HASH")
    assert bulk.read_sized(r.readinto, "n1", "/p", max_bytes=size) == data
    assert r.rest() == b"THE NODE'S HASH"
    assert max(r.asked) <= 4 * MiB


@pytest.mark.parametrize("stream,message", [
    (b"\0\0\0\0\0", r"/p \(5 of 8 bytes\)"),                        # the size itself cut
    (sized(b"abcdefgh")[:12], r"/p \(4 of 8 bytes\)"),              # the body cut
    (sized(b"y" * (4 * MiB + 9))[:8 + 4 * MiB + 2], r"/p \(4194306 of 4194313 bytes\)"),
])
def test_a_cut_stream_says_how_far_it_got_and_is_not_fatal(stream, message):
    with pytest.raises(SSHError, match=r"n1: connection lost while reading " + message) as e:
        bulk.read_sized(Reader(stream, step=1 << 16).readinto, "n1", "/p")
    assert not e.value.fatal


def test_the_cap_is_inclusive():
    assert bulk.read_sized(Reader(sized(b"12345")).readinto, "n1", "/p", max_bytes=5) == b"12345"
    with pytest.raises(SSHError, match="announced 6 bytes; the cap .* is 5") as e:
        bulk.read_sized(Reader(sized(b"123456")).readinto, "n1", "/p", max_bytes=5)
    assert e.value.fatal


# ------------------------------------------------------------ OpenSSH argv
EVIL_USER = "-oProxyCommand=touch pwned-user"
EVIL_ADDRESS = "-oProxyCommand=touch pwned-address"


def test_destination_puts_the_user_after_l_and_the_address_after_the_end_of_options():
    opts = bulk.openssh_options("/k", "/kh", port=2222)
    argv = ["ssh", *opts, *bulk.destination(EVIL_USER, EVIL_ADDRESS), "true"]
    assert bulk.destination(EVIL_USER, EVIL_ADDRESS) == ["-l", EVIL_USER, "--", EVIL_ADDRESS]
    assert argv.index(EVIL_USER) == argv.index("-l") + 1
    assert argv.index(EVIL_ADDRESS) == argv.index("--") + 1 == len(argv) - 2
    # Before "--", every word is a flag or the value of the flag before it.
    takes_value = {"-p", "-i", "-F", "-o", "-l"}
    words = argv[1:argv.index("--")]
    i = 0
    while i < len(words):
        assert words[i].startswith("-"), words[i]
        i += 2 if words[i] in takes_value else 1


def pairs_of(opts):
    return list(zip(opts[::2], opts[1::2], strict=True))


def test_the_option_set_pins_keys_and_host_keys():
    opts = bulk.openssh_options("/k", "/kh", port=2222)
    pairs = dict(pairs_of(opts))
    assert pairs["-p"] == "2222" and pairs["-i"] == "/k" and pairs["-F"] == "/dev/null"
    o = dict(v.split("=", 1) for k, v in pairs_of(opts) if k == "-o")
    assert o == {"IdentitiesOnly": "yes", "BatchMode": "yes", "StrictHostKeyChecking": "yes",
                 "UserKnownHostsFile": "/kh", "GlobalKnownHostsFile": "/dev/null",
                 "ConnectTimeout": "10", "ServerAliveInterval": "5",
                 "ServerAliveCountMax": "3"}
    assert "BatchMode=yes" not in bulk.openssh_options("/k", "/kh", batch=False)


def ssh_config(argv, cwd):
    """What ``ssh -G`` makes of an argv (it prints its configuration; it connects to
    nothing): (exit code, {key: [values]}, stderr)."""
    p = subprocess.run(["ssh", "-G", *argv], cwd=cwd, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=10)
    conf = {}
    for line in p.stdout.splitlines():
        key, _, value = line.partition(" ")
        conf.setdefault(key, []).append(value)
    return p.returncode, conf, p.stderr


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client here")
def test_openssh_reads_the_options_and_never_takes_user_or_address_for_one(tmp_path):
    key, kh = tmp_path / "key", tmp_path / "known_hosts"
    key.write_text("")
    opts = bulk.openssh_options(str(key), str(kh), port=2222)
    code, conf, _ = ssh_config(opts + bulk.destination("ubuntu", "127.0.0.1"), tmp_path)
    assert code == 0
    assert conf["user"] == ["ubuntu"] and conf["hostname"] == ["127.0.0.1"]
    assert conf["port"] == ["2222"] and str(key) in conf["identityfile"]
    assert conf["stricthostkeychecking"] == ["true"] and conf["batchmode"] == ["yes"]
    assert conf["userknownhostsfile"] == [str(kh)]
    assert conf["globalknownhostsfile"] == ["/dev/null"]
    # The probe sees an injected option when there is one...
    _, conf, _ = ssh_config(opts + [EVIL_USER, "127.0.0.1"], tmp_path)
    assert conf["proxycommand"] == ["touch pwned-user"]
    # ...and through destination() there is none: OpenSSH takes each as a user or
    # host name (and this version refuses both names as such).
    for user, address in ((EVIL_USER, "127.0.0.1"), ("ubuntu", EVIL_ADDRESS)):
        code, conf, err = ssh_config(opts + bulk.destination(user, address), tmp_path)
        assert conf.get("proxycommand", ["none"]) == ["none"]
        assert (code != 0 and "contains invalid characters" in err) or (
            conf["user"] == [user] and conf["hostname"] == [address])
    assert not list(tmp_path.glob("pwned*"))


# ------------------------------------------------------------ quote_command
def test_quote_command_passes_every_word_through_a_shell_unchanged(tmp_path):
    words = ["a b", "$(touch sub)", "`touch tick`", "it's", '"dq"', "*", ";", "&&", "|",
             "line\nbreak", "", "-n", "~", "$HOME", "\\", 3]
    command = "printf '%s\\0' " + client.quote_command(words)
    out = subprocess.run(["sh", "-c", command], cwd=tmp_path, capture_output=True,
                         check=True).stdout
    assert out.split(b"\0")[:-1] == [str(w).encode() for w in words]
    assert not list(tmp_path.iterdir())  # nothing ran
    assert client.quote_command("echo $HOME | wc") == "echo $HOME | wc"  # a string is a shell line


# ------------------------------------------------------------ _drain
class Channel:
    """A paramiko Channel as _drain uses it. ``events`` arrive in order, one stream at
    a time: ("out", bytes) or ("err", bytes); only the first pending one is ready.
    The exit status is ready from the start (it can be, while output is still
    buffered). ``silent``: nothing ever arrives and the command never exits (a
    reader still asking after 5 s fails, rather than hang the suite)."""

    def __init__(self, events=(), silent=False):
        self.events = list(events)
        self.silent = silent
        self.t0 = time.monotonic()
        self.r, self.w = socket.socketpair()
        if not silent:
            self.w.send(b"x")  # select() finds it readable at once

    def _take(self, kind, n):
        assert self.events and self.events[0][0] == kind, "read from a stream not ready"
        data = self.events[0][1]
        got, rest = data[:n], data[n:]
        if rest:
            self.events[0] = (kind, rest)
        else:
            self.events.pop(0)
        return got

    def recv_ready(self):
        return bool(self.events) and self.events[0][0] == "out"

    def recv(self, n):
        return self._take("out", n)

    def recv_stderr_ready(self):
        return bool(self.events) and self.events[0][0] == "err"

    def recv_stderr(self, n):
        return self._take("err", n)

    def exit_status_ready(self):
        if self.silent and time.monotonic() - self.t0 > 5:
            raise AssertionError("still waiting for a command that never ends")
        return not self.silent

    def fileno(self):
        return self.r.fileno()

    def close(self):
        self.r.close()
        self.w.close()


def test_drain_returns_only_once_all_output_is_read_even_with_the_status_in():
    chan = Channel([("out", b"a"), ("err", b"E1"), ("out", b"bb"), ("err", b"E2"),
                    ("out", b"ccc")])
    moved = []
    try:
        assert client._drain(chan, None, progress=moved.append) == (b"abbccc", b"E1E2", False)
    finally:
        chan.close()
    assert sum(moved) == 6 and not chan.events


def test_drain_raises_socket_timeout_at_the_deadline():
    chan = Channel(silent=True)
    t0 = time.monotonic()
    try:
        with pytest.raises(socket.timeout):
            client._drain(chan, t0 + 0.2)
    finally:
        chan.close()
    assert 0.2 <= time.monotonic() - t0 < 1.5


def test_run_turns_the_deadline_into_an_ssh_error_naming_the_command():
    chan = Channel(silent=True)
    chan.exec_command = lambda command: None
    chan.shutdown_write = lambda: None
    chan.recv_exit_status = lambda: -1
    transport = types.SimpleNamespace(open_session=lambda timeout=None: chan,
                                      is_active=lambda: True)
    conn = client.NodeConnection("n1", "192.0.2.1", "u", "/nonexistent", ["ssh-ed25519 AAAA"])
    conn._client = types.SimpleNamespace(get_transport=lambda: transport)
    try:
        with pytest.raises(SSHError, match=r"n1: command timed out after 0.1s: sleep 9"):
            conn.run(["sleep", "9"], timeout=0.1)
    finally:
        chan.close()


# ------------------------------------------------------------ readiness
class Listener:
    """A loopback TCP server that sends ``greeting`` to each connection and keeps it
    open until closed; ``b""``: closes each at once; ``None``: says nothing, and
    hangs up after 3 s (so that a probe without its timeout fails, not hangs)."""

    def __init__(self, greeting):
        self.greeting = greeting
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.timers = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            self.conns.append(conn)
            if isinstance(self.greeting, list):  # in pieces, as TCP may deliver them
                for piece in self.greeting:
                    conn.sendall(piece)
                    time.sleep(0.05)
            elif self.greeting is not None:
                conn.sendall(self.greeting)
            if self.greeting == b"":
                conn.close()
            if self.greeting is None:
                self.timers.append(threading.Timer(3, conn.shutdown, [socket.SHUT_RDWR]))
                self.timers[-1].start()

    def close(self):
        self.done.set()
        self.thread.join()
        for t in self.timers:
            t.cancel()
            t.join()
        for c in self.conns + [self.sock]:
            c.close()


@pytest.fixture
def listener():
    made = []

    def make(greeting):
        made.append(Listener(greeting))
        return made[-1]
    yield make
    for x in made:
        x.close()


def closed_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]  # nothing listens there once closed


def test_banner_probe_wants_ssh_and_nothing_else(listener):
    assert readiness.banner_probe("127.0.0.1", listener(b"SSH-2.0-x\r\n").port, timeout=2)
    assert not readiness.banner_probe("127.0.0.1", listener(b"HTTP/1.1 400 Bad\r\n").port,
                                      timeout=2)
    assert not readiness.banner_probe("127.0.0.1", listener(b"").port, timeout=2)
    assert readiness.banner_probe("127.0.0.1", listener([b"SS", b"H-2.0-x\r\n"]).port,
                                  timeout=2)
    assert not readiness.banner_probe("127.0.0.1", listener([b"SS", b"X-2.0\r\n"]).port,
                                      timeout=2)
    t0 = time.monotonic()
    assert not readiness.banner_probe("127.0.0.1", listener(None).port, timeout=0.2)
    assert not readiness.banner_probe("127.0.0.1", closed_port(), timeout=2)
    assert time.monotonic() - t0 < 1.5


def node(port, run):
    return types.SimpleNamespace(name="n1", address="127.0.0.1", port=port, run=run)


def stop_after(seconds):
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    return stop, timer


def test_wait_for_ssh_stops_waiting_for_the_banner_when_told():
    stop, timer = stop_after(0.2)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"SSH banner of n1 \(127.0.0.1\) \(stopped\)") as e:
        readiness.wait_for_ssh(node(closed_port(), None), t0 + 5, poll=0.02, stop=stop)
    timer.cancel()
    assert 0.2 <= time.monotonic() - t0 < 2 and e.value.waiting_for == ["n1"]


def test_wait_for_ssh_stops_retrying_the_login_when_told(listener, monkeypatch):
    monkeypatch.setattr(retry, "SLEEP", lambda s: time.sleep(min(s, 0.02)))
    attempts = []

    def run(argv):
        attempts.append(argv)
        raise ConnectionResetError("sshd not ready")
    stop, timer = stop_after(0.2)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match="SSH login to n1 .*sshd not ready") as e:
        readiness.wait_for_ssh(node(listener(b"SSH-2.0-x\r\n").port, run), t0 + 5,
                               stop=stop)
    timer.cancel()
    assert 0.2 <= time.monotonic() - t0 < 2 and len(attempts) > 1
    assert isinstance(e.value.__cause__, ConnectionResetError)


def test_wait_for_ssh_logs_in_once_the_banner_is_there(listener):
    ran = []
    waited = readiness.wait_for_ssh(node(listener(b"SSH-2.0-x\r\n").port, ran.append),
                                    time.monotonic() + 5)
    assert ran == [["true"]] and 0 <= waited < 2


def test_wait_for_ssh_gives_up_at_once_on_a_refused_login(listener):
    attempts = []

    def run(argv):
        attempts.append(argv)
        raise SSHError("n1", "authentication as ubuntu refused", fatal=True)
    t0 = time.monotonic()
    with pytest.raises(SSHError, match="refused"):
        readiness.wait_for_ssh(node(listener(b"SSH-2.0-x\r\n").port, run), t0 + 3)
    assert len(attempts) == 1 and time.monotonic() - t0 < 1


def test_wait_for_ssh_without_a_banner_ends_at_the_deadline():
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as e:
        readiness.wait_for_ssh(node(closed_port(), None), t0 + 0.2, poll=0.02)
    assert 0.2 <= time.monotonic() - t0 < 1.5 and "(stopped)" not in str(e.value)
