"""Which versions Dask needs to agree on between the client and the nodes.

Dask's client, scheduler and workers exchange msgpack frames and
cloudpickled functions; a different dask, distributed, cloudpickle or msgpack
on one side breaks that in ways that show up late and obscurely, and so does
bytecode from another Python minor version. Those must match exactly.
numpy and pandas only have to read each other's data: a difference is a
warning. The rest of what distributed compares (tornado, toolz, lz4) and
what the dashboard needs (bokeh) is pinned to the client's version when the
client has it, so a built environment holds the same stack, but a
difference there is only a warning too.
"""
from __future__ import annotations

import logging
import sys
from importlib import metadata
from typing import Dict, List, Mapping, Optional

from cloudcompute.exceptions import CloudComputeError, EnvironmentMismatch

LOG = logging.getLogger(__name__)

MUST_MATCH = ("dask", "distributed", "cloudpickle", "msgpack")
SHOULD_MATCH = ("numpy", "pandas", "pyarrow", "tornado", "toolz", "lz4", "bokeh")
INSTALL_HINT = "pip install 'cloudcompute[dask]'"


class DaskNotInstalled(CloudComputeError, ImportError):
    """The optional Dask dependencies are missing on this machine."""

    def __init__(self, missing: List[str]):
        self.missing = list(missing)
        super().__init__("Cluster.dask() needs %s on this machine; install them with: %s"
                         % (" and ".join(self.missing), INSTALL_HINT))


def client_versions(get=metadata.version) -> Dict[str, Optional[str]]:
    """This machine's versions of every package in the check (None: not installed),
    plus ``python``."""
    out: Dict[str, Optional[str]] = {"python": "%d.%d.%d" % sys.version_info[:3]}
    for name in MUST_MATCH + SHOULD_MATCH:
        try:
            out[name] = get(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def require_dask(client: Mapping[str, Optional[str]]) -> None:
    """Raise DaskNotInstalled unless dask and distributed are importable here."""
    missing = [n for n in ("dask", "distributed") if client.get(n) is None]
    if missing:
        raise DaskNotInstalled(missing)
    try:
        import dask.dataframe  # noqa: F401  (the extra's dataframe part)
        import distributed  # noqa: F401
    except ImportError as exc:
        raise DaskNotInstalled(["a working dask[dataframe] and distributed (%s)" % exc]) \
            from exc


def requirements(client: Mapping[str, Optional[str]]) -> List[str]:
    """Pins of the client's versions, for ``Cluster.prepare``."""
    return ["%s==%s" % (name, client[name]) for name in MUST_MATCH + SHOULD_MATCH
            if client.get(name)]


def _minor(version: Optional[str]) -> Optional[str]:
    return ".".join(version.split(".")[:2]) if version else None


def compare(node: str, client: Mapping[str, Optional[str]],
            found: Mapping[str, Optional[str]]) -> List[str]:
    """Check a node's versions against the client's.

    Raises EnvironmentMismatch naming both sides for every package that must
    match (and for another Python minor version); returns the differences
    that are only worth a warning."""
    problems = []
    if _minor(client.get("python")) != _minor(found.get("python")):
        problems.append("python: client %s, node %s (the minor versions must match)"
                        % (client.get("python"), found.get("python") or "unknown"))
    for name in MUST_MATCH:
        if client.get(name) != found.get(name):
            problems.append("%s: client %s, node %s" % (
                name, client.get(name) or "not installed", found.get(name) or "not installed"))
    if problems:
        raise EnvironmentMismatch(node, problems)
    warnings = []
    for name in SHOULD_MATCH:
        if client.get(name) and client.get(name) != found.get(name):
            warnings.append("%s: client %s, node %s" % (
                name, client[name], found.get(name) or "not installed"))
    return warnings
