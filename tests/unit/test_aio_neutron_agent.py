"""The rig's Neutron agent launcher (devstack/aio/lib/neutron_agent.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "devstack", "aio", "lib"))
import neutron_agent  # noqa: E402

# `ebtables -t nat -L <chain> --Ln` as ebtables-nft prints it: MACs without
# their leading zeros, which is why the agent's delete-by-text fails
LISTING = """Bridge table: nat

Bridge chain: neutronMAC-tap677738dc-6b, entries: 4, policy: RETURN
1 -i tap677738dc-6b --among-src fa:16:3e:d3:8:f3 -j RETURN
2 -i tap677738dc-6bb --among-src fa:16:3e:d3:8:f4 -j RETURN
3 -i tap677738dc-6b --among-src fa:16:3e:0:0:1,fa:16:3e:0:0:2 -j RETURN
4 -j DROP
"""


def test_mac_rules_of_the_vif_are_found_by_number_highest_first():
    # highest first, so that deleting one does not renumber the next;
    # a device whose name merely starts with the vif's is not the vif
    assert neutron_agent.mac_rule_numbers("tap677738dc-6b", LISTING) == [3, 1]
    assert neutron_agent.mac_rule_numbers("tap677738dc-6bb", LISTING) == [2]
    assert neutron_agent.mac_rule_numbers("tapother", LISTING) == []


def test_an_unknown_agent_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["neutron_agent.py", "dhcp"])
    try:
        neutron_agent.main()
    except SystemExit as exc:
        assert "linuxbridge|l3" in str(exc)
    else:
        raise AssertionError("an unknown agent was started")
