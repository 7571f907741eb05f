"""Dask on the cluster against cloudcompute's own executor.

- Start-up: from ``up()`` returning to a connected Dask Client, against the
  time to ship and start the warm workers (``cluster.executor()`` and the
  first ``map``). Dask is measured twice: cold (``prepare`` ships the
  client's dask/distributed/numpy/pandas/pyarrow wheels and builds the
  environment on every node) and warm (the environment is found on the
  nodes by its hash; only the processes start and the client connects).
- A groupby-sum of one local DataFrame over 8 partitions: Dask
  (``dd.from_pandas`` + ``groupby().sum()``, the partitions travel through
  the forwarded scheduler) and ``map_partitions`` (each partition goes to a
  warm worker as Arrow/columnar bytes, the partial sums are combined here).
  Best of 3 each, results checked equal.

Nothing of Dask is imported at module level: the executor ships this module
to the nodes by reference for :func:`partial_sums`.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Dict, List

from benchmarks import remote_funcs as rf


def partial_sums(part: Any) -> Any:
    """One partition's groupby-sum (runs on a node, under map_partitions)."""
    return part.groupby("k")["v"].sum()


def frame(rows: int, groups: int = 1000) -> Any:
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(7)
    return pd.DataFrame({"k": rng.integers(0, groups, rows).astype("int64"),
                         "v": rng.random(rows)})


def _best(fn: Callable[[], Any], runs: int = 3) -> Dict[str, Any]:
    times, value = [], None
    for _ in range(runs):
        t0 = time.monotonic()
        value = fn()
        times.append(time.monotonic() - t0)
    return {"best_s": min(times), "runs_s": times, "value": value}


def _measure(c: Any, t_up: float, rows: int, partitions: int) -> Dict[str, Any]:
    import pandas as pd
    out: Dict[str, Any] = {"nodes": len(c.nodes), "rows": rows, "partitions": partitions,
                           "flavor": c.spec.flavor}
    c.executor()
    c.map(rf.noop, range(sum(n.slots for n in c.nodes)))
    out["executor_first_map_s"] = time.monotonic() - t_up

    t0 = time.monotonic()
    client = c.dask()
    out["dask_cold_s"] = time.monotonic() - t0
    out["dask_cold_parts"] = dict(client.cloudcompute.timings)
    client.cloudcompute.close(stop=True)
    t0 = time.monotonic()
    client = c.dask()
    out["dask_warm_s"] = time.monotonic() - t0
    out["dask_warm_parts"] = dict(client.cloudcompute.timings)

    import dask.dataframe as dd
    df = frame(rows)
    expected = df.groupby("k")["v"].sum()
    c.map(rf.noop, range(sum(n.slots for n in c.nodes)))  # prepare restarted the workers

    def with_dask() -> Any:
        with warnings.catch_warnings():  # "large graph": the data is local on purpose
            warnings.simplefilter("ignore", UserWarning)
            ddf = dd.from_pandas(df, npartitions=partitions)
            return ddf.groupby("k")["v"].sum().compute()

    def with_map_partitions() -> Any:
        sums = c.map_partitions(partial_sums, df, partitions=partitions)
        if isinstance(sums, pd.DataFrame):  # the partial Series come back as one column
            sums = sums.iloc[:, 0]
        return sums.groupby(level=0).sum()
    for name, fn in (("dask", with_dask), ("map_partitions", with_map_partitions)):
        res = _best(fn)
        pd.testing.assert_series_equal(res.pop("value").sort_index(), expected,
                                       check_names=False)
        out["groupby_" + name] = res
    client.cloudcompute.close(stop=True)
    return out


def measure(cluster_or_conn: Any, nodes: int = 3, rows: int = 4_000_000,
            partitions: int = 8, flavor: str = "m1.small") -> Dict[str, Any]:
    """On a Cluster that is up (its start-up figures then count from this call),
    or on a new cluster made with a Connection."""
    if hasattr(cluster_or_conn, "dask"):
        return _measure(cluster_or_conn, time.monotonic(), rows, partitions)
    from cloudcompute import Cluster, ClusterSpec
    with Cluster(ClusterSpec(name="bench-dask", nodes=nodes, flavor=flavor),
                 conn=cluster_or_conn) as c:
        return _measure(c, time.monotonic(), rows, partitions)


def targets(res: Dict[str, Any], target: Callable[..., Dict[str, Any]]) -> List[Dict[str, Any]]:
    n = res["nodes"]
    return [
        target("Dask client connected after up(), environment on the nodes (%d nodes), "
               "vs executor + first map" % n,
               res["dask_warm_s"] / res["executor_first_map_s"], 4.0, "ratio", "lower"),
        target("Dask client connected after up(), environment on the nodes (%d nodes)" % n,
               res["dask_warm_s"], 10.0, "s", "lower"),
        target("groupby over %d partitions (%d rows): Dask vs map_partitions"
               % (res["partitions"], res["rows"]),
               res["groupby_dask"]["best_s"] / res["groupby_map_partitions"]["best_s"], 2.0,
               "ratio", "lower"),
    ]


def table(res: Dict[str, Any]) -> List[str]:
    """Markdown rows for bench-results.md."""
    return ["", "Dask on %d %s nodes:" % (res["nodes"], res["flavor"]), "",
            "| what | seconds |", "|---|---|",
            "| executor + first map, from up() returning | %.2f |" % res["executor_first_map_s"],
            "| Dask client, cold (prepare ships the environment) | %.2f |" % res["dask_cold_s"],
            "| Dask client, warm (environment on the nodes) | %.2f |" % res["dask_warm_s"],
            "| groupby over %d partitions, Dask (best of 3) | %.2f |"
            % (res["partitions"], res["groupby_dask"]["best_s"]),
            "| groupby over %d partitions, map_partitions (best of 3) | %.2f |"
            % (res["partitions"], res["groupby_map_partitions"]["best_s"])]
