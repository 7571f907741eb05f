"""Ops script: list the clusters in a project and garbage-collect expired ones.

    python examples/ops/list_and_gc.py         # list, and show what gc would delete
    python examples/ops/list_and_gc.py --yes   # really delete what gc finds

Exit code 0, or 1 when a deletion failed (each failure is named).
"""
import argparse
import logging
import sys
import time

from cloudcompute import connect, gc


def main() -> int:
    """Exit code 0, or 1 when a deletion failed (as `cloudcompute gc`)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cloud", help="The clouds.yaml entry to use (default: OS_CLOUD).")
    ap.add_argument("--yes", action="store_true", help="Delete them (default: a dry run).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    conn = connect(args.cloud)
    now = time.time()
    print("%-24s %-30s %9s  %s" % ("cluster", "id", "resources", "collectable"))
    for rec in sorted(gc.survey(conn).values(), key=lambda r: r.cluster_id):
        print("%-24s %-30s %9d  %s" % (rec.name or "?", rec.cluster_id, len(rec.resources),
                                       gc.orphan_reason(rec, now) or "no"))
    report = gc.collect(conn, dry_run=not args.yes)
    if args.yes:
        print("gc deleted %d cluster(s)" % sum(1 for o in report if o.deleted))
    else:
        print("gc would delete %d cluster(s)" % sum(1 for o in report if o.skipped is None))
    failed = [o for o in report if o.error is not None]
    for o in failed:
        print("gc failed on %s: %s" % (o.found.cluster_id, o.error))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
