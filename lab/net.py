"""The lab's host bridges and the network fault tools (link down/up, rate, block)."""
import os

from .common import LabError, run


def ensure_bridge(name, address):
    """Create (or keep) a host bridge that carries address (CIDR)."""
    if not os.path.exists(f"/sys/class/net/{name}"):
        run(["ip", "link", "add", name, "type", "bridge"])
    addrs = run(["ip", "-o", "addr", "show", "dev", name]).stdout
    if f" {address} " not in addrs:
        run(["ip", "addr", "add", address, "dev", name])
    run(["ip", "link", "set", name, "up"])


def delete_link(name):
    """Remove a host interface if it exists."""
    if os.path.exists(f"/sys/class/net/{name}"):
        run(["ip", "link", "del", name], check=False)


def link(node, state):
    """Set the node's management/migration link down or up (on both ends)."""
    if state not in ("up", "down"):
        raise LabError("link state must be up or down")
    run(["ip", "link", "set", node.mgmt_veth, state])
    run(node.enter() + ["ip", "link", "set", "eth0", state])
    if state == "up":  # forget the failed neighbour entries so traffic resumes at once
        run(node.enter() + ["ip", "neigh", "flush", "dev", "eth0"], check=False)


def rate(node, mbit):
    """Shape the node's link to mbit Mbit/s in both directions ('off' removes it)."""
    for dev, prefix in ((node.mgmt_veth, []), ("eth0", node.enter())):
        run(prefix + ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
        if mbit != "off":
            if not str(mbit).replace(".", "", 1).isdigit() or float(mbit) <= 0:
                raise LabError("rate must be a positive number of Mbit/s or 'off'")
            burst = max(32, int(float(mbit) * 1000 / 8 / 100))  # ~10 ms worth, in KiB
            run(prefix + ["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                          f"{mbit}mbit", "burst", f"{burst}kb", "latency", "100ms"])


def _rule(port):
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise LabError(f"{port!r} is not a TCP port")
    return ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "REJECT",
            "--reject-with", "tcp-reset"]


def block(node, port):
    """Refuse TCP connections to port inside the node (fails fast: RST, not a drop)."""
    if run(node.enter() + ["iptables", "-C"] + _rule(port), check=False).returncode:
        run(node.enter() + ["iptables", "-I"] + _rule(port))


def unblock(node, port):
    """Remove a block on port inside the node."""
    while run(node.enter() + ["iptables", "-C"] + _rule(port), check=False).returncode == 0:
        run(node.enter() + ["iptables", "-D"] + _rule(port))
