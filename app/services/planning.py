"""The evacuation planner: where each server of a compute resource can go, or why not.

Pure: callers turn database rows into `PlanServer` and `PlanResource`
values and store the returned `Plan`; nothing here touches I/O.

Heuristic ("largest first, most headroom"):

1. Servers are placed largest first (memory, then disk, then name), because
   big servers are the ones that stop fitting once the small ones have
   spread out.
2. Each goes to the destination that fits it and has the largest share of
   its memory still free after the moves planned before it (ties: more free
   MiB, then the lower vCPU load, then the name). Memory decides because a
   KVM host cannot overcommit it safely while vCPUs are routinely
   overcommitted. Picking the least-loaded host each time is "worst fit": it
   spreads the load over the destinations instead of filling one host first,
   which is what an evacuation wants (the moved servers keep their
   performance and no destination becomes the next hot spot). A share, not
   free MiB, so that a large host is not filled to the level of a small one.
3. A destination fits when it is active, is not the source, has the
   server's storage tags with enough free space per tag, has its IP blocks
   (Preserve IP) or enough free addresses (IP change), runs a compatible CPU
   (live moves only) and has the memory free with the preflight's headroom left
   (placement.memory_blocker).

Cost: servers that the same hosts rule out for static reasons (storage
tags, IP blocks, CPU) share a heap of the hosts they may use, keyed by load.
A server pops the least-loaded host and takes the first with capacity left;
the ones it passed over go back unchanged and only the chosen one is
re-keyed (other groups re-rank it lazily when they meet it). With S servers,
R resources and G groups that is O(G·R + S log R) while capacity lasts,
never the O(S·R²) of re-ranking every host for every server. A server that
fits nowhere costs O(R) more, to name every host's blocking constraint.
"""

import heapq
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from app import status
from app.services import placement

# How many other candidates a reason sentence names before "and N more".
MAX_NAMED = 8
# Server states in which a server cannot be moved at all.
_NOT_MOVABLE = {
    status.SERVER_MIGRATING: "is already migrating",
    status.SERVER_MISSING: "was not found on its compute resource at the last sync",
}


@dataclass(frozen=True)
class PlanServer:
    """A server to place; `disk_bytes_by_tag` uses the key None for untagged disks."""

    id: int
    name: str
    state: str  # app.status.SERVER_*; only "running" moves live
    memory_mib: int
    vcpus: int = 1
    disk_bytes_by_tag: dict = field(default_factory=dict)  # {tag or None: bytes}
    ip_blocks: frozenset = frozenset()  # names of the blocks its addresses are in
    address_count: int | None = None  # addresses it needs on an IP change; default len(ip_blocks)
    snapshot_count: int = 0
    # Where it can run live: a set of resource ids, or a callable(resource_id)
    # -> bool. None means "not known" (then PlanResource.live_server_ids decides).
    cpu_compatible: frozenset | Callable | None = None
    resource_id: int | None = None  # where it is now


@dataclass(frozen=True)
class PlanResource:
    """A compute resource as a candidate destination, with its free capacity now."""

    id: int
    name: str
    status: str = status.RESOURCE_ACTIVE
    free_memory_mib: int = 0
    total_memory_mib: int | None = None  # None: counted as free_memory_mib (an empty host)
    free_disk_bytes_by_tag: dict = field(default_factory=dict)  # {tag or None: bytes}
    storage_tags: frozenset | None = None  # default: the keys of free_disk_bytes_by_tag
    ip_blocks: frozenset = frozenset()
    free_addresses: dict = field(default_factory=dict)  # {block name: free addresses}
    vcpus: int = 0  # host CPUs
    vcpus_allocated: int = 0  # vCPUs of the guests already on it
    # The other side of the CPU matrix: ids of servers that can run here live.
    live_server_ids: frozenset | None = None


@dataclass(frozen=True)
class Move:
    """One planned move: server → destination, with why this destination."""

    server: PlanServer
    destination: PlanResource
    mode: str  # app.status.MODE_LIVE or MODE_OFFLINE
    reasons: tuple = ()


class Unplaced(NamedTuple):
    """A server with no destination and the sentence that says why."""

    server: PlanServer
    reason: str


@dataclass
class Plan:
    """Every server of the source, either in `moves` or in `unplaced`."""

    source_id: int
    moves: list = field(default_factory=list)
    unplaced: list = field(default_factory=list)

    @property
    def complete(self):
        """True when every server has a destination."""
        return not self.unplaced


class _Slot:
    """A destination's capacity as the plan consumes it."""

    __slots__ = ("res", "memory", "disk", "addresses", "vcpus_allocated", "tags", "version")

    def __init__(self, res):
        self.res = res
        self.memory = res.free_memory_mib
        self.disk = dict(res.free_disk_bytes_by_tag)
        self.addresses = dict(res.free_addresses)
        self.vcpus_allocated = res.vcpus_allocated
        self.tags = frozenset(res.storage_tags if res.storage_tags is not None else res.free_disk_bytes_by_tag)
        self.version = 0

    def key(self):
        total = self.res.total_memory_mib or self.res.free_memory_mib
        free_share = self.memory / total if total > 0 else 0.0
        cpu_load = self.vcpus_allocated / self.res.vcpus if self.res.vcpus else float(self.vcpus_allocated)
        return (-free_share, -self.memory, cpu_load, self.res.name, self.res.id)


def plan_evacuation(source_id, servers, resources, live=True, preserve_ip=True):
    """Place every server of `source_id` on another compute resource, or say why it cannot move."""
    plan = Plan(source_id=source_id)
    slots = {}
    for res in sorted(resources, key=lambda r: (r.name, r.id)):
        if res.id != source_id:
            slots[res.id] = _Slot(res)
    # Servers that rule out the same hosts for static reasons (tags, blocks,
    # CPU) share one heap of the hosts they may use, so nobody wades through
    # hosts it can never take: that is what keeps 500 servers near-linear.
    heaps = {}

    order = sorted(servers, key=lambda s: (-s.memory_mib, -_disk_total(s), s.name, s.id))
    for server in order:
        mode = status.MODE_LIVE if live and server.state == status.SERVER_RUNNING else status.MODE_OFFLINE
        blocker = _server_blocker(server)
        if blocker:
            plan.unplaced.append(Unplaced(server, f"{server.name} {blocker}"))
            continue
        group = _static_group(server, mode, preserve_ip)
        heap = heaps.get(group)
        if heap is None:
            heap = heaps[group] = [
                (slot.key(), slot.version, slot.res.id)
                for slot in slots.values()
                if _static_blocker(server, slot, mode, preserve_ip) is None
            ]
            heapq.heapify(heap)
        chosen, skipped = _pick(server, preserve_ip, heap, slots)
        if chosen is None:
            plan.unplaced.append(Unplaced(server, _why_nowhere(server, mode, preserve_ip, slots)))
            continue
        reasons = _take(chosen, server, preserve_ip)
        heapq.heappush(heap, (chosen.key(), chosen.version, chosen.res.id))
        if mode == status.MODE_OFFLINE and server.state != status.SERVER_STOPPED:
            reasons.insert(0, f"offline: the server is {server.state} and must be stopped first")
        for other, why in skipped[:MAX_NAMED]:
            reasons.append(f"not {other.res.name}: {why}")
        plan.moves.append(Move(server, chosen.res, mode, tuple(reasons)))
    return plan


def _static_group(server, mode, preserve_ip):
    """A key equal for servers that the same hosts rule out for static reasons."""
    tags = frozenset(t for t in server.disk_bytes_by_tag if t is not None)
    blocks = server.ip_blocks if preserve_ip else None
    cpu = None
    if mode == status.MODE_LIVE:
        # A set or callable is shared by value/identity; the resource side of
        # the matrix is per server id.
        cpu = server.cpu_compatible if server.cpu_compatible is not None else ("server", server.id)
    return (mode, tags, blocks, cpu)


def _pick(server, preserve_ip, heap, slots):
    """Pop candidates least loaded first until one fits; put back the rest. Returns (slot, [(slot, why)])."""
    popped, skipped, chosen = [], [], None
    while heap:
        entry = heapq.heappop(heap)
        slot = slots[entry[2]]
        if entry[1] != slot.version:
            # Another group's server took capacity here. Keys only get worse
            # as capacity is taken, so re-queue it at its true rank.
            heapq.heappush(heap, (slot.key(), slot.version, entry[2]))
            continue
        found = _dynamic_blocker(server, slot, preserve_ip)
        if found is None:
            chosen = slot  # re-pushed with its new key by the caller
            break
        popped.append(entry)
        skipped.append((slot, found[1]))
    for entry in popped:
        heapq.heappush(heap, entry)
    return chosen, skipped


def _take(slot, server, preserve_ip):
    """Consume the server's needs from the slot; return the reason sentences for the choice."""
    before = slot.memory
    slot.memory -= server.memory_mib
    for tag, size in server.disk_bytes_by_tag.items():
        slot.disk[tag] = slot.disk.get(tag, 0) - size
    if not preserve_ip:
        need = _addresses_needed(server)
        # Fullest blocks first (then by name) so the small ones stay whole.
        for block in sorted(slot.addresses, key=lambda b: (-slot.addresses[b], b)):
            used = min(need, slot.addresses[block])
            slot.addresses[block] -= used
            need -= used
            if not need:
                break
    slot.vcpus_allocated += server.vcpus
    slot.version += 1
    return [f"least loaded destination that fits: {before} MiB free, {slot.memory} MiB after"]


def _server_blocker(server):
    """A reason the server cannot move anywhere, whatever the destination."""
    if server.state in _NOT_MOVABLE:
        return _NOT_MOVABLE[server.state]
    if server.snapshot_count:
        n = server.snapshot_count
        return f"has {n} snapshot{'s' if n != 1 else ''}; delete them before migrating"
    return None


def _first_blocker(server, slot, mode, preserve_ip):
    """(kind, sentence part) for the first constraint `slot` fails, in a fixed order; None if it fits."""
    return _static_blocker(server, slot, mode, preserve_ip) or _dynamic_blocker(server, slot, preserve_ip)


def _static_blocker(server, slot, mode, preserve_ip):
    """The first constraint that placing other servers cannot change: status, tags, blocks, CPU."""
    res = slot.res
    name = res.name
    if res.status != status.RESOURCE_ACTIVE:
        state = "in maintenance" if res.status == status.RESOURCE_MAINTENANCE else res.status
        return ("status", f"{name} is {state}")
    for tag in sorted(t for t in server.disk_bytes_by_tag if t is not None):
        if tag not in slot.tags:
            return ("tag", f"{name} lacks storage tag {tag}")
    if preserve_ip:
        for block in sorted(server.ip_blocks):
            if block not in res.ip_blocks:
                return ("block", f"{name} lacks IP block {block}")
    if mode == status.MODE_LIVE:
        compatible = _cpu_compatible(server, res)
        if compatible is None:
            return ("cpu", f"{name}'s CPU compatibility is not known yet")
        if not compatible:
            return ("cpu", f"{name}'s CPU is not compatible for live migration")
    return None


def _dynamic_blocker(server, slot, preserve_ip):
    """The first capacity the plan so far has used up: addresses, memory, disk per tag."""
    name = slot.res.name
    if not preserve_ip:
        need = _addresses_needed(server)
        free = sum(max(n, 0) for n in slot.addresses.values())
        if free < need:
            return ("addresses", f"{name} has {free} free address{'es' if free != 1 else ''}")
    memory = placement.memory_blocker(name, slot.memory, server.memory_mib)
    if memory is not None:
        return ("memory", memory)
    for tag in sorted(server.disk_bytes_by_tag, key=_tag_sort):
        free = slot.disk.get(tag, 0)
        if free < server.disk_bytes_by_tag[tag]:
            return ("disk", f"{name} has {_gib(max(free, 0))} free on {_tag_name(tag)}")
    return None


def _why_nowhere(server, mode, preserve_ip, slots):
    """One sentence: what no destination offers, then each candidate's first blocker."""
    if not slots:
        return f"{server.name} cannot move: there is no other compute resource"
    found = []
    for slot in slots.values():  # already in name order
        hit = _first_blocker(server, slot, mode, preserve_ip)
        if hit is not None:
            found.append(hit)
    kinds = {kind for kind, _ in found}
    needs = []
    if "tag" in kinds:
        tags = sorted(t for t in server.disk_bytes_by_tag if t is not None)
        needs.append(("storage tag " if len(tags) == 1 else "storage tags ") + ", ".join(tags))
    if "block" in kinds:
        blocks = sorted(server.ip_blocks)
        needs.append(("IP block " if len(blocks) == 1 else "IP blocks ") + ", ".join(blocks))
    if "cpu" in kinds:
        needs.append("a CPU compatible for live migration")
    if "addresses" in kinds:
        n = _addresses_needed(server)
        needs.append(f"{n} free address{'es' if n != 1 else ''}")
    if "memory" in kinds:
        needs.append(placement.memory_needed(server.memory_mib))
    if "disk" in kinds:
        needs.append(" and ".join(
            f"{_gib(server.disk_bytes_by_tag[t])} free on {_tag_name(t)}"
            for t in sorted(server.disk_bytes_by_tag, key=_tag_sort)
        ))
    if needs:
        head = "no compute resource has " + _join_and(needs)
    else:
        head = "no other compute resource is active"
    parts = [text for _, text in found]
    if len(parts) > MAX_NAMED:
        parts = parts[:MAX_NAMED] + [f"and {len(found) - MAX_NAMED} more"]
    return f"{head}: " + "; ".join(parts)


def _cpu_compatible(server, res):
    """True/False from whichever side of the CPU matrix the caller filled; None if neither."""
    allowed = server.cpu_compatible
    if callable(allowed):
        return bool(allowed(res.id))
    if allowed is not None:
        return res.id in allowed
    if res.live_server_ids is not None:
        return server.id in res.live_server_ids
    return None


def _addresses_needed(server):
    return server.address_count if server.address_count is not None else len(server.ip_blocks)


def _disk_total(server):
    return sum(server.disk_bytes_by_tag.values())


def _tag_sort(tag):
    # Untagged (None) first, then tags by name.
    return (tag is not None, tag or "")


def _tag_name(tag):
    return "untagged storage" if tag is None else f"storage tag {tag}"


def _gib(size):
    return f"{size / 2**30:.1f} GiB"


def _join_and(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
