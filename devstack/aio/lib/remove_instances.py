"""Destroy every instance the compute driver knows of, for ``cloud down``:
``python3 remove_instances.py STATE_DIR``."""
import sys

import cc_netns_node


def main(argv):
    host = cc_netns_node.NodeHost(argv[1])
    for uuid in host.known_uuids():
        host.destroy(uuid)
        print("removed instance", uuid)


if __name__ == "__main__":
    main(sys.argv)
