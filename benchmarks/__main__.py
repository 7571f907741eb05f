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


def run(args):
    cloud = os.environ.get("OS_CLOUD", "devstack")
    conn = config.connect(cloud)
    settings = config.cloud_settings(conn)
    defaults = {k: settings.get(k) for k in ("image", "flavor", "network")}
    boot_delay = float(os.environ.get("CC_AIO_BOOT_DELAY", "3"))
    sizes = [] if args.skip_provisioning else [1] if args.quick else [1, 4, 8, 16]
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
               "cloud": cloud, "quick": args.quick, "provisioning": {}, "targets": []}
    targets = results["targets"]

    if args.executor_only or not (args.cloud_only or args.fanout_only):
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

    if not args.skip_provisioning:
        LOG.warning("the cloud's own figures: one server at a time")
        own = results["cloud_figures"] = cloudbench.measure(cloud, defaults,
                                                             reps=3 if args.quick else 7)
        targets.append(target("cloud: create -> ACTIVE, warm (median)",
                              own["active_s"]["median"], 3.0, "s", "lower"))
        targets.append(target("cloud: ACTIVE -> sshd banner, minus the boot delay (median)",
                              own["ssh_after_active_s"]["median"] - boot_delay, 3.0, "s",
                              "lower"))
        targets.append(target("cloud: delete -> gone (median)",
                              own["delete_s"]["median"], 2.0, "s", "lower"))
        if own["rss_mib"] is not None:
            targets.append(target("cloud: RSS of all services", own["rss_mib"], 2560, "MiB",
                                  "lower"))
    if args.cloud_only:
        return results

    for n in sizes:
        row = {}
        for name, fn in (("raw_parallel", prov.raw_parallel),
                         ("cloudcompute", prov.cloudcompute_cluster),
                         ("sdk_create_wait_loop", prov.sdk_wait_loop),
                         ("sdk_nowait_then_wait", prov.sdk_nowait)):
            LOG.warning("provisioning N=%d: %s", n, name)
            row[name] = fn(cloud, n, defaults)
        results["provisioning"][n] = row
        raw, cc = row["raw_parallel"], row["cloudcompute"]
        targets.append(target("provision N=%d: cloudcompute SSH-ready (minus boot delay) / "
                              "raw parallel ACTIVE" % n,
                              (cc["up_s"] - boot_delay) / raw["up_s"], 1.15, "ratio", "lower"))
        targets.append(target("provision N=%d: HTTP requests per node" % n,
                              cc["requests"] / n, 6, "requests", "lower"))
        for base in ("sdk_create_wait_loop", "sdk_nowait_then_wait"):
            targets.append(target("provision N=%d: wall time vs %s" % (n, base),
                                  cc["up_s"] / row[base]["up_s"], 1.0, "ratio", "lower"))
            targets.append(target("provision N=%d: requests vs %s" % (n, base),
                                  cc["requests"] / row[base]["requests"], 1.0, "ratio", "lower"))
        targets.append(target("teardown N=%d: verified, vs raw parallel deletes" % n,
                              cc["down_s"] / raw["down_s"], 1.15, "ratio", "lower"))

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
    prov_ = results["provisioning"]
    ns = sorted(prov_, key=int)
    if not ns:
        return _data_plots(results, out, plt)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("raw_parallel", "cloudcompute", "sdk_create_wait_loop", "sdk_nowait_then_wait"):
        a1.plot([int(n) for n in ns], [prov_[n][name]["up_s"] for n in ns], "o-", label=name)
        a2.plot([int(n) for n in ns], [prov_[n][name]["requests"] / int(n) for n in ns], "o-",
                label=name)
    a1.set(xlabel="servers", ylabel="seconds to ready", title="provisioning")
    a2.set(xlabel="servers", ylabel="HTTP requests per server", title="API requests")
    a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bench-provisioning.png"), dpi=110)
    _data_plots(results, out, plt)


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
