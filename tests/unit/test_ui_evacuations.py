"""Evacuation pages (plan, approve, status fragment, return), the migratability matrix and the
webhook events list.

Rows only, on compute resources at 127.0.0.1 port 1 where nothing listens:
approval really runs the engine's preflight, which finds the nodes unreachable.
"""
import pytest

from app import status
from app.extensions import db
from app.services import placement
from app.models import ComputeResource, Evacuation, IpAddress, IpBlock, Server, WebhookEvent, WebhookSource
from tests.unit.test_ui_migrations import FACTS, fleet_rows  # noqa: F401 - the shared rows fixture


@pytest.fixture
def different_node(app, fleet_rows):  # noqa: F811
    """node4: another OS, so live moves to it fail and offline ones pass."""
    with app.app_context():
        node = ComputeResource(name="node4", host="127.0.0.1", port=1, user="root", key_path="/k",
                               facts=dict(FACTS, os={"id": "centos", "version_id": "7"}))
        db.session.add(node)
        db.session.commit()
        return node.id


def test_it_shows_where_every_server_can_go(client, charlie, login, fleet_rows, different_node):  # noqa: F811
    login(client, "charlie")
    page = client.get("/matrix/").get_data(as_text=True)
    assert 'data-resource="node1" data-kind="here"' in page
    assert 'data-resource="node3" data-kind="live"' in page
    assert 'data-resource="node4" data-kind="offline"' in page
    assert "runs centos" in page  # the reason, on hover


def test_the_matrix_shows_a_window_of_a_large_inventory(app, client, charlie, login,  # noqa: F811
                                                         fleet_rows):
    from app.matrix.views import COLUMNS, ROWS
    with app.app_context():
        extra = [ComputeResource(name=f"zz{i:02d}", host="127.0.0.1", port=1, user="root",
                                 key_path="/k") for i in range(COLUMNS)]
        db.session.add_all(extra)
        db.session.add_all(Server(uuid=f"00000000-0000-4000-a000-{i:012d}", name=f"many-{i:03d}",
                                  compute_resource=extra[0], state=status.SERVER_STOPPED)
                           for i in range(ROWS + 5))
        db.session.commit()
    login(client, "charlie")

    page = client.get("/matrix/?q=many-").get_data(as_text=True)
    assert page.count('<tr data-server="many-') == ROWS and "next servers" in page
    assert page.count('<td class="cell') == ROWS * COLUMNS and "next resources" in page
    last = client.get("/matrix/?q=many-&page=2&cols=2").get_data(as_text=True)
    assert last.count('<tr data-server="many-') == 5 and "previous resources" in last
    assert 'data-resource="zz11"' in last and 'data-resource="node1"' not in last


def test_the_matrix_reads_what_sync_stores_now(app_context, fleet_rows):  # noqa: F811
    web = db.session.get(Server, fleet_rows["web-1"])
    node3 = db.session.get(ComputeResource, fleet_rows["node3"])
    assert placement.cell(web, node3).kind == placement.LIVE
    node3.facts = dict(node3.facts, memory={"total_mib": 4000, "free_mib": 100})
    assert placement.cell(web, node3).kind == placement.OFFLINE  # a live move needs the memory; offline warns
    node3.status = status.RESOURCE_MAINTENANCE
    cell = placement.cell(web, node3)
    assert cell.kind == placement.NO and "maintenance" in cell.reason
    web.snapshot_count = 1
    node3.status = status.RESOURCE_ACTIVE
    assert "snapshot" in placement.cell(web, node3).reason


def test_the_matrix_needs_the_ip_block_on_the_destination(app_context, fleet_rows):  # noqa: F811
    web = db.session.get(Server, fleet_rows["web-1"])
    block = IpBlock(name="guest-a", cidr="10.9.0.0/24")
    block.compute_resources = [db.session.get(ComputeResource, fleet_rows["node1"])]
    db.session.add(IpAddress(block=block, address="10.9.0.5", server=web))
    db.session.commit()
    cell = placement.cell(web, db.session.get(ComputeResource, fleet_rows["node3"]))
    assert cell.kind == placement.NO and "guest-a" in cell.reason


def test_it_plans_an_evacuation_and_shows_every_server(client, bob, login, fleet_rows):  # noqa: F811
    login(client, "bob")
    page = client.get(f"/resources/{fleet_rows['node2']}").get_data(as_text=True)
    assert "Evacuate" in page and "Return servers" in page
    answer = client.post(f"/evacuations/resource/{fleet_rows['node2']}/plan")
    assert answer.status_code == 302
    plan = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "Evacuate node2" in plan and "Approve" in plan
    assert 'data-server="build-1"' in plan and 'data-server="mail-1"' in plan
    with client.application.app_context():
        evac = db.session.scalar(db.select(Evacuation))
        assert evac.status == status.EVACUATION_PLANNED and len(evac.plan["moves"]) == 2


def test_approving_puts_the_node_in_maintenance_and_runs_the_engine(client, bob, login, fleet_rows):  # noqa: F811
    login(client, "bob")
    location = client.post(f"/evacuations/resource/{fleet_rows['node2']}/plan").headers["Location"]
    evacuation_id = int(location.rsplit("/", 1)[1])
    answer = client.post(f"/evacuations/{evacuation_id}/approve")
    assert answer.status_code == 302
    page = client.get(location).get_data(as_text=True)
    # The engine's preflight found the nodes unreachable: the group was refused, nothing moved.
    assert 'data-status="failed"' in page and "cannot be reached" in page
    fragment = client.get(location, headers={"HX-Request": "true"})
    assert fragment.status_code == 286 and "hx-trigger" not in fragment.get_data(as_text=True)
    node = client.get(f"/resources/{fleet_rows['node2']}").get_data(as_text=True)
    assert "maintenance" in node and "Evacuate</button>" not in node
    with client.application.app_context():
        assert db.session.get(ComputeResource, fleet_rows["node2"]).status == "maintenance"


def test_returning_servers_says_why_when_there_is_nothing_to_return(client, bob, login, fleet_rows):  # noqa: F811
    login(client, "bob")
    answer = client.post(f"/evacuations/resource/{fleet_rows['node1']}/return", follow_redirects=True)
    assert "never evacuated" in answer.get_data(as_text=True)


def test_a_viewer_cannot_plan_or_approve(client, bob, charlie, login, fleet_rows):  # noqa: F811
    login(client, "bob")
    location = client.post(f"/evacuations/resource/{fleet_rows['node2']}/plan").headers["Location"]
    viewer = login(client.application.test_client(), "charlie")
    assert "Approve" not in viewer.get(location).get_data(as_text=True)
    assert viewer.post(location + "/approve").status_code == 403
    assert viewer.post(f"/evacuations/resource/{fleet_rows['node1']}/plan").status_code == 403
    assert "Evacuate" not in viewer.get(f"/resources/{fleet_rows['node1']}").get_data(as_text=True)
    assert viewer.get("/evacuations/").status_code == 200


def test_it_lists_webhook_events_with_what_ferry_did(client, charlie, login, fleet_rows):  # noqa: F811
    with client.application.app_context():
        source = WebhookSource(name="am", kind="alertmanager", token_hash="x" * 64)
        db.session.add_all([
            WebhookEvent(source=source, alert_status="firing", host="10.0.0.12:9100",
                         compute_resource_id=fleet_rows["node2"], action=status.WEBHOOK_PLANNED,
                         reason="planned the evacuation of node2", alert={"name": "HostDown"}),
            WebhookEvent(source=source, alert_status="firing", host="nowhere",
                         action=status.WEBHOOK_UNKNOWN_HOST, reason="no compute resource <b>"),
        ])
        db.session.commit()
    login(client, "charlie")
    page = client.get("/webhook-events/").get_data(as_text=True)
    assert "HostDown" in page and "planned the evacuation of node2" in page
    assert "no compute resource &lt;b&gt;" in page and "unknown-host" in page
    only = client.get("/webhook-events/?action=unknown-host").get_data(as_text=True)
    assert "nowhere" in only and "HostDown" not in only


def test_the_plan_names_the_reason_a_server_cannot_move(client, bob, login, fleet_rows):  # noqa: F811
    with client.application.app_context():
        db.session.get(Server, fleet_rows["build-1"]).snapshot_count = 2
        db.session.commit()
    login(client, "bob")
    location = client.post(f"/evacuations/resource/{fleet_rows['node2']}/plan").headers["Location"]
    page = client.get(location).get_data(as_text=True)
    assert "Cannot move" in page and "has 2 snapshots" in page
    assert 'table class="striped plan"' in page and 'data-server="mail-1"' in page
