"""One all-in-one "instance": a network namespace with its own sshd.

This module holds everything the Nova driver (``cc_netns_driver``) does to
the host, without importing Nova, so that it can be unit tested on its own.

An instance is:

* a network namespace ``cc-<uuid>`` whose ``eth0`` (one end of a veth pair)
  carries the Neutron port's MAC, fixed IP and MTU, with a default route via
  the subnet gateway; the other end is the port's ``tap`` device on the
  network's ``brq`` bridge, named as Nova's Linux-bridge VIF plugging names
  them, so that neutron-linuxbridge-agent finds the tap, applies the port's
  security groups to it and reports the port up. The gateway is the
  network's router (neutron-l3-agent, in its qrouter namespace on the same
  bridge);
* PID and UTS namespaces of its own: the node sees its own processes only
  (sshd is its PID 1), under its own hostname;
* a mount namespace in which the login user's home, ``/tmp`` and
  ``/var/tmp`` are private directories of the instance, and ``/usr/local/bin``
  is either empty (stock image: Debian's ``/usr/bin/python3``) or the ``bin``
  directory of a prepared Python environment named by the image;
* an sshd listening on the fixed IP, started after a boot delay, with host
  keys from cloud-init ``ssh_keys`` user-data or generated at spawn, and
  authorized keys from the Nova keypair and cloud-init ``ssh_authorized_keys``;
* a console log that prints the host keys the way cloud-init does.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Callable, Iterable, Optional, Sequence

import yaml

LOG = logging.getLogger(__name__)
# Bridges are shared by every instance on a network: creating one, attaching a
# port to it and deleting it when empty must not interleave between two
# spawns, or a spawn and a destroy (one was seen deleting the bridge another
# had just attached to). nova-compute runs them in green threads of one
# process, and threading's lock is green there.
BRIDGES = threading.Lock()

KEY_TYPES = ("ed25519", "ecdsa", "rsa")
FAULTS = ("spawn_error", "spawn_error_once", "no_sshd", "slow_boot")
DEFAULT_USER = "debian"
DEFAULT_BOOT_DELAY = 3.0
DEFAULT_SLOW_BOOT = 120.0

Runner = Callable[[Sequence[str]], str]


class NodeError(Exception):
    """A node could not be set up as asked."""


def run(cmd: Sequence[str]) -> str:
    """Run a host command, raise NodeError with its stderr on failure."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise NodeError("%s failed (%d): %s"
                        % (" ".join(cmd), proc.returncode, proc.stderr.strip()))
    return proc.stdout


def no_ipv6(runner: Runner, ifname: str, prefix: Sequence[str] = ()) -> None:
    """Turn IPv6 off on one interface, before it comes up: it then takes no
    link-local address and neither sends nor receives IPv6, which the rig's
    firewall (IPv4 only) would not filter (``cloud`` also drops IPv6 from the
    bridges with ip6tables)."""
    runner(list(prefix) + ["sysctl", "-qw",
                           "net.ipv6.conf.%s.disable_ipv6=1" % ifname])


@dataclasses.dataclass
class Vif:
    port_id: str
    network_id: str
    mac: str
    address: str
    prefixlen: int
    gateway: Optional[str]
    mtu: Optional[int] = None

    # The names Nova gives a Linux-bridge VIF (``vif['network']['bridge']``
    # and ``vif['devname']``, both cut to 14 characters), and those
    # neutron-linuxbridge-agent looks for.
    @property
    def bridge(self) -> str:
        return "brq" + self.network_id[:11]

    @property
    def host_veth(self) -> str:
        return "tap" + self.port_id[:11]

    @property
    def node_veth(self) -> str:
        return "ccn" + self.port_id.replace("-", "")[:11]


@dataclasses.dataclass
class CloudConfig:
    """The part of cloud-init user-data that the rig honours."""
    authorized_keys: list
    host_keys: dict  # e.g. {"ed25519_private": "...", "ed25519_public": "..."}


def parse_user_data(raw: Optional[str]) -> CloudConfig:
    """Parse base64 user-data as Nova stores it; only ``#cloud-config``."""
    empty = CloudConfig(authorized_keys=[], host_keys={})
    if not raw:
        return empty
    try:
        text = base64.b64decode(raw).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        text = raw
    if not text.lstrip().startswith("#cloud-config"):
        return empty
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise NodeError("user-data is not valid cloud-config YAML: %s" % exc) from exc
    if not isinstance(data, dict):
        raise NodeError("cloud-config user-data must be a mapping")
    keys = data.get("ssh_authorized_keys") or []
    if isinstance(keys, str):
        keys = [keys]
    host_keys = {}
    for name, value in (data.get("ssh_keys") or {}).items():
        ktype, _, kind = str(name).rpartition("_")
        if ktype in KEY_TYPES and kind in ("private", "public"):
            host_keys[name] = str(value)
    return CloudConfig(authorized_keys=[str(k).strip() for k in keys],
                       host_keys=host_keys)


def fingerprint_line(pub_line: str, comment: str = "root@localhost") -> str:
    """Return ``<bits> SHA256:<b64> <comment> (<TYPE>)`` as ssh-keygen -l."""
    ktype, b64 = pub_line.split()[:2]
    blob = base64.b64decode(b64)
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    if ktype == "ssh-ed25519":
        bits, label = 256, "ED25519"
    elif ktype.startswith("ecdsa-sha2-nistp"):
        bits, label = int(ktype[len("ecdsa-sha2-nistp"):]), "ECDSA"
    elif ktype == "ssh-rsa":
        # blob: string "ssh-rsa", mpint e, mpint n
        off = 0
        fields = []
        for _ in range(3):
            length = int.from_bytes(blob[off:off + 4], "big")
            fields.append(blob[off + 4:off + 4 + length])
            off += 4 + length
        bits, label = len(fields[2].lstrip(b"\0")) * 8, "RSA"
    else:
        bits, label = 0, ktype.upper()
    return "%d SHA256:%s %s (%s)" % (bits, digest, comment, label)


def console_host_keys(pub_lines: Iterable[str], hostname: str) -> str:
    """The two blocks cloud-init writes to the console at the end of boot."""
    pubs = [" ".join(p.split()[:2]) for p in pub_lines]
    comment = "root@%s" % hostname
    out = ["#" * 61, "-----BEGIN SSH HOST KEY FINGERPRINTS-----"]
    out += [fingerprint_line(p, comment) for p in pubs]
    out += ["-----END SSH HOST KEY FINGERPRINTS-----", "#" * 61,
            "-----BEGIN SSH HOST KEY KEYS-----"]
    out += ["%s %s" % (p, comment) for p in pubs]
    out += ["-----END SSH HOST KEY KEYS-----"]
    return "\n".join(out) + "\n"


def sshd_config(inst_dir: str, user: str, addresses: Iterable[str],
                key_files: Iterable[str], authorized_keys: str) -> str:
    lines = ["ListenAddress %s" % a for a in addresses]
    lines += ["HostKey %s" % k for k in key_files]
    lines += [
        "PidFile %s/sshd.pid" % inst_dir,
        # sshd reads this file as the user, who cannot enter inst_dir.
        "AuthorizedKeysFile %s" % authorized_keys,
        "AllowUsers %s" % user,
        "UsePAM no",
        "StrictModes no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
        "X11Forwarding no",
        "PrintMotd no",
        "Subsystem sftp internal-sftp",
    ]
    return "\n".join(lines) + "\n"


BOOT_SCRIPT = r"""#!/bin/sh
# Runs inside the instance's network namespace, in a private mount namespace.
# $1 instance dir, $2 login user, $3 boot delay (s), $4 start sshd (1/0),
# $5 bin directory of the Python environment ("" for the stock image),
# $6 hostname
set -e
D=$1 U=$2 DELAY=$3 SSHD=$4 PYBIN=$5
hostname "$6"
mount --bind "$D/home" "/home/$U"
mount --bind "$D/tmp" /tmp
mount --bind "$D/vartmp" /var/tmp
if [ -n "$PYBIN" ]; then
    mount --bind "$PYBIN" /usr/local/bin
else
    mount -t tmpfs -o size=64k,mode=755 tmpfs /usr/local/bin
fi
ip link set lo up
sleep "$DELAY"
cat "$D/console.hostkeys" >> "$D/console.log"
if [ "$SSHD" = 1 ]; then
    echo "Starting OpenBSD Secure Shell server: sshd." >> "$D/console.log"
    # -D: sshd stays in the foreground as the node's PID 1 (a daemonizing
    # sshd would leave PID 1 to exit, which ends the node's PID namespace).
    exec /usr/sbin/sshd -D -f "$D/sshd_config" -E "$D/sshd.log"
fi
echo "sshd: not started (fault knob no_sshd)" >> "$D/console.log"
"""


@dataclasses.dataclass
class NodeSpec:
    uuid: str
    hostname: str
    user: str = DEFAULT_USER
    key_data: Optional[str] = None
    user_data: Optional[str] = None
    vifs: list = dataclasses.field(default_factory=list)
    boot_delay: float = DEFAULT_BOOT_DELAY
    fault: Optional[str] = None
    python_bin: str = ""

    @property
    def netns(self) -> str:
        return "cc-" + self.uuid


BOOT_FIELDS = ("hostname", "user", "boot_delay", "fault", "python_bin")
"""What a power-on needs of the spawn's NodeSpec (kept in the instance's boot.json)."""


def spec_knobs(metadata: dict, image_props: dict) -> dict:
    """Fault and boot knobs: server metadata wins over image properties."""
    def pick(name):
        return metadata.get(name, image_props.get(name))
    fault = pick("cc_fault") or None
    if fault is not None and fault not in FAULTS:
        raise NodeError("unknown cc_fault %r (known: %s)"
                        % (fault, ", ".join(FAULTS)))
    delay = pick("cc_boot_delay")
    slow = pick("cc_slow_boot_seconds")
    try:
        return {
            "fault": fault,
            "fault_key": pick("cc_fault_key"),
            "boot_delay": float(delay) if delay is not None else None,
            "slow_boot": float(slow) if slow is not None else DEFAULT_SLOW_BOOT,
        }
    except ValueError as exc:
        raise NodeError("bad boot knob: %s" % exc) from exc


class NodeHost:
    """Creates and destroys instances under one state directory."""

    def __init__(self, state_dir: str, runner: Runner = run):
        self.state_dir = state_dir
        self.instances_dir = os.path.join(state_dir, "instances")
        self.keys_dir = os.path.join(state_dir, "authorized_keys")
        self.run = runner

    def inst_dir(self, uuid: str) -> str:
        return os.path.join(self.instances_dir, uuid)

    # -- setup ---------------------------------------------------------
    def ensure_user(self, user: str) -> None:
        try:
            self.run(["id", "-u", user])
            return
        except NodeError:
            pass
        self.run(["useradd", "-M", "-d", "/home/" + user, "-s", "/bin/bash",
                  user])
        # A locked account ('!') cannot log in with a key when UsePAM=no.
        self.run(["usermod", "-p", "*", user])

    def write_files(self, spec: NodeSpec) -> None:
        d = self.inst_dir(spec.uuid)
        os.makedirs(self.instances_dir, mode=0o700, exist_ok=True)
        os.makedirs(d, mode=0o700, exist_ok=True)
        cc = parse_user_data(spec.user_data)
        import pwd
        pw = pwd.getpwnam(spec.user)
        for sub, mode in (("home", 0o700), ("tmp", 0o1777), ("vartmp", 0o1777)):
            path = os.path.join(d, sub)
            os.makedirs(path, exist_ok=True)
            os.chmod(path, mode)
            if sub == "home":
                os.chown(path, pw.pw_uid, pw.pw_gid)
        os.makedirs("/home/" + spec.user, exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

        key_files = []
        if cc.host_keys:
            for ktype in KEY_TYPES:
                priv = cc.host_keys.get(ktype + "_private")
                if not priv:
                    continue
                path = os.path.join(d, "ssh_host_%s_key" % ktype)
                _write(path, priv.strip() + "\n", 0o600)
                pub = cc.host_keys.get(ktype + "_public")
                if not pub:
                    pub = self.run(["ssh-keygen", "-y", "-f", path])
                _write(path + ".pub", pub.strip() + "\n", 0o644)
                key_files.append(path)
        else:
            for ktype in ("ed25519", "ecdsa"):
                path = os.path.join(d, "ssh_host_%s_key" % ktype)
                if not os.path.exists(path):
                    self.run(["ssh-keygen", "-q", "-t", ktype, "-N", "",
                              "-C", "root@" + spec.hostname, "-f", path])
                key_files.append(path)
        if not key_files:
            raise NodeError("ssh_keys in user-data holds no private host key")
        pubs = [open(k + ".pub").read().strip() for k in key_files]

        auth = [k for k in [spec.key_data] + cc.authorized_keys if k]
        os.makedirs(self.keys_dir, exist_ok=True)
        os.chmod(self.keys_dir, 0o711)
        auth_file = os.path.join(self.keys_dir, spec.uuid)
        _write(auth_file, "".join(k.strip() + "\n" for k in auth), 0o644)
        _write(os.path.join(d, "sshd_config"),
               sshd_config(d, spec.user, [v.address for v in spec.vifs],
                           key_files, auth_file), 0o600)
        _write(os.path.join(d, "console.hostkeys"),
               console_host_keys(pubs, spec.hostname), 0o600)
        _write(os.path.join(d, "boot.sh"), BOOT_SCRIPT, 0o700)
        _write(os.path.join(d, "console.log"),
               "cc-netns boot: %s (%s)\ncloud-init: user %s\n"
               % (spec.hostname, spec.uuid, spec.user), 0o600)

    def plug(self, spec: NodeSpec) -> None:
        ns = spec.netns
        self.run(["ip", "netns", "add", ns])
        for i, vif in enumerate(spec.vifs):
            with BRIDGES:
                self.ensure_bridge(vif)
                self.run(["ip", "link", "add", vif.host_veth, "type", "veth",
                          "peer", "name", vif.node_veth])
                no_ipv6(self.run, vif.host_veth)
                if vif.mtu:
                    self.run(["ip", "link", "set", vif.host_veth, "mtu", str(vif.mtu)])
                # The agent leaves a compute port's tap to the VIF plugging.
                self.run(["ip", "link", "set", vif.host_veth, "master",
                          vif.bridge, "up"])
            self.run(["ip", "link", "set", vif.node_veth, "netns", ns])
            eth = "eth%d" % i
            nsx = ["ip", "netns", "exec", ns]
            self.run(nsx + ["ip", "link", "set", vif.node_veth, "name", eth])
            no_ipv6(self.run, eth, nsx)
            self.run(nsx + ["ip", "link", "set", eth, "address", vif.mac])
            if vif.mtu:
                self.run(nsx + ["ip", "link", "set", eth, "mtu", str(vif.mtu)])
            self.run(nsx + ["ip", "addr", "add",
                            "%s/%d" % (vif.address, vif.prefixlen),
                            "dev", eth])
            self.run(nsx + ["ip", "link", "set", eth, "up"])
            if i == 0 and vif.gateway:
                self.run(nsx + ["ip", "route", "add", "default", "via",
                                vif.gateway])

    def ensure_bridge(self, vif: Vif) -> None:
        links = self.run(["ip", "-o", "link", "show"])
        if (" %s:" % vif.bridge) not in links:
            self.run(["ip", "link", "add", vif.bridge, "type", "bridge"])
        no_ipv6(self.run, vif.bridge)
        self.run(["ip", "link", "set", vif.bridge, "up"])

    def boot_command(self, spec: NodeSpec) -> list:
        """The node's boot: its boot script in the node's network namespace
        and in new mount, UTS and PID namespaces. In its own PID namespace
        (with its own /proc) the node sees only its own processes, the boot
        script's sshd as PID 1, and can signal no other node's; when that
        PID 1 ends, every process of the node ends with it."""
        d = self.inst_dir(spec.uuid)
        start_sshd = "0" if spec.fault == "no_sshd" else "1"
        return ["setsid", "-f", "ip", "netns", "exec", spec.netns,
                "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
                "--propagation", "private", "--",
                "/bin/sh", os.path.join(d, "boot.sh"), d, spec.user,
                "%g" % spec.boot_delay, start_sshd, spec.python_bin,
                spec.hostname]

    def boot(self, spec: NodeSpec) -> None:
        """Start the boot script detached; it starts sshd after the delay."""
        d = self.inst_dir(spec.uuid)
        cmd = self.boot_command(spec)
        # The detached boot script and sshd must not hold our pipes open.
        with open(os.path.join(d, "boot.log"), "ab") as out:
            rc = subprocess.call(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT)
        if rc != 0:
            raise NodeError("boot of %s failed to start (%d)" % (spec.uuid, rc))

    def create(self, spec: NodeSpec) -> None:
        """Create the whole instance; on failure remove what was made."""
        try:
            self.ensure_user(spec.user)
            self.write_files(spec)
            _write(os.path.join(self.inst_dir(spec.uuid), "boot.json"), json.dumps({
                k: getattr(spec, k) for k in BOOT_FIELDS}), 0o600)
            self.plug(spec)
            self.boot(spec)
        except Exception:
            self.destroy(spec.uuid, spec.vifs)
            raise

    # -- power ---------------------------------------------------------
    def stop(self, uuid: str) -> None:
        """Power off: every process of the node ends (sshd, sessions, what
        they started); its files, addresses and namespace stay."""
        d = self._existing(uuid)
        self._kill_namespace_processes("cc-" + uuid)
        with open(os.path.join(d, "console.log"), "a") as f:
            f.write("cc-netns: power off\n")

    def start(self, uuid: str) -> None:
        """Power on: the node boots again, as at its spawn (sshd after the
        boot delay, with the same host keys)."""
        d = self._existing(uuid)
        self._kill_namespace_processes("cc-" + uuid)  # a second start is a reboot
        with open(os.path.join(d, "boot.json")) as f:
            spec = NodeSpec(uuid=uuid, **json.load(f))
        with open(os.path.join(d, "console.log"), "a") as f:
            f.write("cc-netns boot: %s (%s)\n" % (spec.hostname, uuid))
        self.boot(spec)

    def _existing(self, uuid: str) -> str:
        d = self.inst_dir(uuid)
        if not os.path.isfile(os.path.join(d, "boot.json")):
            raise NodeError("instance %s has no files on this host" % uuid)
        return d

    # -- teardown ------------------------------------------------------
    def destroy(self, uuid: str, vifs: Sequence[Vif] = ()) -> None:
        """Remove processes, links, namespace and files; safe to repeat."""
        ns = "cc-" + uuid
        d = self.inst_dir(uuid)
        self._kill_namespace_processes(ns)
        for vif in vifs:
            self._quiet(["ip", "link", "del", vif.host_veth])
        self._quiet(["ip", "netns", "del", ns])
        shutil.rmtree(d, ignore_errors=True)
        try:
            os.unlink(os.path.join(self.keys_dir, uuid))
        except FileNotFoundError:
            pass
        for vif in vifs:
            self.remove_bridge_if_empty(vif.bridge)

    def _kill_namespace_processes(self, ns: str) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                pids = [int(p) for p in
                        self.run(["ip", "netns", "pids", ns]).split()]
            except NodeError:
                return
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            for _ in range(20):
                try:
                    if not self.run(["ip", "netns", "pids", ns]).split():
                        return
                except NodeError:
                    return
                time.sleep(0.05)

    def remove_bridge_if_empty(self, bridge: str) -> None:
        with BRIDGES:
            try:
                ports = self.run(["ip", "-o", "link", "show", "master", bridge])
            except NodeError:
                return
            if not ports.strip():
                self._quiet(["ip", "link", "del", bridge])

    def _quiet(self, cmd: Sequence[str]) -> None:
        try:
            self.run(cmd)
        except NodeError as exc:
            LOG.debug("ignored during cleanup: %s", exc)

    def first_failure(self, key: str) -> bool:
        """True the first time ``key`` is seen (for ``spawn_error_once``)."""
        d = os.path.join(self.state_dir, "faults")
        os.makedirs(d, mode=0o700, exist_ok=True)
        marker = os.path.join(d, hashlib.sha256(key.encode()).hexdigest())
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        return True

    def archive(self, uuid: str, out_path: str) -> int:
        """Write the node's own files as a gzip tarball; return its size.

        What a node keeps of its own (its "disk"): the login user's home and
        its ``/tmp`` and ``/var/tmp``, named in the archive as the node sees
        them (``home/``, ``tmp/``, ``var/tmp/``). Links are stored as links,
        never followed.
        """
        d = self.inst_dir(uuid)
        if not os.path.isdir(os.path.join(d, "home")):
            raise NodeError("instance %s has no files on this host" % uuid)
        cmd = ["tar", "--create", "--gzip", "--sparse", "--numeric-owner",
               "--warning=no-file-changed", "--warning=no-file-removed",
               "--file", out_path, "--directory", d,
               "--transform", "s,^vartmp,var/tmp,", "home", "tmp", "vartmp"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        # 1: a file changed while it was read (the node keeps running, as
        # a VM does during a live snapshot); the archive is still whole.
        if proc.returncode not in (0, 1):
            raise NodeError("%s failed (%d): %s" % (" ".join(cmd), proc.returncode,
                                                    proc.stderr.strip()))
        return os.path.getsize(out_path)

    def console(self, uuid: str) -> str:
        try:
            with open(os.path.join(self.inst_dir(uuid), "console.log")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def known_uuids(self) -> list:
        try:
            return sorted(os.listdir(self.instances_dir))
        except FileNotFoundError:
            return []


def _write(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
