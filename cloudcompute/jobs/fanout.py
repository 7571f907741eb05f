"""Put one file on many nodes: the client sends it once, the nodes copy it on.

The client streams the file from disk in chunks (memory stays constant
whatever its size) to one node, hashing it as it goes; then the nodes copy
it among themselves over their private addresses, doubling the holders each
round (round k: every node that has the file sends it to one that has not),
so N nodes take ceil(log2 N) rounds. Every copy is written to a temporary
file and renamed only once the receiving node's own sha256 of it equals the
client's. A hop that fails is retried, then that node gets the file straight
from the client; errors name the node. A small file (at most
``DIRECT_MAX_EXTRA`` extra bytes) goes from the client to every node.

Each hop is ``ssh peer receive < file`` run on the sending node, with the
cluster's internal key and the members' recorded host keys
(:mod:`cloudcompute.ssh.intra`).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import hashlib
import io
import logging
import os
import subprocess
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from cloudcompute import nodeside, retry
from cloudcompute.exceptions import (CloudComputeError, FanOutError, HostKeyMismatch,
                                     IntegrityError, SSHError, StateError)
from cloudcompute.ssh import bulk, intra
from cloudcompute.ssh.client import is_transient, quote_command, send_all
from cloudcompute.ssh.intra import IntraSSH, named_errors

LOG = logging.getLogger(__name__)

CHUNK = 4 << 20
HOP_MIN_RATE = 4e6
"""Bytes/s below which a node-to-node copy counts as hung (plus a minute)."""
DIRECT_MAX_EXTRA = 8 << 20
"""The client sends a file to every node itself while that costs at most this
many extra bytes (size x (N - 1)): a hop's SSH handshake costs more than that."""
MISMATCH_EXIT = 3
"""The receiving program's exit status for a copy whose sha256 is not the one sent."""
SIGNALLED_EXIT = 4
"""... and for one cut short by SIGTERM or SIGHUP (its ssh session went away)."""

Progress = Optional[Callable[[int], None]]

# -- what runs where (pure, unit tested) ----------------------------------
def receive_command(path: str, sha256: Optional[str] = None) -> List[str]:
    """The node side of a copy to ``path`` (:mod:`cloudcompute.nodeside.receive`):
    framed from the client, or (with ``sha256``) plain stdin from another node,
    checked against ``sha256``; renamed into place only if the hashes agree."""
    return nodeside.command("receive", path, *([sha256] if sha256 else []))


def hop_command(sender: IntraSSH, peer: str, path: str, sha256: str) -> str:
    """The shell line run on ``sender.node`` that copies ``path`` to ``peer``."""
    remote = quote_command(receive_command(path, sha256))
    return "%s < %s" % (quote_command(sender.ssh_argv(peer) + [remote]), quote_command([path]))


def plan_round(holders: Sequence[str], missing: Sequence[str]) -> List[Tuple[str, str]]:
    """One round: the i-th holder sends to the i-th node still missing the file."""
    return list(zip(holders, missing, strict=False))


def plan_rounds(nodes: Sequence[str]) -> List[List[Tuple[str, str]]]:
    """Every round of a fan-out from ``nodes[0]`` when every copy succeeds."""
    holders, missing, rounds = list(nodes[:1]), list(nodes[1:]), []
    while missing:
        pairs = plan_round(holders, missing)
        rounds.append(pairs)
        holders += [dst for _, dst in pairs]
        missing = missing[len(pairs):]
    return rounds


# -- the client's side of a stream ----------------------------------------
class Source:
    """What ``put`` sends: a file read in chunks, or buffers already in memory."""

    def __init__(self, path: Optional[str] = None, buffers: Sequence[Any] = ()):
        self.path = path
        self.buffers = [memoryview(b).cast("B") for b in buffers]

    @classmethod
    def of(cls, data: Any) -> "Source":
        """A file path, or a NumPy array (sent as .npy: header, then its memory)."""
        import numpy as np
        if isinstance(data, (str, os.PathLike)):
            path = os.fspath(data)
            if not os.path.isfile(path):
                raise FileNotFoundError("put: no such file: %s" % path)
            return cls(path=path)
        if isinstance(data, np.ndarray):
            if data.dtype == object:
                raise TypeError("put cannot send an object array without pickle")
            arr = data if data.flags.c_contiguous else np.ascontiguousarray(data)
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                head, np.lib.format.header_data_from_array_1_0(arr))
            return cls(buffers=[head.getvalue(), arr.data])
        raise TypeError("put takes a file path or a NumPy array, not %s" % type(data).__name__)

    def size(self) -> int:
        if self.path is not None:
            return os.path.getsize(self.path)
        return sum(len(b) for b in self.buffers)

    def chunks(self, size: int) -> Iterator[memoryview]:
        """``size`` bytes in chunks; a file's are read into one reused buffer."""
        if self.path is None:
            for b in self.buffers:
                for off in range(0, len(b), CHUNK):
                    yield b[off:off + CHUNK]
            return
        buf = memoryview(bytearray(CHUNK))
        left = size
        with open(self.path, "rb") as f:
            while left:
                n = f.readinto(buf[:min(left, CHUNK)])
                if not n:
                    raise OSError("%s shrank while it was being sent" % self.path)
                left -= n
                yield buf[:n]


def _send_framed(write: Callable[[Any], Any], source: Source, progress: Progress) -> str:
    """Size, bytes, sha256: what ``nodeside.receive`` expects from the client."""
    size = source.size()
    h = hashlib.sha256()
    write(size.to_bytes(8, "big"))
    for chunk in source.chunks(size):
        h.update(chunk)
        write(chunk)
        if progress is not None:
            progress(len(chunk))
    write(h.hexdigest().encode())
    return h.hexdigest()


def ssh_failure(node: str, stderr: str) -> SSHError:
    """The error for an OpenSSH client that exited 255 on its way to ``node``."""
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    if "Host key verification failed" in stderr or "IDENTIFICATION HAS CHANGED" in stderr:
        return HostKeyMismatch(node, "the recorded host key", "another key (OpenSSH: %s)" % last)
    if "Permission denied" in stderr:
        return SSHError(node, "authentication refused: %s" % last, fatal=True)
    return SSHError(node, "ssh failed: %s" % stderr.strip()[-500:])


def _outcome(node: str, what: str, code: int, out: bytes, err: bytes, want: str) -> None:
    text = err.decode("utf-8", "replace")
    got = out.decode("ascii", "replace").strip()
    if code == 0 and got == want:
        return
    if code == MISMATCH_EXIT or code == 0:
        raise IntegrityError(node, what, want, got or "nothing")
    raise SSHError(node, "%s failed (exit %s): %s" % (what, code, text.strip()[-500:]),
                   fatal=code not in (-1, SIGNALLED_EXIT))


def stream_to_node(conn: Any, path: str, source: Source, progress: Progress = None) -> str:
    """Send ``source`` to ``path`` on one node (client memory stays constant);
    return the sha256 that the node verified before renaming its copy into place."""
    command = quote_command(receive_command(path))
    # The connection's own OpenSSH ControlMaster, shared with its uploads and
    # downloads (a fresh one costs a handshake per put); reset if the link drops.
    fast = conn._bulk() if hasattr(conn, "_bulk") else None
    if fast is not None:
        with conn._bulk_reset_on_loss(), named_errors(conn.name, "upload of %s" % path):
            return _stream_openssh(fast, conn.name, path, command, source, progress)
    want = ""
    with named_errors(conn.name, "upload of %s" % path):
        chan = conn.client.get_transport().open_session(timeout=conn.connect_timeout)
        try:
            chan.exec_command(command)
            with contextlib.suppress(EOFError, OSError):  # the exit status says why
                want = _send_framed(lambda b: send_all(chan, b), source, progress)
            chan.shutdown_write()
            out, err = chan.makefile("rb").read(), chan.makefile_stderr("rb").read()
            code = chan.recv_exit_status()
        finally:
            chan.close()
    _outcome(conn.name, "upload of %s" % path, code, out, err, want or "(not all sent)")
    return want


def _stream_openssh(ssh: bulk.OpenSSHBulk, node: str, path: str, command: str,
                    source: Source, progress: Progress) -> str:
    want = ""
    proc = subprocess.Popen(ssh.base + ssh.dest + [command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    assert stdin is not None and stdout is not None and stderr is not None  # all PIPE
    try:
        with contextlib.suppress(OSError):  # fewer, larger writes
            fcntl.fcntl(stdin.fileno(), bulk.F_SETPIPE_SZ, 1 << 20)
        with contextlib.suppress(BrokenPipeError):  # the node's exit status says why
            want = _send_framed(stdin.write, source, progress)
        with contextlib.suppress(BrokenPipeError):
            stdin.close()
        # The node prints only its hash (or an error), so these reads cannot block it.
        out, err = stdout.read(), stderr.read()
        proc.wait()
    except BaseException:
        proc.kill()  # the node sees the stream end early and drops its temp file
        proc.communicate()
        raise
    if proc.returncode == 255:
        raise ssh_failure(node, err.decode("utf-8", "replace"))
    _outcome(node, "upload of %s" % path, proc.returncode, out, err, want or "(not all sent)")
    return want


def transient(exc: BaseException) -> bool:
    """Worth another attempt: a damaged copy, or a connection that blipped."""
    return isinstance(exc, IntegrityError) or is_transient(exc)


def direct(conn: Any, path: str, source: Source, progress: Progress = None) -> str:
    """Client -> one node, retried under ``retry.transfer``."""
    return retry.transfer(is_transient=transient)(stream_to_node)(conn, path, source, progress)


def copy_between(cluster: Any, sender: IntraSSH, dst: str, path: str, sha256: str,
                 size: int) -> None:
    """One hop: ``sender.node`` sends ``path`` to ``dst``, which checks ``sha256``."""
    what = "copy of %s from %s" % (path, sender.node)
    with named_errors(sender.node, what):
        r = cluster.connection(sender.node).run(hop_command(sender, dst, path, sha256),
                                                warn=True, timeout=60 + size / HOP_MIN_RATE)
    if r.exit_code == 255:
        raise ssh_failure(dst, r.stderr)
    _outcome(dst, what, r.exit_code, r.stdout.encode(), r.stderr.encode(), sha256)


def _hop_or_direct(cluster: Any, sender: IntraSSH, dst: str, path: str, source: Source,
                   sha256: str, size: int, progress: Progress) -> None:
    try:
        retry.transfer(is_transient=transient)(copy_between)(
            cluster, sender, dst, path, sha256, size)
        return
    except CloudComputeError as exc:
        LOG.warning("copy of %s from %s to %s failed (%s); sending it from the client",
                    path, sender.node, dst, exc)
        intra.forget(cluster)
    if direct(cluster.connection(dst), path, source, progress) != sha256:
        raise IntegrityError(dst, "upload of %s" % path, sha256, "another file's hash")


def fans_out(size: int, nodes: int) -> bool:
    """Whether a put of ``size`` bytes to ``nodes`` nodes goes through the nodes."""
    return nodes > 1 and size * (nodes - 1) > DIRECT_MAX_EXTRA


def client_bytes(size: int, nodes: int) -> int:
    """The bytes a put sends from the client when every hop succeeds."""
    return size if nodes == 1 or fans_out(size, nodes) else size * nodes


def put(cluster: Any, data: Any, remote_path: str, nodes: Optional[Sequence[str]] = None,
        progress: Progress = None) -> None:
    """``cluster.put``: the client sends once, the nodes copy it on (see the module)."""
    source = Source.of(data)
    names = list(dict.fromkeys(nodes or cluster.node_names()))
    size = source.size()
    if len(names) == 1:
        direct(cluster.connection(names[0]), remote_path, source, progress)
        return
    failed: Dict[str, BaseException] = {}
    ready: Dict[str, IntraSSH] = {}
    unset: Dict[str, BaseException] = {}
    if fans_out(size, len(names)):
        try:
            ready, unset = intra.prepared(cluster, names)
        except StateError as exc:
            LOG.info("%s; sending %s to each node from the client", exc, remote_path)
    for n, why in unset.items():
        LOG.warning("node-to-node SSH not set up on %s (%s); it gets %s from the client",
                    n, why, remote_path)
    holders: List[str] = []
    sha = ""
    t0 = time.monotonic()
    for seed in [n for n in names if n in ready] or names[:1]:
        try:
            sha = direct(cluster.connection(seed), remote_path, source, progress)
            holders.append(seed)
            LOG.debug("client -> %s: %.2fs", seed, time.monotonic() - t0)
            break
        except CloudComputeError as exc:
            failed[seed] = exc
    missing = [n for n in names if n in ready and n not in holders and n not in failed]
    while holders and missing:
        t0 = time.monotonic()
        pairs = plan_round([h for h in holders if h in ready], missing)
        with cf.ThreadPoolExecutor(max_workers=len(pairs)) as pool:
            futures = {dst: pool.submit(_hop_or_direct, cluster, ready[src], dst, remote_path,
                                        source, sha, size, progress) for src, dst in pairs}
            for dst, f in futures.items():
                try:
                    f.result()
                    holders.append(dst)
                except CloudComputeError as exc:
                    failed[dst] = exc
        missing = missing[len(pairs):]
        LOG.debug("round of %d node-to-node copies: %.2fs", len(pairs), time.monotonic() - t0)
    for n in names:  # nodes without node-to-node SSH, or all of them without a seed
        if n not in holders and n not in failed:
            try:
                direct(cluster.connection(n), remote_path, source, progress)
                holders.append(n)
            except CloudComputeError as exc:
                failed[n] = exc
    if failed:
        raise FanOutError(remote_path, failed, holders) from next(iter(failed.values()))
