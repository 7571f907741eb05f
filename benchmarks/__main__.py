"""``python -m benchmarks``: cloudcompute against the tools a user would pick instead.

Writes bench-results.json (with a ``targets`` list a script can check),
bench-results.md and PNG plots into --out. ``--quick`` is the smoke run CI
uses to check that the harness works; its figures are not the benchmark.
"""
import argparse
import json
import logging
import os
import platform
import time

import openstack

from benchmarks import cloud as cloudbench
from benchmarks import controlplane as cpbench
from benchmarks import dask as daskbench
from benchmarks import executor as execbench
from benchmarks import fanout as fanbench
from benchmarks import provisioning as prov
from benchmarks import transfer
from cloudcompute import Cluster, ClusterSpec, config

LOG = logging.getLogger("benchmarks")


def target(name, measured, goal, unit, better):
    met = measured <= goal if better == "lower" else measured >= goal
    return {"name": name, "measured": round(measured, 4), "target": goal, "unit": unit,
            "better": better, "met": bool(met)}


def provisioning_targets(n, row, boot_delay):
    """The provisioning targets of one N, from the medians of its runs."""
    raw, cc, user = row["raw_parallel"], row["cloudcompute"], row["sdk_ssh_first_task"]
    out = [target("provision N=%d: cloudcompute SSH-ready (minus boot delay) / raw parallel "
                  "ACTIVE" % n, (cc["up_s"] - boot_delay) / raw["up_s"], 1.15, "ratio",
                  "lower"),
           target("provision N=%d: HTTP requests per node" % n, cc["requests"] / n,
                  8 if n == 1 else 2 if n >= 16 else 6, "requests", "lower"),
           target("provision N=%d: time to first task vs the user's openstacksdk + paramiko "
                  "script" % n, cc["first_task_s"] / user["first_task_s"], 1.0, "ratio",
                  "lower")]
    if n >= 16:
        out.append(target("provision N=%d: cloudcompute SSH-ready / raw parallel per-server "
                          "POSTs" % n, cc["up_s"] / raw["up_s"], 0.8, "ratio", "lower"))
    for base in ("sdk_create_wait_loop", "sdk_nowait_then_wait"):
        out.append(target("provision N=%d: wall time vs %s" % (n, base),
                          cc["up_s"] / row[base]["up_s"], 1.0, "ratio", "lower"))
        out.append(target("provision N=%d: requests vs %s" % (n, base),
                          cc["requests"] / row[base]["requests"], 1.0, "ratio", "lower"))
    out.append(target("teardown N=%d: verified, vs raw parallel deletes" % n,
                      cc["down_s"] / raw["down_s"], 1.15, "ratio", "lower"))
    return out


def scale_targets(n, row):
    """The targets of one large cluster (one run each, raw parallel beside it)."""
    raw, cc = row["raw_parallel"], row["cloudcompute"]
    if "error" in cc:
        return [target("scale N=%d: up, a task on every node, down (failed: %s)"
                       % (n, cc["error"][:120]), 0, 1, "runs", "higher")]
    return [target("scale N=%d: resources left after down (tag survey)" % n,
                   len(cc["leftovers"]), 0, "resources", "lower"),
            target("scale N=%d: HTTP requests per node" % n, cc["requests"] / n, 2,
                   "requests", "lower"),
            target("scale N=%d: SSH-ready / raw parallel per-server POSTs" % n,
                   cc["up_s"] / raw["up_s"], 0.8, "ratio", "lower"),
            target("scale N=%d: teardown vs raw parallel deletes" % n,
                   cc["down_s"] / raw["down_s"], 1.15, "ratio", "lower"),
            target("scale N=%d: client CPU per node to SSH-ready" % n,
                   cc["client_cpu_ms_per_node"], 10.0, "ms", "lower")]


def control_plane(cloud, sizes, results, raw=False):
    """The control plane alone at each of ``sizes`` (none: nothing), on the
    cloud's fake compute host, which it starts and stops; ``raw``: with the
    raw-parallel baseline beside each."""
    if not sizes:
        return
    LOG.warning("control plane alone: N=%s on the fake compute host",
                ",".join(map(str, sizes)))
    rows = results["control_plane"] = cpbench.run(cloud, sizes, LOG.warning, raw=raw)
    for n, row in rows.items():
        results["targets"] += cpbench.targets(n, row, target)


def run(args):
    cloud = os.environ.get("OS_CLOUD", "devstack")
    conn = config.connect(cloud)
    settings = config.cloud_settings(conn)
    defaults = {k: settings.get(k) for k in ("image", "flavor", "network")}
    boot_delay = float(os.environ.get("CC_AIO_BOOT_DELAY", "3"))
    sizes = [] if args.skip_provisioning else args.sizes or ([1] if args.quick
                                                             else [1, 4, 8, 16])
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
               "cloud": cloud, "quick": args.quick, "provisioning": {}, "targets": []}
    targets = results["targets"]

    if args.control_plane_only:
        control_plane(cloud, args.control_plane_sizes, results, args.control_plane_raw)
        return results

    if args.executor_only or not (args.cloud_only or args.fanout_only
                                  or args.provisioning_only):
        LOG.warning("executor: CPU-bound tasks, default slots against slots=1")
        sl = results["slots"] = execbench.slots_speedup(conn, tasks=8 if args.quick else 40)
        targets += execbench.targets(sl, target)
        if args.executor_only:
            return results
        if not args.quick:
            LOG.warning("Dask on the cluster against the executor")
            dk = results["dask"] = daskbench.measure(conn)
            targets += daskbench.targets(dk, target)

    if args.fanout_only:
        nodes = 2 if args.quick else 8
        LOG.warning("put fan-out: %d MiB to %d nodes", args.fanout_mib, nodes)
        with Cluster(ClusterSpec(name="bench-fanout", nodes=nodes), conn=conn) as c:
            fo = results["put_fanout"] = fanbench.measure(c, args.fanout_mib, transfer.workdir())
        targets += fanbench.targets(fo, target)
        return results

    if not args.skip_provisioning and (args.cloud_figures or not args.provisioning_only):
        LOG.warning("the cloud's own figures: one server at a time")
        own = results["cloud_figures"] = cloudbench.measure(cloud, defaults,
                                                             reps=3 if args.quick else 7)
        # with the L2 agent's port binding and the wait for network-vif-plugged
        targets.append(target("cloud: create -> ACTIVE, warm (median)",
                              own["active_s"]["median"], 4.0, "s", "lower"))
        targets.append(target("cloud: ACTIVE -> sshd banner, minus the boot delay (median)",
                              own["ssh_after_active_s"]["median"] - boot_delay, 3.0, "s",
                              "lower"))
        targets.append(target("cloud: delete -> gone (median)",
                              own["delete_s"]["median"], 2.0, "s", "lower"))
        if own["rss_mib"] is not None:
            # 3.2 GiB, with the Neutron agents and their privsep daemons
            targets.append(target("cloud: RSS of all services", own["rss_mib"], 3277, "MiB",
                                  "lower"))
    if args.cloud_only:
        return results

    reps = 1 if args.quick else args.reps
    names = list(prov.VARIANTS)
    for n in sizes:
        row = results["provisioning"][n] = prov.interleaved(
            cloud, n, defaults, reps, names, LOG.warning)
        targets += provisioning_targets(n, row, boot_delay)
    scale_sizes = [] if args.skip_provisioning or args.quick else args.scale_sizes
    for n in scale_sizes:
        LOG.warning("scale: N=%d, up, a task on every node, down", n)
        row = results.setdefault("scale", {})[n] = prov.scale(cloud, n, defaults)
        targets += scale_targets(n, row)
    if not (args.skip_provisioning or args.quick):
        control_plane(cloud, args.control_plane_sizes, results, args.control_plane_raw)
    if args.provisioning_only:
        return results

    mib = 16 if args.quick else 256
    nodes = 2 if args.quick else 8
    with Cluster(ClusterSpec(name="bench-data", nodes=nodes), conn=conn) as c:
        wd = transfer.workdir()
        pay = results["payload_mb_s"] = transfer.payload(c, mib, wd)
        results["payload_mib"] = mib
        targets.append(target("payload up vs fresh scp", pay["cloudcompute_put"] /
                              pay["scp_up"], 1.0, "ratio", "higher"))
        targets.append(target("payload down vs fresh scp", pay["cloudcompute_get"] /
                              pay["scp_down"], 1.0, "ratio", "higher"))
        targets.append(target("payload up vs ControlMaster aes128-gcm",
                              pay["cloudcompute_put"] / pay["controlmaster_gcm_up"], 0.5,
                              "ratio", "higher"))
        targets.append(target("payload down vs ControlMaster aes128-gcm",
                              pay["cloudcompute_get"] / pay["controlmaster_gcm_down"], 0.5,
                              "ratio", "higher"))
        fan = results["fanout"] = transfer.fanout(c, 8 if args.quick else 64, wd)
        targets.append(target("fan-out to %d nodes vs parallel scp" % fan["nodes"],
                              fan["cloudcompute_put"] / fan["parallel_scp"], 1.0, "ratio",
                              "higher"))
        fo = results["put_fanout"] = fanbench.measure(c, 16 if args.quick else 1024, wd)
        targets += fanbench.targets(fo, target)
        tasks = results["tasks"] = transfer.task_overhead(c, 100 if args.quick else 1000)
        targets.append(target("warm small task vs bare `true` on an open connection",
                              tasks["warm_task_s"] / tasks["bare_true_s"], 3.0, "ratio",
                              "lower"))
        best = max(tasks["tasks_per_s"].items())
        targets.append(target("small tasks/s over %d nodes" % best[0], best[1], 791.0,
                              "tasks/s", "higher"))
    results["serialization"] = transfer.serialization(100_000 if args.quick else 5_000_000)
    return results


def write(results, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bench-results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    lines = ["| target | measured | target | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        goal = ("<= " if t["better"] == "lower" else ">= ") + "%g %s" % (t["target"], t["unit"])
        miss = ""
        if not t["met"]:
            miss = " (missed by %.0f%%)" % (abs(t["measured"] / t["target"] - 1) * 100)
        lines.append("| %s | %.3g %s | %s | %s%s |" % (t["name"], t["measured"], t["unit"],
                                                       goal, "yes" if t["met"] else "NO", miss))
    own = results.get("cloud_figures")
    if own:
        lines += ["", "The cloud's own figures (%d warm single-server cycles):" % own["reps"],
                  "", "| step | median s | min s | max s |", "|---|---|---|---|"]
        lines += ["| %s | %.2f | %.2f | %.2f |" % (k, own[k]["median"], own[k]["min"],
                                                   own[k]["max"])
                  for k in ("active_s", "ssh_after_active_s", "delete_s")]
    if results.get("provisioning"):
        lines += ["", "Provisioning (median [min-max] of the runs, interleaved):", "",
                  "| N | variant | runs | ready s | first task s | ACTIVE s | teardown s "
                  "| requests/node |", "|---|---|---|---|---|---|---|---|"]
        for n, row in sorted(results["provisioning"].items(), key=lambda kv: int(kv[0])):
            for name, r in row.items():
                cells = []
                for key in ("up_s", "first_task_s", "active_s", "down_s"):
                    cells.append("%.1f [%.1f-%.1f]" % (r[key], *r[key + "_range"])
                                 if key in r else "-")
                lines.append("| %s | %s | %d | %s | %.2f |" % (
                    n, name, len(r["runs"]), " | ".join(cells), r["requests"] / int(n)))
    if results.get("scale"):
        lines += ["", "Large clusters (one run each):", "",
                  "| N | variant | ready s | first task s | teardown s | requests/node "
                  "| client CPU ms/node | left after down |", "|---|---|---|---|---|---|---|---|"]
        for n, row in sorted(results["scale"].items(), key=lambda kv: int(kv[0])):
            for name, r in row.items():
                if "error" in r:
                    lines.append("| %s | %s | failed: %s |||||| " % (n, name, r["error"][:200]))
                    continue
                lines.append("| %s | %s | %.1f | %s | %.1f | %.2f | %s | %s |" % (
                    n, name, r["up_s"], "%.1f" % r["first_task_s"] if "first_task_s" in r
                    else "-", r["down_s"], r["requests"] / int(n),
                    "%.1f" % r["client_cpu_ms_per_node"] if "client_cpu_ms_per_node" in r
                    else "-", len(r["leftovers"]) if "leftovers" in r else "-"))
    lines += cpbench.table(results.get("control_plane", {}))
    if "payload_mb_s" in results:
        lines += ["", "Payload MB/s (%s MiB):" % results["payload_mib"], "",
                  "| method | MB/s |", "|---|---|"]
        lines += ["| %s | %.0f |" % kv for kv in sorted(results["payload_mb_s"].items())]
    if "put_fanout" in results:
        lines += fanbench.table(results["put_fanout"])
    if "slots" in results:
        lines += execbench.table(results["slots"])
    if "dask" in results:
        lines += daskbench.table(results["dask"])
    if "serialization" in results:
        lines += ["", "Serialization:", "", "| value | format | MB | encode s | decode s |",
                  "|---|---|---|---|---|"]
        lines += ["| %s | %s | %.1f | %.3f | %.3f |" % (
            s["value"], s["format"], s["bytes"] / 1e6, s["encode_s"], s["decode_s"])
            for s in results["serialization"]]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "bench-results.md"), "w") as f:
        f.write(text)
    _plots(results, out)
    return text


def _plots(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cpbench.plot(results.get("control_plane", {}), out, plt)
    prov_ = results["provisioning"]
    ns = sorted(prov_, key=int)
    if not ns:
        return _data_plots(results, out, plt)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("raw_parallel", "cloudcompute", "sdk_ssh_first_task", "sdk_create_wait_loop",
                 "sdk_nowait_then_wait"):
        ns_ = [n for n in ns if name in prov_[n]]
        up = [prov_[n][name]["up_s"] for n in ns_]
        lo = [up[i] - prov_[n][name]["up_s_range"][0] for i, n in enumerate(ns_)]
        hi = [prov_[n][name]["up_s_range"][1] - up[i] for i, n in enumerate(ns_)]
        a1.errorbar([int(n) for n in ns_], up, yerr=[lo, hi], fmt="o-", capsize=3, label=name)
        a2.plot([int(n) for n in ns_], [prov_[n][name]["requests"] / int(n) for n in ns_],
                "o-", label=name)
    a1.set(xlabel="servers", ylabel="seconds to ready (median, min-max)",
           title="provisioning")
    a2.set(xlabel="servers", ylabel="HTTP requests per server", title="API requests")
    a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bench-provisioning.png"), dpi=110)
    _cost_plot(results, out, plt)
    _data_plots(results, out, plt)


def _cost_plot(results, out, plt):
    """cloudcompute's cost against N: wall time, requests and client CPU per
    node, from the interleaved medians and the single large-cluster runs."""
    points = {}
    for n, row in results["provisioning"].items():
        points[int(n)] = (row["cloudcompute"], row["raw_parallel"])
    for n, row in results.get("scale", {}).items():
        if "error" not in row["cloudcompute"]:
            points[int(n)] = (row["cloudcompute"], row["raw_parallel"])
    ns = sorted(points)
    if not ns or not all("client_cpu_s" in points[n][0] for n in ns):
        return
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.6))
    a1.plot(ns, [points[n][0]["up_s"] for n in ns], "o-", label="cloudcompute, SSH-ready")
    a1.plot(ns, [points[n][1]["up_s"] for n in ns], "s--", label="raw parallel POSTs, ACTIVE")
    a1.set(xlabel="servers", ylabel="seconds", title="wall time")
    a1.legend(fontsize=7)
    a2.plot(ns, [points[n][0]["requests"] / n for n in ns], "o-")
    a2.set(xlabel="servers", ylabel="HTTP requests per server", title="API requests")
    a3.plot(ns, [1000 * points[n][0]["client_cpu_s"] / n for n in ns], "o-")
    a3.set(xlabel="servers", ylabel="client CPU ms per server", title="client CPU to SSH-ready")
    for a in (a1, a2, a3):
        a.set_xscale("log", base=2)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bench-cost.png"), dpi=110)


def _data_plots(results, out, plt):
    if "slots" in results:
        sl = results["slots"]
        fig, ax = plt.subplots(figsize=(5, 3))
        keys = ["slots=1", "default"]
        ax.bar(["slots=1", "default (%d)" % sl["default"]["slots"]],
               [sl[k]["tasks_per_s"] for k in keys])
        ax.set(ylabel="tasks/s", title="%d CPU-bound tasks, one %s node" % (
            sl["tasks"], sl["flavor"]))
        fig.tight_layout()
        fig.savefig(os.path.join(out, "bench-slots.png"), dpi=110)
    if "payload_mb_s" not in results:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    pay = results["payload_mb_s"]
    ax.barh(list(pay), list(pay.values()))
    ax.set(xlabel="MB/s", title="payload throughput (%s MiB)" % results["payload_mib"])
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bench-payload.png"), dpi=110)
    tps = results["tasks"]["tasks_per_s"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([int(k) for k in tps], list(tps.values()), "o-")
    ax.set(xlabel="nodes", ylabel="small tasks/s", title="task throughput")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bench-tasks.png"), dpi=110)


def _sizes(value):
    """Cluster sizes, comma-separated; '' for none."""
    return [int(x) for x in value.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small N and sizes")
    ap.add_argument("--out", default=".")
    ap.add_argument("--skip-provisioning", action="store_true",
                    help="only the data-path benchmarks (payload, fan-out, tasks)")
    ap.add_argument("--cloud-only", action="store_true",
                    help="only the cloud's own single-server figures")
    ap.add_argument("--fanout-only", action="store_true",
                    help="only put's fan-out against the old node-by-node upload "
                         "(--fanout-mib to 8 nodes, 2 with --quick); needs root (iptables)")
    ap.add_argument("--executor-only", action="store_true",
                    help="only CPU-bound tasks on one m1.medium node, slots against slots=1")
    ap.add_argument("--provisioning-only", action="store_true",
                    help="only the provisioning rows (cloudcompute and the baselines, "
                         "--reps runs of each per N, interleaved)")
    ap.add_argument("--cloud-figures", action="store_true",
                    help="with --provisioning-only: the cloud's own figures too")
    ap.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")],
                    help="cluster sizes N, comma-separated (default 1,4,8,16; 1 with --quick)")
    ap.add_argument("--scale-sizes", type=_sizes,
                    default=[32, 64],
                    help="large clusters run once each after the interleaved sizes "
                         "(default 32,64; none with --quick; '' for none)")
    ap.add_argument("--control-plane-sizes", type=_sizes,
                    default=list(cpbench.SIZES),
                    help="the control plane alone: clusters of fake servers up to ACTIVE "
                         "and down on the cloud's fake compute host (devstack/aio/cloud "
                         "fake-compute), once each (default 100,250,500; none with "
                         "--quick or --skip-provisioning; '' for none)")
    ap.add_argument("--control-plane-only", action="store_true",
                    help="only the control-plane rows (--control-plane-sizes)")
    ap.add_argument("--control-plane-raw", action="store_true",
                    help="the control plane with a raw-parallel baseline beside each N "
                         "(per-server POSTs, 8 at a time; doubles its time)")
    ap.add_argument("--reps", type=int, default=3,
                    help="runs of each provisioning variant per N (1 with --quick)")
    ap.add_argument("--fanout-mib", type=int, default=1024,
                    help="file size for --fanout-only (MiB, a multiple of 4)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    openstack.enable_logging(debug=False)
    t0 = time.monotonic()
    results = run(args)
    results["seconds"] = time.monotonic() - t0
    print(write(results, args.out))


if __name__ == "__main__":
    main()
