"""Node side of checking a Python environment: its version, platform and packages.

argv:   NAMES, a JSON list of distribution names
stdout: a JSON object (no newline): "python" ("3.11.2"), "platform"
        (sysconfig's, e.g. "linux-x86_64") and "packages", each name -> its
        installed version, or null when it is not installed
exit:   0; 1 with a traceback on stderr otherwise (NAMES missing or not JSON)

Run by the Python being checked (the node's ``python3``, or a virtual
environment's), so the answer is that interpreter's.
"""
import json
import sys
import sysconfig
from importlib import metadata
from typing import Dict, List, Optional


def main(argv: List[str]) -> int:
    packages: Dict[str, Optional[str]] = {}
    for name in json.loads(argv[0]):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    sys.stdout.write(json.dumps({"python": "%d.%d.%d" % sys.version_info[:3],
                                 "platform": sysconfig.get_platform(),
                                 "packages": packages}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
