"""Which compute resource an alert names: its host label as a bare name or address, matched
against the resources' names first, then their addresses."""
import ipaddress
from urllib.parse import urlsplit


def normalize_host(value):
    """Strip scheme, port and IPv6 brackets from a host label ("10.0.0.5:9100" → "10.0.0.5"); None if empty."""
    if not isinstance(value, str):
        return None
    host = value.strip()
    if "://" in host:
        host = url_host(host) or ""
    elif host.startswith("["):
        # "[fd00::1]:9100" or "[fd00::1]"
        end = host.find("]")
        host = host[1:end] if end > 0 else ""
    elif host.count(":") == 1:
        # One colon is host:port; more is a bare IPv6 address.
        host = host.split(":", 1)[0]
    host = host.strip().rstrip(".")
    return host or None


def match_host(alert_host, resources):
    """Return the (id, name, address) resource that `alert_host` names, or None."""
    host = normalize_host(alert_host)
    if host is None:
        return None
    resources = list(resources)
    # Exact name first, then a case-insensitive name, then the address: a
    # name is what a person typed into both tools, an address can be shared
    # by a NAT'd lab.
    for res in resources:
        if _res_name(res) == host:
            return res
    folded = host.casefold()
    for res in resources:
        name = _res_name(res)
        if name is not None and name.casefold() == folded:
            return res
    want = _address_key(host)
    for res in resources:
        addr = normalize_host(res[2]) if len(res) > 2 else None
        if addr is not None and _address_key(addr) == want:
            return res
    return None


def url_host(url):
    if not url:
        return None
    try:
        return urlsplit(url.strip()).hostname
    except ValueError:  # e.g. "http://[broken"
        return None


def _res_name(res):
    name = res[1] if len(res) > 1 else None
    return name if isinstance(name, str) else None


def _address_key(host):
    # "FD00:0::1" and "fd00::1" are the same address.
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.casefold()
