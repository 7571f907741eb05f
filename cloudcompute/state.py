"""The durable local record of a cluster: what exists, and how to reach it.

One JSON file per cluster name under the state directory
(``$CLOUDCOMPUTE_STATE_DIR``, else ``~/.local/state/cloudcompute``), written
atomically (temp file, fsync, rename) and guarded by an flock, so that an
intent is on disk before the cloud call that creates the resource, and
another process can ``attach`` to the cluster or delete it.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import tempfile
from typing import Any, Dict, Iterator, List, Optional

from cloudcompute.exceptions import StateError

LOG = logging.getLogger(__name__)

KINDS = ("servers", "floating_ips", "router_interfaces", "routers", "ports",
         "subnets", "networks", "security_groups", "keypairs")


def state_dir() -> str:
    base = os.environ.get("CLOUDCOMPUTE_STATE_DIR") or os.path.join(
        os.path.expanduser("~"), ".local", "state", "cloudcompute")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return base


class ClusterState:
    """A cluster's record; every ``save`` reaches the disk before returning."""

    def __init__(self, path: str, data: Dict[str, Any]):
        self.path = path
        self.data = data
        self.data.setdefault("resources", {})
        for kind in KINDS:
            self.data["resources"].setdefault(kind, {})

    # -- files ---------------------------------------------------------
    @classmethod
    def path_for(cls, name: str, directory: Optional[str] = None) -> str:
        return os.path.join(directory or state_dir(), "%s.json" % name)

    @classmethod
    def create(cls, name: str, data: Dict[str, Any],
               directory: Optional[str] = None) -> "ClusterState":
        path = cls.path_for(name, directory)
        if os.path.exists(path):
            raise StateError("a cluster named %r is already recorded in %s; "
                             "attach to it, or run down/gc first" % (name, path))
        st = cls(path, dict(data))
        st.save()
        return st

    @classmethod
    def load(cls, name: str, directory: Optional[str] = None) -> "ClusterState":
        path = cls.path_for(name, directory)
        try:
            with open(path) as f:
                return cls(path, json.load(f))
        except FileNotFoundError:
            raise StateError("no cluster named %r is recorded (looked in %s)"
                             % (name, path)) from None
        except (OSError, ValueError) as exc:
            raise StateError("cannot read %s: %s" % (path, exc)) from exc

    @classmethod
    def all(cls, directory: Optional[str] = None) -> List["ClusterState"]:
        d = directory or state_dir()
        out = []
        for fn in sorted(os.listdir(d)):
            if fn.endswith(".json"):
                try:
                    out.append(cls.load(fn[:-5], d))
                except StateError as exc:
                    LOG.warning("skipping unreadable state file: %s", exc)
        return out

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def save(self) -> None:
        d = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".%s.tmp-" % self.name, suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def remove(self) -> None:
        """Delete the state file, its lock and any temp file a killed writer left."""
        d = os.path.dirname(self.path)
        stale = glob.glob(os.path.join(glob.escape(d), ".%s.tmp-*.json" % glob.escape(self.name)))
        for p in [self.path, self.path + ".lock"] + stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    # -- records -------------------------------------------------------
    @property
    def cluster_id(self) -> str:
        return self.data["cluster_id"]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def resources(self) -> Dict[str, Dict[str, Any]]:
        return self.data["resources"]

    def intend(self, kind: str, name: str, **info: Any) -> None:
        """Record that ``name`` is about to be created (id not known yet)."""
        with self.locked():
            self.resources[kind][name] = dict(info, name=name, id=None)
            self.save()

    def record(self, kind: str, name: str, res_id: str, **info: Any) -> None:
        with self.locked():
            entry = self.resources[kind].setdefault(name, {"name": name})
            entry.update(info, id=res_id)
            self.save()

    def forget(self, kind: str, name: str) -> None:
        with self.locked():
            self.resources[kind].pop(name, None)
            self.save()

    def count(self) -> int:
        return sum(len(v) for v in self.resources.values())

    def listing(self) -> List[str]:
        return ["%s %s (%s)" % (kind[:-1], name, e.get("id") or "id unknown")
                for kind in KINDS for name, e in self.resources[kind].items()]
