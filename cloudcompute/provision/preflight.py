"""Pre-flight: resolve names and check quotas before anything is created.

Every problem found is collected and raised together as a
:class:`PreflightError`, so a user fixes their spec once, not once per
problem. Each name costs one request (a listing filtered by name; the
flavors are listed once), and a connection remembers what it resolved for
a few minutes, so a second ``up`` on it does not ask again. Quotas are read
on every ``up``: they change as clusters come and go.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from openstack import exceptions as os_exc

from cloudcompute import config, retry
from cloudcompute.config import ClusterSpec
from cloudcompute.exceptions import CloudComputeError, PreflightError

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class ResolvedGroup:
    name: str
    count: int
    flavor_id: str
    flavor_name: str
    vcpus: int
    ram: int
    image_id: str
    image_name: str
    image_user: Optional[str]
    metadata: Dict[str, str] = dataclasses.field(default_factory=dict)
    slots: Optional[int] = None


@dataclasses.dataclass
class Plan:
    """A spec with every name resolved to an id."""
    groups: List[ResolvedGroup]
    network_id: Optional[str]        # existing network, or None to create one
    external_network_id: Optional[str]
    project_id: str
    ssh_user: str

    @property
    def total(self) -> int:
        return sum(g.count for g in self.groups)


CACHE_SECONDS = 300.0
"""How long a connection remembers a flavor, active image or network it resolved."""
_CACHE: "weakref.WeakKeyDictionary[Any, Dict[Tuple[str, str], Tuple[float, Any]]]" = \
    weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _cached(conn: Any, kind: str, key: str, fetch: Callable[[], Any],
            keep: Callable[[Any], bool] = lambda found: found is not None) -> Any:
    """``fetch()``, remembered per connection for CACHE_SECONDS when ``keep`` says so."""
    with _CACHE_LOCK:
        try:
            cache = _CACHE.setdefault(conn, {})
        except TypeError:  # a connection that cannot be weakly referenced: no cache
            cache = {}
        hit = cache.get((kind, key))
    if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
        return hit[1]
    found = fetch()
    if keep(found):
        with _CACHE_LOCK:
            cache[(kind, key)] = (time.monotonic(), found)
    return found


def _one(items: List[Any], name_or_id: str) -> Optional[Any]:
    """The item whose id, else whose name, is ``name_or_id``; a name two
    items share is a PreflightError asking for the id."""
    by_id = [i for i in items if i.id == name_or_id]
    found = by_id or [i for i in items if getattr(i, "name", None) == name_or_id]
    if len(found) > 1:
        raise PreflightError(["%r matches more than one resource; use its id"
                              % name_or_id])
    return found[0] if found else None


def _find(finder, name_or_id: Optional[str]):
    try:
        return retry.call(finder, name_or_id, ignore_missing=True)
    except os_exc.DuplicateResource:
        raise PreflightError(["%r matches more than one resource; use its id"
                              % name_or_id]) from None


def _by_name(service: Any, kind: str, name_or_id: str) -> Optional[Any]:
    """One listing filtered by name (``service.<kind>s``); only if nothing has
    that name, a lookup by id (``service.find_<kind>``: openstacksdk's find,
    which tries the id first, costs two requests for every name)."""
    found = _one(retry.call(lambda: list(getattr(service, kind + "s")(name=name_or_id))),
                 name_or_id)
    return found if found is not None else _find(getattr(service, "find_" + kind),
                                                 name_or_id)


def find_flavor(conn: Any, name_or_id: str) -> Tuple[Optional[Any], List[Any]]:
    """(the flavor or None, every flavor listed) from one listing."""
    flavors = _cached(conn, "flavors", "", lambda: retry.call(
        lambda: list(conn.compute.flavors())), keep=bool)
    return _one(flavors, name_or_id), flavors


def find_image(conn: Any, name_or_id: str) -> Optional[Any]:
    return _cached(conn, "image", name_or_id,
                   lambda: _by_name(conn.image, "image", name_or_id),
                   keep=lambda i: i is not None and i.status == "active")


def find_network(conn: Any, name_or_id: str) -> Optional[Any]:
    return _cached(conn, "network", name_or_id,
                   lambda: _by_name(conn.network, "network", name_or_id))


def _choices(items, limit: int = 12) -> str:
    names = sorted({getattr(i, "name", None) or i.id for i in items})
    more = " ..." if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _fetch(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(...)`` under the API retry policy, or the SDK error it raised."""
    try:
        return retry.call(fn, *args, **kwargs)
    except os_exc.SDKException as exc:
        return exc


def _outcome(find: Callable[..., Any], *args: Any) -> Any:
    """``find(...)``, or the pre-flight or SDK error it raised (re-raised by
    :func:`_take` where the answer is used)."""
    try:
        return find(*args)
    except (CloudComputeError, os_exc.SDKException) as exc:
        return exc


def _take(answer: Any) -> Any:
    if isinstance(answer, BaseException):
        raise answer
    return answer


def prefetch(conn: Any, spec: ClusterSpec, project_id: str) -> Dict[Tuple[str, str], Any]:
    """Every answer pre-flight needs, asked in three lanes at once, one per
    service (so that no service's version discovery runs twice): keyed
    ``("flavor", name)``, ``("image", name)``, ``("network", name)`` and
    ``("quota", "compute" | "network")``; an error is kept as the answer."""
    def compute() -> Dict[Tuple[str, str], Any]:
        out = {("flavor", g.flavor or ""): _outcome(find_flavor, conn, g.flavor)
               for g in spec.groups}
        out["quota", "compute"] = _fetch(conn.compute.get_quota_set, project_id, usage=True)
        return out

    def image() -> Dict[Tuple[str, str], Any]:
        return {("image", g.image or ""): _outcome(find_image, conn, g.image)
                for g in spec.groups}

    def network() -> Dict[Tuple[str, str], Any]:
        out = {}
        if spec.network:
            out["network", spec.network] = _outcome(find_network, conn, spec.network)
        out["quota", "network"] = _fetch(conn.network.get_quota, project_id, details=True)
        return out

    answers: Dict[Tuple[str, str], Any] = {}
    with cf.ThreadPoolExecutor(max_workers=3) as pool:
        for lane in [pool.submit(compute), pool.submit(image), pool.submit(network)]:
            answers.update(lane.result())
    return answers


def resolve(conn: Any, spec: ClusterSpec) -> Plan:
    """Resolve flavors, images and networks and check quotas; raise on any problem."""
    project_id = conn.current_project_id
    answers = prefetch(conn, spec, project_id)
    problems: List[str] = []
    groups: List[ResolvedGroup] = []
    for g in spec.groups:
        assert g.flavor is not None and g.image is not None  # validate() saw to it
        flavor, flavors = _take(answers["flavor", g.flavor])
        if flavor is None:
            problems.append("group %s: unknown flavor %r (available: %s)"
                            % (g.name, g.flavor, _choices(flavors)))
        image = _take(answers["image", g.image])
        if image is None:
            problems.append("group %s: unknown image %r (available: %s)"
                            % (g.name, g.image, _choices(conn.image.images())))
        elif image.status != "active":
            problems.append("group %s: image %s is %s, not active"
                            % (g.name, image.name, image.status))
        if flavor is not None and image is not None:
            user = config.image_ssh_user(image, None if spec.ssh_user else problems)
            groups.append(ResolvedGroup(g.name, g.count, flavor.id, flavor.name,
                                        flavor.vcpus, flavor.ram, image.id,
                                        image.name, user, dict(g.metadata),
                                        g.slots or max(1, int(flavor.vcpus or 1))))
    network_id = external_id = None
    if spec.network:
        net = _take(answers["network", spec.network])
        if net is None:
            problems.append("unknown network %r (available: %s)"
                            % (spec.network, _choices(conn.network.networks())))
        else:
            network_id = net.id
    if spec.external_network or spec.floating_ips == "always" or not spec.network:
        external_id = _external_network(conn, spec, problems)
    users = {g.image_user for g in groups}
    ssh_user = spec.ssh_user or (users.pop() if len(users) == 1 and None not in users else None)
    if not ssh_user and groups:
        problems.append("ssh_user is not set and the image(s) do not name one "
                        "(image property os_admin_user); set ssh_user")
    if not problems:
        problems += check_quotas(conn, project_id, spec, groups, network_id is None,
                                 {k: answers["quota", k] for k in ("compute", "network")})
    if problems:
        raise PreflightError(problems)
    return Plan(groups, network_id, external_id, project_id, ssh_user or "")


def _external_network(conn: Any, spec: ClusterSpec, problems: List[str]) -> Optional[str]:
    if spec.external_network:
        net = find_network(conn, spec.external_network)
        if net is None or not net.is_router_external:
            problems.append("external_network %r is not an external network"
                            % spec.external_network)
            return None
        return net.id
    nets = list(retry.call(conn.network.networks, is_router_external=True))
    if len(nets) == 1:
        return nets[0].id
    if not nets:
        if spec.floating_ips == "always" or not spec.network:
            problems.append("no external network found; set network to an existing "
                            "network, or floating_ips to never")
        return None
    problems.append("several external networks (%s); set external_network"
                    % _choices(nets))
    return None


# Neutron's quota names -> openstacksdk's attributes of QuotaDetails
NETWORK_QUOTA_ATTRS = {"port": "ports", "floatingip": "floating_ips",
                       "security_group": "security_groups", "network": "networks",
                       "subnet": "subnets", "router": "routers"}


def check_quotas(conn: Any, project_id: str, spec: ClusterSpec,
                 groups: List[ResolvedGroup], create_network: bool,
                 fetched: Optional[Dict[str, Any]] = None) -> List[str]:
    """Problems where the request exceeds what the project has left;
    ``fetched``: the quotas as :func:`prefetch` read them (else read here)."""
    fetched = fetched or {
        "compute": _fetch(conn.compute.get_quota_set, project_id, usage=True),
        "network": _fetch(conn.network.get_quota, project_id, details=True)}
    need = {
        "instances": sum(g.count for g in groups),
        "cores": sum(g.count * g.vcpus for g in groups),
        "ram": sum(g.count * g.ram for g in groups),
    }
    problems = []
    try:
        qs = fetched["compute"]
        if isinstance(qs, BaseException):
            raise qs
        usage = qs.usage or {}
        for key, wanted in need.items():
            limit = getattr(qs, key)
            if limit is None or limit < 0:
                continue
            left = limit - int(usage.get(key, 0) or 0)
            if wanted > left:
                problems.append("compute quota %s: need %d, %d of %d left"
                                % (key, wanted, left, limit))
    except os_exc.SDKException as exc:
        LOG.warning("cannot read compute quotas, skipping that check: %s", exc)
    fips = need["instances"] if spec.floating_ips == "always" else 0
    net_need = {"port": need["instances"] + (1 if create_network else 0),
                "floatingip": fips, "security_group": 1,
                "network": 1 if create_network else 0,
                "subnet": 1 if create_network else 0,
                "router": 1 if create_network else 0}
    try:
        q = fetched["network"]
        if isinstance(q, BaseException):
            raise q
        for key, wanted in net_need.items():
            d = getattr(q, NETWORK_QUOTA_ATTRS[key], None)
            if not wanted or not isinstance(d, dict):
                continue
            limit = d.get("limit", -1)
            if limit < 0:
                continue
            left = limit - d.get("used", 0) - d.get("reserved", 0)
            if wanted > left:
                problems.append("network quota %s: need %d, %d of %d left"
                                % (key, wanted, left, limit))
    except os_exc.SDKException as exc:
        LOG.warning("cannot read network quotas, skipping that check: %s", exc)
    return problems
