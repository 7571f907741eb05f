"""A SciPy workload: minimise the Rosenbrock function from a grid of starts.

Each node runs ``scipy.optimize.minimize`` for its share of starting points;
the nodes get SciPy through ``cluster.prepare`` (wheels shipped from here,
so the nodes need no internet). The paths are drawn into a PNG.

    python examples/scipy_sweep.py --grid 6 --png sweep.png
"""
import argparse
import logging
from importlib import metadata

import numpy as np

from cloudcompute import Cluster, ClusterSpec


def solve_from(x0: np.ndarray) -> dict:
    from scipy.optimize import minimize, rosen, rosen_der
    path = [np.asarray(x0, float).tolist()]
    res = minimize(rosen, x0, jac=rosen_der, method="BFGS",
                   callback=lambda xk: path.append(xk.tolist()))
    return {"start": np.asarray(x0).tolist(), "x": res.x.tolist(), "fun": float(res.fun),
            "iterations": int(res.nit), "path": path}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=5, help="starts per axis")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--png", default="scipy_sweep.png")
    ap.add_argument("--cloud")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    axis = np.linspace(-2.0, 2.0, args.grid)
    starts = [np.array([x, y]) for x in axis for y in axis]

    with Cluster(ClusterSpec(name="scipy-sweep", nodes=args.nodes), cloud=args.cloud) as c:
        c.prepare(["scipy==%s" % metadata.version("scipy")])
        results = c.map(solve_from, starts)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.optimize import rosen
    xs, ys = np.meshgrid(np.linspace(-2.2, 2.2, 200), np.linspace(-2.2, 3.2, 200))
    zs = rosen(np.array([xs, ys]))
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.contour(xs, ys, np.log1p(zs), levels=30, cmap="Greys", linewidths=0.5)
    for r in results:
        p = np.array(r["path"])
        ax.plot(p[:, 0], p[:, 1], "-", lw=0.8)
        ax.plot(*p[0], "o", ms=3, color="tab:blue")
    ax.plot(1, 1, "*", ms=14, color="tab:red", label="minimum (1, 1)")
    ax.set_title("BFGS from %d starts on %d nodes" % (len(starts), args.nodes))
    ax.set_xlim(-2.2, 2.2)
    ax.set_ylim(-2.2, 3.2)
    ax.legend(loc="upper left")
    fig.savefig(args.png, dpi=120, bbox_inches="tight")
    converged = sum(np.allclose(r["x"], [1, 1], atol=1e-4) for r in results)
    print("%d of %d starts converged to (1, 1); plot written to %s"
          % (converged, len(results), args.png))


if __name__ == "__main__":
    main()
