"""Turning a function and its arguments into what the worker receives.

Functions go by reference (the source of the module that defines them plus
their qualified name) when they are module-level functions; otherwise by
value with cloudpickle, which the caller must allow and the node must be
able to load (same Python minor version, cloudpickle installed). Anything
that cannot be sent is refused before a byte leaves this machine.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from cloudcompute.exceptions import EnvironmentMismatch, SerializationError
from cloudcompute.jobs import wire


class Blobs:
    """The blobs of one request, with their indexes."""

    def __init__(self) -> None:
        self.items: List[bytes] = []

    def add(self, data: bytes) -> int:
        self.items.append(data)
        return len(self.items) - 1


_SOURCES: Dict[Tuple[str, int, int], Tuple[bytes, str]] = {}


def _read_source(filename: str) -> Optional[Tuple[bytes, str]]:
    """(source, sha256) of a module file, read again only when it changes."""
    try:
        st = os.stat(filename)
        key = (filename, st.st_mtime_ns, st.st_size)
        if key not in _SOURCES:
            with open(filename, "rb") as f:
                source = f.read()
            source.decode("utf-8")
            _SOURCES[key] = (source, hashlib.sha256(source).hexdigest())
        return _SOURCES[key]
    except (OSError, UnicodeDecodeError):
        return None


def _module_source(fn: Callable[..., Any]) -> Optional[Tuple[str, str, bytes, str]]:
    """(module name, filename, source, sha256) of a module-level function, if any."""
    if not inspect.isfunction(fn) or "<locals>" in fn.__qualname__ or fn.__name__ == "<lambda>":
        return None
    module = sys.modules.get(fn.__module__)
    filename = getattr(module, "__file__", None)
    if not filename or not filename.endswith(".py"):
        return None
    found = _read_source(filename)
    if found is None:
        return None
    name = fn.__module__
    if name == "__main__":
        spec = getattr(module, "__spec__", None)
        name = spec.name if spec is not None else "cc_main_" + hashlib.sha256(
            filename.encode()).hexdigest()[:8]
    return name, filename, found[0], found[1]


def _package_of(fn: Callable[..., Any]) -> str:
    """The package a module's relative imports resolve against."""
    module = sys.modules.get(fn.__module__)
    return getattr(module, "__package__", None) or ""


def function_spec(fn: Callable[..., Any], blobs: Blobs, allow_pickle: bool,
                  node_versions: Optional[Mapping[str, Any]] = None,
                  node: str = "?", sent: Optional[Set[str]] = None,
                  pickled: Optional[Dict[int, bytes]] = None) -> Dict[str, Any]:
    """Describe ``fn`` for the worker; raise SerializationError if it cannot go.

    A module's source, or a function's pickle, travels once per worker:
    ``sent`` holds the hashes that worker already has. ``pickled`` keeps a
    function's pickle for the tasks of one call (the function's own state is
    pickled once per call, not once per task)."""
    if not callable(fn):
        raise SerializationError("%r is not callable" % (fn,))
    found = _module_source(fn)
    if found is not None:
        module, filename, source, sha = found
        spec: Dict[str, Any] = {"kind": "ref", "module": module, "package": _package_of(fn),
                "filename": filename, "qualname": fn.__qualname__, "sha256": sha}
        if sent is None or sha not in sent:
            spec["blob"] = blobs.add(source)
        return spec
    if not allow_pickle:
        raise SerializationError(
            "%s is not a module-level function, so it can only be sent by value with "
            "cloudpickle; pass allow_pickle=True (the node then needs cloudpickle and "
            "the same Python minor version)" % getattr(fn, "__qualname__", fn))
    if importlib.util.find_spec("cloudpickle") is None:
        raise SerializationError("sending %s by value needs cloudpickle on this machine"
                                 % getattr(fn, "__qualname__", fn))
    if node_versions is not None:
        check_pickle_compatible(node, node_versions)
    data = pickled.get(id(fn)) if pickled is not None else None
    if data is None:
        import cloudpickle
        try:
            data = cloudpickle.dumps(fn, protocol=4)
        except Exception as exc:  # cloudpickle raises many types for unpicklable closures
            raise SerializationError("cannot serialize %s: %s" % (fn, exc)) from exc
        if pickled is not None:
            pickled[id(fn)] = data
    sha = hashlib.sha256(data).hexdigest()
    spec = {"kind": "pickle", "sha256": sha}
    if sent is None or sha not in sent:
        spec["blob"] = blobs.add(data)
    return spec


def check_pickle_compatible(node: str, remote: Mapping[str, Any]) -> None:
    """Refuse cloudpickle unless the node can load what this client pickles."""
    local = wire.versions()
    problems = []
    if local["python"].rsplit(".", 1)[0] != (remote.get("python") or "").rsplit(".", 1)[0]:
        problems.append("Python %s here, %s on the node" % (local["python"], remote.get("python")))
    if not remote.get("cloudpickle"):
        problems.append("cloudpickle %s here, not installed on the node"
                        % local.get("cloudpickle"))
    for mod in ("numpy", "pandas"):
        lv, rv = local.get(mod), remote.get(mod)
        if lv and rv and lv.split(".")[0] != rv.split(".")[0]:
            problems.append("%s %s here, %s on the node" % (mod, lv, rv))
    if problems:
        raise EnvironmentMismatch(node, ["function sent by value needs a compatible "
                                         "environment"] + problems +
                                  ["cluster.prepare(match_client=True) builds one"])


def encode_args(args: Sequence[Any], kwargs: Mapping[str, Any], blobs: Blobs,
                formats: Sequence[str], allow_pickle: bool) -> Tuple[list, dict]:
    def one(value: Any) -> Dict[str, Any]:
        try:
            desc, blob = wire.encode(value, formats, allow_pickle)
        except TypeError as exc:
            raise SerializationError(str(exc)) from exc
        return dict(desc, blob=blobs.add(blob))
    return [one(a) for a in args], {k: one(v) for k, v in kwargs.items()}
