"""Node side of a download: a file to stdout behind its size, its hash to stderr.

argv:   PATH [FLAGS]; FLAGS holds "r" to remove the file once it is open,
        "n" to skip hashing (the client knows the sha256 and checks that)
stdout: the file's size as 8 bytes (big-endian), then its bytes
stderr: at the end, the sha256 (hex, no newline) unless "n"
exit:   0; 1 with a traceback on stderr when the file cannot be read
"""
import fcntl
import hashlib
import os
import sys
from typing import List

# Linux's F_SETPIPE_SZ: the fcntl module names it from Python 3.10 on.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
CHUNK = 4 << 20


def main(argv: List[str]) -> int:
    path = argv[0]
    flags = argv[1] if len(argv) > 1 else ""
    h = hashlib.sha256()
    out = sys.stdout.buffer
    try:  # a 1 MiB pipe: fewer, larger writes
        fcntl.fcntl(1, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    with open(path, "rb") as f:
        if "r" in flags:
            os.unlink(path)
        out.write(os.fstat(f.fileno()).st_size.to_bytes(8, "big"))
        for b in iter(lambda: f.read(CHUNK), b""):
            if "n" not in flags:
                h.update(b)
            out.write(b)
    out.flush()
    if "n" not in flags:
        sys.stderr.write(h.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
