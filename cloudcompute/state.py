"""The durable local record of a cluster: what exists, and how to reach it.

One JSON file per cluster name under the state directory
(``$CLOUDCOMPUTE_STATE_DIR``, else ``~/.local/state/cloudcompute``), so that
an intent is on disk before the cloud call that creates the resource, and
another process can ``attach`` to the cluster or delete it.

Concurrency rules, for processes and threads alike:

- the record is created exclusively (``O_EXCL | O_NOFOLLOW``, under the
  name's lock): of two ``up`` of one name exactly one gets the record, the
  other a :class:`StateError`;
- every change happens under the name's lock (``<name>.json.lock``, an
  flock) on a copy reloaded from disk after the lock is taken, and is
  written atomically (temp file, fsync, rename);
- the lock file is unlinked only by :meth:`ClusterState.remove`, while it
  holds the lock; whoever was waiting on it then finds that the file it
  locked is no longer the one at the path, and starts over on the new one;
- the cluster's private keys are named by cluster id, not by name, and are
  created exclusively too (:meth:`ClusterState.write_key`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import glob
import json
import logging
import os
import tempfile
import threading
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

from cloudcompute.config import NAME_RE
from cloudcompute.exceptions import StateError
from cloudcompute.record import KINDS, ClusterRecord, ResourceEntry, Resources

LOG = logging.getLogger(__name__)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def state_dir() -> str:
    base = os.environ.get("CLOUDCOMPUTE_STATE_DIR") or os.path.join(
        os.path.expanduser("~"), ".local", "state", "cloudcompute")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return base


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise StateError("%r is not a cluster name (1-40 lowercase letters, digits and "
                         "'-', starting with a letter)" % (name,))
    return name


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(path: str, shared: bool = False) -> Iterator[None]:
    """Hold an flock on the file at ``path``, created if missing.

    If the file was unlinked (or replaced) while we waited, the lock we got
    guards nothing: start over on whatever is at the path now."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (
                    mine.st_dev, mine.st_ino):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # closing drops the stale lock
    try:
        yield
    finally:
        os.close(fd)


def _dumps(record: ClusterRecord) -> str:
    """A record as the state file's text: one line, keys sorted (compact JSON
    is written by the C encoder; an indented file costs a large cluster's
    every state change several milliseconds)."""
    return json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"))


def _identity_of(st: os.stat_result) -> Tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _identity(path: str) -> Optional[Tuple[int, ...]]:
    """What tells one state file from another: every save writes a new file."""
    try:
        return _identity_of(os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return None


class ClusterState:
    """A cluster's state file and its typed :class:`ClusterRecord` (``record``);
    every ``save`` reaches the disk before returning."""

    def __init__(self, path: str, record: ClusterRecord):
        self.path = path
        self.record = record
        self._held = threading.local()
        self._written: Optional[Tuple[int, ...]] = None
        """The identity of the file the last ``save()`` wrote (while ``record``
        holds what it wrote): ``locked()`` skips the reload while the file is
        still that one."""

    # -- files ---------------------------------------------------------
    @classmethod
    def path_for(cls, name: str, directory: Optional[str] = None) -> str:
        return os.path.join(directory or state_dir(), "%s.json" % _check_name(name))

    @classmethod
    def exists(cls, name: str, directory: Optional[str] = None) -> bool:
        return os.path.lexists(cls.path_for(name, directory))

    @classmethod
    def create(cls, record: ClusterRecord,
               directory: Optional[str] = None) -> "ClusterState":
        """Record a new cluster; StateError if the name is taken, even by a
        process that is creating it at this very moment."""
        path = cls.path_for(record.name, directory)
        name = record.name
        # through JSON and back: what is written is what any later reader gets
        st = cls(path, ClusterRecord.from_json(record.to_json(), "record of %r" % name))
        text = _dumps(st.record)
        with _flock(path + ".lock"):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                             0o600)
            except FileExistsError:
                raise StateError("a cluster named %r is already recorded in %s; attach to "
                                 "it, or run down/gc first" % (name, path)) from None
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                    f.flush()
                    os.fchmod(f.fileno(), 0o600)
                    os.fsync(f.fileno())
                _fsync_dir(os.path.dirname(path))
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                raise
        return st

    @classmethod
    def load(cls, name: str, directory: Optional[str] = None) -> "ClusterState":
        path = cls.path_for(name, directory)
        if not os.path.lexists(path):
            raise StateError("no cluster named %r is recorded (looked in %s)" % (name, path))
        # Shared: waits for a create that is still writing the file.
        with _flock(path + ".lock", shared=True):
            return cls(path, cls._read(path, name))

    @staticmethod
    def _read(path: str, name: str) -> ClusterRecord:
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
            with os.fdopen(fd) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise StateError("no cluster named %r is recorded (looked in %s)"
                             % (name, path)) from None
        except (OSError, ValueError) as exc:
            raise StateError("cannot read %s: %s" % (path, exc)) from exc
        record = ClusterRecord.from_json(data, path)
        if record.name != name:
            raise StateError("%s is not the record of a cluster named %r" % (path, name))
        return record

    @classmethod
    def all(cls, directory: Optional[str] = None) -> List["ClusterState"]:
        d = directory or state_dir()
        out = []
        for fn in sorted(os.listdir(d)):
            if fn.endswith(".json") and not fn.startswith("."):
                try:
                    out.append(cls.load(fn[:-5], d))
                except StateError as exc:
                    LOG.warning("skipping unreadable state file: %s", exc)
        return out

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the name's lock, with ``record`` reloaded from disk: change it, then
        ``save()`` inside the block. Re-entrant within a thread."""
        with self._exclusive() as outermost:
            if outermost:
                if self._written is None or self._written != _identity(self.path):
                    fresh = self._read(self.path, self.name)
                    if fresh.cluster_id != self.cluster_id:
                        raise StateError("%s now records another cluster (%s, not %s)"
                                         % (self.path, fresh.cluster_id, self.cluster_id))
                    self.record = fresh
                # a change made in this block and not saved is read back over
                self._written = None
            yield

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """The name's lock, taken once per thread; yields whether this is the
        outermost hold."""
        depth = getattr(self._held, "depth", 0)
        self._held.depth = depth + 1
        try:
            if depth:
                yield False
            else:
                with _flock(self.path + ".lock"):
                    yield True
        finally:
            self._held.depth = depth

    def save(self) -> None:
        """Write ``record`` atomically and durably (file and directory synced); call
        it inside ``locked()``."""
        d = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".%s.tmp-" % self.name, suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_dumps(self.record))
                f.flush()
                os.fsync(f.fileno())
                written = _identity_of(os.fstat(f.fileno()))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            _fsync_dir(d)
            self._written = written
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def remove(self) -> None:
        """Delete the state file, any temp file a killed writer left, and the lock
        file, all while holding the lock (waiters then start over, see _flock)."""
        d = os.path.dirname(self.path)
        with self._exclusive():
            with contextlib.suppress(FileNotFoundError, StateError):
                if self._read(self.path, self.name).cluster_id != self.cluster_id:
                    LOG.warning("%s now records another cluster; leaving it", self.path)
                    return
            stale = glob.glob(os.path.join(glob.escape(d), ".%s.tmp-*.json"
                                           % glob.escape(self.name)))
            for p in [self.path] + stale + [self.path + ".lock"]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)

    def key_path(self, kind: str = "key") -> str:
        """Where this cluster's private key of ``kind`` goes: ``<cluster id>.<kind>``
        next to the state file (by id, so that no other cluster can share it)."""
        return os.path.join(os.path.dirname(self.path), "%s.%s" % (self.cluster_id, kind))

    @staticmethod
    def write_key(path: str, private: str) -> None:
        """Create ``path`` (never an existing file or a symlink) 0600 and write the key."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                         0o600)
        except FileExistsError:
            raise StateError("%s already exists; not overwriting a private key" % path) \
                from None
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # the umask may have taken bits from O_CREAT's mode
            f.write(private)
            f.flush()
            os.fsync(f.fileno())

    # -- records -------------------------------------------------------
    @property
    def cluster_id(self) -> str:
        return self.record.cluster_id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def resources(self) -> Resources:
        return self.record.resources

    def intend(self, kind: str, name: str, **info: Any) -> None:
        """Record that ``name`` is about to be created (id not known yet);
        ``info`` sets fields of its :class:`ResourceEntry`."""
        self.intend_all(kind, [name], **info)

    def intend_all(self, kind: str, names: Sequence[str], **info: Any) -> None:
        """:meth:`intend` for each of ``names`` (the same ``info``), one write."""
        with self.locked():
            for name in names:
                self.resources[kind][name] = ResourceEntry(name=name, id=None, **info)
            self.save()

    def created(self, kind: str, name: str, res_id: str, **info: Any) -> None:
        """Record that ``name`` exists, with its id (and the fields in ``info``)."""
        self.created_all(kind, [(name, res_id, info)])

    def created_all(self, kind: str,
                    changes: Sequence[Tuple[str, str, Mapping[str, Any]]]) -> None:
        """:meth:`created` for each (name, id, info) of ``changes``, one write
        (none without changes)."""
        if not changes:
            return
        with self.locked():
            for name, res_id, info in changes:
                entry = self.resources[kind].get(name) or ResourceEntry(name=name)
                self.resources[kind][name] = dataclasses.replace(entry, id=res_id, **info)
            self.save()

    def forget(self, kind: str, *names: str) -> None:
        """Drop the records of ``names`` (one write for all of them)."""
        if not names:
            return
        with self.locked():
            for name in names:
                self.resources[kind].pop(name, None)
            self.save()

    def entries(self, kind: str) -> List[ResourceEntry]:
        """The recorded resources of ``kind``, by name (a snapshot: other
        threads may change the record meanwhile)."""
        return [e for _, e in sorted(list(self.resources[kind].items()))]

    def ids(self, kind: str) -> List[str]:
        """The ids of the recorded resources of ``kind`` whose id is known, sorted."""
        return sorted(e.id for e in self.entries(kind) if e.id)

    def in_flight(self) -> List[str]:
        """``<kind> <name>`` of each create recorded as intended whose id never came."""
        return sorted("%s %s" % (kind, e.name) for kind in KINDS
                      for e in self.entries(kind) if not e.id)

    def snapshot(self) -> Resources:
        """A copy of every recorded resource, kind -> name -> entry, that later
        changes of the record leave as it is."""
        return {kind: {e.name: copy.deepcopy(e) for e in self.entries(kind)} for kind in KINDS}

    def count(self) -> int:
        return sum(len(v) for v in self.resources.values())

    def listing(self) -> List[str]:
        return ["%s %s (%s)" % (kind[:-1], e.name, e.id or "id unknown")
                for kind in KINDS for e in self.entries(kind)]
