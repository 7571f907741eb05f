"""``put`` to many nodes: fan-out inside the cloud against the old node-by-node upload.

For each method: wall time, growth of the client's RSS while it runs, and
the bytes this host sent to the nodes' SSH ports, counted by iptables (a
chain of our own in OUTPUT, independent of the library; traffic between the
nodes is bridged and passes FORWARD, not OUTPUT). Every node's copy is
checked with sha256sum afterwards.

On the all-in-one cloud every node's home is on this host's disk, so both
methods write N copies to one disk and run every SSH stream on the same
cores; the client's link (a host bridge) is not the bottleneck it is on a
real cloud.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import os
import re
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from cloudcompute import retry
from cloudcompute.jobs import fanout

LOG = logging.getLogger("benchmarks.fanout")


class ClientBytes:
    """Bytes this host sends to TCP port 22 of ``addresses``, from iptables counters.

    A context manager: creates a chain of its own, jumps to it from OUTPUT,
    and removes both on exit. Needs root.
    """

    def __init__(self, addresses: Sequence[str], chain: Optional[str] = None):
        self.addresses = list(addresses)
        self.chain = chain or "CC-BYTES-%d" % os.getpid()

    def _ipt(self, *args: str, check: bool = True) -> str:
        return subprocess.run(["iptables", "-w", "5"] + list(args), capture_output=True,
                              text=True, check=check).stdout

    def __enter__(self) -> "ClientBytes":
        self._ipt("-N", self.chain)
        try:
            for a in self.addresses:
                self._ipt("-A", self.chain, "-d", a + "/32", "-p", "tcp", "--dport", "22",
                          "-j", "RETURN")
            self._ipt("-I", "OUTPUT", "1", "-j", self.chain)
        except BaseException:
            self.__exit__()
            raise
        return self

    def read(self) -> int:
        """Bytes counted since the chain was made (all its rules)."""
        out = self._ipt("-n", "-v", "-x", "-L", self.chain)
        return sum(int(line.split()[1]) for line in out.splitlines()[2:] if line.strip())

    def zero(self) -> None:
        self._ipt("-Z", self.chain)

    def __exit__(self, *exc: Any) -> None:
        self._ipt("-D", "OUTPUT", "-j", self.chain, check=False)
        self._ipt("-F", self.chain, check=False)
        self._ipt("-X", self.chain, check=False)


class RssPeak:
    """Peak growth of this process's RSS over a block (sampled every 10 ms)."""

    def __init__(self) -> None:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> "RssPeak":
        self.base = self.peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def _rss() -> int:
    with open("/proc/self/status") as f:
        found = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    if found is None:
        raise RuntimeError("no VmRSS in /proc/self/status")
    return int(found.group(1)) * 1024


class RoundLog(logging.Handler):
    """Keeps fanout's DEBUG lines (seed upload and per-round times)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def old_put(cluster: Any, path: str, remote: str, progress: Any = None) -> None:
    """The old way, kept for comparison: read the whole file, then upload it to
    each node in turn from the client (``NodeConnection.upload``, retried)."""
    with open(path, "rb") as f:
        raw = f.read()
    for n in cluster.node_names():
        retry.transfer(is_transient=fanout.transient)(cluster.connection(n).upload)(
            remote, raw, progress)


def make_file(path: str, mib: int) -> str:
    """``mib`` MiB of random bytes, written in chunks; returns its sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mib // 4):
            block = os.urandom(4 << 20)
            h.update(block)
            f.write(block)
    return h.hexdigest()


def node_hashes(cluster: Any, remote: str) -> Dict[str, str]:
    def one(n: str) -> str:
        return cluster.connection(n).run(["sha256sum", "--", remote]).stdout.split()[0]
    with cf.ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(cluster.node_names(), pool.map(one, cluster.node_names()),
                        strict=True))


def _measure(cluster: Any, how: Any, path: str, remote: str, sha: str) -> Dict[str, Any]:
    sent: List[int] = []
    addresses = [n.address for n in cluster.nodes]
    rounds = RoundLog()
    logging.getLogger(fanout.__name__).addHandler(rounds)
    old_level = logging.getLogger(fanout.__name__).level
    logging.getLogger(fanout.__name__).setLevel(logging.DEBUG)
    os.sync()  # the nodes' files share this host's disk: start without a writeback backlog
    try:
        with ClientBytes(addresses) as counter, RssPeak() as rss:
            t0 = time.monotonic()
            how(cluster, path, remote, progress=sent.append)
            wall = time.monotonic() - t0
            wire = counter.read()
    finally:
        logging.getLogger(fanout.__name__).removeHandler(rounds)
        logging.getLogger(fanout.__name__).setLevel(old_level)
    hashes = node_hashes(cluster, remote)
    bad = sorted(n for n, h in hashes.items() if h != sha)
    if bad:
        raise RuntimeError("%s: wrong sha256 on %s" % (how.__name__, bad))
    for n in cluster.node_names():
        cluster.connection(n).run(["rm", "-f", "--", remote])
    return {"wall_s": wall, "client_bytes_iptables": wire, "client_bytes_progress": sum(sent),
            "rss_growth_mib": rss.growth_mib, "log": rounds.lines}


def measure(cluster: Any, mib: int, workdir: str, reps: int = 2) -> Dict[str, Any]:
    """Fan-out ``put`` and the old way, one file of ``mib`` MiB to every node,
    alternating (new, old, new, old, ...) so that neither gets the quieter cloud.

    Per method: the best wall time, and the worst RSS growth and byte counts
    of its runs; every run's figures are kept under ``runs``."""
    path = os.path.join(workdir, "fanout-%d.bin" % mib)
    sha = make_file(path, mib)
    size = os.path.getsize(path)
    warm = os.path.join(workdir, "warm.bin")
    make_file(warm, 4)
    cluster.put(warm, "warm.bin")  # connections and node-to-node SSH set up once
    runs: Dict[str, List[Dict[str, Any]]] = {"fanout": [], "old": []}
    try:
        for _ in range(reps):
            runs["fanout"].append(_measure(cluster, fanout.put, path, "fan/new.bin", sha))
            runs["old"].append(_measure(cluster, old_put, path, "fan/old.bin", sha))
    finally:
        os.unlink(path)
        os.unlink(warm)
    out: Dict[str, Any] = {"mib": mib, "bytes": size, "nodes": len(cluster.nodes)}
    for key, rs in runs.items():
        out[key] = {"wall_s": min(r["wall_s"] for r in rs), "runs": rs,
                    "log": min(rs, key=lambda r: r["wall_s"])["log"]}
        for worst in ("client_bytes_iptables", "client_bytes_progress", "rss_growth_mib"):
            out[key][worst] = max(r[worst] for r in rs)
    return out


def targets(res: Dict[str, Any], target: Any) -> List[Dict[str, Any]]:
    """The three targets of the brief, from ``measure``'s result."""
    new, old, size, n = res["fanout"], res["old"], res["bytes"], res["nodes"]
    what = "put %d MiB to %d nodes" % (res["mib"], n)
    return [
        target("%s: client RSS growth (fan-out)" % what, new["rss_growth_mib"], 64, "MiB",
               "lower"),
        target("%s: bytes sent by the client (iptables) / file size" % what,
               new["client_bytes_iptables"] / size, 1.05, "ratio", "lower"),
        target("%s: wall time, fan-out / old node-by-node upload" % what,
               new["wall_s"] / old["wall_s"], 1.0, "ratio", "lower"),
    ]


def table(res: Dict[str, Any]) -> List[str]:
    """Markdown rows for bench-results.md."""
    lines = ["", "put %d MiB to %d nodes (best wall time of %d runs; worst bytes and RSS):"
             % (res["mib"], res["nodes"], len(res["fanout"]["runs"])), "",
             "| method | wall s (each run) | client bytes (iptables) | x file | progress bytes | "
             "RSS growth MiB |", "|---|---|---|---|---|---|"]
    for key, label in (("fanout", "fan-out (client once, then nodes)"),
                       ("old", "old: node by node from the client")):
        r = res[key]
        lines.append("| %s | %.1f (%s) | %d | %.3f | %d | %.1f |" % (
            label, r["wall_s"], ", ".join("%.1f" % x["wall_s"] for x in r["runs"]),
            r["client_bytes_iptables"],
            r["client_bytes_iptables"] / res["bytes"], r["client_bytes_progress"],
            r["rss_growth_mib"]))
    lines += ["", "fan-out steps: " + "; ".join(res["fanout"]["log"])]
    return lines
