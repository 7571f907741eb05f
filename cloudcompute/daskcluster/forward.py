"""Local TCP ports that lead to a node's private address through SSH.

A :class:`Forwarder` listens on 127.0.0.1 (an ephemeral port) and carries
each connection it accepts over a channel that ``open_channel`` provides,
normally a paramiko ``direct-tcpip`` channel of the cluster's verified SSH
connection: the far end is reached from the node, so nothing but SSH has to
be open to this machine. One thread accepts; each connection has a thread
that waits on both ends with a selector (paramiko channels have a
``fileno``) and copies what arrives, passing on a half-close either way.
``close()`` wakes every thread through one shared pipe.
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading
from typing import Any, Callable, Optional, Set, Tuple

LOG = logging.getLogger(__name__)
CHUNK = 1 << 16

OpenChannel = Callable[[Tuple[str, int]], Any]
"""Given the local peer's (host, port), a connected channel-like object:
``recv``, ``sendall``, ``shutdown(SHUT_WR)``, ``close`` and ``fileno``."""


def ssh_opener(transport_of: Callable[[], Any], host: str, port: int,
               timeout: float = 10.0) -> OpenChannel:
    """Channels to ``host:port`` as seen from the node, through ``transport_of()``
    (called for each connection, so a reconnected transport is picked up)."""
    def open_channel(origin: Tuple[str, int]) -> Any:
        return transport_of().open_channel("direct-tcpip", (host, port), origin,
                                           timeout=timeout)
    return open_channel


class Forwarder:
    """127.0.0.1:<ephemeral port> -> whatever ``open_channel`` connects to."""

    def __init__(self, open_channel: OpenChannel, name: str = "forward",
                 bind_host: str = "127.0.0.1"):
        self.name = name
        self._open = open_channel
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((bind_host, 0))
        self._listener.listen(64)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop_r, self._stop_w = socket.socketpair()
        self._lock = threading.Lock()
        self._pumps: Set[threading.Thread] = set()
        self._closed = False
        self.connections = 0
        self.last_error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="cc-%s-accept" % name)
        self._thread.start()

    def __repr__(self) -> str:
        return "Forwarder(%s %s:%d)" % (self.name, self.host, self.port)

    @property
    def address(self) -> str:
        return "%s:%d" % (self.host, self.port)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._stop_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._stop_r:
                        return
                    try:
                        sock, origin = self._listener.accept()
                    except OSError:
                        continue
                    t = threading.Thread(target=self._serve, args=(sock, origin),
                                         daemon=True, name="cc-%s-pump" % self.name)
                    with self._lock:
                        if self._closed:
                            sock.close()
                            return
                        self._pumps.add(t)
                    t.start()

    def _serve(self, sock: socket.socket, origin: Tuple[str, int]) -> None:
        chan = None
        try:
            try:
                chan = self._open(origin)
            except Exception as exc:  # any failure to reach the far end: refuse this one
                if self.last_error is None or str(exc) != str(self.last_error):
                    LOG.warning("%s: cannot open a channel for %s:%d: %s", self.name,
                                origin[0], origin[1], exc)
                self.last_error = exc
                return
            self.last_error = None
            self.connections += 1
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pump(sock, chan)
        finally:
            for end in (sock, chan):
                if end is not None:
                    try:
                        end.close()
                    except Exception:  # closing a dead channel must not kill the thread
                        pass
            with self._lock:
                self._pumps.discard(threading.current_thread())

    def _pump(self, sock: socket.socket, chan: Any) -> None:
        """Copy both ways until both directions have ended (or close())."""
        peer = {sock: chan, chan: sock}
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            sel.register(chan, selectors.EVENT_READ)
            sel.register(self._stop_r, selectors.EVENT_READ)
            open_ends = 2
            while open_ends:
                for key, _ in sel.select():
                    if key.fileobj is self._stop_r:
                        return
                    src = sock if key.fileobj is sock else chan
                    try:
                        data = src.recv(CHUNK)
                    except OSError:
                        return
                    if data:
                        try:
                            peer[src].sendall(data)
                        except (OSError, EOFError):
                            return
                        continue
                    # EOF from one side: pass the half-close on, keep the other way open
                    sel.unregister(src)
                    open_ends -= 1
                    try:
                        peer[src].shutdown(socket.SHUT_WR)
                    except (OSError, EOFError):
                        return

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every forwarded connection, wait for the threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pumps = list(self._pumps)
        try:
            self._stop_w.send(b"x")  # never read: every selector sees it readable
        except OSError:
            pass
        self._thread.join(timeout)
        for t in pumps:
            t.join(timeout)
        self._listener.close()
        self._stop_r.close()
        self._stop_w.close()

    def __enter__(self) -> "Forwarder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
