"""Fan-out of put and SSH between nodes: the round plan, the commands nodes run,
the files they get.

No cloud: the node-side scripts run here under python3, a stand-in ``ssh``
runs the hop's remote command through ``sh`` so the quoting is exercised
end to end, and the orchestration runs against recording stand-in nodes.
"""
import hashlib
import io
import json
import math
import os
import shlex
import stat
import subprocess
import types

import numpy as np
import pytest
import yaml

from cloudcompute import nodeside, retry
from cloudcompute.exceptions import HostKeyMismatch, IntegrityError, SSHError, StateError
from cloudcompute.jobs import fanout
from cloudcompute.provision import resources
from cloudcompute.ssh import hostkeys, intra
from cloudcompute.record import ClusterRecord, SSHAccess
from cloudcompute.state import ClusterState
from cloudcompute.teardown import Teardown
from tests.unit.test_teardown import fake_conn

HOSTILE = "odd dir/$(touch PWNED1);`touch PWNED2`'\"; touch PWNED3 #.npy"


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(retry, "SLEEP", lambda s: None)


def names(n):
    return ["n%02d" % i for i in range(n)]


# -- the round plan ----------------------------------------------------------
def test_eight_nodes_take_three_doubling_rounds():
    a, b, c, d, e, f, g, h = names(8)
    assert fanout.plan_rounds(names(8)) == [
        [(a, b)], [(a, c), (b, d)], [(a, e), (b, f), (c, g), (d, h)]]


@pytest.mark.parametrize("n", range(1, 34))
def test_plan_covers_every_node_once_in_log2_rounds(n):
    nodes = names(n)
    rounds = fanout.plan_rounds(nodes)
    assert len(rounds) == math.ceil(math.log2(n))
    holders = {nodes[0]}
    received = []
    for k, pairs in enumerate(rounds):
        senders = [s for s, _ in pairs]
        assert len(senders) == len(set(senders)), "a node sends twice in one round"
        assert set(senders) <= holders, "a node sends what it does not have yet"
        assert all(d not in holders for _, d in pairs)
        assert len(pairs) == min(2 ** k, n - len(holders))  # every holder busy
        holders |= {d for _, d in pairs}
        received += [d for _, d in pairs]
    assert sorted(received) == nodes[1:]


# -- the commands --------------------------------------------------------------
def sender(node="n00", peers=None):
    return intra.IntraSSH(node, "debian", "/home/debian/.cloudcompute/intra_key",
                           "/home/debian/.cloudcompute/known_hosts",
                           "/home/debian/.cloudcompute/ssh_config",
                           peers or {"n00": "10.42.0.5", "n01": "10.42.0.6"})


def option(argv, name):
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-o"
            and argv[i + 1].startswith(name + "=")]


def test_node_to_node_ssh_is_verified_and_uses_only_the_internal_key():
    argv = sender().ssh_argv("n01")
    assert argv[0] == "ssh" and argv[-4:] == ["-l", "debian", "--", "10.42.0.6"]
    assert argv[argv.index("-F") + 1] == "/dev/null"
    assert argv[argv.index("-i") + 1] == "/home/debian/.cloudcompute/intra_key"
    for opt in ("StrictHostKeyChecking=yes", "IdentitiesOnly=yes", "BatchMode=yes",
                "GlobalKnownHostsFile=/dev/null",
                "UserKnownHostsFile=/home/debian/.cloudcompute/known_hosts"):
        assert option(argv, opt.split("=")[0]) == [opt]


def test_hop_command_quotes_every_word():
    sha = "ab" * 32
    line = fanout.hop_command(sender(), "n01", HOSTILE, sha)
    words = shlex.split(line)
    assert words[:-3] == sender().ssh_argv("n01")
    assert words[-2:] == ["<", HOSTILE]  # the only unquoted shell syntax
    assert shlex.split(words[-3]) == ["python3", "-c", nodeside.source("receive"), HOSTILE, sha]


FAKE_SSH = """#!/bin/sh
# stand-in for ssh: run the remote command (the last argument) through sh, in the peer's home
for last; do :; done
cd "$PEER_HOME" && exec sh -c "$last"
"""


def test_hop_line_runs_through_two_shells_literally(tmp_path):
    """The hop as a node runs it: sh -> ssh -> the peer's sh -> nodeside.receive."""
    bindir, here, peer = tmp_path / "bin", tmp_path / "here", tmp_path / "peer"
    for d in (bindir, here / "odd dir", peer):
        d.mkdir(parents=True)
    (bindir / "ssh").write_text(FAKE_SSH)
    (bindir / "ssh").chmod(0o755)
    data = os.urandom(100_000)
    (here / HOSTILE).write_bytes(data)
    line = fanout.hop_command(sender(), "n01", HOSTILE, hashlib.sha256(data).hexdigest())
    env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]), PEER_HOME=str(peer))
    r = subprocess.run(["sh", "-c", line], cwd=here, env=env, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert (peer / HOSTILE).read_bytes() == data
    assert os.listdir(peer / "odd dir") == [HOSTILE.split("/", 1)[1]]
    assert not list(tmp_path.rglob("PWNED*"))


# -- the receiving side --------------------------------------------------------
def receive(cwd, path, stdin, sha=None):
    return subprocess.run(fanout.receive_command(path, sha), input=stdin, cwd=cwd,
                          capture_output=True)


def frame(data):
    return len(data).to_bytes(8, "big") + data + hashlib.sha256(data).hexdigest().encode()


def test_framed_upload_is_checked_then_renamed(tmp_path):
    data = os.urandom(9 << 20)
    r = receive(tmp_path, "d/x.bin", frame(data))
    assert r.returncode == 0 and r.stdout.decode().strip() == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "d/x.bin").read_bytes() == data
    assert os.listdir(tmp_path / "d") == ["x.bin"]


@pytest.mark.parametrize("damage", ["truncated", "wrong hash"])
def test_damaged_copy_leaves_the_old_file_and_no_temp(tmp_path, damage):
    (tmp_path / "x.bin").write_bytes(b"old")
    data = os.urandom(1 << 20)
    if damage == "truncated":
        r = receive(tmp_path, "x.bin", frame(data)[:-1000])
    else:
        r = receive(tmp_path, "x.bin", data, sha="0" * 64)
    assert r.returncode == fanout.MISMATCH_EXIT and b"sha256 mismatch" in r.stderr
    assert (tmp_path / "x.bin").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_outcome_maps_exit_codes_to_errors_naming_the_node():
    ok = "a" * 64
    fanout._outcome("n1", "copy", 0, ok.encode() + b"\n", b"", ok)
    with pytest.raises(IntegrityError, match="n1"):
        fanout._outcome("n1", "copy", fanout.MISMATCH_EXIT, b"b" * 64, b"", ok)
    with pytest.raises(SSHError, match="n1.*No space") as err:
        fanout._outcome("n1", "copy", 1, b"", b"OSError: No space left on device", ok)
    assert err.value.fatal
    assert isinstance(fanout.ssh_failure("n2", "Host key verification failed.\n"),
                      HostKeyMismatch)
    assert fanout.ssh_failure("n2", "debian@10.42.0.6: Permission denied (publickey).").fatal
    assert not fanout.ssh_failure("n2", "Connection reset by peer").fatal


# -- key and known_hosts -----------------------------------------------------
def node(name, ip, keys):
    return types.SimpleNamespace(name=name, fixed_ip=ip, host_keys=keys)


def test_known_hosts_holds_every_members_recorded_keys_by_fixed_ip():
    k1, k2 = hostkeys.generate_ed25519()[1], hostkeys.generate_ed25519()[1]
    text = intra.known_hosts_text([node("a", "10.42.0.5", [k1]),
                                    node("b", "10.42.0.6", [k2, "ecdsa-sha2-nistp256 AAAAE x"])])
    assert text.splitlines() == ["10.42.0.5 " + k1, "10.42.0.6 " + k2,
                                 "10.42.0.6 ecdsa-sha2-nistp256 AAAAE"]
    with pytest.raises(StateError, match="b"):
        intra.known_hosts_text([node("b", None, [k1])])


def test_ssh_config_names_the_members_and_the_verified_options():
    cfg = intra.ssh_config_text("debian", ["10.42.0.5", "10.42.0.6"], "~/.cloudcompute/k",
                                 "~/.cloudcompute/kh")
    assert "Host 10.42.0.5 10.42.0.6\n" in cfg
    for line in ("IdentityFile ~/.cloudcompute/k", "UserKnownHostsFile ~/.cloudcompute/kh",
                 "StrictHostKeyChecking yes", "IdentitiesOnly yes",
                 "GlobalKnownHostsFile /dev/null", "BatchMode yes", "User debian"):
        assert "    %s\n" % line in cfg


def test_install_writes_0600_files_in_a_0700_directory(tmp_path):
    files = {"intra_key": "PRIVATE\n", "known_hosts": "10.42.0.5 ssh-ed25519 AAAA\n"}
    r = subprocess.run(intra.install_command(), input=json.dumps(files).encode(),
                       env=dict(os.environ, HOME=str(tmp_path)), capture_output=True)
    assert r.returncode == 0, r.stderr
    d = tmp_path / ".cloudcompute"
    assert r.stdout.decode().strip() == str(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert sorted(os.listdir(d)) == ["intra_key", "known_hosts"]
    for name, text in files.items():
        assert (d / name).read_text() == text
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600


def test_user_data_authorizes_the_internal_key_next_to_the_callers_keys():
    priv, pub = hostkeys.generate_ed25519()
    internal = hostkeys.generate_ed25519()[1]
    for theirs, expect in (("ssh-rsa AAAAmine", ["ssh-rsa AAAAmine", internal]),
                           ([internal], [internal]), (None, [internal])):
        base = {"packages": ["htop"]}
        if theirs:
            base["ssh_authorized_keys"] = theirs
        merged = yaml.safe_load(hostkeys.user_data_with_host_key(
            "#cloud-config\n" + yaml.safe_dump(base), priv, pub, [internal]))
        assert merged["ssh_authorized_keys"] == expect
        assert merged["ssh_keys"]["ed25519_public"] == pub
        assert merged["packages"] == ["htop"]
    assert "ssh_authorized_keys" not in yaml.safe_load(
        hostkeys.user_data_with_host_key(None, priv, pub))


def test_internal_key_is_recorded_before_it_is_written_and_teardown_removes_it(
        tmp_path, monkeypatch):
    st = ClusterState.create(ClusterRecord(name="c", cluster_id="c-1"), str(tmp_path))
    seen = []
    real = hostkeys.generate_ed25519

    def spy():
        seen.append(ClusterState.load("c", str(tmp_path)).record.ssh.internal_key_file)
        return real()
    monkeypatch.setattr(hostkeys, "generate_ed25519", spy)
    public = resources.create_internal_key(st)
    path = st.record.ssh.internal_key_file
    assert seen == [path] and path == str(tmp_path / "c-1.internal.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "OPENSSH PRIVATE KEY" in open(path).read() and public.startswith("ssh-ed25519 ")
    Teardown(fake_conn([]), st).run()
    assert not os.path.exists(path) and not (tmp_path / "c.json").exists()


# -- what the client sends ---------------------------------------------------
def test_a_file_is_read_into_one_reused_buffer(tmp_path):
    data = os.urandom(3 * fanout.CHUNK + 123)
    (tmp_path / "f").write_bytes(data)
    src = fanout.Source.of(str(tmp_path / "f"))
    bases, got = set(), bytearray()
    for chunk in src.chunks(src.size()):
        bases.add(id(chunk.obj))
        got += chunk
    assert got == data and len(bases) == 1


def test_an_array_is_sent_as_npy_without_a_copy():
    a = np.arange(3 * fanout.CHUNK // 8, dtype=np.int64).reshape(3, -1)
    src = fanout.Source.of(a)
    assert src.buffers[1].obj is a  # the array's own memory
    buf = io.BytesIO()
    np.save(buf, a)
    assert b"".join(bytes(c) for c in src.chunks(src.size())) == buf.getvalue()
    f = np.asfortranarray(a)
    sent = b"".join(bytes(c) for c in fanout.Source.of(f).chunks(f.nbytes + 128))
    assert np.array_equal(np.load(io.BytesIO(sent)), f)
    with pytest.raises(TypeError, match="pickle"):
        fanout.Source.of(np.array([{}], dtype=object))
    with pytest.raises(TypeError, match="file path or a NumPy array"):
        fanout.Source.of(b"bytes")


# -- the orchestration, against stand-in nodes ---------------------------------
class Nodes:
    """Records client uploads and hops instead of making them."""

    def __init__(self, monkeypatch, n, fail_hops=(), fail_direct=()):
        self.names = names(n)
        self.log = []
        self.fail_hops, self.fail_direct = set(fail_hops), set(fail_direct)
        self.state = types.SimpleNamespace(record=types.SimpleNamespace(
            ssh=SSHAccess(user="debian")))
        self.name = "c"
        self.nodes = [node(x, "10.42.0.%d" % (10 + i), ["ssh-ed25519 AAAA"])
                      for i, x in enumerate(self.names)]
        monkeypatch.setattr(intra, "prepared", lambda c, ns: ({x: sender(x) for x in ns}, {}))
        monkeypatch.setattr(fanout, "DIRECT_MAX_EXTRA", 0)
        monkeypatch.setattr(fanout, "stream_to_node", self.stream)
        monkeypatch.setattr(fanout, "copy_between", self.hop)

    def node_names(self):
        return self.names

    def connection(self, name):
        return types.SimpleNamespace(name=name)

    def stream(self, conn, path, source, progress):
        self.log.append(("client", conn.name))
        if conn.name in self.fail_direct:
            raise SSHError(conn.name, "refused", fatal=True)
        size = source.size()
        if progress:
            progress(size)
        return "s" * 64

    def hop(self, cluster, via, dst, path, sha, size):
        self.log.append((via.node, dst))
        if dst in self.fail_hops:
            raise SSHError(dst, "ssh failed: connection reset")


def test_put_sends_once_from_the_client_then_copies_in_rounds(monkeypatch, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 1000)
    c = Nodes(monkeypatch, 8)
    sent = []
    fanout.put(c, str(f), "f", progress=sent.append)
    assert sum(sent) == 1000
    assert c.log[0] == ("client", "n00")
    assert [e for e in c.log if e[0] == "client"] == [("client", "n00")]
    hops = [e for e in c.log if e[0] != "client"]
    assert sorted(hops) == sorted(p for r in fanout.plan_rounds(c.names) for p in r)


def test_a_failed_hop_is_retried_then_sent_from_the_client(monkeypatch, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 1000)
    c = Nodes(monkeypatch, 4, fail_hops={"n03"})
    sent = []
    fanout.put(c, str(f), "f", progress=sent.append)
    assert c.log.count(("n01", "n03")) == 3  # retry.transfer's attempts
    assert ("client", "n03") in c.log and sum(sent) == 2000


def test_a_node_nobody_can_reach_is_named_and_the_rest_still_get_the_file(monkeypatch,
                                                                           tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    c = Nodes(monkeypatch, 4, fail_hops={"n01"}, fail_direct={"n01"})
    with pytest.raises(fanout.FanOutError, match="n01") as err:
        fanout.put(c, str(f), "f")
    assert set(err.value.failed) == {"n01"}
    assert sorted(err.value.succeeded) == ["n00", "n02", "n03"]


def test_one_node_is_a_plain_upload(monkeypatch, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    c = Nodes(monkeypatch, 3)
    fanout.put(c, str(f), "f", nodes=["n02"])
    assert c.log == [("client", "n02")]


def test_a_small_file_goes_from_the_client_to_every_node(monkeypatch, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 1000)
    c = Nodes(monkeypatch, 4)
    monkeypatch.setattr(fanout, "DIRECT_MAX_EXTRA", 3000)  # 3 extra copies: direct
    monkeypatch.setattr(intra, "prepared", lambda c, ns: pytest.fail("set up for a small file"))
    fanout.put(c, str(f), "f")
    assert c.log == [("client", n) for n in c.names]
    monkeypatch.setattr(fanout, "DIRECT_MAX_EXTRA", 2999)
    monkeypatch.setattr(intra, "prepared", lambda c, ns: ({x: sender(x) for x in ns}, {}))
    c.log.clear()
    fanout.put(c, str(f), "f")
    assert [e for e in c.log if e[0] == "client"] == [("client", "n00")]


class Member(types.SimpleNamespace):
    def run(self, argv, stdin=None, timeout=None):
        self.runs.append((argv, stdin))
        return types.SimpleNamespace(stdout="/home/debian/.cloudcompute\n")


class Members:
    """A cluster as intra sees it (hashable and weakly referenceable, as a Cluster is)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_nodes_are_set_up_once_per_membership_and_again_after_forget(tmp_path):
    key = tmp_path / "c.internal.key"
    key.write_text("PRIVATE")
    members = {n: Member(runs=[]) for n in names(3)}
    c = Members(
        name="c", nodes=[node(n, "10.42.0.%d" % i, ["ssh-ed25519 AAAA"])
                         for i, n in enumerate(names(3))],
        state=types.SimpleNamespace(record=types.SimpleNamespace(
            ssh=SSHAccess(user="debian", internal_key_file=str(key)))),
        connection=members.__getitem__, node_names=lambda: names(3))
    ready, unset = intra.prepared(c, names(3))
    assert sorted(ready) == names(3) and unset == {}
    assert ready["n01"].known_hosts == "/home/debian/.cloudcompute/known_hosts"
    assert ready["n01"].peers == {"n00": "10.42.0.0", "n01": "10.42.0.1", "n02": "10.42.0.2"}
    argv, stdin = members["n00"].runs[0]
    assert "PRIVATE" not in " ".join(argv)  # the key travels on stdin only
    sent = json.loads(stdin)
    assert sent["intra_key"] == "PRIVATE"
    assert sent["known_hosts"] == intra.known_hosts_text(c.nodes)
    assert "Host 10.42.0.0 10.42.0.1 10.42.0.2\n" in sent["ssh_config"]
    intra.prepared(c, names(3))
    assert [len(m.runs) for m in members.values()] == [1, 1, 1]
    c.nodes[2].host_keys = ["ssh-ed25519 BBBB"]  # a member changed: install again
    intra.prepared(c, names(2))
    assert [len(m.runs) for m in members.values()] == [2, 2, 1]
    intra.forget(c)
    intra.prepared(c, names(1))
    assert [len(m.runs) for m in members.values()] == [3, 2, 1]
    c.state.record.ssh.internal_key_file = None
    with pytest.raises(StateError, match="no internal key"):
        intra.install(c)


def test_client_bytes_follow_the_fan_out_rule():
    big, small = 64 << 20, 1 << 20
    assert fanout.client_bytes(big, 8) == big and fanout.fans_out(big, 8)
    assert fanout.client_bytes(small, 3) == 3 * small and not fanout.fans_out(small, 3)
    assert fanout.client_bytes(big, 1) == big and not fanout.fans_out(big, 1)
