# Sourced by tools/demo.sh and tools/test.sh: bring up the local cloud and
# make tox available in .venv-tools.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "${CC_LOCAL_CLOUD:-1}" = 1 ]; then
    ./devstack/aio/cloud up
    export OS_CLIENT_CONFIG_FILE=${CC_AIO_STATE:-/var/lib/cloudcompute-aio}/clouds.yaml
fi
export OS_CLOUD=${OS_CLOUD:-devstack}
if [ ! -x .venv-tools/bin/tox ]; then
    python3 -m venv .venv-tools
    .venv-tools/bin/pip install -q --disable-pip-version-check "tox>=4"
fi
TOX=$ROOT/.venv-tools/bin/tox
