"""nova-compute with this directory's compute driver (cc_netns_driver) findable
as ``nova.virt.cc_netns_driver``, as Nova's ``compute_driver`` option names it.

Run as ``python3 nova_compute.py --config-file ...``.
"""
import os
import sys

import nova.virt

nova.virt.__path__.append(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from nova.cmd.compute import main
    sys.argv[0] = "nova-compute"
    sys.exit(main())
