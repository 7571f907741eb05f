"""SSH to one node with paramiko: verified host keys, lazy and reused.

A :class:`NodeConnection` opens on first use and is closed by ``close()``
or its context manager. The host key must match what provisioning recorded
(:mod:`cloudcompute.ssh.hostkeys`); a node without a recorded key is
refused, never trusted on first use.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import socket
import threading
import time
from typing import Any, Iterator, List, Optional, Sequence, Union

import paramiko

from cloudcompute import retry
from cloudcompute.exceptions import HostKeyMismatch, RemoteCommandError, SSHError
from cloudcompute.ssh import bulk, hostkeys
from cloudcompute.ssh.transport import DRAIN_LIMIT as DRAIN_LIMIT
from cloudcompute.ssh.transport import ParamikoTransport, Progress, Transport
from cloudcompute.ssh.transport import drain as _drain
from cloudcompute.ssh.transport import quote_command as quote_command
from cloudcompute.ssh.transport import send_all as send_all

LOG = logging.getLogger(__name__)

# Ciphers that are fast on CPUs with AES-NI; paramiko falls back to its
# defaults for anything the server does not offer.
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr")


@dataclasses.dataclass
class CommandResult:
    """What a remote command did. ``ok`` is exit code 0."""
    node: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    truncated: bool = False
    """Output past the drain limit was dropped; stdout/stderr keep its tail."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class _VerifyRecorded(paramiko.MissingHostKeyPolicy):
    def __init__(self, node: str, expected: List[str]):
        self.node = node
        self.expected = expected

    def missing_host_key(self, client, hostname, key):  # noqa: D401
        got = "%s %s" % (key.get_name(), key.get_base64())
        raise HostKeyMismatch(self.node, ", ".join(
            hostkeys.fingerprint(k) for k in self.expected) or "(none recorded)",
            hostkeys.fingerprint(got))


def _fast_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """A Transport that offers AES-GCM first (several times faster than the default)."""
    transport = paramiko.Transport(sock, **kwargs)
    opts = transport.get_security_options()
    preferred = [c for c in FAST_CIPHERS if c in opts.ciphers]
    opts.ciphers = tuple(preferred) + tuple(c for c in opts.ciphers if c not in preferred)
    return transport


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying while a node boots or the network blips."""
    if isinstance(exc, SSHError):
        return not exc.fatal
    if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    return isinstance(exc, (OSError, EOFError, paramiko.SSHException, socket.timeout))


class NodeConnection:
    """A lazily opened, verified SSH connection to one node."""

    def __init__(self, name: str, address: str, user: str, key_file: str,
                 host_keys: Sequence[str], port: int = 22,
                 connect_timeout: float = 10.0):
        self.name = name
        self.address = address
        self.user = user
        self.key_file = key_file
        self.host_keys = list(host_keys)
        self.port = port
        self.connect_timeout = connect_timeout
        self._client: Optional[paramiko.SSHClient] = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self._bulk_ssh: Optional[bulk.OpenSSHBulk] = None
        self._paramiko = ParamikoTransport(name, self._open_session)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "NodeConnection(%s %s@%s)" % (self.name, self.user, self.address)

    # -- lifecycle -----------------------------------------------------
    def _open(self) -> paramiko.SSHClient:
        if not self.host_keys:
            raise SSHError(self.name, "no host key recorded; refusing to trust "
                           "on first use", fatal=True)
        client = paramiko.SSHClient()
        store = client.get_host_keys()
        host = self.address if self.port == 22 else "[%s]:%d" % (self.address, self.port)
        for line in self.host_keys:
            ktype, b64 = line.split()[:2]
            store.add(host, ktype, paramiko.PKey.from_type_string(ktype, base64.b64decode(b64)))
        client.set_missing_host_key_policy(_VerifyRecorded(self.name, self.host_keys))
        sock = socket.create_connection((self.address, self.port), self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(self.address, port=self.port, username=self.user,
                           key_filename=self.key_file, sock=sock,
                           timeout=self.connect_timeout,
                           banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout,
                           allow_agent=False, look_for_keys=False,
                           transport_factory=_fast_transport)
        except paramiko.BadHostKeyException as exc:
            sock.close()
            raise HostKeyMismatch(self.name, hostkeys.fingerprint(
                "%s %s" % (exc.expected_key.get_name(), exc.expected_key.get_base64())),
                hostkeys.fingerprint("%s %s" % (exc.key.get_name(), exc.key.get_base64()))
            ) from exc
        except paramiko.AuthenticationException as exc:
            sock.close()
            raise SSHError(self.name, "authentication as %s refused: %s"
                           % (self.user, exc), fatal=True) from exc
        except BaseException:
            sock.close()
            client.close()
            raise
        client.get_transport().set_keepalive(bulk.KEEPALIVE_SECONDS)
        return client

    @property
    def client(self) -> paramiko.SSHClient:
        with self._lock:
            if self._client is None or not self._client.get_transport() \
                    or not self._client.get_transport().is_active():
                self._client = self._open()
                self._sftp = None
            return self._client

    def connect(self, deadline: Optional[float] = None) -> "NodeConnection":
        """Open now, retrying transient errors until ``deadline`` (monotonic)."""
        if deadline is None:
            _ = self.client
            return self
        retry.ssh_connect(deadline, is_transient)(lambda: self.client)()
        return self

    @property
    def sftp(self) -> paramiko.SFTPClient:
        client = self.client
        with self._lock:
            if self._sftp is None:
                self._sftp = client.open_sftp()
            return self._sftp

    def close(self) -> None:
        if self._bulk_ssh is not None:
            self._bulk_ssh.close()
            self._bulk_ssh = None
        with self._lock:
            if self._sftp is not None:
                self._sftp.close()
                self._sftp = None
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> "NodeConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- files ---------------------------------------------------------
    def _open_session(self) -> paramiko.Channel:
        return self.client.get_transport().open_session(timeout=self.connect_timeout)

    def _bulk(self) -> Optional[bulk.OpenSSHBulk]:
        """The OpenSSH transport, started on first use, where ``bulk.available()``."""
        if self._bulk_ssh is None and bulk.available():
            self._bulk_ssh = bulk.OpenSSHBulk(self.name, self.address, self.user,
                                              self.key_file, self.host_keys, self.port)
        return self._bulk_ssh

    @property
    def transport(self) -> Transport:
        """What moves files: OpenSSH where available, else paramiko channels."""
        fast = self._bulk()
        return fast if fast is not None else self._paramiko

    @contextlib.contextmanager
    def _bulk_reset_on_loss(self) -> Iterator[None]:
        """A lost connection also takes the ControlMaster: start afresh next time."""
        try:
            yield
        except SSHError as exc:
            if not exc.fatal and self._bulk_ssh is not None:
                self._bulk_ssh.close()
                self._bulk_ssh = None
            raise

    def upload(self, path: str, data: bulk.Buffers, progress: Progress = None) -> str:
        """Write ``data`` to ``path`` on the node (parent directories made); the node
        hashes it as it writes. Returns the sha256 both sides agreed on."""
        transport = self.transport
        with self._bulk_reset_on_loss():
            return transport.upload(path, data, progress)

    def download(self, path: str, sha256: Optional[str] = None,
                 progress: Progress = None, remove: bool = False,
                 max_bytes: Optional[int] = None) -> bytearray:
        """The bytes of ``path`` on the node, checked against ``sha256`` when the
        caller knows it, else against the node's own hash. ``remove`` deletes
        the file on the node as the read begins. A file over ``max_bytes`` is
        refused (fatal SSHError) before anything is allocated for it."""
        transport = self.transport
        with self._bulk_reset_on_loss():
            return transport.download(path, sha256, progress, remove, max_bytes=max_bytes)

    # -- commands ------------------------------------------------------
    def run(self, argv: Union[str, Sequence[str]], warn: bool = False,
            timeout: Optional[float] = None, stdin: Optional[bytes] = None) -> CommandResult:
        """Run a command; raise RemoteCommandError on non-zero unless ``warn``."""
        command = quote_command(argv)
        t0 = time.monotonic()
        chan = self.client.get_transport().open_session(timeout=self.connect_timeout)
        try:
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err, truncated = _drain(chan, None if timeout is None else t0 + timeout)
            code = chan.recv_exit_status()
        except socket.timeout as exc:
            raise SSHError(self.name, "command timed out after %ss: %s"
                           % (timeout, command)) from exc
        finally:
            chan.close()
        result = CommandResult(self.name, command, code,
                               out.decode("utf-8", "replace"),
                               err.decode("utf-8", "replace"),
                               time.monotonic() - t0, truncated)
        if not warn and not result.ok:
            raise RemoteCommandError(result)
        return result

