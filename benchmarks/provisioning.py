"""Provisioning and teardown: cloudcompute against raw API calls and openstacksdk.

Every variant counts its HTTP requests through the keystoneauth session of
its own connection (not by estimate).
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
import time
import uuid
from typing import Any, Dict, List

import openstack

from cloudcompute import Cluster, ClusterSpec


class RequestCounter:
    """Counts the HTTP requests a Connection sends (keystoneauth Session.request)."""

    def __init__(self, conn: Any):
        self.count = 0
        self._lock = threading.Lock()
        session = conn.session
        original = session.request

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.count += 1
            return original(*args, **kwargs)
        session.request = counted

    def take(self) -> int:
        with self._lock:
            n, self.count = self.count, 0
        return n


def _fresh(cloud: str):
    conn = openstack.connect(cloud=cloud)
    conn.authorize()
    return conn, RequestCounter(conn)


def _names(prefix: str, n: int) -> List[str]:
    tag = uuid.uuid4().hex[:6]
    return ["bench-%s-%s-%d" % (prefix, tag, i) for i in range(n)]


def ids_of(conn: Any, defaults: Dict[str, str]) -> Dict[str, str]:
    """Image, flavor and network ids of the cloud's defaults (missing: an error)."""
    return {"image": conn.image.find_image(defaults["image"], ignore_missing=False).id,
            "flavor": conn.compute.find_flavor(defaults["flavor"], ignore_missing=False).id,
            "network": conn.network.find_network(defaults["network"],
                                                 ignore_missing=False).id}


def _wait_gone(conn: Any, ids: List[str], timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    ids = set(ids)
    while ids:
        present = {s.id for s in conn.compute.servers()}
        ids &= present
        if not ids:
            return
        if time.monotonic() > end:
            raise RuntimeError("servers not deleted in %ss: %s" % (timeout, ids))
        time.sleep(0.2)


def raw_parallel(cloud: str, n: int, defaults: Dict[str, str]) -> Dict[str, Any]:
    """The cloud's own limit: N creates at once, one list per poll, then N deletes."""
    conn, counter = _fresh(cloud)
    ids = ids_of(conn, defaults)
    counter.take()
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(max_workers=min(n, 8)) as pool:
        servers = list(pool.map(lambda name: conn.compute.create_server(
            name=name, image_id=ids["image"], flavor_id=ids["flavor"],
            networks=[{"uuid": ids["network"]}]), _names("raw", n)))
    want = {s.id for s in servers}
    while True:
        status = {s.id: s.status for s in conn.compute.servers() if s.id in want}
        if any(v == "ERROR" for v in status.values()):
            raise RuntimeError("server went to ERROR in the raw baseline")
        if all(v == "ACTIVE" for v in status.values()) and len(status) == n:
            break
        time.sleep(0.2)
    active = time.monotonic() - t0
    create_requests = counter.take()
    t1 = time.monotonic()
    with cf.ThreadPoolExecutor(max_workers=min(n, 8)) as pool:
        list(pool.map(conn.compute.delete_server, want))
    _wait_gone(conn, list(want))
    return {"up_s": active, "down_s": time.monotonic() - t1, "requests": create_requests,
            "down_requests": counter.take()}


def _measured(cloud: str, up: Any, down: Any) -> Dict[str, Any]:
    """Time and count ``up(conn) -> servers`` and ``down(conn, servers)``."""
    conn, counter = _fresh(cloud)
    counter.take()
    t0 = time.monotonic()
    servers = up(conn)
    up_s = time.monotonic() - t0
    requests = counter.take()
    t1 = time.monotonic()
    down(conn, servers)
    return {"up_s": up_s, "down_s": time.monotonic() - t1, "requests": requests,
            "down_requests": counter.take()}


def sdk_wait_loop(cloud: str, n: int, defaults: Dict[str, str]) -> Dict[str, Any]:
    """openstacksdk's cloud layer as its docs suggest: create_server(wait=True) in a loop."""
    def up(conn: Any) -> List[Any]:
        return [conn.create_server(name, image=defaults["image"], flavor=defaults["flavor"],
                                   network=defaults["network"], wait=True, timeout=300,
                                   auto_ip=False) for name in _names("sdkwait", n)]

    def down(conn: Any, servers: List[Any]) -> None:
        for s in servers:
            conn.delete_server(s.id, wait=True, timeout=120)
    return _measured(cloud, up, down)


def sdk_nowait(cloud: str, n: int, defaults: Dict[str, str]) -> Dict[str, Any]:
    """create_server(wait=False) for all, then wait_for_server on each."""
    def up(conn: Any) -> List[Any]:
        servers = [conn.create_server(name, image=defaults["image"], flavor=defaults["flavor"],
                                      network=defaults["network"], wait=False, auto_ip=False)
                   for name in _names("sdknowait", n)]
        return [conn.wait_for_server(s, auto_ip=False, timeout=300) for s in servers]

    def down(conn: Any, servers: List[Any]) -> None:
        for s in servers:
            conn.delete_server(s.id, wait=False)
        _wait_gone(conn, [s.id for s in servers])
    return _measured(cloud, up, down)


def cloudcompute_cluster(cloud: str, n: int, defaults: Dict[str, str]) -> Dict[str, Any]:
    """cloudcompute to SSH-ready (pre-flight, keypair, group, servers, SSH), then down()."""
    conn, counter = _fresh(cloud)
    counter.take()
    t0 = time.monotonic()
    c = Cluster(ClusterSpec(name="bench%s" % uuid.uuid4().hex[:6], nodes=n), conn=conn)
    c.up()
    up = time.monotonic() - t0
    requests = counter.take()
    timings = dict(c.timings)
    t1 = time.monotonic()
    c.down()
    return {"up_s": up, "active_s": timings["active"], "down_s": time.monotonic() - t1,
            "requests": requests, "down_requests": counter.take()}
