"""How cloudcompute names and marks what it creates.

Every resource carries the tag ``cloudcompute`` plus ``cc-cluster=<id>``;
servers also carry metadata with owner, creation and expiry times. Nothing
without the ``cloudcompute`` tag is ever touched by teardown or gc.
"""
from __future__ import annotations

import getpass
import os
import re
import secrets
import socket
import time
from typing import Dict, List, Mapping, Optional

MARK = "cloudcompute"
CLUSTER_TAG = "cc-cluster="
META_CLUSTER = "cc_cluster"
META_NAME = "cc_name"
META_OWNER = "cc_owner"
META_CREATED = "cc_created"
META_EXPIRES = "cc_expires"
META_GROUP = "cc_group"

CLUSTER_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,59}$")
"""What a cluster id may look like (new ones are ``<name>-<8 hex>``); it names
files and cloud resources, so anything else found in a tag is refused."""


def new_cluster_id(name: str) -> str:
    return "%s-%s" % (name, secrets.token_hex(4))


def owner() -> str:
    """``user@host:pid`` of this process: gc asks whether it still runs."""
    return "%s@%s:%d" % (getpass.getuser(), socket.gethostname(), os.getpid())


def owner_alive(owner_str: str) -> Optional[bool]:
    """True/False if the owner ran on this host; None if it cannot be told."""
    try:
        host_part, pid = owner_str.rsplit(":", 1)
        host = host_part.split("@", 1)[1]
        pid_n = int(pid)
    except (ValueError, IndexError):
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def valid_cluster_id(cluster_id: object) -> bool:
    return isinstance(cluster_id, str) and bool(CLUSTER_ID_RE.match(cluster_id))


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
                    owner_str: str, now: Optional[float] = None,
                    extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    now = time.time() if now is None else now
    meta = dict(extra or {})
    meta.update({
        META_CLUSTER: cluster_id,
        META_NAME: name,
        META_GROUP: group,
        META_OWNER: owner_str,
        META_CREATED: "%d" % now,
        META_EXPIRES: "%d" % (now + ttl_hours * 3600),
    })
    return meta


def resource_name(cluster_id: str, *parts: str) -> str:
    return "-".join(("cc", cluster_id) + parts)
