"""SSH between the nodes of a cluster, verified both ways (also for MPI jobs).

Every node authorizes the cluster's internal key (cloud-init
``ssh_authorized_keys`` at creation, :mod:`cloudcompute.provision.resources`).
:func:`install` puts, over the client's verified connection, the private
half, a known_hosts file holding every member's recorded host key under its
fixed IP, and an ssh_config using both, in ``~/.cloudcompute/`` (0700, files
0600). ssh from one node to another then offers that key only and accepts
only the recorded host keys (``StrictHostKeyChecking=yes``, no global
known_hosts).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import os
import socket
import weakref
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import paramiko

from cloudcompute import nodeside
from cloudcompute.exceptions import CloudComputeError, SSHError, StateError
from cloudcompute.jobs.protocol import NODE_DIR
from cloudcompute.ssh import bulk

INTRA_DIR = NODE_DIR
KEY_NAME, KNOWN_HOSTS_NAME, CONFIG_NAME = "intra_key", "known_hosts", "ssh_config"

@dataclasses.dataclass(frozen=True)
class IntraSSH:
    """How one node reaches the others over SSH, verified both ways.

    Paths are absolute, on that node. ``peers`` maps every member's name to
    the fixed IP its host key is recorded under in ``known_hosts``.
    """
    node: str
    user: str
    key_file: str
    known_hosts: str
    config_file: str
    peers: Dict[str, str]

    def ssh_argv(self, peer: str) -> List[str]:
        """The ssh command (to run on this node) that logs in to ``peer``."""
        return ssh_argv(self.key_file, self.known_hosts, self.user, self.peers[peer])


# -- what runs where (pure, unit tested) ----------------------------------
def peer_options(key_file: str, known_hosts: str) -> List[str]:
    """The OpenSSH options from one node to another (:func:`bulk.openssh_options`,
    quiet, the fast ciphers first): the source of both :func:`ssh_argv` and
    :func:`ssh_config_text`."""
    return [*bulk.openssh_options(key_file, known_hosts), "-o", "LogLevel=ERROR",
            "-o", "Ciphers=" + bulk.CIPHERS]


def ssh_argv(key_file: str, known_hosts: str, user: str, address: str) -> List[str]:
    """ssh from one node to another: only the internal key, only recorded host keys."""
    return ["ssh", *peer_options(key_file, known_hosts), *bulk.destination(user, address)]


def install_command() -> List[str]:
    """The node side of :func:`install` (:mod:`cloudcompute.nodeside.intra_install`):
    writes the files of node-to-node SSH (a JSON object on stdin) in ``~/INTRA_DIR``,
    each 0600 from creation on and renamed into place; prints the directory."""
    return nodeside.command("intra_install", INTRA_DIR)


def known_hosts_text(nodes: Sequence[Any]) -> str:
    """One line per recorded host key of every node, keyed by its fixed IP."""
    lines = []
    for n in nodes:
        if not n.fixed_ip or not n.host_keys:
            raise StateError("node %s has no fixed IP or no recorded host key" % n.name)
        lines += ["%s %s\n" % (n.fixed_ip, " ".join(k.split()[:2])) for k in n.host_keys]
    return "".join(lines)


_KEYWORDS = {"-p": "Port", "-i": "IdentityFile"}
"""The flags of :func:`bulk.openssh_options` besides ``-o Key=Value`` and ``-F``
(which names the configuration file itself), as ssh_config keywords."""


def config_lines(argv_options: Sequence[str]) -> List[str]:
    """ssh options (``-o Key=Value``, ``-p``, ``-i``; ``-F`` left out) as ssh_config
    lines ``Key Value``. Raises ValueError for a flag or a value with no such form."""
    if len(argv_options) % 2:
        raise ValueError("ssh options come in pairs: %r" % (list(argv_options),))
    lines = []
    for flag, value in zip(argv_options[::2], argv_options[1::2], strict=True):
        if flag == "-o":
            key, eq, setting = value.partition("=")
            if not eq or not key.isalnum():
                raise ValueError("ssh option -o %s is not Key=Value" % value)
            value = setting
        elif flag in _KEYWORDS:
            key = _KEYWORDS[flag]
        elif flag == "-F":
            continue
        else:
            raise ValueError("ssh option %s has no ssh_config form" % flag)
        if '"' in value or "\n" in value:
            raise ValueError("ssh_config cannot hold the value of %s: %r" % (key, value))
        lines.append("%s %s" % (key, '"%s"' % value if value.split() != [value] else value))
    return lines


def ssh_config_text(user: str, addresses: Sequence[str], key_file: str,
                    known_hosts: str) -> str:
    """An ssh_config for ``ssh -F`` (and MPI's rsh agent): the options of
    :func:`ssh_argv`, for the members' fixed IPs only."""
    lines = ["Host " + " ".join(addresses), "    User " + user]
    lines += ["    " + line for line in config_lines(peer_options(key_file, known_hosts))]
    return ("# SSH between the nodes of a cloudcompute cluster (host keys verified)\n"
            + "".join(line + "\n" for line in lines))


@contextlib.contextmanager
def named_errors(node: str, what: str) -> Iterator[None]:
    """Connection-level errors become an SSHError naming the node (transient)."""
    try:
        yield
    except (OSError, EOFError, socket.timeout, paramiko.SSHException) as exc:
        raise SSHError(node, "%s: %s: %s" % (what, type(exc).__name__, exc)) from exc


# cluster -> (the known_hosts text installed, node -> IntraSSH): set up once per
# process and membership; ``forget`` drops it (after a failed hop).
_PREPARED: "weakref.WeakKeyDictionary[Any, Tuple[str, Dict[str, IntraSSH]]]" = \
    weakref.WeakKeyDictionary()


# -- on the nodes ---------------------------------------------------------------
def install(cluster: Any, nodes: Optional[Sequence[str]] = None) -> Dict[str, IntraSSH]:
    """Install the cluster's internal key, known_hosts and ssh_config on ``nodes``
    (default: all) over the client's verified SSH; node -> its IntraSSH.

    Afterwards ``ssh -F ~/.cloudcompute/ssh_config <fixed IP>`` works from
    each of them to every member, verified against the recorded host keys.
    Raises StateError for a cluster without an internal key (created before
    this existed); a node that cannot be set up raises its SSH error.
    """
    known = known_hosts_text(cluster.nodes)
    done, failed = _install_on(cluster, list(nodes or cluster.node_names()))
    installed, ready = _PREPARED.get(cluster, ("", {}))
    _PREPARED[cluster] = (known, dict(ready if installed == known else {}, **done))
    if failed:
        raise sorted(failed.items())[0][1]
    return done


def _install_on(cluster: Any, names: Sequence[str]) -> Tuple[Dict[str, IntraSSH],
                                                           Dict[str, BaseException]]:
    key_path = cluster.state.record.ssh.internal_key_file if cluster.state else None
    if not key_path or not os.path.exists(key_path):
        raise StateError("cluster %s has no internal key (it was created by an older "
                         "cloudcompute); node-to-node SSH is not set up" % cluster.name)
    with open(key_path) as f:
        private = f.read()
    user = cluster.state.record.ssh.user
    peers = {n.name: n.fixed_ip for n in cluster.nodes}
    known = known_hosts_text(cluster.nodes)

    def one(name: str) -> IntraSSH:
        home = os.path.join("~", INTRA_DIR)  # replaced below by the node's own answer
        files = {KEY_NAME: private, KNOWN_HOSTS_NAME: known,
                 CONFIG_NAME: ssh_config_text(user, sorted(peers.values()),
                                              os.path.join(home, KEY_NAME),
                                              os.path.join(home, KNOWN_HOSTS_NAME))}
        # The private key travels on stdin: never on a command line or in a log.
        with named_errors(name, "installing node-to-node SSH"):
            r = cluster.connection(name).run(install_command(),
                                             stdin=json.dumps(files).encode(), timeout=60)
        d = r.stdout.strip()
        return IntraSSH(name, user, os.path.join(d, KEY_NAME),
                        os.path.join(d, KNOWN_HOSTS_NAME), os.path.join(d, CONFIG_NAME), peers)

    done: Dict[str, IntraSSH] = {}
    failed: Dict[str, BaseException] = {}
    with cf.ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        futures = {n: pool.submit(one, n) for n in names}
        for n, future in futures.items():
            try:
                done[n] = future.result()
            except CloudComputeError as exc:
                failed[n] = exc
    return done, failed


def prepared(cluster: Any, names: Sequence[str]) -> Tuple[Dict[str, IntraSSH],
                                                           Dict[str, BaseException]]:
    """``install`` on those of ``names`` not yet set up for the cluster's current
    members (in this process); node -> IntraSSH, and node -> why it could not be."""
    known = known_hosts_text(cluster.nodes)
    installed, ready = _PREPARED.get(cluster, ("", {}))
    ready = dict(ready) if installed == known else {}
    unset: Dict[str, BaseException] = {}
    todo = [n for n in names if n not in ready]
    if todo:
        done, unset = _install_on(cluster, todo)
        ready.update(done)
        _PREPARED[cluster] = (known, ready)
    return {n: ready[n] for n in names if n in ready}, unset


def forget(cluster: Any) -> None:
    """Set the nodes up afresh next time (a hop failed: a node may have lost its files)."""
    _PREPARED.pop(cluster, None)
