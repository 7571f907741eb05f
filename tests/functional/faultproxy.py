"""A fault-injecting HTTP proxy for the local cloud's API endpoints (loopback only).

One listener per upstream endpoint; URLs in response bodies and headers
(the Keystone catalog, version documents, Location) are rewritten so that
every later call also passes through the proxy. Each ``Rule`` matches
requests by method, upstream port and path, decides *when* to fire (the Nth
match, every Kth match, or at random from a seeded generator, at most
``times`` times) and *what* to do: answer with a status (optionally with
Retry-After), reset the connection, delay, or forward first and then lose
the answer (``forward=True``), as when a create succeeds but its response
never arrives; ``delay`` with ``forward=True`` delays the answer instead of
the request.
"""
from __future__ import annotations

import dataclasses
import http.client
import http.server
import json
import random
import re
import socket
import struct
import threading
import time
from typing import Dict, List, Optional, Tuple

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "content-length"}
REASONS = {409: "Conflict", 413: "Request Entity Too Large", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclasses.dataclass
class Rule:
    """One fault. ``action``: status | reset | delay."""

    action: str = "status"
    method: str = "*"
    path: str = ""
    port: Optional[int] = None
    status: int = 503
    retry_after: Optional[float] = None
    delay: float = 0.0
    forward: bool = False
    nth: Optional[int] = None
    every: Optional[int] = None
    probability: Optional[float] = None
    times: Optional[int] = None
    matched: int = 0
    fired: int = 0

    def matches(self, method: str, port: int, path: str) -> bool:
        return ((self.method == "*" or self.method == method)
                and (self.port is None or self.port == port)
                and re.search(self.path, path) is not None)

    def should_fire(self, rng: random.Random) -> bool:
        self.matched += 1
        if self.times is not None and self.fired >= self.times:
            return False
        if self.nth is not None:
            fire = self.matched == self.nth
        elif self.every is not None:
            fire = self.matched % self.every == 0
        elif self.probability is not None:
            fire = rng.random() < self.probability
        else:
            fire = True
        if fire:
            self.fired += 1
        return fire


class FaultProxy:
    """Start with ``start(upstream_ports)``; ``url(port)`` gives the proxied base."""

    def __init__(self, host: str = "127.0.0.1", seed: int = 0,
                 upstream_host: Optional[str] = None):
        self.host = host
        self.upstream_host = upstream_host or host
        self.rng = random.Random(seed)
        self.rules: List[Rule] = []
        self.log: List[Tuple[str, int, str, str]] = []
        self.ports: Dict[int, int] = {}  # upstream -> listener
        self._servers: List[http.server.ThreadingHTTPServer] = []
        self._lock = threading.Lock()

    # -- control -------------------------------------------------------
    def add(self, **kw) -> Rule:
        rule = Rule(**kw)
        with self._lock:
            self.rules.append(rule)
        return rule

    def reset(self, seed: Optional[int] = None) -> None:
        with self._lock:
            self.rules = []
            self.log = []
            if seed is not None:
                self.rng = random.Random(seed)

    def faults(self) -> List[Tuple[str, int, str, str]]:
        return [e for e in self.log if e[3] != "ok"]

    def start(self, upstream_ports: List[int], same_ports: bool = False) -> "FaultProxy":
        """Listen for each upstream port: on the same port (``same_ports``, for a
        proxy in a node's own network namespace) or on a free one."""
        for up in upstream_ports:
            srv = http.server.ThreadingHTTPServer((self.host, up if same_ports else 0),
                                                  self._handler(up))
            srv.daemon_threads = True
            self.ports[up] = srv.server_address[1]
            self._servers.append(srv)
            threading.Thread(target=srv.serve_forever, daemon=True,
                             name="faultproxy-%d" % up).start()
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers = []

    def rewrite(self, data: bytes) -> bytes:
        def sub(m: "re.Match[bytes]") -> bytes:
            port = int(m.group(2))
            return b"%s:%d" % (m.group(1), self.ports.get(port, port))
        return re.sub(rb"(https?://(?:127\.0\.0\.1|localhost)):(\d+)", sub, data)

    def _decide(self, method: str, port: int, path: str) -> Optional[Rule]:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, port, path) and rule.should_fire(self.rng):
                    return rule
        return None

    # -- the handler ---------------------------------------------------
    def _handler(self, upstream: int):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # the proxy keeps its own log
                return

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _status(self, rule: Rule) -> None:
                body = json.dumps({"error": {
                    "code": rule.status, "title": REASONS.get(rule.status, "Error"),
                    "message": "injected fault (%d)" % rule.status}}).encode()
                self.send_response(rule.status, REASONS.get(rule.status))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if rule.retry_after is not None:
                    self.send_header("Retry-After", "%g" % rule.retry_after)
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, body: bytes):
                up = http.client.HTTPConnection(proxy.upstream_host, upstream, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                headers["Host"] = "%s:%d" % (proxy.upstream_host, upstream)
                up.request(self.command, self.path, body=body or None, headers=headers)
                resp = up.getresponse()
                data = resp.read()
                up.close()
                return resp, data

            def _handle(self) -> None:
                body = self._body()
                rule = proxy._decide(self.command, upstream, self.path)
                what = "ok" if rule is None else (
                    "%s%s" % (rule.action if rule.action != "status" else rule.status,
                              "+forwarded" if rule.forward else ""))
                with proxy._lock:
                    proxy.log.append((self.command, upstream, self.path, what))
                if rule is not None and rule.action == "delay":
                    if not rule.forward:  # slow request; else a slow answer, below
                        time.sleep(rule.delay)
                        rule = None
                elif rule is not None and rule.forward:
                    self._forward(body)
                if rule is not None and rule.action != "delay":
                    return self._reset() if rule.action == "reset" else self._status(rule)
                resp, data = self._forward(body)
                if rule is not None:
                    time.sleep(rule.delay)
                if self.command != "HEAD":
                    data = proxy.rewrite(data)
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP:
                        self.send_header(k, proxy.rewrite(v.encode()).decode())
                if self.command == "HEAD":
                    self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        return Handler
