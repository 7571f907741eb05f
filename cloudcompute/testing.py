"""Clusters for tests: unique names, always torn down, checked by listing.

The machinery behind the pytest plugin (``cloudcompute_pytest``), usable
without pytest. A :class:`ClusterPool` brings clusters up under names of
their own and tears them all down in ``close()``, which never raises for
what the cloud kept: it returns a :class:`PoolReport` naming the leftovers.
With ``keep_hours`` the clusters are detached instead, with an expiry that
many hours away. :func:`tagged_leftovers` lists, through the connection it
is given, what the library tagged for clusters of given names.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set

from cloudcompute import config, gc, retry, tags
from cloudcompute.cluster import Cluster
from cloudcompute.config import ClusterSpec, NodeGroup, Timeouts
from cloudcompute.exceptions import CloudComputeError, ConfigError, TeardownError

LOG = logging.getLogger(__name__)

SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(ClusterSpec) if f.name != "name")
"""The keyword arguments a test may give for its cluster (ClusterSpec's fields)."""


def spec_problems(kwargs: Mapping[str, Any], where: str) -> List[str]:
    """What is wrong with ``kwargs`` as ClusterSpec fields; ``where`` names their origin."""
    unknown = sorted(set(kwargs) - set(SPEC_FIELDS) - {"name"})
    if not unknown:
        return []
    return ["%s: unknown ClusterSpec field%s %s (known: %s)" % (
        where, "s" if len(unknown) > 1 else "", ", ".join(unknown), ", ".join(SPEC_FIELDS))]


def make_spec(name: str, kwargs: Mapping[str, Any]) -> ClusterSpec:
    """A ClusterSpec from keyword arguments; groups and timeouts may be dicts or
    the dataclasses. Values are checked when the Cluster is built."""
    data: Dict[str, Any] = {k: v for k, v in kwargs.items() if k != "name"}
    data["name"] = name
    for key, kind in (("groups", list), ("timeouts", (dict, Timeouts))):
        if key in data and not isinstance(data[key], kind):
            raise ConfigError("%s must be a %s, got %r" % (
                key, "list" if kind is list else "dict or Timeouts", data[key]))
    if isinstance(data.get("timeouts"), Timeouts):
        data["timeouts"] = dataclasses.asdict(data["timeouts"])
    groups = [dataclasses.asdict(g) if isinstance(g, NodeGroup) else g
              for g in data.get("groups") or []]
    problems = _unknown(data.get("timeouts") or {}, Timeouts, "timeouts")
    for g in groups:
        problems += (_unknown(g, NodeGroup, "group") if isinstance(g, dict)
                     else ["a group must be a dict or NodeGroup, got %r" % (g,)])
    if problems:
        raise ConfigError(problems)
    if "groups" in data:
        data["groups"] = groups
    return config.spec_from_dict(data)


def _unknown(data: Mapping[str, Any], kind: type, what: str) -> List[str]:
    known = {f.name for f in dataclasses.fields(kind)}
    return ["%s: unknown field %s (known: %s)" % (what, k, ", ".join(sorted(known)))
            for k in sorted(set(data) - known)]


def cluster_name(hint: str) -> str:
    """A fresh cluster name that shows where it came from: ``test-square-3fa2b1``."""
    base = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")
    if not base[:1].isalpha():
        base = "t-" + base
    return "%s-%s" % (base[:30].rstrip("-"), secrets.token_hex(3))


@dataclasses.dataclass
class KeptCluster:
    """A cluster left running (``keep_hours``), and how to reach it."""
    name: str
    cluster_id: str
    cloud: Optional[str]
    expires_at: float


@dataclasses.dataclass
class PoolReport:
    """What ``ClusterPool.close()`` did: deleted and kept clusters, what is left."""
    deleted: List[str] = dataclasses.field(default_factory=list)
    kept: List[KeptCluster] = dataclasses.field(default_factory=list)
    leftovers: List[str] = dataclasses.field(default_factory=list)
    """``<cluster name>: <resource>`` for each resource teardown could not delete."""
    errors: List[str] = dataclasses.field(default_factory=list)


class ClusterPool:
    """Clusters brought up for tests and torn down (or kept) together."""

    def __init__(self, cloud: Optional[str] = None, state_dir: Optional[str] = None,
                 keep_hours: Optional[float] = None):
        if keep_hours is not None and not keep_hours > 0:
            raise ConfigError("keep_hours must be > 0, got %r" % (keep_hours,))
        self.cloud = cloud
        self.state_dir = state_dir
        self.keep_hours = keep_hours
        self.names: List[str] = []
        """Every cluster name this pool used, whether or not its ``up`` succeeded."""
        self._open: List[Cluster] = []
        self._expiry: Dict[str, float] = {}

    def up(self, name: Optional[str] = None, hint: str = "test", **spec: Any) -> Cluster:
        """Bring up a cluster of ``spec`` (ClusterSpec fields); its name is ``name``
        or a fresh one made from ``hint``. A failed ``up`` rolls itself back; what
        that could not delete stays with the pool, for ``close()``."""
        problems = spec_problems(spec, "cluster spec")
        if problems:
            raise ConfigError(problems)
        cspec = make_spec(name or cluster_name(hint), spec)
        if self.keep_hours is not None:
            cspec.ttl_hours = min(cspec.ttl_hours, self.keep_hours)
        self.names.append(cspec.name)
        # no later than the expiry up() records (its clock starts after this)
        self._expiry[cspec.name] = time.time() + cspec.ttl_hours * 3600
        cluster = Cluster(cspec, cloud=self.cloud, state_dir=self.state_dir)
        self._open.append(cluster)
        cluster.up()
        return cluster

    @property
    def clusters(self) -> List[Cluster]:
        """The clusters not yet closed (a failed ``up`` that left resources among them)."""
        return [c for c in self._open if c.state is not None]

    def close(self) -> PoolReport:
        """Tear down every cluster, newest first, or detach it with ``keep_hours``.
        A cluster leaves the pool only once done, so an interrupted ``close`` can
        be called again."""
        report = PoolReport()
        while self._open:
            cluster = self._open[-1]
            if cluster.state is not None:
                if self.keep_hours is not None and cluster.nodes:
                    self._keep(cluster, report)
                else:
                    self._down(cluster, report)
            self._open.pop()
        return report

    def _down(self, cluster: Cluster, report: PoolReport) -> None:
        """Tear one cluster down; whatever goes wrong is reported, and ``close``
        goes on with the other clusters."""
        try:
            cluster.down()
            report.deleted.append(cluster.name)
        except TeardownError as exc:
            report.leftovers.extend("%s: %s" % (cluster.name, r) for r in exc.leftovers)
            report.errors.extend("%s: %s" % (cluster.name, e) for e in exc.errors)
        except CloudComputeError as exc:
            report.errors.append("%s: %s" % (cluster.name, exc))
        except Exception as exc:  # a bug or an unexpected library error: the rest still go
            LOG.error("teardown of test cluster %s failed unexpectedly", cluster.name,
                      exc_info=True)
            report.errors.append("%s: teardown failed with %s: %s"
                                 % (cluster.name, type(exc).__name__, exc))

    def _keep(self, cluster: Cluster, report: PoolReport) -> None:
        assert cluster.state is not None
        cid = cluster.state.cluster_id
        try:
            cluster.detach()
        except CloudComputeError as exc:
            report.errors.append("%s: %s" % (cluster.name, exc))
        report.kept.append(KeptCluster(cluster.name, cid, cluster.conn.config.name,
                                       self._expiry[cluster.name]))


def tagged_leftovers(conn: Any, names: Iterable[str],
                     state_dir: Optional[str] = None) -> List[str]:
    """What the cloud (and the state directory) still holds for clusters of these
    names: resources carrying the library's tags, keypairs named after the
    clusters, and state files, as ``<cluster id>: <resource>``."""
    wanted = set(names)
    found: Set[str] = set()
    for r in gc.survey(conn, state_dir).values():
        if tags.name_of(r.cluster_id) not in wanted:
            continue
        found.update("%s: %s" % (r.cluster_id, what) for what in r.resources)
        if r.state_file:
            found.add("%s: state file %s" % (r.cluster_id, r.state_file))
    # gc's survey names a keypair only for a cluster it found by other means
    for kp in retry.call(lambda: list(conn.compute.keypairs())):
        cid = tags.cluster_id_from_resource_name(kp.name)
        if cid is not None and "-" in cid and tags.name_of(cid) in wanted:
            found.add("%s: keypair %s" % (cid, kp.name))
    return sorted(found)
