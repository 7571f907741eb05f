"""The ssh_config of node-to-node SSH holds the same verified options as every
``ssh`` the library starts: it is built from :func:`bulk.openssh_options`."""
import shutil
import subprocess

import pytest

from cloudcompute.ssh import bulk, intra

MEMBERS = ["10.42.0.5", "10.42.0.6"]


def config(key="~/.cloudcompute/intra_key", known="~/.cloudcompute/known_hosts"):
    return intra.ssh_config_text("debian", MEMBERS, key, known)


def test_every_option_of_openssh_options_is_a_line_of_the_config():
    text = config()
    opts = bulk.openssh_options("~/.cloudcompute/intra_key", "~/.cloudcompute/known_hosts")
    pairs = list(zip(opts[::2], opts[1::2], strict=True))
    assert len(pairs) > 8
    for flag, value in pairs:
        if flag == "-o":
            line = "    %s %s\n" % tuple(value.split("=", 1))
        elif flag == "-F":
            continue  # the file is the configuration
        else:
            line = "    %s %s\n" % ({"-p": "Port", "-i": "IdentityFile"}[flag], value)
        assert line in text, (flag, value)
    for line in ("Host 10.42.0.5 10.42.0.6\n", "    User debian\n",
                 "    ServerAliveInterval %d\n" % bulk.KEEPALIVE_SECONDS,
                 "    LogLevel ERROR\n", "    Ciphers %s\n" % bulk.CIPHERS):
        assert line in text


def test_argv_and_config_come_from_one_option_list():
    opts = intra.peer_options("/k", "/kh")
    assert intra.ssh_argv("/k", "/kh", "u", "10.0.0.1") == ["ssh", *opts, "-l", "u", "--",
                                                             "10.0.0.1"]
    assert opts[:len(bulk.openssh_options("/k", "/kh"))] == bulk.openssh_options("/k", "/kh")


def test_config_lines_convert_flags_and_refuse_what_has_no_config_form():
    assert intra.config_lines(["-p", "2222", "-i", "/a b/k", "-F", "/dev/null",
                               "-o", "ConnectTimeout=10", "-o", "X=a=b"]) == [
        "Port 2222", 'IdentityFile "/a b/k"', "ConnectTimeout 10", "X a=b"]
    for bad, what in ((["-o"], "pairs"), (["-v", "x"], "-v has no ssh_config form"),
                      (["-o", "NoValue"], "-o NoValue is not Key=Value"),
                      (["-o", "A-B=1"], "-o A-B=1 is not Key"),
                      (["-i", 'a"b'], "cannot hold the value of IdentityFile"),
                      (["-o", "A=x\ny"], "cannot hold")):
        with pytest.raises(ValueError, match=what):
            intra.config_lines(bad)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client here")
def test_openssh_reads_the_config_for_members_only(tmp_path):
    path = tmp_path / "ssh_config"
    path.write_text(config(str(tmp_path / "key"), str(tmp_path / "kh")))

    def resolved(host):
        p = subprocess.run(["ssh", "-G", "-F", str(path), host], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=10)
        assert p.returncode == 0, p.stderr
        return dict(line.partition(" ")[::2] for line in p.stdout.splitlines())

    got = resolved("10.42.0.6")
    assert got["user"] == "debian" and got["port"] == "22"
    assert got["identityfile"] == str(tmp_path / "key")
    assert got["userknownhostsfile"] == str(tmp_path / "kh")
    assert got["stricthostkeychecking"] == "true" and got["batchmode"] == "yes"
    assert got["identitiesonly"] == "yes" and got["globalknownhostsfile"] == "/dev/null"
    assert got["connecttimeout"] == "10" and got["loglevel"] == "ERROR"
    assert got["serveraliveinterval"] == str(bulk.KEEPALIVE_SECONDS)
    assert got["serveralivecountmax"] == "3" and got["ciphers"] == bulk.CIPHERS
    assert resolved("10.42.0.7")["serveraliveinterval"] == "0"  # not a member
