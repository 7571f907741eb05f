#!/bin/sh
# Report clusters older than $1 hours (default 24) to a chat or mail hook.
# Exit 0: none; 1: some (the report is on stdout); 2 or more: the listing failed.
# From cron (a crontab line; cron mails what it prints, so print only when some are found):
#   0 * * * * out="$(/opt/cloudcompute/examples/ops/cloudcompute-old-clusters.sh 24)" || echo "$out"
set -eu
hours="${1:-24}"
here="$(dirname "$0")"
listing="$(cloudcompute -f json list)" || exit 3
printf '%s\n' "$listing" | python3 "$here/old_clusters.py" --hours "$hours"
