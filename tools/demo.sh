#!/bin/bash
# The quickstart job on the local all-in-one cloud (started if needed):
# provision 3 nodes, ship the work, collect the result, tear down, and show
# that nothing is left.
source "$(dirname "$0")/common.sh"
"$TOX" -e demo -- "$@"
