"""What the executor gets out of a node: slots against one task at a time.

CPU-bound pure-Python tasks (about 0.5 s each) on one node of a flavor with
2 vCPUs, run with the default slots (the flavor's vCPUs) and with
``slots=1``, side by side in one run.
"""
import time
from typing import Any, Callable, Dict, List

from benchmarks import remote_funcs as rf
from cloudcompute import Cluster, ClusterSpec
from cloudcompute.jobs.executor import Executor


def calibrate(seconds: float = 0.5) -> int:
    """Iterations of ``rf.spin`` that take about ``seconds`` on this machine."""
    n = 200_000
    t0 = time.perf_counter()
    rf.spin(n)
    return int(n * seconds / (time.perf_counter() - t0))


def slots_speedup(conn: Any, tasks: int = 40, flavor: str = "m1.medium") -> Dict[str, Any]:
    n = calibrate()
    out: Dict[str, Any] = {"tasks": tasks, "flavor": flavor, "iterations": n}
    with Cluster(ClusterSpec(name="bench-slots", nodes=1, flavor=flavor), conn=conn) as c:
        node = c.node_names()[0]
        runs = {"default": c.executor(),
                "slots=1": Executor({node: c.connection(node)}, python=None,
                                    slots={node: 1})}
        for name, ex in runs.items():
            ex.map(rf.spin, [1000] * 4)  # warm workers
            t0 = time.monotonic()
            ex.map(rf.spin, [n] * tasks)
            wall = time.monotonic() - t0
            out[name] = {"slots": ex.worker(node).slots, "wall_s": wall,
                         "tasks_per_s": tasks / wall}
        runs["slots=1"].close()
    out["speedup"] = out["default"]["tasks_per_s"] / out["slots=1"]["tasks_per_s"]
    return out


def targets(res: Dict[str, Any], target: Callable[..., Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [target("CPU-bound tasks on one %s node: default slots (%d) vs slots=1"
                   % (res["flavor"], res["default"]["slots"]), res["speedup"], 1.7, "ratio",
                   "higher")]


def table(res: Dict[str, Any]) -> List[str]:
    """Markdown rows for bench-results.md."""
    lines = ["", "%d CPU-bound tasks (%d iterations each) on one %s node:"
             % (res["tasks"], res["iterations"], res["flavor"]), "",
             "| slots | wall s | tasks/s |", "|---|---|---|"]
    for key in ("default", "slots=1"):
        r = res[key]
        lines.append("| %s (%d) | %.1f | %.2f |" % (key, r["slots"], r["wall_s"],
                                                   r["tasks_per_s"]))
    return lines
