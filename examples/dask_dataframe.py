"""Dask DataFrames on a cloudcompute cluster: a groupby and a join on data made on the nodes.

The sales table is generated on the workers (``dd.from_map``: each partition
is made where it is computed, nothing is uploaded), kept in their memory,
aggregated per store and joined with a store table to sum per region. A
sample of partitions is checked against plain pandas on this machine.

    python examples/dask_dataframe.py [--nodes 3] [--partitions 24] [--rows 400000]
"""
import argparse
import logging
import time
from typing import Dict, Sequence

import numpy as np
import pandas as pd

STORES = 40
REGIONS = ("north", "south", "east", "west")


def make_sales(part: int, rows: int) -> pd.DataFrame:
    """One partition of sales, the same wherever it is made (seeded by its number)."""
    rng = np.random.default_rng(part)
    return pd.DataFrame({
        "sale": np.arange(part * rows, (part + 1) * rows, dtype="int64"),
        "store": rng.integers(0, STORES, rows).astype("int64"),
        "amount": rng.gamma(2.0, 20.0, rows).round(2),
    })


def make_stores(_: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"store": np.arange(STORES, dtype="int64"),
                         "region": [REGIONS[s % len(REGIONS)] for s in range(STORES)]})


def per_store(sales):
    """The groupby-aggregate: works on a pandas or a Dask DataFrame."""
    return sales.groupby("store")["amount"].agg(["sum", "count", "max"])


def per_region(sales, stores):
    """The join, then a groupby."""
    return sales.merge(stores, on="store").groupby("region")["amount"].sum()


def dask_tables(partitions: int, rows: int):
    import dask.dataframe as dd
    sales = dd.from_map(make_sales, range(partitions), rows=rows,
                        meta=make_sales(0, 0), label="sales")  # meta: no local partition
    stores = dd.from_map(make_stores, [0], meta=make_stores().iloc[:0], label="stores")
    return sales, stores


def tidy(frame):
    """A result in one comparable form (Dask may store strings as Arrow strings)."""
    frame = frame.to_frame() if isinstance(frame, pd.Series) else frame
    frame = frame.sort_index().astype("float64")
    frame.index = pd.Index(frame.index.tolist(), name=frame.index.name)
    return frame


def reference(partitions: Sequence[int], rows: int) -> Dict[str, pd.DataFrame]:
    """The same results with pandas, here, for the given partitions."""
    sales = pd.concat([make_sales(p, rows) for p in partitions], ignore_index=True)
    return {"per_store": tidy(per_store(sales)), "per_region": tidy(per_region(sales,
                                                                               make_stores()))}


def run(client, partitions: int, rows: int, sample: Sequence[int] = (0, 1)) -> Dict:
    """Build, aggregate, join and check on the cluster behind ``client``."""
    import dask
    timings = {}
    t0 = time.monotonic()
    sales, stores = dask_tables(partitions, rows)
    sales = client.persist(sales)
    stores = client.persist(stores)
    from distributed import wait
    wait([sales, stores])
    timings["generate on the nodes"] = time.monotonic() - t0
    t0 = time.monotonic()
    by_store = tidy(per_store(sales).compute())
    timings["groupby-aggregate"] = time.monotonic() - t0
    t0 = time.monotonic()
    by_region = tidy(per_region(sales, stores).compute())
    timings["join + groupby"] = time.monotonic() - t0
    t0 = time.monotonic()
    sample = [p for p in sample if p < partitions]
    part = sales.partitions[sample]
    on_cluster = dask.compute(per_store(part), per_region(part, stores))
    expected = reference(sample, rows)
    pd.testing.assert_frame_equal(tidy(on_cluster[0]), expected["per_store"])
    pd.testing.assert_frame_equal(tidy(on_cluster[1]), expected["per_region"])
    timings["check against pandas"] = time.monotonic() - t0
    return {"per_store": by_store, "per_region": by_region, "timings": timings,
            "rows": partitions * rows, "sample": sample}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cloud", help="clouds.yaml entry (default: OS_CLOUD)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=24)
    ap.add_argument("--rows", type=int, default=400_000, help="rows per partition")
    ap.add_argument("--flavor", default="m1.small", help="2 GiB or more per node")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    from cloudcompute import Cluster, ClusterSpec  # here: the workers import this module
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    with Cluster(ClusterSpec(name="daskdemo", nodes=args.nodes, flavor=args.flavor),
                 cloud=args.cloud) as cluster:
        t_up = time.monotonic()
        with cluster.dask() as client:
            t_dask = time.monotonic()
            print("dashboard: %s (forwarded over SSH; open it while this runs)"
                  % client.dashboard_link)
            result = run(client, args.partitions, args.rows)
            t_run = time.monotonic()
        t_stop = time.monotonic()
    t_down = time.monotonic()

    print()
    print(result["per_region"].rename(columns={"amount": "sales"}).to_string())
    print()
    print("%d rows in %d partitions on %d nodes; partitions %s match pandas"
          % (result["rows"], args.partitions, args.nodes, result["sample"]))
    print()
    print("| phase                  | seconds |")
    print("|------------------------|---------|")
    rows = [("cluster up", t_up - t0), ("Dask up (env + start)", t_dask - t_up)]
    rows += list(result["timings"].items())
    rows += [("Dask stop", t_stop - t_run), ("teardown", t_down - t_stop),
             ("all", t_down - t0)]
    for name, value in rows:
        print("| %-22s | %7.2f |" % (name, value))


if __name__ == "__main__":
    main()
