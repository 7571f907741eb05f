"""Commands over a cluster's life: ``up``, ``status``, ``extend`` and ``down``."""
from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from cloudcompute import config
from cloudcompute.cli.common import NAME_HELP, attach, emit
from cloudcompute.cli.parser import add_command, option
from cloudcompute.cli.progress import progress_bar
from cloudcompute.cli.spec import (GROUP_SYNTAX, build_spec, field_default, parse_group,
                                   parse_groups)

if TYPE_CHECKING:
    from cloudcompute.record import NodeSummary


def register(sub: Any) -> None:
    _register_up(sub)
    status = add_command(sub, "status", cmd_status,
                         "Show a cluster's nodes, their addresses and host key fingerprints "
                         "(-f json adds timings).")
    status.add_argument("name", metavar="NAME", help=NAME_HELP)
    extend = add_command(sub, "extend", cmd_extend,
                         "Give a cluster more hours before it deletes itself.", """\
Add HOURS to the later of the cluster's deadline and now; the cluster's
watchdog and gc read the new deadline from the servers' metadata.""")
    extend.add_argument("name", metavar="NAME", help=NAME_HELP)
    option(extend, "--hours", type=float, required=True, metavar="HOURS", shown="none, required",
           help="Hours to add to the later of the deadline and now")
    down = add_command(sub, "down", cmd_down,
                       "Delete a cluster and every resource it created, and check that "
                       "none is left.")
    down.add_argument("name", metavar="NAME", help=NAME_HELP)


def _register_up(sub: Any) -> None:
    up = add_command(sub, "up", cmd_up, "Create a cluster and leave it running.", """\
Create a cluster and leave it running (detached: `down` or `gc` deletes it).
Flavors, images, networks and quotas are checked before anything is created.
Settings come from, highest first: these flags, the --spec file, the
CLOUDCOMPUTE_* variables, the cloud's `cloudcompute:` section of clouds.yaml.""")
    up.add_argument("name", metavar="NAME", help=NAME_HELP)
    option(up, "--spec", metavar="FILE", env=True, shown="none",
           help="A YAML or TOML file of ClusterSpec fields; the flags below win over it")
    option(up, "--nodes", type=int, metavar="N", env=True, shown="1",
           help="How many servers to create, as one group named node")
    option(up, "--group", action="append", metavar=GROUP_SYNTAX, env="CLOUDCOMPUTE_GROUPS",
           type=parse_group, env_type=parse_groups, shown="one group from --nodes",
           help="A group of COUNT servers with its own flavor and image (else --flavor's "
                "and --image's); repeat it for more groups, instead of --nodes; the "
                "variable holds groups separated by spaces")
    option(up, "--flavor", metavar="NAME", env=True,
           shown="the cloud's cloudcompute.flavor setting",
           help="The flavor (name or id) of the servers")
    option(up, "--image", metavar="NAME", env=True,
           shown="the cloud's cloudcompute.image setting",
           help="The image (name or id) of the servers")
    option(up, "--network", metavar="NAME", env=True,
           shown="the cloud's cloudcompute.network setting, else a new network",
           help="An existing network (name or id) to put the servers on")
    option(up, "--create-network", action="store_true", env=True, shown="off",
           help="Create a network, subnet and router for this cluster alone")
    option(up, "--floating-ips", choices=config.FLOATING_IP_MODES, env=True, shown="auto",
           help="Give the nodes floating IPs: auto (only when this machine has no route to "
                "their fixed address), always or never")
    option(up, "--ssh-user", metavar="USER", env=True,
           shown="the image's os_admin_user property, or the cloud's setting",
           help="The user to log in to the nodes as")
    option(up, "--ssh-cidr", metavar="CIDR", env=True,
           shown="this machine's address as the nodes see it",
           help="The addresses allowed to reach the nodes' SSH port")
    option(up, "--key-file", metavar="PATH", env=True,
           shown="a new ed25519 key for this cluster",
           help="A private key to log in with; its public half must be in PATH.pub")
    option(up, "--ttl-hours", type=float, metavar="HOURS", env=True,
           shown=str(field_default("ttl_hours")),
           help="Hours after which the cluster deletes itself and gc may delete it")
    option(up, "--idle-minutes", type=float, metavar="MINUTES", env=True, shown="never",
           help="Minutes without SSH connections or running tasks after which the "
                "cluster deletes itself")
    option(up, "--min-nodes", type=int, metavar="N", env=True, shown="every node",
           help="The fewest nodes the cluster may start with when failed servers cannot "
                "be replaced")
    option(up, "--max-replacements", type=int, metavar="N", env=True,
           shown=str(field_default("max_replacements")),
           help="How many failed servers to replace before dropping nodes (down to "
                "--min-nodes) or failing")
    option(up, "--timeout-active", type=float, metavar="SECONDS", env=True,
           shown=str(field_default("active", config.Timeouts)),
           help="Seconds the servers may take to become ACTIVE")
    option(up, "--timeout-ssh", type=float, metavar="SECONDS", env=True,
           shown=str(field_default("ssh", config.Timeouts)),
           help="Seconds the nodes may take to answer SSH once ACTIVE")


def cmd_up(args: argparse.Namespace) -> None:
    from cloudcompute.cluster import Cluster
    from cloudcompute.provision import preflight
    c = Cluster(build_spec(args), cloud=args.os_cloud)  # a bad spec: ConfigError
    preflight.resolve(c.conn, c.spec)  # unknown names, short quota: PreflightError
    with progress_bar(c.spec.total_nodes * 3, "steps") as tick:
        c.progress = lambda phase, node: tick("%s %s" % (node, phase))
        c.up()
    c.detach()
    d = c.describe()
    emit(args, d.to_dict(), [[n.name, n.address, _host_key(n)] for n in d.nodes],
         ["node", "address", "host key"])


def _host_key(node: NodeSummary) -> str:
    """The first host key fingerprint of a node, or '-'."""
    return node.host_key_fingerprints[0] if node.host_key_fingerprints else "-"


def cmd_status(args: argparse.Namespace) -> None:
    d = attach(args).describe()
    emit(args, d.to_dict(), [[n.name, n.group, n.address, n.server_id, _host_key(n)]
                             for n in d.nodes],
         ["node", "group", "address", "server id", "host key"])


def cmd_extend(args: argparse.Namespace) -> None:
    deadline = attach(args).extend(args.hours)
    emit(args, {"name": args.name, "deadline": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline))})


def cmd_down(args: argparse.Namespace) -> None:
    timings = attach(args).down()
    emit(args, {"name": args.name, "deleted": True, "seconds": round(timings.get("total", 0), 2)})
