"""Runs a Neutron agent of the all-in-one cloud.

    neutron_agent.py linuxbridge|l3 --config-file ... --log-file ...

The agent is Neutron's own, started as its console script starts it, with
one change for the Linux-bridge agent: its MAC-spoofing rules are made to
work with the nftables ebtables of Debian 12 (this kernel has no legacy
ebtables). When a port is processed again, the agent deletes the port's
``--among-src`` rule by repeating the rule as ``ebtables -L`` printed it;
ebtables-nft prints MACs without leading zeros (``fa:16:3e:d3:8:f3``) and
refuses that delete with exit code 4, which the agent retries without end,
and no other port is wired meanwhile. The replacement deletes those rules
by their number.

Running the privileged calls in-process instead of in the agents' privsep
daemons (about 100 MiB each, five in all) was tried: pyroute2's netlink
sockets then fail under the agents' eventlet (EBADF), so the daemons stay.
"""
import sys

AGENTS = {
    "linuxbridge": "neutron.cmd.eventlet.plugins.linuxbridge_neutron_agent",
    "l3": "neutron.cmd.eventlet.agents.l3",
}


def mac_rule_numbers(vif, listing):
    """Numbers of the ``--among-src`` rules for ``vif`` in an
    ``ebtables -L <chain> --Ln`` listing, highest first."""
    numbers = []
    for line in listing.splitlines():
        first = line.split(" ", 1)[0]
        if first.isdigit() and ("-i %s " % vif) in line and "--among-src" in line:
            numbers.append(int(first))
    return sorted(numbers, reverse=True)


def delete_vif_mac_rules_by_number(vif, current_rules):
    """``arp_protect._delete_vif_mac_rules``, by rule number (see above)."""
    from neutron.plugins.ml2.drivers.linuxbridge.agent import arp_protect
    chain = arp_protect._mac_chain_name(vif)
    if not any("--among-src" in rule and ("-i %s" % vif) in rule for rule in current_rules):
        return
    for number in mac_rule_numbers(vif, arp_protect.ebtables(["-L", chain, "--Ln"])):
        arp_protect.ebtables(["-D", chain, str(number)])


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in AGENTS:
        sys.exit("usage: neutron_agent.py %s [agent options]" % "|".join(AGENTS))
    name = sys.argv.pop(1)
    # Importing the agent's command module monkey-patches eventlet first,
    # as its console script does.
    module = __import__(AGENTS[name], fromlist=["main"])
    if name == "linuxbridge":
        from neutron.plugins.ml2.drivers.linuxbridge.agent import arp_protect
        arp_protect._delete_vif_mac_rules = delete_vif_mac_rules_by_number
    sys.argv[0] = "neutron-%s-agent" % name
    return module.main()


if __name__ == "__main__":
    sys.exit(main())
