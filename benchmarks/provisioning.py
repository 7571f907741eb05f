"""Provisioning and teardown: cloudcompute against raw API calls and openstacksdk.

Every variant counts its HTTP requests through the keystoneauth session of
its own connection (not by estimate). ``sdk_ssh_first_task`` is the script a
user would write instead of cloudcompute (keypair, security group, creates,
``wait_for_server``, a paramiko connect-and-retry loop, one command per
node); it and cloudcompute are timed to the first task done on every node.
The other baselines stop at ACTIVE and are context.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import io
import re
import socket
import statistics
import threading
import time
import uuid
from typing import Any, Callable, Dict, List

import openstack
import paramiko

from benchmarks import remote_funcs as rf
from cloudcompute import Cluster, ClusterSpec, testing


_ID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}|[0-9a-f]{32}")


class RequestCounter:
    """Counts the HTTP requests a Connection sends (keystoneauth Session.request),
    and which: after ``take``, ``last`` is "METHOD path" (ids elided) -> count
    of the requests it took."""

    def __init__(self, conn: Any):
        self.count = 0
        self.seen: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        session = conn.session
        original = session.request

        def counted(url: str, method: str, *args: Any, **kwargs: Any) -> Any:
            path = url.split("?")[0]
            if "//" in path:  # absolute: drop the scheme and host
                path = path.split("//", 1)[1].partition("/")[2]
            path = _ID.sub("<id>", path.lstrip("/"))
            with self._lock:
                self.count += 1
                self.seen["%s /%s" % (method, path)] += 1
            return original(url, method, *args, **kwargs)
        session.request = counted

    def take(self) -> int:
        with self._lock:
            n, self.count = self.count, 0
            self.last = dict(self.seen)
            self.seen.clear()
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
    """cloudcompute to SSH-ready (pre-flight, keypair, group, servers, SSH), then
    to a first task done on every node, then down()."""
    conn, counter = _fresh(cloud)
    counter.take()
    t0, cpu0 = time.monotonic(), time.process_time()
    name = "bench%s" % uuid.uuid4().hex[:6]
    c = Cluster(ClusterSpec(name=name, nodes=n), conn=conn)
    try:
        c.up()
        up = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        requests = counter.take()
        kinds = counter.last
        timings = dict(c.timings)
        results = c.run_all(rf.noop, 1)
        first_task = time.monotonic() - t0
        if results.failed or len(results.succeeded) != n:
            raise RuntimeError("first task failed: %s" % results.failed)
    finally:
        t1 = time.monotonic()
        counter.take()
        c.down()
    down_s, down_requests = time.monotonic() - t1, counter.take()
    return {"up_s": up, "first_task_s": first_task, "active_s": timings["active"],
            "down_s": down_s, "requests": requests, "requests_by_kind": kinds,
            "down_requests": down_requests, "down_requests_by_kind": counter.last,
            "client_cpu_s": cpu, "name": name}


def scale(cloud: str, n: int, defaults: Dict[str, str]) -> Dict[str, Any]:
    """One large cluster: up, a task on every node, down; then what is left of
    it in the cloud (gc's survey by tag, and keypairs by name); raw parallel
    creates and deletes of the same N beside it."""
    raw = raw_parallel(cloud, n, defaults)
    names_before = {s.name for s in openstack.connect(cloud=cloud).compute.servers()}
    try:
        cc = cloudcompute_cluster(cloud, n, defaults)
    except Exception as exc:  # noqa: BLE001 - a failed large run is a result, not a crash
        conn = openstack.connect(cloud=cloud)
        left = [s.name for s in conn.compute.servers() if s.name not in names_before]
        return {"raw_parallel": raw, "cloudcompute": {"error": str(exc)[:2000],
                                                      "servers_left": left}}
    conn = openstack.connect(cloud=cloud)
    cc["leftovers"] = testing.tagged_leftovers(conn, [cc.pop("name")])
    cc["client_cpu_ms_per_node"] = 1000 * cc["client_cpu_s"] / n
    return {"raw_parallel": raw, "cloudcompute": cc}


def _ssh_until_ready(address: str, user: str, pkey: Any, deadline: float) -> paramiko.SSHClient:
    """What a user writes: connect, and on any error sleep and try again."""
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(address, username=user, pkey=pkey, timeout=5, banner_timeout=5,
                           auth_timeout=5, allow_agent=False, look_for_keys=False)
            return client
        except (paramiko.SSHException, OSError, EOFError, socket.timeout):
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def sdk_ssh_first_task(cloud: str, n: int, defaults: Dict[str, str]) -> Dict[str, Any]:
    """The user's own script: keypair and security group (SSH open), N
    ``create_server(wait=False)``, ``wait_for_server`` on each, then on each
    node a paramiko connect-and-retry loop and one ``python3 -c`` command."""
    conn, counter = _fresh(cloud)
    counter.take()
    tag = uuid.uuid4().hex[:6]
    t0 = time.monotonic()
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(_new_private_key()))
    kp = conn.compute.create_keypair(name="bench-user-%s" % tag,
                                     public_key="ssh-ed25519 " + key.get_base64())
    sg = conn.network.create_security_group(name="bench-user-%s" % tag)
    conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress",
                                            ethertype="IPv4", protocol="tcp",
                                            port_range_min=22, port_range_max=22)
    image = conn.image.find_image(defaults["image"], ignore_missing=False)
    user = image.properties.get("os_admin_user") if image.properties else None
    user = user or getattr(image, "os_admin_user", None) or "debian"
    servers: List[Any] = []
    try:
        servers = [conn.create_server(name, image=defaults["image"], flavor=defaults["flavor"],
                                      network=defaults["network"], key_name=kp.name,
                                      security_groups=[sg.name], wait=False, auto_ip=False)
                   for name in _names("user", n)]
        servers = [conn.wait_for_server(s, auto_ip=False, timeout=300) for s in servers]
        active = time.monotonic() - t0
        deadline = time.monotonic() + 300

        def first_task(server: Any) -> None:
            client = _ssh_until_ready(server.private_v4 or server.access_ipv4, user, key,
                                      deadline)
            try:
                _, out, _ = client.exec_command("python3 -c 'print(1)'", timeout=60)
                if out.read().strip() != b"1" or out.channel.recv_exit_status() != 0:
                    raise RuntimeError("first task failed on %s" % server.name)
            finally:
                client.close()
        with cf.ThreadPoolExecutor(max_workers=min(n, 16)) as pool:
            list(pool.map(first_task, servers))
        done = time.monotonic() - t0
        requests = counter.take()
    finally:
        t1 = time.monotonic()
        for s in servers:
            conn.delete_server(s.id, wait=False)
        _wait_gone(conn, [s.id for s in servers])
        conn.network.delete_security_group(sg.id)
        conn.compute.delete_keypair(kp.name)
    return {"up_s": done, "first_task_s": done, "active_s": active,
            "down_s": time.monotonic() - t1, "requests": requests,
            "down_requests": counter.take()}


def _new_private_key() -> str:
    from cloudcompute.ssh import hostkeys
    return hostkeys.generate_ed25519()[0]


VARIANTS: Dict[str, Callable[[str, int, Dict[str, str]], Dict[str, Any]]] = {
    "raw_parallel": raw_parallel,
    "cloudcompute": cloudcompute_cluster,
    "sdk_ssh_first_task": sdk_ssh_first_task,
    "sdk_create_wait_loop": sdk_wait_loop,
    "sdk_nowait_then_wait": sdk_nowait,
}


def summary(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Median, min and max of every number the runs of one variant share; the
    runs themselves under ``runs``."""
    out: Dict[str, Any] = {"runs": runs}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if len(values) == len(runs):
            out[key] = statistics.median(values)
            out[key + "_range"] = [min(values), max(values)]
    return out


def interleaved(cloud: str, n: int, defaults: Dict[str, str], reps: int,
                names: List[str], log: Callable[[str], None]) -> Dict[str, Any]:
    """Every variant ``reps`` times, interleaved (A B C, A B C, ...), summarised."""
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names:
            log("provisioning N=%d: %s (%d/%d)" % (n, name, rep + 1, reps))
            runs[name].append(VARIANTS[name](cloud, n, defaults))
    return {name: summary(r) for name, r in runs.items()}
