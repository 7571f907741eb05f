"""The exceptions of cloudcompute: one root, subclasses that carry data."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence

if TYPE_CHECKING:
    from cloudcompute.record import ResourceEntry


class CloudComputeError(Exception):
    """Root of every error raised by cloudcompute."""


class ConfigError(CloudComputeError, ValueError):
    """A spec or setting is invalid. ``problems`` lists every one found."""

    def __init__(self, problems: Sequence[str] | str):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class CloudAuthError(CloudComputeError):
    """The cloud refused the credentials or could not be reached."""

    def __init__(self, message: str, cloud: Optional[str] = None):
        self.cloud = cloud
        super().__init__(message)


class PreflightError(CloudComputeError):
    """The request cannot be met; nothing was created. ``problems`` lists why."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("pre-flight found %d problem(s): %s"
                         % (len(self.problems), "; ".join(self.problems)))


class ProvisioningError(CloudComputeError):
    """Creating the cluster failed.

    ``resources`` holds what had been created (and is recorded in the state
    file), kind -> name -> :class:`~cloudcompute.record.ResourceEntry`;
    ``rolled_back`` tells whether all of it has since been deleted.
    """

    def __init__(self, message: str,
                 resources: Optional[Mapping[str, Mapping[str, "ResourceEntry"]]] = None,
                 rolled_back: bool = False):
        self.resources: Dict[str, Dict[str, "ResourceEntry"]] = {
            kind: dict(entries) for kind, entries in (resources or {}).items()}
        self.rolled_back = rolled_back
        super().__init__(message)


class ServerFault(ProvisioningError):
    """A server went to ERROR; ``fault`` is Nova's fault message."""

    def __init__(self, server_id: str, name: str, fault: str, **kw: Any):
        self.server_id = server_id
        self.name = name
        self.fault = fault
        super().__init__("server %s (%s) went to ERROR: %s"
                         % (name, server_id, fault), **kw)


class WaitTimeout(CloudComputeError):
    """A bounded wait ran out. ``waiting_for`` names what was not reached."""

    def __init__(self, what: str, timeout: float, waiting_for: Sequence[str] = ()):
        self.what = what
        self.timeout = timeout
        self.waiting_for = list(waiting_for)
        extra = (" (still waiting for: %s)" % ", ".join(self.waiting_for)
                 if self.waiting_for else "")
        super().__init__("%s not reached within %.0fs%s" % (what, timeout, extra))


class TeardownError(CloudComputeError):
    """Teardown could not delete everything. ``leftovers`` names what is left."""

    def __init__(self, leftovers: Sequence[str], errors: Sequence[str] = ()):
        self.leftovers = list(leftovers)
        self.errors = list(errors)
        super().__init__("teardown left %d resource(s): %s%s"
                         % (len(self.leftovers), ", ".join(self.leftovers),
                            (" (errors: %s)" % "; ".join(self.errors))
                            if self.errors else ""))


class StateError(CloudComputeError):
    """A cluster state file is missing, locked or unreadable."""


class SSHError(CloudComputeError):
    """SSH to a node failed. ``node`` names it; ``fatal`` means retry is futile."""

    def __init__(self, node: str, message: str, fatal: bool = False):
        self.node = node
        self.fatal = fatal
        super().__init__("%s: %s" % (node, message))


class HostKeyMismatch(SSHError):
    """The node presented a host key other than the one recorded for it."""

    def __init__(self, node: str, expected: str, got: str):
        self.expected = expected
        self.got = got
        super().__init__(node, "host key mismatch: expected %s, got %s"
                         % (expected, got), fatal=True)


class RemoteCommandError(CloudComputeError):
    """A remote command exited non-zero. ``result`` is its CommandResult."""

    def __init__(self, result: Any):
        self.result = result
        tail = (result.stderr or result.stdout or "").strip().splitlines()[-10:]
        super().__init__("command on %s exited %s: %s\n%s"
                         % (result.node, result.exit_code, result.command,
                            "\n".join(tail)))


class RemoteTaskError(CloudComputeError):
    """A task raised on a node; carries the node, task and remote traceback."""

    def __init__(self, node: str, task: str, exc_type: str, message: str,
                 traceback: str):
        self.node = node
        self.task = task
        self.exc_type = exc_type
        self.remote_message = message
        self.traceback = traceback
        super().__init__("task %s on %s raised %s: %s\n--- remote traceback ---\n%s"
                         % (task, node, exc_type, message, traceback.rstrip()))


class TaskKilled(CloudComputeError):
    """The remote task's process was killed (signal, e.g. the OOM killer)."""

    def __init__(self, node: str, task: str, signal: Optional[int], detail: str = ""):
        self.node = node
        self.task = task
        self.signal = signal
        super().__init__("task %s on %s was killed by signal %s%s"
                         % (task, node, signal, (": " + detail) if detail else ""))


class TaskTimeout(CloudComputeError):
    """A task ran past its ``timeout``; its process on the node was killed."""

    def __init__(self, node: str, task: str, seconds: float):
        self.node = node
        self.task = task
        self.seconds = seconds
        super().__init__("task %s on %s ran past its timeout of %gs and was killed"
                         % (task, node, seconds))


class MapError(CloudComputeError):
    """Some tasks of a ``map`` failed.

    ``results`` holds every finished value by position, ``errors`` the
    exception of each failed position, ``pending`` the positions that never
    ran (cancelled once the first failure was known)."""

    def __init__(self, total: int, results: Mapping[int, Any],
                 errors: Mapping[int, BaseException], pending: Sequence[int] = ()):
        self.total = total
        self.results = dict(results)
        self.errors = dict(sorted(errors.items()))
        self.pending = sorted(pending)
        first, exc = next(iter(self.errors.items()))
        super().__init__("%d of %d tasks failed (%d finished, %d not run); first, item %d: %s"
                         % (len(self.errors), total, len(self.results), len(self.pending),
                            first, exc))


class NodeDataRefused(CloudComputeError):
    """A node sent something the client refuses to hold or decode (a size over
    the cap, a format it did not offer, an unsafe member). Nothing was run."""

    def __init__(self, node: str, message: str):
        self.node = node
        super().__init__("%s: refused what the node sent: %s" % (node, message))


class NodeLost(CloudComputeError):
    """A node stopped answering; ``tasks`` could not be completed elsewhere."""

    def __init__(self, node: str, message: str, tasks: Sequence[str] = ()):
        self.node = node
        self.tasks = list(tasks)
        super().__init__("node %s lost: %s" % (node, message))


class IntegrityError(CloudComputeError):
    """A payload or result arrived with a different sha256 than was sent."""

    def __init__(self, node: str, what: str, expected: str, got: str):
        self.node = node
        self.what = what
        super().__init__("%s from/to %s: sha256 %s != %s" % (what, node, got, expected))


class FanOutError(CloudComputeError):
    """``put`` reached some nodes only. ``failed``: node -> the exception of
    its last attempt (the direct upload); ``succeeded``: nodes holding the file."""

    def __init__(self, path: str, failed: Mapping[str, BaseException], succeeded: Sequence[str]):
        self.path = path
        self.failed = dict(failed)
        self.succeeded = list(succeeded)
        super().__init__("put of %s failed on %d node(s): %s" % (path, len(self.failed), "; ".join(
            "%s (%s: %s)" % (n, type(e).__name__, e) for n, e in sorted(self.failed.items()))))


class EnvironmentMismatch(CloudComputeError):
    """A node's Python environment cannot run the job as asked."""

    def __init__(self, node: str, problems: Sequence[str]):
        self.node = node
        self.problems = list(problems)
        super().__init__("%s: %s" % (node, "; ".join(self.problems)))


class SerializationError(CloudComputeError):
    """A function or value cannot be shipped; nothing was sent."""
