"""Evacuate a compute resource: plan where every server goes, approve, run, and bring them back.

    evac = evacuation.make_plan(node.id, user)    # stored as shown to the person
    evacuation.approve(evac.id, user)              # node -> maintenance, one group runs it
    ...
    back = evacuation.plan_return(node.id, user)   # the servers it moved, home again
    evacuation.approve(back.id, user)

The plan comes from the pure planner (services.planning) fed from the
inventory; approving runs exactly the stored plan as one migration group with
a destination and a mode per server, under the usual limits (a node takes
part in one task at a time, so a group that moves one server after another is
also the fastest schedule the limits allow for emptying one node).
"""
from __future__ import annotations

import logging

from app import status
from app.blobs import EvacuationPlan, GroupOptions, PlannedMove, Unplaced
from app.errors import FerryError, NotFound
from app.extensions import db
from app.models import ComputeResource, Evacuation, MigrationTask, Server, utcnow
from app.services import addresses, audit, migration, planning, resources

log = logging.getLogger("ferry.evacuation")

# Servers in these states are not evacuated: there is nothing to move or no one knows where it is.
_SKIP_STATES = (status.SERVER_MISSING,)


def get(evacuation_id: int) -> Evacuation:
    """The evacuation with this id, or NotFound."""
    evac = db.session.get(Evacuation, evacuation_id)
    if evac is None:
        raise NotFound(f"evacuation {evacuation_id} does not exist")
    return refresh(evac)


def plan_server(server: Server, live_ok=None) -> planning.PlanServer:
    """The planner's view of a server: disks counted at their full size in every target format."""
    by_tag = {}
    for disk in server.disks:
        by_tag[disk.storage_tag] = by_tag.get(disk.storage_tag, 0) + (disk.virtual_size or 0)
    return planning.PlanServer(
        id=server.id, name=server.name, state=server.state, memory_mib=server.memory_mib or 0,
        vcpus=server.vcpus or 1, disk_bytes_by_tag=by_tag,
        ip_blocks=frozenset(a.block.name for a in server.ip_addresses),
        address_count=len(server.ip_addresses), snapshot_count=server.snapshot_count or 0,
        cpu_compatible=live_ok, resource_id=server.compute_resource_id)


def plan_resource(resource: ComputeResource) -> planning.PlanResource:
    """The planner's view of a destination, from the facts the last sync stored."""
    facts = resource.facts or {}
    pools = [p for p in facts.get("storage_pools") or () if p.get("type") in ("dir", "fs")]
    free_disk = max((p.get("free_bytes") or 0 for p in pools), default=0)
    tags = list(resource.storage_tags or ())
    memory = facts.get("memory") or {}
    return planning.PlanResource(
        id=resource.id, name=resource.name, status=resource.status,
        free_memory_mib=memory.get("free_mib") or 0, total_memory_mib=memory.get("total_mib"),
        free_disk_bytes_by_tag={tag: free_disk for tag in [None, *tags]},
        storage_tags=frozenset([None, *tags]),
        ip_blocks=frozenset(b.name for b in resource.ip_blocks),
        free_addresses=addresses.free_addresses(resource),
        vcpus=0,  # host CPUs are not in the facts: the planner ranks by allocated vCPUs alone
        vcpus_allocated=sum(s.vcpus or 0 for s in resource.servers))


def cpu_identity(resource: ComputeResource) -> tuple:
    """What must match for a live move: CPU vendor and family (the preflight checks the rest)."""
    cpuinfo = ((resource.facts or {}).get("cpu") or {}).get("cpuinfo") or {}
    return cpuinfo.get("vendor_id"), str(cpuinfo.get("family") or "")


def make_plan(resource_id, user=None, origin: str = "user", live: bool = True,
              preserve_ip: bool = True) -> Evacuation:
    """Plan where every server of the resource goes; stored as `planned`, replacing older plans."""
    source = resources.get(resource_id)
    candidates = db.session.scalars(db.select(ComputeResource).order_by(ComputeResource.name)).all()
    identity = cpu_identity(source)
    same_cpu = frozenset(r.id for r in candidates if cpu_identity(r) == identity)
    servers = [s for s in source.servers if s.state not in _SKIP_STATES]
    plan = planning.plan_evacuation(
        source.id, [plan_server(s, same_cpu) for s in servers],
        [plan_resource(r) for r in candidates], live=live, preserve_ip=preserve_ip)
    return _store(source, status.EVACUATION_EVACUATE, plan_record(plan, live, preserve_ip),
                  user, origin)


def plan_record(plan: planning.Plan, live: bool, preserve_ip: bool) -> EvacuationPlan:
    """The stored form of a plan: what the page shows and what approval runs."""
    return EvacuationPlan(
        live=live, preserve_ip=preserve_ip,
        moves=tuple(PlannedMove(m.server.id, m.server.name, m.destination.id, m.destination.name,
                                m.mode, m.server.memory_mib, tuple(m.reasons))
                    for m in plan.moves),
        unplaced=tuple(Unplaced(u.server.id, u.server.name, u.reason) for u in plan.unplaced))


def _store(resource, kind, plan: EvacuationPlan, user, origin, returns_id=None) -> Evacuation:
    for old in db.session.scalars(db.select(Evacuation).filter_by(
            compute_resource_id=resource.id, status=status.EVACUATION_PLANNED)):
        old.status = status.EVACUATION_DISCARDED
    evac = Evacuation(compute_resource=resource, kind=kind, plan=plan.to_json(), origin=origin,
                      created_by_id=getattr(user, "id", None), returns_id=returns_id)
    db.session.add(evac)
    audit.record(f"evacuation.{kind}.plan", resource.name,
                 {"moves": len(plan.moves), "unplaced": len(plan.unplaced),
                  "origin": origin}, user=user)
    db.session.commit()
    return evac


def approve(evacuation_id: int, user=None, acknowledge_warnings: bool = True,
            enqueue: bool = True) -> Evacuation:
    """Run a planned evacuation: the node goes into maintenance, one group moves the servers.

    Servers whose place or state changed since the plan was made are refused
    rather than moved somewhere nobody approved.
    """
    evac = get(evacuation_id)
    if evac.status != status.EVACUATION_PLANNED:
        raise FerryError(f"evacuation {evac.id} is {evac.status}, not waiting for approval")
    resource = evac.compute_resource
    if resource is None:
        raise FerryError(f"the compute resource of evacuation {evac.id} no longer exists")
    moves, plan = [], evac.plan_record
    for move in plan.moves:
        server = db.session.get(Server, move.server_id)
        destination = db.session.get(ComputeResource, move.destination_id)
        expected = resource.id if evac.kind == status.EVACUATION_EVACUATE else None
        if server is None or destination is None:
            raise FerryError(f"{move.server} or {move.destination} no longer exists: "
                             "plan again")
        if expected is not None and server.compute_resource_id != expected:
            raise FerryError(f"{server.name} is no longer on {resource.name}: plan again")
        moves.append((server, destination, move.mode))
    if not moves:
        raise FerryError("the plan moves no server: "
                         + "; ".join(u.reason for u in plan.unplaced))
    migration.refuse_busy([server for server, _, _ in moves])
    if evac.kind == status.EVACUATION_EVACUATE and resource.status == status.RESOURCE_ACTIVE:
        resources.set_maintenance(resource.id, True, by=user)
    options = GroupOptions(mode="mixed" if len({m for *_, m in moves}) > 1 else moves[0][2],
                           preserve_ip=plan.preserve_ip, acknowledged=acknowledge_warnings,
                           evacuation_id=evac.id)
    evac.status = status.EVACUATION_RUNNING
    evac.approved_at = utcnow()
    db.session.commit()
    group = migration.open_group(moves, options, acknowledge_warnings, user, enqueue)
    evac.group_id = group.id
    if group.status == status.MIGRATION_FAILED:
        evac.status = status.EVACUATION_FAILED
        evac.error = group.tasks[0].error if group.tasks else "the group did not start"
    audit.record(f"evacuation.{evac.kind}.approve", resource.name,
                 {"evacuation": evac.id, "group": group.id, "status": group.status}, user=user)
    db.session.commit()
    return evac


def plan_return(resource_id, user=None, origin: str = "user") -> Evacuation:
    """Plan moving back the servers the last evacuation took off this resource (where still there)."""
    home = resources.get(resource_id)
    if home.status != status.RESOURCE_ACTIVE:
        raise FerryError(f"{home.name} is {home.status}: exit maintenance before returning servers")
    last = db.session.scalar(
        db.select(Evacuation).filter_by(compute_resource_id=home.id,
                                        kind=status.EVACUATION_EVACUATE)
        .where(Evacuation.group_id.is_not(None)).order_by(Evacuation.id.desc()))
    if last is None:
        raise FerryError(f"{home.name} was never evacuated: there is nothing to return")
    moves, unplaced = [], []
    tasks = db.session.scalars(db.select(MigrationTask).filter_by(group_id=last.group_id)
                               .order_by(MigrationTask.id))
    for task in tasks:
        server = task.server
        if task.status != status.MIGRATION_FINISHED or server is None:
            continue
        if server.compute_resource_id != task.destination_id:
            unplaced.append(Unplaced(server.id, server.name,
                                     f"{server.name} has moved on since the evacuation"))
            continue
        mode = status.MODE_LIVE if server.state == status.SERVER_RUNNING else status.MODE_OFFLINE
        moves.append(PlannedMove(server.id, server.name, home.id, home.name, mode,
                                 server.memory_mib, (f"back from {server.compute_resource.name}",)))
    plan = EvacuationPlan(moves=tuple(moves), unplaced=tuple(unplaced))
    return _store(home, status.EVACUATION_RETURN, plan, user, origin, returns_id=last.id)


def refresh(evac: Evacuation) -> Evacuation:
    """Bring a running evacuation's status in line with its group's."""
    evac.follow_group()
    db.session.commit()
    return evac


def active_for(resource_id: int) -> Evacuation | None:
    """The evacuation of this resource that is planned or running, if any."""
    return db.session.scalar(db.select(Evacuation).where(
        Evacuation.compute_resource_id == resource_id,
        Evacuation.kind == status.EVACUATION_EVACUATE,
        Evacuation.status.in_((status.EVACUATION_PLANNED, status.EVACUATION_RUNNING)))
        .order_by(Evacuation.id.desc()))


def group_ended(group) -> None:
    """Called when a group's job ends: the evacuation it ran, if any, learns its outcome."""
    Evacuation.group_ended(group)
    db.session.commit()
