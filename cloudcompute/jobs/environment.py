"""The Python environment on the nodes: check it, and build one where needed.

``prepare(requirements)`` checks each node's ``python3`` against pip-style
requirements. Where something is missing or too old it builds a virtual
environment on the node (numpy and pandas included, at this machine's
versions unless the requirements name them) from wheels that this machine downloads for the
node's Python and platform and ships over SSH; the node installs them with
``pip --no-index``, so air-gapped nodes work. An environment is named by the
hash of what it holds and marked complete only at the end, so a second run
(or a second cluster) skips all of it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

from packaging.requirements import Requirement
from packaging.version import Version

from cloudcompute import nodeside
from cloudcompute.exceptions import EnvironmentMismatch
from cloudcompute.jobs.protocol import NODE_DIR
from cloudcompute.ssh.client import NodeConnection

LOG = logging.getLogger(__name__)
REMOTE_BASE = NODE_DIR


def client_requirements(packages: Sequence[str] = ("numpy", "pandas", "pyarrow",
                                                   "cloudpickle")) -> List[str]:
    """Pins of this machine's versions (what ``match_client=True`` asks for)."""
    from importlib import metadata
    pins = []
    for name in packages:
        try:
            pins.append("%s==%s" % (name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return pins


def probe(conn: NodeConnection, names: Sequence[str], python: str = "python3") -> Dict[str, Any]:
    """What ``python`` on the node is (:mod:`cloudcompute.nodeside.probe`): ``python``
    (its version), ``platform`` and ``packages`` (name -> version, or None)."""
    result = conn.run(nodeside.command("probe", json.dumps(list(names)), python=python))
    return json.loads(result.stdout)


def missing(requirements: Sequence[str], found: Dict[str, Optional[str]]) -> List[str]:
    """The requirements that the found versions do not satisfy, with why."""
    problems = []
    for text in requirements:
        req = Requirement(text)
        have = found.get(req.name)
        if have is None:
            problems.append("%s: not installed" % text)
        elif req.specifier and not req.specifier.contains(Version(have), prereleases=True):
            problems.append("%s: found %s" % (text, have))
    return problems


def _platforms(node_platform: str) -> List[str]:
    """pip --platform tags for a node's sysconfig platform (glibc Linux)."""
    if not node_platform.startswith("linux-"):
        return [node_platform.replace("-", "_").replace(".", "_")]
    arch = node_platform.split("-", 1)[1]
    tags = ["manylinux_2_%d_%s" % (minor, arch) for minor in range(17, 40)]
    return tags + ["manylinux2014_%s" % arch, "linux_%s" % arch]


def wheelhouse(requirements: Sequence[str], python: str, node_platform: str,
               cache_dir: Optional[str] = None) -> str:
    """Download wheels for the node (cached by what they are for); return the directory."""
    key = hashlib.sha256(json.dumps([sorted(requirements), python.rsplit(".", 1)[0],
                                     node_platform]).encode()).hexdigest()[:16]
    base = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "cloudcompute",
                                     "wheels")
    target = os.path.join(base, key)
    if os.path.exists(os.path.join(target, ".complete")):
        return target
    os.makedirs(target, exist_ok=True)
    major_minor = "".join(python.split(".")[:2])
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "--python-version", major_minor, "--implementation", "cp",
           "-d", target]
    for tag in _platforms(node_platform):
        cmd += ["--platform", tag]
    cmd += list(requirements) + ["pip"]
    LOG.info("downloading wheels for Python %s on %s: %s", python, node_platform,
             " ".join(requirements))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EnvironmentMismatch("(client)", ["cannot download wheels for %s: %s"
                                               % (" ".join(requirements),
                                                  proc.stderr.strip()[-1500:])])
    open(os.path.join(target, ".complete"), "w").close()
    return target


def with_core(requirements: Sequence[str]) -> List[str]:
    """Requirements plus numpy and pandas (the worker's own), pinned to this machine's
    versions unless named: a built environment holds its own consistent stack, since
    binaries built for one numpy break with another (as the image's pandas would)."""
    named = {Requirement(r).name.lower() for r in requirements}
    core = [p for p in client_requirements(("numpy", "pandas"))
            if p.split("==")[0] not in named]
    return list(requirements) + core


def ensure(conn: NodeConnection, requirements: Sequence[str], wheels: Optional[str] = None,
           cache_dir: Optional[str] = None) -> str:
    """Make ``requirements`` importable on the node; return the python to use there."""
    names = [Requirement(r).name for r in requirements]
    info = probe(conn, names)
    if not missing(requirements, info["packages"]):
        return "python3"
    requirements = with_core(requirements)
    names = [Requirement(r).name for r in requirements]
    env_key = hashlib.sha256(json.dumps([sorted(requirements), info["python"],
                                         info["platform"]]).encode()).hexdigest()[:16]
    env = posixpath.join(REMOTE_BASE, "env-" + env_key)
    python = posixpath.join(env, "bin", "python")
    done = conn.run(["test", "-f", posixpath.join(env, ".complete")], warn=True)
    if done.ok:
        return python
    LOG.info("%s: building environment %s for %s", conn.name, env_key,
             "; ".join(missing(requirements, info["packages"])))
    local = wheels or wheelhouse(requirements, info["python"], info["platform"], cache_dir)
    remote_wheels = posixpath.join(REMOTE_BASE, "wheels-" + env_key)
    conn.run(["mkdir", "-p", remote_wheels])
    names_here = sorted(f for f in os.listdir(local) if f.endswith(".whl"))
    for name in names_here:
        with open(os.path.join(local, name), "rb") as f, \
                conn.sftp.open(posixpath.join(remote_wheels, name), "wb") as out:
            out.set_pipelined(True)
            out.write(f.read())
    pip_wheel = next((n for n in names_here if n.startswith("pip-")), None)
    if pip_wheel is None:
        raise EnvironmentMismatch(conn.name, ["no pip wheel among the shipped wheels"])
    conn.run(["rm", "-rf", env])
    conn.run(["python3", "-m", "venv", "--without-pip", env])
    result = conn.run([python, posixpath.join(remote_wheels, pip_wheel) + "/pip", "install",
                       "--quiet", "--no-index", "--disable-pip-version-check",
                       "--find-links", remote_wheels] + list(requirements), warn=True)
    if not result.ok:
        raise EnvironmentMismatch(conn.name, ["installing %s failed: %s"
                                              % (" ".join(requirements),
                                                 result.stderr.strip()[-1500:])])
    after = probe(conn, names, python)
    still = missing(requirements, after["packages"])
    if still:
        raise EnvironmentMismatch(conn.name, still)
    conn.run(["touch", posixpath.join(env, ".complete")])
    conn.run(["rm", "-rf", remote_wheels])
    return python
