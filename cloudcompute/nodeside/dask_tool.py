"""Node side of Dask's process management: find, wait for and stop the node's
scheduler and worker (no Dask needed).

argv:   DIR MODE [ARGS]; DIR is the Dask directory relative to the home
        directory, holding ROLE.pid, ROLE.log and scheduler.json; MODE is
        ``status`` | ``wait ROLE TIMEOUT`` | ``stop GRACE`` (seconds)
stdout: one JSON object:
        status: {ROLE: {"pid", "alive", "processes"}}, and the scheduler's
                "info" (its scheduler file, or null)
        wait:   {"state": "ready" | "died" | "timeout", "pid", "info" or "log"}
        stop:   {"stopped": [ROLE...], "left": [ROLE...]}
exit:   0; 1 (an unknown mode, with a message on stderr) otherwise

It acts only on process groups whose leader was started by
``cloudcompute.daskcluster.remote.start_command`` (its command line names a
``distributed.cli.dask_`` module and its environment carries
``CLOUDCOMPUTE_DASK=``), never on a stranger that reused a pid, and every
wait in it is bounded.
"""
import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

ROLES = ("scheduler", "worker")
MARK = b"distributed.cli.dask_"
ENV = b"CLOUDCOMPUTE_DASK="
D = ""
"""The Dask directory (absolute), set by main."""


def pid_of(role: str) -> Optional[int]:
    try:
        with open(os.path.join(D, role + ".pid")) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read(pid: int, name: str) -> bytes:
    try:
        with open("/proc/%d/%s" % (pid, name), "rb") as f:
            return f.read()
    except OSError:
        return b""


def ours(pid: int) -> bool:
    return any(e.startswith(ENV) for e in read(pid, "environ").split(bytes(1)))


def is_leader(pid: int) -> bool:
    """The recorded pid still runs one of our Dask commands (not a reused pid)."""
    return MARK in read(pid, "cmdline") and ours(pid)


def members(pgid: int) -> List[int]:
    """Processes of the group our launch created (the leader may be gone), each
    carrying our environment mark."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z" and ours(int(entry)):
            out.append(int(entry))
    return out


def tail(role: str, size: int = 4000) -> str:
    try:
        with open(os.path.join(D, role + ".log"), "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def scheduler_info() -> Any:
    try:
        with open(os.path.join(D, "scheduler.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def status() -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for role in ROLES:
        pid = pid_of(role)
        out[role] = {"pid": pid, "alive": bool(pid and is_leader(pid)),
                     "processes": len(members(pid)) if pid else 0}
    out["scheduler"]["info"] = scheduler_info()
    return out


def wait(role: str, timeout: float) -> Dict[str, Any]:
    """Until the scheduler file appears (scheduler) or the pid runs (worker),
    the process dies, or the timeout passes."""
    t0 = time.monotonic()
    while True:
        pid = pid_of(role)
        alive = bool(pid and is_leader(pid))
        info = scheduler_info() if role == "scheduler" else None
        if alive and (role != "scheduler" or info):
            return {"state": "ready", "pid": pid, "info": info}
        elapsed = time.monotonic() - t0
        if not alive and (pid or elapsed > 5):
            return {"state": "died", "pid": pid, "log": tail(role)}
        if elapsed > timeout:
            return {"state": "timeout", "pid": pid, "log": tail(role)}
        time.sleep(0.1)


def stop(grace: float) -> Dict[str, Any]:
    """SIGTERM to each live group, SIGKILL to what is left after ``grace`` seconds
    (and at most 5 s more); the pid and scheduler files go."""
    recorded = {r: pid_of(r) for r in ROLES}
    groups = {r: p for r, p in recorded.items() if p and members(p)}
    for sig, bound in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        left = [p for p in groups.values() if members(p)]
        for pgid in left:
            try:
                os.killpg(pgid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + bound
        while any(members(p) for p in left) and time.monotonic() < deadline:
            time.sleep(0.05)
    for name in ("scheduler.pid", "worker.pid", "scheduler.json"):
        try:
            os.unlink(os.path.join(D, name))
        except OSError:
            pass
    return {"stopped": sorted(groups), "left": sorted(r for r, p in groups.items()
                                                      if members(p))}


def main(argv: List[str]) -> int:
    global D
    D = os.path.expanduser("~/" + argv[0])
    mode = argv[1]
    if mode == "status":
        result = status()
    elif mode == "wait":
        result = wait(argv[2], float(argv[3]))
    elif mode == "stop":
        result = stop(float(argv[2]))
    else:
        raise SystemExit("unknown mode %r" % mode)
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
