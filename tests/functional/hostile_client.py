"""The client half of a hostile-node case, run in a process of its own so that
its peak memory is the case's alone (not the test session's other threads).

    python -m tests.functional.hostile_client CASE_JSON

CASE_JSON names the node (name, address, user, key_file, host_keys) and the
hostile script to run as its worker. Prints one JSON line: the exception's
type and message, the peak RSS growth in MiB and the seconds taken.
"""
import json
import sys
import time

from cloudcompute.jobs import wire
from cloudcompute.jobs.executor import Executor
from cloudcompute.ssh.client import NodeConnection
from tests.functional import jobfuncs as jf


def _rss_kb(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main(case):
    conn = NodeConnection(case["name"], case["address"], case["user"], case["key_file"],
                          case["host_keys"])
    node = case["name"]
    ex = Executor({node: conn}, python={node: case["script"]},
                  log_handler=lambda node, task, text: None)
    wire.formats_here()  # the one-time imports (numpy, pyarrow) are not the case's
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak from here on
    base = _rss_kb()
    t0 = time.monotonic()
    exc = None
    try:
        ex.run_on(node, jf.echo, [1], timeout=3)
    except Exception as e:  # noqa: BLE001 - the case asserts the type
        exc = e
    finally:
        ex.abort("hostile case over")
        ex.close()
        conn.close()
    return {"type": type(exc).__name__ if exc else None, "message": str(exc or ""),
            "grew_mib": (_rss_kb("VmHWM") - base) >> 10, "took": time.monotonic() - t0}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
