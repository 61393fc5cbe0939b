"""Where servers can go (the destination fit), judged from what the inventory sync stored (no node
is contacted): the matrix page and the migration form's "choose a destination" use it, and the
evacuation planner judges memory with memory_blocker.

The same pure checks as the preflight (services.preflight_checks), fed with
the rows and facts sync keeps current. Two checks need the nodes themselves
— the port probes and libvirt's comparison of the guest CPU — and are left to
the preflight that runs before every migration; everything else (state, IP
blocks, snapshots, storage tags, memory, disk, OS, CPU vendor and family,
nested virtualization) is judged here, fresh on every request.
"""
from dataclasses import dataclass

from app import status
from app.services import preflight
from app.services import preflight_checks as checks

LIVE = "live"
OFFLINE = "offline"
NO = "no"
HERE = "here"
# Checks that need the nodes: the preflight runs them, a table of stored facts cannot.
NEEDS_NODES = frozenset({"ports", "cpu-compatibility"})
# An offline cell answers "could it go once stopped?": the server's current state is no blocker.
STATE_CHECKS = frozenset({"same-state", "state-fits-mode"})


@dataclass(frozen=True)
class Cell:
    """One server × compute resource verdict; `reason` is shown on hover."""

    kind: str
    reason: str


# A destination keeps this much memory free after its new servers (the preflight warns below it).
MEMORY_HEADROOM_MIB = checks.MEMORY_HEADROOM_MIB


def memory_blocker(name: str, free_mib: int, need_mib: int) -> str | None:
    """Why `name` with free_mib free cannot take need_mib more, or None when it can: it must
    keep MEMORY_HEADROOM_MIB free, as the preflight's memory check asks. The evacuation
    planner judges every candidate with this, so it never plans what the preflight warns of.

    >>> memory_blocker("node2", 4096 + 256, 4096) is None
    True
    >>> memory_blocker("node2", 4096 + 255, 4096)
    'node2 has 4351 MiB free (256 MiB of it must stay free)'
    """
    if free_mib - need_mib >= MEMORY_HEADROOM_MIB:
        return None
    return f"{name} has {max(free_mib, 0)} MiB free ({MEMORY_HEADROOM_MIB} MiB of it must stay free)"


def memory_needed(need_mib: int) -> str:
    """What a destination must have free for need_mib more, as a phrase."""
    return f"{need_mib} MiB free plus {MEMORY_HEADROOM_MIB} MiB of headroom"


def stored_checks(servers, destination, options, infos=None):
    """Run the pure checks for servers → destination from stored facts; probe-only checks left out."""
    infos = infos if infos is not None else {}
    sources = {}
    for server in servers:
        resource = server.compute_resource
        if resource is not None and resource.name not in sources:
            sources[resource.name] = _resource_info(resource, infos)
    results = checks.run_checks([preflight.server_info(s) for s in servers], sources,
                                _resource_info(destination, infos), options, {}, {})
    return [r for r in results if r.name not in NEEDS_NODES]


def _resource_info(resource, infos):
    """ResourceInfo of a resource, built once per request."""
    if resource.id not in infos:
        infos[resource.id] = preflight.resource_info(resource)
    return infos[resource.id]


def _failures(results, ignore=frozenset()):
    return [r.message for r in results if r.status == checks.FAIL and r.name not in ignore]


def cell(server, resource, infos=None):
    """Live, offline only, or no for one server on one compute resource, with the reason."""
    if server.compute_resource_id == resource.id:
        return Cell(HERE, f"{server.name} is on {resource.name}.")
    if server.compute_resource is None:
        return Cell(NO, f"{server.name} is on no known compute resource.")
    live = stored_checks([server], resource, checks.MigrationOptions(live=True), infos)
    live_fail = _failures(live)
    if not live_fail:
        warned = [r.message for r in live if r.status == checks.WARN]
        return Cell(LIVE, "Can move live." + (" Warnings: " + " ".join(warned) if warned else "")
                    + " Ports and the guest CPU are checked by the preflight.")
    offline = stored_checks([server], resource, checks.MigrationOptions(live=False), infos)
    offline_fail = _failures(offline, ignore=STATE_CHECKS)
    if not offline_fail:
        head = "Offline only"
        if server.state != status.SERVER_STOPPED:
            head += f" (stop {server.name} first)"
        return Cell(OFFLINE, f"{head}. Not live: " + " ".join(live_fail))
    return Cell(NO, " ".join(offline_fail))


def matrix(servers, resources):
    """Rows of (server, [Cell per resource]) in the order given."""
    infos = {}
    return [(server, [cell(server, resource, infos) for resource in resources])
            for server in servers]


def choose_destination(servers, resources, options):
    """The resource that takes the whole selection with the most free memory, or (None, reasons).

    Returns (resource, None) or (None, {resource name: why not}).
    """
    infos, why_not, fitting = {}, {}, []
    here = {s.compute_resource_id for s in servers}
    for resource in resources:
        if resource.id in here:
            continue
        failed = _failures(stored_checks(servers, resource, options, infos))
        if failed:
            why_not[resource.name] = " ".join(failed)
        else:
            fitting.append(resource)
    if not fitting:
        return None, why_not
    best = max(fitting, key=lambda r: ((r.memory.get("free_mib") or 0), -r.id))
    return best, None
