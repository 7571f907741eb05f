"""Node side of a fan-out copy: write stdin to a temporary file, check its sha256,
then rename it into place.

argv:   PATH [SHA256]
stdin:  with SHA256 (a copy from another node), the bytes up to end of file;
        without (from the client), a frame: the size as 8 bytes (big-endian),
        the bytes, then the client's sha256 as 64 hex characters
stdout: the sha256 (hex) of the bytes received, then a newline
exit:   0 once PATH holds the checked bytes; 3 on a hash mismatch or a
        short stream ("sha256 mismatch: ..." on stderr); 4 on SIGTERM or
        SIGHUP (the ssh session went away); 1 with a traceback otherwise

The temporary file (``.NAME.cc-part-PID`` beside PATH) is removed on every
way out; an earlier PATH is left as it was unless the copy is good.
"""
import fcntl
import hashlib
import io
import os
import signal
import sys
from typing import Any, List, cast

# Linux's F_SETPIPE_SZ: the fcntl module names it from Python 3.10 on.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
CHUNK = 4 << 20
MISMATCH_EXIT = 3
SIGNALLED_EXIT = 4


def _bye(*_: Any) -> None:
    sys.exit(SIGNALLED_EXIT)  # unwinds through main's finally: the temporary file goes


def main(argv: List[str]) -> int:
    signal.signal(signal.SIGTERM, _bye)
    signal.signal(signal.SIGHUP, _bye)
    path = argv[0]
    want = argv[1] if len(argv) > 1 else ""
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, ".%s.cc-part-%d" % (os.path.basename(path), os.getpid()))
    stdin = cast(io.BufferedReader, sys.stdin.buffer)
    h = hashlib.sha256()
    left = 0
    try:  # a 1 MiB pipe: fewer, larger reads
        fcntl.fcntl(0, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    try:
        with open(tmp, "wb") as f:
            if want:
                for b in iter(lambda: stdin.read1(CHUNK), b""):
                    h.update(b)
                    f.write(b)
            else:
                left = int.from_bytes(stdin.read(8), "big")
                while left:
                    b = stdin.read1(min(left, CHUNK))
                    if not b:
                        break
                    h.update(b)
                    f.write(b)
                    left -= len(b)
                want = stdin.read(64).decode("ascii", "replace")
        got = h.hexdigest()
        if left or got != want:
            sys.stderr.write("sha256 mismatch: %s (%d bytes missing)\n" % (got, left))
            sys.stdout.write(got + "\n")
            return MISMATCH_EXIT
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    sys.stdout.write(got + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
