"""Keypair, security group and network of a cluster.

Each function records its intent in the cluster state before the create
call and the id right after, and tags what it made, so that nothing the
library creates can be lost.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

from openstack import exceptions as os_exc

from cloudcompute import retry, tags
from cloudcompute.exceptions import StateError
from cloudcompute.ssh import hostkeys
from cloudcompute.state import ClusterState

LOG = logging.getLogger(__name__)


def _describe(st: ClusterState) -> str:
    return "cloudcompute cluster %s" % st.cluster_id


def _tag(conn: Any, resource: Any, st: ClusterState) -> None:
    retry.call(conn.network.set_tags, resource, tags.tags(st.cluster_id))


def _first(lister: Callable[..., Any], **filters: Any) -> Any:
    return next(iter(retry.call(lambda: list(lister(**filters)))), None)


def _create(create: Callable[..., Any], lister: Callable[..., Any], **args: Any) -> Any:
    """Create a named resource; a retry first looks for it by name."""
    return retry.create_checked(lambda: create(**args),
                                lambda: _first(lister, name=args["name"]))


_RULE_KEYS = {"direction": "direction", "ethertype": "ether_type", "protocol": "protocol",
              "port_range_min": "port_range_min", "remote_ip_prefix": "remote_ip_prefix",
              "remote_group_id": "remote_group_id"}


def _existing_rules(conn: Any, rules: List[Dict[str, Any]]) -> Optional[List[Any]]:
    """The group's rules identical to each of ``rules``, or None if one is missing."""
    have = retry.call(lambda: list(conn.network.security_group_rules(
        security_group_id=rules[0]["security_group_id"])))
    found = [next((r for r in have if all(getattr(r, attr, None) == want.get(k)
                                          for k, attr in _RULE_KEYS.items())), None)
             for want in rules]
    return None if any(r is None for r in found) else found


def _create_rule(conn: Any, **args: Any) -> Any:
    """A security-group rule; a retry first looks for an identical one."""
    found = retry.create_checked(lambda: conn.network.create_security_group_rule(**args),
                                 lambda: _existing_rules(conn, [args]))
    return found[0] if isinstance(found, list) else found


def _create_rules(conn: Any, rules: List[Dict[str, Any]]) -> None:
    """Rules of one group in one request (Neutron's bulk create is all or
    nothing); a retry first looks for them. A cloud that refuses the bulk form
    gets them one by one."""
    try:
        retry.create_checked(lambda: list(conn.network.create_security_group_rules(rules)),
                             lambda: _existing_rules(conn, rules))
    except (os_exc.BadRequestException, os_exc.NotFoundException) as exc:
        LOG.info("bulk security-group rule create refused (%s); one by one", exc)
        for args in rules:
            _create_rule(conn, **args)


def create_keypair(conn: Any, st: ClusterState, key_file: Optional[str]) -> Tuple[str, str]:
    """Upload the cluster's public key; return (keypair name, private key path).

    Without ``key_file`` a new ed25519 key is generated; its private half is
    written 0600 next to the state file and never leaves this machine.
    """
    name = tags.resource_name(st.cluster_id)
    if key_file:
        key_path = os.path.abspath(os.path.expanduser(key_file))
    else:
        key_path = st.key_path("key")
    # Recorded before the key is written, so that a rollback interrupted at
    # any later point still removes a generated private key.
    with st.locked():
        st.record.ssh.key_file = key_path
        st.record.ssh.generated_key = not key_file
        st.save()
    if key_file:
        with open(key_path + ".pub") as f:
            public = f.read().strip()
    else:
        private, public = hostkeys.generate_ed25519()
        _write_cluster_key(st, key_path, private, "key_file")
    st.intend("keypairs", name)
    kp = retry.create_checked(
        lambda: conn.compute.create_keypair(name=name, public_key=public),
        lambda: retry.call(conn.compute.find_keypair, name, ignore_missing=True))
    st.created("keypairs", name, kp.id or name)
    return name, key_path


def write_private_key(path: str, private: str) -> None:
    """Write a private key readable by its owner only (0600 from creation on),
    into a new file: never over an existing file, never through a symlink."""
    ClusterState.write_key(path, private)


def create_internal_key(st: ClusterState) -> str:
    """Generate the cluster's internal ed25519 key, for SSH between its nodes;
    return its public line (to be authorized on every node through user-data).

    The private half is written 0600 next to the state file; its path is
    recorded in the state first, so a rollback at any later point removes it.
    The nodes receive it when they need it (:mod:`cloudcompute.ssh.intra`).
    """
    path = st.key_path("internal.key")
    with st.locked():
        st.record.ssh.internal_key_file = path
        st.save()
    private, public = hostkeys.generate_ed25519()
    _write_cluster_key(st, path, private, "internal_key_file")
    return public


def _write_cluster_key(st: ClusterState, path: str, private: str, field: str) -> None:
    """Write a key whose path the record already names; if a file is already
    there, it is not the cluster's: the record lets go of it, so that no
    rollback or teardown deletes it."""
    try:
        write_private_key(path, private)
    except StateError:
        with st.locked():
            setattr(st.record.ssh, field, None)
            if field == "key_file":
                st.record.ssh.generated_key = False
            st.save()
        raise


def create_security_group(conn: Any, st: ClusterState) -> Any:
    """A group that admits all traffic between its members; SSH comes later."""
    name = tags.resource_name(st.cluster_id)
    st.intend("security_groups", name)
    sg = _create(conn.network.create_security_group, conn.network.security_groups,
                 name=name, description=_describe(st))
    st.created("security_groups", name, sg.id)
    _tag(conn, sg, st)
    _create_rules(conn, [dict(security_group_id=sg.id, direction="ingress",
                              ethertype=ethertype, remote_group_id=sg.id,
                              description="cluster-internal traffic")
                         for ethertype in ("IPv4", "IPv6")])
    return sg


def allow_ssh(conn: Any, sg_id: str, cidr: str) -> None:
    """Open TCP 22 from ``cidr`` only."""
    ethertype = "IPv6" if ":" in cidr else "IPv4"
    _create_rule(
        conn, security_group_id=sg_id, direction="ingress", ethertype=ethertype,
        protocol="tcp", port_range_min=22, port_range_max=22,
        remote_ip_prefix=cidr, description="SSH from the cloudcompute client")


def caller_cidr(address: str) -> str:
    """The source address this machine uses to reach ``address``, as /32 (/128)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((address, 22))  # UDP connect: picks a route, sends nothing
        local = s.getsockname()[0]
    return "%s/%d" % (local, 128 if family == socket.AF_INET6 else 32)


def create_network(conn: Any, st: ClusterState, cidr: str,
                   external_network_id: Optional[str]) -> str:
    """Network, subnet and (with an external network) a router; return the network id."""
    name = tags.resource_name(st.cluster_id)
    st.intend("networks", name)
    net = _create(conn.network.create_network, conn.network.networks,
                  name=name, description=_describe(st))
    st.created("networks", name, net.id)
    _tag(conn, net, st)
    st.intend("subnets", name, network_id=net.id)
    subnet = _create(conn.network.create_subnet, conn.network.subnets, name=name,
                     network_id=net.id, ip_version=4, cidr=cidr, description=_describe(st))
    st.created("subnets", name, subnet.id, network_id=net.id)
    _tag(conn, subnet, st)
    if external_network_id:
        st.intend("routers", name)
        router = _create(
            conn.network.create_router, conn.network.routers, name=name,
            description=_describe(st),
            external_gateway_info={"network_id": external_network_id})
        st.created("routers", name, router.id)
        _tag(conn, router, st)
        st.intend("router_interfaces", name, router_id=router.id, subnet_id=subnet.id)
        retry.create_checked(
            # positional: openstacksdk renamed subnet_id to subnet
            lambda: conn.network.add_interface_to_router(router, subnet.id),
            lambda: _first(conn.network.ports, device_id=router.id,
                           fixed_ips="subnet_id=%s" % subnet.id))
        st.created("router_interfaces", name, subnet.id, router_id=router.id,
                  subnet_id=subnet.id)
    return net.id
