"""Programs that run on the nodes, with the node's own ``python3``.

Each is a stdlib-only module (Python 3.9+), runnable as a script, whose
docstring states its argv, stdin, stdout and exit codes. Nothing is
installed on a node for them: :func:`command` sends a program's source in
the command line (``python3 -c SOURCE ARGS...``), so a node always runs the
version that matches the client. Values the client chooses (paths, hashes,
directories) are arguments, never pasted into the source.

- ``put``: write stdin to a file, hashing it (upload).
- ``get``: a file to stdout behind its size, its hash to stderr (download).
- ``receive``: a copy checked against a sha256, then renamed into place (fan-out).
- ``intra_install``: the files of node-to-node SSH, each 0600 (``ssh/intra.py``).
- ``dask_tool``: find, wait for and stop the node's Dask processes (``daskcluster``).
- ``probe``: a Python's version, platform and package versions (``jobs/environment.py``).
- ``write_files``: the autodown watchdog's files, the user's only (``autodown/launch.py``).
"""
from __future__ import annotations

import functools
import os
from typing import List

PROGRAMS = ("put", "get", "receive", "intra_install", "dask_tool", "probe", "write_files")
_HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def source(program: str) -> str:
    """The source text of ``program`` (read once per process)."""
    if program not in PROGRAMS:
        raise ValueError("no node-side program %r (there are: %s)"
                         % (program, ", ".join(PROGRAMS)))
    with open(os.path.join(_HERE, program + ".py"), encoding="utf-8") as f:
        return f.read()


def command(program: str, *args: str, python: str = "python3") -> List[str]:
    """The argv that runs ``program`` with ``args`` on a node: ``[python, "-c", source, *args]``."""
    return [python, "-c", source(program), *args]
