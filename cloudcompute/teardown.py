"""Delete a cluster in dependency order, idempotently, and verify by listing.

Order: servers (then wait until they are gone), floating IPs, router
interfaces, routers, ports, subnets, networks, security groups, keypairs,
the watchdog's application credential.
A 404 counts as deleted, so teardown can be run again after any failure.
Resources are found both from the state file and by the cluster's tag, so
that a crash between a create call and its state record loses nothing.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import logging
import os
import time
from typing import Any, Callable, Dict, List, Set

from openstack import exceptions as os_exc

from cloudcompute import retry, tags
from cloudcompute.autodown import credential
from cloudcompute.exceptions import TeardownError
from cloudcompute.state import ClusterState

LOG = logging.getLogger(__name__)

# A create whose answer never came (interrupted, or the connection dropped)
# may still be carried out by the cloud after the teardown has looked for
# it. Teardown keeps looking for such resources by name this long.
IN_FLIGHT_GRACE = 15.0


def _ids(st: ClusterState, kind: str) -> Dict[str, str]:
    return {e["id"]: n for n, e in st.resources[kind].items() if e.get("id")}


def _tagged(lister: Callable[..., Any], cluster_id: str) -> Dict[str, Any]:
    """Resources carrying both the library's mark and the cluster's tag (the
    APIs match every tag of a comma-separated list)."""
    return {r.id: r for r in retry.call(lambda: list(lister(
        tags=",".join(tags.tags(cluster_id)))))}


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

    def _recorded(self, kind: str, lister: Callable[..., Any]) -> Set[str]:
        """Ids in the state file, plus those of creates whose answer never came
        (an intent without an id), looked up by their unique name."""
        ids = set(_ids(self.st, kind))
        for name, e in self.st.resources[kind].items():
            if e.get("id"):
                continue
            if kind == "floating_ips":
                found = [r for r in retry.call(lambda e=e: list(lister(
                    port_id=e.get("port_id")))) if e.get("port_id")]
            else:
                found = [r for r in retry.call(lambda n=name: list(lister(name=n)))
                         if r.name == name]
            for r in found[:1]:
                self.st.created(kind, name, r.id)
                ids.add(r.id)
        return ids

    def _delete(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        try:
            retry.call(fn, *args, attempts=6, **kw)
        except os_exc.NotFoundException:
            pass
        except os_exc.SDKException as exc:
            self.errors.append("%s: %s" % (what, exc))
            LOG.warning("could not delete %s: %s", what, exc)

    def _delete_all(self, what: str, fn: Callable[..., Any], ids: Any) -> None:
        """Delete many of one kind at once (the API calls, not the waits, run in parallel)."""
        ids = sorted(ids)
        if len(ids) < 2:
            for rid in ids:
                self._delete("%s %s" % (what, rid), fn, rid, ignore_missing=True)
            return
        with cf.ThreadPoolExecutor(max_workers=min(8, len(ids))) as pool:
            for f in [pool.submit(self._delete, "%s %s" % (what, rid), fn, rid,
                                  ignore_missing=True) for rid in ids]:
                f.result()

    def run(self) -> Dict[str, float]:
        t0 = time.monotonic()
        self.servers()
        self.timings["servers"] = time.monotonic() - t0
        self.network_side()
        self.keypairs()
        self.credentials()
        # Look again for creates that were in flight; the first pass after the
        # grace period forgets those that never appeared.
        while self._in_flight() and time.monotonic() < self.deadline:
            LOG.info("waiting for creates that were in flight: %s", self._in_flight())
            retry.SLEEP(1.0)
            self.servers()
            self.network_side()
            self.keypairs()
            self.credentials()
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

    def servers(self) -> None:
        compute = self.conn.compute
        ids = self._recorded("servers", compute.servers) | set(
            _tagged(compute.servers, self.cid))
        self._delete_all("server", compute.delete_server, ids)
        while ids:
            present = set(_tagged(compute.servers, self.cid))
            # Servers recorded but not tagged (tagging failed) are checked one by one.
            for sid in ids - present:
                if retry.call(compute.find_server, sid, ignore_missing=True) is not None:
                    present.add(sid)
            ids &= present
            if not ids:
                break
            if time.monotonic() > self.deadline:
                self.errors.append("servers still deleting after %.0fs" % self.timeout)
                break
            retry.SLEEP(0.25)
        self._forget_missing("servers", compute.find_server)

    def network_side(self) -> None:
        net = self.conn.network
        fips = self._recorded("floating_ips", net.ips) | set(_tagged(net.ips, self.cid))
        self._delete_all("floating IP", net.delete_ip, fips)
        for name, e in list(self.st.resources["router_interfaces"].items()):
            if e.get("router_id") and e.get("subnet_id"):
                try:
                    # positional: openstacksdk renamed subnet_id to subnet
                    retry.call(net.remove_interface_from_router, e["router_id"],
                               e["subnet_id"])
                except (os_exc.NotFoundException, os_exc.BadRequestException):
                    pass
                except os_exc.SDKException as exc:
                    self.errors.append("router interface %s: %s" % (name, exc))
                    continue
            self.st.forget("router_interfaces", name)
        routers = self._recorded("routers", net.routers) | set(_tagged(net.routers, self.cid))
        for rid in routers:
            self._delete("router %s" % rid, net.delete_router, rid, ignore_missing=True)
        networks = self._recorded("networks", net.networks) | set(_tagged(net.networks, self.cid))
        for nid in networks:
            for port in retry.call(lambda n=nid: list(net.ports(network_id=n))):
                if port.device_owner != "network:dhcp":
                    self._delete("port %s" % port.id, net.delete_port, port.id,
                                 ignore_missing=True)
        subnets = self._recorded("subnets", net.subnets) | set(_tagged(net.subnets, self.cid))
        for sid in subnets:
            self._delete("subnet %s" % sid, net.delete_subnet, sid, ignore_missing=True)
        for nid in networks:
            self._delete("network %s" % nid, net.delete_network, nid, ignore_missing=True)
        sgs = self._recorded("security_groups", net.security_groups) | set(
            _tagged(net.security_groups, self.cid))
        for gid in sgs:
            self._delete("security group %s" % gid, net.delete_security_group, gid,
                         ignore_missing=True)
        for kind, finder in (("floating_ips", net.find_ip), ("routers", net.find_router),
                             ("subnets", net.find_subnet), ("networks", net.find_network),
                             ("security_groups", net.find_security_group)):
            self._forget_missing(kind, finder)

    def keypairs(self) -> None:
        names = set(self.st.resources["keypairs"]) | {tags.resource_name(self.cid)}
        for name in names:
            self._delete("keypair %s" % name, self.conn.compute.delete_keypair, name,
                         ignore_missing=True)
            entry = self.st.resources["keypairs"].get(name)
            if retry.call(self.conn.compute.find_keypair, name, ignore_missing=True) is None \
                    and (entry is None or entry.get("id")
                         or time.monotonic() >= self.grace_end):
                self.st.forget("keypairs", name)

    def credentials(self) -> None:
        """The watchdog's application credential (:mod:`cloudcompute.autodown`),
        by its recorded id and by its name, ``cc-<cluster id>``."""
        identity, user = self.conn.identity, self.conn.current_user_id
        ids = set(_ids(self.st, "application_credentials"))
        try:
            ids.update(credential.find_ids(self.conn, self.cid))
        except os_exc.SDKException as exc:
            self.errors.append("application credential %s: %s"
                               % (tags.resource_name(self.cid), exc))
        for cid in sorted(ids):
            self._delete("application credential %s" % cid,
                         identity.delete_application_credential, user, cid,
                         ignore_missing=True)
        self._forget_missing("application_credentials", functools.partial(
            identity.find_application_credential, user))

    def _in_flight(self) -> List[str]:
        """Creates recorded as intended whose resource has not been seen yet."""
        return sorted("%s %s" % (kind, name) for kind, entries in self.st.resources.items()
                      for name, e in entries.items() if not e.get("id"))

    def _forget_missing(self, kind: str, finder: Callable[..., Any]) -> None:
        for name, e in list(self.st.resources[kind].items()):
            rid = e.get("id")
            if rid is None:
                # Not seen by name yet: the create may still land.
                if time.monotonic() >= self.grace_end:
                    LOG.warning("%s %s: its create was in flight and nothing appeared "
                                "within the grace period; forgetting it", kind, name)
                    self.st.forget(kind, name)
            elif retry.call(finder, rid, ignore_missing=True) is None:
                self.st.forget(kind, name)

    def verify(self) -> List[str]:
        """What the cloud still holds for this cluster, by tag and by state (once each)."""
        left = {r.id: "%s %s (%s)" % (kind, r.name or r.id, r.id) for kind, lister in (
            ("server", self.conn.compute.servers), ("floating IP", self.conn.network.ips),
            ("router", self.conn.network.routers), ("network", self.conn.network.networks),
            ("subnet", self.conn.network.subnets),
            ("security group", self.conn.network.security_groups))
            for r in _tagged(lister, self.cid).values()}
        for kind in self.st.resources:
            label = kind[:-1].replace("_", " ").replace("floating ip", "floating IP")
            for name, e in self.st.resources[kind].items():
                left.setdefault(e.get("id") or name, "%s %s (%s)" % (
                    label, name, e.get("id") or "id unknown"))
        return sorted(left.values())
