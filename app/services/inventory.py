"""Inventory sync: a compute resource's facts and servers, read from the node and recorded.

Idempotent: running it twice changes nothing the second time. A server that
is no longer on its node is marked missing (never deleted: its history
matters); a node that cannot be reached becomes unreachable with the reason.
"""
import logging
import shlex
from dataclasses import replace

from app import status
from app.errors import FerryError, UnexpectedAnswer
from app.extensions import db
from app.infra import ssh
from app.infra.commands import lvm, node
from app.models import ComputeResource, Disk, MigrationTask, Server, utcnow
from app.services import certificates, jobs, resources

log = logging.getLogger("ferry.inventory")


def gather_facts(resource, conn, host, lvm_report=None):
    """The facts dict stored on the resource (shape documented in the README and used by preflight).

    lvm_report: (volume groups, logical volumes) when the caller read them already.
    """
    conn = read_ahead(conn, fact_commands(resource, lvm_too=lvm_report is None))
    return facts_from(resource, conn, host, lvm_report)


def facts_from(resource, conn, host, lvm_report=None):
    """gather_facts on a connection whose answers to fact_commands were read ahead already
    (with more of the caller's own in the same exec: see preflight._reach)."""
    def out(argv):
        return ssh.run(conn, argv).stdout

    groups, volumes = lvm_report if lvm_report is not None else read_lvm(conn)

    cpu = host.cpu()
    cpu["cpuinfo"] = node.parse_cpuinfo(out(node.CPUINFO))
    nbd = ssh.run(conn, node.NBD_LOADED).ok or ssh.run(conn, node.NBD_AVAILABLE).ok
    return {
        "cpu": cpu,
        "os": node.parse_os_release(out(node.OS_RELEASE)),
        "kernel": node.text_field(out(node.KERNEL)),
        **host.versions(),
        "nested_virtualization": node.parse_nested(out(node.NESTED)),
        "memory": host.memory(),
        "storage_pools": [p.__dict__ for p in host.storage_pools()],
        "nbd_module": nbd,
        "lvm": lvm.facts(groups, volumes),
        "backup_dir": backup_dir_facts(conn, resource.backup_dir),
        "checkpoints": host.checkpoints(),
        "tls": certificates.gather(resource, conn),
        "gathered_at": utcnow().isoformat(),
    }


def fact_commands(resource, lvm_too: bool) -> list[list[str]]:
    """Every command gather_facts runs on the node (its LVM report too when `lvm_too`)."""
    return [*([lvm.REPORT] if lvm_too else []), node.CPUINFO, node.NBD_LOADED,
            node.NBD_AVAILABLE, node.OS_RELEASE, node.KERNEL, node.NESTED,
            node.list_backup_files(resource.backup_dir), node.free_space(resource.backup_dir),
            *certificates.fact_commands()]


def read_ahead(conn, argvs):
    """`conn` with the answers to `argvs` read in one exec (node.batch): ssh.run on it gives
    those back. Each exec costs about 50 ms on a node, and the facts are a dozen: one by one
    they were half of a preflight. A node that does not answer the batch in its shape is
    asked one command at a time, as before (its parsers then judge each answer)."""
    done = ssh.run(conn, node.batch(argvs))
    try:
        if not done.ok:
            raise UnexpectedAnswer(f"exit status {done.exited}: {done.stderr.strip()[-200:]}")
        answers = node.parse_batch(done.stdout, len(argvs))
    except UnexpectedAnswer as exc:
        log.warning("%s: the batch of fact commands did not answer (%s); asking one by one",
                    getattr(conn, "host", "a node"), exc)
        return conn
    return ssh.ReadAhead(conn, {shlex.join(argv): ssh.CommandResult(tuple(argv), *answer)
                                for argv, answer in zip(argvs, answers)})


def backup_dir_facts(conn, path):
    """The node's temporary backup directory: its free bytes (None when df cannot tell) and the
    files in it, {"name", "size"} each (None when they could not be listed; `files_cut` when
    there were more than node.MAX_BACKUP_FILES).

    Raises node.UnexpectedListing when the listing is not of its command's shape.
    """
    listing = ssh.run(conn, node.list_backup_files(path))
    files, cut = node.parse_backup_files(listing.stdout) if listing.ok else (None, False)
    return {"path": path, "free_bytes": node.parse_df(ssh.run(conn, node.free_space(path)).stdout),
            "files": files, "files_cut": cut}


def read_lvm(conn):
    """(volume groups, logical volumes) of the node from vgs and lvs; empty where LVM is absent.

    Raises lvm.UnexpectedOutput when either prints something other than its report.
    """
    return lvm.parse_report(ssh.run(conn, lvm.REPORT).stdout)


def with_lvm_details(guests, volumes):
    """The guests with every block disk typed and sized from its logical volume."""
    return [replace(g, disks=[lvm.with_volume(d, volumes) for d in g.disks]) for g in guests]


def _under_migration():
    """Ids of servers an unfinished migration task is moving (or about to move)."""
    return set(db.session.scalars(db.select(MigrationTask.server_id).where(
        MigrationTask.status.in_(status.MIGRATION_ACTIVE))))


def record_guests(resource, guests, now=None):
    """Upsert the servers seen on `resource`; mark the ones it no longer has missing.

    A server under migration is left as its task keeps it: mid-move libvirt
    shows it on both hosts (paused on the destination), then on one, and the
    task records where it ended up. A sync in between must not move it.
    """
    now = now or utcnow()
    seen = set()
    moving = _under_migration()
    skipped = 0
    for guest in guests:
        seen.add(guest.uuid)
        server = db.session.scalar(db.select(Server).filter_by(uuid=guest.uuid))
        if server is not None and server.id in moving:
            skipped += 1
            continue
        if server is None:
            server = Server(uuid=guest.uuid)
            db.session.add(server)
        server.name, server.compute_resource = guest.name, resource
        server.state, server.vcpus, server.memory_mib = guest.state, guest.vcpus, guest.memory_mib
        server.snapshot_count, server.persistent = guest.snapshot_count, guest.persistent
        server.last_seen_at = now
        by_target = {d.target: d for d in server.disks}
        for info in guest.disks:
            disk = by_target.pop(info.target, None) or Disk(target=info.target)
            if disk not in server.disks:
                server.disks.append(disk)
            disk.path, disk.format, disk.storage_type = info.path, info.format, info.storage_type
            disk.virtual_size, disk.allocation = info.virtual_size, info.allocation
        for gone in by_target.values():
            server.disks.remove(gone)
    missing = 0
    for server in db.session.scalars(db.select(Server).filter_by(compute_resource=resource)):
        if server.uuid not in seen and server.state != status.SERVER_MISSING \
                and server.id not in moving:
            server.state = status.SERVER_MISSING
            missing += 1
    return {"servers": len(seen), "missing": missing, "under_migration": skipped}


def sync(resource_id):
    """Read facts and servers of one compute resource and record them; raise if it is unreachable."""
    resource = resources.get(resource_id)
    try:
        with resources.open_ssh(resource) as conn, resources.open_libvirt(resource) as host:
            groups, volumes = read_lvm(conn)
            facts = gather_facts(resource, conn, host, (groups, volumes))
            guests = with_lvm_details(host.guests(), lvm.by_device(volumes))
    except UnexpectedAnswer as exc:
        # The node answered, but with something Ferry will not guess about: record nothing.
        raise FerryError(f"{resource.name}: {exc}; nothing was recorded") from exc
    except FerryError as exc:
        resources.mark_unreachable(resource, str(exc))
        db.session.commit()
        raise FerryError(f"{resource.name} is unreachable: {exc}") from exc
    resource.facts = facts
    resources.mark_reachable(resource)
    summary = record_guests(resource, guests)
    resource.last_synced_at = utcnow()
    db.session.commit()
    log.info("synced %s: %d servers, %d newly missing", resource.name,
             summary["servers"], summary["missing"])
    return summary


def enqueue_sync(resource, by=None):
    """Queue a sync job for one resource (audited: a sync changes the inventory)."""
    from app.services import audit
    audit.record("resource.sync", f"compute_resource:{resource.name}", user=by)
    return jobs.enqueue("sync_resource", {"resource_id": resource.id}, user=by)


def enqueue_sync_all(by=None):
    """Queue one sync job per compute resource."""
    ids = db.session.scalars(db.select(ComputeResource).order_by(ComputeResource.name)).all()
    return [enqueue_sync(r, by) for r in ids]
