"""neutron-server with cc_neutron_speedup applied before Neutron's models load.

Run as ``python3 neutron_server.py --config-file ...``: this directory is then
first on sys.path, so the speed-up module is found without PYTHONPATH.
"""
import sys

import cc_neutron_speedup  # noqa: F401  (must come before neutron's models)
from neutron.cmd.eventlet.server import main

if __name__ == "__main__":
    sys.argv[0] = "neutron-server"
    sys.exit(main())
