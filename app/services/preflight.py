"""Preflight: gather what the checks need from the real nodes, then run the pure checks.

Nothing is assumed: facts are re-read from both hosts (in parallel, over connections the
process keeps open), ports are probed from the source towards the destination, the guest CPU
is compared by the destination's libvirt, and the throughput of recent moves between the two
nodes (or a probe, when there are none) and a dirty-rate sample feed the ETA. Checks that need
no node run first, from the database, and refuse without touching a node. The checks
themselves live in preflight_checks (pure functions).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import timedelta
from statistics import median

from flask import current_app

from app import status
from app.blobs import GroupOptions, TaskResult
from app.errors import FerryError
from app.extensions import db
from app.infra import ssh
from app.infra.commands import node as node_commands, storage
from app.models import ComputeResource, MigrationTask, PreflightReport, Server, utcnow
from app.services import addresses, calibration, estimation, inventory, limits, resources
from app.services import preflight_checks as checks
# The offline runner (engine code) still allocates through these names.

log = logging.getLogger("ferry.preflight")

PROBE_BYTES = 64 * 1024 * 1024
PROBE_RETRY_S = 0.01  # between asks of a port probe refused while its listener starts
PROBE_WAIT_S = 5.0  # how long a probe refused while its listener runs is asked again
LISTEN_S, LISTEN_TRIES = 8, 2  # a probe's listener: its life (> PROBE_WAIT_S), its starts


def resource_info(resource) -> checks.ResourceInfo:
    """The pure checks' view of a compute resource."""
    return checks.ResourceInfo(
        name=resource.name, status=resource.status, facts=resource.facts or {},
        storage_tags=tuple(resource.storage_tags or ()),
        ip_blocks=tuple(b.name for b in resource.ip_blocks),
        free_addresses=addresses.free_addresses(resource))


def server_info(server, cpu_xml: str = "") -> checks.ServerInfo:
    """The pure checks' view of a server; its backups are what its node's facts show."""
    resource = server.compute_resource
    disks = tuple(checks.DiskInfo(d.path, d.format, d.storage_type, d.virtual_size or 0,
                                  d.allocation or 0, d.storage_tag) for d in server.disks)
    backups = ()
    if resource is not None:
        backups = checks.node_backups(server.name, server.uuid, disks, resource.facts or {},
                                      backup_owners(resource))
    return checks.ServerInfo(
        name=server.name, state=server.state, resource=resource.name if resource else "",
        vcpus=server.vcpus, memory_mib=server.memory_mib, snapshot_count=server.snapshot_count,
        disks=disks,
        ip_addresses=tuple(checks.IpAddress(a.address, a.block.name) for a in server.ip_addresses),
        backups=backups, cpu_xml=cpu_xml)


def backup_owners(resource) -> list[str]:
    """Names of the servers a resource holds, that its backup files may be named after (read
    only when its backup directory has files)."""
    if not ((resource.facts or {}).get("backup_dir") or {}).get("files"):
        return []
    return list(db.session.scalars(db.select(Server.name).where(
        Server.compute_resource_id == resource.id, Server.state != status.SERVER_MISSING)))


def options_of(opts) -> checks.MigrationOptions:
    """The checks' MigrationOptions from a group's options (GroupOptions or their stored dict)."""
    opts = GroupOptions.of(opts)
    return checks.MigrationOptions(live=opts.live, preserve_ip=opts.preserve_ip,
                                   convert_to=opts.convert_to, allow_postcopy=opts.allow_postcopy)


def _probe(from_conn, to_conn, to_address, port) -> str:
    """Probe one TCP port from one node to another, with a short-lived listener on the target.

    A probe refused while the listener is still starting is asked again (every ask is an exec
    on the node, ~50 ms; waiting 0.2 s between asks was a quarter of a preflight) until the
    listener has been up for PROBE_WAIT_S: refused for that long means refused (a firewall
    rejects it). A listener that ended without being reached (its exec failed, or it could not
    bind) is started once more, and its reason is given with the probe's. The deadline is time,
    not a count of asks: on a loaded node or inside a slow VM an exec can take far longer than
    usual, and a count ran out before the listener had started (a preflight failed, refused,
    on a lab whose ports were open)."""
    probe, listener, failures = None, None, []
    for _ in range(LISTEN_TRIES):
        listener = _Listener(to_conn, to_address, port)
        deadline = time.monotonic() + PROBE_WAIT_S
        while True:
            probe = ssh.run(from_conn, storage.port_probe(to_address, port, timeout_s=3),
                            timeout=10)
            if probe.ok or "refused" not in probe.stderr.lower():
                break
            if listener.ended() or time.monotonic() >= deadline:
                break
            threading.Event().wait(PROBE_RETRY_S)
        failure = listener.join()
        if probe.ok or failure is None:
            break
        failures.append(failure)
    result = storage.probe_result(probe.exited, probe.stderr)
    if result != "ok" and failures:
        log.warning("port %s on %s: the probe's listener did not listen: %s", port,
                    to_address, "; ".join(failures))
        result = f"{result}; the listener on {to_address} did not listen: {failures[-1]}"
    return result


class _Listener:
    """A port listener run on a node in a thread of its own (ssh.run blocks until it ends)."""

    def __init__(self, conn, address, port):
        self.outcome = None
        self._thread = threading.Thread(target=self._listen, args=(conn, address, port),
                                        name=f"listen-{port}", daemon=True)
        self._thread.start()

    def _listen(self, conn, address, port):
        try:
            self.outcome = ssh.run(conn, storage.port_listener(address, port, timeout_s=LISTEN_S),
                                   timeout=LISTEN_S + 4)
        except Exception as exc:  # noqa: BLE001 - reported by join(), beside the probe's text
            self.outcome = exc

    def ended(self) -> bool:
        """True once the listener has stopped (reached, timed out or failed)."""
        return not self._thread.is_alive()

    def join(self) -> str | None:
        """Wait for the listener; None when it listened (reached, or left to time out), else
        why it did not listen."""
        self._thread.join(LISTEN_S + 6)
        outcome = self.outcome
        if outcome is None:
            return None if self._thread.is_alive() else "it ended without a word"
        if isinstance(outcome, Exception):
            return str(outcome)[:200]
        if outcome.ok or outcome.exited == 124:  # 124: timeout(1) ended it, listening
            return None
        return storage.probe_result(outcome.exited, outcome.stderr)


def _probe_ports(src_conn, dst_conn, source, destination, export_port: int) -> dict:
    """The data paths a migration uses, probed the way they are used.

    libvirt's migration ports are reached from the source on the destination;
    the NBD export is on the source (on `export_port`, the one the next offline
    copy from it would claim) and read by the destination.

    Both directions are probed at once, so each node runs a listener and a probe together:
    two sessions on the one SSH connection this preflight holds (paramiko carries any number
    of channels, and every command is a session and a runner of its own). One after the
    other they took 170 ms of a preflight on the lab.
    """
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe") as pool:
        towards_destination = pool.submit(_probe, src_conn, dst_conn, destination.host,
                                          checks.MIGRATION_PORTS.start)
        towards_source = pool.submit(_probe, dst_conn, src_conn, source.host, export_port)
    return {checks.MIGRATION_PORTS.start: towards_destination.result(),
            export_port: towards_source.result()}


def _throughput(src_conn, dst_conn, destination) -> float | None:
    """Bytes per second from source to destination, measured with a short stream of zeros."""
    receiver = threading.Thread(target=ssh.run, args=(
        dst_conn, storage.throughput_receiver(destination.host, timeout_s=30)), kwargs={"timeout": 40})
    receiver.start()
    result = ssh.run(src_conn, storage.throughput_sender(destination.host, PROBE_BYTES), timeout=40)
    receiver.join(45)
    return storage.parse_dd_rate(result.stderr) if result.ok else None


def run(servers, destination, opts: dict) -> dict:
    """Run the preflight for servers going to destination; returns a JSON-able report.

    The report holds every check's result, the summary, the measured throughput and dirty
    rates, and a pre-start ETA per server. What the nodes told a preflight of the same servers,
    destination and options is reused when it is younger than PREFLIGHT_REUSE_S and no node
    involved has changed since (see `reusable`): the checks then run again from the database,
    and `reused` in the report says how old the node measurements are. Otherwise the nodes
    are asked afresh. Every report is stored, so the dialog's Check or the API's dry run is
    what a Start right after finds.
    """
    options = options_of(opts)
    sources = {s.compute_resource.name: s.compute_resource for s in servers if s.compute_resource}
    involved = {r.id: r for r in list(sources.values()) + [destination]}
    key = report_key(servers, destination, options)
    stored = reusable(key, involved.values())
    if stored is not None:
        age = (utcnow() - stored.created_at).total_seconds()
        return judge(servers, sources, destination, options, stored.report["measured"],
                     reused={"report_id": stored.id, "age_s": round(age, 3)})
    database = checks.run_database_checks([server_info(s) for s in servers],
                                          resource_info(destination), options)
    if checks.summarize(database).status == checks.FAIL:  # refused without asking any node
        return report_of(database, {}, {}, {}, None)
    measured = measure(servers, sources, destination, options)
    report = judge(servers, sources, destination, options, measured)
    if not measured["unreachable"]:
        store(key, involved.values(), report)
    return report


def measure(servers, sources, destination, options) -> dict:
    """Ask the nodes: facts of every node involved (gathered in parallel, over connections the
    process keeps, see resources.borrow), then from each source to the destination the data
    ports, the guests' CPUs on the destination, and the throughput (from recent moves between
    the two nodes, probed only when there are none). JSON-able, so it can be stored."""
    measured = {"unreachable": [], "probes": {}, "cpu": {}, "throughput_bps": {},
                "throughput_from": {}, "dirty_rate_bps": {}, "dirty_rate_from": {},
                "dirty_set_bytes": {}, "touched_bytes": {}}
    nodes = {r.id: resources.Node.of(r) for r in list(sources.values()) + [destination]}
    lent, broken = {}, set()
    app = current_app._get_current_object()
    guests = running_guests(servers) if options.live else {}
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        reached = {rid: pool.submit(_reach, app, node, guests.get(rid, {}))
                   for rid, node in nodes.items()}
    surprises = []
    for rid, future in reached.items():
        try:
            lent[rid], facts, touched = future.result()
            measured["touched_bytes"].update(touched)
        except FerryError as exc:
            measured["unreachable"].append(f"{nodes[rid].name} cannot be reached: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - raised below, once the others are given back
            surprises.append(exc)
            continue
        db.session.get(ComputeResource, rid).facts = facts
    if surprises:
        for rid, pair in lent.items():
            resources.give_back(nodes[rid], pair)
        raise surprises[0]
    db.session.commit()
    try:
        if not measured["unreachable"]:
            _between(servers, sources, destination, options, lent, measured)
    except FerryError as exc:
        measured["unreachable"].append(str(exc))
        broken = set(lent)
    except BaseException:
        broken = set(lent)
        raise
    finally:
        for rid, pair in lent.items():
            resources.give_back(nodes[rid], pair, broken=rid in broken)
    if options.live:
        learn_dirty_rates(servers, measured)
    return measured


# How old a move's dirty rate may be to stand in for a sample: a server's workload changes
# over weeks more than over days.
LEARNED_DIRTY_MAX_AGE_S = 14 * 24 * 3600


def learn_dirty_rates(servers, measured: dict) -> None:
    """Where no sample says how fast a server dirties its memory (FERRY_SAMPLE_DIRTY_RATE is off,
    or the sample failed), the rate libvirt saw in its latest live move stands in, for the ETA:
    a busy server's estimate counted it as idle (bench link_eta: -28 % and -37 % at the start
    for guests dirtying 8 and 12 MiB/s). `dirty_rate_from` says which it is. With it comes
    the most memory that move found dirty after a pass (`dirty_set_bytes`): the guest's
    writes fall on the same pages, so no later pass resends more (the rate alone made a
    guest rewriting 64 MiB at 12 MiB/s take 25 s where it took 18)."""
    unsampled = [s for s in servers if not measured["dirty_rate_bps"].get(s.name)]
    learned = learned_dirty_rates([s.id for s in unsampled], LEARNED_DIRTY_MAX_AGE_S)
    for server in servers:
        if server not in unsampled:
            measured["dirty_rate_from"][server.name] = "sample"
        elif server.id in learned:
            rate, dirty_set = learned[server.id]
            measured["dirty_rate_bps"][server.name] = rate
            measured["dirty_rate_from"][server.name] = "last move"
            if dirty_set:
                measured["dirty_set_bytes"][server.name] = dirty_set


def learned_dirty_rates(server_ids, max_age_s: int) -> dict:
    """{server id: (dirty rate in bytes/s, most bytes found dirty after a pass or None)} that
    libvirt saw in its latest finished live move that saw a rate, within max_age_s; in one
    query for an evacuation's hundreds of servers."""
    if not server_ids:
        return {}
    rows = db.session.execute(db.select(MigrationTask.server_id, MigrationTask.result).where(
        MigrationTask.server_id.in_(server_ids), MigrationTask.status == status.MIGRATION_FINISHED,
        MigrationTask.mode == status.MODE_LIVE,
        MigrationTask.finished_at >= utcnow() - timedelta(seconds=max_age_s),
    ).order_by(MigrationTask.finished_at.desc())).all()
    learned = {}
    for server_id, result in rows:
        result = TaskResult.of(result)
        if result.dirty_rate_bps and server_id not in learned:
            learned[server_id] = (result.dirty_rate_bps, result.dirty_set_bytes)
    return learned


# Seconds a node's exec may spend reading its guests' resident memory, shared among them: an
# evacuation's preflight reads every running guest of the node, one after the other, and a
# large guest in small pages takes about 11 ms a touched GiB (node.guest_resident). A guest
# whose share runs out is estimated as if it had touched all of its memory.
RESIDENT_BUDGET_S = 10.0
RESIDENT_MIN_S = 0.1


def running_guests(servers) -> dict:
    """{compute resource id: {server name: the command reading its resident memory}} of the
    running servers (a name libvirt could not have is left out: node.guest_resident), each
    node's guests sharing RESIDENT_BUDGET_S."""
    running = {}
    for server in servers:
        if (server.state == status.SERVER_RUNNING and (server.memory_mib or 0) > 0
                and node_commands.domain_name_ok(server.name)):
            running.setdefault(server.compute_resource_id, []).append(server)
    guests = {}
    for resource_id, on_node in running.items():
        seconds = max(RESIDENT_MIN_S, math.floor(RESIDENT_BUDGET_S * 10 / len(on_node)) / 10)
        guests[resource_id] = {server.name: node_commands.guest_resident(
            server.name, server.memory_mib * 1024, seconds) for server in on_node}
    return guests


def _reach(app, node, guests: dict):
    """Borrow connections to a node and gather its facts, and in the same exec how much of
    each of `guests` (running there) is resident: what it ever touched, the most its first
    pass sends in full. In a thread of its own: the app's context only for its settings, no
    session; the connections are this thread's alone until given back. Returns the pair, the
    facts and {server name: resident bytes} (a guest whose answer does not tell is left out:
    the estimate then assumes all of its memory)."""
    pair = resources.borrow(node)
    try:
        with app.app_context():  # the facts' TLS verdict reads the CA from the instance folder
            conn = inventory.read_ahead(pair.ssh, inventory.fact_commands(node, lvm_too=True)
                                        + list(guests.values()))
            facts = inventory.facts_from(node, conn, pair.libvirt)
        touched = {}
        for name, argv in guests.items():
            done = ssh.run(conn, argv)
            resident = node_commands.parse_resident(done.stdout, int(argv[-1])) \
                if done.ok else None
            if resident is not None:
                touched[name] = resident
        return pair, facts, touched
    except BaseException:
        resources.give_back(node, pair, broken=True)
        raise


def _between(servers, sources, destination, options, lent, measured) -> None:
    """The source-to-destination measurements of every source, into `measured`."""
    dst = lent[destination.id]
    sample = options.live and current_app.config["SAMPLE_DIRTY_RATE"]
    max_age = current_app.config["THROUGHPUT_MAX_AGE"]
    for source in sources.values():
        if source.id == destination.id:
            continue
        src = lent[source.id]
        port, holder = limits.claim_probe_port(source.id)
        try:
            measured["probes"][source.name] = _probe_ports(src.ssh, dst.ssh, source,
                                                           destination, port)
        finally:
            limits.release_probe_port(holder)
        recent = recent_throughput(source.id, destination.id, max_age)
        if recent is None:
            recent, origin = _throughput(src.ssh, dst.ssh, destination), "probe"
        else:
            origin = "moves"
        measured["throughput_bps"][source.name] = recent
        measured["throughput_from"][source.name] = origin
        for server in servers:
            if server.compute_resource_id != source.id:
                continue
            verdict = lv_judge(src.libvirt, dst.libvirt, server.uuid, sample)
            measured["cpu"][server.name] = [verdict.cpu_code, verdict.cpu_error]
            if verdict.dirty_rate_bps is not None:
                measured["dirty_rate_bps"][server.name] = verdict.dirty_rate_bps


def lv_judge(src_host, dst_host, uuid, sample):
    """app.infra.libvirt.judge_guest; libvirt is imported when a preflight reaches a node, not
    when the CLI or a page imports this module."""
    from app.infra import libvirt as lv
    return lv.judge_guest(src_host, dst_host, uuid, sample)


def recent_throughput(source_id: int, destination_id: int, max_age_s: int) -> float | None:
    """Bytes per second of the recent finished live moves from source to destination (the
    median of the last three, each its bytes over libvirt's elapsed time), or None when none
    finished within max_age_s (0: always None, so the link is probed)."""
    if max_age_s <= 0:
        return None
    rows = db.session.scalars(db.select(MigrationTask).where(
        MigrationTask.source_id == source_id, MigrationTask.destination_id == destination_id,
        MigrationTask.status == status.MIGRATION_FINISHED,
        MigrationTask.mode == status.MODE_LIVE,
        MigrationTask.finished_at >= utcnow() - timedelta(seconds=max_age_s),
    ).order_by(MigrationTask.finished_at.desc()).limit(3)).all()
    results = [r.result_record for r in rows]
    rates = [r.bytes / (r.total_ms / 1000) for r in results if r.bytes and r.total_ms]
    return float(median(rates)) if rates else None


def judge(servers, sources, destination, options, measured: dict, reused=None) -> dict:
    """Run every check on what the database holds now and what the nodes measured."""
    unreachable = [checks.CheckResult("reachable", checks.FAIL, message)
                   for message in measured["unreachable"]]
    cpu = {name: tuple(pair) for name, pair in measured["cpu"].items()}
    # A stored report came back through JSON, which keeps the ports as text.
    probes = {source: {int(port): result for port, result in ports.items()}
              for source, ports in measured["probes"].items()}
    results = unreachable + checks.run_checks(
        [server_info(s) for s in servers], {n: resource_info(r) for n, r in sources.items()},
        resource_info(destination), options, probes, cpu,
        transfer_security=current_app.config["TRANSFER_SECURITY"])
    return report_of(results, measured["throughput_bps"], measured["dirty_rate_bps"],
                     etas(servers, destination, options, measured), measured, reused)


def report_of(results, throughput, dirty, eta, measured, reused=None) -> dict:
    """The JSON-able report the dialog, the API, the CLI and the task show."""
    return {
        "results": [asdict(r) for r in results],
        "summary": asdict(checks.summarize(results)),
        "throughput_bps": throughput,
        "dirty_rate_bps": dirty,
        "eta": eta,
        "measured": measured,
        "reused": reused,
    }


def etas(servers, destination, options, measured) -> dict:
    """The pre-start ETA of every server whose source's throughput is known, corrected by what
    recent moves like it taught (services.calibration; one lookup per kind of move)."""
    result, factors, tails = {}, {}, {}
    for server in servers:
        name = server.compute_resource.name if server.compute_resource else None
        rate = measured["throughput_bps"].get(name)
        if not rate:
            continue
        like = calibration.Like(server.compute_resource_id, destination.id, server.memory_mib)
        if options.live and like not in factors:
            factors[like] = calibration.start_factor(like)
        factor = factors.get(like)
        disk_bytes = sum(d.allocation or 0 for d in server.disks)
        est = estimation.estimate_migration(
            memory_bytes=server.memory_mib * 1024 * 1024,
            disk_bytes=disk_bytes if options.live else 0,
            throughput_bps=rate,
            dirty_rate_bps=float(measured["dirty_rate_bps"].get(server.name) or 0),
            touched_memory_bytes=(measured.get("touched_bytes") or {}).get(server.name),
            dirty_set_bytes=(measured.get("dirty_set_bytes") or {}).get(server.name))
        if not options.live:  # offline: the disk copy, and what recent ones took beyond it
            route = calibration.Route(server.compute_resource_id, destination.id)
            if route not in tails:
                tails[route] = calibration.offline_tail(route)
            result[server.name] = offline_eta(1.0 + disk_bytes / rate, tails[route])
            continue
        # A guest that will not converge has an infinite estimate: JSON (and PostgreSQL)
        # cannot hold Infinity, so it is stored as null next to converges=False.
        result[server.name] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                               for k, v in calibrated(asdict(est), factor).items()}
    return result


def report_key(servers, destination, options: checks.MigrationOptions) -> str:
    """What makes two preflights the same question: the servers, the destination, and the
    options the checks read (an acknowledgement changes no check)."""
    question = {"servers": sorted(s.id for s in servers), "destination": destination.id,
                "options": asdict(options)}
    return hashlib.sha256(json.dumps(question, sort_keys=True).encode()).hexdigest()


def may_reuse(age_s: float, max_age_s: float, generations_then: dict, generations_now: dict
              ) -> bool:
    """The reuse rule: young enough, and no node involved changed since.

    >>> may_reuse(2.0, 10, {"1": 4, "2": 7}, {"1": 4, "2": 7})
    True
    >>> may_reuse(12.0, 10, {"1": 4, "2": 7}, {"1": 4, "2": 7})
    False
    >>> may_reuse(2.0, 10, {"1": 4, "2": 7}, {"1": 4, "2": 8})
    False
    """
    return 0 <= age_s < max_age_s and generations_then == generations_now


def generations(involved) -> dict:
    """{resource id (as text, the way JSON keeps it): inventory generation} read now."""
    ids = sorted({r.id for r in involved})
    rows = db.session.execute(db.select(ComputeResource.id, ComputeResource.generation)
                              .where(ComputeResource.id.in_(ids))).all()
    return {str(rid): generation for rid, generation in rows}


def reusable(key: str, involved) -> PreflightReport | None:
    """The stored report for this question that may stand in for a fresh preflight, or None."""
    max_age = current_app.config["PREFLIGHT_REUSE_S"]
    if max_age <= 0:
        return None
    stored = db.session.scalar(db.select(PreflightReport).where(PreflightReport.key == key)
                               .order_by(PreflightReport.id.desc()).limit(1))
    if stored is None:
        return None
    age = (utcnow() - stored.created_at).total_seconds()
    return stored if may_reuse(age, max_age, stored.generations, generations(involved)) else None


def store(key: str, involved, report: dict) -> None:
    """Keep a report where a Start finds it, with the generations it was measured at; older
    reports of the same question and any older than a day are dropped."""
    db.session.execute(db.delete(PreflightReport).where(
        (PreflightReport.key == key) | (PreflightReport.created_at < utcnow() - timedelta(days=1))))
    db.session.add(PreflightReport(key=key, generations=generations(involved), report=report))
    db.session.commit()


# An offline estimate is never cut below this share of its model's figure by a learned
# tail (moves of another size taught it).
OFFLINE_FLOOR = 0.25


def offline_eta(model_s: float, tail: float | None) -> dict:
    """An offline move's pre-start estimate: the model's figure plus the tail recent offline
    moves in the same direction taught (services.calibration), with a band of -20/+30 %;
    the model's own figure stays in `model_s`.

    >>> e = offline_eta(1.2, 17.8)
    >>> e["seconds"], e["model_s"], e["tail_s"], e["low"], e["high"]
    (19.0, 1.2, 17.8, 15.2, 24.7)
    >>> offline_eta(10.0, -30.0)["seconds"], offline_eta(2.0, None)["seconds"]
    (2.5, 2.0)
    """
    seconds = model_s if tail is None else max(model_s * OFFLINE_FLOOR, model_s + tail)
    return {"seconds": round(seconds, 3), "low": round(seconds * 0.8, 3),
            "high": round(seconds * 1.3, 3), "expected_downtime_ms": 0, "converges": True,
            "passes": 0, "reason": "offline copy of the allocated disk data"
            + ("" if tail is None else f", and {tail:+.1f} s that recent offline moves in "
               "this direction took beyond it"),
            "model_s": model_s, "calibration": None, "tail_s": tail}


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
