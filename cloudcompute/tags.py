"""How cloudcompute names and marks what it creates.

Every resource carries the tag ``cloudcompute`` plus ``cc-cluster=<id>``;
servers also carry metadata with owner, creation and expiry times, and
``cc_detached`` once the cluster is detached. Nothing without the
``cloudcompute`` tag is ever touched by teardown or gc.

The owner is recorded as ``user@host:pid`` plus this machine's machine-id,
boot id and PID namespace: "the owner process is gone" can only be decided
on the same machine, in the same boot and PID namespace, for the same user.
Metadata read back from the cloud is untrusted (anyone in the project can
set it) and is checked by :func:`parse_server_metadata`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pwd
import re
import secrets
import socket
import time
from typing import Dict, List, Mapping, Optional, Union

from cloudcompute.config import NAME_RE

MARK = "cloudcompute"
CLUSTER_TAG = "cc-cluster="
META_CLUSTER = "cc_cluster"
META_NAME = "cc_name"
META_OWNER = "cc_owner"
META_CREATED = "cc_created"
META_EXPIRES = "cc_expires"
META_GROUP = "cc_group"
META_MACHINE = "cc_machine"
META_BOOT = "cc_boot"
META_PIDNS = "cc_pidns"
META_DETACHED = "cc_detached"

RESOURCE_PREFIX = "cc-"
"""What the name of every resource the library creates starts with."""
CLUSTER_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,59}$")
"""What a cluster id may look like (new ones are ``<name>-<8 hex>``); it names
files and cloud resources, so anything else found in a tag is refused."""
_OWNER_RE = re.compile(r"^(?P<user>[^@:\s/]{1,64})@(?P<host>[^@:\s/]{1,255}):(?P<pid>[0-9]{1,10})$")
_MACHINE_RE = re.compile(r"^[0-9a-f]{32}$")
_BOOT_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PIDNS_RE = re.compile(r"^[0-9]{1,20}$")
_FLAG = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def new_cluster_id(name: str) -> str:
    return "%s-%s" % (name, secrets.token_hex(4))


def name_of(cluster_id: str) -> str:
    """The cluster name a cluster id starts with (``<name>-<random hex>``)."""
    return cluster_id.rsplit("-", 1)[0]


def _read_id(path: str, pattern: "re.Pattern[str]") -> Optional[str]:
    try:
        with open(path) as f:
            value = f.read().strip().lower()
    except OSError:
        return None
    return value if pattern.match(value) else None


def machine_id() -> Optional[str]:
    """/etc/machine-id (or D-Bus's copy); None where there is none."""
    return (_read_id("/etc/machine-id", _MACHINE_RE)
            or _read_id("/var/lib/dbus/machine-id", _MACHINE_RE))


def boot_id() -> Optional[str]:
    return _read_id("/proc/sys/kernel/random/boot_id", _BOOT_RE)


def pid_namespace() -> Optional[str]:
    """The inode of this process's PID namespace: containers that share a
    kernel (and often an image's machine-id) still differ here."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None
    m = re.match(r"^pid:\[([0-9]+)\]$", link)
    return m.group(1) if m else None


def _user() -> str:
    """The name of this process's real user (not $USER, which can say anything)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


@dataclasses.dataclass(frozen=True)
class Owner:
    """The process that created a cluster, and where it ran."""
    user: str
    host: str
    pid: int
    machine_id: Optional[str] = None
    boot_id: Optional[str] = None
    pidns: Optional[str] = None

    @classmethod
    def current(cls) -> "Owner":
        return cls(_user(), socket.gethostname(), os.getpid(), machine_id(), boot_id(),
                   pid_namespace())

    def __str__(self) -> str:
        return "%s@%s:%d" % (self.user, self.host, self.pid)

    @classmethod
    def parse(cls, owner_str: str, machine: Optional[str] = None, boot: Optional[str] = None,
              pidns: Optional[str] = None) -> "Owner":
        """From ``user@host:pid`` and the optional ids; ValueError if any is malformed."""
        m = _OWNER_RE.match(str(owner_str))
        if not m:
            raise ValueError("owner %s is not user@host:pid" % _show(owner_str))
        for value, pattern, what in ((machine, _MACHINE_RE, "machine id"),
                                     (boot, _BOOT_RE, "boot id"),
                                     (pidns, _PIDNS_RE, "PID namespace")):
            if value is not None and not pattern.match(str(value)):
                raise ValueError("%s %s is malformed" % (what, _show(value)))
        return cls(m.group("user"), m.group("host"), int(m.group("pid")), machine, boot, pidns)

    def to_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "Owner":
        return cls.parse("%s@%s:%s" % (d.get("user"), d.get("host"), d.get("pid")),
                         d.get("machine_id"), d.get("boot_id"),  # type: ignore[arg-type]
                         d.get("pidns"))  # type: ignore[arg-type]

    def same_machine(self) -> bool:
        """Whether this process runs where the owner ran: same machine, same boot,
        same PID namespace. Unknown ids never count as the same."""
        here = Owner.current()
        return (None not in (self.machine_id, self.boot_id, self.pidns)
                and (self.machine_id, self.boot_id, self.pidns)
                == (here.machine_id, here.boot_id, here.pidns))

    def alive(self) -> Optional[bool]:
        """False only if the owner ran on this machine (this boot, this PID
        namespace), as this user, and its pid is gone; True if it runs; None
        when it cannot be told (another machine or user, ids unknown)."""
        if not self.same_machine() or self.user != _user():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def owner() -> str:
    """``user@host:pid`` of this process."""
    return str(Owner.current())


def tags(cluster_id: str) -> List[str]:
    return [MARK, CLUSTER_TAG + cluster_id]


def cluster_of(tag_list: Optional[List[str]]) -> Optional[str]:
    """The cluster id in a tag list, or None if the library did not tag it."""
    tag_list = list(tag_list or [])
    if MARK not in tag_list:
        return None
    for t in tag_list:
        if t.startswith(CLUSTER_TAG):
            return t[len(CLUSTER_TAG):]
    return None


def server_metadata(cluster_id: str, name: str, group: str, ttl_hours: float,
                    owner_str: Union[str, Owner], now: Optional[float] = None,
                    extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The metadata of a new server. When the owner is this process (as it is
    for every server ``up`` creates), its machine, boot and PID namespace ids
    go along, so that gc on this machine can tell whether it is gone."""
    now = time.time() if now is None else now
    here = Owner.current()
    who = owner_str if isinstance(owner_str, Owner) else (
        here if owner_str == str(here) else None)
    meta = dict(extra or {})
    meta.update({
        META_CLUSTER: cluster_id,
        META_NAME: name,
        META_GROUP: group,
        META_OWNER: str(owner_str),
        META_CREATED: "%d" % now,
        META_EXPIRES: "%d" % (now + ttl_hours * 3600),
    })
    if who is not None:
        for key, value in ((META_MACHINE, who.machine_id), (META_BOOT, who.boot_id),
                           (META_PIDNS, who.pidns)):
            if value:
                meta[key] = value
    return meta


@dataclasses.dataclass
class ServerMeta:
    """What a server's metadata says about its cluster, checked."""
    name: Optional[str] = None
    owner: Optional[Owner] = None
    created: Optional[float] = None
    expires: Optional[float] = None
    detached: bool = False


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def _time(meta: Mapping[str, object], key: str) -> Optional[float]:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        value = float(str(raw))
    except ValueError:
        raise ValueError("%s %s is not a time in seconds" % (key, _show(raw))) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError("%s %s is not a time in seconds" % (key, _show(raw)))
    return value


def valid_cluster_id(cluster_id: object) -> bool:
    return isinstance(cluster_id, str) and bool(CLUSTER_ID_RE.match(cluster_id))


_GENERATED_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}-[0-9a-f]{8}$")


def generated_cluster_id(cluster_id: object) -> bool:
    """Whether ``cluster_id`` has the form :func:`new_cluster_id` gives (name, '-',
    8 hex digits): what an untagged resource's name must carry to count as ours."""
    return isinstance(cluster_id, str) and bool(_GENERATED_ID_RE.match(cluster_id))


def parse_server_metadata(meta: Optional[Mapping[str, object]], cluster_id: str) -> ServerMeta:
    """Check the library's keys in a server's metadata; ValueError names the first
    bad one. ``cluster_id`` is the id from the server's tag."""
    meta = dict(meta or {})
    if not valid_cluster_id(cluster_id):
        raise ValueError("cluster tag %s is not a cluster id" % _show(cluster_id))
    if meta.get(META_CLUSTER, cluster_id) != cluster_id:
        raise ValueError("%s %s differs from the tag's %s"
                         % (META_CLUSTER, _show(meta.get(META_CLUSTER)), cluster_id))
    out = ServerMeta()
    name = meta.get(META_NAME)
    if name is not None:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError("%s %s is not a cluster name" % (META_NAME, _show(name)))
        if not cluster_id.startswith(name + "-"):
            raise ValueError("%s %s does not match cluster id %s"
                             % (META_NAME, _show(name), cluster_id))
        out.name = name
    out.created = _time(meta, META_CREATED)
    out.expires = _time(meta, META_EXPIRES)
    if meta.get(META_OWNER) is not None:
        out.owner = Owner.parse(str(meta[META_OWNER]), *(
            None if meta.get(k) is None else str(meta[k])
            for k in (META_MACHINE, META_BOOT, META_PIDNS)))
    flag = meta.get(META_DETACHED)
    if flag is not None:
        if str(flag).lower() not in _FLAG:
            raise ValueError("%s %s is not 1 or 0" % (META_DETACHED, _show(flag)))
        out.detached = _FLAG[str(flag).lower()]
    return out


def resource_name(cluster_id: str, *parts: str) -> str:
    """``cc-<cluster id>[-<part>...]``: the name of a resource of the cluster."""
    return RESOURCE_PREFIX + "-".join((cluster_id,) + parts)


def cluster_id_from_resource_name(name: object) -> Optional[str]:
    """The cluster id in the name :func:`resource_name` gives a cluster's own
    resource (``cc-<cluster id>``, no parts); None for any other name."""
    if not isinstance(name, str) or not name.startswith(RESOURCE_PREFIX):
        return None
    cluster_id = name[len(RESOURCE_PREFIX):]
    return cluster_id if valid_cluster_id(cluster_id) else None
