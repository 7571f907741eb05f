"""What the command modules share: output as a table or JSON, and the
cluster a command names."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, List, Optional

from cloudcompute.cli.parser import UsageError, option

NAME_HELP = ("The cluster's name: 1-40 lowercase letters, digits and '-', starting with "
             "a letter.")
FUNCTION_HELP = "The function, as path/to/file.py:name or package.module:name."
INPUTS_HELP = "Input files (.npy, .parquet, .csv or .json), one task each"


def emit(args: argparse.Namespace, data: Any, rows: Optional[List[List[Any]]] = None,
         headers: Optional[List[str]] = None) -> None:
    """``data`` as one JSON document (``-f json``), else ``rows`` as a table
    under ``headers``, else ``data``'s keys and values one per line."""
    out = sys.stdout
    if args.format == "json":
        json.dump(data, out, indent=2, sort_keys=True, default=str)
        out.write("\n")
        return
    if rows is None:
        for k, v in data.items():
            out.write("%-14s %s\n" % (k, v))
        return
    assert headers is not None  # a table comes with its column names
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for line in [headers] + rows:
        out.write("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=False))
                  .rstrip() + "\n")


def add_allow_pickle(p: Any) -> None:
    """The ``--allow-pickle`` option of the commands that move values."""
    option(p, "--allow-pickle", action="store_true", default=False,
           help="Send and accept values by pickle, for types the safe codecs lack; "
                "only with nodes you trust")


def attach(args: argparse.Namespace) -> Any:
    """The cluster ``args.name``, from its state file."""
    from cloudcompute.cluster import Cluster
    return Cluster.attach(args.name, cloud=args.os_cloud)


def node_names(cluster: Any, wanted: Optional[List[str]]) -> List[str]:
    """``wanted`` (all nodes when None), each checked to be one of the cluster's."""
    names = cluster.node_names()
    for n in wanted or []:
        if n not in names:
            raise UsageError("cluster %s has no node %r (nodes: %s)"
                             % (cluster.name, n, ", ".join(names)))
    return list(wanted or names)
