"""Start the watchdog on the first node, and move the cluster's deadline.

``prepare`` runs in ``up()`` while the nodes boot (``ClusterSpec.autodown``):
it creates the application credential (:mod:`.credential`) and the
watchdog's config. ``start`` runs once the nodes answer SSH: it ships the
``ccwatch`` package (:mod:`.rest`, :mod:`.watchdog`, stdlib only) to
``~/.cloudcompute/autodown`` on the first node with its config, writes the
secret there in a file only the login user can read (over the SSH channel's
stdin, never on a command line or in a log), and starts the watchdog
detached (its own session; it outlives the SSH connection and the client).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any, Dict, Optional, Sequence

from openstack import exceptions as os_exc

from cloudcompute import listing, nodeside, retry, tags
from cloudcompute.autodown import credential
from cloudcompute.exceptions import CloudComputeError, ConfigError
from cloudcompute.jobs.protocol import NODE_DIR
from cloudcompute.state import ClusterState

LOG = logging.getLogger(__name__)
REMOTE_DIR = NODE_DIR + "/autodown"
PACKAGE = "ccwatch"
_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES: Dict[str, bytes] = {"__init__.py": b""}
for _name in ("rest.py", "watchdog.py"):
    with open(os.path.join(_HERE, _name), "rb") as _f:
        SOURCES[_name] = _f.read()
LAUNCH = ("import sys; sys.path.insert(0, sys.argv[1]); "
          "from ccwatch.watchdog import main; sys.exit(main(sys.argv[1:]))")
WRITE = nodeside.source("write_files")
"""Writes the files of a JSON object read from stdin under the directory argv[1]
(:mod:`cloudcompute.nodeside.write_files`)."""
POLL = 15.0
"""Seconds between the watchdog's looks at its deadline and the node's activity
(``CLOUDCOMPUTE_WATCHDOG_POLL``, 1 to 300, where the client sets it)."""


def poll_seconds() -> float:
    """The watchdog's poll for a cluster brought up now."""
    try:
        value = float(os.environ.get("CLOUDCOMPUTE_WATCHDOG_POLL", POLL))
    except ValueError:
        return POLL
    return min(max(value, 1.0), 300.0) if value == value else POLL


def targets(conn: Any, st: ClusterState, first: Any,
            known: Optional[credential.Targets] = None
            ) -> credential.Targets:
    """The cluster's resources the watchdog will delete, as recorded; ``first``
    is the node that runs it. Its port is listed unless ``known`` targets of
    the same node carry it."""
    if known is not None and known.own_port is not None:
        own_port: Optional[str] = known.own_port
    else:
        ports = list(retry.call(lambda: list(conn.network.ports(device_id=first.server_id))))
        own_port = ports[0].id if len(ports) == 1 else None
    return credential.Targets(
        servers=st.ids("servers"), floating_ips=st.ids("floating_ips"),
        keypair=min((e.name for e in st.entries("keypairs")), default=None),
        security_group=next(iter(st.ids("security_groups")), None),
        own_port=own_port,
        leftovers={k: ids for k in ("routers", "subnets", "networks") if (ids := st.ids(k))})


def _default_group(conn: Any) -> Optional[str]:
    try:
        # one filtered list (a find would first try "default" as an id)
        sg = next(iter(retry.call(lambda: list(conn.network.security_groups(
            name="default", project_id=conn.current_project_id)))), None)
    except os_exc.SDKException as exc:
        LOG.info("no default security group found (%s): the watchdog will leave the "
                 "cluster's group for gc", exc)
        return None
    return sg.id if sg is not None else None


@dataclasses.dataclass
class Prepared:
    """A watchdog ready to ship: its credential (made) and its config."""
    targets: credential.Targets
    credential_id: str
    secret: str = dataclasses.field(repr=False)
    config: Dict[str, Any] = dataclasses.field(default_factory=dict)


def prepare(conn: Any, st: Any, spec: Any, nodes: Sequence[Any]) -> Optional[Prepared]:
    """The credential and config of the watchdog of ``nodes`` (the first runs
    it); None (after one warning) if the cloud refused the credential. Needs
    no SSH: ``up()`` runs it while the nodes boot."""
    first = sorted(nodes, key=lambda n: n.name)[0]
    t = targets(conn, st, first)
    deadline = float(st.record.expires_at)
    made = credential.create(conn, st, credential.access_rules(conn, t),
                             deadline + credential.MARGIN)
    if made is None:
        return None
    cred_id, secret = made
    config = {
        "cluster_id": st.cluster_id, "server_id": first.server_id,
        "servers": t.servers, "floating_ips": t.floating_ips, "keypair": t.keypair,
        "security_group": t.security_group, "own_port": t.own_port,
        "default_security_group": _default_group(conn), "leftovers": t.leftovers,
        "auth_url": conn.endpoint_for("identity"), "api_host": spec.node_api_host,
        "region": conn.config.get_region_name() or None,
        "interface": conn.config.get_interface() or "public",
        "deadline": deadline, "idle_minutes": spec.idle_minutes, "poll": poll_seconds(),
        "timeout": spec.timeouts.teardown, "credential_id": cred_id,
    }
    return Prepared(t, cred_id, secret, config)


def start(cluster: Any, prepared: Optional[Prepared] = None) -> bool:
    """Give the cluster its watchdog; False (after one warning) if the cloud
    refused the credential. A ``prepared`` one whose targets no longer match
    the cluster (a node was dropped or replaced since) is replaced."""
    st, conn = cluster.state, cluster.conn
    first = cluster.nodes[0]
    if prepared is not None and (
            prepared.config["server_id"] != first.server_id
            or prepared.targets != targets(conn, st, first, known=prepared.targets)):
        LOG.info("cluster %s: its nodes changed while they booted; new watchdog "
                 "credential", cluster.name)
        credential.delete(conn, prepared.credential_id)
        st.forget("application_credentials", tags.resource_name(st.cluster_id))
        prepared = None
    if prepared is None:
        prepared = prepare(conn, st, cluster.spec, cluster.nodes)
    if prepared is None:
        return False
    files = {"%s/%s" % (PACKAGE, name): source.decode() for name, source in SOURCES.items()}
    files["config.json"] = json.dumps(prepared.config)
    files["credential.json"] = json.dumps({"id": prepared.credential_id,
                                           "secret": prepared.secret})
    _send(cluster.connection(first.name), files, start_watchdog=True)
    deadline = prepared.config["deadline"]
    LOG.info("cluster %s: watchdog started on %s (deadline %s%s)", cluster.name,
             first.name, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(deadline)),
             "" if cluster.spec.idle_minutes is None
             else ", idle %g min" % cluster.spec.idle_minutes)
    return True


def _send(node: Any, files: Dict[str, str], start_watchdog: bool = False) -> None:
    """``files`` (paths under the watchdog's directory) written on the node,
    readable by the login user only, in one command that reads them from
    stdin; then, if asked, the watchdog started detached from the session."""
    script = 'umask 077 && python3 -c "$1" "$3"'
    if start_watchdog:
        script += ' && { setsid nohup python3 -c "$2" "$3" >/dev/null 2>&1 </dev/null & }'
    node.run(["sh", "-c", script, "sh", WRITE, LAUNCH, REMOTE_DIR],
             stdin=json.dumps(files).encode())


def status(cluster: Any) -> Dict[str, Any]:
    """The watchdog's last report (``state``, ``deadline``, ``last_active``...),
    or ``{}`` when it has written none."""
    node = cluster.connection(cluster.nodes[0].name)
    out = node.run(["cat", REMOTE_DIR + "/status.json"], warn=True)
    if not out.ok:
        return {}
    try:
        data = json.loads(out.stdout[:65536])
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def extend(cluster: Any, hours: float) -> float:
    """Move the deadline to ``max(deadline, now) + hours``; return it (epoch
    seconds). It goes into every server's metadata, where the watchdog and gc
    read it, and into the state file; the watchdog's credential is renewed
    when it would expire first."""
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not hours > 0:
        raise ConfigError(["hours must be a positive number, got %r" % (hours,)])
    st = cluster.state
    if st is None:
        raise CloudComputeError("cluster %s is not up" % cluster.name)
    now = time.time()
    with st.locked():
        new = max(st.record.expires_at or now, now) + hours * 3600
        st.record.expires_at = new
        st.save()
    failed = []
    for sid in cluster._server_ids():
        try:
            retry.call(functools.partial(cluster.conn.compute.set_server_metadata, sid,
                                         **{tags.META_EXPIRES: "%d" % new}))
        except os_exc.NotFoundException:
            pass
        except os_exc.SDKException as exc:
            failed.append("%s (%s)" % (sid, exc))
    if failed:
        raise CloudComputeError("cluster %s: could not move the deadline of %s"
                                % (cluster.name, ", ".join(failed)))
    _renew_credential(cluster, new)
    LOG.info("cluster %s: deadline moved to %s", cluster.name,
             time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(new)))
    return new


def _renew_credential(cluster: Any, deadline: float) -> None:
    """A credential that would expire before the new deadline (plus half the
    margin) is replaced: the old one deleted, a new one of the same name and
    rules written to the node, where the watchdog reads it on its next pass."""
    conn, st = cluster.conn, cluster.state
    for entry in st.entries("application_credentials"):
        try:
            cred = retry.call(conn.identity.get_application_credential,
                              conn.current_user_id, entry.id or entry.name)
        except os_exc.NotFoundException:
            continue
        expires = listing.parse_time(cred.expires_at)
        if expires is None or expires >= deadline + credential.MARGIN / 2:
            continue
        credential.delete(conn, cred.id)
        st.forget("application_credentials", entry.name)
        made = credential.create(conn, st, credential.access_rules(
            conn, targets(conn, st, cluster.nodes[0])), deadline + credential.MARGIN)
        if made is not None:
            node = cluster.connection(cluster.nodes[0].name)
            _send(node, {"credential.json": json.dumps({"id": made[0], "secret": made[1]})})
            LOG.info("cluster %s: the watchdog's credential renewed until the new deadline",
                     cluster.name)
