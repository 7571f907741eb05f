"""A pandas workload: group and aggregate a partitioned dataset on the cluster.

Each partition (a CSV or Parquet file, or a synthetic one) is sent to a node,
aggregated there, and the partial results are combined here; the script
checks the answer against a local computation. Swap in your own files:

    python examples/pandas_groupby.py data/part-*.parquet --key city --value sales
"""
import argparse
import glob
import logging

import numpy as np
import pandas as pd

from cloudcompute import Cluster, ClusterSpec


def partial_aggregate(df: pd.DataFrame, key: str, value: str) -> pd.DataFrame:
    """Sum, count, min and max of value per key: parts that combine exactly."""
    g = df.groupby(key)[value]
    return pd.DataFrame({"sum": g.sum(), "count": g.count(), "min": g.min(), "max": g.max()})


def combine(parts: list) -> pd.DataFrame:
    allp = pd.concat(parts)
    g = allp.groupby(level=0)
    out = pd.DataFrame({"sum": g["sum"].sum(), "count": g["count"].sum(),
                        "min": g["min"].min(), "max": g["max"].max()})
    out["mean"] = out["sum"] / out["count"]
    return out.sort_index()


def synthetic(n_parts: int, rows: int) -> list:
    rng = np.random.default_rng(42)
    cities = np.array(["Berlin", "Lagos", "Lima", "Osaka", "Perth", "Quito", "Tunis"])
    return [pd.DataFrame({"city": cities[rng.integers(0, len(cities), rows)],
                          "sales": rng.integers(0, 10_000, rows)}) for _ in range(n_parts)]


def read(path: str) -> pd.DataFrame:
    return pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="CSV or Parquet partitions (default: synthetic)")
    ap.add_argument("--key", default="city")
    ap.add_argument("--value", default="sales")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cloud")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    paths = [p for pattern in args.files for p in sorted(glob.glob(pattern))]
    parts = [read(p) for p in paths] if paths else synthetic(6, 200_000)

    with Cluster(ClusterSpec(name="pandas-groupby", nodes=args.nodes), cloud=args.cloud) as c:
        partials = c.map(partial_aggregate, [(df, args.key, args.value) for df in parts],
                         star=True)
    result = combine(partials)
    local = combine([partial_aggregate(df, args.key, args.value) for df in parts])
    pd.testing.assert_frame_equal(result, local)
    print(result.to_string())
    print("rows: %d in %d partitions; equal to the local computation: yes"
          % (sum(len(p) for p in parts), len(parts)))


if __name__ == "__main__":
    main()
