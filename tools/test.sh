#!/bin/bash
# The whole test suite: mypy, unit tests (library and compute driver), ruff,
# and the functional tests against the local all-in-one cloud, started if
# needed. Set CC_LOCAL_CLOUD=0 and OS_CLOUD to test against another cloud
# instead. Arguments go to pytest.
source "$(dirname "$0")/common.sh"
"$TOX" -e typecheck
"$TOX" -e py3,pep8,functional -- "$@"
