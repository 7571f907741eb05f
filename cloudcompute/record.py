"""The typed, versioned record of a cluster that the state file holds.

:class:`ClusterRecord` is what ``up()`` writes and ``attach``, ``down()``,
``gc``, the CLI and Dask read. On disk it is JSON with a ``schema`` number:

- schema 1 (no ``schema`` key): records written before the number existed;
  read with defaults for whatever they lack, and written back as the current
  schema;
- a schema newer than this version's is refused (a newer cloudcompute wrote
  it; this one would drop what it does not know).

Every field is checked when a record is read, so a damaged or foreign file is
a :class:`StateError` naming the field, never a KeyError somewhere later.

:class:`ClusterSummary` is the view of a cluster ``Cluster.describe()`` gives.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Dict, List, Mapping, Optional

from cloudcompute import config, tags
from cloudcompute.exceptions import SSHError, StateError

SCHEMA_VERSION = 2
KINDS = ("servers", "floating_ips", "router_interfaces", "routers", "ports",
         "subnets", "networks", "security_groups", "keypairs", "application_credentials")


@dataclasses.dataclass
class ResourceEntry:
    """One cloud resource of the cluster, recorded before the call that creates
    it (``id`` None until the cloud answers). On disk a JSON object with
    ``name``, ``id`` and those of the other fields that are set; keys this
    version does not know are kept, in ``extra``, and written back."""
    name: str
    id: Optional[str] = None
    group: Optional[str] = None  # servers: the node group
    host_keys: Optional[List[str]] = None  # servers: the SSH host keys expected
    batch: Optional[str] = None  # servers made by one multi-create request: its base name
    fixed_ip: Optional[str] = None  # servers
    status: Optional[str] = None  # servers: ACTIVE, or ERROR once deleted as failed
    dropped: Optional[bool] = None  # servers: failed and left out of the cluster
    address: Optional[str] = None  # floating IPs: the address
    port_id: Optional[str] = None  # floating IPs: the port it is bound to
    network_id: Optional[str] = None  # subnets
    router_id: Optional[str] = None  # router interfaces
    subnet_id: Optional[str] = None  # router interfaces
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        out = dict(self.extra)
        out.update((f, getattr(self, f)) for f in _ENTRY_FIELDS
                   if getattr(self, f) is not None)
        out.update(name=self.name, id=self.id)
        return out


_ENTRY_FIELDS = {"id": str, "group": str, "host_keys": list, "batch": str, "fixed_ip": str,
                 "status": str, "dropped": bool, "address": str, "port_id": str,
                 "network_id": str, "router_id": str, "subnet_id": str}

# kind -> resource name -> its entry
Resources = Dict[str, Dict[str, ResourceEntry]]


@dataclasses.dataclass
class NodeInfo:
    """One node of a cluster as the library knows it."""
    name: str
    group: str
    server_id: Optional[str] = None
    fixed_ip: Optional[str] = None
    floating_ip: Optional[str] = None
    host_keys: List[str] = dataclasses.field(default_factory=list)
    keys_injected: bool = True
    status: str = "BUILD"
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)
    slots: int = 1
    ram_mb: int = 0

    @property
    def address(self) -> Optional[str]:
        if self.fixed_ip and directly_routable(self.fixed_ip):
            return self.fixed_ip
        return self.floating_ip or self.fixed_ip

    @property
    def ssh_address(self) -> str:
        """``address``, to connect to; a node with neither IP cannot be reached
        (fatal SSHError)."""
        address = self.address
        if address is None:
            raise SSHError(self.name, "no IPv4 address, fixed or floating, to reach it by",
                           fatal=True)
        return address

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def directly_routable(address: str, route_file: str = "/proc/net/route") -> bool:
    """True if this host has a specific (non-default) route to an IPv4 address."""
    try:
        ip = int(ipaddress.IPv4Address(address))
        with open(route_file) as f:
            lines = f.read().splitlines()[1:]
    except (ValueError, OSError):
        return False
    for line in lines:
        cols = line.split()
        dest = int.from_bytes(bytes.fromhex(cols[1]), "little")
        mask = int.from_bytes(bytes.fromhex(cols[7]), "little")
        flags = int(cols[3], 16)
        up, reject = flags & 0x1, flags & 0x200
        if up and not reject and mask and (ip & mask) == dest:
            return True
    return False


@dataclasses.dataclass
class SSHAccess:
    """How the client logs in to the nodes, and which key files are the cluster's."""
    user: Optional[str] = None
    key_file: Optional[str] = None
    generated_key: bool = False  # key_file was made for this cluster: teardown deletes it
    internal_key_file: Optional[str] = None  # the nodes' key to each other


@dataclasses.dataclass
class DaskRecord:
    """Where this cluster's Dask processes run, so that any process can stop them."""
    scheduler_node: str
    nodes: List[str]
    scheduler: str


@dataclasses.dataclass
class NodeSummary:
    """One node as ``Cluster.describe()`` shows it."""
    name: str
    group: str
    server_id: Optional[str]
    address: Optional[str]
    fixed_ip: Optional[str]
    floating_ip: Optional[str]
    host_key_fingerprints: List[str]
    timings: Dict[str, float]


@dataclasses.dataclass
class ClusterSummary:
    """What ``Cluster.describe()`` returns: the cluster's nodes, their addresses
    and host key fingerprints, and the timings; ``to_dict()`` for JSON."""
    name: str
    cluster_id: Optional[str]
    nodes: List[NodeSummary]
    timings: Dict[str, float]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ClusterRecord:
    """Everything the state file says about one cluster."""
    name: str
    cluster_id: str
    cloud: Optional[str] = None
    owner: Optional[str] = None  # user@host:pid, as in the servers' metadata
    owner_id: Optional[tags.Owner] = None
    detached: bool = False
    created_at: Optional[float] = None
    expires_at: Optional[float] = None
    ssh: SSHAccess = dataclasses.field(default_factory=SSHAccess)
    nodes: List[NodeInfo] = dataclasses.field(default_factory=list)
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)
    spec: Optional[config.ClusterSpec] = None
    python: Dict[str, str] = dataclasses.field(default_factory=dict)  # node -> interpreter
    dask: Optional[DaskRecord] = None
    resources: Resources = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in KINDS:
            self.resources.setdefault(kind, {})

    def to_json(self) -> Dict[str, Any]:
        """The record as JSON-able data, tagged with the current schema."""
        return {
            "schema": SCHEMA_VERSION, "name": self.name, "cluster_id": self.cluster_id,
            "cloud": self.cloud, "owner": self.owner,
            "owner_id": self.owner_id.to_dict() if self.owner_id else None,
            "detached": self.detached, "created_at": self.created_at,
            "expires_at": self.expires_at, "ssh": dataclasses.asdict(self.ssh),
            "nodes": {n.name: n.to_dict() for n in self.nodes},
            "timings": dict(self.timings),
            "spec": config.spec_to_dict(self.spec) if self.spec else None,
            "python": dict(self.python),
            "dask": dataclasses.asdict(self.dask) if self.dask else None,
            "resources": {kind: {name: e.to_json() for name, e in entries.items()}
                          for kind, entries in self.resources.items()},
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ClusterRecord":
        """Read (and upgrade) a record; StateError naming ``where`` and the field
        at fault if it is not one."""
        return _Reader(where).read(data)


class _Reader:
    """Checks each field of a record's JSON as it builds the typed record."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, what: str) -> StateError:
        return StateError("%s: %s %s" % (self.where, field, what))

    def typed(self, data: Mapping[str, Any], field: str, types: Any, default: Any,
              label: Optional[str] = None) -> Any:
        value = data.get(field, default)
        if value is not default and not isinstance(value, types) \
                or isinstance(value, bool) and bool not in _as_tuple(types):
            raise self.fail(label or field, "is %r, not %s" % (value, _names(types)))
        return value

    def read(self, data: Any) -> ClusterRecord:
        if not isinstance(data, dict):
            raise StateError("%s is not a cluster record (not a JSON object)" % self.where)
        schema = data.get("schema", 1)
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise self.fail("schema", "is %r, not a version number" % (schema,))
        if schema > SCHEMA_VERSION:
            raise StateError("%s was written by a newer cloudcompute (record schema %d; this "
                             "version reads up to %d): upgrade cloudcompute to use it"
                             % (self.where, schema, SCHEMA_VERSION))
        name = self.typed(data, "name", str, None)
        cluster_id = self.typed(data, "cluster_id", str, None)
        if name is None or cluster_id is None or not tags.valid_cluster_id(cluster_id):
            raise StateError("%s is not a cluster record (a name and a valid cluster id "
                             "are required)" % self.where)
        number = (int, float)
        return ClusterRecord(
            name=name, cluster_id=cluster_id,
            cloud=self.typed(data, "cloud", str, None),
            owner=self.typed(data, "owner", str, None),
            owner_id=self.owner_id(data.get("owner_id")),
            detached=self.typed(data, "detached", bool, False),
            created_at=self.typed(data, "created_at", number, None),
            expires_at=self.typed(data, "expires_at", number, None),
            ssh=self.ssh(self.typed(data, "ssh", dict, {})),
            nodes=self.nodes(self.typed(data, "nodes", dict, {})),
            timings=self.seconds("timings", self.typed(data, "timings", dict, {})),
            spec=self.spec(self.typed(data, "spec", dict, None)),
            python=self.strings("python", self.typed(data, "python", dict, {})),
            dask=self.dask(self.typed(data, "dask", dict, None)),
            resources=self.resources(self.typed(data, "resources", dict, {})),
        )

    def owner_id(self, value: Any) -> Optional[tags.Owner]:
        if not value:
            return None
        try:
            return tags.Owner.from_dict(value) if isinstance(value, dict) else None
        except ValueError:
            return None  # an unreadable owner is an unknown one: gc treats it so

    def ssh(self, data: Dict[str, Any]) -> SSHAccess:
        user = self.typed(data, "user", str, None)
        if user is not None and not config.valid_ssh_user(user):
            raise self.fail("ssh.user", "%r is not a user name" % user)
        return SSHAccess(user=user,
                         key_file=self.typed(data, "key_file", str, None),
                         generated_key=self.typed(data, "generated_key", bool, False),
                         internal_key_file=self.typed(data, "internal_key_file", str, None))

    def nodes(self, data: Dict[str, Any]) -> List[NodeInfo]:
        out = []
        for key, node in data.items():
            if not isinstance(node, dict) or node.get("name") != key \
                    or not isinstance(node.get("group"), str):
                raise self.fail("nodes.%s" % key, "is not a node record")
            fields = {f: self.typed(node, f, types, None) for f, types in _NODE_FIELDS.items()}
            if not all(isinstance(k, str) for k in fields["host_keys"] or []):
                raise self.fail("nodes.%s.host_keys" % key, "must be a list of key lines")
            if fields["timings"] is not None:
                self.seconds("nodes.%s.timings" % key, fields["timings"])
            # fields this version does not know are dropped, as in a spec
            out.append(NodeInfo(**{f: v for f, v in fields.items() if v is not None}))
        return out

    def spec(self, data: Optional[Dict[str, Any]]) -> Optional[config.ClusterSpec]:
        if data is None:
            return None
        try:
            return config.spec_from_dict(data)
        except (TypeError, ValueError, AttributeError) as exc:
            raise self.fail("spec", "is not a cluster spec (%s)" % exc) from None

    def strings(self, field: str, data: Dict[str, Any]) -> Dict[str, str]:
        if not all(isinstance(v, str) for v in data.values()):
            raise self.fail(field, "must map names to strings")
        return dict(data)

    def seconds(self, field: str, data: Dict[str, Any]) -> Dict[str, float]:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   for v in data.values()):
            raise self.fail(field, "must map names to seconds")
        return dict(data)

    def dask(self, data: Optional[Dict[str, Any]]) -> Optional[DaskRecord]:
        if data is None:
            return None
        nodes = data.get("nodes")
        if not isinstance(data.get("scheduler_node"), str) or not isinstance(
                data.get("scheduler"), str) or not isinstance(nodes, list) \
                or not all(isinstance(n, str) for n in nodes):
            raise self.fail("dask", "is not a Dask record")
        return DaskRecord(data["scheduler_node"], list(nodes), data["scheduler"])

    def resources(self, data: Dict[str, Any]) -> Resources:
        out: Resources = {}
        for kind, entries in data.items():
            if kind not in KINDS:
                raise self.fail("resources", "names an unknown kind %r" % kind)
            if not isinstance(entries, dict) or not all(
                    isinstance(e, dict) and e.get("name") == n for n, e in entries.items()):
                raise self.fail("resources.%s" % kind, "is not a list of resources")
            out[kind] = {n: self.entry("resources.%s.%s" % (kind, n), e)
                         for n, e in entries.items()}
        return out

    def entry(self, where: str, data: Dict[str, Any]) -> ResourceEntry:
        fields = {f: self.typed(data, f, types, None, label="%s.%s" % (where, f))
                  for f, types in _ENTRY_FIELDS.items()}
        if not all(isinstance(k, str) for k in fields["host_keys"] or []):
            raise self.fail(where + ".host_keys", "must be a list of key lines")
        extra = {k: v for k, v in data.items() if k not in _ENTRY_FIELDS and k != "name"}
        return ResourceEntry(name=data["name"], extra=extra, **fields)


_NODE_FIELDS = {"name": str, "group": str, "server_id": str, "fixed_ip": str,
                "floating_ip": str, "host_keys": list, "keys_injected": bool, "status": str,
                "timings": dict, "slots": int, "ram_mb": int}


def _as_tuple(types: Any) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _names(types: Any) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))
