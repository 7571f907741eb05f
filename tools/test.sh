#!/bin/bash
# The whole test suite: mypy, unit tests (library and compute driver), ruff,
# the functional tests against the local all-in-one cloud, started if
# needed, and the example project's integration tests on that cloud.
# Set CC_LOCAL_CLOUD=0 and OS_CLOUD to test against another cloud
# instead. Arguments go to pytest.
source "$(dirname "$0")/common.sh"
"$TOX" -e typecheck
"$TOX" -e py3,pep8,functional -- "$@"
# A user's project (examples/integration-tests) tested in its own tox env
# through the pytest plugin, with cloudcompute installed from this checkout
"$TOX" -c examples/integration-tests/tox.ini -e integration
