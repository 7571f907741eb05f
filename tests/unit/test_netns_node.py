"""Unit tests of the all-in-one compute driver's host-side logic."""
import base64
import os
import sys

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "devstack", "aio", "lib"))
import cc_netns_node as node  # noqa: E402

ED_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPZFOkJpC1kAeJyCRMx/LIvsMzmGptbXfm1dFeEQ7hRP"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def test_parse_user_data_cloud_config():
    ud = "#cloud-config\n" + yaml.safe_dump({
        "ssh_authorized_keys": ["ssh-ed25519 AAAA x"],
        "ssh_keys": {"ed25519_private": "PRIV", "ed25519_public": "PUB",
                     "bogus_private": "ignored", "rsa_certificate": "ignored"}})
    cc = node.parse_user_data(b64(ud))
    assert cc.authorized_keys == ["ssh-ed25519 AAAA x"]
    assert cc.host_keys == {"ed25519_private": "PRIV", "ed25519_public": "PUB"}


@pytest.mark.parametrize("raw", [None, "", b64("#!/bin/sh\necho hi\n")])
def test_parse_user_data_ignores_non_cloud_config(raw):
    assert node.parse_user_data(raw) == node.CloudConfig([], {})


def test_parse_user_data_rejects_bad_yaml():
    with pytest.raises(node.NodeError, match="cloud-config"):
        node.parse_user_data(b64("#cloud-config\nssh_keys: [unclosed\n"))


def test_fingerprint_matches_ssh_keygen_format():
    # ssh-keygen -l -f on this key prints exactly this line
    assert node.fingerprint_line(ED_PUB, "root@s1") == (
        "256 SHA256:9PkNa0bxKgE/WYwNNNr4Fdcbq+Z0tZZy8pnupGdOhEM root@s1 (ED25519)")


def test_console_blocks_have_cloud_init_markers():
    text = node.console_host_keys([ED_PUB + " comment"], "s1")
    lines = text.splitlines()
    assert "-----BEGIN SSH HOST KEY FINGERPRINTS-----" in lines
    keys = lines[lines.index("-----BEGIN SSH HOST KEY KEYS-----") + 1]
    assert keys == ED_PUB + " root@s1"
    assert lines[-1] == "-----END SSH HOST KEY KEYS-----"


def test_sshd_config_listens_on_fixed_ip_only_and_refuses_passwords():
    cfg = node.sshd_config("/d", "debian", ["10.0.0.5"], ["/d/k"], "/keys/u")
    assert "ListenAddress 10.0.0.5" in cfg
    assert "PasswordAuthentication no" in cfg and "PermitRootLogin no" in cfg
    assert "AuthorizedKeysFile /keys/u" in cfg and "AllowUsers debian" in cfg


def test_interface_names_fit_the_kernel_limit():
    vif = node.Vif("1234abcd-0000-1111-2222-333344445555",
                   "99998888-7777-6666-5555-444433332222", "fa:16:3e:00:00:01",
                   "10.0.0.5", 24, "10.0.0.1")
    for name in (vif.bridge, vif.host_veth, vif.node_veth):
        assert len(name) <= 15
    assert vif.host_veth != vif.node_veth
    # Nova's names for a Linux-bridge VIF, which neutron-linuxbridge-agent
    # looks for: "tap"/"brq" and the id's first 11 characters, hyphen kept
    assert vif.host_veth == "tap1234abcd-00"
    assert vif.bridge == "brq99998888-77"


def test_knobs_metadata_wins_and_unknown_fault_is_refused():
    k = node.spec_knobs({"cc_fault": "no_sshd"}, {"cc_fault": "slow_boot",
                                                  "cc_boot_delay": "7"})
    assert k["fault"] == "no_sshd" and k["boot_delay"] == 7.0
    with pytest.raises(node.NodeError, match="unknown cc_fault"):
        node.spec_knobs({"cc_fault": "explode"}, {})
    with pytest.raises(node.NodeError, match="bad boot knob"):
        node.spec_knobs({"cc_boot_delay": "soon"}, {})


class Recorder:
    """Records host commands; answers like an empty host."""

    def __init__(self, fail_on=()):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, cmd):
        self.calls.append(list(cmd))
        if any(f in " ".join(cmd) for f in self.fail_on):
            raise node.NodeError("failed: %s" % " ".join(cmd))
        return ""


def test_failed_create_removes_what_it_made(tmp_path, monkeypatch):
    rec = Recorder(fail_on=["ip link set ccn"])
    host = node.NodeHost(str(tmp_path), runner=rec)
    monkeypatch.setattr(host, "ensure_user", lambda user: None)
    monkeypatch.setattr(host, "write_files", lambda spec: os.makedirs(
        host.inst_dir(spec.uuid)))
    vif = node.Vif("p" * 36, "n" * 36, "fa:16:3e:00:00:01", "10.0.0.5", 24, "10.0.0.1")
    spec = node.NodeSpec(uuid="u1", hostname="h", vifs=[vif])
    with pytest.raises(node.NodeError):
        host.create(spec)
    flat = [" ".join(c) for c in rec.calls]
    assert "ip link del %s" % vif.host_veth in flat
    assert "ip netns del cc-u1" in flat
    assert not os.path.exists(host.inst_dir("u1"))


def test_destroy_is_idempotent(tmp_path):
    rec = Recorder(fail_on=["netns pids", "netns del", "link del"])
    host = node.NodeHost(str(tmp_path), runner=rec)
    host.destroy("gone")
    host.destroy("gone")


def test_first_failure_only_once(tmp_path):
    host = node.NodeHost(str(tmp_path))
    assert host.first_failure("k") is True
    assert host.first_failure("k") is False


def test_archive_holds_the_nodes_files_as_the_node_names_them(tmp_path):
    import tarfile
    host = node.NodeHost(str(tmp_path))
    d = tmp_path / "instances" / "u1"
    for sub in ("home", "tmp", "vartmp"):
        (d / sub).mkdir(parents=True)
    (d / "home" / "result.txt").write_text("42\n")
    (d / "vartmp" / "cache").write_text("c")
    (d / "home" / "escape").symlink_to("/etc/shadow")
    (d / "sshd_config").write_text("not the node's")
    out = tmp_path / "snap.tar.gz"
    assert host.archive("u1", str(out)) == out.stat().st_size > 0
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("home/result.txt").read() == b"42\n"
        assert tar.getmember("home/escape").issym()  # stored as a link, not read
    assert {"home/result.txt", "var/tmp/cache", "tmp"} <= names
    assert not any("sshd_config" in n or n.startswith("vartmp") for n in names)


def test_archive_of_an_unknown_instance_is_refused(tmp_path):
    with pytest.raises(node.NodeError, match="no files"):
        node.NodeHost(str(tmp_path)).archive("nope", str(tmp_path / "x.tar.gz"))


def test_power_on_boots_the_node_again_with_its_spawn_settings(tmp_path):
    calls = []
    host = node.NodeHost(str(tmp_path), runner=lambda cmd: calls.append(cmd) or "")
    booted = []
    host.boot = booted.append
    d = tmp_path / "instances" / "u1"
    d.mkdir(parents=True)
    (d / "console.log").write_text("first boot\n")
    (d / "boot.json").write_text('{"hostname": "h1", "user": "debian", "boot_delay": 0.5, '
                                 '"fault": null, "python_bin": "/envs/x/bin"}')
    host.stop("u1")
    assert ["ip", "netns", "pids", "cc-u1"] in calls  # its processes were looked for
    host.start("u1")
    (spec,) = booted
    assert (spec.uuid, spec.hostname, spec.boot_delay, spec.python_bin, spec.netns) == (
        "u1", "h1", 0.5, "/envs/x/bin", "cc-u1")
    assert (d / "console.log").read_text().splitlines()[1:] == [
        "cc-netns: power off", "cc-netns boot: h1 (u1)"]
    with pytest.raises(node.NodeError, match="no files"):
        host.start("u2")


def test_a_node_boots_in_namespaces_of_its_own(tmp_path):
    spec = node.NodeSpec(uuid="u1", hostname="h1", boot_delay=0.5)
    cmd = node.NodeHost(str(tmp_path)).boot_command(spec)
    assert cmd[:6] == ["setsid", "-f", "ip", "netns", "exec", "cc-u1"]
    unshare = cmd[cmd.index("unshare"):cmd.index("--")]
    # its own processes only (a PID namespace with its own /proc), files and hostname
    for flag in ("--pid", "--fork", "--mount-proc", "--mount", "--uts"):
        assert flag in unshare
    assert cmd[cmd.index("--") + 1:cmd.index("--") + 3] == [
        "/bin/sh", str(tmp_path / "instances" / "u1" / "boot.sh")]
