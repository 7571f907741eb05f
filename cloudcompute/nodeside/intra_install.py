"""Node side of installing node-to-node SSH: write the given files, each 0600.

argv:   DIR, relative to the home directory (made 0700)
stdin:  a JSON object, file name -> text (the private key among them: it
        never appears on a command line)
stdout: the absolute directory, then a newline
exit:   0; 1 with a traceback on stderr otherwise

Every file is created 0600 under a temporary name (exclusively, so never
through a planted file or link) and renamed into place.
"""
import json
import os
import sys
from typing import List


def main(argv: List[str]) -> int:
    d = os.path.join(os.path.expanduser("~"), argv[0])
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    for name, text in sorted(json.load(sys.stdin).items()):
        p = os.path.join(d, name)
        tmp = "%s.tmp-%d" % (p, os.getpid())
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text)
        os.replace(tmp, p)
    sys.stdout.write(d + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
