"""Commands that reach into the nodes: ``ssh``, ``logs`` and ``dask``."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from typing import Any, Optional

from cloudcompute.cli.common import NAME_HELP, attach, emit, node_names
from cloudcompute.cli.parser import UsageError, add_command, option
from cloudcompute.ssh import bulk


def register(sub: Any) -> None:
    ssh = add_command(sub, "ssh", cmd_ssh, "Open a shell on a node, or run a command there.",
                      """\
Open a shell on a node, or run the command given after `--` and exit with its
status. The node's host key is checked against the one recorded at `up`.""")
    ssh.add_argument("name", metavar="NAME", help=NAME_HELP)
    ssh.add_argument("node", nargs="?", metavar="NODE",
                     help="The node to log in to (default: the first).")
    ssh.set_defaults(cmd=[])  # the words after "--" (split off in main)
    # argparse never sees them, so the usage line names them itself
    usage = " ".join(ssh.format_usage().split()) + " [-- COMMAND ...]"
    indent = " " * len("usage: %s " % ssh.prog)
    ssh.usage = textwrap.fill(usage, 79, subsequent_indent=indent)[len("usage: "):]
    logs = add_command(sub, "logs", cmd_logs, "Print the console logs of a cluster's servers.")
    logs.add_argument("name", metavar="NAME", help=NAME_HELP)
    logs.add_argument("node", nargs="?", metavar="NODE",
                      help="Only this node's log (default: every node's).")
    dk = add_command(sub, "dask", cmd_dask,
                     "Start Dask on a cluster (or find it running) and forward its "
                     "scheduler and dashboard here until Ctrl-C.")
    dk.add_argument("name", metavar="NAME", help=NAME_HELP)
    option(dk, "--stop", action="store_true", default=False,
           help="Stop the cluster's Dask processes instead; the servers stay")
    option(dk, "--timeout", type=float, default=120.0, metavar="SECONDS",
           help="Seconds the scheduler and workers may take to start")


def cmd_ssh(args: argparse.Namespace) -> Optional[int]:
    c = attach(args)
    if not c.node_names():
        raise UsageError("cluster %s has no ready nodes" % args.name)
    node = node_names(c, [args.node] if args.node else None)[0]
    info = next(n for n in c.nodes if n.name == node)
    if args.cmd:
        result = c.connection(node).run(args.cmd, warn=True)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        c.close_connections()
        return int(result.exit_code)
    c.close_connections()
    ssh = c.state.record.ssh
    if ssh.user is None or ssh.key_file is None:
        raise UsageError("cluster %s: its record names no SSH user or key" % args.name)
    address = info.ssh_address  # no address at all: SSHError naming the node
    scratch = tempfile.mkdtemp(prefix="cc-ssh-")
    try:
        known = os.path.join(scratch, "known_hosts")
        fd = os.open(known, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines("%s %s\n" % (address, k) for k in info.host_keys)
        argv = (["ssh"] + bulk.openssh_options(ssh.key_file, known, batch=False)
                + bulk.destination(ssh.user, address))
        # Ctrl-C belongs to the remote shell; wait for ssh, then remove known_hosts.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return subprocess.call(argv)
        finally:
            signal.signal(signal.SIGINT, old)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def cmd_logs(args: argparse.Namespace) -> None:
    c = attach(args)
    wanted = node_names(c, [args.node] if args.node else None)
    out = {}
    for n in c.nodes:
        if n.name in wanted:
            out[n.name] = c.conn.compute.get_server_console_output(n.server_id).get("output", "")
    if args.format == "json":
        emit(args, out)
    else:
        for name, text in out.items():
            sys.stdout.write("==> %s <==\n%s\n" % (name, text))


def cmd_dask(args: argparse.Namespace) -> int:
    from cloudcompute import daskcluster
    c = attach(args)
    if args.stop:
        daskcluster.stop(c)
        c.close_connections()
        emit(args, {"name": args.name, "stopped": True})
        return 0
    try:
        client = c.dask(timeout=args.timeout)
        info = client.cloudcompute.describe()
        emit(args, {k: info[k] for k in ("name", "scheduler", "dashboard", "scheduler_node",
                                         "remote_scheduler", "workers", "reused")})
        sys.stdout.flush()
        if args.format != "json":
            sys.stderr.write("forwarding until Ctrl-C; `cloudcompute dask %s --stop` or `down` "
                             "stops Dask\n" % args.name)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    finally:
        daskcluster.detach(c)  # the processes keep running for the next client
        c.close_connections()
    return 0
