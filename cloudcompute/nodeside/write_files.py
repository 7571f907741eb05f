"""Node side of installing the autodown watchdog: write the given files under a directory.

argv:   DIR (relative to the working directory, the login home)
stdin:  a JSON object, path under DIR ("ccwatch/watchdog.py") -> text (the
        watchdog's credential among them: it never appears on a command line)
stdout: nothing
exit:   0; 1 with a traceback on stderr otherwise (stdin not a JSON object,
        a file that cannot be written)

Each file is written as ``PATH.tmp`` and renamed into place; directories are
made as needed. The process's umask is made at least 077 first, so what it
creates is the login user's only (the client runs it under ``umask 077``, which
the watchdog started after it inherits).
"""
import json
import os
import sys
from typing import List


def main(argv: List[str]) -> int:
    os.umask(os.umask(0o077) | 0o077)
    for name, text in json.load(sys.stdin).items():
        path = os.path.join(argv[0], name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
