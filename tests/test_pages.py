"""Pages: dashboard, servers list with filters (page and htmx fragment), compute resource detail."""
import pytest

from app import status
from app.extensions import db
from app.models import ComputeResource, Server


@pytest.fixture
def inventory(app):
    """Two compute resources with a running and a stopped server (rows only: no node contacted)."""
    with app.app_context():
        node1 = ComputeResource(name="node1", host="10.0.0.11", user="root", key_path="/k",
                                facts={"memory": {"total_mib": 1000, "free_mib": 250},
                                       "os": {"pretty_name": "Debian GNU/Linux 12 (bookworm)"}})
        node2 = ComputeResource(name="node2", host="10.0.0.12", user="root", key_path="/k",
                                status=status.RESOURCE_UNREACHABLE, status_reason="no route to host")
        db.session.add_all([
            node1, node2,
            Server(uuid="00000000-0000-4000-8000-000000000001", name="web<b>1</b>",
                   compute_resource=node1, state=status.SERVER_RUNNING),
            Server(uuid="00000000-0000-4000-8000-000000000002", name="db-1",
                   compute_resource=node2, state=status.SERVER_STOPPED)])
        db.session.commit()
        return {"node1": node1.id, "node2": node2.id}


def test_it_shows_compute_resources_with_status_and_load(client, charlie, login, inventory):
    login(client, "charlie")
    page = client.get("/").get_data(as_text=True)
    assert 'data-resource="node1"' in page and "75 %" in page and "bookworm" in page
    assert "unreachable" in page and "no route to host" in page
    assert "Add compute resource" not in page  # a viewer is not offered what it cannot do


def test_it_filters_servers_by_state_and_resource(client, charlie, login, inventory):
    login(client, "charlie")
    page = client.get("/servers/?state=stopped").get_data(as_text=True)
    assert "db-1" in page and "web&lt;b&gt;1&lt;/b&gt;" not in page
    page = client.get(f"/servers/?resource={inventory['node1']}").get_data(as_text=True)
    assert "web&lt;b&gt;1&lt;/b&gt;" in page and "db-1" not in page


def test_it_serves_only_the_table_to_htmx(client, charlie, login, inventory):
    login(client, "charlie")
    fragment = client.get("/servers/?state=running",
                          headers={"HX-Request": "true", "HX-Target": "servers-table"})
    text = fragment.get_data(as_text=True)
    assert "<html" not in text and "<table" in text and "1 server" in text


def test_it_pages_a_long_servers_list_and_finds_servers_by_name(app, client, charlie, login,
                                                                 inventory):
    from app.servers.views import PAGE_SIZE
    with app.app_context():
        node1 = db.session.get(ComputeResource, inventory["node1"])
        db.session.add_all(Server(uuid=f"00000000-0000-4000-9000-{i:012d}", name=f"vm-{i:04d}",
                                  compute_resource=node1, state=status.SERVER_RUNNING)
                           for i in range(PAGE_SIZE + 30))
        db.session.commit()
    login(client, "charlie")

    first = client.get("/servers/").get_data(as_text=True)
    assert first.count("<tr data-server=") == PAGE_SIZE
    assert f"1–{PAGE_SIZE} of {PAGE_SIZE + 32} servers" in first and 'rel="next"' in first
    second = client.get("/servers/?page=2").get_data(as_text=True)
    assert second.count("<tr data-server=") == 32 and 'rel="prev"' in second
    assert 'rel="next"' not in second and "vm-0129" in second
    assert client.get("/servers/?page=999").get_data(as_text=True).count("<tr data-server=") == 32

    found = client.get("/servers/?q=0_2").get_data(as_text=True)  # "_" is a letter, not a wildcard
    assert "0 servers" in found
    found = client.get("/servers/?q=M-012").get_data(as_text=True)
    assert found.count("<tr data-server=") == 10 and "1–10 of 10 servers" in found


def test_it_shows_a_compute_resource(client, bob, login, inventory):
    login(client, "bob")
    page = client.get(f"/resources/{inventory['node1']}").get_data(as_text=True)
    assert "node1" in page and "Sync now" in page and "Test connection" in page
    assert client.get("/resources/999").status_code == 404
