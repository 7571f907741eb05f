"""The client end of one node's worker channel.

A :class:`RemoteWorker` ships the node package (:mod:`.worker` and the
modules it imports, once per content hash), starts it over one SSH channel
and keeps many requests in flight on it: each request gets a Future, and
one reader thread per channel resolves them as answers arrive, in any order
(:mod:`.protocol`). The node sends a heartbeat every
a fifth of ``silence`` seconds; a channel silent for ``silence`` seconds,
or one that breaks, fails every request in flight with :class:`NodeLost`.
Everything the node sends is checked against size caps before it is held.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import os
import socket
import threading
import traceback
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import paramiko

from cloudcompute.exceptions import (EnvironmentMismatch, IntegrityError, NodeDataRefused,
                                     NodeLost, SSHError)
from cloudcompute.jobs import protocol as P
from cloudcompute.jobs import wire
from cloudcompute.ssh.client import NodeConnection, quote_command, send_all

LOG = logging.getLogger(__name__)

SILENCE_LIMIT = 10.0
"""Default seconds without a byte from a node before it counts as lost
(``Timeouts.node_silence``); the node sends a heartbeat after a fifth of that
without other output."""
START_LIMIT = 60.0
"""Default seconds a worker may take to say hello (``Timeouts.worker_start``)."""

NODE_PACKAGE = "ccnode"
_HERE = os.path.dirname(os.path.abspath(__file__))
_SHIPPED = ("protocol.py", "wire.py", "untrusted.py", "taskproc.py", "worker.py",
            "supervisor.py", "jobd.py")
SOURCES: Dict[str, bytes] = {"__init__.py": b""}
for _name in _SHIPPED:
    with open(os.path.join(_HERE, _name), "rb") as _f:
        SOURCES[_name] = _f.read()
PACKAGE_SHA = hashlib.sha256(b"".join(
    name.encode() + b"\0" + hashlib.sha256(src).digest()
    for name, src in sorted(SOURCES.items()))).hexdigest()
REMOTE_DIR = P.NODE_DIR
LAUNCH = ("import sys; sys.path.insert(0, sys.argv[1]); "
          "from ccnode.worker import main; sys.exit(main(sys.argv[2:]))")
LAUNCH_JOBD = ("import sys; sys.path.insert(0, sys.argv[1]); "
               "from ccnode.jobd import main; sys.exit(main(sys.argv[2:]))")

Frame = Tuple[Dict[str, Any], List[bytearray]]


class _ChannelWriter:
    """File-like writes onto a channel without copying (send slices its input)."""

    def __init__(self, chan: paramiko.Channel):
        self.chan = chan

    def write(self, data: bytes) -> None:
        send_all(self.chan, data)

    def flush(self) -> None:
        pass


class _ChannelReader:
    """File-like reads from a channel (paramiko's makefile is slow for large reads)."""

    def __init__(self, chan: paramiko.Channel):
        self.chan = chan

    def read(self, n: int) -> bytes:
        return self.chan.recv(min(n, 4 << 20))


def _channel_error(node: str, exc: BaseException, silence: float) -> Exception:
    """What a broken read or write on the channel means for the caller."""
    if isinstance(exc, socket.timeout):
        return NodeLost(node, "no answer for %gs" % silence)
    if isinstance(exc, wire.WireError):
        if "sha256" in str(exc):
            return IntegrityError(node, "frame from the worker", "sha256 in header", str(exc))
        return NodeDataRefused(node, str(exc))
    if isinstance(exc, MemoryError):
        return NodeDataRefused(node, "out of memory while reading a frame")
    return SSHError(node, "worker channel failed: %s" % (exc or type(exc).__name__))


class RemoteWorker:
    """The warm worker on one node, many requests in flight on one SSH channel."""

    def __init__(self, conn: NodeConnection, python: str = "python3",
                 slots: Optional[int] = None, max_bytes: Optional[int] = None,
                 log_handler: Optional[Callable[[str, str, str], None]] = None,
                 silence: Optional[float] = None, start_timeout: Optional[float] = None):
        self.conn = conn
        self.silence = silence or SILENCE_LIMIT
        self.start_timeout = max(start_timeout or START_LIMIT, self.silence)
        self.python = python
        self.want_slots = slots
        self.max_bytes = max_bytes or wire.default_max_result_bytes()
        self.log_handler = log_handler
        self.hello: Dict[str, Any] = {}
        self.modules: Set[str] = set()  # hashes of module sources this worker holds
        self.projects: Set[str] = set()  # project digests this worker's node holds
        self.project_lock = threading.Lock()
        self.chan: Optional[paramiko.Channel] = None
        self._pending: Dict[str, cf.Future] = {}
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._broken: Optional[Exception] = None

    @property
    def node(self) -> str:
        return self.conn.name

    @property
    def slots(self) -> int:
        return int(self.hello.get("slots", 1))

    @property
    def alive(self) -> bool:
        return self.chan is not None and self._broken is None

    def ensure_shipped(self) -> str:
        """Upload the node package once per content hash; return its directory."""
        path = "%s/%s" % (REMOTE_DIR, PACKAGE_SHA[:16])
        marker = "%s/%s/.complete" % (path, NODE_PACKAGE)
        if self.conn.run(["test", "-f", marker], warn=True).ok:
            return path
        tmp = "%s.%s.tmp" % (path, uuid.uuid4().hex[:8])
        self.conn.run(["mkdir", "-p", "%s/%s" % (tmp, NODE_PACKAGE)])
        for name, source in SOURCES.items():
            with self.conn.sftp.open("%s/%s/%s" % (tmp, NODE_PACKAGE, name), "wb") as f:
                f.write(source)
        with self.conn.sftp.open("%s/%s/.complete" % (tmp, NODE_PACKAGE), "wb") as f:
            f.write(PACKAGE_SHA.encode())
        # Another client may have shipped the same package meanwhile: keep theirs.
        self.conn.run(["sh", "-c", 'mv -T "$1" "$2" 2>/dev/null || rm -rf "$1"', "sh",
                       tmp, path])
        return path

    def start(self) -> Dict[str, Any]:
        """Start the worker on the node and read its hello."""
        path = self.ensure_shipped()
        argv = [self.python, "-u", "-c", LAUNCH, path, "--beat", "%g" % (self.silence / 5)]
        if self.want_slots:
            argv += ["--slots", str(self.want_slots)]
        chan = self.conn.client.get_transport().open_session(timeout=30)
        chan.settimeout(self.start_timeout)  # the hello: Python and its imports
        chan.exec_command(quote_command(argv))
        self._in, self._out = _ChannelReader(chan), _ChannelWriter(chan)
        try:
            header, _ = self._read(self.start_timeout)
            chan.settimeout(self.silence)  # from here the worker beats
        except (SSHError, NodeLost) as exc:
            chan.close()
            if not self.conn.client.get_transport().is_active():
                raise
            # The node answers, but its Python cannot run the worker.
            raise EnvironmentMismatch(self.node, ["the worker did not start with %s: %s %s"
                                                  % (self.python, exc, self._stderr(chan))]
                                      ) from exc
        if header.get("op") != P.HELLO:
            chan.close()
            raise SSHError(self.node, "worker did not start: %r" % header)
        self.hello, self.chan, self._broken = header, chan, None
        self.modules, self.projects = set(), set()
        threading.Thread(target=self._read_loop, args=(chan,), daemon=True,
                         name="cc-reader-%s" % self.node).start()
        LOG.debug("worker on %s: %d slots, %s", self.node, self.slots, header["versions"])
        return header

    def _stderr(self, chan: paramiko.Channel) -> str:
        err = b""
        while chan.recv_stderr_ready() and len(err) < 1 << 16:
            err += chan.recv_stderr(1 << 16)
        return err.decode("utf-8", "replace")[-2000:]

    def _read(self, bound: Optional[float] = None) -> Frame:
        """The next frame; ``bound`` is the channel's timeout, named in its error."""
        try:
            return wire.read_frame(self._in, max_blob=self.max_bytes,
                                   max_header=wire.MAX_NODE_HEADER)
        except EOFError as exc:
            # The failed read's frames would keep what it had buffered alive for
            # as long as the error is kept (a node may have sent much of a claim).
            traceback.clear_frames(exc.__traceback__)
            raise SSHError(self.node, "worker channel closed: %s" % exc) from exc
        except (OSError, paramiko.SSHException, wire.WireError, MemoryError) as exc:
            traceback.clear_frames(exc.__traceback__)
            raise _channel_error(self.node, exc, bound or self.silence) from exc

    def _read_loop(self, chan: paramiko.Channel) -> None:
        while True:
            try:
                header, blobs = self._read()
            except Exception as exc:  # noqa: BLE001 - every failure ends the channel
                self._fail(chan, exc)
                return
            op = header.get("op")
            if op == P.BEAT:
                continue
            if op == P.LOG:
                self._log(header)
                continue
            with self._state_lock:
                future = self._pending.pop(str(header.get("id")), None)
            if future is not None:
                future.set_result((header, blobs))
            elif op == P.WIRE_ERROR:
                self._fail(chan, SSHError(self.node, "worker refused a frame: %s"
                                          % header.get("message")))
                return
            else:
                LOG.debug("%s: answer to a request nobody waits for: %s", self.node, op)

    def _log(self, header: Dict[str, Any]) -> None:
        if self.log_handler:
            self.log_handler(self.node, header.get("id", ""), header.get("text", ""))
            return
        for line in str(header.get("text", "")).rstrip("\n").splitlines():
            LOG.info("[%s %s] %s", self.node, header.get("id"), line)

    def _fail(self, chan: paramiko.Channel, exc: Exception) -> None:
        """The channel is unusable: fail everything in flight on it."""
        with self._state_lock:
            if self.chan is chan:
                self._broken = exc
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)
        try:
            chan.close()
        except (OSError, EOFError, paramiko.SSHException) as close_exc:
            LOG.debug("%s: closing a broken channel: %s", self.node, close_exc)

    def request(self, header: Dict[str, Any], blobs: Sequence[Any] = (),
                answered: bool = True) -> cf.Future:
        """Send a request; its answer (header, blobs) arrives in the Future."""
        future: cf.Future = cf.Future()
        with self._send_lock:
            chan = self.chan
            with self._state_lock:
                if chan is None or self._broken is not None:
                    raise self._broken or SSHError(self.node, "worker is not running")
                if answered:
                    self._pending[str(header["id"])] = future
            try:
                wire.write_frame(self._out, header, blobs)
            except (OSError, paramiko.SSHException, EOFError) as exc:
                error = _channel_error(self.node, exc, self.silence)
                self._fail(chan, error)
                raise error from exc
        return future

    def cancel(self, task_id: str) -> None:
        """Ask the node to end a task (queued or running); best effort."""
        if self.alive:
            try:
                self.request({"op": P.CANCEL, "id": task_id}, answered=False)
            except (SSHError, NodeLost) as exc:
                LOG.debug("cancel of %s on %s not sent: %s", task_id, self.node, exc)

    def abort(self, why: str) -> None:
        """Fail every request in flight now and close the channel (no waiting)."""
        if self.chan is not None:
            self._fail(self.chan, SSHError(self.node, why))

    def close(self) -> None:
        chan, self.chan = self.chan, None
        if chan is None:
            return
        if self._broken is None:
            try:
                with self._send_lock:
                    wire.write_frame(self._out, {"op": P.EXIT})
            except (OSError, paramiko.SSHException, EOFError):
                LOG.debug("%s: exit not delivered; closing the channel", self.node)
        self._fail(chan, SSHError(self.node, "worker closed"))
