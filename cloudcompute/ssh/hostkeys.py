"""Host keys known before first contact.

Provisioning generates an ed25519 host key per node and injects it through
cloud-init ``ssh_keys``; where a cloud ignores user-data, the keys a node
printed to its console (cloud-init's ``SSH HOST KEY KEYS`` block) are used.
Either way the first SSH connection is verified; nothing is trusted on
first use.
"""
from __future__ import annotations

import base64
import hashlib
import re
from typing import List, Optional, Sequence, Tuple

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
KEYS_END = "-----END SSH HOST KEY KEYS-----"
_KEY_LINE = re.compile(r"(ssh-ed25519|ecdsa-sha2-nistp\d+|ssh-rsa)\s+([A-Za-z0-9+/=]+)")


def generate_ed25519() -> Tuple[str, str]:
    """Return (private key in OpenSSH PEM, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def fingerprint(public_line: str) -> str:
    """``SHA256:...`` as ssh-keygen -l prints it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def user_data_with_host_key(user_data: Optional[str], private: Optional[str],
                            public: Optional[str],
                            authorized_keys: Sequence[str] = ()) -> Optional[str]:
    """Merge ``ssh_keys`` (the host key; none if ``private`` is None, as for
    servers sharing one user-data) and ``authorized_keys`` into cloud-config
    user-data; the caller's own ``ssh_authorized_keys`` are kept, ours follow.

    Returns None when the caller's user-data is not cloud-config (a script
    or a multipart archive): then the keys cannot be injected and the console
    log is used instead.
    """
    if user_data and not user_data.lstrip().startswith("#cloud-config"):
        return None
    data = yaml.safe_load(user_data) if user_data else {}
    data = data or {}
    if not isinstance(data, dict):
        return None
    if private is not None:
        data["ssh_keys"] = dict(data.get("ssh_keys") or {},
                                ed25519_private=private, ed25519_public=public)
        data.setdefault("ssh_deletekeys", True)
    if authorized_keys:
        theirs = data.get("ssh_authorized_keys") or []
        theirs = [theirs] if isinstance(theirs, str) else list(theirs)
        data["ssh_authorized_keys"] = theirs + [k for k in authorized_keys if k not in theirs]
    return "#cloud-config\n" + yaml.safe_dump(data, default_flow_style=False)


def keys_from_console(console: str) -> List[str]:
    """The public key lines of the last ``SSH HOST KEY KEYS`` block, if any."""
    start = console.rfind(KEYS_BEGIN)
    if start < 0:
        return []
    end = console.find(KEYS_END, start)
    if end < 0:
        return []
    block = console[start + len(KEYS_BEGIN):end]
    return ["%s %s" % m.groups() for m in _KEY_LINE.finditer(block)]

