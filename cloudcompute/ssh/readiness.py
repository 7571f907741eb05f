"""Is a node ready for work? A cheap banner probe, then a real login.

Step one connects over TCP and waits for the ``SSH-`` banner (sshd is up);
step two logs in with the cluster key, verifies the host key and runs
``true``. Refused logins and host key mismatches stop at once; connection
errors while the node boots are retried until the deadline.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Optional

from cloudcompute import retry
from cloudcompute.exceptions import SSHError, WaitTimeout
from cloudcompute.ssh.client import NodeConnection, is_transient

LOG = logging.getLogger(__name__)


def banner_probe(address: str, port: int = 22, timeout: float = 3.0) -> bool:
    """True if something answers ``SSH-`` on address:port."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            banner = b""
            while len(banner) < 4:  # the four bytes may come in more than one segment
                chunk = sock.recv(4 - len(banner))
                if not chunk:
                    return False
                banner += chunk
            return banner == b"SSH-"
    except OSError:
        return False


def wait_for_ssh(conn: NodeConnection, deadline: float, poll: float = 0.25,
                 stop: Optional[threading.Event] = None) -> float:
    """Block until ``conn`` logs in and runs ``true``; return seconds waited.
    Setting ``stop`` ends the wait early (WaitTimeout), e.g. on Ctrl-C."""
    t0 = time.monotonic()
    stop = stop or threading.Event()
    while not banner_probe(conn.address, conn.port,
                           timeout=min(1.0, max(0.1, deadline - time.monotonic()))):
        if time.monotonic() >= deadline or stop.is_set():
            raise WaitTimeout("SSH banner of %s (%s)%s" % (
                conn.name, conn.address, " (stopped)" if stop.is_set() else ""),
                deadline - t0, [conn.name])
        retry.SLEEP(poll)
    try:
        retry.ssh_connect(deadline, is_transient, stop)(lambda: conn.run(["true"]))()
    except SSHError:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise WaitTimeout("SSH login to %s (%s): %s" % (conn.name, conn.address, exc),
                              deadline - t0, [conn.name]) from exc
        raise
    return time.monotonic() - t0
