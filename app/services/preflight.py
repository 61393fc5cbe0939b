"""Preflight: gather what the checks need from the real nodes, then run the pure checks.

Nothing is assumed: facts are re-read from both hosts, ports are probed from
the source towards the destination, the guest CPU is compared by the
destination's libvirt, and a throughput probe and a dirty-rate sample feed
the ETA. The checks themselves live in preflight_checks (pure functions).
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import threading
import xml.etree.ElementTree as ET
from dataclasses import asdict

import libvirt
from flask import current_app

from app import status
from app.errors import FerryError
from app.extensions import db
from app.infra import migration as lvm
from app.infra import ssh
from app.infra.commands import storage
from app.models import IpAddress
from app.services import calibration, estimation, inventory, resources
from app.services import preflight_checks as checks

log = logging.getLogger("ferry.preflight")

PROBE_BYTES = 64 * 1024 * 1024


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


def resource_info(resource) -> checks.ResourceInfo:
    """The pure checks' view of a compute resource."""
    return checks.ResourceInfo(
        name=resource.name, status=resource.status, facts=resource.facts or {},
        storage_tags=tuple(resource.storage_tags or ()),
        ip_blocks=tuple(b.name for b in resource.ip_blocks),
        free_addresses=free_addresses(resource))


def server_info(server, cpu_xml: str = "") -> checks.ServerInfo:
    """The pure checks' view of a server."""
    return checks.ServerInfo(
        name=server.name, state=server.state,
        resource=server.compute_resource.name if server.compute_resource else "",
        vcpus=server.vcpus, memory_mib=server.memory_mib, snapshot_count=server.snapshot_count,
        disks=tuple(checks.DiskInfo(d.path, d.format, d.storage_type, d.virtual_size or 0,
                                    d.allocation or 0, d.storage_tag) for d in server.disks),
        ip_addresses=tuple(checks.IpAddress(a.address, a.block.name) for a in server.ip_addresses),
        backups=tuple(checks.BackupInfo(b.kind, b.storage_type) for b in server.backups),
        cpu_xml=cpu_xml)


def options_of(opts: dict) -> checks.MigrationOptions:
    """The checks' MigrationOptions from a group's stored options."""
    return checks.MigrationOptions(live=opts.get("mode") == status.MODE_LIVE,
                                   preserve_ip=opts.get("preserve_ip", True),
                                   convert_to=opts.get("convert_to"),
                                   allow_postcopy=opts.get("allow_postcopy", False))


def _probe(from_conn, to_conn, to_address, port) -> str:
    """Probe one TCP port from one node to another, with a short-lived listener on the target."""
    listener = threading.Thread(target=ssh.run, args=(
        to_conn, storage.port_listener(to_address, port, timeout_s=6)), kwargs={"timeout": 10})
    listener.start()
    probe = None
    for _ in range(10):  # the listener needs a moment to bind
        probe = ssh.run(from_conn, storage.port_probe(to_address, port, timeout_s=3), timeout=10)
        if probe.ok or "refused" not in probe.stderr.lower():
            break
        threading.Event().wait(0.2)
    listener.join(12)
    return storage.probe_result(probe.exited, probe.stderr)


def _probe_ports(src_conn, dst_conn, source, destination) -> dict:
    """The data paths a migration uses, probed the way they are used.

    libvirt's migration ports are reached from the source on the destination;
    the NBD export (TCP 8081) is on the source and read by the destination.
    """
    return {
        checks.MIGRATION_PORTS.start: _probe(src_conn, dst_conn, destination.host,
                                             checks.MIGRATION_PORTS.start),
        checks.NBD_PORT: _probe(dst_conn, src_conn, source.host, checks.NBD_PORT),
    }


def _throughput(src_conn, dst_conn, destination) -> float | None:
    """Bytes per second from source to destination, measured with a short stream of zeros."""
    receiver = threading.Thread(target=ssh.run, args=(
        dst_conn, storage.throughput_receiver(destination.host, timeout_s=30)), kwargs={"timeout": 40})
    receiver.start()
    result = ssh.run(src_conn, storage.throughput_sender(destination.host, PROBE_BYTES), timeout=40)
    receiver.join(45)
    return storage.parse_dd_rate(result.stderr) if result.ok else None


def _compare_cpu(dst_host, dom_xml: str) -> tuple:
    """The destination's compareHypervisorCPU verdict on the guest's CPU definition."""
    root = ET.fromstring(dom_xml)
    cpu = root.find("cpu")
    if cpu is None:
        return checks.CPU_COMPARE_SUPERSET, None  # no CPU model asked: the hypervisor default
    os_type = root.find("os/type")
    try:
        code = dst_host.conn.compareHypervisorCPU(
            None, os_type.get("arch") if os_type is not None else None,
            os_type.get("machine") if os_type is not None else None,
            root.get("type"), ET.tostring(cpu, encoding="unicode"), 0)
        return code, None
    except libvirt.libvirtError as exc:
        return checks.CPU_COMPARE_ERROR, str(exc)


def run(servers, destination, opts: dict) -> dict:
    """Run the whole preflight for servers going to destination; returns a JSON-able report.

    The report holds every check's result, the summary, the measured
    throughput and dirty rates, and a pre-start ETA per server.
    """
    options = options_of(opts)
    sources = {s.compute_resource.name: s.compute_resource for s in servers if s.compute_resource}
    involved = list(sources.values()) + [destination]
    probes, cpu_results, throughput, dirty = {}, {}, {}, {}
    unreachable = []
    # One SSH and one libvirt connection per node for the whole preflight: opening
    # them is most of its cost (about 0.1 s each here, more across a WAN).
    with contextlib.ExitStack() as stack:
        conns = {}
        for resource in {r.id: r for r in involved}.values():
            try:
                conn = stack.enter_context(resources.open_ssh(resource))
                host = stack.enter_context(resources.open_libvirt(resource))
                resource.facts = inventory.gather_facts(resource, conn, host)
                conns[resource.id] = (conn, host)
            except FerryError as exc:
                unreachable.append(checks.CheckResult("reachable", checks.FAIL,
                                                      f"{resource.name} cannot be reached: {exc}"))
        db.session.commit()
        if not unreachable:
            try:
                dst_conn, dst_host = conns[destination.id]
                for source in sources.values():
                    if source.id == destination.id:
                        continue
                    src_conn, src_host = conns[source.id]
                    probes[source.name] = _probe_ports(src_conn, dst_conn, source, destination)
                    throughput[source.name] = _throughput(src_conn, dst_conn, destination)
                    for server in servers:
                        if server.compute_resource_id != source.id:
                            continue
                        try:
                            dom = src_host.conn.lookupByUUIDString(server.uuid)
                        except libvirt.libvirtError as exc:
                            cpu_results[server.name] = (checks.CPU_COMPARE_ERROR, str(exc))
                            continue
                        cpu_results[server.name] = _compare_cpu(dst_host, dom.XMLDesc(0))
                        if options.live and dom.isActive() and current_app.config["SAMPLE_DIRTY_RATE"]:
                            dirty[server.name] = lvm.sample_dirty_rate(dom, 1)
            except FerryError as exc:
                unreachable.append(checks.CheckResult("reachable", checks.FAIL, str(exc)))

    results = unreachable + checks.run_checks(
        [server_info(s) for s in servers], {n: resource_info(r) for n, r in sources.items()},
        resource_info(destination), options, probes, cpu_results)
    summary = checks.summarize(results)
    etas = {}
    factor = calibration.start_factor() if options.live else None
    for server in servers:
        rate = throughput.get(server.compute_resource.name) if server.compute_resource else None
        if not rate:
            continue
        disk_bytes = sum(d.allocation or 0 for d in server.disks)
        est = estimation.estimate_migration(
            memory_bytes=server.memory_mib * 1024 * 1024,
            disk_bytes=disk_bytes if options.live else 0,
            throughput_bps=rate, dirty_rate_bps=float(dirty.get(server.name) or 0))
        if not options.live:  # offline: the disk copy is all there is
            seconds = 1.0 + disk_bytes / rate
            est = estimation.Estimate(seconds, seconds * 0.8, seconds * 1.3, 0, True, 0,
                                      "offline copy of the allocated disk data")
        # A guest that will not converge has an infinite estimate: JSON (and PostgreSQL)
        # cannot hold Infinity, so it is stored as null next to converges=False.
        etas[server.name] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                             for k, v in calibrated(asdict(est), factor).items()}
    return {
        "results": [asdict(r) for r in results],
        "summary": asdict(summary),
        "throughput_bps": throughput,
        "dirty_rate_bps": dirty,
        "eta": etas,
    }


def calibrated(eta: dict, factor: float | None) -> dict:
    """A pre-start estimate corrected by what this fleet's recent migrations taught (see
    services.calibration); the model's own figure stays in `model_s`.

    >>> calibrated({"seconds": 4.0, "low": 3.0, "high": 6.0}, 1.5)["seconds"]
    6.0
    >>> calibrated({"seconds": 4.0, "low": 3.0, "high": 6.0}, None)["calibration"] is None
    True
    """
    eta = dict(eta, model_s=eta["seconds"], calibration=factor)
    if factor and all(math.isfinite(eta[k]) for k in ("seconds", "low", "high")):
        for key in ("seconds", "low", "high"):
            eta[key] = eta[key] * factor
    return eta


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
