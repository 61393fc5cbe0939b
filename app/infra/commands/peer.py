"""The source node's SSH to the destination in a peer-to-peer live migration, pinned by Ferry.

In a p2p migration the source's libvirtd opens `qemu+ssh://` to the destination
itself, with OpenSSH running as root on the source: left alone it trusts whatever
root's known_hosts holds there (or asks nobody at all). Ferry instead installs on
the source, over its own pinned SSH connection, a known_hosts file holding only
the key Ferry pinned for the destination, and a small wrapper that runs ssh
against that file alone with strict checking (no global file, no
KnownHostsCommand, no updates); the migration URI names the wrapper
(`command=`). libvirt's own options follow ours, and ssh keeps the first value
of an option, so nothing in the URI or in root's ssh config loosens the check.

The files are named after what they pin (the destination's address and key):
concurrent moves write the same files, and a key pinned anew gets new ones.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import shlex
from urllib.parse import quote

PEER_DIR = "/etc/ferry/p2p"
HOST_KEY_ALIAS = "ferry-pinned-peer"  # each file pins one destination, under this name
_KEY_TYPE = re.compile(r"^[a-z0-9][a-z0-9@.-]{0,63}$")


def pinned_line(host_key: str) -> str:
    """The known_hosts line for a pinned "type base64[ comment]" key (comment dropped).

    >>> pinned_line("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== root@node2")
    'ferry-pinned-peer ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA=='
    >>> pinned_line("ssh-ed25519 AAAA\\n* ssh-rsa AAAA")
    Traceback (most recent call last):
    ...
    ValueError: not an SSH host key: 'ssh-ed25519 AAAA\\n* ssh-rsa AAAA'
    """
    parts = (host_key or "").split(" ", 2)
    if len(parts) < 2 or any(c in host_key for c in "\r\n\t\0") \
            or not _KEY_TYPE.match(parts[0]):
        raise ValueError(f"not an SSH host key: {str(host_key)[:80]!r}")
    try:
        if not base64.b64decode(parts[1], validate=True):
            raise ValueError("empty")
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not an SSH host key: {str(host_key)[:80]!r}") from exc
    return f"{HOST_KEY_ALIAS} {parts[0]} {parts[1]}"


def pin_name(host: str, port: int, host_key: str | None) -> str:
    """The files' name for a destination's address and pinned key (hex, 16 characters).

    >>> pin_name("10.0.0.12", 22, "ssh-ed25519 AAAA") == pin_name("10.0.0.12", 22, "ssh-ed25519 AAAA")
    True
    >>> pin_name("10.0.0.12", 22, "ssh-ed25519 AAAA") != pin_name("10.0.0.12", 22, "ssh-ed25519 BBBB")
    True
    """
    return hashlib.sha256(f"{host} {port} {host_key}".encode()).hexdigest()[:16]


def known_hosts_path(name: str) -> str:
    return f"{PEER_DIR}/{name}.known_hosts"


def wrapper_path(name: str) -> str:
    return f"{PEER_DIR}/{name}.ssh"


def wrapper(name: str) -> str:
    """The wrapper libvirt runs instead of ssh: ssh checking the pinned key only."""
    options = ["-o", f"UserKnownHostsFile={known_hosts_path(name)}",
               "-o", "GlobalKnownHostsFile=/dev/null", "-o", "KnownHostsCommand=none",
               "-o", f"HostKeyAlias={HOST_KEY_ALIAS}", "-o", "StrictHostKeyChecking=yes",
               "-o", "UpdateHostKeys=no", "-o", "VerifyHostKeyDNS=no", "-o", "CheckHostIP=no"]
    return ("#!/bin/sh\n"
            "# Ferry: libvirt's peer-to-peer SSH to a destination, against the host key Ferry\n"
            "# pinned for it only (written by Ferry; rewritten before every live move).\n"
            f"exec ssh {shlex.join(options)} \"$@\"\n")


def install(name: str, host_key: str) -> list[str]:
    """Write the pinned known_hosts file (from an argument) and the wrapper (stdin: `wrapper`),
    each replaced atomically through a temporary file of this shell's own.

    >>> argv = install("0123456789abcdef", "ssh-ed25519 AAAA")
    >>> argv[3:]
    ['ferry-p2p', '/etc/ferry/p2p', '0123456789abcdef', 'ferry-pinned-peer ssh-ed25519 AAAA']
    >>> install("../x", "ssh-ed25519 AAAA")
    Traceback (most recent call last):
    ...
    ValueError: not a pin name: '../x'
    """
    if not re.fullmatch(r"[0-9a-f]{16}", name or ""):
        raise ValueError(f"not a pin name: {name!r}")
    return ["sh", "-c",
            'umask 077 && mkdir -p -- "$1" '
            '&& printf "%s\\n" "$3" > "$1/.$2.known_hosts.$$" '
            '&& mv -f -- "$1/.$2.known_hosts.$$" "$1/$2.known_hosts" '
            '&& cat > "$1/.$2.ssh.$$" && chmod 700 -- "$1/.$2.ssh.$$" '
            '&& mv -f -- "$1/.$2.ssh.$$" "$1/$2.ssh"',
            "ferry-p2p", PEER_DIR, name, pinned_line(host_key)]


def uri(user: str, host: str, port: int, name: str) -> str:
    """The destination's libvirt URI as the source's libvirtd opens it, through the wrapper.

    >>> uri("root", "10.0.0.12", 22, "0123456789abcdef")
    'qemu+ssh://root@10.0.0.12/system?command=/etc/ferry/p2p/0123456789abcdef.ssh'
    >>> uri("ops", "node2", 2222, "0123456789abcdef").split("?")[0]
    'qemu+ssh://ops@node2:2222/system'
    """
    at_port = f":{port}" if port != 22 else ""
    return (f"qemu+ssh://{quote(user, safe='')}@{host}{at_port}/system"
            f"?command={quote(wrapper_path(name), safe='/')}")
