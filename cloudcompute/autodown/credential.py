"""The cluster's application credential: what the watchdog may do, and its life.

The credential is created by ``up()`` once every resource of the cluster
exists, named ``cc-<cluster id>``, expiring at the deadline plus
:data:`MARGIN`. Its access rules (Nova and Neutron enforce them through
keystonemiddleware) name each call the watchdog makes, on this cluster's
resources by id; every other compute and network call is refused:

- compute: ``GET``/``DELETE /servers/<id>`` for each server,
  ``GET``/``DELETE /os-keypairs/cc-<cluster id>``;
- network: ``GET``/``DELETE /v2.0/floatingips/<id>`` for each floating IP,
  ``GET``/``DELETE /v2.0/security-groups/<id>`` of its group (and ``PUT`` of
  its tag ``cc-ended``), ``PUT /v2.0/ports/<id>`` of the first node's port,
  ``PUT /v2.0/{networks,subnets,routers}/<id>/tags/cc-ended`` of what it
  created.

It is *restricted* (not ``unrestricted``): Keystone does not apply access
rules to its own API, and an unrestricted credential could create new
credentials there, without rules or expiry. A restricted one cannot create
or delete any credential, itself included, so the watchdog leaves it behind
(expiring, and useless once the resources it names are gone) for ``down()``
or ``gc``. The secret never goes into a log or the state file; the state
records only the id (kind ``application_credentials``).
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

from openstack import exceptions as os_exc

from cloudcompute import retry, tags
from cloudcompute.state import ClusterState

LOG = logging.getLogger(__name__)
MARGIN = 3600.0
"""Seconds the credential outlives the deadline (the watchdog needs it to finish)."""
ENDED_TAG = "cc-ended"


@dataclasses.dataclass
class Targets:
    """This cluster's resources the watchdog may read and delete, by id."""
    servers: List[str]
    floating_ips: List[str]
    keypair: Optional[str]
    security_group: Optional[str]
    own_port: Optional[str]
    leftovers: Dict[str, List[str]] = dataclasses.field(default_factory=dict)


def _path(conn: Any, service: str) -> str:
    """The path part of a service's endpoint (``/v2.1`` for Nova, ...)."""
    return urllib.parse.urlsplit(conn.endpoint_for(service)).path.rstrip("/")


def access_rules(conn: Any, t: Targets) -> List[Dict[str, str]]:
    """The calls the watchdog makes, and nothing else."""
    c, n = _path(conn, "compute"), _path(conn, "network")
    if not n.endswith("/v2.0"):
        n += "/v2.0"
    rules = []

    def allow(service: str, method: str, path: str) -> None:
        rules.append({"service": service, "method": method, "path": path})
    for sid in t.servers:
        allow("compute", "GET", "%s/servers/%s" % (c, sid))
        allow("compute", "DELETE", "%s/servers/%s" % (c, sid))
    if t.keypair:
        allow("compute", "GET", "%s/os-keypairs/%s" % (c, t.keypair))
        allow("compute", "DELETE", "%s/os-keypairs/%s" % (c, t.keypair))
    for fid in t.floating_ips:
        allow("network", "GET", "%s/floatingips/%s" % (n, fid))
        allow("network", "DELETE", "%s/floatingips/%s" % (n, fid))
    if t.security_group:
        allow("network", "GET", "%s/security-groups/%s" % (n, t.security_group))
        allow("network", "DELETE", "%s/security-groups/%s" % (n, t.security_group))
        allow("network", "PUT", "%s/security-groups/%s/tags/%s"
              % (n, t.security_group, ENDED_TAG))
    if t.own_port:
        allow("network", "PUT", "%s/ports/%s" % (n, t.own_port))
    for kind, ids in sorted(t.leftovers.items()):
        for rid in ids:
            allow("network", "PUT", "%s/%s/%s/tags/%s" % (n, kind, rid, ENDED_TAG))
    return rules


def describe(cluster_id: str) -> str:
    """The description that marks a credential as this library's (gc looks for it)."""
    return "cloudcompute watchdog of %s" % cluster_id


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.000000")


def create(conn: Any, st: ClusterState, rules: List[Dict[str, str]],
           expires_at: float) -> Optional[Tuple[str, str]]:
    """(id, secret) of a new credential, or None (one warning) if the cloud
    refuses it; then ``gc`` stays the only net."""
    name = tags.resource_name(st.cluster_id)
    st.intend("application_credentials", name)
    try:
        cred = retry.create_checked(
            lambda: conn.identity.create_application_credential(
                conn.current_user_id, name=name, unrestricted=False,
                expires_at=_iso(expires_at), access_rules=rules,
                description=describe(st.cluster_id)),
            lambda: _find(conn, name))
    except (os_exc.BadRequestException, os_exc.ForbiddenException,
            os_exc.NotFoundException) as exc:
        st.forget("application_credentials", name)
        LOG.warning("cluster %s: the cloud refused an application credential (%s); "
                    "the cluster cannot end itself, gc is the only net for it",
                    st.name, getattr(exc, "status_code", None) or exc.__class__.__name__)
        return None
    st.created("application_credentials", name, cred.id)
    if not cred.secret:  # found again after a lost answer: its secret is gone
        delete(conn, cred.id)
        st.forget("application_credentials", name)
        LOG.warning("cluster %s: the application credential's secret was lost in "
                    "transit; autodown is off for this cluster", st.name)
        return None
    return cred.id, cred.secret


def _find(conn: Any, name: str) -> Any:
    return retry.call(conn.identity.find_application_credential, conn.current_user_id,
                      name, ignore_missing=True)


def delete(conn: Any, cred_id: str) -> None:
    """Delete one credential of this user (404 counts as deleted)."""
    retry.call(conn.identity.delete_application_credential, conn.current_user_id,
               cred_id, ignore_missing=True)


def find_ids(conn: Any, cluster_id: str) -> List[str]:
    """Ids of this user's credentials named for the cluster (none where the
    cloud does not let this user list them)."""
    try:
        found = _find(conn, tags.resource_name(cluster_id))
    except (os_exc.ForbiddenException, os_exc.NotFoundException):
        return []
    return [found.id] if found is not None else []


