"""The evacuation planner on small worked cases and one synthetic inventory at scale (pure; no I/O)."""

import random

from app import status
from app.services.placement import MEMORY_HEADROOM_MIB
from app.services.planning import Move, Plan, PlanResource, PlanServer, Unplaced, plan_evacuation

GiB = 2**30
SOURCE = 1
EVERYWHERE = frozenset(range(1, 1000))  # CPU-compatible with any resource id used here


def server(sid, name, memory_mib=1024, **kw):
    kw.setdefault("state", status.SERVER_RUNNING)
    kw.setdefault("ip_blocks", frozenset({"guest-a"}))
    kw.setdefault("cpu_compatible", EVERYWHERE)
    kw.setdefault("disk_bytes_by_tag", {None: 10 * GiB})
    return PlanServer(id=sid, name=name, memory_mib=memory_mib, resource_id=SOURCE, **kw)


def resource(rid, name, free_memory_mib=16384, **kw):
    kw.setdefault("ip_blocks", frozenset({"guest-a"}))
    kw.setdefault("free_disk_bytes_by_tag", {None: 500 * GiB})
    kw.setdefault("vcpus", 16)
    return PlanResource(id=rid, name=name, free_memory_mib=free_memory_mib, **kw)


SOURCE_RES = resource(SOURCE, "node1", 0)


def placements(plan):
    return {m.server.name: m.destination.name for m in plan.moves}


def test_it_spreads_servers_over_the_destinations():
    servers = [server(10 + i, f"vm{i}", 2048) for i in range(4)]
    plan = plan_evacuation(SOURCE, servers, [SOURCE_RES, resource(2, "node2"), resource(3, "node3")])
    assert isinstance(plan, Plan) and plan.complete
    dests = sorted(placements(plan).values())
    assert dests == ["node2", "node2", "node3", "node3"]
    assert all(isinstance(m, Move) and m.mode == status.MODE_LIVE for m in plan.moves)


def test_it_places_the_largest_server_first_on_the_emptiest_host():
    servers = [server(10, "small", 1024), server(11, "big", 8192), server(12, "mid", 4096)]
    resources = [SOURCE_RES, resource(2, "node2", 10000), resource(3, "node3", 9000)]
    plan = plan_evacuation(SOURCE, servers, resources)
    assert [m.server.name for m in plan.moves] == ["big", "mid", "small"]
    # big → node2 (10000 free, 1808 left); mid → node3 (9000, 4904 left);
    # small → node3, which now has the most left.
    assert placements(plan) == {"big": "node2", "mid": "node3", "small": "node3"}
    assert plan.moves[0].reasons[0] == "least loaded destination that fits: 10000 MiB free, 1808 MiB after"


def test_it_breaks_ties_by_name_so_plans_are_deterministic():
    servers = [server(11, "b", 1024), server(10, "a", 1024)]
    resources = [SOURCE_RES, resource(3, "node3"), resource(2, "node2")]
    first = plan_evacuation(SOURCE, servers, resources)
    again = plan_evacuation(SOURCE, list(reversed(servers)), list(reversed(resources)))
    assert placements(first) == placements(again) == {"a": "node2", "b": "node3"}


def test_it_stops_placing_when_capacity_runs_out():
    servers = [server(10 + i, f"vm{i}", 4096) for i in range(5)]
    plan = plan_evacuation(SOURCE, servers, [SOURCE_RES, resource(2, "node2", 8192 + 256),
                                             resource(3, "node3", 4096 + 256)])
    assert len(plan.moves) == 3
    assert [u.server.name for u in plan.unplaced] == ["vm3", "vm4"]
    reason = plan.unplaced[0].reason
    assert reason == ("no compute resource has 4096 MiB free plus 256 MiB of headroom: "
                      "node2 has 256 MiB free (256 MiB of it must stay free); "
                      "node3 has 256 MiB free (256 MiB of it must stay free)")


def test_it_leaves_the_preflights_memory_headroom_free_on_every_destination():
    # The preflight warns when a destination keeps less than MEMORY_HEADROOM_MIB free after the
    # move; a plan never goes there, even where the server alone would fit.
    assert MEMORY_HEADROOM_MIB == 256
    vm = server(10, "web", 4096)
    tight = plan_evacuation(SOURCE, [vm], [SOURCE_RES, resource(2, "node2", 4096 + 255)])
    assert tight.moves == [] and "node2 has 4351 MiB free" in tight.unplaced[0].reason
    roomy = plan_evacuation(SOURCE, [vm], [SOURCE_RES, resource(2, "node2", 4096 + 256),
                                           resource(3, "node3", 4096 + 100)])
    assert placements(roomy) == {"web": "node2"}
    assert roomy.moves[0].reasons[0] == "least loaded destination that fits: 4352 MiB free, 256 MiB after"


def test_it_names_the_first_blocking_constraint_per_candidate():
    vm = server(10, "web", 2048)
    resources = [
        SOURCE_RES,
        resource(2, "node2", ip_blocks=frozenset({"guest-b"})),
        resource(3, "node3", 1024),
    ]
    [(unplaced, reason)] = plan_evacuation(SOURCE, [vm], resources).unplaced
    assert unplaced is vm
    assert reason == (
        "no compute resource has IP block guest-a and 2048 MiB free plus 256 MiB of headroom: "
        "node2 lacks IP block guest-a; node3 has 1024 MiB free (256 MiB of it must stay free)"
    )


def test_it_never_uses_the_source_or_a_host_that_is_not_active():
    resources = [
        resource(SOURCE, "node1", 99999),
        resource(2, "node2", status=status.RESOURCE_MAINTENANCE),
        resource(3, "node3", status=status.RESOURCE_UNREACHABLE),
    ]
    plan = plan_evacuation(SOURCE, [server(10, "vm", 1024)], resources)
    assert plan.moves == []
    assert plan.unplaced[0].reason == (
        "no other compute resource is active: node2 is in maintenance; node3 is unreachable"
    )


def test_it_says_so_when_there_is_no_other_host():
    plan = plan_evacuation(SOURCE, [server(10, "vm")], [SOURCE_RES])
    assert "no other compute resource" in plan.unplaced[0].reason


def test_it_needs_the_storage_tags_and_their_free_space():
    vm = server(10, "db", 1024, disk_bytes_by_tag={"ssd": 100 * GiB, None: 10 * GiB})
    resources = [
        SOURCE_RES,
        resource(2, "node2", 30000),  # most memory, but no ssd tier
        resource(3, "node3", 20000, free_disk_bytes_by_tag={"ssd": 50 * GiB, None: 500 * GiB}),
        resource(4, "node4", 10000, free_disk_bytes_by_tag={"ssd": 200 * GiB, None: 500 * GiB}),
    ]
    plan = plan_evacuation(SOURCE, [vm], resources)
    [move] = plan.moves
    assert move.destination.name == "node4"
    assert "not node3: node3 has 50.0 GiB free on storage tag ssd" in move.reasons

    two = [vm, server(11, "db2", 1024, disk_bytes_by_tag={"ssd": 150 * GiB})]
    plan = plan_evacuation(SOURCE, two, resources)
    assert [u.server.name for u in plan.unplaced] == ["db"]
    assert plan.unplaced[0].reason.startswith(
        "no compute resource has storage tag ssd and 10.0 GiB free on untagged storage and 100.0 GiB free on storage tag ssd:"
    )


def test_it_keeps_ip_blocks_or_takes_free_addresses_when_ips_change():
    vm = server(10, "vm", 1024, ip_blocks=frozenset({"guest-a"}), address_count=2)
    resources = [
        SOURCE_RES,
        resource(2, "node2", 20000, ip_blocks=frozenset({"guest-b"}), free_addresses={"guest-b": 1}),
        resource(3, "node3", 10000, ip_blocks=frozenset({"guest-a"}), free_addresses={"guest-a": 0}),
    ]
    assert placements(plan_evacuation(SOURCE, [vm], resources)) == {"vm": "node3"}
    # Changing the IP: any block will do, if it has two free addresses.
    plan = plan_evacuation(SOURCE, [vm], resources, preserve_ip=False)
    assert plan.unplaced[0].reason == (
        "no compute resource has 2 free addresses: node2 has 1 free address; node3 has 0 free addresses"
    )
    roomy = resources[:2] + [resource(4, "node4", 5000, free_addresses={"guest-c": 1, "guest-d": 1})]
    vm2 = server(11, "vm2", 512, address_count=1)
    plan = plan_evacuation(SOURCE, [vm, vm2], roomy, preserve_ip=False)
    # vm takes node4's two addresses, so vm2 (one address) goes to node2.
    assert placements(plan) == {"vm": "node4", "vm2": "node2"}


def test_it_checks_cpu_compatibility_only_for_live_moves():
    resources = [SOURCE_RES, resource(2, "node2", 20000), resource(3, "node3", 10000)]
    picky = server(10, "picky", 1024, cpu_compatible=frozenset({3}))
    assert placements(plan_evacuation(SOURCE, [picky], resources)) == {"picky": "node3"}
    assert placements(plan_evacuation(SOURCE, [picky], resources, live=False)) == {"picky": "node2"}

    by_callable = server(11, "fn", 1024, cpu_compatible=lambda rid: rid == 3)
    assert placements(plan_evacuation(SOURCE, [by_callable], resources)) == {"fn": "node3"}

    # Neither side of the matrix filled in: not safe to move live.
    unknown = server(12, "unknown", 1024, cpu_compatible=None)
    reason = plan_evacuation(SOURCE, [unknown], resources).unplaced[0].reason
    assert reason == (
        "no compute resource has a CPU compatible for live migration: "
        "node2's CPU compatibility is not known yet; node3's CPU compatibility is not known yet"
    )
    # The resource side of the matrix counts too.
    listed = resources[:2] + [resource(3, "node3", 10000, live_server_ids=frozenset({12}))]
    assert placements(plan_evacuation(SOURCE, [unknown], listed)) == {"unknown": "node3"}


def test_it_moves_stopped_servers_offline_even_in_a_live_plan():
    vm = server(10, "stopped", 1024, state=status.SERVER_STOPPED, cpu_compatible=frozenset())
    [move] = plan_evacuation(SOURCE, [vm], [SOURCE_RES, resource(2, "node2")]).moves
    assert move.mode == status.MODE_OFFLINE


def test_it_warns_that_an_offline_plan_stops_running_servers():
    [move] = plan_evacuation(SOURCE, [server(10, "vm")], [SOURCE_RES, resource(2, "node2")], live=False).moves
    assert move.mode == status.MODE_OFFLINE
    assert move.reasons[0] == "offline: the server is running and must be stopped first"


def test_it_refuses_servers_with_snapshots_or_already_moving():
    servers = [
        server(10, "snap", snapshot_count=2),
        server(11, "moving", state=status.SERVER_MIGRATING),
        server(12, "ok"),
    ]
    plan = plan_evacuation(SOURCE, servers, [SOURCE_RES, resource(2, "node2")])
    assert placements(plan) == {"ok": "node2"}
    reasons = dict((u.server.name, u.reason) for u in plan.unplaced)
    assert reasons == {
        "snap": "snap has 2 snapshots; delete them before migrating",
        "moving": "moving is already migrating",
    }
    assert all(isinstance(u, Unplaced) for u in plan.unplaced)


def test_it_accounts_for_every_server_exactly_once():
    servers = [server(10 + i, f"vm{i}", 1024 * (i % 4 + 1), snapshot_count=int(i == 3)) for i in range(12)]
    plan = plan_evacuation(SOURCE, servers, [SOURCE_RES, resource(2, "node2", 8000), resource(3, "node3", 6000)])
    ids = [m.server.id for m in plan.moves] + [u.server.id for u in plan.unplaced]
    assert sorted(ids) == [s.id for s in servers]


def test_it_places_500_servers_on_200_hosts_within_capacity():
    rng = random.Random(500)
    blocks = [f"block-{i}" for i in range(10)]
    tags = ["ssd", "hdd"]
    resources = [SOURCE_RES]
    for rid in range(2, 202):
        total = rng.choice([131072, 262144, 524288])
        resources.append(resource(
            rid, f"node{rid:03d}", total // rng.choice([2, 4]), total_memory_mib=total,
            ip_blocks=frozenset(rng.sample(blocks, 6)),
            free_disk_bytes_by_tag={t: rng.choice([2000, 4000]) * GiB for t in tags},
            vcpus=64, vcpus_allocated=rng.randrange(0, 64),
        ))
    compatible = frozenset(rng.sample(range(2, 202), 150))
    servers = [
        server(
            1000 + i, f"vm{i:03d}", rng.choice([1024, 2048, 4096, 8192, 16384]),
            vcpus=rng.choice([1, 2, 4, 8]),
            ip_blocks=frozenset({rng.choice(blocks)}),
            disk_bytes_by_tag={rng.choice(tags): rng.choice([20, 50, 100]) * GiB},
            cpu_compatible=compatible,
        )
        for i in range(500)
    ]
    plan = plan_evacuation(SOURCE, servers, resources)
    assert plan.complete, plan.unplaced[:3]
    assert len(plan.moves) == 500
    by_id = {r.id: r for r in resources}
    used_memory, used_disk = {}, {}
    for move in plan.moves:
        dest, vm = move.destination, move.server
        assert dest.id != SOURCE and dest.id in compatible
        assert vm.ip_blocks <= dest.ip_blocks
        used_memory[dest.id] = used_memory.get(dest.id, 0) + vm.memory_mib
        for tag, size in vm.disk_bytes_by_tag.items():
            used_disk[dest.id, tag] = used_disk.get((dest.id, tag), 0) + size
    for rid, used in used_memory.items():
        assert used <= by_id[rid].free_memory_mib
    for (rid, tag), used in used_disk.items():
        assert used <= by_id[rid].free_disk_bytes_by_tag[tag]
    # Spread: the load lands on many hosts, none takes a large share.
    assert len(used_memory) >= 50
    assert max(sum(1 for m in plan.moves if m.destination.id == rid) for rid in used_memory) <= 20


def _reference_plan(servers, resources, preserve_ip=True):
    """The heuristic spelled out the slow way: rank every host for every server."""
    free = {r.id: r.free_memory_mib for r in resources}
    disk = {r.id: dict(r.free_disk_bytes_by_tag) for r in resources}
    vcpus = {r.id: r.vcpus_allocated for r in resources}
    out = {}
    for vm in sorted(servers, key=lambda s: (-s.memory_mib, -sum(s.disk_bytes_by_tag.values()), s.name, s.id)):
        fits = [
            r for r in resources
            if r.id != SOURCE and r.status == status.RESOURCE_ACTIVE
            and vm.ip_blocks <= r.ip_blocks and r.id in vm.cpu_compatible
            and free[r.id] - vm.memory_mib >= MEMORY_HEADROOM_MIB
            and all(disk[r.id].get(t, 0) >= n for t, n in vm.disk_bytes_by_tag.items())
        ]
        if not fits:
            continue
        best = min(fits, key=lambda r: (
            -free[r.id] / (r.total_memory_mib or r.free_memory_mib), -free[r.id], vcpus[r.id] / r.vcpus, r.name, r.id))
        free[best.id] -= vm.memory_mib
        vcpus[best.id] += vm.vcpus
        for t, n in vm.disk_bytes_by_tag.items():
            disk[best.id][t] -= n
        out[vm.name] = best.name
    return out


def test_it_places_exactly_as_ranking_every_host_would():
    # The heaps per constraint group are an optimization: on random small
    # inventories they must choose what a full scan of every host chooses.
    rng = random.Random(7)
    for _ in range(200):
        blocks = ["a", "b", "c"]
        resources = [SOURCE_RES] + [
            resource(
                rid, f"n{rid}", rng.choice([2048, 4096, 6144, 8192]),
                total_memory_mib=rng.choice([None, 8192, 16384]),
                ip_blocks=frozenset(rng.sample(blocks, rng.randint(1, 3))),
                free_disk_bytes_by_tag={None: rng.choice([20, 60]) * GiB, "ssd": rng.choice([0, 40]) * GiB},
                status=rng.choice([status.RESOURCE_ACTIVE] * 4 + [status.RESOURCE_MAINTENANCE]),
                vcpus=8, vcpus_allocated=rng.randrange(8),
            )
            for rid in range(2, rng.randint(3, 7))
        ]
        servers = [
            server(
                10 + i, f"vm{i}", rng.choice([512, 1024, 2048, 3072]), vcpus=rng.choice([1, 2]),
                ip_blocks=frozenset({rng.choice(blocks)}),
                disk_bytes_by_tag={rng.choice([None, "ssd"]): rng.choice([5, 15]) * GiB},
                cpu_compatible=frozenset(rng.sample(range(2, 8), rng.randint(1, 6))),
            )
            for i in range(rng.randint(1, 12))
        ]
        plan = plan_evacuation(SOURCE, servers, resources)
        assert placements(plan) == _reference_plan(servers, resources)
        assert len(plan.moves) + len(plan.unplaced) == len(servers)
