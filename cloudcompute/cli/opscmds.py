"""Commands for operators: ``list`` and ``gc``."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cloudcompute import config
from cloudcompute.cli.common import emit
from cloudcompute.cli.parser import add_command, option

if TYPE_CHECKING:
    from cloudcompute.gc import GcOutcome


def register(sub: Any) -> None:
    add_command(sub, "list", cmd_list, "List the clusters known here and found in the cloud.",
                """\
List every cluster found in the cloud by the library's tags, and those only
this machine's state directory knows, with why gc would collect each.""")
    gc = add_command(sub, "gc", cmd_gc, "Delete expired or abandoned clusters.", """\
Delete clusters nobody will tear down: expired ones, and ones whose owner
process on this machine is gone and that were not detached. Without --yes it
only reports what it would delete. Exits 1 when a deletion failed.""")
    option(gc, "--yes", action="store_true", default=False, shown="a dry run",
           help="Really delete what gc finds")


def cmd_list(args: argparse.Namespace) -> None:
    from cloudcompute import gc
    conn = config.connect(args.os_cloud)
    found = gc.assess(conn)
    emit(args, {"clusters": [dict(r.to_dict(), orphan_reason=r.reason) for r in found]},
         [[r.name or "?", r.cluster_id, len(r.resources), "yes" if r.state_file else "no",
           ("skipped: " + "; ".join(r.problems)) if r.problems else r.reason or "-"]
          for r in found],
         ["name", "cluster id", "resources", "state file", "collectable"])


def _action(o: "GcOutcome") -> str:
    """What gc did with a cluster, for the table."""
    if o.deleted:
        return "deleted"
    if o.error is not None:
        return "FAILED: " + o.error
    return "skipped: " + o.skipped if o.skipped is not None else "would delete"


def cmd_gc(args: argparse.Namespace) -> int:
    """Exit code 1 when a deletion failed (the report names it), else 0."""
    from cloudcompute import gc
    conn = config.connect(args.os_cloud)
    report = gc.collect(conn, dry_run=not args.yes)
    emit(args, {"dry_run": not args.yes, "clusters": [o.to_dict() for o in report]},
         [[o.found.name or "?", o.found.cluster_id, o.found.reason or "-",
           len(o.found.resources), _action(o)] for o in report],
         ["name", "cluster id", "reason", "resources", "action"])
    return 1 if any(o.error is not None for o in report) else 0
