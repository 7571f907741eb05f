"""Servers of a cluster: create, wait for ACTIVE, then for SSH.

A group of more than one server is created in batches of ``create_batch``
with Nova's multi-create (:mod:`cloudcompute.provision.multicreate`); a
single server, or every server of a cloud that refuses multi-create, gets a
request of its own (and a host key injected through user-data). The wait
makes one list call per poll cycle for the whole cluster (filtered by the
cluster's tag), the cycles further apart as the wait goes on. A server in
ERROR fails fast with Nova's fault text; it is deleted and replaced up to
``max_replacements`` times, or dropped while at least ``min_nodes`` remain.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import functools
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from openstack import exceptions as os_exc

from cloudcompute import listing, retry, tags
from cloudcompute.config import ClusterSpec
from cloudcompute.exceptions import ProvisioningError, ServerFault, WaitTimeout
from cloudcompute.provision import multicreate, policy
from cloudcompute.provision.changes import Changes
from cloudcompute.provision.preflight import Plan, ResolvedGroup
from cloudcompute.record import NodeInfo
from cloudcompute.ssh import hostkeys
from cloudcompute.state import ClusterState

LOG = logging.getLogger(__name__)
POLL = 0.5
POLL_MAX = 2.0
"""Poll cycles start POLL apart and grow by half each cycle up to POLL_MAX."""
UNLISTED_CYCLES = 3
FULL_LIST_EVERY = 30.0
"""Seconds between the wait's listings of the whole cluster; the cycles
between them list only what changed since (``changes-since``). A server
deleted while it builds is missed by those (its tags go with it) and found
missing by the next whole listing."""
CONSOLE_POLL_MAX = 5.0


class ServerBuilder:
    """Creates and watches the servers of one cluster."""

    def __init__(self, conn: Any, st: ClusterState, spec: ClusterSpec, plan: Plan,
                 network_id: str, sg_name: str, keypair: str,
                 progress: Optional[Callable[[str, str], None]] = None,
                 authorized_keys: Sequence[str] = ()):
        """``authorized_keys``: public key lines authorized on every node through
        cloud-init user-data (the cluster's internal key), besides the keypair."""
        self.conn = conn
        self.st = st
        self.spec = spec
        self.plan = plan
        self.network_id = network_id
        self.sg_name = sg_name
        self.keypair = keypair
        self.authorized_keys = list(authorized_keys)
        self.nodes: Dict[str, NodeInfo] = {}
        self.replacements = 0
        self.batches: List[multicreate.Batch] = []
        self._multi_refused = threading.Event()
        self._lock = threading.Lock()
        self.t0 = time.monotonic()
        self.progress = progress or (lambda phase, node: None)

    # -- create ---------------------------------------------------------
    def create_all(self) -> None:
        """Send every group's create requests (batches and single servers) in
        parallel; ProvisioningError names the first that failed."""
        work: List[Callable[[], Any]] = []
        for g in self.plan.groups:
            sizes = multicreate.chunks(g.count, self.spec.create_batch)
            for j, k in enumerate(sizes):
                if k == 1:
                    name = tags.resource_name(self.st.cluster_id, g.name, str(j))
                    work.append(functools.partial(self.create_one, g, name))
                else:
                    batch = multicreate.Batch(g.name, tags.resource_name(
                        self.st.cluster_id, g.name, str(j)), k)
                    work.append(functools.partial(self.create_batch, g, batch))
        with cf.ThreadPoolExecutor(max_workers=min(self.spec.parallel, len(work))) as pool:
            futures = [pool.submit(w) for w in work]
            errors = [f.exception() for f in futures if f.exception()]
        if errors:
            raise ProvisioningError("creating servers failed: %s" % errors[0],
                                    self.st.snapshot()) from errors[0]

    def _server_args(self, group: ResolvedGroup, user_data: Optional[str]) -> Dict[str, Any]:
        meta = tags.server_metadata(self.st.cluster_id, self.st.name, group.name,
                                    self.spec.ttl_hours, self.st.record.owner or "",
                                    extra=dict(self.spec.metadata, **group.metadata))
        args: Dict[str, Any] = dict(
            flavor_id=group.flavor_id, image_id=group.image_id,
            networks=[{"uuid": self.network_id}], key_name=self.keypair,
            security_groups=[{"name": self.sg_name}], metadata=meta,
            tags=tags.tags(self.st.cluster_id))
        if user_data:
            args["user_data"] = base64.b64encode(user_data.encode()).decode()
        return args

    def create_batch(self, group: ResolvedGroup, batch: multicreate.Batch) -> None:
        """Create ``batch`` with one request; where the cloud refuses
        multi-create, create its servers one by one (said once in the log).
        The servers' ids arrive with the first listing of :meth:`wait_active`."""
        if self._multi_refused.is_set():
            self._create_each(group, batch.names)
            return
        user_data = hostkeys.user_data_with_host_key(self.spec.user_data, None, None,
                                                     self.authorized_keys)
        if user_data is None:
            user_data = self.spec.user_data
        for name in batch.names:
            self.nodes[name] = NodeInfo(name=name, group=group.name, keys_injected=False,
                                        slots=group.slots or 1, ram_mb=group.ram)
        self.st.intend_all("servers", batch.names, group=group.name, host_keys=[],
                           batch=batch.base)
        body = self._server_args(group, user_data)
        body["flavorRef"], body["imageRef"] = body.pop("flavor_id"), body.pop("image_id")
        try:
            multicreate.create(self.conn, self.st.cluster_id, batch, body)
        except os_exc.HttpException as exc:
            if not multicreate.refused(exc):
                raise
            with self._lock:
                first = not self._multi_refused.is_set()
                self._multi_refused.set()
            if first:
                LOG.warning("the cloud refused a multi-create of %d servers (%s); creating "
                            "servers one by one", batch.count, exc)
            for name in batch.names:
                del self.nodes[name]
            self._create_each(group, batch.names)
            return
        self.batches.append(batch)
        for name in batch.names:
            self.nodes[name].timings["created"] = time.monotonic() - self.t0
            self.progress("created", name)

    def _create_each(self, group: ResolvedGroup, names: List[str]) -> None:
        """A request per server, ``spec.parallel`` at a time; raises the first error."""
        with cf.ThreadPoolExecutor(max_workers=min(self.spec.parallel, len(names))) as pool:
            list(pool.map(functools.partial(self.create_one, group), names))

    def create_one(self, group: ResolvedGroup, name: str) -> NodeInfo:
        private, public = hostkeys.generate_ed25519()
        user_data = hostkeys.user_data_with_host_key(self.spec.user_data, private, public,
                                                     self.authorized_keys)
        injected = user_data is not None
        if not injected:
            user_data = self.spec.user_data
        node = NodeInfo(name=name, group=group.name,
                        host_keys=[public] if injected else [],
                        keys_injected=injected, slots=group.slots or 1, ram_mb=group.ram)
        self.nodes[name] = node
        self.st.intend("servers", name, group=group.name, host_keys=node.host_keys)
        args = dict(self._server_args(group, user_data), name=name)
        server = self._create_checked(name, args)
        node.server_id = server.id
        node.timings["created"] = time.monotonic() - self.t0
        self.progress("created", name)
        self.st.created("servers", name, server.id, group=group.name,
                       host_keys=node.host_keys)
        return node

    def _create_checked(self, name: str, args: Dict[str, Any]) -> Any:
        """Create; a retry first checks that an earlier attempt made nothing."""
        return retry.create_checked(lambda: self.conn.compute.create_server(**args),
                                    lambda: self._find_by_name(name))

    def _find_by_name(self, name: str) -> Optional[Any]:
        for s in retry.call(self.conn.compute.servers,
                            tags=tags.CLUSTER_TAG + self.st.cluster_id):
            if s.name == name:
                return s
        return None

    # -- wait for ACTIVE -----------------------------------------------
    def wait_active(self, on_active: Optional[Callable[[NodeInfo], None]] = None) -> None:
        """Poll until every wanted server is ACTIVE, with one tag-filtered list
        per cycle for the whole cluster. ``on_active(node)`` is called (in this
        thread) as each node turns ACTIVE."""
        deadline = time.monotonic() + self.spec.timeouts.active
        want = {n.name for n in self.nodes.values()}
        unlisted: Dict[str, int] = {}
        interval = POLL
        changes = Changes(FULL_LIST_EVERY)
        while True:
            # no server is ACTIVE the moment it is created: wait before each listing
            retry.SLEEP(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(POLL_MAX, interval * 1.5)
            since = changes.since()
            query = {"changes-since": since} if since else {}
            listed = retry.call(lambda q=query: listing.servers(
                self.conn, tags=tags.CLUSTER_TAG + self.st.cluster_id, **q))
            changes.seen(listed, full=since is None)
            active = self._apply(listed, since is None, want, unlisted)
            if on_active is not None:
                for node in active:
                    on_active(node)
            pending = sorted(n for n in want if self.nodes[n].status != "ACTIVE")
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise WaitTimeout("ACTIVE state of cluster %s" % self.st.name,
                                  self.spec.timeouts.active, pending)

    def _apply(self, listed: List[listing.ServerView], whole: bool, want: set,
               unlisted: Dict[str, int]) -> List[NodeInfo]:
        """Apply one listing (``whole``: of the whole cluster, else only what
        changed) to the nodes still building; record what it showed in one
        write (before a failed node is handled, whose error carries the
        record). Returns the nodes that turned ACTIVE."""
        by_id = {s.id: s for s in listed}
        by_name = {s.name: s for s in listed}
        records: List[Tuple[str, str, Dict[str, Any]]] = []
        active: List[NodeInfo] = []

        def fail(node: NodeInfo, fault: str) -> None:
            self.st.created_all("servers", records)
            records.clear()
            self._replace_or_drop(node, want, fault)
        try:
            for node in list(self.nodes.values()):
                if node.name not in want or node.status == "ACTIVE":
                    continue
                server = (by_id.get(node.server_id) if node.server_id
                          else by_name.get(node.name))
                if server is None and not whole:
                    # not changed since; or deleted (Nova drops a deleted
                    # server's tags, so only a whole listing tells)
                    continue
                if server is None:
                    # A batch's servers are listed from its answer on; allow a
                    # few cycles all the same before calling one gone.
                    unlisted[node.name] = unlisted.get(node.name, 0) + 1
                    if node.server_id or unlisted[node.name] >= UNLISTED_CYCLES:
                        fail(node, "server disappeared while building")
                    continue
                if node.server_id is None:  # a batch member, seen for the first time
                    node.server_id = server.id
                    records.append((node.name, server.id,
                                    {"group": node.group, "host_keys": []}))
                if server.status == "ACTIVE":
                    node.status = "ACTIVE"
                    node.timings["active"] = time.monotonic() - self.t0
                    self.progress("active", node.name)
                    node.fixed_ip = self._fixed_ip(server)
                    records.append((node.name, server.id,
                                    {"fixed_ip": node.fixed_ip, "status": "ACTIVE"}))
                    active.append(node)
                elif server.status == "ERROR":
                    fail(node, (server.fault or {}).get("message") or "no fault message")
        finally:
            self.st.created_all("servers", records)
        return active

    def _fixed_ip(self, server: listing.ServerView) -> Optional[str]:
        for addrs in server.addresses.values():
            for a in addrs if isinstance(addrs, list) else []:
                if isinstance(a, dict) and a.get("OS-EXT-IPS:type", "fixed") == "fixed" \
                        and a.get("version") == 4 and isinstance(a.get("addr"), str):
                    return str(a["addr"])
        return None

    def _replace_or_drop(self, node: NodeInfo, want: set, fault: str) -> None:
        """A server failed while building: delete it, take it out of ``want``, and
        as :func:`policy.on_failure` decides, add a replacement to ``want``, leave
        it dropped, or raise ServerFault."""
        LOG.warning("node %s failed: %s", node.name, fault)
        node.status = "ERROR"
        want.discard(node.name)
        self.delete_quietly(node)
        total = sum(g.count for g in self.plan.groups)
        rule = policy.FailurePolicy(self.spec.max_replacements,
                                    self.spec.min_nodes if self.spec.min_nodes is not None
                                    else total)
        decision = policy.on_failure(rule, self.replacements, len(want))
        if decision is policy.Decision.REPLACE:
            self.replacements += 1
            group = next(g for g in self.plan.groups if g.name == node.group)
            new = self.create_one(group, "%s-r%d" % (node.name, self.replacements))
            want.add(new.name)
            LOG.info("replacing %s with %s (%d/%d)", node.name, new.name,
                     self.replacements, self.spec.max_replacements)
            return
        if decision is policy.Decision.DROP:
            LOG.warning("dropping %s: %d nodes left, min_nodes %d", node.name,
                        len(want), rule.needed)
            return
        raise ServerFault(node.server_id or "?", node.name, fault,
                          resources=self.st.snapshot())

    def delete_quietly(self, node: NodeInfo) -> None:
        """Delete a failed server now; teardown verifies it is gone."""
        if node.server_id is None:  # a batch member never listed: its intent stays,
            return                  # and teardown looks it up by name
        try:
            retry.call(self.conn.compute.delete_server, node.server_id,
                       ignore_missing=True)
        except os_exc.SDKException as exc:
            LOG.warning("delete of failed server %s deferred to teardown: %s",
                        node.name, exc)
        self.st.created("servers", node.name, node.server_id, status="ERROR", dropped=True)

    def active_nodes(self) -> List[NodeInfo]:
        return [n for n in self.nodes.values() if n.status == "ACTIVE"]

    # -- floating IPs and console keys ---------------------------------
    def attach_floating_ip(self, node: NodeInfo) -> None:
        ports = list(retry.call(self.conn.network.ports, device_id=node.server_id))
        if not ports:
            raise ProvisioningError("server %s has no port for a floating IP" % node.name,
                                    self.st.snapshot())
        self.st.intend("floating_ips", node.name, port_id=ports[0].id)
        fip = retry.create_checked(
            lambda: self.conn.network.create_ip(
                floating_network_id=self.plan.external_network_id, port_id=ports[0].id,
                description="cloudcompute cluster %s" % self.st.cluster_id),
            lambda: next(iter(retry.call(lambda: list(self.conn.network.ips(
                port_id=ports[0].id)))), None))
        self.st.created("floating_ips", node.name, fip.id,
                       address=fip.floating_ip_address, port_id=ports[0].id)
        retry.call(self.conn.network.set_tags, fip, tags.tags(self.st.cluster_id))
        node.floating_ip = fip.floating_ip_address

    def console_host_keys(self, node: NodeInfo, deadline: float) -> None:
        """For clouds that ignore user-data: take the keys from the console log."""
        assert node.server_id is not None  # only ACTIVE servers are asked
        interval = 1.0
        while time.monotonic() < deadline:
            out = retry.call(self.conn.compute.get_server_console_output,
                             node.server_id).get("output", "")
            keys = hostkeys.keys_from_console(out or "")
            if keys:
                node.host_keys = keys
                self.st.created("servers", node.name, node.server_id, host_keys=keys)
                LOG.info("host keys of %s taken from its console log", node.name)
                return
            retry.SLEEP(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(CONSOLE_POLL_MAX, interval * 1.5)
        raise WaitTimeout("host keys in the console log of %s" % node.name,
                          self.spec.timeouts.ssh, [node.name])
