"""The control plane alone: cloudcompute's provisioning to ACTIVE and its
teardown at hundreds of servers, on the local cloud's fake compute host.

``devstack/aio/cloud fake-compute up`` adds a second nova-compute with Nova's
own FakeDriver (servers without namespaces); only servers of the flavor
``cc.fake`` land there, and no other server does. For each N this runs what
``Cluster.up()`` runs except SSH, which a fake server cannot answer:
pre-flight, the state record, keypair, security group and a network of the
cluster's own (the shared one is a /24), the servers in multi-create batches
and the wait for ACTIVE, through the library's own phases; then the
library's teardown as ``down()`` runs it, and the library's tag survey of
what is left. Requests are counted on the connection's session; client CPU
is this process's CPU time (every thread), per server.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List

import openstack

from benchmarks.provisioning import _fresh, _names
from cloudcompute import config, testing
from cloudcompute.config import ClusterSpec, Timeouts
from cloudcompute.provision import phases, preflight
from cloudcompute.teardown import Teardown

LOG = logging.getLogger("benchmarks.controlplane")
HERE = os.path.dirname(os.path.abspath(__file__))
AIO = os.path.join(os.path.dirname(HERE), "devstack", "aio", "cloud")
FLAVOR = "cc.fake"
HOST = "aio-fake"
CIDR = "10.42.160.0/22"
"""The cluster's own network: room for 1000 ports."""
SIZES = [100, 250, 500]
TARGET_CPU_MS = 10.0
TARGET_REQUESTS = 2.0


@contextlib.contextmanager
def fake_compute(aio: str = AIO) -> Iterator[None]:
    """The cloud's fake compute host, up for the block and down after it
    (also when the block fails); a failed ``down`` is logged, not raised over
    the block's own error."""
    subprocess.run([aio, "fake-compute", "up"], check=True, capture_output=True, text=True)
    try:
        yield
    finally:
        done = subprocess.run([aio, "fake-compute", "down"], capture_output=True, text=True)
        if done.returncode:
            LOG.error("fake-compute down failed (%d): %s", done.returncode,
                      (done.stderr or done.stdout)[-2000:])


def spec_for(name: str, n: int) -> ClusterSpec:
    """The benchmark's cluster: N fake servers on a network of its own, with
    waits long enough for the largest N on two cores."""
    return ClusterSpec(name=name, nodes=n, flavor=FLAVOR, create_network=True, cidr=CIDR,
                       autodown=False,
                       timeouts=Timeouts(active=max(600.0, 4.0 * n),
                                         teardown=max(300.0, 2.0 * n)))


def measure(cloud: str, n: int, state_dir: str) -> Dict[str, Any]:
    """One cluster of ``n`` fake servers up to ACTIVE and down again through
    the library's phases; wall time, requests and client CPU of each half."""
    conn, counter = _fresh(cloud)
    name = "cp%s" % uuid.uuid4().hex[:6]
    spec = config.validate(spec_for(name, n).with_settings(config.cloud_settings(conn)))
    counter.take()
    t0, cpu0 = time.monotonic(), time.process_time()
    timings: Dict[str, float] = {}
    st = None
    try:
        plan = preflight.resolve(conn, spec)
        timings["preflight"] = time.monotonic() - t0
        st = phases.record(conn, spec, plan, state_dir)
        base = phases.base_resources(conn, st, spec, plan)
        timings["base"] = time.monotonic() - t0
        builder = phases.servers(conn, st, spec, plan, base, lambda phase, node: None,
                                 timings, since=t0)
        up_s, up_cpu = time.monotonic() - t0, time.process_time() - cpu0
        active = len(builder.active_nodes())
        requests, kinds = counter.take(), counter.last
    finally:
        t1, cpu1 = time.monotonic(), time.process_time()
        counter.take()
        if st is not None:
            Teardown(conn, st, spec.timeouts.teardown).run()
    down_s, down_cpu = time.monotonic() - t1, time.process_time() - cpu1
    down_requests = counter.take()
    return {"name": name, "n": n, "active": active, "up_s": up_s, "down_s": down_s,
            "timings": timings, "requests": requests, "requests_by_kind": kinds,
            "down_requests": down_requests, "client_cpu_s": up_cpu,
            "down_client_cpu_s": down_cpu, **per_server(n, requests, up_cpu,
                                                        down_requests, down_cpu)}


def per_server(n: int, requests: int, cpu_s: float, down_requests: int,
               down_cpu_s: float) -> Dict[str, float]:
    """The per-server figures of one run."""
    return {"requests_per_server": requests / n,
            "client_cpu_ms_per_server": 1000.0 * cpu_s / n,
            "down_requests_per_server": down_requests / n,
            "down_client_cpu_ms_per_server": 1000.0 * down_cpu_s / n}


def raw_parallel(cloud: str, n: int, timeout: float) -> Dict[str, Any]:
    """The baseline: ``n`` per-server POSTs, 8 at a time, one list per 0.5 s
    until all are ACTIVE, then ``n`` deletes and one list per 0.5 s until all
    are gone; on a network of its own (made and removed outside the figures)."""
    conn, counter = _fresh(cloud)
    image = conn.image.find_image(config.cloud_settings(conn)["image"], ignore_missing=False)
    flavor = _flavor_id(conn)
    net = conn.network.create_network(name="bench-cp-raw-%s" % uuid.uuid4().hex[:6])
    ids: List[str] = []

    def create(name: str) -> None:
        ids.append(conn.compute.create_server(name=name, image_id=image.id, flavor_id=flavor,
                                              networks=[{"uuid": net.id}]).id)
    try:
        conn.network.create_subnet(network_id=net.id, ip_version=4, cidr=CIDR,
                                   is_dhcp_enabled=False, name=net.name)
        counter.take()
        t0, cpu0 = time.monotonic(), time.process_time()
        try:
            with cf.ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(create, _names("cpraw", n)))
            _until_listed(conn, set(ids), lambda found: all(
                v == "ACTIVE" for v in found.values()) and len(found) == n, timeout)
            up_s, cpu = time.monotonic() - t0, time.process_time() - cpu0
            requests = counter.take()
        finally:
            t1 = time.monotonic()
            with cf.ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda sid: conn.compute.delete_server(
                    sid, ignore_missing=True), list(ids)))
            _until_listed(conn, set(ids), lambda found: not found, timeout)
            down_s = time.monotonic() - t1
            down_requests = counter.take()
    finally:
        conn.network.delete_network(net)  # its subnet goes with it
    return {"up_s": up_s, "down_s": down_s, "requests": requests,
            "down_requests": down_requests, "client_cpu_s": cpu}


def _until_listed(conn: Any, ids: set, done: Callable[[Dict[str, str]], bool],
                  timeout: float) -> None:
    """List the project's servers every 0.5 s until ``done(id -> status)`` of
    those in ``ids``; an ERROR or the timeout raises."""
    end = time.monotonic() + timeout
    while True:
        found = {s.id: s.status for s in conn.compute.servers() if s.id in ids}
        if "ERROR" in found.values():
            raise RuntimeError("a server went to ERROR in the raw baseline")
        if done(found):
            return
        if time.monotonic() > end:
            raise RuntimeError("raw baseline: not done within %ss" % timeout)
        time.sleep(0.5)


def one_size(cloud: str, n: int, log: Callable[[str], None],
             raw: bool = False) -> Dict[str, Any]:
    """``measure`` at ``n`` and the survey after it (with ``raw``, the
    raw-parallel baseline first); a failed run is a row (its error and what
    it left), not the end of the benchmark."""
    state_dir = tempfile.mkdtemp(prefix="cc-bench-cp-")
    try:
        try:
            baseline = raw_parallel(cloud, n, spec_for("x", n).timeouts.active) if raw else None
            row = measure(cloud, n, state_dir)
            if baseline is not None:
                row["raw_parallel"] = baseline
        except Exception as exc:  # noqa: BLE001 - a failed run is a result, not a crash
            log("control plane N=%d failed: %s" % (n, exc))
            conn = openstack.connect(cloud=cloud)
            names = [s.name for s in conn.compute.servers(flavor=_flavor_id(conn))]
            return {"n": n, "error": str(exc)[:2000], "servers_left": names}
        conn = openstack.connect(cloud=cloud)
        row["leftovers"] = testing.tagged_leftovers(conn, [row["name"]], state_dir)
        return row
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def _flavor_id(conn: Any) -> str:
    return conn.compute.find_flavor(FLAVOR, ignore_missing=False).id


def run(cloud: str, sizes: List[int], log: Callable[[str], None],
        aio: str = AIO, raw: bool = False) -> Dict[int, Dict[str, Any]]:
    """Every size (with ``raw``, the raw-parallel baseline beside each), with
    the fake compute host up around them."""
    rows: Dict[int, Dict[str, Any]] = {}
    try:
        with fake_compute(aio):
            for n in sizes:
                log("control plane: N=%d fake servers, up to ACTIVE and down" % n)
                rows[n] = one_size(cloud, n, log, raw)
    except subprocess.CalledProcessError as exc:  # fake-compute up: every N fails
        error = "fake-compute up failed: %s" % str(exc.stderr or exc.stdout or exc)[-1000:]
        log(error)
        for n in sizes:
            rows.setdefault(n, {"n": n, "error": error, "servers_left": []})
    return rows


def targets(n: int, row: Dict[str, Any], target: Any) -> List[Dict[str, Any]]:
    """The targets of one N: nothing left, requests and client CPU per server."""
    if "error" in row:
        return [target("control plane N=%d: up to ACTIVE and down (failed: %s)"
                       % (n, row["error"][:120]), 0, 1, "runs", "higher")]
    return [target("control plane N=%d: resources left after down (tag survey)" % n,
                   len(row["leftovers"]), 0, "resources", "lower"),
            target("control plane N=%d: HTTP requests per server to ACTIVE" % n,
                   row["requests_per_server"], TARGET_REQUESTS, "requests", "lower"),
            target("control plane N=%d: client CPU per server to ACTIVE" % n,
                   row["client_cpu_ms_per_server"], TARGET_CPU_MS, "ms", "lower")]


def table(rows: Dict[Any, Dict[str, Any]]) -> List[str]:
    """Markdown rows for bench-results.md (none without rows)."""
    if not rows:
        return []
    lines = ["", "Control plane alone (fake compute host, one run each; up = to ACTIVE):", "",
             "| N | up s | down s | requests/server up | down | client CPU ms/server up "
             "| down | left after down |", "|---|---|---|---|---|---|---|---|"]
    for n, r in sorted(rows.items(), key=lambda kv: int(kv[0])):
        if "error" in r:
            lines.append("| %s | failed: %s | | | | | | %d servers |" % (
                n, r["error"][:200].replace("|", "/"), len(r["servers_left"])))
            continue
        lines.append("| %s | %.1f | %.1f | %.2f | %.2f | %.1f | %.1f | %d |" % (
            n, r["up_s"], r["down_s"], r["requests_per_server"],
            r["down_requests_per_server"], r["client_cpu_ms_per_server"],
            r["down_client_cpu_ms_per_server"], len(r["leftovers"])))
        if "raw_parallel" in r:
            b = r["raw_parallel"]
            lines.append("| %s, raw parallel per-server POSTs | %.1f | %.1f | %.2f | %.2f "
                         "| %.1f | | |" % (n, b["up_s"], b["down_s"], b["requests"] / int(n),
                                           b["down_requests"] / int(n),
                                           1000.0 * b["client_cpu_s"] / int(n)))
    return lines


def plot(rows: Dict[Any, Dict[str, Any]], out: str, plt: Any) -> None:
    """bench-control-plane.png: wall time, requests and client CPU per server
    against N (the runs that did not fail)."""
    ok = {int(n): r for n, r in rows.items() if "error" not in r}
    if not ok:
        return
    ns = sorted(ok)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.6))
    a1.plot(ns, [ok[n]["up_s"] for n in ns], "o-", label="up to ACTIVE")
    a1.plot(ns, [ok[n]["down_s"] for n in ns], "s--", label="down, verified")
    raw = [n for n in ns if "raw_parallel" in ok[n]]
    if raw:
        a1.plot(raw, [ok[n]["raw_parallel"]["up_s"] for n in raw], "^:",
                label="raw parallel POSTs, ACTIVE")
    a1.set(xlabel="servers", ylabel="seconds", title="wall time")
    a1.legend(fontsize=7)
    a2.plot(ns, [ok[n]["requests_per_server"] for n in ns], "o-", label="up")
    a2.plot(ns, [ok[n]["down_requests_per_server"] for n in ns], "s--", label="down")
    a2.axhline(TARGET_REQUESTS, color="grey", lw=0.8, ls=":")
    a2.set(xlabel="servers", ylabel="HTTP requests per server", title="API requests")
    a2.legend(fontsize=7)
    a3.plot(ns, [ok[n]["client_cpu_ms_per_server"] for n in ns], "o-", label="up")
    a3.plot(ns, [ok[n]["down_client_cpu_ms_per_server"] for n in ns], "s--", label="down")
    a3.axhline(TARGET_CPU_MS, color="grey", lw=0.8, ls=":")
    a3.set(xlabel="servers", ylabel="client CPU ms per server", title="client CPU")
    a3.legend(fontsize=7)
    fig.suptitle("control plane alone: fake compute host", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bench-control-plane.png"), dpi=110)
