#!/usr/bin/env python3
"""Report clusters older than N hours, from the JSON of `cloudcompute list`.

    cloudcompute -f json list | python3 examples/ops/old_clusters.py --hours 24
    python3 examples/ops/old_clusters.py --hours 24 listing.json

JSON in (a file, or stdin), one line per old cluster out, oldest first:

    demo-1a2b3c4d (demo): 26.5 h old, created 2026-11-30 16:00 UTC, 7 resources, detached, gc: no

A cluster's age counts from ``created`` (its servers' cc_created metadata, or
its state file), else from ``oldest`` (the cloud's creation time of its oldest
resource). Exit codes, for a chat or mail hook to branch on:
0 no cluster is older, 1 some are (the lines name them), 2 the input is not
`cloudcompute -f json list` output. Needs only the Python standard library.
"""
import argparse
import json
import sys
import time


def born(cluster):
    """When the cluster was created (seconds since the epoch), or None."""
    for key in ("created", "oldest"):
        value = cluster.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def describe(cluster, age_hours, created):
    parts = ["%.1f h old" % age_hours,
             "created %s" % time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(created)),
             "%d resources" % len(cluster.get("resources") or [])]
    if cluster.get("detached"):
        parts.append("detached")
    if cluster.get("problems"):
        parts.append("gc skips it: %s" % "; ".join(map(str, cluster["problems"])))
    else:
        parts.append("gc: %s" % (cluster.get("orphan_reason") or "no"))
    line = "%s (%s): %s" % (cluster.get("cluster_id"), cluster.get("name") or "?",
                            ", ".join(parts))
    return " ".join(line.split())  # one line, whatever the metadata held


def old_clusters(listing, hours, now):
    """(line, age) for each cluster of ``listing`` older than ``hours``, oldest first."""
    if not isinstance(listing, dict) or not isinstance(listing.get("clusters"), list) \
            or not all(isinstance(c, dict) and c.get("cluster_id") for c in listing["clusters"]):
        raise ValueError('expected {"clusters": [{"cluster_id": ...}, ...]}')
    found = []
    for c in listing["clusters"]:
        created = born(c)
        if created is None:
            continue
        age = (now - created) / 3600.0
        if age > hours:
            found.append((describe(c, age, created), age))
    return sorted(found, key=lambda item: -item[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, required=True,
                    help="Report clusters older than this many hours.")
    ap.add_argument("listing", nargs="?", default="-",
                    help="The JSON of `cloudcompute -f json list` (default: stdin).")
    ap.add_argument("--now", type=float, default=None,
                    help="The time to measure ages at, in seconds since the epoch "
                         "(default: now).")
    args = ap.parse_args(argv)
    if args.hours < 0:
        ap.error("--hours must be >= 0")
    try:
        if args.listing == "-":
            listing = json.load(sys.stdin)
        else:
            with open(args.listing) as f:
                listing = json.load(f)
        found = old_clusters(listing, args.hours, time.time() if args.now is None else args.now)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        sys.stderr.write("old_clusters: error: %s: %s\n" % (args.listing, exc))
        return 2
    for line, _ in found:
        sys.stdout.write(line + "\n")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
