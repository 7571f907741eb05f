"""Garbage collection: find and delete clusters nobody will tear down.

A cluster is collectable when its expiry has passed, or when the process
that owns it is gone (on this host) and it was not detached on purpose.
Only resources carrying the library's ``cloudcompute`` tag (or its keypair
name) are considered, so gc never touches anything it did not create.
``collect`` is a dry run unless ``dry_run=False``.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import tempfile
import time
from typing import Any, Dict, List, Optional

from cloudcompute import retry, tags
from cloudcompute.exceptions import CloudComputeError
from cloudcompute.state import ClusterState
from cloudcompute.teardown import Teardown

LOG = logging.getLogger(__name__)
GRACE_SECONDS = 3600  # untagged-by-metadata leftovers younger than this are left alone


@dataclasses.dataclass
class ClusterRecord:
    """What gc knows of one cluster id."""
    cluster_id: str
    name: Optional[str] = None
    resources: List[str] = dataclasses.field(default_factory=list)
    expires_at: Optional[float] = None
    owner: Optional[str] = None
    detached: bool = False
    oldest: Optional[float] = None
    state_file: Optional[str] = None
    reason: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _ts(value: Any) -> Optional[float]:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def survey(conn: Any, state_dir: Optional[str] = None) -> Dict[str, ClusterRecord]:
    """Every cluster id found in the cloud (by tag) or in the local state files."""
    recs: Dict[str, ClusterRecord] = {}

    def rec(cid: str) -> ClusterRecord:
        return recs.setdefault(cid, ClusterRecord(cid))

    for s in retry.call(lambda: list(conn.compute.servers(tags=tags.MARK))):
        cid = tags.cluster_of(s.tags)
        if not cid:
            continue
        r = rec(cid)
        meta = s.metadata or {}
        r.name = r.name or meta.get(tags.META_NAME)
        r.owner = r.owner or meta.get(tags.META_OWNER)
        if meta.get(tags.META_EXPIRES):
            r.expires_at = float(meta[tags.META_EXPIRES])
        r.resources.append("server %s" % s.name)
        created = _ts(s.created_at)
        r.oldest = min(filter(None, [r.oldest, created]), default=None)
    net = conn.network
    for kind, lister in (("floating IP", net.ips), ("router", net.routers),
                         ("network", net.networks), ("subnet", net.subnets),
                         ("security group", net.security_groups)):
        for x in retry.call(lambda lister=lister: list(lister(tags=tags.MARK))):
            cid = tags.cluster_of(x.tags)
            if cid:
                r = rec(cid)
                r.resources.append("%s %s" % (kind, x.name or x.id))
                created = _ts(getattr(x, "created_at", None))
                r.oldest = min(filter(None, [r.oldest, created]), default=None)
    for kp in retry.call(lambda: list(conn.compute.keypairs())):
        if kp.name.startswith("cc-") and kp.name[3:] in recs:
            recs[kp.name[3:]].resources.append("keypair %s" % kp.name)
    for st in ClusterState.all(state_dir):
        if st.data.get("cloud") not in (None, conn.config.name):
            continue
        r = rec(st.cluster_id)
        r.name = st.name
        r.state_file = st.path
        r.expires_at = st.data.get("expires_at", r.expires_at)
        r.owner = st.data.get("owner", r.owner)
        r.detached = bool(st.data.get("detached"))
        if st.count() and not r.resources:
            r.resources = st.listing()
    return recs


def orphan_reason(r: ClusterRecord, now: float) -> Optional[str]:
    """Why this cluster may be collected, or None if it must be left alone."""
    if r.expires_at is not None and r.expires_at < now:
        return "expired %s" % time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.expires_at))
    if r.owner and not r.detached and tags.owner_alive(r.owner) is False:
        return "owner process %s is gone" % r.owner
    if r.expires_at is None and r.owner is None and r.state_file is None \
            and r.oldest is not None and now - r.oldest > GRACE_SECONDS:
        return "no servers and no state file, older than %ds" % GRACE_SECONDS
    return None


def find_orphans(conn: Any, state_dir: Optional[str] = None,
                 now: Optional[float] = None) -> List[ClusterRecord]:
    now = time.time() if now is None else now
    out = []
    for r in survey(conn, state_dir).values():
        r.reason = orphan_reason(r, now)
        if r.reason and r.resources:
            out.append(r)
        elif r.reason and r.state_file:
            out.append(r)  # an empty record: only the state file goes
    return sorted(out, key=lambda r: r.cluster_id)


def collect(conn: Any, dry_run: bool = True, state_dir: Optional[str] = None,
            timeout: float = 300.0) -> List[Dict[str, Any]]:
    """Delete orphaned clusters (or, with dry_run, only say what would go)."""
    report = []
    for r in find_orphans(conn, state_dir):
        entry = dict(r.to_dict(), deleted=False)
        if not dry_run:
            if r.state_file:
                st = ClusterState.load(r.name, state_dir)
            else:
                tmp = tempfile.mkdtemp(prefix="cloudcompute-gc-")
                st = ClusterState.create(r.name or r.cluster_id,
                                         {"name": r.name or r.cluster_id,
                                          "cluster_id": r.cluster_id}, tmp)
            try:
                Teardown(conn, st, timeout).run()
                entry["deleted"] = True
            except CloudComputeError as exc:
                entry["error"] = str(exc)
                LOG.error("gc of %s incomplete: %s", r.cluster_id, exc)
        report.append(entry)
        LOG.info("gc %s %s: %s (%d resources)", "deleted" if entry["deleted"] else
                 "would delete", r.cluster_id, r.reason, len(r.resources))
    return report
