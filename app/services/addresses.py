"""Guest addresses of the IP blocks: how many are free, taking one for a server whose IP changes,
and the prefix the guest puts on its interface. The preflight counts with them, the evacuation
planner too, and the offline runner allocates with them."""
from __future__ import annotations

import ipaddress

from app.extensions import db
from app.models import IpAddress


def free_addresses(resource) -> dict:
    """Free addresses per IP block of a resource (network, gateway and broadcast excluded)."""
    free = {}
    for block in resource.ip_blocks:
        network = ipaddress.ip_network(block.cidr, strict=False)
        taken = {a.address for a in block.addresses if a.server_id is not None}
        # The lab's guest blocks are /25 halves of a /24 wire: skip the gateway too.
        hosts = [str(h) for h in network.hosts() if str(h) != block.gateway]
        free[block.name] = sum(1 for h in hosts if h not in taken)
    return free


def allocate_address(server, destination) -> IpAddress | None:
    """Take a free address for server from the destination's IP blocks (IP change), or None."""
    for block in destination.ip_blocks:
        network = ipaddress.ip_network(block.cidr, strict=False)
        rows = {a.address: a for a in block.addresses}
        for host in network.hosts():
            address = str(host)
            if address == block.gateway:
                continue
            row = rows.get(address)
            if row is None:
                row = IpAddress(block=block, address=address)
                db.session.add(row)
            if row.server_id is None:
                row.server = server
                return row
    return None


def prefix_of(address_row) -> int:
    """The prefix the guest puts on its interface: the block's, widened until the gateway is on-link.

    >>> class B: cidr, gateway = "10.78.1.128/25", "10.78.1.1"
    >>> class A: block = B
    >>> prefix_of(A)
    24
    """
    network = ipaddress.ip_network(address_row.block.cidr, strict=False)
    gateway = address_row.block.gateway
    if gateway:
        gw = ipaddress.ip_address(gateway)
        while gw not in network and network.prefixlen > 0:
            network = network.supernet()
    return network.prefixlen
