"""Delete a cluster in dependency order, idempotently, and verify by listing.

What depends on nothing goes at once, side by side with the servers:
floating IPs, keypairs and the watchdog's application credential. What a
server's port holds waits until every server shows DELETED (Nova has
released its ports by then): router interfaces, routers, ports, subnets,
networks, security groups.
A 404 counts as deleted, so teardown can be run again after any failure.
Resources are found both from the state file and by the cluster's tag, so
that a crash between a create call and its state record loses nothing. A
delete that succeeded is the evidence a record is forgotten on; servers are
followed with one tag-filtered list per poll cycle, and the final check
lists every kind once (the lists side by side).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Set, Tuple

from openstack import exceptions as os_exc

from cloudcompute import listing, retry, tags
from cloudcompute.autodown import credential
from cloudcompute.exceptions import TeardownError
from cloudcompute.provision.changes import Changes
from cloudcompute.record import KINDS
from cloudcompute.state import ClusterState

LOG = logging.getLogger(__name__)

# A create whose answer never came (interrupted, or the connection dropped)
# may still be carried out by the cloud after the teardown has looked for
# it. Teardown keeps looking for such resources by name this long.
IN_FLIGHT_GRACE = 15.0

POLL = 0.2
POLL_MAX = 2.0
POLL_FAST_MAX = 0.5
FAST_FOR = 60.0
"""The server wait's cycles start ``POLL`` apart and grow by half, up to
``POLL_FAST_MAX`` for its first ``FAST_FOR`` seconds (a changes-since
listing is cheap) and up to ``POLL_MAX`` after."""
FULL_LIST_EVERY = 30.0
"""Seconds between the server wait's tag-filtered listings; the cycles between
list only what changed."""


def _tagged(lister: Callable[..., Any], cluster_id: str) -> Dict[str, Any]:
    """Resources carrying both the library's mark and the cluster's tag (the
    APIs match every tag of a comma-separated list)."""
    return {r.id: r for r in retry.call(lambda: list(lister(
        tags=",".join(tags.tags(cluster_id)))))}


def _side_by_side(*calls: Callable[[], Any]) -> List[Any]:
    """The results of ``calls``, run in threads at once (the first error re-raised)."""
    with cf.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(c) for c in calls]
        return [f.result() for f in futures]


# The network-side kinds: (state kind, label, lister, deleter) by attribute name.
_NET_KINDS = (("routers", "router", "routers", "delete_router"),
              ("subnets", "subnet", "subnets", "delete_subnet"),
              ("networks", "network", "networks", "delete_network"),
              ("security_groups", "security group", "security_groups",
               "delete_security_group"))


class Teardown:
    """One teardown run; ``run()`` raises TeardownError naming what is left."""

    def __init__(self, conn: Any, st: ClusterState, timeout: float = 300.0,
                 in_flight_grace: float = IN_FLIGHT_GRACE):
        self.conn = conn
        self.st = st
        self.cid = st.cluster_id
        self.deadline = time.monotonic() + timeout
        self.grace_end = time.monotonic() + min(in_flight_grace, timeout)
        self.timeout = timeout
        self.errors: List[str] = []
        self.timings: Dict[str, float] = {}
        self._servers_s = 0.0

    def _recorded(self, kind: str, lister: Callable[..., Any]) -> Set[str]:
        """Ids in the state file, plus those of creates whose answer never came
        (an intent without an id), looked up by their unique name."""
        ids = set(self.st.ids(kind))
        for e in self.st.entries(kind):
            if e.id:
                continue
            if kind == "floating_ips":
                found = [r for r in retry.call(lambda e=e: list(lister(
                    port_id=e.port_id))) if e.port_id]
            else:
                found = [r for r in retry.call(lambda n=e.name: list(lister(name=n)))
                         if r.name == e.name]
            for r in found[:1]:
                self.st.created(kind, e.name, r.id)
                ids.add(r.id)
        return ids

    def _found(self, kind: str, lister: Callable[..., Any]) -> Set[str]:
        return self._recorded(kind, lister) | set(_tagged(lister, self.cid))

    def _delete(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> bool:
        """Delete one resource; True if it is gone (deleted now, or a 404)."""
        try:
            retry.call(fn, *args, attempts=6, **kw)
        except os_exc.NotFoundException:
            pass
        except os_exc.SDKException as exc:
            self.errors.append("%s: %s" % (what, exc))
            LOG.warning("could not delete %s: %s", what, exc)
            return False
        return True

    def _delete_all(self, what: str, fn: Callable[..., Any], ids: Any) -> Set[str]:
        """Delete many of one kind at once (the API calls, not the waits, run in
        parallel); the ids that are gone."""
        ids = sorted(ids)
        if len(ids) < 2:
            return {rid for rid in ids
                    if self._delete("%s %s" % (what, rid), fn, rid, ignore_missing=True)}
        with cf.ThreadPoolExecutor(max_workers=min(8, len(ids))) as pool:
            done = [(rid, pool.submit(self._delete, "%s %s" % (what, rid), fn, rid,
                                      ignore_missing=True)) for rid in ids]
            return {rid for rid, f in done if f.result()}

    def run(self) -> Dict[str, float]:
        t0 = time.monotonic()
        self._pass()
        self.timings["servers"] = self._servers_s
        # Look again for creates that were in flight; the first pass after the
        # grace period forgets those that never appeared.
        while self.st.in_flight() and time.monotonic() < self.deadline:
            LOG.info("waiting for creates that were in flight: %s", self.st.in_flight())
            retry.SLEEP(1.0)
            self._pass()
        self.timings["total"] = time.monotonic() - t0
        left = self.verify()
        if left:
            raise TeardownError(left, self.errors)
        ssh = self.st.record.ssh
        keys = [ssh.internal_key_file]
        if ssh.generated_key:
            keys.append(ssh.key_file)
        for key in filter(None, keys):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(key)
        self.st.remove()
        LOG.info("cluster %s deleted in %.2fs", self.st.name, self.timings["total"])
        return self.timings

    def _pass(self) -> None:
        """One pass over every kind: the servers' deletes first (the longest
        wait), then, while they go, what does not wait for them; then, once
        every server shows DELETED, what their ports held."""
        t0 = time.monotonic()
        net = self.conn.network
        ids, listed = self.delete_servers()
        released = threading.Event()  # every server DELETED or gone (or past the deadline)
        decided = threading.Event()  # released, or the wait ended without it

        def release() -> None:
            released.set()
            decided.set()

        def servers() -> None:
            try:
                self.wait_servers(ids, listed, release)
                release()
            finally:
                decided.set()
                self._servers_s = time.monotonic() - t0

        def network() -> None:
            found = {kind: self._found(kind, getattr(net, lister))
                     for kind, _, lister, _ in _NET_KINDS}
            decided.wait()
            if released.is_set():  # else the wait failed: what the ports hold stays
                self.network_side(found)
        _side_by_side(servers, network, self.floating_ips, self.keypairs, self.credentials)

    def delete_servers(self) -> Tuple[Set[str], Dict[str, Any]]:
        """Send the deletes of every server: the recorded ones at once, those
        the cluster's tag-filtered list shows besides as it answers; their ids,
        and the servers that list showed."""
        compute = self.conn.compute
        recorded = self._recorded("servers", self._servers)
        with cf.ThreadPoolExecutor(max_workers=1) as pool:
            tagged_f = pool.submit(_tagged, self._servers, self.cid)
            self._delete_all("server", compute.delete_server, recorded)
            tagged = tagged_f.result()
        self._delete_all("server", compute.delete_server, set(tagged) - recorded)
        return recorded | set(tagged), tagged

    def _servers(self, **query: str) -> List[listing.ServerView]:
        return listing.servers(self.conn, **query)

    def wait_servers(self, ids: Set[str], listed: Dict[str, Any],
                     released: Callable[[], None] = lambda: None) -> None:
        """Until none of ``ids`` is left. Each cycle lists only the project's
        servers that changed (``changes-since``, which shows deleted servers
        as DELETED); the tagged ones are listed every ``FULL_LIST_EVERY``
        seconds, and as soon as every server left shows DELETED (Nova shows
        that just before it removes one, its ports already released: then
        ``released()`` is called). Cycles are spaced as ``POLL_FAST_MAX`` says."""
        compute = self.conn.compute
        t0 = time.monotonic()
        tagged = set(listed)
        changes = Changes(FULL_LIST_EVERY)
        changes.seen(list(listed.values()), full=True)  # listed before the deletes
        # Recorded servers the tagged listing lacks (gone already, or never
        # tagged) are looked up one by one: no changes-since listing shows a
        # server that went before it.
        gone = {sid for sid in ids - tagged
                if retry.call(compute.find_server, sid, ignore_missing=True) is None}
        ids -= gone
        deleted: Set[str] = set()  # shown DELETED, not yet missing from a listing
        interval = POLL
        confirming = False
        while ids:
            confirm = ids <= deleted
            if confirm and not confirming:
                released()
            # the first look after every server showed DELETED comes soon
            retry.SLEEP(POLL if confirm and not confirming else interval)
            confirming = confirm
            cap = POLL_FAST_MAX if time.monotonic() - t0 < FAST_FOR else POLL_MAX
            interval = min(cap, interval * 1.5)
            since = None if confirm else changes.since()
            if since is None:
                now = _tagged(self._servers, self.cid)
                present = set(now)
                tagged |= present
                # Servers recorded but never seen tagged (tagging failed) are
                # checked one by one; the others are gone once the list lacks them.
                for sid in ids - present - tagged:
                    if retry.call(compute.find_server, sid, ignore_missing=True) is not None:
                        present.add(sid)
                changes.seen(list(now.values()), full=True)
                gone |= ids - present
                ids &= present
            else:
                moved = retry.call(lambda s=since: self._servers(**{"changes-since": s}))
                changes.seen(moved, full=False)
                deleted |= {s.id for s in moved if s.id in ids and s.status == "DELETED"}
            if ids and time.monotonic() > self.deadline:
                self.errors.append("servers still deleting after %.0fs" % self.timeout)
                break
        self._forget_gone("servers", gone)

    def floating_ips(self) -> None:
        """Floating IPs need not wait for their servers (Neutron unbinds them)."""
        net = self.conn.network
        fips = self._found("floating_ips", net.ips)
        self._forget_gone("floating_ips", self._delete_all("floating IP", net.delete_ip, fips))

    def network_side(self, found: Dict[str, Set[str]]) -> None:
        """What the servers' ports held, in dependency order; ``found`` holds the
        ids of each kind (listed while the servers were going)."""
        net = self.conn.network
        done = []
        for e in self.st.entries("router_interfaces"):
            if e.router_id and e.subnet_id:
                try:
                    # positional: openstacksdk renamed subnet_id to subnet
                    retry.call(net.remove_interface_from_router, e.router_id, e.subnet_id)
                except (os_exc.NotFoundException, os_exc.BadRequestException):
                    pass
                except os_exc.SDKException as exc:
                    self.errors.append("router interface %s: %s" % (e.name, exc))
                    continue
            done.append(e.name)
        self.st.forget("router_interfaces", *done)
        for nid in found["networks"]:
            for port in retry.call(lambda n=nid: list(net.ports(network_id=n))):
                if port.device_owner != "network:dhcp":
                    self._delete("port %s" % port.id, net.delete_port, port.id,
                                 ignore_missing=True)
        for kind, label, _, deleter in _NET_KINDS:
            gone = {rid for rid in sorted(found[kind]) if self._delete(
                "%s %s" % (label, rid), getattr(net, deleter), rid, ignore_missing=True)}
            self._forget_gone(kind, gone)

    def keypairs(self) -> None:
        names = {e.name for e in self.st.entries("keypairs")} | {tags.resource_name(self.cid)}
        gone = {name for name in sorted(names) if self._delete(
            "keypair %s" % name, self.conn.compute.delete_keypair, name,
            ignore_missing=True)}
        # a keypair is named, not numbered: its record's id is its name
        self._forget_gone("keypairs", gone, by_name=True)

    def credentials(self) -> None:
        """The watchdog's application credential (:mod:`cloudcompute.autodown`),
        by its recorded id and by its name, ``cc-<cluster id>``."""
        identity, user = self.conn.identity, self.conn.current_user_id
        ids = set(self.st.ids("application_credentials"))
        if not ids or self.st.in_flight():
            try:
                ids.update(credential.find_ids(self.conn, self.cid))
            except os_exc.SDKException as exc:
                self.errors.append("application credential %s: %s"
                                   % (tags.resource_name(self.cid), exc))
        gone = {cid for cid in sorted(ids) if self._delete(
            "application credential %s" % cid, identity.delete_application_credential,
            user, cid, ignore_missing=True)}
        self._forget_gone("application_credentials", gone)

    def _forget_gone(self, kind: str, gone: Set[str], by_name: bool = False) -> None:
        """Forget the records of ``gone`` ids (names, ``by_name``), and those of
        creates that never showed within the grace period."""
        drop = []
        for e in self.st.entries(kind):
            if e.id is None:
                # Not seen by name yet: the create may still land.
                if time.monotonic() >= self.grace_end:
                    LOG.warning("%s %s: its create was in flight and nothing appeared "
                                "within the grace period; forgetting it", kind, e.name)
                    drop.append(e.name)
            elif (e.name if by_name else e.id) in gone:
                drop.append(e.name)
        self.st.forget(kind, *drop)

    def verify(self) -> List[str]:
        """What the cloud still holds for this cluster, by tag and by state (one
        list per kind, side by side)."""
        listers = (("server", self._servers), ("floating IP", self.conn.network.ips),
                   ("router", self.conn.network.routers), ("network", self.conn.network.networks),
                   ("subnet", self.conn.network.subnets),
                   ("security group", self.conn.network.security_groups))
        lists = _side_by_side(*[functools.partial(_tagged, lister, self.cid)
                                for _, lister in listers])
        left = {r.id: "%s %s (%s)" % (kind, r.name or r.id, r.id)
                for (kind, _), found in zip(listers, lists, strict=True)
                for r in found.values()}
        for kind in KINDS:
            label = kind[:-1].replace("_", " ").replace("floating ip", "floating IP")
            for e in self.st.entries(kind):
                left.setdefault(e.id or e.name, "%s %s (%s)" % (
                    label, e.name, e.id or "id unknown"))
        return sorted(left.values())
