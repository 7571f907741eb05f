"""put fans out inside the cloud: the client sends once, the nodes copy verified.

Client-side bytes are counted twice: by the progress callback and, outside
the library, by an iptables chain on this host's traffic to the nodes'
SSH ports (the tests run as root on the rig).
"""
import hashlib
import logging
import os
import shlex
import stat

import pytest

from benchmarks.fanout import ClientBytes
from cloudcompute.exceptions import HostKeyMismatch
from cloudcompute.jobs import fanout
from cloudcompute.ssh import hostkeys, intra
from cloudcompute.ssh.client import quote_command
from tests.functional.conftest import keypairs_with, leftovers, shared_cluster

MIB = 64


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with shared_cluster(tmp_path_factory, "fan", 4) as c:
        yield c


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = tmp_path_factory.mktemp("fan") / "big.bin"
    data = os.urandom(MIB << 20)
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest(), len(data)


def node_sha(cluster, remote):
    return {n: cluster.connection(n).run(["sha256sum", "--", remote]).stdout.split()[0]
            for n in cluster.node_names()}


def counted_put(cluster, path, remote):
    sent = []
    with ClientBytes([n.address for n in cluster.nodes]) as wire:
        cluster.put(path, remote, progress=sent.append)
        return sum(sent), wire.read()


def test_64mib_put_reaches_every_node_intact_and_leaves_the_client_once(cluster, big):
    path, sha, size = big
    progress, wire = counted_put(cluster, path, "fan/big.bin")
    assert node_sha(cluster, "fan/big.bin") == {n: sha for n in cluster.node_names()}
    assert progress == size
    # SSH framing and the few control commands add well under 5%; N uploads would be 4x.
    assert size <= wire <= 1.05 * size, "client sent %.2fx the file" % (wire / size)
    for n in cluster.node_names():  # each copy was renamed into place: no temp file left
        assert cluster.connection(n).run(["ls", "-A", "fan"]).stdout.split() == ["big.bin"]


def test_intra_cluster_ssh_files_are_private_and_verified(cluster, caplog):
    caplog.set_level(logging.DEBUG)
    ssh = intra.install(cluster)
    a, b = cluster.node_names()[:2]
    conn = cluster.connection(a)
    r = conn.run(["stat", "-c", "%a %n", os.path.dirname(ssh[a].key_file),
                  ssh[a].key_file, ssh[a].known_hosts, ssh[a].config_file])
    modes = [line.split()[0] for line in r.stdout.splitlines()]
    assert modes == ["700", "600", "600", "600"]
    local = cluster.state.record.ssh.internal_key_file
    assert stat.S_IMODE(os.stat(local).st_mode) == 0o600
    body = open(local).read().splitlines()[1]
    assert body not in caplog.text  # never logged, even at DEBUG
    assert body in conn.run(["cat", ssh[a].key_file]).stdout  # the same key, installed
    # what an MPI job relies on: the argv, and ssh -F with the installed config
    hostname = conn.run(quote_command(ssh[a].ssh_argv(b) + ["hostname"])).stdout.strip()
    assert hostname == cluster.connection(b).run(["hostname"]).stdout.strip()
    peer_ip = ssh[a].peers[b]
    r = conn.run(["ssh", "-F", ssh[a].config_file, peer_ip, "echo", "ok"])
    assert r.stdout.strip() == "ok"


@pytest.mark.parametrize("known", ["wrong key", "no entry"])
def test_node_to_node_ssh_refuses_an_unrecorded_host_key(cluster, big, fault, known):
    fault("node-to-node SSH with %s for the peer in known_hosts" % known, "security",
          "ssh refuses (exit 255, host key verification failed); HostKeyMismatch names "
          "the peer; nothing is written there")
    path, sha, size = big
    ssh = intra.install(cluster)
    a, b = cluster.node_names()[:2]
    conn = cluster.connection(a)
    others = [n for n in cluster.nodes if n.name != b]
    text = intra.known_hosts_text(others)
    if known == "wrong key":
        text += "%s %s\n" % (ssh[a].peers[b], hostkeys.generate_ed25519()[1])
    bad = ssh[a].known_hosts + ".test"
    conn.run("cat > %s" % shlex.quote(bad), stdin=text.encode())
    wrong = intra.IntraSSH(a, ssh[a].user, ssh[a].key_file, bad, ssh[a].config_file,
                            ssh[a].peers)
    cluster.put(path, "fan/src.bin", nodes=[a])
    r = conn.run(quote_command(wrong.ssh_argv(b) + ["true"]), warn=True)
    assert r.exit_code == 255 and "Host key verification failed" in r.stderr
    with fault.raises(HostKeyMismatch, match=b):
        fanout.copy_between(cluster, wrong, b, "fan/src.bin", sha, size)
    assert not cluster.connection(b).run(["test", "-e", "fan/src.bin"], warn=True).ok


def test_hop_refused_by_a_node_falls_back_to_the_client(cluster, big, fault, monkeypatch):
    fault("node-to-node copy refused (one peer's host key is not the recorded one)", "ssh",
          "that node gets the file from the client; every copy intact; client sends 2x")
    path, sha, size = big
    victim = cluster.nodes[3]
    real = intra.known_hosts_text

    def one_wrong(nodes):
        good = [n for n in nodes if n.name != victim.name]
        return real(good) + "%s %s\n" % (victim.fixed_ip, hostkeys.generate_ed25519()[1])
    monkeypatch.setattr(intra, "known_hosts_text", one_wrong)
    progress, wire = counted_put(cluster, path, "fan/fallback.bin")
    assert node_sha(cluster, "fan/fallback.bin") == {n: sha for n in cluster.node_names()}
    assert progress == 2 * size and 2 * size <= wire <= 2.1 * size
    fault.observed = "client sent %.2fx the file; all %d copies match" % (
        wire / size, len(cluster.nodes))


def test_down_leaves_nothing(cluster, conn, admin_conn):
    st = cluster.state
    files = [st.path, st.record.ssh.key_file, st.record.ssh.internal_key_file]
    assert all(os.path.exists(f) for f in files)
    cluster.down()
    assert leftovers(admin_conn, conn.current_project_id, st.cluster_id) == []
    assert keypairs_with(conn, st.cluster_id) == []
    assert [f for f in files if os.path.exists(f)] == []
