"""The ``cloudcompute`` command: a thin layer over the Python API.

    cloudcompute [--os-cloud NAME] [-f table|json] COMMAND ...

    up NAME        create a cluster (flags or --spec FILE.yaml/.toml) and leave it running
    run NAME FILE:FUNC [INPUT ...] [-o DIR]   map FUNC over the inputs on the cluster
    put NAME LOCAL REMOTE [--node N]...       copy a file to the nodes (sha256 checked)
    get NAME REMOTE LOCAL [--node N]          copy a file from a node (sha256 checked)
    status NAME    nodes, addresses, host key fingerprints, timings
    list           clusters known locally and found in the cloud by tag
    ssh NAME [NODE] [-- COMMAND ...]          a shell or a command, host key verified
    logs NAME [NODE]                          console logs of the servers
    dask NAME [--stop]                        start Dask (or find it running), forward
                                              its ports here and wait for Ctrl-C
    down NAME      delete the cluster and everything it created
    gc [--yes]     delete expired or abandoned clusters (dry run without --yes)

Exit codes: 0 success, 1 the operation failed, 2 wrong usage or bad input.
JSON output (-f json) is one document on stdout; its keys are documented in
README.md and stay stable.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any, Dict, List, Optional

from cloudcompute import config
from cloudcompute.cli.progress import PROGRESS_LOGGER, byte_bar, progress_bar
from cloudcompute.exceptions import (CloudComputeError, ConfigError, PreflightError,
                                     StateError)
from cloudcompute.ssh import bulk

LOG = logging.getLogger("cloudcompute.cli")
SPEC_FIELDS = {"nodes", "flavor", "image", "network", "create_network", "external_network",
               "cidr",
               "floating_ips", "ssh_user", "ssh_cidr", "key_file", "user_data", "metadata",
               "min_nodes", "max_replacements", "ttl_hours", "parallel", "groups", "timeouts"}


class UsageError(Exception):
    """Wrong usage: exit code 2 with a one-line message."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloudcompute", description=__doc__.split("\n\n")[0])
    p.add_argument("--os-cloud", default=os.environ.get("OS_CLOUD"),
                   help="clouds.yaml entry (default: OS_CLOUD)")
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="create a cluster and leave it running")
    up.add_argument("name")
    up.add_argument("--spec", help="YAML or TOML file with ClusterSpec fields")
    up.add_argument("--nodes", type=int)
    for flag in ("flavor", "image", "network", "ssh-user", "ssh-cidr", "floating-ips",
                 "key-file"):
        up.add_argument("--" + flag)
    up.add_argument("--ttl-hours", type=float)
    run = sub.add_parser("run", help="map a function over input files on the cluster")
    run.add_argument("name")
    run.add_argument("function", help="path/to/file.py:function or package.module:function")
    run.add_argument("inputs", nargs="*", help=".npy, .parquet, .csv or .json files")
    run.add_argument("-o", "--output-dir", default="results")
    run.add_argument("--allow-pickle", action="store_true")
    for name in ("status", "down"):
        sub.add_parser(name, help="%s of a cluster" % name).add_argument("name")
    sub.add_parser("list", help="clusters known locally and in the cloud")
    ssh = sub.add_parser("ssh", help="a shell or a command on a node")
    ssh.add_argument("name")
    ssh.add_argument("node", nargs="?")
    ssh.set_defaults(cmd=[])  # the words after "--" (split off in main)
    put = sub.add_parser("put", help="copy a local file to the nodes (sha256 checked)")
    put.add_argument("name")
    put.add_argument("local")
    put.add_argument("remote", help="path on the node, relative to the login user's home")
    put.add_argument("--node", action="append", help="only this node (repeatable)")
    get = sub.add_parser("get", help="copy a file from a node (sha256 checked)")
    get.add_argument("name")
    get.add_argument("remote")
    get.add_argument("local")
    get.add_argument("--node", help="the node to read from (default: the first)")
    logs = sub.add_parser("logs", help="console logs of the servers")
    logs.add_argument("name")
    logs.add_argument("node", nargs="?")
    dk = sub.add_parser("dask", help="start Dask on a cluster (or find it running) and "
                        "forward the scheduler and dashboard here until Ctrl-C")
    dk.add_argument("name")
    dk.add_argument("--stop", action="store_true",
                    help="stop the cluster's Dask processes instead (the servers stay)")
    dk.add_argument("--timeout", type=float, default=120.0,
                    help="seconds for the processes to start (default 120)")
    gc = sub.add_parser("gc", help="delete expired or abandoned clusters")
    gc.add_argument("--yes", action="store_true", help="really delete (default: dry run)")
    return p


def load_spec_file(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UsageError("cannot read spec file %s: %s" % (path, exc.strerror)) from exc
    try:
        if path.endswith(".toml"):
            import tomllib
            data = tomllib.loads(raw.decode())
        else:
            import yaml
            data = yaml.safe_load(raw)
    except Exception as exc:  # any parser error is bad input, reported in one line
        raise UsageError("spec file %s is not valid %s: %s" % (
            path, "TOML" if path.endswith(".toml") else "YAML",
            str(exc).splitlines()[0])) from exc
    if not isinstance(data, dict):
        raise UsageError("spec file %s must hold a mapping of ClusterSpec fields" % path)
    unknown = set(data) - SPEC_FIELDS - {"name"}
    if unknown:
        raise UsageError("spec file %s: unknown field(s) %s (known: %s)" % (
            path, ", ".join(sorted(unknown)), ", ".join(sorted(SPEC_FIELDS))))
    return data


def build_spec(args: argparse.Namespace) -> config.ClusterSpec:
    data = load_spec_file(args.spec) if args.spec else {}
    for key in ("nodes", "flavor", "image", "network", "ssh_user", "ssh_cidr", "floating_ips",
                "key_file", "ttl_hours"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    data["name"] = args.name
    groups = data.pop("groups", None)
    timeouts = data.pop("timeouts", None)
    try:
        spec = config.ClusterSpec(**data)
        if groups:
            if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
                raise UsageError("groups must be a list of mappings "
                                 "(name, count, flavor, image, metadata)")
            spec.groups = [config.NodeGroup(**g) for g in groups]
        if timeouts:
            spec.timeouts = config.Timeouts(**timeouts)
    except TypeError as exc:
        raise UsageError("spec: %s" % exc) from exc
    return spec


def load_function(ref: str) -> Any:
    target, sep, func = ref.rpartition(":")
    if not sep or not target or not func:
        raise UsageError("function must be FILE.py:NAME or package.module:NAME, got %r" % ref)
    if target.endswith(".py"):
        if not os.path.exists(target):
            raise UsageError("no such file: %s" % target)
        name = os.path.splitext(os.path.basename(target))[0]
        spec = importlib.util.spec_from_file_location(name, target)
        # A .py path always gets a spec with a source loader.
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UsageError("%s has no function %r" % (target, func))
    return fn


def load_input(path: str) -> Any:
    import numpy as np
    import pandas as pd
    if not os.path.exists(path):
        raise UsageError("no such input file: %s" % path)
    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        if path.endswith(".parquet"):
            return pd.read_parquet(path)
        if path.endswith(".csv"):
            return pd.read_csv(path)
        if path.endswith(".json"):
            with open(path) as f:
                return json.load(f)
    except (ValueError, OSError) as exc:
        raise UsageError("cannot read %s: %s" % (path, str(exc).splitlines()[0])) from exc
    raise UsageError("input %s: use .npy, .parquet, .csv or .json" % path)


def save_output(value: Any, stem: str, out_dir: str) -> str:
    import numpy as np
    import pandas as pd
    os.makedirs(out_dir, exist_ok=True)
    if isinstance(value, np.ndarray):
        path = os.path.join(out_dir, stem + ".npy")
        np.save(path, value, allow_pickle=False)
    elif isinstance(value, (pd.DataFrame, pd.Series)):
        frame = value.to_frame() if isinstance(value, pd.Series) else value
        if importlib.util.find_spec("pyarrow"):
            path = os.path.join(out_dir, stem + ".parquet")
            frame.to_parquet(path)
        else:
            path = os.path.join(out_dir, stem + ".csv")
            frame.to_csv(path)
    else:
        path = os.path.join(out_dir, stem + ".json")
        with open(path, "w") as f:
            json.dump(value, f)
    return path


def emit(args: argparse.Namespace, data: Any, rows: Optional[List[List[Any]]] = None,
         headers: Optional[List[str]] = None) -> None:
    if args.format == "json":
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        return
    if rows is None:
        for k, v in data.items():
            print("%-14s %s" % (k, v))
        return
    assert headers is not None  # a table comes with its column names
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for line in [headers] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=False)).rstrip())


def _cluster(args: argparse.Namespace):
    from cloudcompute.cluster import Cluster
    return Cluster.attach(args.name, cloud=args.os_cloud)


def cmd_up(args):
    from cloudcompute.cluster import Cluster
    spec = build_spec(args)
    c = Cluster(spec, cloud=args.os_cloud)
    total = c.spec.total_nodes * 3
    with progress_bar(total, "steps") as tick:
        c.progress = lambda phase, node: tick("%s %s" % (node, phase))
        c.up()
    c.detach()
    d = c.describe()
    emit(args, d, [[n["name"], n["address"], n["host_key_fingerprints"][0]
                    if n["host_key_fingerprints"] else "-"] for n in d["nodes"]],
         ["node", "address", "host key"])


def cmd_run(args):
    fn = load_function(args.function)
    inputs = [load_input(p) for p in args.inputs]
    c = _cluster(args)
    try:
        if inputs:
            with progress_bar(len(inputs), "tasks") as tick:
                results = c.map(fn, inputs, allow_pickle=args.allow_pickle,
                                progress=lambda r: tick("%s on %s: %.2fs, peak %d MiB" % (
                                    r.task, r.node, r.duration, r.peak_rss_kb // 1024)))
            stems = [os.path.splitext(os.path.basename(p))[0] for p in args.inputs]
        else:
            results, stems = [c.run(fn, allow_pickle=args.allow_pickle)], ["result"]
        paths = [save_output(r, s, args.output_dir) for r, s in zip(results, stems, strict=True)]
    finally:
        c.close_connections()
    emit(args, {"outputs": paths}, [[p] for p in paths], ["output"])


def cmd_put(args):
    if not os.path.isfile(args.local):
        raise UsageError("no such file: %s" % args.local)
    c = _cluster(args)
    nodes = _nodes(c, args.node)
    size = os.path.getsize(args.local)
    try:
        from cloudcompute.jobs import fanout
        with byte_bar(fanout.client_bytes(size, len(nodes)),
                      "put %s" % os.path.basename(args.local)) as moved:
            c.put(args.local, args.remote, nodes=nodes, progress=moved)
    finally:
        c.close_connections()
    emit(args, {"remote": args.remote, "nodes": nodes, "bytes": size},
         [[n, args.remote, size] for n in nodes], ["node", "remote", "bytes"])


def cmd_get(args):
    c = _cluster(args)
    node = _nodes(c, [args.node] if args.node else None)[0]
    try:
        size = c.connection(node).run(["stat", "-c", "%s", args.remote], warn=True)
        if not size.ok:
            raise UsageError("%s: no file %s" % (node, args.remote))
        with byte_bar(int(size.stdout), "get %s" % os.path.basename(args.remote)) as moved:
            c.get(args.remote, args.local, node=node, progress=moved)
    finally:
        c.close_connections()
    emit(args, {"local": args.local, "node": node, "bytes": int(size.stdout)},
         [[node, args.local, int(size.stdout)]], ["node", "local", "bytes"])


def _nodes(c: Any, wanted: Optional[List[str]]) -> List[str]:
    names = c.node_names()
    for n in wanted or []:
        if n not in names:
            raise UsageError("cluster %s has no node %r (nodes: %s)"
                             % (c.name, n, ", ".join(names)))
    return list(wanted or names)


def cmd_status(args):
    c = _cluster(args)
    d = c.describe()
    emit(args, d, [[n["name"], n["group"], n["address"], n["server_id"]] for n in d["nodes"]],
         ["node", "group", "address", "server id"])


def cmd_list(args):
    from cloudcompute import gc
    conn = config.connect(args.os_cloud)
    data = [dict(r.to_dict(), orphan_reason=r.reason) for r in gc.assess(conn)]
    emit(args, {"clusters": data}, [[r["name"] or "?", r["cluster_id"], len(r["resources"]),
                                     "yes" if r["state_file"] else "no",
                                     ("skipped: " + "; ".join(r["problems"])) if r["problems"]
                                     else r["orphan_reason"] or "-"] for r in data],
         ["name", "cluster id", "resources", "state file", "collectable"])


def cmd_ssh(args):
    c = _cluster(args)
    if not c.node_names():
        raise UsageError("cluster %s has no ready nodes" % args.name)
    node = args.node or c.node_names()[0]
    info = next((n for n in c.nodes if n.name == node), None)
    if info is None:
        raise UsageError("cluster %s has no node %r (nodes: %s)"
                         % (args.name, node, ", ".join(c.node_names())))
    cmd = args.cmd
    if cmd:
        result = c.connection(node).run(cmd, warn=True)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        c.close_connections()
        return result.exit_code
    c.close_connections()
    ssh = c.state.data["ssh"]  # its user was checked by attach
    scratch = tempfile.mkdtemp(prefix="cc-ssh-")
    try:
        known = os.path.join(scratch, "known_hosts")
        fd = os.open(known, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines("%s %s\n" % (info.address, k) for k in info.host_keys)
        argv = (["ssh"] + bulk.openssh_options(ssh["key_file"], known, batch=False)
                + bulk.destination(ssh["user"], info.address))
        # Ctrl-C belongs to the remote shell; wait for ssh, then remove known_hosts.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return subprocess.call(argv)
        finally:
            signal.signal(signal.SIGINT, old)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def cmd_logs(args):
    c = _cluster(args)
    out = {}
    for n in c.nodes:
        if args.node and n.name != args.node:
            continue
        out[n.name] = c.conn.compute.get_server_console_output(n.server_id).get("output", "")
    if args.format == "json":
        emit(args, out)
    else:
        for name, text in out.items():
            print("==> %s <==\n%s" % (name, text))


def cmd_dask(args):
    from cloudcompute import daskcluster
    c = _cluster(args)
    if args.stop:
        daskcluster.stop(c)
        c.close_connections()
        emit(args, {"name": args.name, "stopped": True})
        return 0
    try:
        client = c.dask(timeout=args.timeout)
        info = client.cloudcompute.describe()
        emit(args, {k: info[k] for k in ("name", "scheduler", "dashboard", "scheduler_node",
                                         "remote_scheduler", "workers", "reused")})
        sys.stdout.flush()
        if args.format != "json":
            print("forwarding until Ctrl-C; `cloudcompute dask %s --stop` or `down` stops "
                  "Dask" % args.name, file=sys.stderr)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    finally:
        daskcluster.detach(c)  # the processes keep running for the next client
        c.close_connections()
    return 0


def cmd_down(args):
    c = _cluster(args)
    timings = c.down()
    emit(args, {"name": args.name, "deleted": True, "seconds": round(timings.get("total", 0), 2)})


def cmd_gc(args):
    from cloudcompute import gc
    conn = config.connect(args.os_cloud)
    report = gc.collect(conn, dry_run=not args.yes)
    emit(args, {"dry_run": not args.yes, "clusters": report},
         [[r["name"] or "?", r["cluster_id"], r["reason"] or "-", len(r["resources"]),
           "deleted" if r["deleted"] else ("FAILED: " + r["error"]) if "error" in r
           else ("skipped: " + r["skipped"]) if "skipped" in r else "would delete"]
          for r in report],
         ["name", "cluster id", "reason", "resources", "action"])


COMMANDS = {"up": cmd_up, "run": cmd_run, "put": cmd_put, "get": cmd_get,
            "status": cmd_status, "list": cmd_list, "ssh": cmd_ssh, "logs": cmd_logs,
            "dask": cmd_dask, "down": cmd_down, "gc": cmd_gc}


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    remote: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, remote = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if remote:
        if args.command != "ssh":
            parser.error("only ssh takes a command after --")
        args.cmd = remote
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Progress lines (no terminal) are INFO, and shown without -v.
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)
    try:
        code = COMMANDS[args.command](args) or 0
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, with the status a tool
        # that SIGPIPE ended has; later flushes of stdout go nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    except (UsageError, ConfigError, StateError, PreflightError) as exc:
        parser.print_usage(sys.stderr)
        print("cloudcompute: error: %s" % exc, file=sys.stderr)
        return 2
    except CloudComputeError as exc:
        print("cloudcompute: error: %s" % str(exc).splitlines()[0], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cloudcompute: interrupted", file=sys.stderr)
        return 130
