"""Node side of an upload: write stdin to a file, hashing it on the way.

argv:   PATH (relative to the working directory, the login home; parent
        directories are made)
stdin:  the file's bytes, up to end of file
stdout: the sha256 (hex) of the bytes written, then a newline
exit:   0; 1 with a traceback on stderr when the file cannot be written

The file is written in place; the client compares the hash with its own.
hashlib uses OpenSSL: coreutils' sha256sum is several times slower.
"""
import fcntl
import hashlib
import io
import os
import sys
from typing import List, cast

# Linux's F_SETPIPE_SZ: the fcntl module names it from Python 3.10 on.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
CHUNK = 4 << 20


def main(argv: List[str]) -> int:
    path = argv[0]
    h = hashlib.sha256()
    try:  # a 1 MiB pipe: fewer, larger reads
        fcntl.fcntl(0, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    stdin = cast(io.BufferedReader, sys.stdin.buffer)
    with open(path, "wb") as f:
        for b in iter(lambda: stdin.read1(CHUNK), b""):
            h.update(b)
            f.write(b)
    print(h.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
