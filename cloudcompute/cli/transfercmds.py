"""Commands that move work and files: ``run``, ``put`` and ``get``."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from typing import Any, List

from cloudcompute.cli.common import (FUNCTION_HELP, INPUTS_HELP, NAME_HELP,
                                     add_allow_pickle, attach, emit, node_names)
from cloudcompute.cli.parser import UsageError, add_command, option
from cloudcompute.cli.progress import byte_bar, progress_bar
from cloudcompute.exceptions import SSHError


def register(sub: Any) -> None:
    run = add_command(sub, "run", cmd_run, "Run a function on the cluster, once per input file.",
                      """\
Run a function on the cluster: once per input file (each read here and sent to
a node), or once without arguments when no input is given. Each result is
written to the output directory as .npy (arrays), .parquet or .csv (frames)
or .json, named after its input.""")
    run.add_argument("name", metavar="NAME", help=NAME_HELP)
    run.add_argument("function", metavar="FUNCTION", help=FUNCTION_HELP)
    run.add_argument("inputs", nargs="*", metavar="INPUT", help=INPUTS_HELP + (
        " (default: none: the function runs once, without arguments)."))
    option(run, "-o", "--output-dir", metavar="DIR", default="results", env=True,
           help="The directory the results are written to")
    add_allow_pickle(run)

    put = add_command(sub, "put", cmd_put,
                      "Copy a local file to the nodes, checked by sha256.")
    put.add_argument("name", metavar="NAME", help=NAME_HELP)
    put.add_argument("local", metavar="LOCAL", help="The local file to copy.")
    put.add_argument("remote", metavar="REMOTE",
                     help="Its path on the nodes, relative to the login user's home.")
    option(put, "--node", action="append", metavar="NODE", shown="every node",
           help="Copy to this node only; repeat it for more nodes")

    get = add_command(sub, "get", cmd_get, "Copy a file from a node, checked by sha256.")
    get.add_argument("name", metavar="NAME", help=NAME_HELP)
    get.add_argument("remote", metavar="REMOTE",
                     help="The file's path on the node, relative to the login user's home.")
    get.add_argument("local", metavar="LOCAL", help="Where to write it here.")
    option(get, "--node", metavar="NODE", shown="the first node",
           help="The node to read the file from")


def load_function(ref: str) -> Any:
    """The function ``FILE.py:NAME`` or ``package.module:NAME``."""
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
    """An input file's value, by its extension."""
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


def output_stems(paths: List[str]) -> List[str]:
    """The names the results of ``paths`` are saved under: each input's file name
    without its extension, made safe as a file name. Two inputs that would share
    one (``a/x.npy`` and ``b/x.npy``) are a UsageError: one result would
    overwrite the other."""
    stems = []
    for path in paths:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.splitext(os.path.basename(path))[0])
        stems.append(stem.lstrip(".-")[:128] or "input")
    seen = set()
    for path, stem in zip(paths, stems, strict=True):
        if stem in seen:
            raise UsageError("two inputs share the name %s (%s is one); results are named "
                             "after inputs, so rename one" % (stem, path))
        seen.add(stem)
    return stems


def save_output(value: Any, stem: str, out_dir: str) -> str:
    """Write a result as ``out_dir/stem`` plus the extension its type calls for."""
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


def cmd_run(args: argparse.Namespace) -> None:
    fn = load_function(args.function)
    stems = output_stems(args.inputs)
    inputs = [load_input(p) for p in args.inputs]
    c = attach(args)
    try:
        if inputs:
            with progress_bar(len(inputs), "tasks") as tick:
                results = c.map(fn, inputs, allow_pickle=args.allow_pickle,
                                progress=lambda r: tick("%s on %s: %.2fs, peak %d MiB" % (
                                    r.task, r.node, r.duration, r.peak_rss_kb // 1024)))
        else:
            results, stems = [c.run(fn, allow_pickle=args.allow_pickle)], ["result"]
        paths = [save_output(r, s, args.output_dir) for r, s in zip(results, stems, strict=True)]
    finally:
        c.close_connections()
    emit(args, {"outputs": paths}, [[p] for p in paths], ["output"])


def cmd_put(args: argparse.Namespace) -> None:
    if not os.path.isfile(args.local):
        raise UsageError("no such file: %s" % args.local)
    c = attach(args)
    nodes = node_names(c, args.node)
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


def cmd_get(args: argparse.Namespace) -> None:
    c = attach(args)
    node = node_names(c, [args.node] if args.node else None)[0]
    try:
        stat = c.connection(node).run(["stat", "-c", "%s", args.remote], warn=True)
        if not stat.ok:
            raise UsageError("%s: no file %s" % (node, args.remote))
        if not re.fullmatch(r"[0-9]{1,15}", stat.stdout.strip()):
            raise SSHError(node, "stat %s printed %r, not a size in bytes"
                           % (args.remote, stat.stdout.strip()[:40]))
        size = int(stat.stdout)
        with byte_bar(size, "get %s" % os.path.basename(args.remote)) as moved:
            c.get(args.remote, args.local, node=node, progress=moved)
    finally:
        c.close_connections()
    emit(args, {"local": args.local, "node": node, "bytes": size},
         [[node, args.local, size]], ["node", "local", "bytes"])
