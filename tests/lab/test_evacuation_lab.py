"""Evacuating a real node and returning its servers, through the service (the CLI and pages call it).

The test empties node3 of everything on it, whatever other tests left there,
and then brings every one of those servers back, so the lab ends as it began.
"""
import pytest

from app import status
from app.extensions import db
from app.models import ComputeResource
from app.services import evacuation, migration, resources
from tests.fixtures.fleet import sync, where

pytestmark = pytest.mark.lab


def run(app, evac_id):
    """Approve a plan and run its group in this process; returns (evacuation status, report)."""
    with app.app_context():
        evac = evacuation.approve(evac_id, enqueue=False)
        assert evac.group is not None, evac.error
        migration.run_group(evac.group.id)
        db.session.expire_all()
        evac = evacuation.get(evac_id)
        return evac.status, migration.group_report(evac.group)


def test_it_empties_a_node_and_brings_its_servers_back(app, lab, lab_server, fleet):
    running = lab_server("node3", "evac-run")
    lab_server("node3", "evac-cold", stopped=True)
    lab.wait_for_guest(running["ip"], 90)
    sync(app, fleet)
    before = {s["name"]: s["state"] for s in lab.servers() if s["node"] == "node3"}

    with app.app_context():
        plan = evacuation.make_plan(fleet["node3"])
        assert not plan.plan["unplaced"], plan.plan["unplaced"]
        moves = {m["server"]: m for m in plan.plan["moves"]}
        assert set(moves) == set(before)
        assert moves["evac-run"]["mode"] == status.MODE_LIVE
        assert moves["evac-cold"]["mode"] == status.MODE_OFFLINE
        plan_id = plan.id
    outcome, report = run(app, plan_id)

    assert outcome == status.EVACUATION_FINISHED, report
    assert not [s for s in lab.servers() if s["node"] == "node3"]
    assert where(lab, "evac-run") == {moves["evac-run"]["destination"]: "running"}
    assert lab.ping(running["ip"], count=3, timeout=2)
    with app.app_context():
        node3 = db.session.get(ComputeResource, fleet["node3"])
        assert node3.status == status.RESOURCE_MAINTENANCE
        assert not node3.servers

        # A node in maintenance receives nothing; out of it, the servers go home.
        resources.set_maintenance(fleet["node3"], False)
        back = evacuation.plan_return(fleet["node3"])
        assert {m["server"] for m in back.plan["moves"]} == set(before)
        back_id = back.id
    outcome, report = run(app, back_id)

    assert outcome == status.EVACUATION_FINISHED, report
    assert {s["name"]: s["state"] for s in lab.servers() if s["node"] == "node3"} == before
    assert lab.guest_status(running["ip"])["seed_md5_ok"] is True
