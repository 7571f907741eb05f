import pytest
import yaml

from cloudcompute import tags
from cloudcompute.exceptions import SSHError
from cloudcompute.record import NodeInfo, directly_routable
from cloudcompute.ssh import hostkeys

CONSOLE = """boot
-----BEGIN SSH HOST KEY KEYS-----
ssh-ed25519 AAAAold root@x
-----END SSH HOST KEY KEYS-----
reboot
ec2: -----BEGIN SSH HOST KEY KEYS-----
ec2: ecdsa-sha2-nistp256 AAAAE2Vj root@x
ec2: ssh-ed25519 AAAAC3Nz root@x
ec2: -----END SSH HOST KEY KEYS-----
"""


def test_console_keys_take_the_last_block_and_tolerate_prefixes():
    assert hostkeys.keys_from_console(CONSOLE) == [
        "ecdsa-sha2-nistp256 AAAAE2Vj", "ssh-ed25519 AAAAC3Nz"]
    assert hostkeys.keys_from_console("no keys yet") == []
    assert hostkeys.keys_from_console("-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 A") == []


def test_user_data_merge_keeps_the_callers_cloud_config():
    priv, pub = hostkeys.generate_ed25519()
    merged = hostkeys.user_data_with_host_key("#cloud-config\npackages: [htop]\n", priv, pub)
    data = yaml.safe_load(merged)
    assert data["packages"] == ["htop"]
    assert data["ssh_keys"] == {"ed25519_private": priv, "ed25519_public": pub}
    assert merged.startswith("#cloud-config\n")
    assert hostkeys.user_data_with_host_key("#!/bin/sh\ntrue\n", priv, pub) is None
    assert pub.startswith("ssh-ed25519 ")
    assert hostkeys.fingerprint(pub).startswith("SHA256:")


def test_directly_routable_reads_specific_routes_only(tmp_path):
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n"      # default
        "ccbr1\t00002A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"      # 10.42.0.0/24
        "*\t00002A0A\t00000000\t0201\t0\t0\t0\t0000FFFF\n")         # unreachable /16
    assert directly_routable("10.42.0.7", str(route))
    assert not directly_routable("10.42.1.7", str(route))
    assert not directly_routable("8.8.8.8", str(route))
    assert not directly_routable("not-an-ip", str(route))


def test_a_node_without_an_address_is_refused_by_name():
    assert NodeInfo("n0", "g", floating_ip="203.0.113.5").ssh_address == "203.0.113.5"
    with pytest.raises(SSHError, match="n0: no IPv4 address") as e:
        _ = NodeInfo("n0", "g").ssh_address
    assert e.value.fatal


def test_tags_round_trip_and_foreign_resources():
    assert tags.cluster_of(tags.tags("c-1234")) == "c-1234"
    assert tags.cluster_of(["cc-cluster=c-1234"]) is None  # no library mark
    assert tags.cluster_of(None) is None
    meta = tags.server_metadata("c-1", "c", "node", 2.0, "me@h:1", now=1000)
    assert meta["cc_expires"] == "8200" and meta["cc_cluster"] == "c-1"

