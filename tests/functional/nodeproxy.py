"""A fault proxy inside a node's network namespace, in front of the cloud's API.

``ip netns exec <node's namespace> python -m tests.functional.nodeproxy
UPSTREAM LOG PORT... -- RULE-JSON...`` listens on 127.0.0.1 of the node on
the API's own ports, so the catalog's 127.0.0.1 URLs lead a node's
programs (the watchdog) through it to UPSTREAM (the host's public address,
where the local cloud forwards the API ports). Each fault it injects is appended
to LOG as one JSON line. It runs until killed, or until its namespace goes.
"""
import json
import sys
import threading
import time

from tests.functional.faultproxy import FaultProxy


def main(argv):
    split = argv.index("--")
    upstream, log_path, ports = argv[0], argv[1], [int(p) for p in argv[2:split]]
    proxy = FaultProxy(seed=7, upstream_host=upstream)
    for rule in argv[split + 1:]:
        proxy.add(**json.loads(rule))
    proxy.start(ports, same_ports=True)
    seen = 0
    with open(log_path, "a") as log:
        while True:
            time.sleep(0.2)
            entries = proxy.log[seen:]
            seen += len(entries)
            for method, port, path, what in entries:
                log.write(json.dumps([method, port, path, what]) + "\n")
            log.flush()


if __name__ == "__main__":
    threading.current_thread().name = "nodeproxy"
    sys.exit(main(sys.argv[1:]))
