"""The cloud's own figures: one server's create -> ACTIVE -> sshd -> gone.

Measured with openstacksdk directly (no cloudcompute code in the path), one
server at a time after a warm-up server, so the figures are the cloud's and
comparable with any other cloud. ACTIVE is polled every ``ACTIVE_POLL``
seconds; sshd counts as ready when its port sends the SSH identification
banner (polled every 50 ms).
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import time
import uuid
from typing import Any, Dict, List, Optional

import openstack

from benchmarks.provisioning import ids_of

# A poll costs the cloud work (Nova asks Neutron for the server's security
# groups), so polling much faster than this slows the build it measures.
# cloudcompute itself polls every 0.5 s.
ACTIVE_POLL = 0.25
SETTLE = 2.0
HERE = os.path.dirname(os.path.abspath(__file__))
AIO = os.path.join(os.path.dirname(HERE), "devstack", "aio", "cloud")


def _until(what: str, check: Any, timeout: float, interval: float) -> float:
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("%s: not reached within %ss" % (what, timeout))
        time.sleep(interval)


def _banner(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1) as sock:
            sock.settimeout(1)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _fixed_ip(server: Any) -> str:
    for addrs in (server.addresses or {}).values():
        for a in addrs:
            if a.get("OS-EXT-IPS:type", "fixed") == "fixed" and a.get("version") == 4:
                return a["addr"]
    raise RuntimeError("server %s has no fixed IPv4 address" % server.id)


def one_server(conn: Any, ids: Dict[str, str], name: str) -> Dict[str, float]:
    """Create, wait for ACTIVE, wait for sshd, delete, wait until gone."""
    t0 = time.monotonic()
    server = conn.compute.create_server(name=name, image_id=ids["image"],
                                        flavor_id=ids["flavor"],
                                        networks=[{"uuid": ids["network"]}],
                                        security_groups=[{"name": ids["security_group"]}])
    state: Dict[str, Any] = {}

    def active() -> bool:
        state["s"] = conn.compute.get_server(server.id)
        if state["s"].status == "ERROR":
            raise RuntimeError("server %s went to ERROR" % server.id)
        return state["s"].status == "ACTIVE"
    try:
        _until("ACTIVE", active, 120, ACTIVE_POLL)
        active_s = time.monotonic() - t0
        address = _fixed_ip(state["s"])
        ssh_s = _until("sshd banner", lambda: _banner(address), 120, 0.05)
    finally:
        t1 = time.monotonic()
        conn.compute.delete_server(server.id, ignore_missing=True)
        _until("server gone",
               lambda: conn.compute.find_server(server.id, ignore_missing=True) is None,
               120, 0.1)
    return {"active_s": active_s, "ssh_after_active_s": ssh_s,
            "delete_s": time.monotonic() - t1}


def rss_mib() -> Optional[float]:
    """Total RSS of the all-in-one cloud from ``devstack/aio/cloud status``."""
    if not os.path.exists(AIO):
        return None
    out = subprocess.run([AIO, "status"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("total RSS"):
            return float(line.split()[-2])
    return None


def _ssh_group(conn: Any, name: str, network_id: str) -> Any:
    """A security group admitting SSH from this host only, as a user makes one.

    The address is the one this host sends from towards the network's
    subnet, the source its servers see."""
    subnet = next(s for s in conn.network.subnets(network_id=network_id) if s.ip_version == 4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((subnet.gateway_ip, 22))  # picks the route, sends nothing
        source = probe.getsockname()[0]
    sg = conn.network.create_security_group(name=name)
    conn.network.create_security_group_rule(
        security_group_id=sg.id, direction="ingress", ethertype="IPv4", protocol="tcp",
        port_range_min=22, port_range_max=22, remote_ip_prefix=source + "/32")
    return sg


def measure(cloud: str, defaults: Dict[str, str], reps: int = 7) -> Dict[str, Any]:
    """Median and range of ``reps`` warm single-server cycles, plus RSS."""
    conn = openstack.connect(cloud=cloud)
    ids = dict(ids_of(conn, defaults))
    tag = uuid.uuid4().hex[:6]
    sg = _ssh_group(conn, "bench-cloud-%s" % tag, ids["network"])
    ids["security_group"] = sg.name
    runs: List[Dict[str, float]] = []
    try:
        one_server(conn, ids, "bench-cloud-%s-warmup" % tag)
        for i in range(reps):
            # Nova and Neutron finish a delete (port, allocations, events) after
            # the server is gone from the API; let that settle between cycles.
            time.sleep(SETTLE)
            runs.append(one_server(conn, ids, "bench-cloud-%s-%d" % (tag, i)))
    finally:
        conn.network.delete_security_group(sg.id, ignore_missing=True)
    out: Dict[str, Any] = {"reps": reps, "runs": runs, "rss_mib": rss_mib()}
    for key in ("active_s", "ssh_after_active_s", "delete_s"):
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values),
                    "max": max(values)}
    return out
