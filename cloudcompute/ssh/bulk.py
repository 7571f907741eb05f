"""Bulk transfers through the OpenSSH client, where this machine has one.

paramiko does its packet work in Python and moves large files at a third of
what OpenSSH reaches on the same link. When ``ssh`` is installed, file
payloads go through it instead: one ControlMaster connection per node
(aes128-gcm preferred), verified against the same recorded host keys
(``StrictHostKeyChecking=yes`` with a known_hosts file holding only them),
with the cluster's key only. Set ``CLOUDCOMPUTE_BULK=paramiko`` to turn it off.

The OpenSSH options of every ``ssh`` this library starts (here, node to node
in :mod:`cloudcompute.ssh.intra`, the CLI's ``ssh``) come from
:func:`openssh_options` and :func:`destination`.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import selectors
import shlex
import shutil
import subprocess
import tempfile
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from cloudcompute import nodeside
from cloudcompute.exceptions import HostKeyMismatch, IntegrityError, SSHError
from cloudcompute.nodeside.put import F_SETPIPE_SZ  # the nodes' programs keep their own copy

KEEPALIVE_SECONDS = 5
"""Both SSH clients probe a quiet connection this often; OpenSSH gives up after
three probes go unanswered (15 s), paramiko when its transport write fails."""
KEEPALIVE_OPTIONS = ["-o", "ServerAliveInterval=%d" % KEEPALIVE_SECONDS,
                     "-o", "ServerAliveCountMax=3"]

CIPHERS = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
           "aes128-ctr")
"""OpenSSH's cipher preference here: AES-GCM first (fast with AES-NI)."""

REPLY_LIMIT = 64 << 10
"""What a transfer keeps of the node's reply besides the file's bytes (its hash on
stdout, an error on stderr); a node that sends more is cut off."""

CLOSE_TIMEOUT = 15.0
"""Seconds ``ssh -O exit`` may take to stop a ControlMaster."""

LOG = logging.getLogger(__name__)


def openssh_options(key_file: str, known_hosts: str, port: int = 22,
                    batch: bool = True) -> List[str]:
    """The options of every OpenSSH client this library starts: no ssh_config
    (``-F /dev/null``), this key only, the recorded host keys only (no user or
    global known_hosts, strict checking), a connect timeout and keepalives.
    ``batch=False`` lets an interactive session ask for a key's passphrase."""
    return ["-p", str(port), "-i", key_file, "-F", "/dev/null",
            "-o", "IdentitiesOnly=yes", *(["-o", "BatchMode=yes"] if batch else []),
            "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + known_hosts,
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
            *KEEPALIVE_OPTIONS]


def destination(user: str, address: str) -> List[str]:
    """``-l user -- address``, the end of an ssh argv before the remote command:
    neither the user nor the address can be read as an option."""
    return ["-l", user, "--", address]


Buffers = Union[bytes, bytearray, memoryview, Sequence[Any]]
"""What upload sends: one buffer, or several sent back to back (no joined copy)."""


def parts_of(data: Buffers) -> List[memoryview]:
    parts: Sequence[Any] = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    return [memoryview(p).cast("B") for p in parts]


_CHUNK = 4 << 20
"""Reads are at most this large; a file over it grows by such chunks as they arrive."""


def read_sized(read_into: Callable[[memoryview], int], name: str, path: str,
               progress: Optional[Callable[[int], None]] = None,
               max_bytes: Optional[int] = None) -> bytearray:
    """Read the 8-byte size prefix, then exactly that many bytes into one new buffer.

    A size over ``max_bytes`` is refused (fatal SSHError) before anything is
    allocated, and a buffer over ``_CHUNK`` grows as bytes arrive, so a size
    the node claims but never sends costs nothing."""
    head = bytearray(8)
    _fill(read_into, memoryview(head), name, path, None)
    size = int.from_bytes(head, "big")
    if max_bytes is not None and size > max_bytes:
        raise SSHError(name, "%s: the node announced %d bytes; the cap (max_bytes) is %d"
                       % (path, size, max_bytes), fatal=True)
    if size <= _CHUNK:
        buf = bytearray(size)
        _fill(read_into, memoryview(buf), name, path, progress)
        return buf
    buf = bytearray()
    scratch = memoryview(bytearray(_CHUNK))
    while len(buf) < size:
        n = read_into(scratch[:min(_CHUNK, size - len(buf))])
        if not n:
            raise SSHError(name, "connection lost while reading %s (%d of %d bytes)"
                           % (path, len(buf), size))
        buf += scratch[:n]
        if progress is not None:
            progress(n)
    return buf


def _fill(read_into: Callable[[memoryview], int], view: memoryview, name: str, path: str,
          progress: Optional[Callable[[int], None]]) -> None:
    off = 0
    while off < len(view):
        n = read_into(view[off:off + (4 << 20)])
        if not n:
            raise SSHError(name, "connection lost while reading %s (%d of %d bytes)"
                           % (path, off, len(view)))
        off += n
        if progress is not None:
            progress(n)


def put_command(path: str) -> List[str]:
    """The node side of an upload (:mod:`cloudcompute.nodeside.put`)."""
    return nodeside.command("put", path)


def get_command(path: str, expected: Optional[str] = None, remove: bool = False) -> List[str]:
    """The node side of a download (:mod:`cloudcompute.nodeside.get`); with
    ``expected`` the node does not hash."""
    flags = ("n" if expected else "") + ("r" if remove else "")
    return nodeside.command("get", path, *([flags] if flags else []))


def check_download(node: str, path: str, data: Union[bytes, bytearray], node_err: bytes,
                   expected: Optional[str]) -> None:
    """``data`` must hash to ``expected`` if given, else to what the node computed
    (last 64 characters of its stderr); the local hash is computed once."""
    got = hashlib.sha256(data).hexdigest()
    want = expected or node_err.decode("utf-8", "replace").strip()[-64:]
    if got != want:
        raise IntegrityError(node, "download of %s" % path, want, got)


def available() -> bool:
    return os.environ.get("CLOUDCOMPUTE_BULK", "openssh") != "paramiko" \
        and shutil.which("ssh") is not None


class OpenSSHBulk:
    """Uploads and downloads over an OpenSSH ControlMaster to one node
    (a :class:`cloudcompute.ssh.transport.Transport`)."""

    def __init__(self, name: str, address: str, user: str, key_file: str,
                 host_keys: Sequence[str], port: int = 22):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="cc-ssh-")
        self.known = os.path.join(self.dir, "known_hosts")
        host = address if port == 22 else "[%s]:%d" % (address, port)
        fd = os.open(self.known, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines("%s %s\n" % (host, k) for k in host_keys)
        self.dest = destination(user, address)
        self.base = ["ssh", *openssh_options(key_file, self.known, port),
                     "-o", "ControlMaster=auto", "-o", "ControlPersist=120",
                     "-o", "ControlPath=" + os.path.join(self.dir, "cm"),
                     "-o", "Ciphers=" + CIPHERS]

    def _check(self, returncode: int, stderr: bytes) -> None:
        if returncode != 255:
            return
        err = stderr.decode("utf-8", "replace").strip()
        if "Host key verification failed" in err or "HOST IDENTIFICATION HAS CHANGED" in err:
            raise HostKeyMismatch(self.name, "the recorded host key", "another key "
                                  "(OpenSSH: %s)" % err.splitlines()[-1])
        raise SSHError(self.name, "ssh failed: %s" % err[-500:])

    def _rest(self, proc: "subprocess.Popen[bytes]", stdout: Any, stderr: Any,
              what: str) -> Tuple[bytes, bytes]:
        """What is left of ``proc``'s stdout and stderr (the node's hash, or an error),
        read together until both close, then its exit. A node that sends more than
        :data:`REPLY_LIMIT` on either is cut off: the ssh process is killed and a
        fatal SSHError raised, before more is held in memory."""
        bufs = {stdout.fileno(): bytearray(), stderr.fileno(): bytearray()}
        with selectors.DefaultSelector() as sel:
            for f in (stdout, stderr):
                sel.register(f.fileno(), selectors.EVENT_READ)
            while sel.get_map():
                for key, _ in sel.select():
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    bufs[key.fd] += chunk
                    if len(bufs[key.fd]) > REPLY_LIMIT:
                        proc.kill()
                        proc.wait()
                        stdout.close()
                        stderr.close()
                        raise SSHError(self.name, "%s: the node sent more than %d bytes "
                                       "where it should send a hash or an error"
                                       % (what, REPLY_LIMIT), fatal=True)
        proc.wait()
        return bytes(bufs[stdout.fileno()]), bytes(bufs[stderr.fileno()])

    def upload(self, path: str, data: Buffers,
               progress: Optional[Callable[[int], None]] = None) -> str:
        """Send ``data`` while hashing it here; the node hashes what it wrote.
        Returns the sha256 both sides agreed on."""
        cmd = self.base + self.dest + [" ".join(shlex.quote(a) for a in put_command(path))]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        # All three are PIPE above, so Popen has opened them.
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        h = hashlib.sha256()
        with contextlib.suppress(OSError):  # fewer, larger writes
            fcntl.fcntl(stdin.fileno(), F_SETPIPE_SZ, 1 << 20)
        try:
            for view in parts_of(data):
                for off in range(0, len(view), 4 << 20):
                    chunk = view[off:off + (4 << 20)]
                    h.update(chunk)
                    stdin.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            stdin.close()
        except BrokenPipeError:
            pass  # the node stopped reading: its exit status and stderr say why
        out, err = self._rest(proc, stdout, stderr, "upload of %s" % path)
        self._check(proc.returncode, err)
        want = h.hexdigest()
        got = out.decode().split()[0] if out.strip() else ""
        if proc.returncode != 0 or got != want:
            raise IntegrityError(self.name, "upload of %s" % path, want,
                                 got or err.decode("utf-8", "replace").strip())
        return want

    def download(self, path: str, sha256: Optional[str] = None,
                 progress: Optional[Callable[[int], None]] = None,
                 remove: bool = False, max_bytes: Optional[int] = None) -> bytearray:
        """The bytes of ``path`` on the node; a file over ``max_bytes`` is refused
        (fatal SSHError) before it is read."""
        cmd = self.base + self.dest + [" ".join(
            shlex.quote(a) for a in get_command(path, sha256, remove))]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0)
        # Both are PIPE, and unbuffered (bufsize=0): raw files, which have readinto.
        assert isinstance(proc.stdout, io.RawIOBase) and proc.stderr is not None
        stdout, stderr = proc.stdout, proc.stderr
        with contextlib.suppress(OSError):  # fewer, larger reads
            fcntl.fcntl(stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
        data: Optional[bytearray] = None
        try:
            # The node writes to stderr only at the end (its hash) or on error.
            data = read_sized(stdout.readinto, self.name, path, progress, max_bytes)
        except SSHError as exc:
            if exc.fatal:  # refused: stop the transfer rather than wait for it
                proc.kill()
                proc.communicate()
                raise
            # else the exit status and stderr below say why
        _, err = self._rest(proc, stdout, stderr, "download of %s" % path)
        self._check(proc.returncode, err)
        if proc.returncode != 0:
            raise SSHError(self.name, "cannot read %s: %s"
                           % (path, err.decode("utf-8", "replace").strip()), fatal=True)
        if data is None:  # exit 0, but not every byte came
            raise SSHError(self.name, "connection lost while reading %s" % path)
        check_download(self.name, path, data, err, sha256)
        return data

    def close(self) -> None:
        """Stop the ControlMaster (at most :data:`CLOSE_TIMEOUT` seconds) and remove
        the known_hosts file and control socket."""
        try:
            subprocess.run(self.base + ["-O", "exit"] + self.dest, capture_output=True,
                           timeout=CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            LOG.warning("%s: the OpenSSH ControlMaster did not stop within %ss; its socket "
                        "is removed with its directory", self.name, CLOSE_TIMEOUT)
        shutil.rmtree(self.dir, ignore_errors=True)
