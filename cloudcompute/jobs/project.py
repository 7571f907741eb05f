"""The caller's project: the local modules a function can import on a node.

When a function travels, the Python files it can import from the caller's
own project travel with it, so ``from helpers import clean`` or
``from mypkg.util import f`` works on the node unchanged. The rule:

* the *root* is the ``sys.path`` entry the function's module was imported
  from (for a script, the script's directory);
* shipped are the ``.py`` files directly in the root (sibling modules) and
  every package below it (a directory with ``__init__.py``, recursively);
* nothing from site-packages, the standard library or a virtual
  environment, and not cloudcompute itself (the node has stand-ins);
* not shipped: compiled extensions, data files, namespace packages (no
  ``__init__.py``) and anything outside the root.

Files go by content hash; a node keeps what it received, so an unchanged
project costs one manifest exchange and no file transfer.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import sysconfig
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from cloudcompute.exceptions import SerializationError

MAX_FILES = 2000
MAX_BYTES = 32 << 20
SKIP_DIRS = {"__pycache__", "node_modules", "build", "dist", "site-packages",
             "dist-packages", "cloudcompute"}


@dataclasses.dataclass(frozen=True)
class Project:
    """A project root and its shippable files: relative path -> sha256."""
    root: str
    files: Dict[str, str]
    digest: str
    size: int

    def read(self, sha256: str) -> bytes:
        """The content of the file with this hash."""
        for rel, sha in self.files.items():
            if sha == sha256:
                with open(os.path.join(self.root, rel), "rb") as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise SerializationError("%s changed while it was being shipped"
                                             % os.path.join(self.root, rel))
                return data
        raise KeyError(sha256)


_HASHES: Dict[Tuple[str, int, int], str] = {}


def _sha256(path: str, st: os.stat_result) -> str:
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _HASHES:
        with open(path, "rb") as f:
            _HASHES[key] = hashlib.sha256(f.read()).hexdigest()
    return _HASHES[key]


def _installed_prefixes() -> Tuple[str, ...]:
    paths = sysconfig.get_paths()
    found = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    found |= {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return tuple(os.path.join(os.path.realpath(p), "") for p in found if p)


def root_of(fn: Callable[..., Any]) -> Optional[str]:
    """The project root of ``fn``'s module, or None if it is installed or built in."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    filename = getattr(module, "__file__", None)
    if not filename:
        return None
    filename = os.path.realpath(filename)
    if filename.startswith(_installed_prefixes()) or "site-packages" in filename:
        return None
    spec = getattr(module, "__spec__", None)
    name = str(getattr(spec, "name", None) or getattr(module, "__name__", "__main__"))
    root = os.path.dirname(filename)
    if name != "__main__":
        depth = name.count(".") + (1 if os.path.basename(filename) == "__init__.py" else 0)
        for _ in range(depth):
            root = os.path.dirname(root)
    return root


def _walk(root: str) -> Iterator[str]:
    """Relative paths of the shippable files under ``root``."""
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith(".") or entry.name in SKIP_DIRS:
                continue
            if entry.is_file() and entry.name.endswith(".py"):
                yield entry.name
            elif entry.is_dir(follow_symlinks=False) and \
                    os.path.isfile(os.path.join(entry.path, "__init__.py")):
                for rel in _walk(entry.path):
                    yield entry.name + "/" + rel


def collect(root: str) -> Project:
    """The project under ``root``; SerializationError if it is too large to ship."""
    files: Dict[str, str] = {}
    total = 0
    for rel in _walk(root):
        path = os.path.join(root, rel)
        st = os.stat(path)
        total += st.st_size
        if len(files) >= MAX_FILES or total > MAX_BYTES:
            raise SerializationError(
                "the project at %s has more than %d Python files or %d MiB; cloudcompute "
                "ships a function's project with it (sibling modules and packages): run "
                "from a smaller project directory" % (root, MAX_FILES, MAX_BYTES >> 20))
        files[rel] = _sha256(path, st)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return Project(root, files, digest, total)


def for_function(fn: Callable[..., Any]) -> Optional[Project]:
    """The project to ship with ``fn``, or None if its module is not local."""
    root = root_of(fn)
    return collect(root) if root is not None else None
