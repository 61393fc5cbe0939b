"""Evacuation plans from the inventory, their storage, approval's refusals, and the return plan.

Runs on SQLite and PostgreSQL with inventory rows only. Approval that reaches
a node is proven against the lab (the browser's evacuate test and the engine's
lab tests); here the nodes' addresses lead nowhere, so the preflight fails
them, which is itself a case worth checking: the node is still put in
maintenance only once a plan was approved, and nothing moves.
"""
import pytest

from app import status
from app.errors import FerryError
from app.extensions import db
from app.models import (ComputeResource, Disk, Evacuation, IpAddress, IpBlock, MigrationGroup,
                        Server)
from app.services import evacuation

GiB = 2**30


@pytest.fixture
def database_url(db_url):
    return db_url


def facts(free_mib, vendor="GenuineIntel", family="6"):
    return {"memory": {"total_mib": 8192, "free_mib": free_mib},
            "cpu": {"cpuinfo": {"vendor_id": vendor, "family": family}},
            "storage_pools": [{"name": "default", "type": "dir", "free_bytes": 100 * GiB,
                               "capacity_bytes": 200 * GiB}]}


@pytest.fixture
def rack(app_context):
    """node1 with three servers; node2 and node3 with room; node4 has another CPU vendor."""
    block = IpBlock(name="guest-a", cidr="10.99.1.0/25", gateway="10.99.1.1")
    nodes = {}
    for name, free, vendor in [("node1", 1000, "GenuineIntel"), ("node2", 4000, "GenuineIntel"),
                               ("node3", 3000, "GenuineIntel"), ("node4", 8000, "AuthenticAMD")]:
        nodes[name] = ComputeResource(name=name, host=f"127.0.0.{len(nodes) + 2}", port=1,
                                      key_path="/nonexistent", facts=facts(free, vendor),
                                      storage_tags=["ssd"], ip_blocks=[block])
    db.session.add_all(nodes.values())
    servers = {}
    for i, (name, memory, state) in enumerate([("web", 1024, status.SERVER_RUNNING),
                                                ("db", 2048, status.SERVER_RUNNING),
                                                ("cold", 512, status.SERVER_STOPPED)]):
        server = Server(uuid=f"00000000-0000-0000-0000-00000000000{i}", name=name,
                        compute_resource=nodes["node1"], state=state, vcpus=1, memory_mib=memory)
        server.disks.append(Disk(target="vda", path=f"/var/lib/libvirt/images/{name}.qcow2",
                                 format="qcow2", storage_type=status.STORAGE_FILE_QCOW2,
                                 virtual_size=GiB, allocation=GiB // 4, storage_tag="ssd"))
        db.session.add(IpAddress(block=block, address=f"10.99.1.{10 + i}", server=server))
        servers[name] = server
    db.session.commit()
    return nodes, servers


def test_it_plans_every_server_onto_compatible_active_nodes_and_spreads_them(rack):
    nodes, _ = rack

    evac = evacuation.make_plan(nodes["node1"].id)

    assert evac.status == status.EVACUATION_PLANNED and evac.kind == status.EVACUATION_EVACUATE
    moves = {m["server"]: m for m in evac.plan["moves"]}
    assert set(moves) == {"web", "db", "cold"} and not evac.plan["unplaced"]
    # Live moves need the same CPU vendor: node4 (AMD) only takes the stopped server.
    assert moves["web"]["destination"] != "node4" and moves["db"]["destination"] != "node4"
    assert moves["web"]["mode"] == status.MODE_LIVE and moves["cold"]["mode"] == status.MODE_OFFLINE
    assert len({moves["web"]["destination"], moves["db"]["destination"]}) == 2  # spread


def test_a_new_plan_replaces_the_unapproved_one(rack):
    nodes, _ = rack
    first = evacuation.make_plan(nodes["node1"].id)
    second = evacuation.make_plan(nodes["node1"].id)
    db.session.refresh(first)
    assert first.status == status.EVACUATION_DISCARDED
    assert evacuation.active_for(nodes["node1"].id).id == second.id
    with pytest.raises(FerryError, match="discarded"):
        evacuation.approve(first.id)


def test_it_names_why_a_server_cannot_leave(rack):
    nodes, servers = rack
    for name in ("node2", "node3", "node4"):
        nodes[name].status = status.RESOURCE_MAINTENANCE
    db.session.commit()

    evac = evacuation.make_plan(nodes["node1"].id)

    assert not evac.plan["moves"] and len(evac.plan["unplaced"]) == 3
    assert all("maintenance" in u["reason"] for u in evac.plan["unplaced"])
    with pytest.raises(FerryError, match="moves no server"):
        evacuation.approve(evac.id)
    assert db.session.get(ComputeResource, nodes["node1"].id).status == status.RESOURCE_ACTIVE


def test_approval_refuses_a_server_that_moved_since_the_plan(rack):
    nodes, servers = rack
    evac = evacuation.make_plan(nodes["node1"].id)
    servers["web"].compute_resource = nodes["node3"]
    db.session.commit()

    with pytest.raises(FerryError, match="web is no longer on node1"):
        evacuation.approve(evac.id)
    assert db.session.scalar(db.select(db.func.count()).select_from(MigrationGroup)) == 0


def test_approval_runs_one_group_with_a_destination_per_server_and_maintenance(rack):
    nodes, _ = rack
    evac = evacuation.make_plan(nodes["node1"].id)

    evac = evacuation.approve(evac.id, enqueue=False)

    group = evac.group
    assert db.session.get(ComputeResource, nodes["node1"].id).status == status.RESOURCE_MAINTENANCE
    planned = {m["server"]: (m["destination"], m["mode"]) for m in evac.plan["moves"]}
    assert {t.server.name: (t.destination.name, t.mode) for t in group.tasks} == planned
    # These nodes do not exist, so the preflight fails them and the group moves nothing.
    assert group.status == status.MIGRATION_FAILED
    assert evac.status == status.EVACUATION_FAILED and "cannot be reached" in evac.error
    assert all(t.server.compute_resource.name == "node1" for t in group.tasks)


def test_return_plans_the_servers_an_evacuation_moved_and_still_there(rack):
    nodes, servers = rack
    evac = evacuation.approve(evacuation.make_plan(nodes["node1"].id).id, enqueue=False)
    # As if the group had run: two servers arrived, one later moved on by hand.
    for task in evac.group.tasks:
        task.status = status.MIGRATION_FINISHED
        task.server.compute_resource = task.destination
    servers["cold"].compute_resource = nodes["node1"]
    db.session.commit()

    with pytest.raises(FerryError, match="exit maintenance"):
        evacuation.plan_return(nodes["node1"].id)
    nodes["node1"].status = status.RESOURCE_ACTIVE
    db.session.commit()
    back = evacuation.plan_return(nodes["node1"].id)

    assert back.kind == status.EVACUATION_RETURN and back.returns_id == evac.id
    assert {m["server"] for m in back.plan["moves"]} == {"web", "db"}
    assert all(m["destination"] == "node1" for m in back.plan["moves"])
    assert [u["server"] for u in back.plan["unplaced"]] == ["cold"]


def test_a_node_never_evacuated_has_nothing_to_return(rack):
    nodes, _ = rack
    with pytest.raises(FerryError, match="never evacuated"):
        evacuation.plan_return(nodes["node2"].id)
    assert db.session.scalar(db.select(db.func.count()).select_from(Evacuation)) == 0


def test_the_cli_prints_the_plan_and_refuses_an_unknown_node(rack, runner):
    nodes, _ = rack
    out = runner.invoke(args=["evacuate", "node1"])
    assert out.exit_code == 0, out.output
    assert "web -> node" in out.output and "(offline)" in out.output
    assert evacuation.active_for(nodes["node1"].id).status == status.EVACUATION_PLANNED

    bad = runner.invoke(args=["evacuate", "nodeX"])
    assert bad.exit_code != 0 and "no compute resource 'nodeX'" in bad.output


def test_the_cli_puts_a_node_in_and_out_of_maintenance(rack, runner):
    nodes, _ = rack
    assert runner.invoke(args=["resources", "maintenance", "node2"]).output == "node2: maintenance\n"
    db.session.expire_all()
    assert nodes["node2"].status == status.RESOURCE_MAINTENANCE
    assert runner.invoke(args=["resources", "maintenance", "node2", "--off"]).output == \
        "node2: active\n"
    assert "no compute resource" in runner.invoke(args=["resources", "maintenance", "x"]).output


def test_the_cli_lists_the_compute_resources_by_name_with_a_reason_only_where_there_is_one(
        rack, runner):
    nodes, _ = rack
    nodes["node3"].host_key_fingerprint = "SHA256:abc"
    nodes["node4"].status, nodes["node4"].status_reason = status.RESOURCE_UNREACHABLE, "ssh: refused"
    db.session.commit()
    listed = runner.invoke(args=["resources", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        "node1\tactive\troot@127.0.0.2:1\tNone", "node2\tactive\troot@127.0.0.3:1\tNone",
        "node3\tactive\troot@127.0.0.4:1\tSHA256:abc",
        f"node4\t{status.RESOURCE_UNREACHABLE}\troot@127.0.0.5:1\tNone\tssh: refused"]
