"""Quickstart: estimate pi by Monte Carlo on a 3-node cluster.

Runs unchanged on the local all-in-one cloud (``tools/demo.sh``) or on any
cloud named by ``OS_CLOUD`` whose clouds.yaml entry (or the flags below)
names an image with python3 and numpy, a flavor and a network.

    python examples/quickstart.py [--nodes 3] [--samples 20000000]
"""
import argparse
import logging
import time

import numpy as np

from cloudcompute import Cluster, ClusterSpec


def count_inside(seed: int, n: int) -> int:
    """How many of n random points in the unit square fall inside the circle."""
    rng = np.random.default_rng(seed)
    inside = 0
    for start in range(0, n, 1_000_000):
        xy = rng.random((min(1_000_000, n - start), 2))
        inside += int(((xy * xy).sum(axis=1) <= 1.0).sum())
    return inside


def leftover_count(conn, cluster_id: str) -> int:
    """Resources of this cluster the cloud still holds, listed independently by tag."""
    tag = "cc-cluster=" + cluster_id
    n = len(list(conn.compute.servers(tags=tag)))
    for lister in (conn.network.ips, conn.network.networks, conn.network.routers,
                   conn.network.security_groups, conn.network.ports):
        n += len(list(lister(tags=tag)))
    n += int(conn.compute.find_keypair("cc-" + cluster_id, ignore_missing=True) is not None)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cloud", help="clouds.yaml entry (default: OS_CLOUD)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--samples", type=int, default=24_000_000)
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--image")
    ap.add_argument("--flavor")
    ap.add_argument("--network")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    spec = ClusterSpec(name="quickstart", nodes=args.nodes, image=args.image,
                       flavor=args.flavor, network=args.network)
    t0 = time.monotonic()
    cluster = Cluster(spec, cloud=args.cloud)
    with cluster:
        cluster_id = cluster.state.cluster_id
        t_up = time.monotonic()
        per_task = args.samples // args.tasks
        inside = cluster.map(count_inside, [(seed, per_task) for seed in range(args.tasks)],
                             star=True)
        t_run = time.monotonic()
        pi = 4.0 * sum(inside) / (per_task * args.tasks)
    t_down = time.monotonic()
    left = leftover_count(cluster.conn, cluster_id)

    print("pi ~= %.6f  (error %.1e, %d samples on %d nodes)"
          % (pi, abs(pi - np.pi), per_task * args.tasks, args.nodes))
    print()
    print("| phase              | seconds |")
    print("|--------------------|---------|")
    for name, value in (("pre-flight", cluster.timings["preflight"]),
                        ("create (API)", cluster.timings["create"]),
                        ("servers ACTIVE", cluster.timings["active"]),
                        ("SSH ready", cluster.timings["ssh"]),
                        ("cluster up (total)", t_up - t0),
                        ("run %d tasks" % args.tasks, t_run - t_up),
                        ("teardown", t_down - t_run),
                        ("all", t_down - t0)):
        print("| %-18s | %7.2f |" % (name, value))
    print()
    print("resources left in the cloud for cluster %s: %d" % (cluster_id, left))
    if left:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
