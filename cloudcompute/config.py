"""Cluster specs, their validation, and the connection to a cloud.

A :class:`ClusterSpec` is checked completely before any API call; every
problem is reported at once in a :class:`ConfigError`. Settings missing from
the spec are taken from the ``cloudcompute:`` section of the cloud's entry in
clouds.yaml, then from the defaults below. Explicit arguments always win.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
from typing import Any, Dict, List, Mapping, Optional

import openstack
from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as os_exc

from cloudcompute import retry
from cloudcompute.exceptions import CloudAuthError, ConfigError

LOG = logging.getLogger(__name__)

FLOATING_IP_MODES = ("auto", "always", "never")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
SSH_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
"""A POSIX user name: it goes into ssh's argv, so it must never read as an option."""
SETTINGS_SECTION = "cloudcompute"
API_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


@dataclasses.dataclass
class NodeGroup:
    """``count`` servers of one flavor and image."""
    name: str = "node"
    count: int = 1
    flavor: Optional[str] = None
    image: Optional[str] = None
    metadata: Dict[str, str] = dataclasses.field(default_factory=dict)
    slots: Optional[int] = None
    """Tasks each node runs side by side; default: the flavor's vCPUs."""


@dataclasses.dataclass
class Timeouts:
    """Seconds each phase may take before it fails."""
    preflight: float = 120.0
    active: float = 600.0
    ssh: float = 300.0
    teardown: float = 300.0
    node_silence: float = 10.0
    """A node whose worker sends nothing (it beats every fifth of this) is lost."""
    worker_start: float = 60.0
    """A worker that has not said hello this long after its start is lost (its
    Python and imports start slowly on a node that many workers share)."""


@dataclasses.dataclass
class ClusterSpec:
    """What to build. ``nodes``/``flavor``/``image`` make one group ``node``."""
    name: str
    nodes: Optional[int] = None
    flavor: Optional[str] = None
    image: Optional[str] = None
    groups: List[NodeGroup] = dataclasses.field(default_factory=list)
    network: Optional[str] = None
    create_network: bool = False
    external_network: Optional[str] = None
    cidr: str = "10.42.128.0/24"
    floating_ips: Optional[str] = None
    ssh_user: Optional[str] = None
    ssh_cidr: Optional[str] = None
    key_file: Optional[str] = None
    user_data: Optional[str] = None
    metadata: Dict[str, str] = dataclasses.field(default_factory=dict)
    timeouts: Timeouts = dataclasses.field(default_factory=Timeouts)
    min_nodes: Optional[int] = None
    max_replacements: int = 2
    ttl_hours: float = 24.0
    idle_minutes: Optional[float] = None
    """End the cluster after this long without activity (``cloudcompute.autodown``)."""
    autodown: bool = True
    """Let the cluster end itself at its deadline (and when idle): a watchdog on
    the first node deletes it with an application credential of its own."""
    node_api_host: Optional[str] = None
    """The address nodes use for the cloud's API, where the catalog names one they
    cannot reach (the local cloud's 127.0.0.1): a host or ``gateway``."""
    parallel: int = 8
    create_batch: int = 50
    """Servers of one group created per request (Nova's multi-create,
    ``min_count``/``max_count``); 1 creates each server with its own request."""
    slots: Optional[int] = None
    max_result_bytes: Optional[int] = None

    @property
    def total_nodes(self) -> int:
        return sum(g.count for g in self.groups)

    def with_settings(self, settings: Mapping[str, Any]) -> "ClusterSpec":
        """Fill unset fields from a clouds.yaml ``cloudcompute:`` section."""
        spec = dataclasses.replace(self, groups=[dataclasses.replace(g) for g in self.groups])
        unknown = set(settings) - {"network", "external_network", "floating_ips",
                                   "ssh_user", "ssh_cidr", "image", "flavor", "cidr",
                                   "node_api_host"}
        if unknown:
            LOG.warning("ignoring unknown %s settings in clouds.yaml: %s",
                        SETTINGS_SECTION, ", ".join(sorted(unknown)))
        for key in ("network", "external_network", "floating_ips", "ssh_user",
                    "ssh_cidr", "node_api_host"):
            if key == "network" and spec.create_network:
                continue
            if getattr(spec, key) is None and settings.get(key) is not None:
                setattr(spec, key, settings[key])
        if spec.flavor is None:
            spec.flavor = settings.get("flavor")
        if spec.image is None:
            spec.image = settings.get("image")
        for g in spec.groups:
            g.flavor = g.flavor or spec.flavor
            g.image = g.image or spec.image
        if spec.floating_ips is None:
            spec.floating_ips = "auto"
        return spec


def spec_to_dict(spec: ClusterSpec) -> Dict[str, Any]:
    """The spec as JSON-able data, for the cluster's record."""
    return dataclasses.asdict(spec)


def spec_from_dict(data: Mapping[str, Any]) -> ClusterSpec:
    """A spec back from its record; fields this version does not know are dropped."""
    known = {f.name for f in dataclasses.fields(ClusterSpec)}
    fields = {k: v for k, v in data.items() if k in known}
    group_fields = {f.name for f in dataclasses.fields(NodeGroup)}
    fields["groups"] = [NodeGroup(**{k: v for k, v in g.items() if k in group_fields})
                        for g in fields.get("groups") or []]
    timeout_fields = {f.name for f in dataclasses.fields(Timeouts)}
    fields["timeouts"] = Timeouts(**{k: v for k, v in (fields.get("timeouts") or {}).items()
                                     if k in timeout_fields})
    return ClusterSpec(**fields)


def validate(spec: ClusterSpec) -> ClusterSpec:
    """Return a normalised copy of ``spec`` or raise ConfigError listing all problems."""
    problems: List[str] = []
    spec = dataclasses.replace(spec, groups=[dataclasses.replace(g) for g in spec.groups])
    if not isinstance(spec.name, str) or not NAME_RE.match(spec.name):
        problems.append("name %r: use 1-40 lowercase letters, digits and '-', "
                        "starting with a letter" % (spec.name,))
    if spec.groups and spec.nodes is not None:
        problems.append("give either nodes or groups, not both")
    if not spec.groups:
        if spec.nodes is None:
            spec.nodes = 1
        spec.groups = [NodeGroup("node", spec.nodes, spec.flavor, spec.image)]
    _check_groups(spec, problems)
    _check_network(spec, problems)
    _check_limits(spec, problems)
    if problems:
        raise ConfigError(problems)
    return spec


def _check_groups(spec: ClusterSpec, problems: List[str]) -> None:
    """Each group: count, name, flavor, image and slots (defaults from the spec)."""
    names = set()
    for g in spec.groups:
        if not isinstance(g.count, int) or isinstance(g.count, bool) or g.count < 1:
            problems.append("group %s: count must be an integer >= 1, got %r"
                            % (g.name, g.count))
        if not NAME_RE.match(str(g.name)):
            problems.append("group name %r: lowercase letters, digits and '-'" % (g.name,))
        if g.name in names:
            problems.append("group name %r used twice" % g.name)
        names.add(g.name)
        g.flavor = g.flavor or spec.flavor
        g.image = g.image or spec.image
        g.slots = g.slots or spec.slots
        if g.slots is not None and (not isinstance(g.slots, int) or isinstance(g.slots, bool)
                                    or g.slots < 1):
            problems.append("group %s: slots must be an integer >= 1, got %r"
                            % (g.name, g.slots))
        if not g.flavor:
            problems.append("group %s: flavor is required (name or id)" % g.name)
        if not g.image:
            problems.append("group %s: image is required (name or id)" % g.name)


def _check_network(spec: ClusterSpec, problems: List[str]) -> None:
    """Network choice, floating IPs, SSH user and CIDRs."""
    if spec.create_network and spec.network:
        problems.append("give either network (an existing one) or create_network, not both")
    if spec.floating_ips is not None and spec.floating_ips not in FLOATING_IP_MODES:
        problems.append("floating_ips %r: allowed values are %s"
                        % (spec.floating_ips, ", ".join(FLOATING_IP_MODES)))
    if spec.ssh_user is not None and not valid_ssh_user(spec.ssh_user):
        problems.append(_bad_user("ssh_user", spec.ssh_user))
    for field in ("cidr", "ssh_cidr"):
        value = getattr(spec, field)
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                problems.append("%s %r is not a network like 10.0.0.0/24" % (field, value))


def _check_limits(spec: ClusterSpec, problems: List[str]) -> None:
    """Counts, timeouts, sizes, lifetimes and metadata."""
    total = sum(g.count for g in spec.groups if isinstance(g.count, int))
    if spec.min_nodes is not None and not (1 <= spec.min_nodes <= max(total, 1)):
        problems.append("min_nodes %r must be between 1 and the node count %d"
                        % (spec.min_nodes, total))
    for timeout in dataclasses.fields(Timeouts):
        value = getattr(spec.timeouts, timeout.name)
        if not isinstance(value, (int, float)) or value <= 0:
            problems.append("timeouts.%s must be a positive number of seconds" % timeout.name)
    if spec.max_result_bytes is not None and not (
            isinstance(spec.max_result_bytes, int) and spec.max_result_bytes > 0):
        problems.append("max_result_bytes must be a positive number of bytes, got %r"
                        % (spec.max_result_bytes,))
    if spec.parallel < 1:
        problems.append("parallel must be >= 1")
    if not isinstance(spec.create_batch, int) or isinstance(spec.create_batch, bool) \
            or spec.create_batch < 1:
        problems.append("create_batch must be an integer >= 1, got %r"
                        % (spec.create_batch,))
    if spec.max_replacements < 0:
        problems.append("max_replacements must be >= 0")
    if spec.ttl_hours <= 0:
        problems.append("ttl_hours must be > 0")
    if spec.idle_minutes is not None and not (
            isinstance(spec.idle_minutes, (int, float)) and not isinstance(
                spec.idle_minutes, bool) and spec.idle_minutes > 0):
        problems.append("idle_minutes must be a positive number of minutes or None, got %r"
                        % (spec.idle_minutes,))
    if spec.node_api_host is not None and not (
            isinstance(spec.node_api_host, str) and API_HOST_RE.match(spec.node_api_host)):
        problems.append("node_api_host %r: give a host name, an IPv4 address or 'gateway'"
                        % (spec.node_api_host,))
    for k, v in [kv for g in spec.groups for kv in g.metadata.items()] + list(
            spec.metadata.items()):
        if not isinstance(k, str) or not isinstance(v, str) or len(k) > 255 or len(v) > 255:
            problems.append("metadata %r: keys and values must be strings of at most "
                            "255 characters" % (k,))


def valid_ssh_user(user: object) -> bool:
    return isinstance(user, str) and SSH_USER_RE.match(user) is not None


def _bad_user(where: str, user: object) -> str:
    return ("%s %r is not a user name (lowercase letters, digits, '_' and '-', starting "
            "with a letter or '_', at most 32)" % (where, user))


def image_ssh_user(image: Any, problems: Optional[List[str]]) -> Optional[str]:
    """The login user an image names (property ``os_admin_user``), or None.
    A malformed name is dropped and, if ``problems`` is given (the spec names
    no user, so this one would be used), reported there."""
    props = dict(getattr(image, "properties", None) or {})
    user = getattr(image, "os_admin_user", None) or props.get("os_admin_user")
    if user is None or valid_ssh_user(user):
        return user
    if problems is not None:
        problems.append(_bad_user("image %s: os_admin_user" % getattr(image, "name", "?"),
                                  user))
    return None


def connect(cloud: Optional[str] = None,
            conn: Optional[openstack.connection.Connection] = None,
            **kwargs: Any) -> openstack.connection.Connection:
    """An authenticated Connection: ``conn`` as given, or built from clouds.yaml.

    ``cloud`` defaults to ``OS_CLOUD``; ``OS_*`` variables and application
    credentials work as in openstacksdk. Authentication happens here, so a
    wrong password or auth URL is a :class:`CloudAuthError` at once.
    """
    if conn is None:
        try:
            conn = openstack.connect(cloud=cloud, **kwargs)
        except (os_exc.ConfigException, ks_exc.MissingRequiredOptions) as exc:
            # No clouds.yaml entry, or one (or OS_* variables) without an auth URL.
            raise ConfigError("cloud %s: %s" % (_cloud_name(None, cloud), exc)) from exc
    def authorize() -> None:
        try:
            conn.authorize()
        except os_exc.SDKException as exc:
            # authorize() wraps keystoneauth's error; raise the original kind.
            inner = exc.__cause__ or exc.__context__
            if isinstance(inner, ks_exc.ClientException):
                raise inner from exc
            raise

    try:
        retry.call(authorize, attempts=3)
    except ks_exc.Unauthorized as exc:
        raise CloudAuthError("cloud %s refused the credentials: %s"
                             % (_cloud_name(conn, cloud), exc), cloud) from exc
    except (ks_exc.ConnectFailure, ks_exc.DiscoveryFailure, ks_exc.EndpointNotFound,
            ks_exc.ConnectTimeout) as exc:
        raise CloudAuthError("cannot reach the auth URL of cloud %s: %s"
                             % (_cloud_name(conn, cloud), exc), cloud) from exc
    except os_exc.HttpException as exc:
        if getattr(exc, "status_code", None) == 401:
            raise CloudAuthError("cloud %s refused the credentials: %s"
                                 % (_cloud_name(conn, cloud), exc), cloud) from exc
        raise CloudAuthError("cloud %s: %s" % (_cloud_name(conn, cloud), exc), cloud) from exc
    except ks_exc.MissingRequiredOptions as exc:
        raise ConfigError("cloud %s: %s" % (_cloud_name(conn, cloud), exc)) from exc
    except (os_exc.SDKException, ks_exc.ClientException) as exc:
        raise CloudAuthError("cloud %s: %s" % (_cloud_name(conn, cloud), exc), cloud) from exc
    return conn


def cloud_settings(conn: openstack.connection.Connection) -> Dict[str, Any]:
    """The ``cloudcompute:`` section of this cloud's clouds.yaml entry."""
    section = conn.config.config.get(SETTINGS_SECTION) or {}
    if not isinstance(section, dict):
        raise ConfigError("clouds.yaml %s section must be a mapping" % SETTINGS_SECTION)
    return dict(section)


def _cloud_name(conn: Any, cloud: Optional[str]) -> str:
    name = cloud or getattr(getattr(conn, "config", None), "name", None)
    return repr(name) if name else "(from arguments and OS_* variables)"
