"""Bulk file transfer to one node: the :class:`Transport` interface and its paramiko
implementation, plus the paramiko channel plumbing commands share.

Two implementations move a file's bytes, both running the node-side programs
of :mod:`cloudcompute.nodeside` (``put`` and ``get``) and both checking the
sha256 end to end:

- :class:`cloudcompute.ssh.bulk.OpenSSHBulk`, through the OpenSSH client and a
  ControlMaster, used where ``ssh`` is installed (about three times faster);
- :class:`ParamikoTransport`, over channels of the node's paramiko connection.

:class:`cloudcompute.ssh.client.NodeConnection` picks one (``transport``).
"""
from __future__ import annotations

import hashlib
import select
import shlex
import socket
import time
from typing import Callable, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import paramiko

from cloudcompute.exceptions import IntegrityError, SSHError
from cloudcompute.ssh import bulk

Progress = Optional[Callable[[int], None]]
"""Called with the number of bytes moved since the last call."""


@runtime_checkable
class Transport(Protocol):
    """Moves whole files to and from one node, sha256-checked."""

    def upload(self, path: str, data: bulk.Buffers, progress: Progress = None) -> str:
        """Write ``data`` to ``path`` on the node (parent directories made); the node
        hashes what it wrote. Returns the sha256 both sides agreed on, else raises
        IntegrityError."""

    def download(self, path: str, sha256: Optional[str] = None, progress: Progress = None,
                 remove: bool = False, max_bytes: Optional[int] = None) -> bytearray:
        """The bytes of ``path`` on the node, checked against ``sha256`` if given, else
        against the node's own hash. ``remove`` deletes the file as the read begins;
        a file over ``max_bytes`` is refused (fatal SSHError) before it is read."""

    def close(self) -> None:
        """Let go of what the transport holds (idempotent)."""


class ParamikoTransport:
    """Uploads and downloads over channels opened by ``open_session`` (a session
    channel of the node's paramiko connection, opened afresh for each transfer)."""

    def __init__(self, name: str, open_session: Callable[[], paramiko.Channel]):
        self.name = name
        self.open_session = open_session

    def upload(self, path: str, data: bulk.Buffers, progress: Progress = None) -> str:
        h = hashlib.sha256()
        for part in bulk.parts_of(data):
            h.update(part)
        want = h.hexdigest()
        chan = self.open_session()
        try:
            chan.exec_command(quote_command(bulk.put_command(path)))
            for part in bulk.parts_of(data):
                send_all(chan, part, progress)
            chan.shutdown_write()
            out, err, _ = drain(chan, None)
            code = chan.recv_exit_status()
        finally:
            chan.close()
        got = out.decode("utf-8", "replace").split()[0] if out.strip() else ""
        if code != 0 or got != want:
            raise IntegrityError(self.name, "upload of %s" % path, want,
                                 got or err.decode("utf-8", "replace").strip())
        return want

    def download(self, path: str, sha256: Optional[str] = None, progress: Progress = None,
                 remove: bool = False, max_bytes: Optional[int] = None) -> bytearray:
        chan = self.open_session()

        def read_into(view: memoryview) -> int:
            got = chan.recv(len(view))
            view[:len(got)] = got
            return len(got)
        data: Optional[bytearray] = None
        try:
            chan.exec_command(quote_command(bulk.get_command(path, sha256, remove)))
            chan.shutdown_write()
            try:
                data = bulk.read_sized(read_into, self.name, path, progress, max_bytes)
            except SSHError as exc:
                if exc.fatal:  # refused: closing the channel stops the transfer
                    raise
                # else the exit status and stderr below say why
            _, err, _ = drain(chan, None)
            code = chan.recv_exit_status()
        finally:
            chan.close()
        if code == -1 or (code == 0 and data is None):  # the connection went away
            raise SSHError(self.name, "connection lost while reading %s" % path)
        if code != 0:
            raise SSHError(self.name, "cannot read %s: %s"
                           % (path, err.decode("utf-8", "replace").strip()), fatal=True)
        assert data is not None  # code == 0 here, and a missing body raised above
        bulk.check_download(self.name, path, data, err, sha256)
        return data

    def close(self) -> None:
        """Nothing to let go: each transfer closes its channel, and the connection
        belongs to the NodeConnection."""


def quote_command(argv: Union[str, Sequence[str]]) -> str:
    """A shell command from an argv list, every word ``shlex.quote``-d."""
    if isinstance(argv, str):
        return argv
    return " ".join(shlex.quote(str(a)) for a in argv)


def send_all(chan: paramiko.Channel, data: Union[bytes, bytearray, memoryview],
             progress: Progress = None) -> None:
    """Send without the copies sendall makes of its (shrinking) input."""
    view = memoryview(data).cast("B")
    while len(view):
        sent = chan.send(view[:1 << 20])
        if sent <= 0:
            raise EOFError("channel closed while sending")
        view = view[sent:]
        if progress is not None:
            progress(sent)


DRAIN_LIMIT = 16 << 20
"""What :func:`drain` keeps of a command's stdout, and of its stderr: the tail."""


class _Tail:
    """The last ``limit`` bytes of a stream, and how many were dropped before them."""

    def __init__(self, limit: int):
        self.limit = limit
        self.buf = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        over = len(self.buf) - self.limit
        if over > 0:
            del self.buf[:over]  # cheap in CPython: the start advances, nothing moves yet
            self.dropped += over

    def value(self) -> bytes:
        if not self.dropped:
            return bytes(self.buf)
        return b"[... %d bytes dropped ...]\n" % self.dropped + bytes(self.buf)


def drain(chan: paramiko.Channel, deadline: Optional[float],
           progress: Progress = None,
           limit: int = DRAIN_LIMIT) -> Tuple[bytes, bytes, bool]:
    """Read stdout and stderr until the command exits (or the deadline passes).

    Returns (stdout, stderr, truncated). Each keeps the last ``limit`` bytes;
    what came before is read and dropped (so the command never blocks on a
    full channel), and a ``[... N bytes dropped ...]`` line starts the bytes
    kept."""
    out, err = _Tail(limit), _Tail(limit)
    while True:
        while chan.recv_ready():
            chunk = chan.recv(1 << 20)
            out.add(chunk)
            if progress is not None:
                progress(len(chunk))
        while chan.recv_stderr_ready():
            err.add(chan.recv_stderr(1 << 16))
        # SSH delivers a command's output before its exit status.
        if chan.exit_status_ready() and not chan.recv_ready() \
                and not chan.recv_stderr_ready():
            return out.value(), err.value(), bool(out.dropped or err.dropped)
        if deadline is not None and time.monotonic() > deadline:
            raise socket.timeout()
        select.select([chan], [], [], 0.05)
