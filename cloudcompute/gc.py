"""Garbage collection: find and delete clusters nobody will tear down.

Clusters are found by the library's tags in the cloud, whatever machine,
state directory or cloud name created them; a local state file only adds
what it knows (and clusters whose resources are all gone but whose state
file is left). A cluster is collectable when

- its expiry (``cc_expires`` on its servers) has passed, or
- it was not detached (``cc_detached`` on any of its servers, or its state
  file) and its owner process is gone, which is decided only on the machine
  that ran it, in the same boot and PID namespace and for the same user
  (:meth:`tags.Owner.alive`); anywhere else only the expiry counts, or
- it has no servers, no owner, no state file and is older than an hour, or
- it has no servers and its watchdog ended it: what the watchdog could not
  delete carries the tag ``cc-ended``, or its application credential
  (``cc-<cluster id>``, this user's) is all that is left.

Server metadata is untrusted input: a server whose metadata does not parse
(a bad ``cc_expires``, a ``cc_name`` that is not a cluster name...) makes gc
skip its cluster, and say so, while the others are handled as usual.
``collect`` is a dry run unless ``dry_run=False``; before deleting, it looks
at each cluster's servers again.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from openstack import exceptions as os_exc

from cloudcompute import listing, retry, tags
from cloudcompute.autodown import credential
from cloudcompute.config import NAME_RE
from cloudcompute.exceptions import CloudComputeError
from cloudcompute.record import ClusterRecord
from cloudcompute.state import ClusterState
from cloudcompute.teardown import Teardown

LOG = logging.getLogger(__name__)
GRACE_SECONDS = 3600  # untagged-by-metadata leftovers younger than this are left alone


@dataclasses.dataclass
class FoundCluster:
    """What gc knows of one cluster id."""
    cluster_id: str
    name: Optional[str] = None
    resources: List[str] = dataclasses.field(default_factory=list)
    expires_at: Optional[float] = None
    owner: Optional[str] = None
    detached: bool = False
    oldest: Optional[float] = None
    created: Optional[float] = None
    """The earliest creation time its servers' metadata (``cc_created``) or its
    state file records; ``oldest`` is the cloud's own, of any resource."""
    state_file: Optional[str] = None
    reason: Optional[str] = None
    problems: List[str] = dataclasses.field(default_factory=list)
    """Why gc will not touch this cluster: its servers' metadata did not parse."""
    owners: Set[tags.Owner] = dataclasses.field(default_factory=set, repr=False)
    servers: int = 0
    ended: bool = False
    """It has no servers, and its watchdog tagged what it left ``cc-ended`` or
    its application credential is all that is left (:mod:`cloudcompute.autodown`)."""

    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("owners", "servers")}
        d["resources"] = list(self.resources)
        d["problems"] = list(self.problems)
        return d

    def problem(self, text: str) -> None:
        LOG.warning("gc skips cluster %s: %s", self.cluster_id, text)
        self.problems.append(text)


def _later(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return max([x for x in (a, b) if x is not None], default=None)


def _add_server(r: FoundCluster, s: Any) -> None:
    r.servers += 1
    r.resources.append("server %s" % s.name)
    r.oldest = min(filter(None, [r.oldest, listing.parse_time(s.created_at)]), default=None)
    try:
        meta = tags.parse_server_metadata(s.metadata, r.cluster_id)
    except ValueError as exc:
        r.problem("server %s (%s): %s" % (s.name, s.id, exc))
        return
    if meta.name:
        if r.name and r.name != meta.name:
            r.problem("servers disagree on the cluster name (%s, %s)" % (r.name, meta.name))
        r.name = r.name or meta.name
    # Several servers, or a server and the state file: the latest expiry wins.
    r.expires_at = _later(r.expires_at, meta.expires)
    r.created = min(filter(None, [r.created, meta.created]), default=None)
    if meta.owner is not None:
        r.owners.add(meta.owner)
        r.owner = r.owner or str(meta.owner)
    r.detached = r.detached or meta.detached


def _add_state(r: FoundCluster, st: ClusterState) -> None:
    r.name = r.name or st.name
    r.state_file = st.path
    r.created = min(filter(None, [r.created, st.record.created_at]), default=None)
    if st.record.expires_at is not None:
        r.expires_at = _later(r.expires_at, float(st.record.expires_at))
    r.detached = r.detached or st.record.detached
    if not r.servers:
        # No server carries an owner: the state file's record is all there is.
        if st.record.owner_id is not None:
            r.owners.add(st.record.owner_id)
        r.owner = r.owner or st.record.owner
        if st.count() and not r.resources:
            r.resources = st.listing()


def survey(conn: Any, state_dir: Optional[str] = None,
           cluster_id: Optional[str] = None) -> Dict[str, FoundCluster]:
    """Every cluster found in the cloud by tag, plus state files of this cloud
    whose clusters have nothing tagged left (only ``cluster_id``'s, if given)."""
    recs: Dict[str, FoundCluster] = {}

    def rec(cid: str) -> FoundCluster:
        if cid not in recs:
            recs[cid] = FoundCluster(cid)
            if not tags.valid_cluster_id(cid):
                recs[cid].problem("the cluster tag %r is not a cluster id" % cid[:60])
        return recs[cid]

    wanted = tags.MARK if cluster_id is None else tags.CLUSTER_TAG + cluster_id
    for s in retry.call(lambda: list(conn.compute.servers(tags=wanted))):
        cid = tags.cluster_of(s.tags)
        if cid and (cluster_id is None or cid == cluster_id):
            _add_server(rec(cid), s)
    net = conn.network
    for kind, lister in (("floating IP", net.ips), ("router", net.routers),
                         ("network", net.networks), ("subnet", net.subnets),
                         ("security group", net.security_groups)):
        for x in retry.call(lambda lister=lister: list(lister(tags=wanted))):
            cid = tags.cluster_of(x.tags)
            if cid and (cluster_id is None or cid == cluster_id):
                r = rec(cid)
                r.resources.append("%s %s" % (kind, x.name or x.id))
                r.ended = r.ended or credential.ENDED_TAG in (x.tags or [])
                created = listing.parse_time(getattr(x, "created_at", None))
                r.oldest = min(filter(None, [r.oldest, created]), default=None)
    alone = _named(conn, recs, rec, cluster_id)
    for st in ClusterState.all(state_dir):
        if cluster_id is not None and st.cluster_id != cluster_id:
            continue
        if st.cluster_id in recs:
            _add_state(recs[st.cluster_id], st)  # whatever cloud name it was recorded under
        elif st.record.cloud in (None, conn.config.name) \
                and tags.valid_cluster_id(st.cluster_id):
            # Nothing tagged in this cloud: resources gone, or not created yet.
            _add_state(rec(st.cluster_id), st)
    for cid, name in alone:  # a cluster's keypair with nothing else of it left anywhere
        r = rec(cid)
        r.resources.append("keypair %s" % name)
        if r.state_file is None:  # keypairs carry no tags: their age is all there is
            r.oldest = _keypair_created(conn, name)
    for r in recs.values():
        _check_name(r)
    return recs


def _named(conn: Any, recs: Dict[str, FoundCluster], rec: Callable[[str], FoundCluster],
           cluster_id: Optional[str]) -> List[Tuple[str, str]]:
    """Add the untagged resources named ``cc-<cluster id>``: keypairs, and this
    user's application credentials that the watchdog's description marks.
    Return (cluster id, name) of keypairs of clusters not found otherwise."""
    alone = []
    for kp in retry.call(lambda: list(conn.compute.keypairs())):
        cid = tags.cluster_id_from_resource_name(kp.name)
        if cid is None:
            continue
        if cid in recs:
            recs[cid].resources.append("keypair %s" % kp.name)
        elif tags.generated_cluster_id(cid) and (cluster_id is None or cid == cluster_id):
            alone.append((cid, kp.name))  # keypairs carry no tags: only the strict name counts
    for cred in _credentials(conn):
        cid = tags.cluster_id_from_resource_name(cred.name)
        if cid is not None and (cluster_id is None or cid == cluster_id) \
                and cred.description == credential.describe(cid):
            r = rec(cid)
            r.resources.append("application credential %s" % cred.name)
            r.ended = r.ended or not r.servers
    return alone


def _check_name(r: FoundCluster) -> None:
    """A cluster gc may have to delete without its state file is recorded for
    teardown under the name its id starts with: an id that starts with no
    cluster name (a valid id may be longer than any name) is a problem."""
    if r.name is None and not r.problems and not NAME_RE.match(tags.name_of(r.cluster_id)):
        r.problem("the cluster id %r does not start with a cluster name, and nothing "
                  "else names the cluster" % r.cluster_id)


def _keypair_created(conn: Any, name: str) -> Optional[float]:
    """When a keypair was created (the list omits it); None if it is gone."""
    try:
        keypair = retry.call(conn.compute.get_keypair, name)
        return listing.parse_time(getattr(keypair, "created_at", None))
    except os_exc.NotFoundException:
        return None


def _credentials(conn: Any) -> List[Any]:
    """This user's application credentials (none where the cloud refuses the list)."""
    try:
        return retry.call(lambda: list(conn.identity.application_credentials(
            user=conn.current_user_id)))
    except (os_exc.ForbiddenException, os_exc.NotFoundException):
        return []


def orphan_reason(r: FoundCluster, now: float) -> Optional[str]:
    """Why this cluster may be collected, or None if it must be left alone."""
    if r.problems:
        return None
    if r.ended and not r.servers:
        return "ended by its watchdog"
    if r.expires_at is not None and r.expires_at < now:
        return "expired %s" % time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.expires_at))
    if r.detached:
        return None
    if len(r.owners) == 1:
        owner = next(iter(r.owners))
        if owner.alive() is False:
            return "owner process %s is gone" % owner
    if r.expires_at is None and not r.owners and r.owner is None and r.state_file is None \
            and r.oldest is not None and now - r.oldest > GRACE_SECONDS:
        return "no servers and no state file, older than %ds" % GRACE_SECONDS
    return None


def assess(conn: Any, state_dir: Optional[str] = None, now: Optional[float] = None,
           cluster_id: Optional[str] = None) -> List[FoundCluster]:
    """Every cluster found, with ``reason`` set where it may be collected."""
    now = time.time() if now is None else now
    out = list(survey(conn, state_dir, cluster_id).values())
    for r in out:
        r.reason = orphan_reason(r, now)
    return sorted(out, key=lambda r: r.cluster_id)


def find_orphans(conn: Any, state_dir: Optional[str] = None,
                 now: Optional[float] = None) -> List[FoundCluster]:
    # An empty record (no resources) still has its state file to remove.
    return [r for r in assess(conn, state_dir, now)
            if r.reason and (r.resources or r.state_file)]


def _teardown_state(r: FoundCluster) -> ClusterState:
    """The cluster's own state file, or a scratch record of its id in a temp dir."""
    if r.state_file:
        st = ClusterState.load(os.path.basename(r.state_file)[:-5],
                               os.path.dirname(r.state_file))
        if st.cluster_id == r.cluster_id:
            return st
    name = r.name or tags.name_of(r.cluster_id)
    return ClusterState.create(ClusterRecord(name=name, cluster_id=r.cluster_id),
                               tempfile.mkdtemp(prefix="cloudcompute-gc-"))


@dataclasses.dataclass
class GcOutcome:
    """What ``collect`` did with one cluster: ``deleted``; ``error``, why its
    deletion failed; ``skipped``, why gc left it alone."""
    found: FoundCluster
    deleted: bool = False
    error: Optional[str] = None
    skipped: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """The cluster's fields with ``deleted``, and ``error`` and ``skipped``
        where set (as ``cloudcompute gc --json`` shows them)."""
        d = dict(self.found.to_dict(), deleted=self.deleted)
        if self.error is not None:
            d["error"] = self.error
        if self.skipped is not None:
            d["skipped"] = self.skipped
        return d


def collect(conn: Any, dry_run: bool = True, state_dir: Optional[str] = None,
            timeout: float = 300.0) -> List[GcOutcome]:
    """Delete orphaned clusters (or, with dry_run, only say what would go).

    The report lists every collectable cluster (``deleted``, and ``error`` on
    failure) and every cluster gc skipped because of bad metadata
    (``skipped``); the cluster's ``problems`` say what was wrong."""
    report = []
    for r in assess(conn, state_dir):
        if r.problems:
            report.append(GcOutcome(r, skipped="; ".join(r.problems)))
            continue
        if not (r.reason and (r.resources or r.state_file)):
            continue
        outcome = GcOutcome(r)
        if not dry_run:
            _delete(conn, outcome, state_dir, timeout)
        report.append(outcome)
        LOG.info("gc %s %s: %s (%d resources)", "deleted" if outcome.deleted else
                 "would delete", r.cluster_id, r.reason, len(r.resources))
    return report


def _delete(conn: Any, outcome: GcOutcome, state_dir: Optional[str], timeout: float) -> None:
    r = outcome.found
    # Look again: it may have been detached, extended or forged since the survey.
    again = assess(conn, state_dir, cluster_id=r.cluster_id)
    if not again or again[0].reason is None:
        why = "; ".join(again[0].problems) if again and again[0].problems \
            else "no longer collectable"
        outcome.skipped = why
        LOG.warning("gc leaves %s: %s", r.cluster_id, why)
        return
    scratch = None
    try:
        st = _teardown_state(r)
        if not r.state_file or st.path != r.state_file:
            scratch = os.path.dirname(st.path)
        Teardown(conn, st, timeout).run()
        outcome.deleted = True
    except CloudComputeError as exc:
        outcome.error = str(exc)
        LOG.error("gc of %s incomplete: %s", r.cluster_id, exc)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
